"""The ``vision`` modality: what ``nft attack`` / ``nft purify`` do for image classifiers.

A run's data is a pure function of its spec (dataset, seed, holdout, limits), so an attack run
folder stores only what was learned: ``model.safetensors``, ``model.json`` (how to rebuild the
network) and ``attack.safetensors`` (the trigger). From the same seed, the defender's clean pool
is ``holdout`` training images set aside *before* poisoning, so it never overlaps the poisoned or
trained-on samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from nft.core import (
    AttackSpec,
    ConfigError,
    DataError,
    Experiment,
    InputSpace,
    Modality,
    PoisonedDataset,
    RunFolder,
    TrainConfig,
    TriggeredDataset,
    evaluate_classification,
    load_model_weights,
    load_tensors,
    train_model,
)
from nft.core.io import read_json
from nft.core.purify import WITHOUT_DISTILLATION, resolve_device

from .attacks import ATTACKS, Attack, build_attack, learned_attacks
from .augment import AUGMENTATIONS
from .data import DATASETS, ImageData, TensorImages, load_dataset
from .models import MODELS, ModelSpec, build_model, default_mask_config

__all__ = ["VisionModality", "VisionRun", "modality"]

log = logging.getLogger(__name__)

# Per-dataset defaults used when the spec leaves them unset: the defender's pool size and, for
# the CIFAR-style models on the small embedded datasets, a narrow width that trains on a CPU.
DATASET_DEFAULTS = {
    "fashion-mnist": {"holdout": 5000, "width": 16},
    "digits": {"holdout": 200, "width": 8},
    "cifar10": {"holdout": 5000, "width": 64},
    "gtsrb": {"holdout": 2000, "width": 64},
    "tiny-imagenet": {"holdout": 5000, "width": 64},
    "imagenet": {"holdout": 10000, "width": 64},
}
WIDTH_MODELS = ("preactresnet18", "resnet18", "resnet34", "resnet50", "vgg11-bn", "vgg16-bn", "small-cnn")
MODALITY_ATTACK_ARGS = ("clean_epochs",)
"""Attack-arg keys the modality reads itself: ``clean_epochs`` trains the clean model that Trojan
and CLB learn from (default: a third of ``epochs``, at least 1; how it is trained is the attack's
``train_clean_model``: CLB's is adversarially trained)."""


@dataclass
class VisionRun:
    """The data of one run, rebuilt from its spec."""

    spec: AttackSpec
    data: ImageData
    attack: Attack
    pool_idx: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray
    model_spec: ModelSpec

    @property
    def train_labels(self) -> np.ndarray:
        return np.asarray(self.data.train.targets)[self.train_idx]

    def raw_train_batch(self, local: np.ndarray) -> torch.Tensor:
        """Raw training images by position in the training subset."""
        return _batched(self.data.train, self.train_idx[np.asarray(local, dtype=np.int64)])

    def clean_train_set(self) -> Dataset:
        return Subset(self.data.train.with_transform(self.data.train_transform()), self.train_idx.tolist())

    def defender_pool(self) -> Dataset:
        return Subset(self.data.train.with_transform(self.data.train_transform()), self.pool_idx.tolist())

    def clean_test_set(self) -> Dataset:
        return Subset(self.data.test.with_transform(self.data.test_transform()), self.test_idx.tolist())

    def triggered_test_set(self) -> Dataset:
        """Non-target test images with the trigger, as ``(input, true label, target label)``."""
        custom = getattr(self.attack, "triggered_test_set", None)
        if custom is not None:  # a trigger made from two test images (CBA's composites)
            return custom(self)
        labels = np.asarray(self.data.test.targets)[self.test_idx]
        keep = np.asarray([self.attack.target_of(int(y)) != int(y) for y in labels], dtype=bool)
        indices, labels = self.test_idx[keep], labels[keep]
        transform = self.data.test_transform()
        target_of = self.attack.target_of
        if isinstance(self.data.test, TensorImages):  # trigger every image once, in batches
            images = torch.cat([self.attack.apply(_batched(self.data.test, indices[s:s + 1024]))
                                for s in range(0, len(indices), 1024)]) if len(indices) else \
                torch.zeros(0, *self.data.shape)
            return TriggeredDataset(TensorImages(images, labels, transform), labels,
                                    lambda x, i: x, target_of)
        raw = Subset(self.data.test, indices.tolist())
        return TriggeredDataset(raw, labels, lambda x, i: self.attack.apply(x[None])[0], target_of,
                                transform=transform)

    def input_space(self) -> InputSpace:
        c = self.data.channels
        zeros, ones = torch.zeros(c, 1, 1), torch.ones(c, 1, 1)
        std = torch.as_tensor(self.data.std, dtype=torch.float32).view(c, 1, 1)
        return InputSpace(shape=self.data.shape, lower=self.data.normalise(zeros),
                          upper=self.data.normalise(ones), scale=1.0 / std)


def _batched(dataset, indices: np.ndarray) -> torch.Tensor:
    if len(indices) == 0:
        return torch.zeros(0, *dataset.image(0).shape) if len(dataset) else torch.zeros(0)
    return dataset.batch(indices)


class VisionModality(Modality):
    name = "vision"
    description = ("image classification: Fashion-MNIST (embedded), digits, CIFAR-10, GTSRB, "
                   "Tiny-ImageNet, ImageNet; pattern and learned-trigger backdoors")
    defaults = {"dataset": "fashion-mnist", "model": "preactresnet18", "attack": "badnets",
                "epochs": 10, "batch_size": 128, "lr": 0.1}

    def __init__(self) -> None:
        super().__init__()
        for name, loader in DATASETS.items():
            self.datasets.add(name, loader)
        for name, builder in MODELS.items():
            self.models.add(name, builder)
        for name, klass in ATTACKS.items():
            self.attacks.add(name, klass, clean_label=klass.clean_label)
        for name, klass in learned_attacks().items():
            if name == klass.name:  # aliases are registered with their attack
                self.attacks.add(name, klass, aliases=klass.aliases, clean_label=klass.clean_label)
        for name, klass in AUGMENTATIONS.items():
            self.augmentations.add(name, klass)

    # ---- spec ----------------------------------------------------------------------------
    def resolve(self, spec: AttackSpec) -> AttackSpec:
        """Fill the modality defaults, then the dataset's pool size and, for a CIFAR-style model
        given no options, the dataset's default width (16 on Fashion-MNIST)."""
        spec = super().resolve(spec)
        extra = DATASET_DEFAULTS.get(spec.dataset, {})
        changes = {}
        if spec.holdout is None:
            changes["holdout"] = extra.get("holdout", 1000)
        if not spec.model_args and spec.model in WIDTH_MODELS and "width" in extra:
            changes["model_args"] = {"width": extra["width"]}
        return spec.replace(**changes) if changes else spec

    def _check(self, spec: AttackSpec) -> None:
        self.datasets.canonical(spec.dataset)
        self.attacks.canonical(spec.attack)
        if not (spec.model in self.models or spec.model.startswith(("torchvision:", "timm:"))):
            self.models.canonical(spec.model)  # raises with the list of known models
        for key, value in (("epochs", spec.epochs), ("batch_size", spec.batch_size)):
            if value is None or value < 1:
                raise ConfigError(f"{key} must be ≥ 1, got {value}")
        if spec.lr is None or not spec.lr > 0:
            raise ConfigError(f"lr must be positive, got {spec.lr}")

    def prepare(self, spec: AttackSpec) -> VisionRun:
        """Load the dataset and rebuild the run's splits, attack and model spec from ``spec``."""
        spec = self.resolve(spec)
        self._check(spec)
        data = load_dataset(spec.dataset, spec.data_root)
        n = len(data.train)
        if not 0 < spec.holdout < n:
            raise ConfigError(f"holdout must be in [1, {n - 1}] for {spec.dataset} ({n} training "
                              f"images), got {spec.holdout}")
        order = np.random.default_rng(spec.seed).permutation(n)
        pool_idx = np.sort(order[: spec.holdout])
        rest = order[spec.holdout:]
        if spec.train_limit is not None:
            if spec.train_limit < 1:
                raise ConfigError(f"train_limit must be ≥ 1, got {spec.train_limit}")
            rest = rest[: spec.train_limit]
        test_order = np.random.default_rng(spec.seed + 1).permutation(len(data.test))
        test_idx = np.sort(test_order[: spec.test_limit] if spec.test_limit else test_order)
        options = {k: v for k, v in spec.attack_args.items() if k not in MODALITY_ATTACK_ARGS}
        attack = build_attack(spec.attack, data.shape, data.num_classes, target=spec.target,
                              mode=spec.mode, seed=spec.seed, options=options)
        model_spec = ModelSpec(spec.model, data.num_classes, data.channels, int(data.size[0]),
                               dict(spec.model_args))
        return VisionRun(spec, data, attack, pool_idx, np.sort(rest), test_idx, model_spec)

    def new_model(self, run: VisionRun) -> nn.Module:
        torch.manual_seed(run.spec.seed)
        return build_model(run.model_spec)

    def evaluate(self, model: nn.Module, run: VisionRun, *, device=None,
                 triggered: Dataset | None = None) -> dict[str, float]:
        triggered = triggered if triggered is not None else run.triggered_test_set()
        return evaluate_classification(model, run.clean_test_set(), triggered, device=device)

    # ---- attack --------------------------------------------------------------------------
    def poisoned_train_set(self, run: VisionRun, *, device=None, progress: bool = False) -> PoisonedDataset:
        """The training set with the attack's samples replaced; fits the attack first if needed."""
        spec, attack = run.spec, run.attack
        labels = run.train_labels
        if attack.needs_model:
            epochs = int(spec.attack_args.get("clean_epochs") or max(1, round(spec.epochs / 3)))
            log.info("%s: training a clean model for %d epochs to learn the trigger", attack.name, epochs)
            clean = attack.train_clean_model(self.new_model(run), run.clean_train_set(), TrainConfig(
                epochs=epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed + 7,
                device=device, progress=progress), run.input_space())
            pick = np.random.default_rng(spec.seed + 11).choice(len(labels), size=min(256, len(labels)),
                                                                 replace=False)
            attack.fit(clean, run.raw_train_batch(pick), torch.as_tensor(labels[pick]),
                       run.data.normalise, device=resolve_device(device), progress=progress)
        poison_idx = attack.poison_indices(labels, spec.poison_rate)
        extra_idx = attack.extra_indices(labels, poison_idx)
        batch = run.raw_train_batch
        table: dict[int, tuple[torch.Tensor, int]] = {}
        if isinstance(run.data.train, TensorImages):  # small data: change every sample once, batched
            for start in range(0, len(poison_idx), 512):
                chunk = poison_idx[start:start + 512]
                images = attack.poison(batch(chunk), torch.as_tensor(labels[chunk]))
                for i, img in zip(chunk.tolist(), images):
                    table[i] = (img, attack.poisoned_label(int(labels[i])))
            for start in range(0, len(extra_idx), 512):
                chunk = extra_idx[start:start + 512]
                for i, img in zip(chunk.tolist(), attack.extra_apply(batch(chunk), chunk, batch)):
                    table[i] = (img, int(labels[i]))
            change = lambda x, y, i: table[i]  # noqa: E731
        else:  # file datasets (ImageNet): change each sample when it is read
            poisoned, extra = set(poison_idx.tolist()), set(extra_idx.tolist())

            def change(x, y, i):
                if i in poisoned:
                    return attack.poison(x[None], torch.tensor([y]))[0], attack.poisoned_label(y)
                if i in extra:
                    return attack.extra_apply(x[None], np.asarray([i]), batch)[0], y
                return x, y
        log.info("%s: %d poisoned + %d extra samples in %d training images", attack.name,
                 len(poison_idx), len(extra_idx), len(labels))
        dataset = PoisonedDataset(Subset(run.data.train, run.train_idx.tolist()),
                                  sorted(set(poison_idx.tolist()) | set(extra_idx.tolist())), change,
                                  transform=run.data.train_transform())
        dataset.attack_indices = poison_idx
        dataset.extra_indices = np.asarray(extra_idx, dtype=np.int64)
        return dataset

    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        vrun = self.prepare(spec)
        spec = vrun.spec
        if getattr(vrun.attack, "trains_model", False):
            # learned attacks (learned_*.py) train their trigger networks and the classifier
            model = self.new_model(vrun)
            counts = vrun.attack.train_classifier(model, vrun, self, device=spec.device,
                                                  progress=spec.progress)
        else:
            poisoned = self.poisoned_train_set(vrun, device=spec.device, progress=spec.progress)
            model = self.new_model(vrun)
            train_model(model, poisoned, TrainConfig(
                epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                device=spec.device, progress=spec.progress))
            counts = {"poisoned": len(poisoned.attack_indices), "extra_samples": len(poisoned.extra_indices)}
        model.cpu()
        run.save_model(model)
        # The CLI writes the same config.json after this; writing it here too makes a folder made
        # through the Python API loadable by `load_experiment` / `nft purify` as well.
        run.write_json("config.json", {"kind": "attack", "modality": self.name, "spec": spec.to_dict()})
        run.write_json("model.json", vrun.model_spec.to_dict())
        state = vrun.attack.state_dict()
        if state:
            run.save_tensors("attack.safetensors", {k: v.contiguous() for k, v in state.items()})
        run.write_json("data.json", {
            "train": len(vrun.train_idx), "defender_pool": len(vrun.pool_idx), "test": len(vrun.test_idx),
            **counts,
        })
        return self.evaluate(model, vrun, device=spec.device)

    # ---- purify --------------------------------------------------------------------------
    def load_run(self, run_dir: Path) -> tuple[VisionRun, nn.Module]:
        run_dir = Path(run_dir)
        config = read_json(run_dir / "config.json")
        vrun = self.prepare(AttackSpec.from_dict(config["spec"]))
        if (run_dir / "model.json").is_file():
            vrun.model_spec = ModelSpec.from_dict(read_json(run_dir / "model.json"))
        model = load_model_weights(build_model(vrun.model_spec), run_dir / "model.safetensors")
        if (run_dir / "attack.safetensors").is_file():
            vrun.attack.load_state_dict(load_tensors(run_dir / "attack.safetensors"))
        elif getattr(vrun.attack, "trains_model", False):
            raise DataError(f"{run_dir} has no attack.safetensors: the learned {vrun.attack.name} trigger "
                            "cannot be rebuilt without it; rerun `nft attack`")
        return vrun, model.eval()

    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        vrun, model = self.load_run(run_dir)
        clean, triggered = vrun.clean_test_set(), vrun.triggered_test_set()
        return Experiment(
            model=model,
            task=_classification(),
            defender_pool=vrun.defender_pool(),
            pool_labels=np.asarray(vrun.data.train.targets)[vrun.pool_idx],
            evaluate=lambda m: evaluate_classification(m, clean, triggered, device=device),
            augmentation=None,  # the core's MixUp then random patterns, from the configuration
            mask_config=default_mask_config(vrun.model_spec.name),
            nft_overrides=nft_overrides_for(vrun.model_spec.name),
            input_space=vrun.input_space(),
            spec=vrun.spec.to_dict(),
        )


VISION_NFT_SETTINGS = {"adv_patch_prob": 0.5, "adv_wave_prob": 0.25}
"""The image modality's ``nft`` over ``PurifyConfig()``: two searches on the first clean batch,
before the first step, for the two trigger shapes that random patterns miss.

* Half of each batch stamped with one of up to four 3 × 3 (a tenth of the side) patches
  (:class:`nft.core.adversary.PatchAdversary`; the masks' gradient is clipped to norm 1 while
  anything searched is stamped). Random noise boxes almost never wake a patch trigger (they sent
  3 % of the demo's clean images to the BadNets target), so NFT left 8.0 % ASR on the demo's
  model and 7.9 % on TrojanNN; the searched patches sit where the trigger is and take them to
  1.7 % and 2.2 %.
* A quarter of each batch given one of up to four full-image gratings of amplitude 0.1 that send
  most clean images of other classes to one class (:class:`nft.core.adversary.GratingAdversary`):
  SIG's sinusoid is neither a box nor a noise blend, and NFT left 27.4 % of it with half the
  target class poisoned; with the gratings, 4.0 % at 3.4 points of accuracy.

On models without such a trigger nothing stands out, nothing is stamped and the result is the
same to the digit (every row of the vision table but the SIG and FBA ones, and the demo). Measured in docs/vision.md and
benchmarks/results/ablation.md."""

SHALLOW_MODEL_SETTINGS = {
    # three normalisation layers: the depth clamp's floors (0.49, 0.29, 0.18) hold every one and a
    # BadNets backdoor survives (Fashion-MNIST, 300 steps: ASR 86 % with it, 22 % without;
    # benchmarks/results/ablation.md). Without the clamp nothing bounds the masks, and the
    # distillation term's gradients drove them to overflow within 7 steps on a LIRA model of the
    # test suite, so these models also run without it, at the rates they were measured with (as
    # the core's synthetic CNN does).
    "small-cnn": {"clamp": False, **WITHOUT_DISTILLATION},
}
"""NFT settings this modality recommends for models too shallow for the core's defaults."""


def nft_overrides_for(model_name: str) -> dict:
    """The NFT family's settings over ``PurifyConfig()`` for a model of this modality: the image
    settings, then those of a shallow model."""
    return {**VISION_NFT_SETTINGS, **SHALLOW_MODEL_SETTINGS.get(model_name, {})}


def _classification():
    from nft.core import ClassificationTask

    return ClassificationTask()


modality = VisionModality()
