"""mAP (with a maintained COCO evaluator) and the attacks' success rates.

* ``map``: mAP at IoU 0.5 — the Pascal VOC criterion — computed by pycocotools' ``COCOeval``
  (the official COCO evaluator; 101-point interpolated precision, up to 100 detections per
  image), not by code written here. (torchmetrics wraps the same evaluator but takes minutes to
  import on a busy 2-core machine, so pycocotools is called directly.)
* ``map_coco``: COCO's mAP averaged over IoU 0.5:0.05:0.95 from the same evaluation.
* ``asr`` / ``ra``: the attack's own definitions (see :mod:`nft.detection.attacks`).

All values are fractions in [0, 1].
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable

import numpy as np

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nft.core import ConfigError

from .task import detection_collate

__all__ = ["attack_success", "evaluate_detection", "mean_average_precision", "predict", "untriggered_asr"]


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


def _xywh(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.detach().cpu().double().numpy().reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def mean_average_precision(predictions: list[dict], targets: list[dict]) -> dict[str, float]:
    """``{"map": mAP@0.5, "map_coco": mAP@[.5:.95]}`` of per-image predictions against targets."""
    if len(predictions) != len(targets):
        raise ConfigError(f"{len(predictions)} predictions for {len(targets)} targets")
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ConfigError(f"mAP needs pycocotools ({err}); pip install pycocotools") from None
    images, annotations, rows, categories = [], [], [], set()
    for image_id, (pred, target) in enumerate(zip(predictions, targets)):
        images.append({"id": image_id})
        for box, label in zip(_xywh(target["boxes"]), target["labels"].tolist()):
            categories.add(int(label))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        boxes = _xywh(pred["boxes"])
        for box, score, label in zip(boxes, pred["scores"].tolist(), pred["labels"].tolist()):
            categories.add(int(label))
            rows.append([image_id, *box.tolist(), float(score), int(label)])
    if not annotations or not rows:
        return {"map": 0.0, "map_coco": 0.0}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its progress and summary
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c} for c in sorted(categories)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(np.asarray(rows, dtype=np.float64)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats  # [mAP@.5:.95, mAP@.5, ...]; -1 where nothing can be scored
    return {"map": max(0.0, float(stats[1])), "map_coco": max(0.0, float(stats[0]))}


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


def untriggered_asr(model: nn.Module, test: Dataset, attack, *, batch_size: int = 32) -> float:
    """``attack``'s ASR on its triggered test images scored *without* the trigger: the floor
    that what the trigger adds is measured against (a detector weakened by a defense misses
    objects and so scores object disappearance without any trigger)."""
    from .attacks import TriggeredDetection

    return attack_success(model, TriggeredDetection(test, attack, stamp=False), attack,
                          batch_size=batch_size)["asr"]


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
