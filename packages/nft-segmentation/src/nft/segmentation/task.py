"""How a segmentation model is called and scored: per-pixel cross-entropy, arg-max per pixel."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import DataError

from .data import IGNORE_INDEX

__all__ = ["SegmentationTask", "logits_of"]


def logits_of(outputs: Any) -> torch.Tensor:
    """The N×C×H×W logits of a model's output: a tensor, or torchvision's ``{"out": …}``."""
    if isinstance(outputs, dict):
        if "out" not in outputs:
            raise DataError(f"a segmentation model's dict output needs an 'out' entry, got {sorted(outputs)}")
        outputs = outputs["out"]
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 4:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise DataError(f"segmentation expects logits of shape (batch, classes, H, W), got {shape}")
    return outputs


class SegmentationTask:
    """Per-pixel cross-entropy over label maps; ``255`` pixels are ignored.

    ``forward`` returns logits at the label maps' resolution: a model whose output is smaller
    than its input (a bare backbone head) is upsampled bilinearly to the input's size.
    """

    name = "segmentation"
    distillable = True  # per-pixel class logits (B, C, H, W): NFT's distillation matches them per pixel

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = int(ignore_index)

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        logits = logits_of(model(inputs))
        if logits.shape[-2:] != inputs.shape[-2:]:
            logits = F.interpolate(logits, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(outputs)
        if targets.ndim != 3 or targets.shape[0] != logits.shape[0] or targets.shape[-2:] != logits.shape[-2:]:
            raise DataError(
                f"label maps of shape {tuple(targets.shape)} do not fit logits of shape "
                f"{tuple(logits.shape)}; each sample needs an H×W map of class indices"
            )
        targets = targets.long()
        valid = targets != self.ignore_index
        if valid.any():
            top, low = int(targets[valid].max()), int(targets[valid].min())
            if low < 0 or top >= logits.shape[1]:
                raise DataError(
                    f"label {top if top >= logits.shape[1] else low} is out of range for a model with "
                    f"{logits.shape[1]} classes; label maps must hold 0..{logits.shape[1] - 1} or "
                    f"{self.ignore_index} (ignored). Check the dataset or the model's num_classes"
                )
        else:  # every pixel ignored: a zero that keeps the graph (cross_entropy would give NaN)
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_index)

    def predict(self, outputs: Any) -> torch.Tensor:
        return logits_of(outputs).argmax(dim=1)

    def score(self, outputs: Any, targets: torch.Tensor) -> tuple[int, int]:
        """Pixel accuracy as a count: correct labelled pixels, labelled pixels (255 left out)."""
        valid = targets != self.ignore_index
        return int((self.predict(outputs) == targets)[valid].sum()), int(valid.sum())

    def __repr__(self) -> str:
        return f"SegmentationTask(ignore_index={self.ignore_index})"
