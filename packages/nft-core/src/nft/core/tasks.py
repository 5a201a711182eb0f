"""How a modality's model is called and scored.

A :class:`Task` is the only place that knows what a model's outputs are: logits, a detector's
loss dict, token logits. The purification loop and every defense go through it, so they are
written once for all modalities.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError

__all__ = ["Task", "ClassificationTask"]


@runtime_checkable
class Task(Protocol):
    """``forward(model, inputs)``, ``loss(outputs, targets) -> scalar``, ``predict(outputs)``.

    Optional attribute: ``distillable = True`` when ``forward`` returns class logits along
    dimension 1 (``(B, C)`` or per position ``(B, C, ...)``), so NFT's clean-view distillation
    can match a teacher's softened outputs; tasks without it (detection losses, token logits)
    train without that term.

    Optional method: ``score(outputs, targets) -> (correct, total)``, the task's accuracy as a
    count; ``purify()`` uses it to check the model on the clean set before and after a defense
    (:mod:`nft.core.guard`). Tasks without it are not checked.
    """

    def forward(self, model: nn.Module, inputs: Any) -> Any: ...

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor: ...

    def predict(self, outputs: Any) -> Any: ...


class ClassificationTask:
    """Logits in, cross-entropy loss, arg-max prediction. Labels are checked against the logits."""

    name = "classification"
    distillable = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(inputs)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 2:
            raise DataError(
                f"classification expects logits of shape (batch, classes), got {tuple(outputs.shape)}"
            )
        if targets.ndim == 1:
            classes = outputs.shape[1]
            if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= classes):
                raise DataError(
                    f"label {int(targets.max()) if int(targets.max()) >= classes else int(targets.min())} "
                    f"is out of range for a model with {classes} outputs; labels must be in "
                    f"[0, {classes - 1}] (check the dataset's labels or the model's num_classes)"
                )
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=1)

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """Correct arg-max predictions and the number of labelled samples."""
        return int((self.predict(outputs) == targets).sum()), int(targets.numel())

    def __repr__(self) -> str:
        return f"ClassificationTask(label_smoothing={self.label_smoothing})"
