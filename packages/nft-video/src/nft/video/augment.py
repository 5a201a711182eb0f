"""Mixing augmentations for clips ``(B, C, T, H, W)``: clip MixUp and VideoMix.

NFT's only source of unusual inputs is mixing clean samples, and the reference README points
video tasks to VideoMix (Kim et al., "VideoMix: Rethinking Data Augmentation for Video
Classification", arXiv 2012.03457). Both augmentations return the core's
:class:`~nft.core.Mixed`, so the loss is the core's ``Σ w · task.loss``, and give the mixed clips
as the clean view (``clean_inputs``) that NFT's distillation shows the original model.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn

from nft.core import ConfigError, Mixed, MixUp
from nft.core.augment import permute_batch

__all__ = ["ClipMixUp", "PatternNoise", "VideoMix"]

VIDEOMIX_MODES = ("spatial", "temporal", "spatio-temporal")


def _check_clips(inputs, name: str) -> None:
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.ndim != 5:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ConfigError(f"{name} mixes float clip batches of shape (B, C, T, H, W), got {shape}")


class ClipMixUp(MixUp):
    """The core's MixUp on whole clips, with their shape checked: ``x̃ = λ·x + (1−λ)·x[π]`` with
    one ``λ ~ Beta(α, α)`` per batch, so every frame of a clip shares it (mixing frames with
    different weights would create motion that is in neither clip)."""

    name = "clip-mixup"

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        _check_clips(inputs, "ClipMixUp")
        return super().__call__(inputs, targets, rng=rng, generator=generator)

    def __repr__(self) -> str:
        return f"ClipMixUp(alpha={self.alpha})"


class VideoMix:
    """VideoMix: paste a cuboid of another clip of the batch into each clip.

    ``mode`` picks the cuboid (Kim et al., §3): ``spatial`` (a box over all frames),
    ``temporal`` (a frame range over the whole frame) or ``spatio-temporal`` (both). As in
    CutMix, ``λ ~ Beta(α, α)`` (α = 1: uniform) sets the kept volume; the cuboid's sides are
    ``(1−λ)^(1/d)`` of the clip's along the ``d`` cut axes, its centre is uniform, it is clipped
    at the borders, and the label weights are the actual volume ratio after clipping.
    """

    name = "videomix"

    def __init__(self, alpha: float = 1.0, mode: str = "spatio-temporal") -> None:
        if not alpha > 0:
            raise ConfigError(f"VideoMix alpha must be positive, got {alpha}")
        if mode not in VIDEOMIX_MODES:
            raise ConfigError(f"VideoMix mode {mode!r} is unknown; use one of {VIDEOMIX_MODES}")
        self.alpha = float(alpha)
        self.mode = mode

    def _span(self, length: int, ratio: float, rng: np.random.Generator) -> tuple[int, int]:
        cut = int(round(length * ratio))
        centre = int(rng.integers(0, length))
        return max(0, centre - cut // 2), min(length, centre + cut - cut // 2)

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        _check_clips(inputs, "VideoMix")
        _, _, frames, height, width = inputs.shape
        lam = float(rng.beta(self.alpha, self.alpha))
        axes = {"spatial": 2, "temporal": 1, "spatio-temporal": 3}[self.mode]
        side = (1.0 - lam) ** (1.0 / axes)
        t0, t1 = (0, frames) if self.mode == "spatial" else self._span(frames, side, rng)
        if self.mode == "temporal":
            (y0, y1), (x0, x1) = (0, height), (0, width)
        else:
            (y0, y1), (x0, x1) = self._span(height, side, rng), self._span(width, side, rng)
        order = torch.randperm(inputs.shape[0], generator=generator)
        mixed = inputs.clone()
        mixed[:, :, t0:t1, y0:y1, x0:x1] = permute_batch(inputs, order)[:, :, t0:t1, y0:y1, x0:x1]
        pasted = (t1 - t0) * (y1 - y0) * (x1 - x0) / float(frames * height * width)
        keep = 1.0 - pasted
        return Mixed(mixed, ((targets, keep), (permute_batch(targets, order), pasted)),
                     clean_inputs=mixed)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"VideoMix(alpha={self.alpha}, mode={self.mode!r})"


class PatternNoise:
    """A mixing augmentation followed by random patterns: each clip gets, with probability
    ``patch_prob``, a square of random black-and-white or uniform noise (side 2 px to
    ``max_patch`` of the frame, anywhere, on all frames or a random frame range) and, with
    probability ``blend_prob``, a random noise video blended in with a ratio up to
    ``max_alpha``. Labels are unchanged.

    Why: clean clips, mixed or not, never contain the sharp local patterns or noise overlays
    that video triggers are made of, so the channels that detect a trigger stay silent during
    mask fine-tuning and their masks get no gradient. Random patterns (which know nothing of the
    actual trigger) wake such channels up on clean content whose label is known, and the masks
    learn to ignore them. ``clean_inputs`` stays the mixed clips without the patterns, so NFT's
    distillation asks the original model only about clips it has seen the like of.
    """

    name = "pattern-noise"

    def __init__(self, base=None, *, patch_prob: float = 0.5, max_patch: float = 0.3,
                 blend_prob: float = 0.3, max_alpha: float = 0.3) -> None:
        for label, value in (("patch_prob", patch_prob), ("blend_prob", blend_prob),
                             ("max_patch", max_patch), ("max_alpha", max_alpha)):
            if not 0 <= value <= 1:
                raise ConfigError(f"PatternNoise {label} must be in [0, 1], got {value}")
        self.base = base if base is not None else ClipMixUp(1.0)
        self.patch_prob, self.max_patch = float(patch_prob), float(max_patch)
        self.blend_prob, self.max_alpha = float(blend_prob), float(max_alpha)

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        mixed = self.base(inputs, targets, rng=rng, generator=generator)
        x = mixed.inputs.clone()
        batch, channels, frames, height, width = x.shape
        largest = max(2, int(round(self.max_patch * min(height, width))))
        for i in range(batch):
            if rng.random() < self.patch_prob:
                side = int(rng.integers(2, largest + 1))
                y0, x0 = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                t0 = int(rng.integers(0, frames)) if rng.random() < 0.3 else 0
                t1 = int(rng.integers(t0 + 1, frames + 1)) if t0 else frames
                shape = (channels if rng.random() < 0.5 else 1, 1 if rng.random() < 0.5 else t1 - t0,
                         side, side)
                noise = torch.rand(shape, generator=generator)
                if rng.random() < 0.5:
                    noise = noise.round()  # black and white
                x[i, :, t0:t1, y0:y0 + side, x0:x0 + side] = noise.to(x).expand(channels, t1 - t0, side, side)
            if rng.random() < self.blend_prob:
                alpha = float(rng.uniform(0.05, self.max_alpha))
                noise = torch.rand((channels, frames, height, width), generator=generator).to(x)
                x[i] = (1 - alpha) * x[i] + alpha * noise
        return Mixed(x, mixed.targets, clean_inputs=mixed.clean_inputs)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return (f"PatternNoise(base={self.base!r}, patch_prob={self.patch_prob}, max_patch={self.max_patch}, "
                f"blend_prob={self.blend_prob}, max_alpha={self.max_alpha})")
