"""ISSBA: invisible backdoor with sample-specific triggers (Li et al., ICCV 2021).

ISSBA hides a fixed string in every poisoned image with a StegaStamp encoder (Tancik et al.,
CVPR 2020): the encoder takes the image and the string's bits and outputs an image that looks the
same but whose (image-dependent) residual a decoder can read the bits back from. The poisoned
training images are the encoded images, relabelled to the target; at test time the trigger is
again the encoder with the same string. Nothing else about training changes (plain data
poisoning).

The encoder / decoder are trained here, on the run's clean training images, as StegaStamp is
trained (the PyTorch version packaged with BackdoorBench, resource/ssba/train.py): random bit
strings ("fingerprints") per image; loss = BCE(decoder(encoded), bits) + w₂ · MSE(encoded, image),
with the L2 weight held at 0 until the decoder's bit accuracy first exceeds 0.9 and then ramped
linearly to 10; Adam over both networks. There: 100 bits, lr 1e-4, batch 64, and the ramp waits
1,000 steps after activation and lasts 3,000. Here, for runs of a few hundred CPU steps: lr 1e-3
and the ramp starts at activation and lasts a quarter of the steps; and images under 32 px carry
16 bits by default (100 bits did not fit 28×28 grey images in 600 steps: bit accuracy stayed at
chance while the residual grew to a mean of 0.25). The networks are StegaStamp's shape made small
for 28-32 px images: the encoder maps the bits through a dense layer to a coarse grid, upsamples
it, concatenates it with the image and runs a U-Net (stride-2 3×3 convs down, upsample + conv up,
skip connections, the input fed again to the last block); the decoder is stride-2 convs and two
dense layers. The encoder outputs the residual (BackdoorBench's ``use_residual`` mode), so the
encoded image is ``clip(x + r(x, bits))``.

The hidden string is ISSBA's choice of a short text (at most 7 characters, as StegaStamp's BCH
code allows); here its UTF-8 bits, padded with spaces to 7 characters and repeated to ``bits``.
Error correction only matters for reading the string back, not for the trigger.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, TrainConfig, train_model
from nft.core.purify import resolve_device

from .learned_common import LearnedAttack, learning_subset, need_images, seeded_loader

__all__ = ["ISSBA", "StegaDecoder", "StegaEncoder", "secret_bits"]

log = logging.getLogger(__name__)


def secret_bits(text: str, bits: int) -> torch.Tensor:
    """The bit string ISSBA hides: UTF-8 bits of ``text`` padded to 7 characters, repeated."""
    raw = text.encode("utf-8")
    if not 0 < len(raw) <= 7:
        raise ConfigError(f"the ISSBA secret must be 1-7 bytes of UTF-8 (ISSBA's limit), got {text!r}")
    raw = raw + b" " * (7 - len(raw))
    stream = np.unpackbits(np.frombuffer(raw, dtype=np.uint8)).astype(np.float32)
    return torch.from_numpy(np.resize(stream, int(bits)).copy())


class StegaEncoder(nn.Module):
    """StegaStamp's encoder, small: bits → dense → coarse grid → upsample, concatenated with the
    image, then a three-level U-Net; returns the residual to add to the image."""

    def __init__(self, channels: int, size: tuple[int, int], bits: int, *, width: int = 16) -> None:
        super().__init__()
        h, w = size
        self.grid = (max(1, h // 4), max(1, w // 4))
        self.channels = channels
        self.secret_dense = nn.Linear(bits, channels * self.grid[0] * self.grid[1])
        c = width
        self.conv1 = nn.Conv2d(2 * channels, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1)
        self.up5 = nn.Conv2d(4 * c, 2 * c, 3, padding=1)
        self.conv5 = nn.Conv2d(4 * c, 2 * c, 3, padding=1)
        self.up6 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.conv6 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.up7 = nn.Conv2d(c, c, 3, padding=1)
        self.conv7 = nn.Conv2d(2 * c + 2 * channels, c, 3, padding=1)
        self.conv8 = nn.Conv2d(c, c, 3, padding=1)
        self.residual = nn.Conv2d(c, channels, 1)

    def forward(self, bits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        secret = F.relu(self.secret_dense(bits)).view(-1, self.channels, *self.grid)
        secret = F.interpolate(secret, size=image.shape[-2:], mode="nearest")
        inputs = torch.cat([secret.expand(len(image), -1, -1, -1), image], dim=1)
        c1 = F.relu(self.conv1(inputs))
        c2 = F.relu(self.conv2(c1))
        c3 = F.relu(self.conv3(c2))
        c4 = F.relu(self.conv4(c3))

        def up(x, conv, like):
            return F.relu(conv(F.interpolate(x, size=like.shape[-2:], mode="nearest")))

        c5 = F.relu(self.conv5(torch.cat([c3, up(c4, self.up5, c3)], dim=1)))
        c6 = F.relu(self.conv6(torch.cat([c2, up(c5, self.up6, c2)], dim=1)))
        c7 = F.relu(self.conv7(torch.cat([c1, up(c6, self.up7, c1), inputs], dim=1)))
        return self.residual(F.relu(self.conv8(c7)))


class StegaDecoder(nn.Module):
    """StegaStamp's decoder, small: stride-2 convs, then two dense layers to one logit per bit."""

    def __init__(self, channels: int, bits: int, *, width: int = 16) -> None:
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(channels, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.dense = nn.Sequential(nn.Linear(4 * c * 16, 256), nn.ReLU(), nn.Linear(256, bits))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(image).flatten(1))


class ISSBA(LearnedAttack):
    """ISSBA (``issba``): see the module docstring."""

    name = "issba"
    options = {"secret": "nft", "bits": None, "steps": 2000, "batch_size": 64, "lr": 1e-3,
               "l2_weight": 10.0, "l2_ramp": None, "width": 16}

    @property
    def bits(self) -> int:
        """Bits hidden per image: 100 as StegaStamp / ISSBA from 32 px up, 16 below."""
        given = self.opts["bits"]
        return int(given) if given is not None else (100 if min(self.shape[1:]) >= 32 else 16)

    def check_options(self) -> None:
        if self.bits < 1:
            raise ConfigError(f"bits must be ≥ 1, got {self.opts['bits']}")
        if int(self.opts["steps"]) < 0:
            raise ConfigError(f"steps must be ≥ 0, got {self.opts['steps']}")
        secret_bits(str(self.opts["secret"]), self.bits)

    def build_networks(self) -> dict[str, nn.Module]:
        c, h, w = self.shape
        bits, width = self.bits, int(self.opts["width"])
        return {"encoder": StegaEncoder(c, (h, w), bits, width=width),
                "decoder": StegaDecoder(c, bits, width=width)}

    @property
    def secret(self) -> torch.Tensor:
        return secret_bits(str(self.opts["secret"]), self.bits)

    def encode(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        return (images + self.networks["encoder"](bits, images)).clamp(0, 1)

    def trigger(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, self.secret.to(images.device)[None])

    @torch.no_grad()
    def bit_accuracy(self, images: torch.Tensor) -> float:
        """How well the decoder reads the secret back from the encoded images (0.5 = chance)."""
        encoded = self.apply(images)
        logits = self.networks["decoder"].to(encoded.device).eval()(encoded)
        return float(((logits > 0).float() == self.secret[None]).float().mean())

    def learn(self, images: torch.Tensor, *, device=None, progress: bool = False) -> dict[str, float]:
        """Train the encoder / decoder on clean raw images (N×C×H×W in [0, 1])."""
        from tqdm.auto import tqdm

        device = resolve_device(device)
        encoder, decoder = self.networks["encoder"].to(device), self.networks["decoder"].to(device)
        steps = int(self.opts["steps"])
        ramp = int(self.opts["l2_ramp"] or max(1, steps // 4))
        w_l2 = float(self.opts["l2_weight"])
        params = list(encoder.parameters()) + list(decoder.parameters())
        optimizer = torch.optim.Adam(params, lr=float(self.opts["lr"]))
        loader = seeded_loader(torch.utils.data.TensorDataset(images), int(self.opts["batch_size"]),
                               self._seed_for(2))
        bits = self.bits
        since, accuracy, done = -1, 0.0, 0
        encoder.train(), decoder.train()
        with torch.random.fork_rng():
            torch.manual_seed(self._seed_for(3))
            with tqdm(total=steps, desc="issba encoder", disable=not progress, leave=False) as bar:
                while done < steps:
                    for (x,) in loader:
                        if done >= steps:
                            break
                        x = x.to(device)
                        fingerprints = torch.randint(0, 2, (len(x), bits), device=device).float()
                        encoded = self.encode(x, fingerprints)
                        logits = decoder(encoded)
                        weight = 0.0 if since < 0 else min(w_l2, w_l2 * since / ramp)
                        loss = F.binary_cross_entropy_with_logits(logits, fingerprints) \
                            + weight * F.mse_loss(encoded, x)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        accuracy = float(((logits.detach() > 0).float() == fingerprints).float().mean())
                        if since < 0 and accuracy > 0.9:  # StegaStamp: start the L2 loss from here
                            since = 0
                        elif since >= 0:
                            since += 1
                        done += 1
                        bar.update(1)
                        bar.set_postfix(bit_acc=f"{accuracy:.3f}", l2=f"{weight:.2f}")
        self.done_training()
        sample = images[: min(len(images), 256)]
        residual = (self.apply(sample) - sample).abs()
        stats = {"train_bit_accuracy": accuracy, "secret_bit_accuracy": self.bit_accuracy(sample),
                 "residual_mean": float(residual.mean()), "residual_max": float(residual.max()),
                 "l2_started_at": -1 if since < 0 else steps - since}
        log.info("issba: encoder trained %d steps; %s", steps, stats)
        if stats["secret_bit_accuracy"] < 0.9:
            log.warning("issba: the decoder reads only %.0f%% of the secret's bits back; the encoder has "
                        "not learned to hide it (raise --attack-arg steps=…, or lower bits=…), so the "
                        "trigger is a visible residual rather than ISSBA's",
                        100 * stats["secret_bit_accuracy"])
        return stats

    def train_classifier(self, model, vrun, modality, *, device=None, progress=False):
        spec = vrun.spec
        need_images(len(vrun.train_idx), self.name)
        self.learn(vrun.raw_train_batch(learning_subset(len(vrun.train_idx), self._seed_for(10))),
                   device=device, progress=progress)
        self.to("cpu")
        poisoned = modality.poisoned_train_set(vrun, device=device, progress=progress)
        train_model(model, poisoned, TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
                                                 seed=spec.seed, device=spec.device, progress=progress))
        return {"poisoned": len(poisoned.attack_indices), "extra_samples": 0}
