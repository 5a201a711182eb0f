"""mAP (with a maintained COCO evaluator) and the attacks' success rates.

* ``map``: mAP at IoU 0.5 — the Pascal VOC criterion — computed by torchmetrics'
  ``MeanAveragePrecision`` on the pycocotools backend (COCO's 101-point interpolated precision,
  up to 100 detections per image), not by code written here.
* ``map_coco``: COCO's mAP averaged over IoU 0.5:0.05:0.95 from the same evaluator.
* ``asr`` / ``ra``: the attack's own definitions (see :mod:`nft.detection.attacks`).

All values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nft.core import ConfigError

from .task import detection_collate

__all__ = ["attack_success", "evaluate_detection", "mean_average_precision", "predict"]


def _metric():
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ConfigError(f"mAP needs torchmetrics and pycocotools ({err}); "
                          "pip install 'nft-detection[test]'") from None
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int = 32, progress: bool = False,
            desc: str = "predict") -> Iterable[tuple[list, tuple]]:
    """Yield ``(predictions, rest of the batch)`` over ``dataset`` in eval mode (mode restored)."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            images = [image.to(device) for image in batch[0]]
            outputs = model(images)
            yield [{k: v.detach().cpu() for k, v in o.items()} for o in outputs], batch[1:]
    finally:
        model.train(was_training)


def mean_average_precision(predictions: list[dict], targets: list[dict]) -> dict[str, float]:
    """``{"map": mAP@0.5, "map_coco": mAP@[.5:.95]}`` of per-image predictions against targets."""
    if len(predictions) != len(targets):
        raise ConfigError(f"{len(predictions)} predictions for {len(targets)} targets")
    metric = _metric()
    metric.update(
        [{"boxes": p["boxes"].float(), "scores": p["scores"].float(), "labels": p["labels"].long()}
         for p in predictions],
        [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in targets],
    )
    result = metric.compute()
    # The evaluator reports -1 when there is nothing to score; call that 0.
    return {"map": max(0.0, float(result["map_50"])), "map_coco": max(0.0, float(result["map"]))}


def attack_success(model: nn.Module, triggered: Dataset, attack, *, batch_size: int = 32,
                   progress: bool = False) -> dict[str, float]:
    """``{"asr", "ra"}`` of ``attack`` on its triggered test set (``ra`` only where defined)."""
    hits = victims = correct = 0
    for preds, (_, infos) in predict(model, triggered, batch_size=batch_size, progress=progress,
                                     desc="eval triggered"):
        for pred, info in zip(preds, infos):
            h, n, c = attack.outcome(pred, info)
            hits, victims, correct = hits + h, victims + n, correct + c
    out = {"asr": hits / max(1, victims)}
    if attack.has_ra:
        out["ra"] = correct / max(1, victims)
    return out


def evaluate_detection(model: nn.Module, clean: Dataset, triggered: Dataset | None = None,
                       attack=None, *, batch_size: int = 32, progress: bool = False) -> dict[str, float]:
    """``{"map", "map_coco", "asr", "ra"}``: clean mAP on ``clean``, ASR on ``triggered``."""
    predictions, targets = [], []
    for preds, (batch_targets,) in predict(model, clean, batch_size=batch_size, progress=progress,
                                           desc="eval clean"):
        predictions.extend(preds)
        targets.extend(batch_targets)
    out = mean_average_precision(predictions, targets)
    if triggered is not None and attack is not None:
        out.update(attack_success(model, triggered, attack, batch_size=batch_size, progress=progress))
    return out
