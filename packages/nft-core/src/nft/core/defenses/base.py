"""One interface for every defense, so the benchmark compares them on identical inputs.

A defense sees a model, a clean dataset and a :class:`DefenseContext` (how to call and score
the model, how to mix its inputs, where an input-space perturbation lives). It returns a
:class:`DefenseOutcome`; :func:`nft.core.purify` times it and wraps it in a ``PurifyResult``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ..augment import Augmentation
from ..config import DefenseConfig
from ..errors import ConfigError
from ..registry import Registry
from ..tasks import ClassificationTask, Task

__all__ = ["DEFENSES", "Defense", "DefenseContext", "DefenseOutcome", "InputSpace", "get_defense"]


@dataclass(frozen=True)
class InputSpace:
    """Where an input-space perturbation (a universal trigger, an adversarial example) lives.

    ``lower`` / ``upper`` bound the model's input values elementwise (broadcastable to one
    sample; for normalised images they are the normalised images of 0 and 1); ``shape`` is one
    sample's shape; ``scale`` converts a budget given in raw units (pixels in [0, 1]) into
    model-input units (1 / std for normalised images).

    The defenses that optimise a perturbation (I-BAU, AWM, SAU) reach the inputs only through
    :meth:`sample_shape`, :meth:`batch_size`, :meth:`perturb`, :meth:`clamp` and :meth:`concat`.
    Here the perturbation is added to the input tensor; a modality whose perturbation lives
    inside the model overrides them (text adds it to the word embeddings:
    ``nft.nlp.EmbeddingSpace``). NFT's own pattern (``nft.core.adversary``) needs tensor batches.
    """

    shape: tuple[int, ...]
    lower: torch.Tensor | float = 0.0
    upper: torch.Tensor | float = 1.0
    scale: torch.Tensor | float = 1.0
    searches: tuple[Callable[[InputSpace, float], Any], ...] = ()
    """The modality's own searched patterns, for inputs the core's patch, grating and composite
    searches cannot reach (point clouds: clusters of points). Each is a factory
    ``(space, prob) -> search`` whose result has the interface of
    :class:`~nft.core.adversary.PatchAdversary` (``search``, ``perturb``, ``active``,
    ``searched``, ``summary``, ``state_dict``, ``load_state_dict``); NFT builds them when
    ``adv_search_prob > 0`` and runs them like its own searches."""

    def sample_shape(self, inputs: Any) -> tuple[int, ...]:
        """One sample's shape, checked against a batch (a clear error if they disagree)."""
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            raise ConfigError(
                f"an input-space perturbation is added to the inputs, which must be floating-point "
                f"tensors; this modality's batches are {type(inputs).__name__}, so its input space "
                "must say how a perturbation reaches them (override InputSpace.perturb)"
            )
        shape = tuple(self.shape)
        if tuple(inputs.shape[1:]) != shape:
            raise ConfigError(
                f"the modality's input space says one sample has shape {shape}, but the clean batches "
                f"have samples of shape {tuple(inputs.shape[1:])}; fix the modality's InputSpace"
            )
        return shape

    def batch_size(self, inputs: Any) -> int:
        return int(inputs.shape[0])

    def perturb(self, inputs: Any, delta: torch.Tensor) -> Any:
        """The batch carrying ``delta`` (model units, shape ``(1 or batch, *shape)``)."""
        return inputs + delta

    def clamp(self, inputs: Any) -> Any:
        """The batch with its values within ``lower`` / ``upper``."""
        lower = torch.as_tensor(self.lower, dtype=inputs.dtype, device=inputs.device)
        upper = torch.as_tensor(self.upper, dtype=inputs.dtype, device=inputs.device)
        return torch.maximum(torch.minimum(inputs, upper), lower)

    def concat(self, first: Any, second: Any) -> Any:
        """One batch of ``first``'s samples followed by ``second``'s (one forward pass for both)."""
        return torch.cat([first, second])


@dataclass
class DefenseContext:
    """What a defense may use besides the model and the clean data."""

    task: Task = field(default_factory=ClassificationTask)
    augmentation: Augmentation | None = None
    """The modality's mixing augmentation (NFT); ``None`` means the config's MixUp."""
    input_space: InputSpace | None = None
    """Set by modalities whose inputs can carry an additive perturbation (pixels of images and
    clips, point coordinates, text's word embeddings)."""
    callbacks: Sequence[Any] = ()
    collate_fn: Callable[[list], Any] | None = None
    samples_per_class: float | None = None


@dataclass
class DefenseOutcome:
    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Defense(ABC):
    """A backdoor defense. Subclasses set ``config_class`` and implement :meth:`run`."""

    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig
    needs_input_space: ClassVar[bool] = False
    """True for defenses that optimise an input-space perturbation (I-BAU, AWM, SAU)."""

    def __init__(self, name: str, config: DefenseConfig | None = None) -> None:
        self.name = name
        self.config = config if config is not None else self.default_config()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(
                f"defense {name!r} takes a {self.config_class.__name__}, got {type(self.config).__name__}"
            )

    def default_config(self) -> DefenseConfig:
        return self.config_class()

    def check(self, context: DefenseContext) -> None:
        """Raise if this defense cannot run in the given context."""
        if self.needs_input_space and context.input_space is None:
            raise ConfigError(
                f"defense {self.name!r} optimises an input-space perturbation, and no input space "
                "was given (the modality's experiment, or purify(input_space=...), supplies where "
                "the perturbation lives); pass one or choose another defense"
            )

    def gentler(self) -> Defense | None:
        """The same defense at a smaller step, to run again after this one collapsed (see
        :func:`nft.core.purify`), or ``None``: by default a defense is run once, as configured."""
        return None

    @abstractmethod
    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        """Purify ``model`` (it is a private copy: modify it freely) and return the outcome."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config!r})"


DEFENSES: Registry[Callable[[DefenseConfig | None], Defense]] = Registry("defense")
"""Defense name -> factory ``(config | None) -> Defense``."""


def get_defense(method: str | Defense, config: DefenseConfig | None = None) -> Defense:
    if isinstance(method, Defense):
        if config is not None:
            raise ConfigError("pass either a Defense object or a config, not both")
        return method
    return DEFENSES.get(method)(config)
