"""Detection MixUp: blend two images, keep both box sets, weight each object by its image's share.

Zhang et al., "Bag of Freebies for Training Object Detection Neural Networks" (arXiv 1902.04103,
§3.1): the two images are blended with ratio λ *geometry-preserved* (both placed at the top-left
of a canvas as large as the bigger one, so no box moves), the union of their boxes is the target,
and each object's loss is weighted by the blending ratio of the image it came from. λ is drawn
from Beta(α, α) once per batch and the partner of image ``i`` is image ``π(i)`` of a random
permutation, as the core's MixUp (the NFT reference code uses α = 1).

The result is one target set per image with ``weights`` (λ for the image's own boxes, 1 − λ for
the partner's) and ``mix_source`` (0 / 1); :mod:`nft.detection.task` turns those into the loss.
An image paired with itself is left as it is, with its boxes at weight 1.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, Mixed

__all__ = ["DetectionMixUp", "mix_pair"]


def _pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.pad(image, (0, width - image.shape[-1], 0, height - image.shape[-2]))


def mix_pair(a: torch.Tensor, ta: dict, b: torch.Tensor, tb: dict, lam: float) -> tuple[torch.Tensor, dict]:
    """``λ·a + (1−λ)·b`` on a canvas fitting both, with both box sets and their weights."""
    height, width = max(a.shape[-2], b.shape[-2]), max(a.shape[-1], b.shape[-1])
    image = lam * _pad_to(a, height, width) + (1.0 - lam) * _pad_to(b, height, width)
    boxes = torch.cat([ta["boxes"], tb["boxes"].to(ta["boxes"])])
    labels = torch.cat([ta["labels"], tb["labels"].to(ta["labels"])])
    na, nb = len(ta["boxes"]), len(tb["boxes"])
    weights = torch.cat([torch.full((na,), lam), torch.full((nb,), 1.0 - lam)]).to(boxes.device)
    source = torch.cat([torch.zeros(na, dtype=torch.long), torch.ones(nb, dtype=torch.long)]).to(boxes.device)
    target = {k: v for k, v in ta.items() if k not in ("boxes", "labels", "weights", "mix_source")}
    target.update(boxes=boxes, labels=labels, weights=weights, mix_source=source)
    return image, target


class DetectionMixUp:
    """The core's augmentation protocol for detection batches (lists of images and target dicts)."""

    name = "detection-mixup"

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0:
            raise ConfigError(f"detection MixUp alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        images = list(inputs.unbind(0)) if isinstance(inputs, torch.Tensor) else list(inputs)
        targets = list(targets)
        if len(images) != len(targets) or not images:
            raise ConfigError(f"detection MixUp needs one target per image, got {len(images)} images "
                              f"and {len(targets)} targets")
        lam = float(rng.beta(self.alpha, self.alpha))
        order = torch.randperm(len(images), generator=generator).tolist()
        out_images, out_targets = [], []
        for i, j in enumerate(order):
            if i == j:
                t = dict(targets[i])
                n = len(t["boxes"])
                t["weights"] = torch.ones(n, device=t["boxes"].device)
                t["mix_source"] = torch.zeros(n, dtype=torch.long, device=t["boxes"].device)
                out_images.append(images[i])
                out_targets.append(t)
                continue
            image, target = mix_pair(images[i], targets[i], images[j], targets[j], lam)
            out_images.append(image)
            out_targets.append(target)
        if isinstance(inputs, torch.Tensor):
            out_images = torch.stack(out_images)
        return Mixed(out_images, ((out_targets, 1.0),))

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def __repr__(self) -> str:
        return f"DetectionMixUp(alpha={self.alpha})"
