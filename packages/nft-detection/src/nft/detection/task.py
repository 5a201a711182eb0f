"""How the core calls and scores a detector.

A torchvision detector computes its losses *inside* ``forward`` and needs the targets to do so,
while the core's loop calls ``task.forward(model, inputs)`` first and ``task.loss(outputs,
targets)`` after (once per mixed target set). In training mode :meth:`DetectionTask.forward`
therefore returns a :class:`DeferredCall` (the model and the images) and :meth:`DetectionTask.loss`
runs the detector with the targets and sums its loss dict; in eval mode ``forward`` returns the
predictions (``[{"boxes", "labels", "scores"}]``, one dict per image).

Per-object weights (detection MixUp)
------------------------------------
Targets may carry ``weights`` (one float per box) and ``mix_source`` (0 = the image's own boxes,
1 = the boxes of the image blended into it). Two ways of honouring them:

* **SSD / SSDLite (exact per-box weights).** The SSD loss is recomputed with each positive
  anchor's classification and box-regression terms multiplied by the weight of the box it is
  matched to; negatives (hard-negative mined as torchvision does, 3:1) keep weight 1 and the
  normaliser stays the number of positive anchors. With all weights 1 this is exactly
  torchvision's ``SSD.compute_loss``.
* **Every other detector (per-source losses).** The loss is computed once per box set, with only
  that set's boxes as targets, and the results are added with the set's weight:
  ``λ·L(x̃, boxes of x) + (1−λ)·L(x̃, boxes of x_π)``. The other set's objects count as
  background in each term; that is the price of not reaching into every head's loss.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, DataError, MaskedModel

__all__ = ["DeferredCall", "DetectionTask", "detection_collate", "detection_loss", "matched_objects", "unwrap"]

_EXTRA_KEYS = ("weights", "mix_source")


def detection_collate(items: list) -> tuple:
    """Keep images and targets as lists (detection images may differ in size)."""
    if not items:
        raise DataError("cannot collate an empty batch")
    if not isinstance(items[0], (tuple, list)) or len(items[0]) < 2:
        raise DataError("a detection dataset must yield (image, target) pairs, where target is "
                        "a dict with 'boxes' (N×4, x1 y1 x2 y2) and 'labels' (N)")
    return tuple(list(column) for column in zip(*items))


def unwrap(model: nn.Module) -> nn.Module:
    """The detector inside a :class:`~nft.core.MaskedModel` (masks stay attached)."""
    return model.model if isinstance(model, MaskedModel) else model


class DeferredCall:
    """A training-mode forward waiting for its targets (the detector's loss needs them)."""

    __slots__ = ("model", "images")

    def __init__(self, model: nn.Module, images: list[torch.Tensor]) -> None:
        self.model = model
        self.images = images


def _as_images(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 3:
            return [inputs]
        if inputs.ndim == 4:
            return list(inputs.unbind(0))
    if isinstance(inputs, (list, tuple)) and all(isinstance(x, torch.Tensor) and x.ndim == 3 for x in inputs):
        return list(inputs)
    raise DataError("detectors take a list of C×H×W image tensors (or an N×C×H×W batch); got "
                    f"{type(inputs).__name__}. Use nft.detection.detection_collate as collate_fn")


def _check_targets(targets: Any, count: int) -> list[dict]:
    if not isinstance(targets, (list, tuple)) or len(targets) != count:
        raise DataError(f"detection targets must be a list of {count} dicts (one per image), got "
                        f"{type(targets).__name__}")
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise DataError(f"target {i} must be a dict with 'boxes' and 'labels'")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape[0] != boxes.shape[0]:
            raise DataError(f"target {i}: boxes must be N×4 and labels N, got {tuple(boxes.shape)} "
                            f"and {tuple(labels.shape)}")
        if boxes.numel() and bool(((boxes[:, 2:] - boxes[:, :2]) <= 0).any()):
            raise DataError(f"target {i} has a box with zero or negative width/height; boxes are "
                            "x1 y1 x2 y2 with x2 > x1 and y2 > y1 (drop degenerate boxes)")
        if labels.numel() and int(labels.min()) < 1:
            raise DataError(f"target {i} has label {int(labels.min())}; object labels start at 1 "
                            "(0 is the background)")
    return list(targets)


def _weighted(targets: list[dict]) -> bool:
    return any("weights" in t and t["weights"].numel() and not bool((t["weights"] == 1).all())
               for t in targets)


def _weighted_ssd_loss(self, targets, head_outputs, anchors, matched_idxs):
    """torchvision's SSD loss with each positive anchor weighted by its matched box's weight."""
    bbox_regression = head_outputs["bbox_regression"]
    cls_logits = head_outputs["cls_logits"]
    num_foreground = 0
    box_terms, cls_targets, anchor_weights = [], [], []
    for target, regression, anchors_i, matched in zip(targets, bbox_regression, anchors, matched_idxs):
        fg = torch.where(matched >= 0)[0]
        fg_box = matched[fg]
        num_foreground += fg.numel()
        box_w = target.get("weights")
        box_w = (box_w.to(regression.dtype)[fg_box] if box_w is not None
                 else regression.new_ones(fg.numel()))
        encoded = self.box_coder.encode_single(target["boxes"][fg_box], anchors_i[fg])
        per_anchor = F.smooth_l1_loss(regression[fg], encoded, reduction="none").sum(dim=1)
        box_terms.append((per_anchor * box_w).sum())
        labels = torch.zeros(anchors_i.size(0), dtype=target["labels"].dtype, device=anchors_i.device)
        labels[fg] = target["labels"][fg_box]
        cls_targets.append(labels)
        weights = regression.new_ones(anchors_i.size(0))
        weights[fg] = box_w
        anchor_weights.append(weights)
    cls_targets_t = torch.stack(cls_targets)
    weights_t = torch.stack(anchor_weights)
    num_classes = cls_logits.size(-1)
    cls_loss = F.cross_entropy(cls_logits.view(-1, num_classes), cls_targets_t.view(-1),
                               reduction="none").view(cls_targets_t.size())
    # Hard negatives exactly as torchvision: the 3·(#positives) highest-loss background anchors.
    foreground = cls_targets_t > 0
    num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
    negative_loss = cls_loss.clone()
    negative_loss[foreground] = -float("inf")
    _, order = negative_loss.sort(1, descending=True)
    background = order.sort(1)[1] < num_negative
    n = max(1, num_foreground)
    return {
        "bbox_regression": torch.stack(box_terms).sum() / n,
        "classification": ((cls_loss * weights_t)[foreground].sum() + cls_loss[background].sum()) / n,
    }


@contextmanager
def _ssd_box_weights(detector: nn.Module):
    """Route this SSD's loss through :func:`_weighted_ssd_loss` for one call (the class is untouched)."""
    detector.compute_loss = types.MethodType(_weighted_ssd_loss, detector)
    try:
        yield
    finally:
        del detector.compute_loss


def _sum_losses(losses: Any) -> torch.Tensor:
    if not isinstance(losses, dict) or not losses:
        raise DataError("the detector did not return a loss dict in training mode; detectors must "
                        "be torchvision detectors or wrapped by nft.detection.MMDetDetector")
    return sum(v for v in losses.values())


def _plain(targets: Sequence[dict], keep: Sequence[torch.Tensor] | None = None) -> list[dict]:
    out = []
    for i, t in enumerate(targets):
        d = {k: v for k, v in t.items() if k not in _EXTRA_KEYS}
        if keep is not None:
            d["boxes"], d["labels"] = t["boxes"][keep[i]], t["labels"][keep[i]]
        out.append(d)
    return out


def detection_loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
    """Sum of the detector's training losses on ``images``, honouring per-object weights."""
    targets = _check_targets(targets, len(images))
    if not _weighted(targets):
        return _sum_losses(model(images, _plain(targets)))
    from torchvision.models.detection.ssd import SSD

    detector = unwrap(model)
    if isinstance(detector, SSD):
        with _ssd_box_weights(detector):
            return _sum_losses(model(images, list(targets)))
    if not all("mix_source" in t for t in targets):
        raise ConfigError(
            f"per-box weights are honoured exactly only by SSD detectors; {type(detector).__name__} "
            "takes weights per box set, so targets need 'mix_source' (as DetectionMixUp makes)")
    sources = sorted({int(s) for t in targets for s in t["mix_source"].tolist()})
    total = None
    for source in sources:
        keep = [t["mix_source"] == source for t in targets]
        weights = torch.cat([t["weights"][k] for t, k in zip(targets, keep)])
        weight = float(weights.mean())
        if weight == 0:
            continue
        term = weight * _sum_losses(model(images, _plain(targets, keep)))
        total = term if total is None else total + term
    if total is None:
        raise DataError("every box set of the batch has weight 0")
    return total


def matched_objects(prediction: dict, target: dict, *, score_thresh: float, iou_thresh: float) -> int:
    """How many of ``target``'s boxes a confident detection of the same class finds: detections
    with score ≥ ``score_thresh``, highest score first, each matched to at most one unmatched box
    of its label at IoU ≥ ``iou_thresh`` (the VOC matching rule)."""
    from torchvision.ops import box_iou

    boxes, labels = target["boxes"], target["labels"]
    keep = prediction["scores"] >= score_thresh
    if not len(boxes) or not bool(keep.any()):
        return 0
    order = prediction["scores"][keep].argsort(descending=True)
    found_boxes = prediction["boxes"][keep][order].to(boxes)
    found_labels = prediction["labels"][keep][order].to(labels.device)
    iou = box_iou(found_boxes, boxes)
    iou[found_labels[:, None] != labels[None, :]] = 0  # a detection only finds its own class
    free = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    for row in iou:
        row = torch.where(free, row, torch.zeros_like(row))
        best = int(row.argmax())
        if row[best] >= iou_thresh:
            free[best] = False
    return int((~free).sum())


class DetectionTask:
    """Detectors as the core sees them: loss dicts summed, predictions as box dicts.

    ``score`` makes detectors part of ``purify()``'s collapse check: the share of the clean
    set's objects found by a detection of their class at score ≥ ``score_thresh`` and IoU ≥ 0.5
    (recall of confident detections, a count that adds up over batches, unlike mAP). A detector
    whose masks were driven too far finds few objects at any threshold, and NFT then reruns at
    half the learning rate as it does for classifiers.
    """

    name = "detection"

    def __init__(self, score_thresh: float = 0.3, iou_thresh: float = 0.5) -> None:
        if not 0 <= score_thresh < 1 or not 0 < iou_thresh <= 1:
            raise ConfigError(f"DetectionTask needs score_thresh in [0, 1) and iou_thresh in (0, 1], "
                              f"got {score_thresh} and {iou_thresh}")
        self.score_thresh, self.iou_thresh = float(score_thresh), float(iou_thresh)

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        images = _as_images(inputs)
        if model.training:
            return DeferredCall(model, images)
        return model(images)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        if not isinstance(outputs, DeferredCall):
            raise ConfigError("the detection loss needs the model in training mode (detectors "
                              "compute their losses inside forward); call model.train() first")
        return detection_loss(outputs.model, outputs.images, targets)

    def predict(self, outputs: Any) -> list[dict]:
        if isinstance(outputs, DeferredCall):
            raise ConfigError("predictions need the model in eval mode; call model.eval() first")
        return outputs

    def score(self, outputs: Any, targets: Any) -> tuple[int, int]:
        """Objects found by a confident detection of their class, and objects (see the class)."""
        predictions = self.predict(outputs)
        targets = _check_targets(targets, len(predictions))
        found = sum(matched_objects(p, t, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh)
                    for p, t in zip(predictions, targets))
        return found, sum(len(t["boxes"]) for t in targets)

    def __repr__(self) -> str:
        return f"DetectionTask(score_thresh={self.score_thresh}, iou_thresh={self.iou_thresh})"
