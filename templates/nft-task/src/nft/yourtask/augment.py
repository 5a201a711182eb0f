"""The mixing augmentation NFT trains its masks with.

An augmentation takes ``(inputs, targets, rng=..., generator=...)`` and returns
``nft.core.Mixed(mixed inputs, ((target, weight), ...))`` with weights summing to 1; the loss
is ``Σ weight · task.loss(outputs, target)``. The core's ``MixUp`` fits any floating tensor batch
with tensor or list targets; write your own when inputs are not a tensor (token ids, point sets
of different sizes) or targets must be mixed in a task-specific way (label maps, boxes). Each
one must pass ``nft.core.testing.AugmentationContract``.
"""

from __future__ import annotations

from nft.core import MixUp

__all__ = ["AUGMENTATIONS"]

AUGMENTATIONS = {"mixup": MixUp}
