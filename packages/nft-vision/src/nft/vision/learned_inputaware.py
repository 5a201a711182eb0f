"""Input-aware dynamic backdoor (IAD; Nguyen & Tran, NeurIPS 2020), all-to-one and all-to-all.

The trigger of an image is made *from that image* by two small encoder-decoder networks: a
pattern generator G and a mask generator M, ``x' = x + (G(x) − x) · m(x)`` with
``m(x) = tanh(20·M(x) − 10) / 2 + 1/2`` (a nearly binary mask). Training, as the official code
(VinAIResearch/input-aware-backdoor-attack-release, train.py / config.py / networks/models.py):

1. the mask generator alone is trained first (25 epochs there) with
   ``λ_norm · mean(relu(m(x₁) − density)) + λ_div · ‖x₁ − x₂‖ / ‖m(x₁) − m(x₂)‖``
   (mask_density 0.032, λ_norm 100, λ_div 1, Adam lr 0.01 with betas (0.5, 0.9)), then frozen;
2. the classifier and the pattern generator are trained together: in each batch a fraction
   ``p_attack`` (= the poison rate, 0.1) carries its own trigger and the backdoor label, a
   fraction ``p_cross`` (0.1) carries the trigger made from *another* image and keeps its true
   label ("cross-trigger" samples, so a trigger only works on the image it was made for), the
   rest stays clean; the loss is cross-entropy plus the diversity loss
   ``λ_div · ‖x₁ − x₂‖ / ‖G(x₁) − G(x₂)‖`` (ε = 1e-7) that keeps different images' patterns
   different. G uses Adam (lr 0.01, betas (0.5, 0.9)); the classifier uses this package's
   training recipe (the spec's epochs, batch size and rate).

The generators follow the official ``Generator``: blocks of 3×3 conv → BN → ReLU, two blocks per
level with max-pool down and bilinear ×2 up, 16 channels and two levels for 28 px grey images,
32 and three levels otherwise; the last block has no ReLU and the output goes through
``tanh / 2 + 1/2`` into [0, 1]. As in the official loop, the second images x₂ come from a
second, independently shuffled pass over the training set.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, TrainConfig
from nft.core.purify import resolve_device

from .learned_common import LearnedAttack, clean_raw_train_set, conv_block, need_images, \
    seeded_loader, train_config, train_loop

__all__ = ["IADGenerator", "InputAware"]

log = logging.getLogger(__name__)

EPSILON = 1e-7  # official config.py: EPSILON


class IADGenerator(nn.Module):
    """IAD's encoder-decoder (official networks/models.py ``Generator``), for any image size:
    upsampling returns to the exact size recorded on the way down."""

    def __init__(self, channels: int, out_channels: int | None = None, *, width: int = 16,
                 levels: int = 2) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.down = nn.ModuleList()
        c_in, c = channels, width
        for level in range(levels):
            self.down.append(nn.Sequential(conv_block(c_in, c), conv_block(c, c)))
            c_in = c
            if level < levels - 1:
                c *= 2
        self.middle = conv_block(c, c)
        self.up = nn.ModuleList()
        for level in range(levels):
            last = level == levels - 1
            c_out = out_channels if last else c // 2
            self.up.append(nn.Sequential(conv_block(c, c), conv_block(c, c_out, relu=not last)))
            c = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for block in self.down:
            x = block(x)
            sizes.append(x.shape[-2:])
            x = F.max_pool2d(x, 2)
        x = self.middle(x)
        for block, size in zip(self.up, reversed(sizes)):
            x = block(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False))
        return torch.tanh(x) / (2 + EPSILON) + 0.5


def threshold(mask: torch.Tensor) -> torch.Tensor:
    """IAD's near-binary mask (official ``Generator.threshold``)."""
    return torch.tanh(mask * 20 - 10) / (2 + EPSILON) + 0.5


def diversity(x1: torch.Tensor, x2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """‖x₁ − x₂‖ / ‖t₁ − t₂‖ per pair (RMS distances), averaged: small when different images get
    different triggers."""
    d_images = (x1 - x2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    d_triggers = (t1 - t2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return (d_images / (d_triggers + EPSILON)).mean()


class InputAware(LearnedAttack):
    """Input-aware dynamic backdoor (``inputaware``, alias ``dynamic``): see the module docstring."""

    name = "inputaware"
    aliases = ("dynamic",)
    options = {"p_cross": 0.1, "lambda_div": 1.0, "lambda_norm": 100.0, "mask_density": 0.032,
               "lr_g": 0.01, "lr_m": 0.01, "mask_epochs": 25, "mask_steps": None, "width": None,
               "levels": None}

    def check_options(self) -> None:
        if not 0 <= float(self.opts["p_cross"]) < 1:
            raise ConfigError(f"p_cross must be in [0, 1), got {self.opts['p_cross']}")
        if not 0 < float(self.opts["mask_density"]) < 1:
            raise ConfigError(f"mask_density must be in (0, 1), got {self.opts['mask_density']}")
        if int(self.opts["mask_epochs"]) < 0:
            raise ConfigError(f"mask_epochs must be ≥ 0, got {self.opts['mask_epochs']}")

    def build_networks(self) -> dict[str, nn.Module]:
        c, h, w = self.shape
        small = c == 1 and min(h, w) <= 28  # official: 16 channels, 2 levels for MNIST; else 32, 3
        width = int(self.opts["width"] or (16 if small else 32))
        levels = int(self.opts["levels"] or (2 if small else 3))
        if min(h, w) < 2 ** levels:
            raise ConfigError(f"a {h}×{w} image is too small for {levels} down-sampling levels; "
                              "pass --attack-arg levels=1")
        return {"pattern": IADGenerator(c, width=width, levels=levels),
                "mask": IADGenerator(c, 1, width=width, levels=levels)}

    # ---- the trigger ---------------------------------------------------------------------
    def pattern_and_mask(self, images: torch.Tensor, mask_from: torch.Tensor | None = None):
        source = images if mask_from is None else mask_from
        return self.networks["pattern"](source), threshold(self.networks["mask"](source))

    def trigger(self, images: torch.Tensor) -> torch.Tensor:
        pattern, mask = self.pattern_and_mask(images)
        return images + (pattern - images) * mask

    def cross(self, images: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """The trigger made from ``others`` stamped on ``images`` (IAD's cross-trigger samples)."""
        pattern, mask = self.pattern_and_mask(images, mask_from=others)
        return images + (pattern - images) * mask

    # ---- training ------------------------------------------------------------------------
    def train_classifier(self, model, vrun, modality, *, device=None, progress=False):
        spec = vrun.spec
        dataset = clean_raw_train_set(vrun)
        need_images(len(dataset), self.name)
        config = train_config(spec)
        loaders = (seeded_loader(dataset, config.batch_size, config.seed),
                   seeded_loader(dataset, config.batch_size, config.seed + 1))
        self.to(resolve_device(device))
        self.pretrain_mask(loaders, config)
        p_attack, p_cross = float(spec.poison_rate), float(self.opts["p_cross"])
        normalise = vrun.data.normalise
        pattern, mask = self.networks["pattern"], self.networks["mask"]
        optimizer_g = torch.optim.Adam(pattern.parameters(), lr=float(self.opts["lr_g"]), betas=(0.5, 0.9))
        lambda_div = float(self.opts["lambda_div"])

        def step(net, batches, epoch):
            (x1, y1), (x2, _) = batches
            pattern.train()
            n = len(x1)
            n_bd, n_cross = int(p_attack * n), int(p_cross * n)
            n_pair = min(n_bd, n_cross)
            bd_pattern, bd_mask = self.pattern_and_mask(x1[:n_bd])
            x_bd = x1[:n_bd] + (bd_pattern - x1[:n_bd]) * bd_mask
            # pattern and mask both made from x₂ (official create_cross), stamped on x₁
            cross_pattern, cross_mask = self.pattern_and_mask(x1[n_bd:n_bd + n_cross],
                                                              mask_from=x2[n_bd:n_bd + n_cross])
            x_cross = x1[n_bd:n_bd + n_cross] + (cross_pattern - x1[n_bd:n_bd + n_cross]) * cross_mask
            inputs = torch.cat([x_bd, x_cross, x1[n_bd + n_cross:]])
            targets = torch.cat([self.target_tensor(y1[:n_bd]), y1[n_bd:]])
            loss = F.cross_entropy(net(normalise(inputs)), targets)
            if n_pair > 0 and lambda_div > 0:
                loss = loss + lambda_div * diversity(x1[:n_pair], x2[n_bd:n_bd + n_pair],
                                                     bd_pattern[:n_pair], cross_pattern[:n_pair])
            return loss

        mask.eval()
        for p in mask.parameters():
            p.requires_grad_(False)
        train_loop(model, loaders, config, step, optimizers=[optimizer_g], desc="inputaware")
        for p in mask.parameters():
            p.requires_grad_(True)
        self.done_training()
        return {"poisoned_per_batch": int(p_attack * config.batch_size),
                "cross_per_batch": int(p_cross * config.batch_size)}

    def pretrain_mask(self, loaders, config: TrainConfig) -> None:
        """Stage 1 of IAD: the mask generator alone, for sparse (≈ density) input-dependent masks."""
        from tqdm.auto import tqdm

        mask = self.networks["mask"]
        epochs = int(self.opts["mask_epochs"])
        cap = self.opts["mask_steps"]
        total = epochs * min(len(loader) for loader in loaders)
        total = total if cap is None else min(total, int(cap))
        if total <= 0:
            return
        optimizer = torch.optim.Adam(mask.parameters(), lr=float(self.opts["lr_m"]), betas=(0.5, 0.9))
        # official schedulerM: ×0.1 at epochs 10 and 20 (of 25); here at 40% and 80% of the steps
        milestones = (int(0.4 * total), int(0.8 * total))
        density = float(self.opts["mask_density"])
        lambda_norm, lambda_div = float(self.opts["lambda_norm"]), float(self.opts["lambda_div"])
        device = self._network_device()
        mask.train()
        done = 0
        with torch.random.fork_rng():
            torch.manual_seed(self._seed_for(1))
            with tqdm(total=total, desc="inputaware mask", disable=not config.progress, leave=False) as bar:
                while done < total:
                    for (x1, _), (x2, _) in zip(*loaders):
                        if done >= total:
                            break
                        for group in optimizer.param_groups:
                            group["lr"] = float(self.opts["lr_m"]) * 0.1 ** sum(done >= m for m in milestones)
                        x1, x2 = x1.to(device), x2.to(device)
                        m1, m2 = threshold(mask(x1)), threshold(mask(x2))
                        loss = lambda_norm * F.relu(m1 - density).mean() \
                            + lambda_div * diversity(x1, x2, m1, m2)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        done += 1
                        bar.update(1)
        mask.eval()
        with torch.no_grad():
            x, _ = next(iter(loaders[0]))
            log.info("inputaware: mask generator trained for %d steps; mean mask %.4f (density %.3f)",
                     total, float(threshold(mask(x.to(device))).mean()), density)
