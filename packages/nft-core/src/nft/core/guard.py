"""A check that a defense did not wreck the model it was asked to clean.

A purification that diverges (too high a learning rate, masks driven to zero) returns a model
near chance accuracy, and nothing in the loop notices: the loss it optimises is on mixed
samples and includes regularisers. ``purify()`` therefore scores the model on the defender's own
clean set before and after, puts both numbers in ``PurifyResult.info["clean_set"]``, and warns
with :class:`PurificationWarning` when the score fell by more than ``max_drop``. No attack data
is used, so the check is available to every defender.

A task takes part by defining ``score(outputs, targets) -> (correct, total)`` (classification:
labels; segmentation: labelled pixels; detection: objects found by a confident detection of
their class). Tasks without it (generation) are not checked.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .data import collate, move_to
from .errors import DataError
from .tasks import Task

__all__ = ["PurificationWarning", "clean_set_score", "check_clean_set", "collapsed", "MAX_DROP", "MAX_SAMPLES"]

MAX_DROP = 0.2
"""Absolute fall in clean-set score (0.2 = 20 points) above which ``purify()`` warns."""
MAX_SAMPLES = 1000
"""The check scores at most this many clean samples (the first ones), so it stays cheap."""


class PurificationWarning(UserWarning):
    """The purified model lost much of its clean-set score: it may have collapsed."""


@contextmanager
def _seeded_and_preserved_rng(seed: int = 0):
    """Datasets with random transforms (crop, flip) draw from the global generators. The check
    seeds them, so its score is the same on every run, and restores them after, so it does not
    shift the defense's own random stream (runs stay bitwise reproducible with or without it)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def clean_set_score(
    model: nn.Module, dataset: Dataset, task: Task, *,
    collate_fn: Callable[[list], Any] | None = None, batch_size: int = 128, max_samples: int = MAX_SAMPLES,
) -> float | None:
    """The task's score (accuracy) of ``model`` in eval mode on up to ``max_samples`` samples of
    ``dataset``, in index order; ``None`` when the task has no ``score``."""
    score = getattr(task, "score", None)
    if score is None or len(dataset) == 0:
        return None
    device, was_training = _device(model), model.training
    correct = total = 0
    count = min(len(dataset), max_samples)
    model.eval()
    try:
        with _seeded_and_preserved_rng(), torch.no_grad():
            for start in range(0, count, batch_size):
                batch = (collate_fn or collate)([dataset[i] for i in range(start, min(count, start + batch_size))])
                inputs, targets = move_to(batch[0], device), move_to(batch[1], device)
                try:
                    outputs = task.forward(model, inputs)
                except (RuntimeError, TypeError, ValueError) as err:
                    if start > 0:
                        raise
                    raise DataError.model_cannot_run(inputs, err) from None
                right, seen = score(outputs, targets)
                correct, total = correct + int(right), total + int(seen)
    finally:
        model.train(was_training)
    return correct / total if total else None


def collapsed(before: float | None, after: float | None, max_drop: float = MAX_DROP) -> bool:
    """Whether the clean-set score fell by more than ``max_drop`` (False when either is unknown)."""
    return before is not None and after is not None and before - after > max_drop


def check_clean_set(before: float | None, after: float | None, *, method: str, dataset_size: int,
                    max_drop: float = MAX_DROP) -> dict | None:
    """Warn when the score fell by more than ``max_drop``; returns the record for ``info``."""
    if before is None or after is None:
        return None
    samples = min(dataset_size, MAX_SAMPLES)
    if collapsed(before, after, max_drop):
        warnings.warn(
            f"{method} cut the clean-set score from {100 * before:.1f} % to {100 * after:.1f} % "
            f"(on {samples} clean samples): the purified model may have collapsed. Lower the "
            "defense's learning rate or step count (for NFT, `lr` or `max_grad_norm`), or check "
            "that the clean set matches the model's input transform",
            PurificationWarning, stacklevel=3,
        )
    return {"before": before, "after": after, "samples": samples}
