"""What the learned image attacks share: a base class whose trigger is a network, the training
loop that trains a classifier together with (or after) that network, and small helpers.

The pattern attacks of :mod:`nft.vision.attacks` fix their trigger first and then poison data; the
attacks here *learn* their trigger (Input-aware, LIRA: jointly with the classifier; ISSBA, FBA:
on clean data before poisoning; CBA: no network, but its own mixed training set and loss). So a
:class:`LearnedAttack` trains the classifier itself (``trains_model``): the vision modality hands
it the model and the run's data (:meth:`LearnedAttack.train_classifier`), and afterwards saves
``state_dict()`` (the generators' weights and buffers) as ``attack.safetensors``, from which
``nft purify`` / ``nft evaluate`` rebuild exactly the same test-time trigger.

Conventions kept from the pattern attacks: triggers act on raw images in [0, 1]; the model sees
``normalise(x)`` of the triggered (and augmented) image; everything random is drawn from
generators seeded by the run's seed, so the same seed gives the same trigger and model on CPU.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from nft.core import ConfigError, DataError
from nft.core.data import move_to
from nft.core.purify import resolve_device
from nft.core.training import OneCycleSGD, TrainConfig

from .attacks import Attack
from .data import ImageTransform

__all__ = [
    "LearnedAttack",
    "conv_block",
    "raw_augment",
    "seeded_loader",
    "ssim",
    "train_config",
    "train_loop",
]

log = logging.getLogger(__name__)


# ---- building blocks ------------------------------------------------------------------------
def conv_block(c_in: int, c_out: int, *, relu: bool = True, norm: str = "batch",
               kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (same padding) → norm → ReLU: the unit every generator here is made of."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    elif norm == "instance":
        layers.append(nn.InstanceNorm2d(c_out, affine=True))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Mean structural similarity of two image batches in [0, 1] (uniform window, the usual
    constants C1 = 0.01², C2 = 0.03²). DFST's detoxification keeps its detoxicants close to the
    clean images with an SSIM term (window 5); this is that measure, written for any channel count."""
    c = x.shape[1]
    pad = window // 2
    kernel = torch.full((c, 1, window, window), 1.0 / window ** 2, dtype=x.dtype, device=x.device)

    def blur(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="replicate"), kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return value.mean()


def raw_augment(data) -> ImageTransform:
    """The dataset's training augmentation (crop with padding, flip) *without* normalisation, so a
    learned trigger can act on the augmented raw image inside the training loop (Input-aware and
    LIRA apply their generator to the augmented batch, as their reference code does)."""
    c = data.channels
    return ImageTransform((0.0,) * c, (1.0,) * c, crop_padding=data.crop_padding, flip=data.flip)


# ---- the training loop ----------------------------------------------------------------------
def train_config(spec, **overrides: Any) -> TrainConfig:
    """The classifier's training recipe for an attack spec: the core's ``train_model`` recipe
    (SGD, momentum 0.9, weight decay 5e-4, one-cycle rate), so learned and pattern attacks give
    models of comparable quality for the same spec."""
    values = dict(epochs=int(spec.epochs), batch_size=int(spec.batch_size), lr=float(spec.lr),
                  seed=int(spec.seed), device=spec.device, progress=bool(spec.progress))
    values.update(overrides)
    return TrainConfig(**values)


def seeded_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    """A shuffling loader whose order depends only on ``seed`` (drops a ragged last batch, so
    every batch has room for the attack's fraction of poisoned samples)."""
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      drop_last=len(dataset) > batch_size)


def train_loop(
    model: nn.Module,
    loaders: Sequence[DataLoader],
    config: TrainConfig,
    step: Callable[[nn.Module, tuple, int], torch.Tensor],
    *,
    optimizers: Iterable[torch.optim.Optimizer] = (),
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    epochs: int | None = None,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` with ``step(model, batches, epoch) -> loss`` on the zipped ``loaders``.

    ``batches`` is one ``(x, y)`` per loader, already on the device. The step itself is the core's
    :class:`~nft.core.training.OneCycleSGD`, as in ``train_model``; ``optimizers`` (the attack's
    generator optimizers) are zeroed and stepped together with the classifier's, so a joint
    objective (Input-aware) trains both from one backward pass. Their rates follow the
    classifier's one-cycle schedule (IAD's official code steps both rates down with MultiStepLR
    schedules): a generator still moving at full rate while the classifier's rate has decayed to
    nothing leaves a trigger the classifier never learned (on 2,000 Fashion-MNIST images this
    lifted IAD's ASR from 0.40 to 0.62). A step that updates a generator by itself (LIRA) does so
    inside ``step``. Randomness in ``step`` (torch's global generator) is seeded from
    ``config.seed``.
    """
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    model.to(device).train()
    epochs = config.epochs if epochs is None else int(epochs)
    total = epochs * min(len(loader) for loader in loaders)
    sgd = OneCycleSGD([p for p in model.parameters() if p.requires_grad], config, total,
                      extras=optimizers, desc=desc)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        with tqdm(total=total, desc=desc, unit="step", disable=not config.progress, leave=False) as bar:
            for epoch in range(epochs):
                model.train()
                for batches in zip(*loaders):
                    batches = tuple(move_to(b, device) for b in batches)
                    loss = step(model, batches, epoch)
                    sgd.update(loss)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch, model)
    model.eval()
    return model


# ---- the base class -------------------------------------------------------------------------
class LearnedAttack(Attack):
    """An attack whose trigger is (or needs) a trained network, and which trains the classifier.

    Subclasses build their networks in :meth:`build_networks` (called from ``setup`` with torch
    seeded from the attack seed, so an untrained trigger is already deterministic), implement
    :meth:`trigger` (a differentiable batch trigger on raw images) and
    :meth:`train_classifier`. ``state_dict`` / ``load_state_dict`` cover every network's
    parameters and buffers under ``<network>.<name>`` keys.
    """

    trains_model: ClassVar[bool] = True
    aliases: ClassVar[tuple[str, ...]] = ()
    all_to_all_reason: ClassVar[str] = ""
    """Why the attack has no all-to-all mode (empty: it has one)."""
    trained: bool = False

    def setup(self) -> None:
        if self.mode == "all-to-all" and self.all_to_all_reason:
            raise ConfigError(f"{self.name} has no all-to-all mode ({self.all_to_all_reason}); "
                              "use --mode all-to-one")
        self.check_options()
        with torch.random.fork_rng():
            torch.manual_seed(self._seed_for(0))
            self.networks: dict[str, nn.Module] = dict(self.build_networks())
        for net in self.networks.values():
            net.eval()
        self.trained = False

    # ---- to override ---------------------------------------------------------------------
    def check_options(self) -> None:
        """Raise ConfigError for bad option values (before anything is built)."""

    def build_networks(self) -> dict[str, nn.Module]:
        return {}

    def trigger(self, images: torch.Tensor) -> torch.Tensor:
        """The trigger on a batch (differentiable, networks in their current mode)."""
        raise NotImplementedError

    def train_classifier(self, model: nn.Module, vrun, modality, *, device=None,
                         progress: bool = False) -> dict[str, int]:
        """Train ``model`` (in place) with the backdoor; return counts for the run's data.json."""
        raise NotImplementedError

    # ---- shared --------------------------------------------------------------------------
    def _seed_for(self, salt: int) -> int:
        return int(np.random.SeedSequence([self.seed, 7919, int(salt)]).generate_state(1)[0])

    @torch.no_grad()
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return images
        states = {name: net.training for name, net in self.networks.items()}
        device = self._network_device()
        out = []
        try:
            for net in self.networks.values():
                net.eval()
            for start in range(0, len(images), 512):
                chunk = images[start:start + 512].to(device)
                out.append(self.trigger(chunk).clamp(0, 1).to(images.device))
        finally:
            for name, net in self.networks.items():
                net.train(states[name])
        return torch.cat(out)

    def _network_device(self) -> torch.device:
        for net in self.networks.values():
            for p in net.parameters():
                return p.device
        return torch.device("cpu")

    def to(self, device) -> LearnedAttack:
        for net in self.networks.values():
            net.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, net in self.networks.items():
            for key, value in net.state_dict().items():
                state[f"{name}.{key}"] = value.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ConfigError(
                f"attack.safetensors does not fit the {self.name} attack built from this run's spec "
                f"(missing {missing[:4]}{'…' if len(missing) > 4 else ''}, unexpected "
                f"{unexpected[:4]}{'…' if len(unexpected) > 4 else ''}); was it written by another "
                "attack, or were the attack options changed after training?"
            )
        for name, net in self.networks.items():
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            for key, value in sub.items():
                if tuple(value.shape) != tuple(expected[prefix + key].shape):
                    raise ConfigError(f"attack.safetensors does not fit the {self.name} attack built from "
                                      f"this run's spec: {prefix + key} has shape {tuple(value.shape)}, "
                                      f"not {tuple(expected[prefix + key].shape)}")
            net.load_state_dict(sub, strict=True)
            net.cpu().eval()
        self.trained = True

    def target_tensor(self, labels: torch.Tensor) -> torch.Tensor:
        """The backdoor label of each sample (all-to-one: the target; all-to-all: y + 1 mod C)."""
        if self.mode == "all-to-one":
            return torch.full_like(labels, self.target)
        return (labels + 1) % self.num_classes

    def frozen_copy(self, name: str) -> nn.Module:
        """A detached, eval-mode copy of one network (LIRA's classifier uses last epoch's trigger)."""
        net = copy.deepcopy(self.networks[name]).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def done_training(self) -> None:
        for net in self.networks.values():
            net.cpu().eval()
        self.trained = True


def clean_raw_train_set(vrun, transform=None) -> Dataset:
    """The run's training images as raw [0, 1] tensors, with ``transform`` (default: the raw
    training augmentation) and their true labels."""
    transform = raw_augment(vrun.data) if transform is None else transform
    return Subset(vrun.data.train.with_transform(transform), vrun.train_idx.tolist())


def learning_subset(count: int, seed: int, cap: int = 10_000) -> np.ndarray:
    """Positions of the training images a trigger network learns from: all of a small set, a
    seeded ``cap`` of a large one (ISSBA's encoder and FBA's style network see a few thousand
    batches at most, and a large file dataset does not fit in memory)."""
    if count <= cap:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=cap, replace=False))


def need_images(count: int, what: str) -> None:
    if count <= 0:
        raise DataError(f"{what}: no training image is available; raise --train-limit")
