"""Point-cloud classification metrics: overall accuracy, mean class accuracy, ASR, RA.

The point-cloud literature reports overall accuracy (OA, the share of test clouds classified
correctly — nft's ``acc``) next to mean class accuracy (``macc``, the average of per-class
recalls; it exposes a model that sacrifices a rare class). ASR and RA are measured on the
triggered test set of non-target samples, as everywhere in nft.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nft.core.data import collate, move_to
from nft.core.purify import resolve_device

__all__ = ["evaluate_pointcloud", "mean_class_accuracy", "overall_accuracy"]


def overall_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else 0.0


def mean_class_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Average over the classes present in ``labels`` of the share predicted correctly."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) == 0:
        return 0.0
    return float(np.mean([(pred[labels == c] == c).mean() for c in classes]))


@torch.no_grad()
def _predict(model: nn.Module, dataset: Dataset, batch_size: int, device, progress: bool, desc: str):
    from tqdm.auto import tqdm

    preds, cols = [], None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        inputs, rest = batch[0], batch[1:]
        preds.append(model(move_to(inputs, device)).argmax(1).cpu())
        cols = [c + [r] for c, r in zip(cols, rest)] if cols else [[r] for r in rest]
    pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    extra = [torch.cat(c).numpy() for c in cols] if cols else []
    return pred, extra


def evaluate_pointcloud(model: nn.Module, clean: Dataset, triggered: Dataset | None = None, *,
                        batch_size: int = 128, device=None, progress: bool = False) -> dict[str, float]:
    """``{"acc" (OA), "macc", "asr", "ra"}`` of a classifier; eval mode, mode restored after."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    original = next(iter(model.parameters()), torch.empty(0)).device
    model.eval().to(device)
    try:
        pred, (labels,) = _predict(model, clean, batch_size, device, progress, "eval clean")
        out = {"acc": overall_accuracy(pred, labels), "macc": mean_class_accuracy(pred, labels)}
        if triggered is not None:
            pred, (true, target) = _predict(model, triggered, batch_size, device, progress, "eval triggered")
            out["asr"] = float((pred == target).mean()) if len(pred) else 0.0
            out["ra"] = float((pred == true).mean()) if len(pred) else 0.0
        return out
    finally:
        model.to(original)
        model.train(was_training)
