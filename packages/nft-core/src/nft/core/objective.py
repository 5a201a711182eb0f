"""The two pieces of NFT's objective besides the task loss.

* :class:`L1ToOne` keeps masks near 1 (the paper's regulariser against model drift):
  ``weight · Σ|1 − m|``, where the reference code uses ``weight = 0.001 / N_c`` with ``N_c``
  the number of clean samples per class.
* :class:`DepthDecayClamp` is the projection applied after every optimiser step: the masks of
  the l-th masked layer (1-based, in depth order) are clamped to ``[α·e^(−β·l), upper]``, so
  early layers can only be dampened a little and deep ones almost switched off.
* :class:`CleanViewDistillation` is the shipped method's third term (not in the paper): the
  masked model's output on each training view is pulled towards the original model's output on
  the same view *before* random patterns were added, so a hundred labels are backed by the
  original model's full clean behaviour and a pattern is taught to change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["L1ToOne", "DepthDecayClamp", "NoClamp", "CleanViewDistillation"]


class L1ToOne:
    """``weight · Σ_layers Σ_channels |1 − m|``."""

    def __init__(self, weight: float) -> None:
        if weight < 0 or not math.isfinite(weight):
            raise ConfigError(f"regulariser weight must be a finite number ≥ 0, got {weight}")
        self.weight = float(weight)

    def __call__(self, masks: Sequence[nn.Parameter]) -> torch.Tensor:
        if self.weight == 0 or not masks:
            return torch.zeros((), device=masks[0].device if masks else "cpu")
        return self.weight * sum((1.0 - m).abs().sum() for m in masks)

    def __repr__(self) -> str:
        return f"L1ToOne(weight={self.weight:g})"


class DepthDecayClamp:
    """Clamp layer l's masks to ``[alpha·exp(−beta·l), upper]`` (l counts from 1)."""

    def __init__(self, alpha: float = 0.8, beta: float = 0.5, upper: float = 1.0) -> None:
        if not 0 <= alpha <= upper:
            raise ConfigError(f"clamp alpha must be in [0, upper={upper}], got {alpha}")
        if beta < 0:
            raise ConfigError(f"clamp beta must be ≥ 0, got {beta}")
        self.alpha, self.beta, self.upper = float(alpha), float(beta), float(upper)

    def floors(self, count: int) -> list[float]:
        return [self.alpha * math.exp(-self.beta * depth) for depth in range(1, count + 1)]

    @torch.no_grad()
    def __call__(self, masks: Sequence[nn.Parameter]) -> None:
        for floor, mask in zip(self.floors(len(masks)), masks):
            mask.clamp_(min=floor, max=self.upper)

    def __repr__(self) -> str:
        return f"DepthDecayClamp(alpha={self.alpha:g}, beta={self.beta:g}, upper={self.upper:g})"


class NoClamp:
    """No projection (for ablations)."""

    def __call__(self, masks: Sequence[nn.Parameter]) -> None:
        return None

    def floors(self, count: int) -> list[float]:
        return [-math.inf] * count

    def __repr__(self) -> str:
        return "NoClamp()"


class CleanViewDistillation:
    """``weight · T² · KL(softmax(teacher(x_clean)/T) ‖ softmax(student(x)/T))``.

    ``teacher`` is a frozen copy of the model being purified, in eval mode. It is only ever
    shown the clean view of a batch (mixed, but without the random patterns that stand in for
    triggers), where a backdoored model behaves like a clean one; the student sees the
    patterned view. With labels alone, ten images per class leave most of the clean function
    unconstrained and the masks drift from it; the teacher's soft outputs on every mixed view
    hold it in place, and its disagreement with a triggered student is exactly the backdoor's
    effect. T² keeps the gradient scale independent of the temperature (Hinton et al., 2015).
    """

    def __init__(self, teacher: nn.Module, weight: float = 1.0, temperature: float = 2.0, *,
                 forward=None) -> None:
        if weight < 0 or not math.isfinite(weight):
            raise ConfigError(f"distillation weight must be a finite number ≥ 0, got {weight}")
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.weight, self.temperature = float(weight), float(temperature)
        self.forward = forward or (lambda model, inputs: model(inputs))  # a Task's forward

    def __call__(self, student_logits: torch.Tensor, teacher_inputs) -> torch.Tensor:
        t = self.temperature
        with torch.no_grad():
            target = torch.softmax(self.forward(self.teacher, teacher_inputs).float() / t, dim=1)
        log_student = torch.log_softmax(student_logits.float() / t, dim=1)
        kl = (target * (torch.log(target.clamp_min(1e-12)) - log_student)).sum(dim=1)
        return self.weight * t * t * kl.mean()

    def __repr__(self) -> str:
        return f"CleanViewDistillation(weight={self.weight:g}, temperature={self.temperature:g})"
