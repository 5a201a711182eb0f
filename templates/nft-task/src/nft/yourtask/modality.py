"""The ``yourtask`` modality: what ``nft attack`` and ``nft purify`` do for this task.

The core calls two methods, and the benchmark runs every installed modality through the same
two: ``train_backdoor(spec, run)`` trains the backdoored model into a run folder, and
``load_experiment(run_dir)`` rebuilds it with the defender's clean pool and the evaluator. A
run's data is a pure function of its spec (dataset, seed, sizes), so the folder stores only the
weights; the defender's pool is set aside before poisoning, so it is never poisoned nor trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from nft.core import (
    AttackSpec,
    ConfigError,
    Experiment,
    InputSpace,
    Modality,
    PoisonedDataset,
    RunFolder,
    TrainConfig,
    TriggeredDataset,
    attack_target,
    choose_poison_indices,
    evaluate_classification,
    load_model_weights,
    train_model,
)
from nft.core.io import read_json

from .attacks import ATTACKS
from .augment import AUGMENTATIONS
from .data import DATASETS, load_dataset
from .models import MODELS, build_model, default_mask_config
from .task import YourTaskTask

__all__ = ["YourTaskModality", "modality"]


class YourTaskModality(Modality):
    name = "yourtask"
    description = "yourtask (generated from templates/nft-task: toy signals, spike backdoor)"
    primary_metric = "acc"
    defaults = {"dataset": "toy", "model": "tiny", "attack": "spike", "epochs": 6,
                "batch_size": 64, "lr": 0.05, "holdout": 300}

    def __init__(self) -> None:
        super().__init__()
        for name, loader in DATASETS.items():
            self.datasets.add(name, loader)
        for name, builder in MODELS.items():
            self.models.add(name, builder)
        for name, attack in ATTACKS.items():
            self.attacks.add(name, attack)
        for name, augmentation in AUGMENTATIONS.items():
            self.augmentations.add(name, augmentation)

    def _data(self, spec: AttackSpec):
        self.datasets.canonical(spec.dataset)
        self.models.canonical(spec.model)
        self.attacks.canonical(spec.attack)
        n_train = (spec.train_limit or 3000) + spec.holdout
        train, test, classes = load_dataset(spec.dataset, n_train, spec.test_limit or 1000,
                                            spec.seed, spec.data_root)
        if not 0 <= spec.target < classes:
            raise ConfigError(f"target {spec.target} is out of range for {classes} classes")
        order = np.random.default_rng(spec.seed).permutation(len(train))
        pool_idx, train_idx = np.sort(order[: spec.holdout]), np.sort(order[spec.holdout:])
        attack = ATTACKS[spec.attack](**spec.attack_args)
        target_of = lambda y: attack_target(y, mode=spec.mode, target=spec.target, num_classes=classes)  # noqa: E731
        triggered = TriggeredDataset(test, test.targets.numpy(), lambda x, i: attack.apply(x), target_of)
        return train, test, triggered, pool_idx, train_idx, attack, target_of, classes

    def _model(self, spec: AttackSpec, classes: int):
        torch.manual_seed(spec.seed)
        return build_model(spec.model, classes, 1, spec.model_args)

    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        train, test, triggered, _, train_idx, attack, target_of, classes = self._data(spec)
        labels = train.targets.numpy()[train_idx]
        poison = choose_poison_indices(labels, rate=spec.poison_rate, seed=spec.seed, mode=spec.mode,
                                       target=spec.target)
        poisoned = PoisonedDataset(Subset(train, train_idx.tolist()), poison,
                                   lambda x, y, i: (attack.apply(x), target_of(y)))
        model = self._model(spec, classes)
        train_model(model, poisoned, TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size,
                                                 lr=spec.lr, seed=spec.seed, device=spec.device,
                                                 progress=spec.progress), task=YourTaskTask())
        run.save_model(model)
        return evaluate_classification(model, test, triggered, task=YourTaskTask(), device=spec.device)

    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        spec = AttackSpec.from_dict(read_json(Path(run_dir) / "config.json")["spec"])
        train, test, triggered, pool_idx, _, _, _, classes = self._data(spec)
        model = load_model_weights(self._model(spec, classes), Path(run_dir) / "model.safetensors")
        task = YourTaskTask()
        return Experiment(
            model=model, task=task,
            defender_pool=Subset(train, pool_idx.tolist()),
            pool_labels=train.targets.numpy()[pool_idx],
            evaluate=lambda m: evaluate_classification(m, test, triggered, task=task, device=device),
            augmentation=None,  # None: the core's MixUp with the purification config's alpha
            mask_config=default_mask_config(spec.model),
            input_space=InputSpace(shape=tuple(train.inputs.shape[1:]), lower=-3.0, upper=3.0),
            primary_metric=self.primary_metric,
            spec=spec.to_dict(),
        )


modality = YourTaskModality()
