"""Image mixing augmentations for NFT: MixUp (the paper's default) and CutMix.

MixUp is the core's tensor :class:`~nft.core.MixUp`, which mixes whole images. CutMix (Yun et al.,
ICCV 2019) pastes a random box of another image of the batch; the box's area fraction is
``1 − λ`` with ``λ ~ Beta(α, α)`` (α = 1 in the paper), and the targets are weighted by the
exact pasted area after the box is clipped to the image.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from nft.core import ConfigError, Mixed, MixUp
from nft.core.augment import RandomPatterns, permute_batch

__all__ = ["AUGMENTATIONS", "CutMix", "MixUp"]


class CutMix:
    """CutMix on N×C×H×W image batches; seeded through the loop's ``rng`` and ``generator``."""

    name = "cutmix"

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ConfigError(f"CutMix alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
            raise ConfigError(
                "CutMix mixes N×C×H×W floating-point image batches; got "
                f"{type(inputs).__name__} {tuple(getattr(inputs, 'shape', ()))}"
            )
        lam = float(rng.beta(self.alpha, self.alpha))
        order = torch.randperm(inputs.shape[0], generator=generator)
        h, w = inputs.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        mixed = inputs.clone()
        mixed[..., top:bottom, left:right] = permute_batch(inputs, order)[..., top:bottom, left:right]
        kept = 1.0 - (bottom - top) * (right - left) / float(h * w)
        return Mixed(mixed, ((targets, kept), (permute_batch(targets, order), 1.0 - kept)),
                     clean_inputs=mixed)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"CutMix(alpha={self.alpha})"


AUGMENTATIONS = {"mixup": MixUp, "cutmix": CutMix, "random-patterns": RandomPatterns}
"""By name for ``--augmentation``: ``mixup`` and ``cutmix`` alone (the paper's mixing), or
``random-patterns`` (MixUp then random noise boxes and overlays, what the shipped ``nft`` uses when
no augmentation is named)."""
