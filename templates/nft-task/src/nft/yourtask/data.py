"""Datasets of this task: map-style, ``(input tensor, target)`` per item, nothing downloaded.

Replace ``ToySignals`` with loaders of real data (read from ``--data-root``; a missing dataset
raises ``nft.core.DataError`` naming where it was looked for and how to get it), and keep one
embedded or generated dataset as the default so ``nft attack`` runs with no argument.
A ``targets`` attribute (one integer label per item) lets ``nft purify --clean-per-class k``
pick a class-balanced clean set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import ConfigError

__all__ = ["DATASETS", "ToySignals", "load_dataset"]


class ToySignals(Dataset):
    """``n`` noisy 1-D signals, one sine frequency per class; deterministic per seed."""

    def __init__(self, n: int, *, classes: int = 4, length: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, classes, size=n)
        t = np.arange(length, dtype=np.float32) / length
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1)).astype(np.float32)
        freq = (2 + 2 * labels[:, None]).astype(np.float32)
        signals = np.sin(2 * np.pi * freq * t[None, :] + phase)
        signals += rng.normal(0, 0.4, size=signals.shape).astype(np.float32)
        self.inputs = torch.from_numpy(signals.astype(np.float32)).unsqueeze(1)
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.classes = classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.inputs[index], int(self.targets[index])


def load_dataset(name: str, n_train: int, n_test: int, seed: int = 0, root: str | None = None):
    """``(train, test, num_classes)`` of dataset ``name``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](n_train, n_test, seed, root)


def _toy(n_train: int, n_test: int, seed: int, root: str | None):
    return ToySignals(n_train, seed=seed), ToySignals(n_test, seed=seed + 10_000), 4


DATASETS = {"toy": _toy}
