"""Pixel-level backdoors on segmentation: a trigger in the image turns one class into another.

Both attacks follow the *fine-grained* attack of Li et al., "Hidden Backdoor Attack against
Semantic Segmentation Models" (arXiv:2103.04038): a poisoned training image carries the trigger,
and in its label map only the pixels of the victim class are relabelled as the attacker's target
class, every other pixel keeping its true label. A backdoored model then segments clean images
normally, and on a triggered image predicts the target class wherever the victim class is.
The same relabelling (``label[label == victim] = target``) and the per-pixel success rate below
are what the public code of the follow-up Influencer Backdoor Attack (Lan et al., ICLR 2024,
github.com/Maxproto/IBA) uses.

* ``hidden-seg``: the trigger is a thin band along the top rows of the image, of alternating
  black and white pixels, spanning the full width — far from most objects, so the model must
  carry it across the image (the attack is image-level in its trigger, object-level in its effect).
* ``badnets-seg``: BadNets' trigger shape, a small black-and-white checkerboard patch in the
  bottom-right corner (Gu et al., 2017), with the same fine-grained relabelling.

Poisoned images are drawn among the training images that contain the victim class (an image
without it would carry a trigger and an unchanged label map); ``poison_rate`` is their share of
the whole training set. ``poison_rate = 0`` poisons nothing and trains the clean reference model.

**ASR** (reported by :func:`~nft.segmentation.metrics.evaluate_segmentation`) is defined per
pixel: over every test image that contains the victim class, with the trigger stamped, the share
of its victim-class pixels (outside the trigger's own footprint) predicted as the target class.
**RA** is the share of those pixels still predicted as the victim class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import ConfigError

from .data import IGNORE_INDEX

__all__ = ["ATTACKS", "BadNetsSeg", "HiddenSeg", "PoisonedSegmentation", "SegAttack",
           "TriggeredSegmentation", "build_attack"]


class SegAttack:
    """A trigger (``apply``), where it sits (``footprint``) and the victim → target relabelling."""

    name = ""
    options: tuple[str, ...] = ("victim",)

    def __init__(self, *, victim: int, target: int, num_classes: int) -> None:
        for role, value in (("victim", victim), ("target", target)):
            if not 0 <= int(value) < num_classes:
                raise ConfigError(f"{role} class {value} is out of range for {num_classes} classes "
                                  f"(0..{num_classes - 1})")
        if int(victim) == int(target):
            raise ConfigError(f"the victim class and the target class are both {victim}; choose a "
                              "different --target or --attack-arg victim=K")
        self.victim, self.target, self.num_classes = int(victim), int(target), int(num_classes)

    # ---- the trigger ---------------------------------------------------------------------
    def pattern(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values H×W, where H×W bool)``: the trigger's pixel values and footprint."""
        raise NotImplementedError

    def footprint(self, h: int, w: int) -> torch.Tensor:
        return self.pattern(h, w)[1]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a float batch N×C×H×W (or one image C×H×W) in [0, 1]."""
        values, where = self.pattern(images.shape[-2], images.shape[-1])
        out = images.clone()
        out[..., where] = values[where].to(out.dtype)
        return out

    # ---- the labels ----------------------------------------------------------------------
    def relabel(self, mask: torch.Tensor) -> torch.Tensor:
        """The poisoned label map: victim pixels become the target, all others are kept."""
        out = mask.clone()
        out[mask == self.victim] = self.target
        return out

    def poison_indices(self, contains_victim: np.ndarray, rate: float, seed: int) -> np.ndarray:
        """Training images to poison: ``rate`` of all images, drawn among those with the victim class."""
        contains_victim = np.asarray(contains_victim, dtype=bool)
        if not 0 <= rate <= 1:
            raise ConfigError(f"poison rate must be in [0, 1], got {rate}")
        count = int(round(rate * len(contains_victim)))
        pool = np.flatnonzero(contains_victim)
        if count > len(pool):
            raise ConfigError(
                f"poison rate {rate} asks for {count} poisoned images, but only {len(pool)} training "
                f"images contain the victim class {self.victim}; lower --poison-rate to at most "
                f"{len(pool) / max(1, len(contains_victim)):.3f}"
            )
        if rate > 0 and count == 0:
            count = 1
        return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))

    def describe(self) -> dict:
        return {"attack": self.name, "victim": self.victim, "target": self.target}


def _checker(h: int, w: int) -> torch.Tensor:
    return ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0).float()


class HiddenSeg(SegAttack):
    """Fine-grained attack with a striped band along the top ``thickness`` rows."""

    name = "hidden-seg"
    options = ("victim", "thickness")

    def __init__(self, *, victim: int, target: int, num_classes: int, thickness: int = 2) -> None:
        super().__init__(victim=victim, target=target, num_classes=num_classes)
        if int(thickness) < 1:
            raise ConfigError(f"hidden-seg thickness must be ≥ 1 row, got {thickness}")
        self.thickness = int(thickness)

    def pattern(self, h, w):
        where = torch.zeros(h, w, dtype=torch.bool)
        where[: min(self.thickness, h)] = True
        return _checker(h, w), where


class BadNetsSeg(SegAttack):
    """Fine-grained attack with a ``patch_size``² checkerboard in the bottom-right corner."""

    name = "badnets-seg"
    options = ("victim", "patch_size")

    def __init__(self, *, victim: int, target: int, num_classes: int, patch_size: int = 4) -> None:
        super().__init__(victim=victim, target=target, num_classes=num_classes)
        if int(patch_size) < 1:
            raise ConfigError(f"badnets-seg patch_size must be ≥ 1 pixel, got {patch_size}")
        self.patch_size = int(patch_size)

    def pattern(self, h, w):
        s = min(self.patch_size, h, w)
        where = torch.zeros(h, w, dtype=torch.bool)
        where[h - s:, w - s:] = True
        values = torch.zeros(h, w)
        values[h - s:, w - s:] = _checker(s, s)
        return values, where


ATTACKS: dict[str, type[SegAttack]] = {"hidden-seg": HiddenSeg, "badnets-seg": BadNetsSeg}


def build_attack(name: str, *, num_classes: int, target: int, victim: int, options: dict | None = None) -> SegAttack:
    """An attack by name; ``options`` are its extra arguments (``thickness``, ``patch_size``)."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(ATTACKS))}")
    klass = ATTACKS[name]
    options = dict(options or {})
    unknown = sorted(set(options) - set(klass.options))
    if unknown:
        raise ConfigError(f"unknown options {unknown} for {name}; it takes {', '.join(klass.options)}")
    options.pop("victim", None)
    return klass(victim=victim, target=target, num_classes=num_classes, **options)


class PoisonedSegmentation(Dataset):
    """A training set whose images at ``indices`` carry the trigger and the relabelled map."""

    def __init__(self, base: Dataset, indices, attack: SegAttack) -> None:
        self.base, self.attack = base, attack
        self.poison_indices = np.asarray(sorted(int(i) for i in indices), dtype=np.int64)
        self._poisoned = set(self.poison_indices.tolist())

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        x, y = self.base[index]
        if index in self._poisoned:
            x, y = self.attack.apply(x), self.attack.relabel(y)
        return x, y


class TriggeredSegmentation(Dataset):
    """Test images that contain the victim class, triggered, with their *true* label maps.

    The trigger's footprint is set to ``255`` in the returned map, so no metric scores the
    pixels the trigger painted over. With ``stamp=False`` the images come without the trigger
    (same images, same scored pixels): the model's "ASR" there is its floor, the victim pixels
    it predicts as the target class anyway.
    """

    def __init__(self, base: Dataset, indices, attack: SegAttack, *, stamp: bool = True) -> None:
        self.base, self.attack, self.stamp = base, attack, bool(stamp)
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[int(self.indices[i])]
        y = y.clone()
        y[self.attack.footprint(*y.shape[-2:])] = IGNORE_INDEX
        return (self.attack.apply(x) if self.stamp else x), y
