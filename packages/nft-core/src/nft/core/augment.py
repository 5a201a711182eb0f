"""Mixing augmentations: a batch in, mixed inputs plus weighted targets out.

NFT's only source of "unusual" inputs is mixing clean samples (MixUp in the paper). The
:class:`Mixed` contract keeps every modality on one loss, ``Σ weight · task.loss(out, target)``
(:func:`mixed_loss`), so detection loss dicts, token losses and class labels all fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError

__all__ = ["Augmentation", "Mixed", "MixUp", "NoAugmentation", "mixed_loss", "permute_batch"]


@dataclass(frozen=True)
class Mixed:
    """Mixed inputs and the targets they are scored against, with weights summing to 1."""

    inputs: Any
    targets: tuple[tuple[Any, float], ...]


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
        return Mixed(inputs, ((targets, 1.0),))

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
        return Mixed(mixed, ((targets, lam), (permute_batch(targets, order), 1.0 - lam)))

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha})"


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


