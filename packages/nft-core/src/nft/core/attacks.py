"""The attack side as the core sees it: poisoned training sets and triggered test sets.

A modality's attacks build on these two datasets:

* :class:`PoisonedDataset` returns the poisoned version of a fixed, seeded set of indices of a
  clean dataset (trigger stamped and, unless clean-label, the label changed);
* :class:`TriggeredDataset` is the test set with the trigger applied, keeping only samples whose
  true label differs from the attack's target (so ASR is not inflated by target-class samples).
  It yields ``(input, true label, target label)``.

Labels follow :func:`attack_target`: all-to-one sends every label to ``target``, all-to-all
sends ``y`` to ``(y + 1) mod C`` (BadNets' all-to-all).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .errors import ConfigError

__all__ = ["MODES", "PoisonedDataset", "TriggeredDataset", "attack_target", "choose_poison_indices"]

MODES = ("all-to-one", "all-to-all")


def attack_target(label: int, *, mode: str, target: int, num_classes: int) -> int:
    if mode == "all-to-one":
        return target
    if mode == "all-to-all":
        return (int(label) + 1) % num_classes
    raise ConfigError(f"attack mode {mode!r} is unknown; use one of {MODES}")


def choose_poison_indices(
    labels: np.ndarray, *, rate: float, seed: int, mode: str, target: int,
    clean_label: bool = False,
) -> np.ndarray:
    """Indices to poison, deterministic per seed.

    Dirty-label attacks poison ``rate`` of the samples whose label is not the target (all-to-one)
    or of all samples (all-to-all); clean-label attacks poison ``rate`` of the target class.
    """
    if not 0 < rate <= 1:
        raise ConfigError(f"poison rate must be in (0, 1], got {rate}")
    labels = np.asarray(labels)
    if clean_label:
        pool = np.flatnonzero(labels == target)
    elif mode == "all-to-one":
        pool = np.flatnonzero(labels != target)
    else:
        pool = np.arange(len(labels))
    if len(pool) == 0:
        raise ConfigError(f"no sample can be poisoned (target {target}, mode {mode})")
    count = max(1, int(round(rate * len(pool))))
    return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))


class PoisonedDataset(Dataset):
    """A clean dataset with the items at ``indices`` replaced by ``poison(input, label, index)``.

    ``base`` yields raw ``(input, label)``; ``transform`` (training augmentation, normalisation)
    runs after the trigger, as in the attacks' reference code.
    """

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int],
        poison: Callable[[Any, int, int], tuple[Any, int]],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.base = base
        self.poison_indices = np.asarray(sorted(int(i) for i in indices), dtype=np.int64)
        self._poisoned = set(self.poison_indices.tolist())
        self.poison = poison
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def is_poisoned(self, index: int) -> bool:
        return index in self._poisoned

    def __getitem__(self, index: int):
        x, y = self.base[index]
        if index in self._poisoned:
            x, y = self.poison(x, int(y), index)
        if self.transform is not None:
            x = self.transform(x)
        return x, y


class TriggeredDataset(Dataset):
    """The triggered test set: ``(apply(input), true label, target label)`` for non-target samples."""

    def __init__(
        self,
        base: Dataset,
        labels: np.ndarray,
        apply: Callable[[Any, int], Any],
        target_of: Callable[[int], int],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        labels = np.asarray(labels)
        self.base = base
        self.apply = apply
        self.target_of = target_of
        self.transform = transform
        keep = [i for i, y in enumerate(labels) if target_of(int(y)) != int(y)]
        self.indices = np.asarray(keep, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        x, y = self.base[index]
        x = self.apply(x, index)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(y), self.target_of(int(y))
