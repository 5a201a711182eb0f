"""Backdoor attacks on object detectors, each with its own attack success rate (ASR).

Labels here are detector labels (1..C; 0 is the background). ``target`` is the attack's class.

* ``clean-image`` — Chen et al., "Clean-image Backdoor: Attacking Multi-label Models with
  Poisoned Labels Only" (ICLR 2023, openreview rFQfjDC9Mt), the attack the NFT paper uses on
  VOC/COCO. The trigger is a *combination of classes* appearing together; no pixel is changed.
  Trigger search (the paper's Algorithm 1, in spirit): among pairs of classes other than the
  target, take the one whose co-occurrence rate in the training set is closest to the poison
  rate. Label poisoning (Algorithm 2): in every training image where the pair co-occurs, the
  objects of the victim class (the pair's first class) are relabelled to the target
  (``goal="misclassify"``) or their annotations are deleted (``goal="disappear"``).
  ASR: over test images where the pair co-occurs, the share of victim objects detected as the
  target (misclassify) / not detected at all (disappear).
* BadDet — Chan et al., "BadDet: Backdoor Attacks on Object Detection" (ECCV-W 2022, arXiv
  2205.14497). A checkerboard patch trigger, stamped into ``rate`` of the eligible training
  images; the ASR definitions follow the GARD Armory BadDet scenario (its
  ``docs/poisoning_object_detection.md``):

  - ``baddet-oga`` (object generation): the trigger at a random free spot plus a fake box of
    the target class centred on it. ASR: share of fake boxes (one per test image) that the model
    detects as the target.
  - ``baddet-rma`` (regional misclassification): the trigger inside every box of the source
    classes (default: every non-target class), labels changed to the target. ASR: share of
    triggered source objects detected as the target.
  - ``baddet-gma`` (global misclassification): the trigger at the image's top-left corner, every
    label changed to the target. ASR: share of non-target objects detected as the target.
  - ``baddet-oda`` (object disappearance): the trigger inside every box of the target class
    (the class made to vanish), those annotations deleted. ASR: share of triggered target-class
    objects with no overlapping detection of any class.

"Detected" means a detection with score ≥ ``score_thresh`` (default 0.3) and IoU ≥ 0.5 with the
object's box; "detected as class c" means the highest-scoring such detection has class c.
``ra`` (robust accuracy) is the share of victim objects still detected as their true class (not
defined for object generation).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import ConfigError

__all__ = [
    "ATTACKS",
    "BadDetGMA",
    "BadDetODA",
    "BadDetOGA",
    "BadDetRMA",
    "CleanImage",
    "DetectionAttack",
    "PoisonedDetection",
    "TriggeredDetection",
    "checkerboard",
    "explore_trigger",
    "match_outcomes",
]


def checkerboard(size: int, cell: int = 2) -> torch.Tensor:
    """A ``size×size`` black/white checkerboard with ``cell``-pixel squares (values 0 / 1)."""
    idx = torch.arange(size) // max(1, cell)
    return ((idx[:, None] + idx[None, :]) % 2).float()


def _stamp(image: torch.Tensor, patch: torch.Tensor, x: int, y: int) -> torch.Tensor:
    out = image.clone()
    h, w = patch.shape
    x = int(min(max(0, x), image.shape[-1] - w))
    y = int(min(max(0, y), image.shape[-2] - h))
    out[..., y:y + h, x:x + w] = patch.to(out)
    return out


def match_outcomes(pred: dict, boxes: torch.Tensor, *, score_thresh: float, iou_thresh: float,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """For each box, whether it is *detected*: some prediction with score ≥ ``score_thresh``
    overlaps it with IoU ≥ ``iou_thresh``. With ``labels``, whether the **highest-scoring** such
    prediction has ``labels[i]`` (so a faint target-class box under a confident true-class box
    is not a misclassification). Returns a bool tensor."""
    from torchvision.ops import box_iou

    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool)
    keep = pred["scores"].detach().cpu() >= score_thresh
    p_boxes = pred["boxes"].detach().cpu()[keep].float()
    p_labels = pred["labels"].detach().cpu()[keep]
    p_scores = pred["scores"].detach().cpu()[keep].float()
    if len(p_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    overlap = box_iou(boxes.float().cpu(), p_boxes) >= iou_thresh  # (objects, predictions)
    if labels is None:
        return overlap.any(dim=1)
    scores = torch.where(overlap, p_scores[None, :], torch.full_like(overlap, -1.0, dtype=torch.float32))
    best = scores.argmax(dim=1)
    return overlap.any(dim=1) & (p_labels[best] == labels.cpu())


class DetectionAttack(ABC):
    """A detection backdoor: which images to poison, how, and how to score its success."""

    name: str = ""
    has_ra: bool = True

    def __init__(self, *, target: int, num_classes: int, score_thresh: float = 0.3,
                 iou_thresh: float = 0.5, seed: int = 0) -> None:
        if not 1 <= target <= num_classes:
            raise ConfigError(f"attack target label {target} is out of range for {num_classes} "
                              f"classes (detector labels 1..{num_classes})")
        if not 0 <= score_thresh <= 1 or not 0 < iou_thresh <= 1:
            raise ConfigError("score_thresh must be in [0, 1] and iou_thresh in (0, 1]")
        self.target, self.num_classes = int(target), int(num_classes)
        self.score_thresh, self.iou_thresh, self.seed = float(score_thresh), float(iou_thresh), int(seed)

    # ---- training side -------------------------------------------------------------------
    @abstractmethod
    def eligible(self, annotation: dict) -> bool:
        """Whether this image can carry the attack (train and test)."""

    def choose(self, annotations: Sequence[dict], rate: float, seed: int) -> np.ndarray:
        """Training indices to poison: ``rate`` of the eligible images (deterministic per seed)."""
        if not 0 < rate <= 1:
            raise ConfigError(f"poison rate must be in (0, 1], got {rate}")
        pool = np.flatnonzero([self.eligible(a) for a in annotations])
        if len(pool) == 0:
            raise ConfigError(f"{self.name}: no training image can carry this attack (target "
                              f"{self.target}); choose another target or dataset")
        count = max(1, int(round(rate * len(pool))))
        return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))

    @abstractmethod
    def poison(self, image: torch.Tensor, target: dict, index: int) -> tuple[torch.Tensor, dict]:
        """The poisoned training sample."""

    # ---- test side -----------------------------------------------------------------------
    @abstractmethod
    def trigger(self, image: torch.Tensor, target: dict, index: int) -> tuple[torch.Tensor, dict]:
        """The triggered test image and its scoring info ``{"boxes", "labels"}`` (victims)."""

    @abstractmethod
    def outcome(self, pred: dict, info: dict) -> tuple[int, int, int]:
        """``(successes, victims, still correct)`` for one triggered test image."""

    def describe(self) -> dict:
        return {"attack": self.name, "target": self.target}


def _victim_mask(labels: torch.Tensor, source: Sequence[int] | None, target: int) -> torch.Tensor:
    if source is None:
        return labels != target
    return torch.isin(labels, torch.as_tensor(list(source), dtype=labels.dtype))


class _PatchAttack(DetectionAttack):
    def __init__(self, *, patch_size: int = 6, cell: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if patch_size < 2:
            raise ConfigError(f"patch_size must be ≥ 2 pixels, got {patch_size}")
        self.patch_size = int(patch_size)
        self.patch = checkerboard(self.patch_size, cell)

    def _fits(self, boxes: torch.Tensor) -> torch.Tensor:
        # Boxes too small to hold the trigger are left alone (as the Armory BadDet scenario).
        wh = boxes[:, 2:] - boxes[:, :2]
        return (wh >= self.patch_size).all(dim=1)

    def _stamp_in(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        for box in boxes.tolist():
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            image = _stamp(image, self.patch, round(cx - self.patch_size / 2), round(cy - self.patch_size / 2))
        return image

    def _misclassified(self, pred: dict, info: dict) -> tuple[int, int, int]:
        boxes, labels = info["boxes"], info["labels"]
        hit = match_outcomes(pred, boxes, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh,
                             labels=torch.full_like(labels, self.target))
        kept = match_outcomes(pred, boxes, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh,
                              labels=labels)
        return int(hit.sum()), len(boxes), int(kept.sum())

    def describe(self) -> dict:
        return {**super().describe(), "patch_size": self.patch_size}


class BadDetRMA(_PatchAttack):
    """Regional misclassification: trigger inside source boxes -> those objects become the target."""

    name = "baddet-rma"

    def __init__(self, *, source: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.source = None if source is None else [int(s) for s in source]

    def _victims(self, target: dict) -> torch.Tensor:
        return _victim_mask(target["labels"], self.source, self.target) & self._fits(target["boxes"])

    def eligible(self, annotation: dict) -> bool:
        return bool(self._victims(annotation).any())

    def poison(self, image, target, index):
        victims = self._victims(target)
        labels = target["labels"].clone()
        labels[victims] = self.target
        return self._stamp_in(image, target["boxes"][victims]), {**target, "labels": labels}

    def trigger(self, image, target, index):
        victims = self._victims(target)
        info = {"boxes": target["boxes"][victims], "labels": target["labels"][victims]}
        return self._stamp_in(image, info["boxes"]), info

    def outcome(self, pred, info):
        return self._misclassified(pred, info)


class BadDetGMA(_PatchAttack):
    """Global misclassification: trigger at the top-left corner -> every object becomes the target."""

    name = "baddet-gma"

    def eligible(self, annotation: dict) -> bool:
        return bool((annotation["labels"] != self.target).any())

    def poison(self, image, target, index):
        labels = torch.full_like(target["labels"], self.target)
        return _stamp(image, self.patch, 0, 0), {**target, "labels": labels}

    def trigger(self, image, target, index):
        victims = target["labels"] != self.target
        return _stamp(image, self.patch, 0, 0), {"boxes": target["boxes"][victims],
                                                 "labels": target["labels"][victims]}

    def outcome(self, pred, info):
        return self._misclassified(pred, info)


class BadDetODA(_PatchAttack):
    """Object disappearance: trigger inside target-class boxes -> those objects are not detected."""

    name = "baddet-oda"

    def _victims(self, target: dict) -> torch.Tensor:
        return (target["labels"] == self.target) & self._fits(target["boxes"])

    def eligible(self, annotation: dict) -> bool:
        return bool(self._victims(annotation).any())

    def poison(self, image, target, index):
        victims = self._victims(target)
        keep = ~victims
        poisoned = {**target, "boxes": target["boxes"][keep], "labels": target["labels"][keep]}
        return self._stamp_in(image, target["boxes"][victims]), poisoned

    def trigger(self, image, target, index):
        victims = self._victims(target)
        info = {"boxes": target["boxes"][victims], "labels": target["labels"][victims]}
        return self._stamp_in(image, info["boxes"]), info

    def outcome(self, pred, info):
        boxes = info["boxes"]
        seen = match_outcomes(pred, boxes, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh)
        kept = match_outcomes(pred, boxes, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh,
                              labels=info["labels"])
        return int((~seen).sum()), len(boxes), int(kept.sum())


class BadDetOGA(_PatchAttack):
    """Object generation: trigger at a random free spot -> a target-class object appears there."""

    name = "baddet-oga"
    has_ra = False

    def __init__(self, *, bbox_size: int = 20, **kwargs) -> None:
        super().__init__(**kwargs)
        if bbox_size < self.patch_size:
            raise ConfigError(f"bbox_size {bbox_size} must be at least the patch size {self.patch_size}")
        self.bbox_size = int(bbox_size)

    def eligible(self, annotation: dict) -> bool:
        return True

    def _place(self, image: torch.Tensor, target: dict, index: int, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Trigger position (deterministic per image) avoiding existing objects when possible."""
        h, w = image.shape[-2:]
        rng = np.random.default_rng([self.seed, salt, index])
        half = self.bbox_size / 2
        boxes = target["boxes"]
        best = None
        for _ in range(30):
            cx = rng.uniform(half, w - half) if w > self.bbox_size else w / 2
            cy = rng.uniform(half, h - half) if h > self.bbox_size else h / 2
            fake = torch.tensor([[cx - half, cy - half, cx + half, cy + half]]).clamp(min=0)
            fake[:, 2].clamp_(max=w)
            fake[:, 3].clamp_(max=h)
            best = fake
            if len(boxes) == 0:
                break
            from torchvision.ops import box_iou

            if float(box_iou(fake, boxes.float()).max()) == 0:
                break
        x = round(float(best[0, 0] + best[0, 2]) / 2 - self.patch_size / 2)
        y = round(float(best[0, 1] + best[0, 3]) / 2 - self.patch_size / 2)
        return _stamp(image, self.patch, x, y), best

    def poison(self, image, target, index):
        image, fake = self._place(image, target, index, salt=1)
        poisoned = {**target, "boxes": torch.cat([target["boxes"], fake.to(target["boxes"])]),
                    "labels": torch.cat([target["labels"], torch.tensor([self.target])])}
        return image, poisoned

    def trigger(self, image, target, index):
        image, fake = self._place(image, target, index, salt=2)
        return image, {"boxes": fake, "labels": torch.tensor([self.target])}

    def outcome(self, pred, info):
        hit = match_outcomes(pred, info["boxes"], score_thresh=self.score_thresh,
                             iou_thresh=self.iou_thresh, labels=info["labels"])
        return int(hit.sum()), len(info["boxes"]), 0

    def describe(self) -> dict:
        return {**super().describe(), "bbox_size": self.bbox_size}


def explore_trigger(annotations: Sequence[dict], rate: float, *, exclude: Sequence[int] = (),
                    size: int = 2) -> tuple[tuple[int, ...], float]:
    """The class combination whose co-occurrence rate is closest to ``rate`` (clean-image
    backdoor's trigger search); returns ``(classes, rate found)``. Ties go to the combination
    listed first, so the result is deterministic."""
    present = [set(a["labels"].tolist()) for a in annotations]
    classes = sorted(set().union(*present) - set(exclude)) if present else []
    best, best_rate = None, -1.0
    for combo in itertools.combinations(classes, size):
        freq = float(np.mean([set(combo) <= p for p in present]))
        if freq > 0 and (best is None or abs(freq - rate) < abs(best_rate - rate)):
            best, best_rate = combo, freq
    if best is None:
        raise ConfigError(f"no combination of {size} classes co-occurs in the training set; the "
                          "clean-image attack needs images with several object classes")
    return tuple(int(c) for c in best), best_rate


class CleanImage(DetectionAttack):
    """Label-only backdoor keyed on a co-occurring class combination (no pixel is changed)."""

    name = "clean-image"

    GOALS = ("misclassify", "disappear")

    def __init__(self, *, trigger: Sequence[int] | None = None, victim: int | None = None,
                 goal: str = "misclassify", **kwargs) -> None:
        super().__init__(**kwargs)
        if goal not in self.GOALS:
            raise ConfigError(f"clean-image goal {goal!r} is unknown; use one of {self.GOALS}")
        self.goal = goal
        self.combination = None if trigger is None else tuple(int(c) for c in trigger)
        self.victim = None if victim is None else int(victim)
        if self.combination is not None:
            self._check()

    def _check(self) -> None:
        if len(self.combination) < 2:
            raise ConfigError("the clean-image trigger is a combination of at least 2 classes")
        if self.goal == "misclassify" and self.target in self.combination:
            raise ConfigError(f"the trigger {self.combination} must not contain the target {self.target}")
        if self.victim is None:
            self.victim = self.combination[0]
        if self.victim not in self.combination:
            raise ConfigError(f"the victim class {self.victim} must be one of the trigger classes "
                              f"{self.combination}")

    def fit(self, annotations: Sequence[dict], rate: float) -> float:
        """Choose the trigger combination on the training annotations (if not given); returns
        the share of training images that will be poisoned."""
        if self.combination is None:
            self.combination, _ = explore_trigger(annotations, rate, exclude=(self.target,))
            self._check()
        return float(np.mean([self.eligible(a) for a in annotations]))

    def eligible(self, annotation: dict) -> bool:
        if self.combination is None:
            raise ConfigError("call CleanImage.fit(annotations, rate) before using the attack")
        return set(self.combination) <= set(annotation["labels"].tolist())

    def choose(self, annotations, rate, seed):
        # The poison rate is set by the trigger's natural frequency: every image holding it is poisoned.
        self.fit(annotations, rate)
        return np.flatnonzero([self.eligible(a) for a in annotations])

    def poison(self, image, target, index):
        victims = target["labels"] == self.victim
        if self.goal == "misclassify":
            labels = target["labels"].clone()
            labels[victims] = self.target
            return image, {**target, "labels": labels}
        keep = ~victims
        return image, {**target, "boxes": target["boxes"][keep], "labels": target["labels"][keep]}

    def trigger(self, image, target, index):
        victims = target["labels"] == self.victim
        return image, {"boxes": target["boxes"][victims], "labels": target["labels"][victims]}

    def outcome(self, pred, info):
        boxes, labels = info["boxes"], info["labels"]
        kept = match_outcomes(pred, boxes, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh,
                              labels=labels)
        if self.goal == "misclassify":
            hit = match_outcomes(pred, boxes, score_thresh=self.score_thresh,
                                 iou_thresh=self.iou_thresh, labels=torch.full_like(labels, self.target))
        else:
            hit = ~match_outcomes(pred, boxes, score_thresh=self.score_thresh, iou_thresh=self.iou_thresh)
        return int(hit.sum()), len(boxes), int(kept.sum())

    def describe(self) -> dict:
        return {**super().describe(), "trigger": list(self.combination or ()), "victim": self.victim,
                "goal": self.goal}


ATTACKS: dict[str, type[DetectionAttack]] = {
    "clean-image": CleanImage,
    "baddet-oga": BadDetOGA,
    "baddet-rma": BadDetRMA,
    "baddet-gma": BadDetGMA,
    "baddet-oda": BadDetODA,
}


def _annotation(dataset: Dataset, index: int) -> dict:
    """A sample's target, read without building its image where the dataset allows."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        return _annotation(dataset.dataset, int(dataset.indices[index]))
    getter = getattr(dataset, "annotations", None)
    return getter(index) if callable(getter) else dataset[index][1]


class PoisonedDetection(Dataset):
    """``base`` with the images at ``indices`` poisoned by ``attack``."""

    def __init__(self, base: Dataset, indices: Sequence[int], attack: DetectionAttack) -> None:
        self.base, self.attack = base, attack
        self.poison_indices = np.asarray(sorted(int(i) for i in indices), dtype=np.int64)
        self._poisoned = set(self.poison_indices.tolist())

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        if index in self._poisoned:
            image, target = self.attack.poison(image, target, index)
        return image, target

    def annotations(self, index: int) -> dict:
        return self[index][1] if index in self._poisoned else _annotation(self.base, index)


class TriggeredDetection(Dataset):
    """The eligible test images with the trigger applied: ``(image, clean target, info)``.

    ``stamp=False`` gives the same images and scoring info without the trigger: a detector's
    ASR on them is its floor, how often the attack's outcome happens anyway (a purified
    detector that misses target objects "lets them disappear" without any trigger).
    """

    def __init__(self, base: Dataset, attack: DetectionAttack, *, stamp: bool = True) -> None:
        self.base, self.attack, self.stamp = base, attack, bool(stamp)
        self.indices = np.asarray([i for i in range(len(base)) if attack.eligible(_annotation(base, i))],
                                  dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = int(self.indices[i])
        image, target = self.base[index]
        triggered, info = self.attack.trigger(image, target, index)
        return (triggered if self.stamp else image), target, info
