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

Dense tasks (``distillable`` tasks whose logits are per position, e.g. per-pixel segmentation,
``N×C×H×W``) are calibrated the same way with every labelled position a sample: the head is then
the last convolution (or linear layer) with one output channel per class, and a per-class bias
passes unchanged through the bilinear upsampling such models end with. On canvas segmentation
the refit lowered ASR by about a point at no mIoU cost (``docs/segmentation.md``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
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
DENSE_POSITIONS_MAX = 200_000
"""Dense tasks: at most this many labelled positions (drawn evenly from every batch, seeded) are
kept for the fit, so a large clean set of big label maps fits in memory."""
PRIOR_SCALE = 1.0
"""Standard deviation of the Gaussian prior on δ (the change of bias), in logits: the fit
minimises mean cross-entropy + ‖δ‖² / (2 · PRIOR_SCALE² · N) for N clean images, the
maximum-a-posteriori estimate, so a small clean set moves the bias less than a large one."""


def calibrate_output_bias(model: nn.Module, clean: Dataset, task: Task, *, device: torch.device,
                          seed: int = 0, batch_size: int = 128, collate_fn=None) -> dict[str, Any]:
    """Re-fit the bias of ``model``'s output layer on ``clean``, in place.

    Applies to classification models whose logits come out of an ``nn.Linear`` with a bias, and
    to dense models (a ``distillable`` task with per-position logits) whose logits come out of a
    layer with a bias and one output channel per class; anything else is left untouched and the
    returned dict says why (``{"skipped": reason}``). Otherwise returns ``{"layer", "shift"}``:
    the layer's name and the per-class change.
    """
    dense = not isinstance(task, ClassificationTask) and bool(getattr(task, "distillable", False))
    if not isinstance(task, ClassificationTask) and not dense:
        return _skip(f"the task is {type(task).__name__}, not classification or per-position classes")
    batches = SeededBatches(clean, batch_size, seed + 7919, device, collate_fn)  # its own stream
    draws = math.ceil(min(max(5 * len(clean), VIEWS_MIN), VIEWS_MAX) / batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            first, _, _, _ = batches.get(0)
            try:
                name, head = (_dense_head(model, task, first) if dense else
                              _linear_head(model, task, first))
            except ConfigError as err:
                return _skip(str(err).split(";")[0])
            if head.bias is None:
                return _skip(f"the output layer {name} has no bias")
            classes = head.bias.numel()
            picker = torch.Generator().manual_seed(seed + 104729)
            logits, labels = [], []
            with torch.no_grad():
                for step in range(draws):
                    inputs, targets, _, _ = batches.get(step)
                    scores = task.forward(model, inputs).float()
                    if dense:
                        scores, targets = _positions(scores, targets, task, classes,
                                                     math.ceil(DENSE_POSITIONS_MAX / draws), picker)
                    logits.append(scores)
                    labels.append(targets)
        scores, targets = torch.cat(logits), torch.cat(labels)
        if scores.ndim != 2 or scores.shape[1] != classes:
            return _skip(f"the model's outputs {tuple(scores.shape)} are not one score per class")
        if targets.numel() == 0:
            return _skip("the clean set has no labelled positions")
        loss = (lambda s, t: F.cross_entropy(s, t.long())) if dense else task.loss
        shift = _fit_shift(scores, targets, loss, pull=1.0 / (2 * PRIOR_SCALE ** 2 * len(clean)))
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            before = task.forward(model, first).float()
            head.bias.add_(shift.to(head.bias.dtype))
            moved = task.forward(model, first).float() - before
            expected = shift.view(1, -1, *([1] * (moved.ndim - 2))).expand_as(moved)
            if not torch.allclose(moved, expected, atol=1e-3, rtol=1e-3):
                head.bias.sub_(shift.to(head.bias.dtype))  # the logits are not this layer's output
                return _skip(f"the logits are not the output of {name}")
    finally:
        model.train(was_training)
    log.info("calibrated the bias of %s (largest change %.3f)", name, shift.abs().max())
    return {"layer": name, "shift": [round(v, 4) for v in shift.tolist()]}


def _linear_head(model: nn.Module, task: Task, inputs: Any) -> tuple[str, nn.Module]:
    """A classifier's final ``nn.Linear`` (the search FST uses too)."""
    from .defenses._common import find_head

    return find_head(model, task, inputs, user="output-bias calibration")


def _dense_head(model: nn.Module, task: Task, inputs: Any) -> tuple[str, nn.Module]:
    """A dense model's classifier, usually a 1×1 convolution before an upsampling: the layer with
    one output channel per class whose output, resized to the logits' size, *is* the logits;
    failing that (e.g. two heads summed), the last such layer called. An auxiliary head that runs
    after the main one is passed over by the first rule."""
    from .defenses._common import _probe

    candidates = {n: m for n, m in model.named_modules()
                  if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    outputs, order = _probe(model, task, inputs, candidates)
    if not isinstance(outputs, torch.Tensor) or outputs.ndim < 3:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ConfigError(f"the model's outputs {shape} are not per-position class scores")
    classes = outputs.shape[1]

    def per_class(name, out):
        module = candidates[name]
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        return isinstance(out, torch.Tensor) and out.ndim == outputs.ndim and channels == classes

    found = [(name, out) for name, out in reversed(order) if per_class(name, out)]
    for name, out in found:
        if out.shape != outputs.shape and out.ndim == 4:
            out = F.interpolate(out, size=outputs.shape[-2:], mode="bilinear", align_corners=False)
        if out.shape == outputs.shape and torch.allclose(out, outputs, atol=1e-5, rtol=1e-4):
            return name, candidates[name]
    if found:
        return found[0][0], candidates[found[0][0]]
    raise ConfigError(f"no layer of {type(model).__name__} outputs {classes} channels, one per class")


def _positions(scores: torch.Tensor, targets: torch.Tensor, task: Task, classes: int, limit: int,
               picker: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position logits ``N×C×…`` and labels ``N×…`` as rows ``P×C`` and ``P``: labelled
    positions only (the task's ``ignore_index`` left out), at most ``limit`` of them."""
    if scores.ndim < 3 or scores.shape[1] != classes:
        return scores, targets  # refused by the shape check of the caller
    rows = scores.movedim(1, -1).reshape(-1, classes)
    labels = targets.reshape(-1).to(rows.device)
    ignore = getattr(task, "ignore_index", None)
    if ignore is not None:
        keep = labels != ignore
        rows, labels = rows[keep], labels[keep]
    if labels.numel() > limit:
        chosen = torch.randperm(labels.numel(), generator=picker)[:limit].to(rows.device)
        rows, labels = rows[chosen], labels[chosen]
    return rows, labels


def _fit_shift(scores: torch.Tensor, targets: torch.Tensor, loss_fn, pull: float) -> torch.Tensor:
    shift = torch.zeros(scores.shape[1], device=scores.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([shift], max_iter=100, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(scores + shift, targets) + pull * shift.pow(2).sum()
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
