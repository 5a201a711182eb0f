"""Output-bias calibration: the last step of ``nft``, after the masks are folded in.

Scaling channels shifts every class score by a different amount, and classes that rest on fine
features lose most: on the demo's Fashion-MNIST model, NFT took the recall of "shirt" from 72 %
to 35 % while the other nine classes barely moved, because the masked network now scores shirts
lower across the board. Re-fitting only the classifier's bias, one number per class, on the same
clean images undoes that shift (+1.5 points of accuracy there, and ASR 6.3 → 4.4 %; see
``benchmarks/results/ablation.md``). A bias is the same for every input, so it cannot hold a
trigger: the calibration moves class priors, never what any input pattern does.

The bias is fitted by L-BFGS on the logits of several augmented views of the clean set (the
dataset's own transforms make the views), with a Gaussian prior centred on the current bias whose
weight grows as the clean set shrinks, so that a few samples per class cannot push it far. Under
``torchrun`` the loss and its gradient are averaged over ranks, so every rank ends with the same
bias.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .data import SeededBatches
from .distributed import all_reduce_sum, average_gradients
from .errors import ConfigError
from .tasks import ClassificationTask, Task

__all__ = ["calibrate_output_bias"]

log = logging.getLogger(__name__)

VIEWS_MIN, VIEWS_MAX = 1000, 20000
"""Augmented samples the bias is fitted on: five views of each clean image, within these bounds."""
PRIOR_SCALE = 1.0
"""Standard deviation of the Gaussian prior on δ (the change of bias), in logits: the fit
minimises mean cross-entropy + ‖δ‖² / (2 · PRIOR_SCALE² · N) for N clean images, the
maximum-a-posteriori estimate, so a small clean set moves the bias less than a large one."""


def calibrate_output_bias(model: nn.Module, clean: Dataset, task: Task, *, device: torch.device,
                          seed: int = 0, batch_size: int = 128, collate_fn=None) -> dict[str, Any]:
    """Re-fit the bias of ``model``'s output layer on ``clean``, in place.

    Applies to classification models whose logits come out of an ``nn.Linear`` with a bias;
    anything else is left untouched and the returned dict says why (``{"skipped": reason}``).
    Otherwise returns ``{"layer", "shift"}``: the layer's name and the per-class change.
    """
    from .defenses._common import find_head

    if not isinstance(task, ClassificationTask):
        return _skip(f"the task is {type(task).__name__}, not classification")
    batches = SeededBatches(clean, batch_size, seed + 7919, device, collate_fn)  # its own stream
    draws = math.ceil(min(max(5 * len(clean), VIEWS_MIN), VIEWS_MAX) / batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            first, _, _, _ = batches.get(0)
            try:
                name, head = find_head(model, task, first, user="output-bias calibration")
            except ConfigError as err:
                return _skip(str(err).split(";")[0])
            if head.bias is None:
                return _skip(f"the output layer {name} has no bias")
            logits, labels = [], []
            with torch.no_grad():
                for step in range(draws):
                    inputs, targets, _, _ = batches.get(step)
                    logits.append(task.forward(model, inputs).float())
                    labels.append(targets)
        scores, targets = torch.cat(logits), torch.cat(labels)
        if scores.ndim != 2 or scores.shape[1] != head.bias.numel():
            return _skip(f"the model's outputs {tuple(scores.shape)} are not one score per class")
        shift = _fit_shift(scores, targets, task, pull=1.0 / (2 * PRIOR_SCALE ** 2 * len(clean)))
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            before = task.forward(model, first).float()
            head.bias.add_(shift.to(head.bias.dtype))
            moved = task.forward(model, first).float() - before
            if not torch.allclose(moved, shift.expand_as(moved), atol=1e-3, rtol=1e-3):
                head.bias.sub_(shift.to(head.bias.dtype))  # the logits are not this layer's output
                return _skip(f"the logits are not the output of {name}")
    finally:
        model.train(was_training)
    log.info("calibrated the bias of %s (largest change %.3f)", name, shift.abs().max())
    return {"layer": name, "shift": [round(v, 4) for v in shift.tolist()]}


def _fit_shift(scores: torch.Tensor, targets: torch.Tensor, task: Task, pull: float) -> torch.Tensor:
    shift = torch.zeros(scores.shape[1], device=scores.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([shift], max_iter=100, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = task.loss(scores + shift, targets) + pull * shift.pow(2).sum()
        loss.backward()
        average_gradients([shift])
        total = all_reduce_sum([float(loss.detach())])[0]
        return torch.tensor(total / max(1, _world_size()))

    optimizer.step(closure)
    return shift.detach()


def _world_size() -> int:
    from .distributed import current

    return current().world_size


def _skip(reason: str) -> dict[str, Any]:
    log.info("output-bias calibration skipped: %s", reason)
    return {"skipped": reason}
