"""Datasets as the core sees them: map-style ``(input, label)`` pairs.

The defender's clean subset is chosen here, by fraction, by count or by k samples per class
(class-balanced; k = 1 is the paper's one-shot setting), deterministically per seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .errors import DataError

__all__ = ["SeededBatches", "collate", "dataset_labels", "move_to", "select_clean_subset"]


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Integer labels of a classification dataset, without loading inputs when possible.

    Reads ``targets`` / ``labels`` attributes (torchvision datasets) and follows ``Subset``;
    otherwise it iterates the dataset once.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attr in ("targets", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None and not callable(value):
            try:
                arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError):
                continue  # e.g. detection datasets keep box dicts under `targets`
            if arr.ndim == 1 and len(arr) == len(dataset) and np.issubdtype(arr.dtype, np.integer):
                return arr.astype(np.int64)
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DataError(
                "the dataset must yield (input, label) pairs; item 0 is "
                f"{type(item).__name__}. Wrap it so __getitem__ returns (input, label)"
            )
        label = item[1]
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = label.item()
        if not isinstance(label, (int, np.integer)):
            raise DataError(
                f"the dataset's targets are {type(label).__name__}, not class labels, so samples "
                "cannot be chosen per class; choose the clean set by count or fraction instead"
            )
        labels.append(int(label))
    return np.asarray(labels, dtype=np.int64)


def select_clean_subset(
    dataset: Dataset,
    *,
    per_class: int | None = None,
    count: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    labels: Sequence[int] | np.ndarray | None = None,
) -> Subset:
    """The defender's clean subset: exactly one of ``per_class``, ``count``, ``fraction``.

    ``per_class=k`` takes k samples of every class present (a class with fewer than k samples is
    an error); ``count`` and ``fraction`` take a uniformly random subset. Deterministic per seed.
    """
    given = [x is not None for x in (per_class, count, fraction)]
    if sum(given) != 1:
        raise DataError("choose the clean subset with exactly one of per_class, count or fraction")
    n = len(dataset)
    if n == 0:
        raise DataError("the clean dataset is empty; NFT needs at least one sample per class")
    rng = np.random.default_rng(seed)
    if per_class is not None:
        if per_class < 1:
            raise DataError(f"per_class must be ≥ 1, got {per_class}")
        y = np.asarray(labels) if labels is not None else dataset_labels(dataset)
        chosen = []
        for cls in np.unique(y):
            pool = np.flatnonzero(y == cls)
            if len(pool) < per_class:
                raise DataError(
                    f"class {int(cls)} has only {len(pool)} samples in the clean pool, fewer than "
                    f"the {per_class} per class asked for; lower per_class or enlarge the pool"
                )
            chosen.extend(rng.choice(pool, size=per_class, replace=False).tolist())
        indices = sorted(chosen)
    else:
        if fraction is not None:
            if not 0 < fraction <= 1:
                raise DataError(f"fraction must be in (0, 1], got {fraction}")
            count = max(1, int(round(fraction * n)))
        if not 1 <= count <= n:
            raise DataError(f"count must be in [1, {n}] for a dataset of {n} samples, got {count}")
        indices = sorted(rng.choice(n, size=count, replace=False).tolist())
    return Subset(dataset, indices)


def collate(items: list[Any]) -> Any:
    """``default_collate`` with a clear error when samples do not stack."""
    from torch.utils.data import default_collate

    try:
        return default_collate(items)
    except RuntimeError as err:
        shapes = sorted({tuple(i[0].shape) for i in items if isinstance(i[0], torch.Tensor)})
        raise DataError(
            f"samples of the dataset cannot be batched ({err}); input shapes seen: {shapes[:4]}. "
            "Give every sample the same shape (resize in the dataset's transform)"
        ) from None


def move_to(value: Any, device: torch.device) -> Any:
    """Move tensors (possibly nested in lists / tuples / dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [move_to(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(move_to(v, device) for v in value)
    return value


class SeededBatches:
    """Batch ``s`` of a run, drawn with replacement from generators seeded by ``(seed, s)``.

    Every loop in nft (NFT and the other defenses) draws its clean batches here, so a run is
    bitwise reproducible on CPU and can resume at any step. The global torch RNG is reseeded per
    batch because dataset transforms (random crop, flip) draw from it; callers run inside
    ``torch.random.fork_rng`` so the user's RNG state is untouched.

    Under ``torchrun`` each rank draws ``ceil(batch_size / world_size)`` samples from its own
    disjoint shard of the dataset, so the global batch keeps its size and no sample is shared.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, device: torch.device,
                 collate_fn=None) -> None:
        from .distributed import current, shard

        if len(dataset) == 0:
            raise DataError("the clean dataset is empty; it needs at least one sample per class")
        self.dataset, self.seed, self.device = dataset, seed, device
        self.collate_fn = collate_fn or collate
        info = current()
        self.rank = info.rank
        self.indices = np.asarray(shard(len(dataset)) if info.distributed else range(len(dataset)))
        if len(self.indices) == 0:
            raise DataError(f"the clean set ({len(dataset)} samples) is smaller than the number of "
                            f"ranks ({info.world_size}); use more clean samples or fewer processes")
        self.batch_size = -(-batch_size // info.world_size)

    def generators(self, step: int) -> tuple[np.random.Generator, torch.Generator, int]:
        key = [self.seed, step] if self.rank == 0 else [self.seed, step, self.rank]
        entropy = np.random.SeedSequence(key).generate_state(3)
        generator = torch.Generator().manual_seed(int(entropy[1]))
        return np.random.default_rng(int(entropy[0])), generator, int(entropy[2])

    def get(self, step: int) -> tuple[Any, Any, np.random.Generator, torch.Generator]:
        """``(inputs, targets, rng, generator)`` for step ``step``, on the device."""
        rng, generator, torch_seed = self.generators(step)
        picks = self.indices[rng.integers(0, len(self.indices), size=self.batch_size)]
        torch.manual_seed(torch_seed)
        batch = self.collate_fn([self.dataset[int(i)] for i in picks])
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError("the clean dataset must yield (input, target) pairs")
        return move_to(batch[0], self.device), move_to(batch[1], self.device), rng, generator
