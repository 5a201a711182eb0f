"""What a modality package gives the core: a :class:`Modality` object.

The ``nft`` command works for every modality through this contract:

* ``nft attack`` calls :meth:`Modality.train_backdoor` with an :class:`AttackSpec`;
* ``nft purify`` / ``nft evaluate`` call :meth:`Modality.load_experiment` on the attack's run
  folder and get an :class:`Experiment`: the rebuilt model, the defender's clean pool (disjoint
  from the poisoned samples), and an evaluator for the clean and triggered test sets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from .augment import Augmentation
from .config import DefenseConfig
from .defenses.base import InputSpace
from .io import RunFolder
from .masking import MaskConfig
from .registry import Registry
from .tasks import Task

__all__ = ["AttackSpec", "Experiment", "Modality"]


@dataclass(frozen=True)
class AttackSpec(DefenseConfig):
    """``nft attack``: which backdoored model to train. ``None`` fields take the modality's default."""

    dataset: str | None = None
    model: str | None = None
    attack: str | None = None
    epochs: int | None = None
    """Training epochs; the modality's default trains to convergence on its embedded data."""
    poison_rate: float = 0.1
    target: int = 0
    mode: str = "all-to-one"
    """``all-to-one`` or ``all-to-all`` (y → y+1 mod C)."""
    batch_size: int | None = None
    lr: float | None = None
    holdout: int | None = None
    """Training samples kept out of training as the defender's clean pool."""
    data_root: str | None = None
    """Where a real dataset lives on disk (the embedded ones need none)."""
    train_limit: int | None = None
    """Use only this many training samples (quick runs)."""
    test_limit: int | None = None
    attack_args: dict = field(default_factory=dict)
    """Attack-specific options, e.g. ``{"patch_size": 4}``."""
    model_args: dict = field(default_factory=dict)
    """Model options, e.g. ``{"width": 16}``."""
    precision: str = "fp32"
    """Training autocast precision: ``fp32``, ``bf16`` or ``fp16`` (GPU users)."""
    channels_last: bool = False

    def train_config(self, **overrides: Any):
        """The :class:`~nft.core.training.TrainConfig` this spec asks for (modalities train with it)."""
        from .training import TrainConfig

        values = dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                      device=self.device, progress=self.progress, precision=self.precision,
                      channels_last=self.channels_last)
        values.update(overrides)
        return TrainConfig(**{k: v for k, v in values.items() if v is not None})


@dataclass
class Experiment:
    """Everything ``nft purify`` / ``nft evaluate`` need, rebuilt from an attack run folder."""

    model: nn.Module
    task: Task
    defender_pool: Dataset
    """Clean training samples never poisoned nor trained on, with training augmentation."""
    evaluate: Callable[[nn.Module], dict[str, float]]
    """Model -> ``{"acc" (or "map", "bleu", "miou"), "asr", "ra"}``."""
    pool_labels: np.ndarray | None = None
    """Labels of ``defender_pool`` (for k-per-class selection); ``None`` when not classification."""
    augmentation: Augmentation | None = None
    mask_config: MaskConfig | None = None
    nft_overrides: dict = field(default_factory=dict)
    """:class:`~nft.core.PurifyConfig` fields this modality recommends for NFT (e.g. fewer, smaller
    steps for video); applied to the NFT family unless the user sets the same field, except to
    ``nft-reference``, which stays the reference code's recipe (on the modality's masks)."""
    input_space: InputSpace | None = None
    collate_fn: Callable[[list], Any] | None = None
    primary_metric: str = "acc"
    spec: dict = field(default_factory=dict)


class Modality(ABC):
    """A task package's entry in the core. Subclass it and expose one instance as an entry point."""

    name: str = ""
    description: str = ""
    primary_metric: str = "acc"
    defaults: dict[str, Any] = {}
    """Default ``dataset`` / ``model`` / ``attack`` / ``epochs`` … for ``nft attack``."""

    def __init__(self) -> None:
        self.models: Registry = Registry("model")
        self.attacks: Registry = Registry("attack")
        self.datasets: Registry = Registry("dataset")
        self.augmentations: Registry = Registry("augmentation")

    def resolve(self, spec: AttackSpec) -> AttackSpec:
        """Fill the spec's ``None`` fields with this modality's defaults."""
        filled = {k: v for k, v in self.defaults.items() if getattr(spec, k, None) in (None, {})}
        return spec.replace(**filled) if filled else spec

    def listing(self) -> dict[str, list[str]]:
        return {
            "models": self.models.names(), "attacks": self.attacks.names(),
            "datasets": self.datasets.names(), "augmentations": self.augmentations.names(),
        }

    @abstractmethod
    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        """Train a backdoored model as ``spec`` says; write ``model.safetensors`` and whatever
        :meth:`load_experiment` needs into ``run``; return ``{"acc", "asr", "ra"}``."""

    @abstractmethod
    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        """Rebuild the model and data of an attack run folder."""
