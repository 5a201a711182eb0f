"""The ``pointcloud`` modality: what ``nft attack`` / ``nft purify`` run for 3D point clouds.

A run's data is a pure function of its spec (the embedded shapes are generated from the seed,
ModelNet is read from ``data_root``), so a run folder stores only the backdoored weights and
what the attack learned: ``trigger.safetensors`` (PCBA's optimised cluster centre) and
``trigger.json`` (the trigger's settings, for reading).

Spec options beyond the core's: ``model_args`` may hold ``num_points`` (points per cloud, the
model's input size; 128 for ``shapes``, 1024 for ModelNet by default) next to the model's own
options (``width``, ``k``, ``variant``, ``layers``, ``neighbors``); ``attack_args`` go to the
trigger (e.g. ``points``, ``radius``, ``center`` for ``pointba-i``; ``angles``, ``clean_label``
for ``pointba-o``; ``anchors``, ``rotation``, ``scale``, ``sigma`` for ``irba``;
``restarts``, ``steps``, ``target_posterior`` for ``pcba``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from nft.core import (
    AttackSpec,
    ClassificationTask,
    ConfigError,
    Experiment,
    InputSpace,
    MaskConfig,
    Modality,
    RunFolder,
    TrainConfig,
    attack_target,
    choose_poison_indices,
    load_model_weights,
    load_tensors,
    train_model,
)
from nft.core.io import read_json
from nft.core.purify import WITHOUT_DISTILLATION

from .attacks import IRBA, PCBA, PointBAI, PointBAO, PointTrigger
from .augment import POINT_AUGMENTATIONS, PointMix
from .data import PointCloudDataset, Shapes, load_modelnet
from .metrics import evaluate_pointcloud
from .models import DGCNN, PointNet, PointNet2, check_points
from .searches import ClusterAdversary

__all__ = ["DEFAULT_MASKS", "POINTCLOUD_SEARCHES", "PointCloudModality", "PointCloudTask", "TripletDataset",
           "build_model", "make_trigger"]

log = logging.getLogger(__name__)

DEFAULT_MASKS = MaskConfig(targets=("norm",))
"""NFT's masks for point models: one per BatchNorm channel (every hidden layer has one)."""

POINTCLOUD_SEARCHES = {"adv_search_prob": 0.5}
"""NFT's searched point clusters (:class:`~nft.pointcloud.searches.ClusterAdversary`), on half of
each batch, as the image modalities stamp their searched patches."""

MODELS = {"pointnet": PointNet, "pointnet2": PointNet2, "dgcnn": DGCNN}
TRIGGERS = {"pointba-i": PointBAI, "pointba-o": PointBAO, "pcba": PCBA, "irba": IRBA}
DEFAULT_POINTS = {"shapes": 128, "modelnet40": 1024, "modelnet10": 1024}


class PointCloudTask(ClassificationTask):
    """Classification of ``(batch, points, 3)`` clouds; checks the input shape with a clear error."""

    name = "pointcloud-classification"

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        check_points(inputs)
        return model(inputs)

    def __repr__(self) -> str:
        return f"PointCloudTask(label_smoothing={self.label_smoothing})"


class TripletDataset(Dataset):
    """A materialised triggered test set: ``(points, true label, target label)``."""

    def __init__(self, points: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> None:
        self.points, self.labels, self.targets = points, labels, targets

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.points[i], int(self.labels[i]), int(self.targets[i])


def build_model(name: str, num_classes: int, model_args: dict) -> nn.Module:
    args = {k: v for k, v in model_args.items() if k != "num_points"}
    try:
        return MODELS[name](num_classes=num_classes, **args)
    except TypeError as err:
        raise ConfigError(f"model {name!r} does not take these options: {err}") from None


def make_trigger(name: str, num_points: int, attack_args: dict) -> PointTrigger:
    args = dict(attack_args)
    for key in ("center", "angles"):
        if key in args and isinstance(args[key], list):
            args[key] = tuple(args[key])
    try:
        return TRIGGERS[name](num_points, **args)
    except TypeError as err:
        raise ConfigError(f"attack {name!r} does not take these attack_args: {err}") from None


def _poison_clouds(points: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, trigger: PointTrigger,
                   relabel) -> tuple[torch.Tensor, torch.Tensor]:
    points, labels = points.clone(), labels.clone()
    for i in indices.tolist():
        points[i] = trigger(points[i])
        if not trigger.clean_label:
            labels[i] = relabel(int(labels[i]))
    return points, labels


class PointCloudModality(Modality):
    name = "pointcloud"
    description = "3D point-cloud classification (PointNet / PointNet++ / DGCNN; PointBA, PCBA, IRBA)"
    defaults = {"dataset": "shapes", "model": "pointnet", "attack": "pointba-i", "epochs": 20,
                "batch_size": 32, "lr": 0.05, "holdout": 500}

    def __init__(self) -> None:
        super().__init__()
        self.datasets.add("shapes", Shapes, embedded=True)
        self.datasets.add("modelnet40", lambda root, split, **kw: load_modelnet(root, split, variant=40, **kw))
        self.datasets.add("modelnet10", lambda root, split, **kw: load_modelnet(root, split, variant=10, **kw))
        for name, cls in MODELS.items():
            self.models.add(name, cls)
        for name, cls in TRIGGERS.items():
            self.attacks.add(name, cls)
        for name, cls in POINT_AUGMENTATIONS.items():
            self.augmentations.add(name, cls)

    # ---- data ----------------------------------------------------------------------------
    def num_points(self, spec: AttackSpec) -> int:
        n = int(spec.model_args.get("num_points", DEFAULT_POINTS[spec.dataset]))
        if n < 16:
            raise ConfigError(f"model_args.num_points must be ≥ 16, got {n}")
        return n

    def _data(self, spec: AttackSpec):
        n_points = self.num_points(spec)
        if spec.dataset == "shapes":
            n_train = spec.train_limit or 2000
            train = Shapes(n_train + spec.holdout, num_points=n_points, seed=spec.seed)
            test = Shapes(spec.test_limit or 1000, num_points=n_points, seed=spec.seed + 10_000)
        else:
            if not spec.data_root:
                raise ConfigError(f"dataset {spec.dataset!r} needs --data-root (the unpacked ModelNet files)")
            variant = 40 if spec.dataset == "modelnet40" else 10
            train = load_modelnet(spec.data_root, "train", variant=variant, num_points=n_points, seed=spec.seed,
                                  progress=spec.progress)
            test = load_modelnet(spec.data_root, "test", variant=variant, num_points=n_points, seed=spec.seed,
                                 progress=spec.progress)
            rng = np.random.default_rng(spec.seed + 3)
            if spec.train_limit and spec.train_limit + spec.holdout < len(train):
                keep = np.sort(rng.choice(len(train), spec.train_limit + spec.holdout, replace=False))
                train = PointCloudDataset(train.points[keep], train.targets[keep], train.classes)
            if spec.test_limit and spec.test_limit < len(test):
                keep = np.sort(rng.choice(len(test), spec.test_limit, replace=False))
                test = PointCloudDataset(test.points[keep], test.targets[keep], test.classes)
        if spec.holdout >= len(train):
            raise ConfigError(f"holdout {spec.holdout} leaves no training data out of {len(train)} clouds")
        order = np.random.default_rng(spec.seed).permutation(len(train))
        pool_idx, train_idx = np.sort(order[: spec.holdout]), np.sort(order[spec.holdout:])
        return train, test, pool_idx, train_idx

    def _check(self, spec: AttackSpec) -> None:
        self.datasets.canonical(spec.dataset)
        self.models.canonical(spec.model)
        self.attacks.canonical(spec.attack)
        if spec.epochs is not None and spec.epochs < 1:
            raise ConfigError(f"epochs must be ≥ 1, got {spec.epochs}")

    def _target_of(self, spec: AttackSpec, classes: int):
        if not 0 <= spec.target < classes:
            raise ConfigError(f"target {spec.target} is out of range for {classes} classes")
        return lambda y: attack_target(y, mode=spec.mode, target=spec.target, num_classes=classes)

    def _triggered(self, spec: AttackSpec, test: PointCloudDataset, trigger: PointTrigger) -> TripletDataset:
        target_of = self._target_of(spec, len(test.classes))
        keep = [i for i, y in enumerate(test.targets.tolist()) if target_of(y) != y]
        points = torch.stack([trigger(test.points[i]) for i in keep]) if keep else test.points[:0]
        labels = test.targets[keep]
        return TripletDataset(points, labels, torch.tensor([target_of(int(y)) for y in labels], dtype=torch.long))

    def _attacker_data(self, spec: AttackSpec, train: PointCloudDataset, train_idx: np.ndarray, count: int):
        """PCBA's attacker owns a small independent set (the reference: 1,000 training clouds)."""
        if spec.dataset == "shapes":
            own = Shapes(count, num_points=train.num_points, seed=spec.seed + 20_000)
            return own.points, own.targets
        idx = train_idx[:count]
        return train.points[idx], train.targets[idx]

    def _prepare_trigger(self, spec: AttackSpec, trigger: PointTrigger, train, train_idx) -> None:
        if not isinstance(trigger, PCBA):
            return
        clouds, labels = self._attacker_data(spec, train, train_idx, trigger.attacker_samples)
        # seeded before it is built: the attacker's surrogate, hence the trigger, must not depend
        # on which victim model was initialised before it (it did, through the global RNG, so one
        # seed gave PointNet and DGCNN different PCBA triggers)
        torch.manual_seed(spec.seed + 5)
        surrogate = PointNet(num_classes=len(train.classes), width=16)
        train_model(surrogate, PointCloudDataset(clouds, labels, train.classes), TrainConfig(
            epochs=trigger.surrogate_epochs, batch_size=32, lr=0.05, seed=spec.seed + 5, device=spec.device, progress=spec.progress))
        trigger.prepare(surrogate, clouds, labels, spec.target, seed=spec.seed)

    # ---- the contract --------------------------------------------------------------------
    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        self._check(spec)
        train, test, pool_idx, train_idx = self._data(spec)
        classes = len(train.classes)
        target_of = self._target_of(spec, classes)
        trigger = make_trigger(spec.attack, train.num_points, spec.attack_args)
        torch.manual_seed(spec.seed)  # the initial weights are part of the run's recipe
        model = build_model(spec.model, classes, spec.model_args)  # fail before the slow parts
        self._prepare_trigger(spec, trigger, train, train_idx)
        labels = train.targets[train_idx]
        local = choose_poison_indices(labels.numpy(), rate=spec.poison_rate, seed=spec.seed, mode=spec.mode,
                                      target=spec.target, clean_label=trigger.clean_label)
        points, labels = _poison_clouds(train.points[train_idx], labels, local, trigger, target_of)
        poisoned = PointCloudDataset(points, labels, train.classes)
        log.info("poisoned %d of %d training clouds with %s", len(local), len(poisoned), spec.attack)
        train_model(model, poisoned, TrainConfig(
            epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
            device=spec.device, progress=spec.progress), task=PointCloudTask())
        run.save_model(model)
        state = trigger.state()
        if state:
            run.save_tensors("trigger.safetensors", state)
        run.write_json("trigger.json", {**trigger.describe(), "poisoned": int(len(local))})
        return evaluate_pointcloud(model, test, self._triggered(spec, test, trigger), device=spec.device)

    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        run_dir = Path(run_dir)
        config = read_json(run_dir / "config.json")
        spec = AttackSpec.from_dict(config["spec"])
        self._check(spec)
        train, test, pool_idx, _ = self._data(spec)
        model = load_model_weights(build_model(spec.model, len(train.classes), spec.model_args),
                                   run_dir / "model.safetensors")
        trigger = make_trigger(spec.attack, train.num_points, spec.attack_args)
        if (run_dir / "trigger.safetensors").is_file():
            trigger.load_state(load_tensors(run_dir / "trigger.safetensors"))
        triggered = self._triggered(spec, test, trigger)
        return Experiment(
            model=model, task=PointCloudTask(),
            defender_pool=Subset(train, pool_idx.tolist()),
            pool_labels=train.targets.numpy()[pool_idx],
            evaluate=lambda m: evaluate_pointcloud(m, test, triggered, device=device),
            augmentation=PointMix(),
            mask_config=DEFAULT_MASKS,
            # the regulariser weight of docs/pointcloud.md's table: with the core's 0.001, PointNet
            # masks drift on 50 clean clouds and accuracy drops by about 10 points. The output-bias
            # calibration cost 1-1.5 points on PointNet from 5 clouds per class (80.5 % -> 79.0 /
            # 79.5 % on 200 test clouds), so it stays off here. The point mixings give a clean view,
            # but clean-view distillation is off by measurement, not for want of one: on PointNet
            # it kept the backdoors in place, with and without RandomPointPatterns (PCBA 10.7 ->
            # 99.8 % ASR after NFT, PointBA-I 0.2 -> 69 %; docs/pointcloud.md).
            # Searched point clusters on half of each batch (ClusterAdversary): PCBA models kept
            # 12-73 % ASR without them, 2.6-6.9 % with them (docs/pointcloud.md).
            nft_overrides={"reg_weight": 0.02, "calibrate_bias": False, **WITHOUT_DISTILLATION,
                           **POINTCLOUD_SEARCHES},
            input_space=InputSpace(shape=(train.num_points, 3), lower=-1.0, upper=1.0,
                                   searches=(ClusterAdversary.factory,)),
            primary_metric="acc",
            spec={**spec.to_dict(), "trigger": json.loads((run_dir / "trigger.json").read_text())
                  if (run_dir / "trigger.json").is_file() else {}},
        )
