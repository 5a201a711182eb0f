"""The ``detection`` modality: what ``nft attack`` / ``nft purify`` / ``nft evaluate`` call.

A run is a pure function of its spec (data, poisoned indices, the clean-image trigger search), so
only the weights are stored, plus ``attack.json`` describing the attack for people.

Labels: ``spec.target`` is a 0-based class index (as in classification); detector labels are
``class + 1`` (0 is the background). For ``baddet-oda`` the target is the class made to vanish.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from nft.core import (
    AttackSpec,
    ConfigError,
    Experiment,
    InputSpace,
    Modality,
    RunFolder,
    TrainConfig,
    load_model_weights,
    train_model,
)
from nft.core.io import read_json
from nft.core.purify import WITHOUT_DISTILLATION

from .attacks import ATTACKS, DetectionAttack, PoisonedDetection, TriggeredDetection, _annotation
from .augment import DetectionMixUp
from .canvas import CanvasDetection
from .datasets import CocoDataset, VOCDataset
from .metrics import evaluate_detection
from .models import DETECTORS, build_detector, default_mask_config
from .task import DetectionTask, detection_collate

__all__ = ["DetectionModality", "modality"]

log = logging.getLogger(__name__)

# Options of each attack that come from attack_args (everything else is rejected by name).
_ATTACK_OPTIONS = {
    "clean-image": ("trigger", "victim", "goal", "score_thresh", "iou_thresh"),
    "baddet-oga": ("patch_size", "cell", "bbox_size", "score_thresh", "iou_thresh"),
    "baddet-rma": ("patch_size", "cell", "source", "score_thresh", "iou_thresh"),
    "baddet-gma": ("patch_size", "cell", "score_thresh", "iou_thresh"),
    "baddet-oda": ("patch_size", "cell", "score_thresh", "iou_thresh"),
}


CANVAS_TRAIN, CANVAS_TEST = 1500, 300
"""Canvas images made for training (besides the holdout) and for testing when no limit is given."""


def _canvas(spec: AttackSpec, split: str, n: int, size: int) -> CanvasDetection:
    return CanvasDetection(n, split=split, seed=spec.seed, root=spec.data_root)


def _voc(spec: AttackSpec, split: str, n: int, size: int) -> Dataset:
    if not spec.data_root:
        raise ConfigError("dataset 'voc' needs --data-root (the folder holding VOCdevkit/)")
    root = Path(spec.data_root)
    year = "2007" if (root / "VOCdevkit" / "VOC2007").is_dir() else "2012"
    image_set = "trainval" if split == "train" else ("test" if year == "2007" else "val")
    return VOCDataset(root, year=year, image_set=image_set, size=size)


def _coco(spec: AttackSpec, split: str, n: int, size: int) -> Dataset:
    if not spec.data_root:
        raise ConfigError("dataset 'coco' needs --data-root (the folder holding train2017/, "
                          "val2017/ and annotations/)")
    return CocoDataset(spec.data_root, split="train" if split == "train" else "val", size=size)


def _limit(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    return Subset(dataset, list(range(n)))


def _labels_of(dataset: Dataset) -> np.ndarray:
    if isinstance(dataset, Subset):
        return _labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    return np.asarray(dataset.labels)


def _num_classes(dataset: Dataset) -> int:
    return int(dataset.dataset.num_classes if isinstance(dataset, Subset) else dataset.num_classes)


class DetectionModality(Modality):
    name = "detection"
    description = ("object detectors (torchvision SSD/SSDLite/Faster R-CNN/RetinaNet/FCOS, mmdet) "
                   "with clean-image and BadDet backdoors; metric mAP@0.5")
    primary_metric = "map"
    defaults = {"dataset": "canvas", "model": "ssdlite", "attack": "clean-image", "epochs": 30,
                "batch_size": 16, "lr": 0.05, "holdout": 300}

    def __init__(self) -> None:
        super().__init__()
        self.datasets.add("canvas", _canvas, embedded=True)
        self.datasets.add("voc", _voc)
        self.datasets.add("coco", _coco)
        for name in DETECTORS:
            self.models.add(name, name)
        self.models.add("mmdet", "mmdet")
        for name, klass in ATTACKS.items():
            self.attacks.add(name, klass)
        self.augmentations.add("mixup", DetectionMixUp)

    # ---- pieces of a run -----------------------------------------------------------------
    def _input_size(self, spec: AttackSpec) -> int:
        if spec.model == "mmdet":
            return int(spec.model_args.get("size", 64))
        return int(spec.model_args.get("size") or DETECTORS[spec.model][1])

    def _data(self, spec: AttackSpec):
        """``(train part, defender pool, test set)``; the split is seeded by the spec."""
        size = self._input_size(spec)
        if spec.dataset == "canvas":  # made on demand: its size is the limit
            full = _canvas(spec, "train", (spec.train_limit or CANVAS_TRAIN) + spec.holdout, size)
            test = _canvas(spec, "test", spec.test_limit or CANVAS_TEST, size)
        else:
            factory = self.datasets.get(spec.dataset)
            limit = spec.train_limit + spec.holdout if spec.train_limit else None
            full = _limit(factory(spec, "train", 0, size), limit)
            test = _limit(factory(spec, "test", 0, size), spec.test_limit)
        if spec.holdout < 1 or spec.holdout >= len(full):
            raise ConfigError(f"holdout {spec.holdout} must be in [1, {len(full) - 1}] for a training "
                              f"set of {len(full)} images")
        order = np.random.default_rng(spec.seed).permutation(len(full))
        pool_idx, train_idx = np.sort(order[: spec.holdout]), np.sort(order[spec.holdout:])
        return Subset(full, train_idx.tolist()), Subset(full, pool_idx.tolist()), test

    def _check(self, spec: AttackSpec) -> None:
        self.datasets.canonical(spec.dataset)
        self.models.canonical(spec.model)
        self.attacks.canonical(spec.attack)
        if spec.mode != "all-to-one":
            raise ConfigError(f"detection attacks are all-to-one (one target class); --mode "
                              f"{spec.mode!r} is not supported")
        allowed = _ATTACK_OPTIONS[spec.attack]
        unknown = sorted(set(spec.attack_args) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown options {unknown} for attack {spec.attack!r}; known: {list(allowed)}")

    def make_attack(self, spec: AttackSpec, num_classes: int) -> DetectionAttack:
        if not 0 <= spec.target < num_classes:
            raise ConfigError(f"target {spec.target} is out of range for {num_classes} classes "
                              f"(0..{num_classes - 1})")
        args = dict(spec.attack_args)
        # attack_args name classes 0-based like --target; detector labels are class + 1.
        for key in ("trigger", "source"):
            if args.get(key) is not None:
                args[key] = [int(c) + 1 for c in args[key]]
        if args.get("victim") is not None:
            args["victim"] = int(args["victim"]) + 1
        klass = self.attacks.get(spec.attack)
        return klass(target=spec.target + 1, num_classes=num_classes, seed=spec.seed, **args)

    def build_model(self, spec: AttackSpec, num_classes: int, *, initialise: bool = True) -> nn.Module:
        """The spec's detector; ``model_args["init"]`` (a ``.safetensors`` state dict, e.g. a
        clean detector) is loaded as the starting point when ``initialise``."""
        options = dict(spec.model_args)
        init = options.pop("init", None)
        if spec.model == "mmdet":
            from .mmdet_adapter import build_mmdet_detector

            model = build_mmdet_detector(num_classes=num_classes, **options)
        else:
            options.setdefault("size", self._input_size(spec))
            if spec.model == "ssdlite":
                options.setdefault("width", 0.5)
            model = build_detector(spec.model, num_classes, **options)
        if init and initialise:
            load_model_weights(model, Path(init))
        return model

    def _prepare(self, spec: AttackSpec):
        self._check(spec)
        train, pool, test = self._data(spec)
        num_classes = _num_classes(train)
        attack = self.make_attack(spec, num_classes)
        annotations = [_annotation(train, i) for i in range(len(train))]
        poison_idx = attack.choose(annotations, spec.poison_rate, spec.seed)
        return train, pool, test, attack, poison_idx, num_classes

    def _evaluator(self, test: Dataset, attack: DetectionAttack, spec: AttackSpec):
        triggered = TriggeredDetection(test, attack)
        if len(triggered) == 0:
            raise ConfigError(f"no test image can carry {spec.attack} (target {spec.target}); "
                              "enlarge the test set or change the target")

        def evaluate(model: nn.Module) -> dict[str, float]:
            return evaluate_detection(model, test, triggered, attack, progress=False)

        return evaluate

    # ---- the contract --------------------------------------------------------------------
    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        train, pool, test, attack, poison_idx, num_classes = self._prepare(spec)
        log.info("%s: poisoning %d of %d training images", spec.attack, len(poison_idx), len(train))
        evaluate = self._evaluator(test, attack, spec)
        torch.manual_seed(spec.seed)
        model = self.build_model(spec, num_classes)
        train_model(model, PoisonedDetection(train, poison_idx, attack), TrainConfig(
            epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
            device=spec.device, progress=spec.progress),
            task=DetectionTask(), collate_fn=detection_collate)
        run.save_model(model)
        run.write_json("attack.json", {**attack.describe(), "poisoned_images": int(len(poison_idx)),
                                       "training_images": len(train)})
        return evaluate(model)

    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        config = read_json(Path(run_dir) / "config.json")
        spec = AttackSpec.from_dict(config["spec"])
        train, pool, test, attack, _, num_classes = self._prepare(spec)
        model = load_model_weights(self.build_model(spec, num_classes, initialise=False),
                                   Path(run_dir) / "model.safetensors")
        evaluate = self._evaluator(test, attack, spec)
        if device is not None:
            model.to(device)
        size = self._input_size(spec)
        mask_config = (default_mask_config(spec.model) if spec.model != "mmdet"
                       else default_mask_config("mmdet"))
        return Experiment(
            model=model, task=DetectionTask(), defender_pool=pool, pool_labels=_labels_of(pool),
            evaluate=evaluate, augmentation=DetectionMixUp(1.0), mask_config=mask_config,
            input_space=InputSpace(shape=(3, size, size)), collate_fn=detection_collate,
            primary_metric="map", spec=spec.to_dict(),
            nft_overrides=dict(WITHOUT_DISTILLATION),  # not classification: no distillation
        )

    # ---- conveniences for scripts and tests ----------------------------------------------
    def experiment_parts(self, spec: AttackSpec) -> dict[str, Any]:
        """Everything a script needs to train / evaluate outside a run folder."""
        spec = self.resolve(spec)
        train, pool, test, attack, poison_idx, num_classes = self._prepare(spec)
        return {"spec": spec, "train": train, "pool": pool, "test": test, "attack": attack,
                "poison_indices": poison_idx, "num_classes": num_classes,
                "evaluate": self._evaluator(test, attack, spec)}


modality = DetectionModality()
