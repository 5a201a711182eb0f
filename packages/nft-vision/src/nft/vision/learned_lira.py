"""LIRA: learnable, imperceptible and robust backdoor (Doan et al., ICCV 2021).

The trigger is a learned function ``T(x) = clip(x + ε · g(x))`` with ``g`` a small conv
autoencoder (or U-Net) ending in tanh, so the perturbation is bounded by ε in L∞ and differs from
image to image. LIRA solves its bilevel problem by alternating, per batch (stage 1):

1. update ``g`` (Adam, lr 1e-4) to make the *current* classifier send ``T(x)`` to the backdoor
   label;
2. update the classifier on ``α · CE(f(x), y) + (1 − α) · CE(f(T'(x)), η(y))`` with α = 0.5,
   where ``T'`` is the trigger function as it was at the end of the previous epoch (the
   reference code keeps an ``atkmodel`` copy refreshed from ``tgtmodel`` after every epoch);

then (stage 2) ``g`` is frozen and the classifier is fine-tuned on the same loss. The settings are
those of the reference code as packaged in BackdoorBench (attack/lira.py,
config/attack/lira/default.yaml: attack_model autoencoder, lr_atk 1e-4, eps 0.01, alpha 0.5,
both_train_epochs 50 of epochs 100, so half the epochs are joint). The reference code adds ε·g(x)
to *normalised* images; here the trigger acts on raw pixels, so the bound is ε times each
channel's standard deviation — the same perturbation. The classifier follows this package's
training recipe over both stages (one schedule); every sample gets a triggered copy in each batch,
so the spec's poison rate is not used (as in the reference code).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError
from nft.core.purify import resolve_device

from .learned_common import LearnedAttack, clean_raw_train_set, need_images, seeded_loader, \
    train_config, train_loop

__all__ = ["LIRA", "LiraAutoencoder", "LiraUNet"]

log = logging.getLogger(__name__)


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU()]


class LiraAutoencoder(nn.Module):
    """LIRA's conv autoencoder: 4×4 stride-2 convs down, 4×4 stride-2 transposed convs up, BN and
    ReLU between, tanh out (BackdoorBench attack/lira.py ``Autoencoder``: four levels of 16-128
    channels for 32 px CIFAR; here ``levels`` (2 for ≤ 32 px) levels from ``width`` channels)."""

    def __init__(self, channels: int, *, width: int = 16, levels: int = 2) -> None:
        super().__init__()
        down: list[nn.Module] = []
        c_in = channels
        for level in range(levels):
            c_out = width * 2 ** level
            down += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), *_bn_relu(c_out)]
            c_in = c_out
        up: list[nn.Module] = []
        for level in reversed(range(levels)):
            c_out = channels if level == 0 else width * 2 ** (level - 1)
            up.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if level > 0:
                up += _bn_relu(c_out)
            c_in = c_out
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        if out.shape[-2:] != x.shape[-2:]:  # sizes not divisible by 2^levels
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(out)


class LiraUNet(nn.Module):
    """LIRA's U-Net option (BackdoorBench ``UNet``: double 3×3 conv-BN-ReLU per level, average
    pooling down, bilinear up with skip concatenation, 1×1 conv + BN + tanh out)."""

    def __init__(self, channels: int, *, width: int = 16, levels: int = 2) -> None:
        super().__init__()

        def double(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), *_bn_relu(c_out),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), *_bn_relu(c_out))

        widths = [width * 2 ** i for i in range(levels + 1)]
        self.down = nn.ModuleList([double(channels if i == 0 else widths[i - 1], widths[i])
                                   for i in range(levels + 1)])
        self.up = nn.ModuleList([double(widths[i + 1] + widths[i], widths[i])
                                 for i in reversed(range(levels))])
        self.last = nn.Sequential(nn.Conv2d(widths[0], channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], dim=1))
        return torch.tanh(self.last(x))


class ChannelScale(nn.Module):
    """Holds the dataset's per-channel standard deviation as a buffer, so the raw-pixel bound
    ε·σ is saved in attack.safetensors with the generator."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("std", torch.ones(channels, 1, 1))


class LIRA(LearnedAttack):
    """LIRA (``lira``): see the module docstring."""

    name = "lira"
    options = {"eps": 0.01, "alpha": 0.5, "lr_atk": 1e-4, "generator": "autoencoder", "width": 16,
               "levels": None, "joint_epochs": None}

    def check_options(self) -> None:
        if not float(self.opts["eps"]) > 0:
            raise ConfigError(f"LIRA eps must be positive, got {self.opts['eps']}")
        if not 0 < float(self.opts["alpha"]) < 1:
            raise ConfigError(f"LIRA alpha must be in (0, 1), got {self.opts['alpha']}")
        if self.opts["generator"] not in ("autoencoder", "unet"):
            raise ConfigError(f"LIRA generator {self.opts['generator']!r} is unknown; "
                              "use autoencoder or unet")

    def build_networks(self) -> dict[str, nn.Module]:
        c, h, w = self.shape
        levels = int(self.opts["levels"] or (2 if min(h, w) <= 32 else 4))
        if min(h, w) < 2 ** levels:
            raise ConfigError(f"a {h}×{w} image is too small for {levels} levels; pass --attack-arg levels=1")
        klass = LiraAutoencoder if self.opts["generator"] == "autoencoder" else LiraUNet
        return {"generator": klass(c, width=int(self.opts["width"]), levels=levels),
                "scale": ChannelScale(c)}

    def bound(self, device=None) -> torch.Tensor:
        """The per-channel L∞ bound on raw pixels: ε times the channel's standard deviation (set
        from the dataset when training, saved with the generator; 1 for a bare attack)."""
        return (float(self.opts["eps"]) * self.networks["scale"].std).to(device)

    def trigger(self, images: torch.Tensor, generator: nn.Module | None = None) -> torch.Tensor:
        generator = self.networks["generator"] if generator is None else generator
        return (images + generator(images) * self.bound(images.device)).clamp(0, 1)

    def train_classifier(self, model, vrun, modality, *, device=None, progress=False):
        spec = vrun.spec
        self.networks["scale"].std.copy_(torch.as_tensor(vrun.data.std, dtype=torch.float32).view(-1, 1, 1))
        dataset = clean_raw_train_set(vrun)
        need_images(len(dataset), self.name)
        config = train_config(spec)
        joint = self.opts["joint_epochs"]
        joint = max(1, round(config.epochs / 2)) if joint is None else int(joint)
        loader = seeded_loader(dataset, config.batch_size, config.seed)
        generator = self.networks["generator"]
        self.to(resolve_device(device))
        optimizer_g = torch.optim.Adam(generator.parameters(), lr=float(self.opts["lr_atk"]))
        alpha = float(self.opts["alpha"])
        normalise = vrun.data.normalise
        state = {"previous": self.frozen_copy("generator")}

        def step(net, batches, epoch):
            ((x, y),) = batches
            target = self.target_tensor(y)
            if epoch < joint:  # stage 1: move the trigger function towards the current classifier
                generator.train()
                loss_g = F.cross_entropy(net(normalise(self.trigger(x, generator))), target)
                optimizer_g.zero_grad(set_to_none=True)
                loss_g.backward()
                optimizer_g.step()
                used = state["previous"]
            else:  # stage 2: fine-tune the classifier with the final trigger function
                used = generator.eval()
            with torch.no_grad():
                triggered = self.trigger(x, used)
            out = net(normalise(torch.cat([x, triggered])))
            n = len(x)
            return alpha * F.cross_entropy(out[:n], y) + (1 - alpha) * F.cross_entropy(out[n:], target)

        def refresh(epoch, net):
            if epoch < joint:
                state["previous"] = self.frozen_copy("generator")

        train_loop(model, [loader], config, step, on_epoch_end=refresh, desc="lira")
        self.done_training()
        log.info("lira: %d joint epochs, %d fine-tuning epochs (eps %.3g, alpha %.2f)",
                 min(joint, config.epochs),
                 max(0, config.epochs - joint), float(self.opts["eps"]), alpha)
        return {"triggered_copies_per_batch": config.batch_size, "joint_epochs": min(joint, config.epochs)}
