"""Mixing augmentations: a batch in, mixed inputs plus weighted targets out.

NFT's only source of "unusual" inputs is mixing clean samples (MixUp in the paper). The
:class:`Mixed` contract keeps every modality on one loss, ``Σ weight · task.loss(out, target)``
(:func:`mixed_loss`), so detection loss dicts, token losses and class labels all fit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Augmentation", "CutMix", "Mixed", "MixUp", "NoAugmentation", "RandomPatterns", "mixed_loss",
           "permute_batch"]


@dataclass(frozen=True)
class Mixed:
    """Mixed inputs and the targets they are scored against, with weights summing to 1."""

    inputs: Any
    targets: tuple[tuple[Any, float], ...]
    clean_inputs: Any = None
    """The same batch before any trigger-like pattern was added (for plain mixing, ``inputs``
    itself; for text mixed inside the model, the same mixture without the adversarial token):
    what NFT's distillation term shows the original model, which is never asked about a pattern.
    ``None`` when there is no such view (detection batches)."""


@runtime_checkable
class Augmentation(Protocol):
    """``augmentation(inputs, targets, rng=...) -> Mixed``.

    ``rng`` is a :class:`numpy.random.Generator` for scalar draws (λ) and ``generator`` a
    :class:`torch.Generator` for tensor draws (permutations), both seeded by the loop so a run
    is reproducible. ``hooks(model)`` may return a context manager installing forward hooks
    for hidden-space mixing (text embeddings); it is removed when the context exits.
    """

    def __call__(self, inputs: Any, targets: Any, *, rng: np.random.Generator,
                 generator: torch.Generator) -> Mixed: ...


class NoAugmentation:
    """Identity: the batch as it is, one target with weight 1 (the `nft-no-mixup` ablation)."""

    name = "none"

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        return Mixed(inputs, ((targets, 1.0),), clean_inputs=inputs)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return "NoAugmentation()"


def permute_batch(value: Any, order: torch.Tensor) -> Any:
    """Reorder a batch: a tensor along dim 0, a list / tuple item by item, a dict value-wise."""
    if isinstance(value, torch.Tensor):
        return value[order.to(value.device)]
    if isinstance(value, dict):
        return {k: permute_batch(v, order) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [value[i] for i in order.tolist()]
    raise ConfigError(f"cannot permute a batch of type {type(value).__name__}")


class MixUp:
    """MixUp on any batched floating tensor (images, clips, point clouds, features).

    ``x̃ = λ·x + (1−λ)·x[π]`` with ``λ ~ Beta(alpha, alpha)`` drawn once per batch and ``π`` a
    random permutation of the batch (Zhang et al., 2018; the NFT reference code uses alpha = 1).
    """

    name = "mixup"

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ConfigError(f"MixUp alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise ConfigError(
                "MixUp mixes floating-point tensor batches; this modality needs its own "
                f"augmentation (got {type(inputs).__name__})"
            )
        lam = float(rng.beta(self.alpha, self.alpha))
        order = torch.randperm(inputs.shape[0], generator=generator)
        mixed = lam * inputs + (1.0 - lam) * permute_batch(inputs, order)
        return Mixed(mixed, ((targets, lam), (permute_batch(targets, order), 1.0 - lam)),
                     clean_inputs=mixed)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha})"


class CutMix:
    """With probability ``prob`` per batch, composite images instead of the ``base`` mixing.

    A region of each sample is replaced by the same region of another sample of the batch (one
    random permutation, one region per batch) and the two labels are weighted by area (Yun et
    al., 2019, CutMix: λ ~ Beta(α, α) is the kept share). The region is a box (CutMix's own) or,
    half the time, a full-height or full-width strip, so that "one object beside another" is
    among the composites. The clean view is the batch before pasting.

    Why: a composite backdoor (CBA) uses no foreign pattern; its trigger is two benign classes'
    contents side by side, which neither MixUp's blends nor random noise patterns resemble.
    Composites of clean images labelled by area teach the masks that such an image is a bit of
    each class, never a third one. Other inputs than float batches ``(B, C, [T,] H, W)`` always
    go to the base mixing.
    """

    name = "cutmix"

    def __init__(self, base: Augmentation | None = None, *, prob: float = 0.5, alpha: float = 1.0) -> None:
        if not 0 <= prob <= 1:
            raise ConfigError(f"CutMix prob must be in [0, 1], got {prob}")
        if not alpha > 0:
            raise ConfigError(f"CutMix alpha must be positive, got {alpha}")
        self.base = base if base is not None else MixUp(1.0)
        self.prob, self.alpha = float(prob), float(alpha)

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        spatial = isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.ndim >= 4
        if not spatial or rng.random() >= self.prob:
            return self.base(inputs, targets, rng=rng, generator=generator)
        height, width = inputs.shape[-2:]
        cut = 1.0 - float(rng.beta(self.alpha, self.alpha))  # the pasted share
        shape = rng.random()
        if shape < 0.25:  # a full-height strip
            h, w = height, int(round(cut * width))
        elif shape < 0.5:  # a full-width strip
            h, w = int(round(cut * height)), width
        else:  # CutMix's box: sides scaled by sqrt(cut)
            h, w = int(round(cut ** 0.5 * height)), int(round(cut ** 0.5 * width))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        order = torch.randperm(inputs.shape[0], generator=generator)
        x = inputs.clone()
        x[..., top:top + h, left:left + w] = permute_batch(inputs, order)[..., top:top + h, left:left + w]
        kept = 1.0 - h * w / (height * width)
        return Mixed(x, ((targets, kept), (permute_batch(targets, order), 1.0 - kept)), clean_inputs=inputs)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return self.base.hooks(model) if hasattr(self.base, "hooks") else nullcontext()

    def __repr__(self) -> str:
        return f"CutMix(base={self.base!r}, prob={self.prob}, alpha={self.alpha})"


def mixed_loss(task: Any, outputs: Any, mixed: Mixed) -> torch.Tensor:
    """``Σ weight · task.loss(outputs, target)`` over the mixed targets."""
    total = None
    for target, weight in mixed.targets:
        if weight == 0:
            continue
        term = weight * task.loss(outputs, target)
        total = term if total is None else total + term
    if total is None:
        raise ConfigError("the augmentation returned only zero-weight targets")
    return total




class RandomPatterns:
    """A mixing augmentation followed by random, trigger-agnostic patterns (labels unchanged).

    Each sample of the mixed batch gets, with probability ``patch_prob``, a box of uniform or
    black-and-white noise (side 2 px up to ``max_patch`` of the shorter spatial side, anywhere)
    and, with probability ``blend_prob``, a full-size uniform-noise pattern blended in at a ratio
    drawn from ``[0.05, max_alpha]``. Noise spans each sample's own value range, so normalised
    and raw inputs are treated alike. The last two dimensions are the spatial ones: this works
    for images ``(B, C, H, W)`` and clips ``(B, C, T, H, W)``; other inputs (features, tokens,
    point sets) are left as the base augmentation mixed them, with one logged warning.

    Why: clean samples, mixed or not, never contain the sharp local patterns or overlays that
    triggers are made of, so the channels that detect a trigger stay silent during mask
    fine-tuning and their masks receive no gradient (measured: MixUp alone left a Blend
    backdoor at 51 % ASR). Random patterns, which know nothing of the actual trigger, wake such
    channels on clean content whose label is known, and the masks learn to damp them.
    """

    name = "random-patterns"

    def __init__(self, base: Augmentation | None = None, *, patch_prob: float = 0.5,
                 max_patch: float = 0.3, blend_prob: float = 0.5, max_alpha: float = 0.3) -> None:
        for label, value in (("patch_prob", patch_prob), ("blend_prob", blend_prob),
                             ("max_patch", max_patch), ("max_alpha", max_alpha)):
            if not 0 <= value <= 1:
                raise ConfigError(f"RandomPatterns {label} must be in [0, 1], got {value}")
        self.base = base if base is not None else MixUp(1.0)
        self.patch_prob, self.max_patch = float(patch_prob), float(max_patch)
        self.blend_prob, self.max_alpha = float(blend_prob), float(max_alpha)
        self._warned = False

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        mixed = self.base(inputs, targets, rng=rng, generator=generator)
        x = mixed.inputs
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 4:
            if not self._warned:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                log.warning("random patterns need float batches (B, C, [T,] H, W); inputs of shape %s "
                            "are only mixed", shape)
                self._warned = True
            return mixed
        x = x.clone()
        height, width = x.shape[-2:]
        largest = max(2, int(round(self.max_patch * min(height, width))))
        for i in range(x.shape[0]):
            sample = x[i]
            low, high = sample.min(), sample.max()
            if rng.random() < self.patch_prob:
                side = int(rng.integers(2, largest + 1))
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                # one noise plane shared by all channels (grey) or one per channel (colour)
                lead = sample.shape[:-2] if rng.random() < 0.5 else (1,) * (sample.ndim - 2)
                noise = torch.rand((*lead, side, side), generator=generator)
                if rng.random() < 0.5:
                    noise = noise.round()  # black and white, as patch triggers usually are
                box = sample[..., top:top + side, left:left + side]
                box.copy_((low + (high - low) * noise.to(x)).expand_as(box))
            if rng.random() < self.blend_prob:
                alpha = float(rng.uniform(0.05, self.max_alpha))
                noise = torch.rand(sample.shape, generator=generator).to(x)
                sample.mul_(1 - alpha).add_(alpha * (low + (high - low) * noise))
        return Mixed(x, mixed.targets, clean_inputs=mixed.clean_inputs)

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return self.base.hooks(model) if hasattr(self.base, "hooks") else nullcontext()

    def __repr__(self) -> str:
        return (f"RandomPatterns(base={self.base!r}, patch_prob={self.patch_prob}, "
                f"max_patch={self.max_patch}, blend_prob={self.blend_prob}, max_alpha={self.max_alpha})")
