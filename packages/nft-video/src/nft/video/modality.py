"""The ``video`` modality: what ``nft attack --modality video`` and ``nft purify`` run.

Options beyond :class:`~nft.core.AttackSpec`'s fields:

* ``--model-arg``: model options (``width``, ``stem_dim``, …) and the clip geometry, which the
  model is built for: ``frames`` (clip length), ``size`` (frame side), ``stride`` (temporal
  step), ``clips_per_video`` (evaluation), ``split`` (UCF-101 / HMDB-51 official split 1-3),
  ``motion_train_per_class`` / ``motion_test_per_class`` / ``motion_classes`` (size of the
  generated set);
* ``--attack-arg``: ``patch_size`` and ``frame_range=[start, stop]`` (badnets), ``alpha``
  (blend), the :class:`~nft.video.attacks.CleanLabelConfig` fields (clean-label).

For ``clean-label`` the poison rate is the share of the *target class* that is poisoned (labels
are untouched); for the dirty-label attacks it is the share of the non-target videos.
What the run needs besides the weights is written into the run folder: ``video.json`` (the
resolved model options and clip geometry) and ``trigger.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from nft.core import (
    AttackSpec,
    ClassificationTask,
    ConfigError,
    DataError,
    Experiment,
    InputSpace,
    MaskConfig,
    Modality,
    PoisonedDataset,
    RunFolder,
    TrainConfig,
    attack_target,
    choose_poison_indices,
    load_model_weights,
    load_tensors,
    train_model,
)
from nft.core.io import read_json
from nft.core.purify import resolve_device

from .attacks import ATTACKS, CleanLabelConfig, ClipTrigger, learn_patch_trigger, perturb_videos
from .augment import ClipMixUp, PatternNoise, VideoMix
from .datasets import VideoClips, hmdb51_split, ucf101_split
from .metrics import evaluate_video
from .models import MODELS, build_model
from .motion import MotionConfig, motion_dataset

__all__ = ["VideoModality", "VideoSetup", "modality"]

log = logging.getLogger(__name__)

VIDEO_NFT_SETTINGS: dict[str, Any] = {"distill_weight": 1.0, "lr": 0.2, "lr_min": 0.02, "batch_size": 32,
                                      "max_grad_norm": 10.0, "adv_patch_prob": 0.5}
"""The video modality's ``nft`` settings over ``PurifyConfig()``: clean-view distillation (the
mixed clips without ``PatternNoise``'s patterns are the clean view), mask rate 0.2 → 0.02,
batches of 32 clips (the 5-per-class clean set has 50) and the mask gradient clipped to norm 10.
Without the clipping, three of the runs at this rate ended at chance accuracy (the first steps
sent half of the masks to their floor); with it, on R3D-18, 7.9 % BadNets and 4.6 % blend ASR
were left at about 6 points of accuracy. The searched patches (``adv_patch_prob``, as on images)
find the BadNets corner patch that random patterns never wake (they sent no clip to the target):
on the lossless set's R3D-18 BadNets went from 85.5 to 0.9 % ASR and blend from 30.2 to 6.2 %.
All settings measured are in ``docs/video.md``."""

DATA_KEYS = ("frames", "size", "stride", "clips_per_video", "split", "motion_train_per_class",
             "motion_test_per_class", "motion_classes")
DATASET_GEOMETRY = {
    "motion": {"frames": 8, "size": 32, "stride": 1, "clips_per_video": 3},
    # the usual small-input protocol for 3D ResNets on UCF-101 / HMDB-51 (16 × 112²)
    "ucf101": {"frames": 16, "size": 112, "stride": 2, "clips_per_video": 3, "split": 1},
    "hmdb51": {"frames": 16, "size": 112, "stride": 2, "clips_per_video": 3, "split": 1},
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    # CPU-sized widths on the embedded data; pass width=64 for torchvision's full networks
    "r3d-18": {"width": 8}, "r2plus1d-18": {"width": 8}, "mc3-18": {"width": 8}, "s3d": {"width": 8},
    "x3d": {}, "slowfast": {}, "slow": {}, "i3d": {},
}


@dataclass
class VideoSetup:
    """The data and geometry of one run, rebuilt identically from its spec."""

    train: VideoClips
    """The attacker's training videos (training mode: random clip start)."""
    pool: VideoClips
    """The defender's clean pool: held-out training videos, never poisoned nor trained on."""
    test: VideoClips
    num_classes: int
    geometry: dict[str, int]
    model_args: dict[str, Any]

    def build_model(self, name: str) -> nn.Module:
        return build_model(name, self.num_classes, frames=self.geometry["frames"],
                           size=self.geometry["size"], **self.model_args)


class VideoModality(Modality):
    name = "video"
    description = ("action recognition: 3D CNNs (torchvision, pytorchvideo) on clips; badnets, "
                   "blend, clean-label video backdoors; embedded Fashion-MNIST motion set")
    defaults = {"dataset": "motion", "model": "r3d-18", "attack": "badnets", "epochs": 20,
                "batch_size": 32, "lr": 0.05, "holdout": 200}

    def __init__(self) -> None:
        super().__init__()
        for name in MODELS.names():
            self.models.add(name, MODELS.get(name))
        for name in ATTACKS.names():
            self.attacks.add(name, ATTACKS.get(name), **ATTACKS.meta(name))
        self.datasets.add("motion", motion_dataset)
        self.datasets.add("ucf101", ucf101_split, aliases=("ucf-101",))
        self.datasets.add("hmdb51", hmdb51_split, aliases=("hmdb-51",))
        self.augmentations.add("clip-mixup", ClipMixUp)
        self.augmentations.add("videomix", VideoMix)
        self.augmentations.add("pattern-noise", PatternNoise)

    # ---- data ----------------------------------------------------------------------------
    def setup(self, spec: AttackSpec) -> VideoSetup:
        """Datasets, geometry and model options of ``spec`` (deterministic per seed)."""
        dataset = self.datasets.canonical(spec.dataset)
        model = self.models.canonical(spec.model)
        options = dict(spec.model_args)
        geometry = dict(DATASET_GEOMETRY[dataset])
        for key in DATA_KEYS:
            if key in options:
                geometry[key] = int(options.pop(key))
        model_args = {**MODEL_DEFAULTS.get(model, {}), **options}
        frames, size, stride = geometry["frames"], geometry["size"], geometry["stride"]
        if dataset == "motion":
            config = MotionConfig(train_per_class=geometry.pop("motion_train_per_class", 120),
                                  test_per_class=geometry.pop("motion_test_per_class", 40),
                                  classes=geometry.pop("motion_classes", 10))
            if size != config.size:
                raise ConfigError(f"the motion set is rendered at {config.size} px; drop size={size}")
            full_train = motion_dataset("train", config, frames=frames, stride=stride,
                                        root=None, progress=spec.progress)
            full_test = motion_dataset("test", config, frames=frames, stride=stride, train=False)
            train_videos, train_labels = full_train.videos, full_train.targets
            test_videos, test_labels = full_test.videos, full_test.targets
            classes, cache, resize = full_train.classes, True, None
        else:
            if not spec.data_root:
                raise ConfigError(f"dataset {dataset} needs --data-root (the folder holding it)")
            loader = ucf101_split if dataset == "ucf101" else hmdb51_split
            split = geometry.get("split", 1)
            train_videos, train_labels, classes = loader(spec.data_root, split=split, train=True)
            test_videos, test_labels, _ = loader(spec.data_root, split=split, train=False)
            cache, resize = False, (size, size)
        train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
        num_classes = len(classes)
        if not 0 <= spec.target < num_classes:
            raise ConfigError(f"target {spec.target} is out of range for {num_classes} classes")
        holdout = int(spec.holdout or 0)
        if not 0 < holdout < len(train_videos):
            raise ConfigError(f"holdout must be in [1, {len(train_videos) - 1}] videos, got {holdout}")
        order = np.random.default_rng(spec.seed).permutation(len(train_videos))
        pool_idx, train_idx = np.sort(order[:holdout]), order[holdout:]
        if spec.train_limit:
            train_idx = train_idx[: spec.train_limit]
        train_idx = np.sort(train_idx)
        test_idx = np.arange(len(test_videos))
        if spec.test_limit:
            test_idx = np.sort(np.random.default_rng(spec.seed + 1).permutation(len(test_videos))
                               [: spec.test_limit])

        def clips(idx, videos, labels, train):
            return VideoClips([videos[i] for i in idx], labels[idx], frames=frames, stride=stride,
                              size=resize, train=train, cache=cache, classes=classes)

        return VideoSetup(
            train=clips(train_idx, train_videos, train_labels, True),
            pool=clips(pool_idx, train_videos, train_labels, True),
            test=clips(test_idx, test_videos, test_labels, False),
            num_classes=num_classes, geometry=geometry, model_args=model_args,
        )

    # ---- attacks -------------------------------------------------------------------------
    def _target_of(self, spec: AttackSpec, num_classes: int):
        return lambda y: attack_target(y, mode=spec.mode, target=spec.target, num_classes=num_classes)

    def _fixed_trigger(self, spec: AttackSpec, setup: VideoSetup) -> ClipTrigger:
        name = self.attacks.canonical(spec.attack)
        args = dict(spec.attack_args)
        known = {"badnets": {"patch_size", "frame_range"}, "blend": {"alpha"}}[name]
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"attack {name} does not take {unknown}; its options: {sorted(known)}")
        return ATTACKS.get(name)(setup.geometry["frames"], setup.geometry["size"], seed=spec.seed, **args)

    def _clean_label_config(self, spec: AttackSpec) -> CleanLabelConfig:
        known = {f.name for f in fields(CleanLabelConfig)}
        unknown = sorted(set(spec.attack_args) - known)
        if unknown:
            raise ConfigError(f"attack clean-label does not take {unknown}; its options: {sorted(known)}")
        return CleanLabelConfig(**spec.attack_args)

    def train_config(self, spec: AttackSpec) -> TrainConfig:
        return TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                           device=spec.device, progress=spec.progress)

    def train_clean(self, spec: AttackSpec, setup: VideoSetup | None = None) -> nn.Module:
        """A model trained on the clean training videos with the spec's recipe."""
        setup = setup or self.setup(spec)
        torch.manual_seed(spec.seed)
        model = setup.build_model(spec.model)
        return train_model(model, setup.train, self.train_config(spec))

    def poison(self, spec: AttackSpec, setup: VideoSetup, *, clean_model: nn.Module | None = None
               ) -> tuple[PoisonedDataset, ClipTrigger, dict]:
        """The poisoned training set and the trigger (learning it for clean-label).

        ``clean_model``: the attacker's clean model for clean-label (trained here when ``None``).
        """
        name = self.attacks.canonical(spec.attack)
        target_of = self._target_of(spec, setup.num_classes)
        labels = setup.train.targets
        if not self.attacks.meta(name)["clean_label"]:
            trigger = self._fixed_trigger(spec, setup)
            chosen = choose_poison_indices(labels, rate=spec.poison_rate, seed=spec.seed,
                                           mode=spec.mode, target=spec.target)
            data = PoisonedDataset(setup.train, chosen, lambda x, y, i: (trigger(x), target_of(y)))
            return data, trigger, {"poisoned": len(chosen)}
        if spec.mode != "all-to-one":
            raise ConfigError("the clean-label attack is all-to-one (it poisons the target class only)")
        config = self._clean_label_config(spec)
        device = resolve_device(spec.device)
        if clean_model is None:
            log.info("clean-label: training the attacker's clean model")
            clean_model = self.train_clean(spec, setup)
        clean = clean_model.to(device)
        frames, size = setup.geometry["frames"], setup.geometry["size"]
        others = np.flatnonzero(labels != spec.target)
        source = setup.train.with_mode(train=True)
        torch.manual_seed(spec.seed)  # the clips' random starts
        trigger = learn_patch_trigger(
            clean, lambda i: source[int(others[i])][0], len(others), target=spec.target,
            frames=frames, size=size, config=config, seed=spec.seed, device=device,
            progress=spec.progress)
        chosen = choose_poison_indices(labels, rate=spec.poison_rate, seed=spec.seed, mode=spec.mode,
                                       target=spec.target, clean_label=True)
        perturbed = perturb_videos(
            clean, [setup.train.video(int(i)) for i in chosen], labels[chosen],
            clip_starts=lambda length: setup.train.starts(length, -(-length // setup.train.span()) + 1),
            frames=frames, stride=setup.train.stride, config=config, device=device,
            progress=spec.progress)
        for i, video in zip(chosen, perturbed):
            setup.train.overrides[int(i)] = video
        data = PoisonedDataset(setup.train, chosen, lambda x, y, i: (trigger(x), y))
        with torch.no_grad():
            clean_asr = evaluate_video(clean, setup.test, trigger=trigger, target_of=target_of,
                                       clips_per_video=1, device=device)["asr"]
        return data, trigger, {"poisoned": len(chosen), "clean_model_asr": clean_asr}

    def train_backdoor(self, spec: AttackSpec, run: RunFolder, *,
                       clean_model: nn.Module | None = None) -> dict[str, float]:
        """Train the backdoored model into ``run``. ``clean_model`` (optional) is the attacker's
        clean model for clean-label, when the caller already has one for the same spec."""
        self.models.canonical(spec.model)
        self.attacks.canonical(spec.attack)
        setup = self.setup(spec)
        data, trigger, info = self.poison(spec, setup, clean_model=clean_model)
        torch.manual_seed(spec.seed)
        model = setup.build_model(spec.model)
        train_model(model, data, self.train_config(spec))
        run.save_model(model)
        run.save_tensors("trigger.safetensors", trigger.state_dict())
        run.write_json("video.json", {"geometry": setup.geometry, "model_args": setup.model_args,
                                      "num_classes": setup.num_classes, **info})
        metrics = evaluate_video(model, setup.test, trigger=trigger,
                                 target_of=self._target_of(spec, setup.num_classes),
                                 clips_per_video=setup.geometry["clips_per_video"], device=spec.device,
                                 progress=spec.progress)
        log.info("backdoored model: %s", metrics)
        return metrics

    # ---- purification --------------------------------------------------------------------
    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        run_dir = Path(run_dir)
        config = read_json(run_dir / "config.json")
        spec = AttackSpec.from_dict(config["spec"]).replace(progress=False)
        setup = self.setup(spec)
        saved = read_json(run_dir / "video.json")
        if saved["geometry"] != setup.geometry or saved["model_args"] != setup.model_args:
            raise ConfigError(f"{run_dir} was made with clip geometry {saved['geometry']} and model "
                              f"options {saved['model_args']}, which this nft-video no longer derives "
                              "from its spec; re-run the attack")
        model = load_model_weights(setup.build_model(spec.model), run_dir / "model.safetensors")
        trigger = ClipTrigger.from_state_dict(load_tensors(run_dir / "trigger.safetensors"))
        target_of = self._target_of(spec, setup.num_classes)
        geometry = setup.geometry
        return Experiment(
            model=model, task=ClassificationTask(), defender_pool=setup.pool,
            pool_labels=np.asarray(setup.pool.targets),
            evaluate=lambda m: evaluate_video(m, setup.test, trigger=trigger, target_of=target_of,
                                              clips_per_video=geometry["clips_per_video"],
                                              device=device),
            # clip MixUp alone left every measured backdoor in place (docs/video.md); random
            # patterns on the mixed clips wake trigger detectors up so the masks can mute them,
            # and masks on the convolutions' output channels as well as on BN γ reach them
            augmentation=PatternNoise(ClipMixUp(1.0), patch_prob=1.0, blend_prob=0.5),
            mask_config=MaskConfig(targets=("norm", "conv")),
            # measured on R3D-18 (docs/video.md): distillation on, a higher mask rate, 32-clip
            # batches (the clean set is 50 clips) and clipped mask gradients
            nft_overrides=dict(VIDEO_NFT_SETTINGS),
            input_space=InputSpace(shape=(3, geometry["frames"], geometry["size"], geometry["size"]),
                                   lower=0.0, upper=1.0, scale=1.0),
            primary_metric="acc",
            spec=spec.to_dict(),
        )


modality = VideoModality()
