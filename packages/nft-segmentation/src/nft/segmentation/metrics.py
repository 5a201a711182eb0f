"""mIoU, and the pixel-level ASR / RA of a segmentation backdoor.

* **mIoU** (clean): the confusion matrix of every labelled pixel (``255`` ignored) of the clean
  test set; a class's IoU is ``TP / (TP + FP + FN)``; the mean runs over the classes that occur
  in the ground truth or the predictions (a class absent from both has no IoU).
* **ASR**: over the triggered test images (those that contain the victim class), the share of
  victim-class pixels predicted as the target class.
* **RA**: the share of those pixels still predicted as the victim class.

All values are fractions in [0, 1], like the core's ACC / ASR / RA, so the core's DER and
reports apply with ``miou`` in place of ``acc``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nft.core.data import collate, move_to
from nft.core.purify import resolve_device

from .data import IGNORE_INDEX
from .task import SegmentationTask

__all__ = ["confusion_matrix", "evaluate_segmentation", "mean_iou"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C×C counts, rows = true class, columns = predicted class, ``255`` pixels left out."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index.flatten().cpu(), minlength=num_classes ** 2).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor | np.ndarray) -> float:
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 0.0


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    clean: Dataset,
    triggered: Dataset | None = None,
    *,
    num_classes: int,
    victim: int | None = None,
    target: int | None = None,
    task: SegmentationTask | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """``{"miou", "asr", "ra"}`` (``asr`` / ``ra`` only with a triggered set, victim and target).

    The model runs in eval mode on ``device``; its mode and device are restored afterwards.
    """
    from tqdm.auto import tqdm

    task = task or SegmentationTask()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    was_training = model.training
    original = next(iter(model.parameters()), torch.empty(0)).device
    model.eval().to(device)
    try:
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        loader = DataLoader(clean, batch_size=batch_size, shuffle=False, collate_fn=collate)
        for images, masks in tqdm(loader, desc="eval clean", disable=not progress, leave=False):
            pred = task.predict(task.forward(model, move_to(images, device))).cpu()
            confusion += confusion_matrix(pred, masks, num_classes)
        out = {"miou": mean_iou(confusion)}
        if triggered is not None and victim is not None and target is not None:
            hits = kept = total = 0
            loader = DataLoader(triggered, batch_size=batch_size, shuffle=False, collate_fn=collate)
            for images, masks in tqdm(loader, desc="eval triggered", disable=not progress, leave=False):
                pred = task.predict(task.forward(model, move_to(images, device))).cpu()
                on_victim = masks == victim
                hits += int((pred[on_victim] == target).sum())
                kept += int((pred[on_victim] == victim).sum())
                total += int(on_victim.sum())
            out["asr"] = hits / max(1, total)
            out["ra"] = kept / max(1, total)
        return out
    finally:
        model.to(original)
        model.train(was_training)
