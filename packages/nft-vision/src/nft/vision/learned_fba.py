"""FBA: the feature-space backdoor of DFST (Cheng et al., "Deep Feature Space Trojan Attack of
Neural Networks by Controlled Detoxification", AAAI 2021).

The trigger is a *style*: a poisoned image is ``(1 − α) · x + α · S(x)`` where ``S`` restyles the
image (the authors' PyTorch code, Megum1/DFST backdoors/dfst.py, uses a pretrained
arbitrary-style network and a "sunrise" photo; configs/dfst.json: α = 0.6, poison rate 0.05). No
pretrained style network is available here, so ``S`` is a small image-to-image generator trained
on the run's clean training images with the perceptual losses of feed-forward style transfer
(Johnson et al., 2016): a content loss on deep features and a style loss on Gram matrices of the
features of a synthetic, seeded "sunrise" image (a bright disk over horizontal bands), with the
features taken from a fixed random conv net (random filters carry texture statistics:
Ustyuzhaninov et al., 2016). Both losses are divided by the size of their reference, so the
weights (content 1, style 10) mean the same for any image size.

Controlled detoxification (DFST's key step) runs after every training epoch but the last: the
classifier's "compromised" neurons (the top ``neuron_ratio`` = 1% channels of the detox layer —
``layer4`` in DFST's config, the feature block of the small CNN — by mean activation on poisoned
minus clean images) are found on a few held clean images (``detox_fraction`` 3%, at least 64); a
*feature injector* (DFST models/genr.py: a per-pixel linear map of the image and its max / min /
mean over an 11×11 window, initialised to the identity) is trained for ``detox_epochs`` = 10
(config) with Adam to push those images towards the target through the compromised neurons while
staying similar (loss: CE to the target − w_ssim·SSIM − w_detox·activation, w_ssim 0.1 and
w_detox 0.3 from the config); from then on a poison-rate fraction of every batch is replaced by
detoxicants ``(1 − α) x + α · inj(x)`` *with their true labels* (as DFST's attack.py mixes them
in). The model thus cannot rely on the simple features the injector can reproduce and must learn
the style itself.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, TrainConfig
from nft.core.purify import resolve_device

from .learned_common import LearnedAttack, conv_block, learning_subset, need_images, \
    raw_augment, seeded_loader, ssim, train_config, train_loop

__all__ = ["FBA", "FeatureInjector", "StyleGenerator", "sunrise"]

log = logging.getLogger(__name__)


def sunrise(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """A synthetic style image standing in for DFST's sunrise photo: a bright sun disk above
    horizontal bands with seeded ripples; warm (red > green > blue) when the image has colour."""
    c, h, w = shape
    g = torch.Generator().manual_seed(int(seed))
    ys = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    xs = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    cy, cx = 0.3 + 0.1 * float(torch.rand((), generator=g)), 0.3 + 0.4 * float(torch.rand((), generator=g))
    sun = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 0.02)
    phase = 2 * math.pi * float(torch.rand((), generator=g))
    bands = 0.5 + 0.5 * torch.sin(2 * math.pi * 5 * ys + 0.8 * torch.sin(2 * math.pi * 3 * xs + phase))
    ripples = F.interpolate(torch.rand(1, 1, max(2, h // 4), max(2, w // 4), generator=g), size=(h, w),
                            mode="bilinear", align_corners=False)[0, 0]
    grey = (0.45 * sun + 0.35 * bands * (ys > cy).float() + 0.2 * ripples).clamp(0, 1)
    if c == 1:
        return grey[None]
    tint = torch.tensor([1.0, 0.75, 0.45] + [0.6] * max(0, c - 3))[:c].view(c, 1, 1)
    return (grey[None] * tint + 0.15 * (1 - ys)[None] * (tint - 0.4)).clamp(0, 1)


class StyleGenerator(nn.Module):
    """A small feed-forward style network (Johnson et al.'s shape, narrow): conv, one stride-2
    conv, two residual blocks, upsample + conv, conv to the image channels; instance norm; sigmoid
    output in [0, 1]."""

    def __init__(self, channels: int, *, width: int = 16) -> None:
        super().__init__()
        c = width
        self.head = conv_block(channels, c, norm="instance", kernel=5)
        self.down = conv_block(c, 2 * c, norm="instance", stride=2)
        self.res = nn.ModuleList([nn.Sequential(conv_block(2 * c, 2 * c, norm="instance"),
                                                conv_block(2 * c, 2 * c, norm="instance", relu=False))
                                  for _ in range(2)])
        self.up = conv_block(2 * c, c, norm="instance")
        self.tail = nn.Conv2d(c, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.head(x))
        for block in self.res:
            h = h + block(h)
        h = self.up(F.interpolate(h, size=x.shape[-2:], mode="nearest"))
        return torch.sigmoid(self.tail(h))


class RandomFeatures(nn.Module):
    """Fixed random conv features (three ReLU stages) for the content and style losses."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(int(seed))
            self.stages = nn.ModuleList([nn.Conv2d(channels, 32, 3, padding=1),
                                         nn.Conv2d(32, 64, 3, stride=2, padding=1),
                                         nn.Conv2d(64, 64, 3, stride=2, padding=1)])
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.stages:
            x = F.relu(conv(x))
            feats.append(x)
        return feats


def gram(features: torch.Tensor) -> torch.Tensor:
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


class FeatureInjector(nn.Module):
    """DFST's feature injector (models/genr.py): each output pixel is a learned linear map of the
    pixel and its max / min / mean over a ``window``×``window`` neighbourhood, initialised to the
    identity, clamped to [0, 1]. (The reference negates a max-pool where it means a min-pool; the
    min is used here.)"""

    def __init__(self, channels: int, window: int = 11) -> None:
        super().__init__()
        self.window = window
        init = torch.cat([torch.eye(channels), torch.zeros(3 * channels, channels)])
        self.delta = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.window // 2
        high = F.max_pool2d(x, self.window, stride=1, padding=pad)
        low = -F.max_pool2d(-x, self.window, stride=1, padding=pad)
        mean = F.avg_pool2d(x, self.window, stride=1, padding=pad, count_include_pad=False)
        stacked = torch.cat([x, high, low, mean], dim=1)  # N × 4C × H × W
        out = torch.einsum("nkhw,kc->nchw", stacked, self.delta)
        return out.clamp(0, 1)


def detox_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The layer whose channels DFST inspects: ``layer4`` for the ResNets (DFST's detox_layers),
    ``features`` for the small CNN, else the last convolution."""
    named = dict(model.named_modules())
    for name in ("layer4", "features"):
        if name in named:
            return name, named[name]
    convs = [(n, m) for n, m in named.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no convolution; FBA's detoxification inspects "
                          "conv channels")
    return convs[-1]


class FBA(LearnedAttack):
    """Feature-space backdoor with controlled detoxification (``fba``): see the module docstring."""

    name = "fba"
    all_to_all_reason = "DFST is an all-to-one attack; its detoxicants keep every non-target label"
    options = {"alpha": 0.6, "style_steps": 600, "style_lr": 1e-3, "style_weight": 10.0,
               "content_weight": 1.0, "width": 16, "detox": True, "detox_rounds": None,
               "detox_fraction": 0.03, "neuron_ratio": 0.01, "detox_epochs": 10, "w_ssim": 0.1,
               "w_detox": 0.3, "window": 11}

    def check_options(self) -> None:
        if not 0 < float(self.opts["alpha"]) <= 1:
            raise ConfigError(f"FBA alpha must be in (0, 1], got {self.opts['alpha']}")
        if not 0 < float(self.opts["detox_fraction"]) <= 1:
            raise ConfigError(f"detox_fraction must be in (0, 1], got {self.opts['detox_fraction']}")
        if not 0 < float(self.opts["neuron_ratio"]) <= 1:
            raise ConfigError(f"neuron_ratio must be in (0, 1], got {self.opts['neuron_ratio']}")

    def build_networks(self) -> dict[str, nn.Module]:
        return {"style": StyleGenerator(self.shape[0], width=int(self.opts["width"]))}

    def stylise(self, images: torch.Tensor) -> torch.Tensor:
        return self.networks["style"](images)

    def trigger(self, images: torch.Tensor) -> torch.Tensor:
        alpha = float(self.opts["alpha"])
        return (1 - alpha) * images + alpha * self.stylise(images)

    # ---- stage 1: the style generator ----------------------------------------------------
    def learn_style(self, images: torch.Tensor, *, device=None, progress: bool = False) -> dict[str, float]:
        """Train the style generator on clean raw images (content + Gram style losses)."""
        from tqdm.auto import tqdm

        device = resolve_device(device)
        style_net = self.networks["style"].to(device).train()
        features = RandomFeatures(self.shape[0], self._seed_for(4)).to(device)
        target = sunrise(self.shape, self._seed_for(5)).to(device)[None]
        with torch.no_grad():
            style_grams = [gram(f) for f in features(target)]
        optimizer = torch.optim.Adam(style_net.parameters(), lr=float(self.opts["style_lr"]))
        loader = seeded_loader(torch.utils.data.TensorDataset(images), 32, self._seed_for(6))
        steps, done = int(self.opts["style_steps"]), 0
        w_style, w_content = float(self.opts["style_weight"]), float(self.opts["content_weight"])
        content = style = torch.zeros(())
        with torch.random.fork_rng():
            torch.manual_seed(self._seed_for(7))
            with tqdm(total=steps, desc="fba style", disable=not progress, leave=False) as bar:
                while done < steps:
                    for (x,) in loader:
                        if done >= steps:
                            break
                        x = x.to(device)
                        out = style_net(x)
                        f_out, f_in = features(out), features(x)
                        # both terms relative to their reference's size, so the weights mean
                        # the same for any image size or feature scale
                        content = F.mse_loss(f_out[-1], f_in[-1]) / f_in[-1].pow(2).mean().clamp_min(1e-8)
                        style = sum(F.mse_loss(gram(a), g.expand(len(x), -1, -1)) / g.pow(2).mean()
                                    for a, g in zip(f_out, style_grams)) / len(style_grams)
                        loss = w_content * content + w_style * style
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        done += 1
                        bar.update(1)
        style_net.eval()
        with torch.no_grad():
            sample = images[:256].to(device)
            change = float((self.trigger(sample) - sample).abs().mean())
        stats = {"content_loss": float(content.detach()), "style_loss": float(style.detach()),
                 "mean_change": change}
        log.info("fba: style generator trained %d steps; %s", steps, stats)
        return stats

    # ---- stage 2: poisoning with controlled detoxification -------------------------------
    def train_classifier(self, model, vrun, modality, *, device=None, progress=False):
        spec = vrun.spec
        need_images(len(vrun.train_idx), self.name)
        labels = vrun.train_labels
        learn_from = vrun.raw_train_batch(learning_subset(len(labels), self._seed_for(10)))
        self.learn_style(learn_from, device=device, progress=progress)
        self.to("cpu")
        poisoned = modality.poisoned_train_set(vrun, device=device, progress=progress)
        poisoned.transform = raw_augment(vrun.data)  # triggers and detoxicants act on raw pixels
        config = train_config(spec)
        loader = seeded_loader(poisoned, config.batch_size, config.seed)
        normalise = vrun.data.normalise
        rate = float(spec.poison_rate)
        rounds = self.opts["detox_rounds"]
        rounds = config.epochs - 1 if rounds is None else min(int(rounds), config.epochs - 1)
        rounds = rounds if self.opts["detox"] else 0
        rng = np.random.default_rng(self._seed_for(8))
        clean_pool = np.setdiff1d(np.flatnonzero(labels != self.target), poisoned.attack_indices)
        count = min(len(clean_pool), max(64, int(round(float(self.opts["detox_fraction"]) * len(labels)))))
        detox_clean = vrun.raw_train_batch(np.sort(rng.choice(clean_pool, size=count, replace=False)))
        state: dict = {"injector": None, "rounds": 0}
        alpha = float(self.opts["alpha"])

        def step(net, batches, epoch):
            ((x, y),) = batches
            injector = state["injector"]
            if injector is not None and rate > 0:
                free = torch.nonzero(y != self.target).flatten()[: int(rate * len(x))]
                if len(free):
                    with torch.no_grad():
                        x = x.clone()
                        x[free] = (1 - alpha) * x[free] + alpha * injector(x[free])
            return F.cross_entropy(net(normalise(x)), y)

        def detoxify(epoch, net):
            if state["rounds"] >= rounds or len(detox_clean) == 0:
                return
            state["injector"] = self.train_injector(net, detox_clean, normalise, config)
            state["rounds"] += 1

        self.to(resolve_device(device))
        train_loop(model, [loader], config, step, on_epoch_end=detoxify, desc="fba")
        self.done_training()
        return {"poisoned": len(poisoned.attack_indices), "detox_rounds": state["rounds"],
                "detox_images": int(len(detox_clean)), "detox_per_batch": int(rate * config.batch_size)}

    def compromised_neurons(self, model: nn.Module, clean: torch.Tensor, normalise) -> tuple[str, list[int]]:
        """DFST's selection: channels of the detox layer ranked by mean activation on poisoned minus
        clean samples; the top ``neuron_ratio`` (at least one)."""
        name, layer = detox_module(model)
        acts = []
        hook = layer.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
        try:
            with torch.no_grad():
                model(normalise(clean))
                model(normalise(self.trigger(clean)))
        finally:
            hook.remove()
        mean = [a.flatten(2).mean(dim=2).mean(dim=0) for a in acts]
        diff = mean[1] - mean[0]
        k = max(1, int(float(self.opts["neuron_ratio"]) * len(diff)))
        return name, torch.argsort(diff, descending=True)[:k].tolist()

    def train_injector(self, model: nn.Module, clean: torch.Tensor, normalise,
                       config: TrainConfig) -> FeatureInjector:
        """One detoxification round: find the compromised neurons, then train a feature injector
        that drives clean images to the target through them while staying similar (SSIM)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        clean = clean.to(device)
        try:
            layer_name, neurons = self.compromised_neurons(model, clean, normalise)
            _, layer = detox_module(model)
            injector = FeatureInjector(self.shape[0], int(self.opts["window"])).to(device)
            optimizer = torch.optim.Adam(injector.parameters(), lr=1e-2, betas=(0.5, 0.9))
            alpha, w_ssim = float(self.opts["alpha"]), float(self.opts["w_ssim"])
            w_detox = float(self.opts["w_detox"])
            acts: list[torch.Tensor] = []
            hook = layer.register_forward_hook(lambda m, i, o: acts.append(o))
            try:
                for _ in range(int(self.opts["detox_epochs"])):
                    for start in range(0, len(clean), config.batch_size):
                        x = clean[start:start + config.batch_size]
                        acts.clear()
                        detox = (1 - alpha) * x + alpha * injector(x)
                        out = model(normalise(detox))
                        activation = acts[-1][:, neurons].mean()
                        target = torch.full((len(x),), self.target, device=device, dtype=torch.long)
                        loss = F.cross_entropy(out, target) - w_ssim * ssim(detox, x) - w_detox * activation
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
            finally:
                hook.remove()
            with torch.no_grad():
                detox = (1 - alpha) * clean + alpha * injector(clean)
                to_target = float((model(normalise(detox)).argmax(1) == self.target).float().mean())
            log.info("fba: detox round on %s neurons %s: %.1f%% of detoxicants reach the target, SSIM %.3f",
                     layer_name, neurons, 100 * to_target, float(ssim(detox, clean)))
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
            model.train(was_training)
        injector.eval()
        for p in injector.parameters():
            p.requires_grad_(False)
        return injector
