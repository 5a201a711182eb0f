"""Mixing for segmentation: MixUp and CutMix on an image batch and its label maps together.

* :class:`SegMixUp` blends images, ``x̃ = λ·x + (1−λ)·x[π]`` with ``λ ~ Beta(α, α)`` once per
  batch (Zhang et al., 2018), and scores the result against both label maps, weighted ``λ`` and
  ``1−λ`` — per-pixel cross-entropy is linear in the target, so this equals the loss against the
  blended one-hot maps.
* :class:`SegCutMix` pastes one box of ``x[π]`` into ``x`` (Yun et al., ICCV 2019; box area
  ``1−λ``) and cuts the label maps with the very same box, so every pixel keeps an exact label:
  one target of weight 1.

Both draw λ and the box from the loop's ``rng`` and the permutation from its ``generator``, so a
purification run is reproducible.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from nft.core import ConfigError, Mixed
from nft.core.augment import permute_batch

__all__ = ["AUGMENTATIONS", "SegCutMix", "SegMixUp"]


def _check(inputs, targets, name: str) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        raise ConfigError(f"{name} mixes N×C×H×W floating-point image batches; got "
                          f"{type(inputs).__name__} {tuple(getattr(inputs, 'shape', ()))}")
    if not isinstance(targets, torch.Tensor) or targets.ndim != 3 or targets.shape[0] != inputs.shape[0] \
            or targets.shape[-2:] != inputs.shape[-2:]:
        raise ConfigError(f"{name} needs one H×W label map per image (N×H×W, same H and W as the images); "
                          f"got {tuple(getattr(targets, 'shape', ()))} for images {tuple(inputs.shape)}")


class SegMixUp:
    """MixUp of images; both label maps are scored, weighted by the same λ."""

    name = "mixup"

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ConfigError(f"MixUp alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        _check(inputs, targets, "segmentation MixUp")
        lam = float(rng.beta(self.alpha, self.alpha))
        order = torch.randperm(inputs.shape[0], generator=generator)
        mixed = lam * inputs + (1.0 - lam) * permute_batch(inputs, order)
        return Mixed(mixed, ((targets, lam), (permute_batch(targets, order), 1.0 - lam)))

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"SegMixUp(alpha={self.alpha})"


class SegCutMix:
    """CutMix of images and label maps with the same box; one exact target of weight 1."""

    name = "cutmix"

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ConfigError(f"CutMix alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def box(self, h: int, w: int, rng) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of a box of area about ``1 − λ``, clipped to the image."""
        lam = float(rng.beta(self.alpha, self.alpha))
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        _check(inputs, targets, "segmentation CutMix")
        top, bottom, left, right = self.box(inputs.shape[-2], inputs.shape[-1], rng)
        order = torch.randperm(inputs.shape[0], generator=generator)
        mixed, labels = inputs.clone(), targets.clone()
        mixed[..., top:bottom, left:right] = permute_batch(inputs, order)[..., top:bottom, left:right]
        labels[..., top:bottom, left:right] = permute_batch(targets, order)[..., top:bottom, left:right]
        return Mixed(mixed, ((labels, 1.0),))

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"SegCutMix(alpha={self.alpha})"


AUGMENTATIONS = {"mixup": SegMixUp, "cutmix": SegCutMix}
