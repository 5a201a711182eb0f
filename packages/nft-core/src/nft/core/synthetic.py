"""A tiny built-in modality on data the code makes: structured grey images and a patch backdoor.

It exists so the core can be exercised end to end (``nft attack`` → ``nft purify`` →
``nft evaluate``, the conformance suites, the method test) without any modality package or
dataset installed. Each class is a fixed arrangement of Gaussian blobs; a sample is its class's
arrangement, randomly shifted and scaled, plus noise. The backdoor is a 3×3 checkerboard patch
in the bottom-right corner (BadNets' trigger shape).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .attacks import PoisonedDataset, TriggeredDataset, attack_target, choose_poison_indices
from .defenses.base import InputSpace
from .errors import ConfigError
from .io import RunFolder, load_model_weights, read_json
from .purify import WITHOUT_DISTILLATION
from .metrics import evaluate_classification
from .modality import AttackSpec, Experiment, Modality
from .tasks import ClassificationTask
from .training import train_model

__all__ = ["PatternImages", "SmallCNN", "add_patch", "modality"]


class PatternImages(Dataset):
    """``n`` grey ``size×size`` images in [0, 1] of ``classes`` blob arrangements; deterministic."""

    def __init__(self, n: int, *, classes: int = 10, size: int = 16, seed: int = 0,
                 noise: float = 0.35, template_seed: int = 1234) -> None:
        if n < 1 or classes < 2 or size < 8:
            raise ConfigError("PatternImages needs n ≥ 1, classes ≥ 2 and size ≥ 8")
        t_rng = np.random.default_rng(template_seed)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        templates = np.zeros((classes, size, size), np.float32)
        for c in range(classes):
            for _ in range(4):
                cy, cx = t_rng.uniform(2, size - 3, size=2)
                sigma = t_rng.uniform(1.2, 2.2)
                sign = t_rng.choice([-1.0, 1.0])
                templates[c] += sign * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, classes, size=n)
        shifts = rng.integers(-1, 2, size=(n, 2))
        amps = rng.uniform(0.7, 1.3, size=n).astype(np.float32)
        images = templates[labels] * amps[:, None, None]
        for i, (dy, dx) in enumerate(shifts):
            images[i] = np.roll(images[i], (int(dy), int(dx)), axis=(0, 1))
        images += rng.normal(0, noise, size=images.shape).astype(np.float32)
        self.images = torch.from_numpy(np.clip(0.5 + 0.3 * images, 0, 1)).unsqueeze(1)
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.classes = classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], int(self.targets[index])


def add_patch(image: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Stamp a ``size×size`` black/white checkerboard in the bottom-right corner."""
    out = image.clone()
    board = (torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0
    out[..., -size:, -size:] = board.to(out.dtype)
    return out


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global average pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class SyntheticModality(Modality):
    name = "synthetic"
    description = "built-in structured synthetic images with a patch backdoor (no data needed)"
    defaults = {"dataset": "patterns", "model": "small-cnn", "attack": "badnets", "epochs": 8,
                "batch_size": 64, "lr": 0.05, "holdout": 1000}

    def __init__(self) -> None:
        super().__init__()
        self.datasets.add("patterns", PatternImages)
        self.models.add("small-cnn", SmallCNN)
        self.attacks.add("badnets", add_patch)

    # The data of a run is a pure function of its spec, so nothing but weights is stored.
    def _data(self, spec: AttackSpec):
        n_train = spec.train_limit or 6000
        train = PatternImages(n_train + spec.holdout, seed=spec.seed)
        test = PatternImages(spec.test_limit or 2000, seed=spec.seed + 10_000)
        order = np.random.default_rng(spec.seed).permutation(len(train))
        pool_idx, train_idx = np.sort(order[: spec.holdout]), np.sort(order[spec.holdout:])
        return train, test, pool_idx, train_idx

    def _check(self, spec: AttackSpec) -> None:
        self.datasets.canonical(spec.dataset)
        self.models.canonical(spec.model)
        self.attacks.canonical(spec.attack)
        if not 0 <= spec.target < 10:
            raise ConfigError(f"target {spec.target} is out of range for 10 classes")

    def _triggered(self, spec: AttackSpec, test: PatternImages) -> TriggeredDataset:
        size = int(spec.attack_args.get("patch_size", 3))
        return TriggeredDataset(
            test, test.targets.numpy(), lambda x, i: add_patch(x, size),
            lambda y: attack_target(y, mode=spec.mode, target=spec.target, num_classes=10),
        )

    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        self._check(spec)
        train, test, pool_idx, train_idx = self._data(spec)
        size = int(spec.attack_args.get("patch_size", 3))
        labels = train.targets.numpy()[train_idx]
        local = choose_poison_indices(labels, rate=spec.poison_rate, seed=spec.seed,
                                      mode=spec.mode, target=spec.target)
        target_of = lambda y: attack_target(y, mode=spec.mode, target=spec.target, num_classes=10)  # noqa: E731
        poisoned = PoisonedDataset(Subset(train, train_idx.tolist()), local,
                                   lambda x, y, i: (add_patch(x, size), target_of(y)))
        torch.manual_seed(spec.seed)
        model = SmallCNN(**spec.model_args)
        train_model(model, poisoned, spec.train_config())
        run.save_model(model)
        return evaluate_classification(model, test, self._triggered(spec, test), device=spec.device)

    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        config = read_json(Path(run_dir) / "config.json")
        spec = AttackSpec.from_dict(config["spec"])
        train, test, pool_idx, _ = self._data(spec)
        model = load_model_weights(SmallCNN(**spec.model_args), Path(run_dir) / "model.safetensors")
        triggered = self._triggered(spec, test)
        return Experiment(
            model=model, task=ClassificationTask(),
            defender_pool=Subset(train, pool_idx.tolist()),
            pool_labels=train.targets.numpy()[pool_idx],
            evaluate=lambda m: evaluate_classification(m, test, triggered, device=device),
            input_space=InputSpace(shape=(1, 16, 16)),
            # SmallCNN has 4 normalisation layers, so the depth clamp would hold all of them at
            # floors 0.49…0.11 and the patch backdoor survives (ASR 85 % with it, 4 % without);
            # 1000 steps, as the reference, because 500 left 21 % (benchmarks/results/ablation.md).
            # No distillation either: accuracy is 100 % here, so the term protects nothing and
            # only holds the masks near the backdoored function (ASR 5 % without it, 32 % with).
            nft_overrides={"clamp": False, "steps": 1000, **WITHOUT_DISTILLATION},
            spec=spec.to_dict(),
        )


modality = SyntheticModality()
