"""Backdoor attacks of this task: a trigger (``apply``) and how a poisoned target looks.

Replace ``SpikeAttack`` with the attacks of the task's literature; cite the paper or official
code for every fact taken from it (trigger shape, default rate) in a comment. The core's
``PoisonedDataset`` / ``TriggeredDataset`` / ``choose_poison_indices`` / ``attack_target`` do
the bookkeeping for classification-like targets; tasks with structured targets (boxes, label
maps, token sequences) write their own two small datasets (see nft-segmentation).
"""

from __future__ import annotations

import torch

__all__ = ["ATTACKS", "SpikeAttack"]


class SpikeAttack:
    """Overwrite the last ``width`` samples of the signal with a +1/−1 spike train."""

    name = "spike"

    def __init__(self, width: int = 6) -> None:
        self.width = int(width)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        pattern = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(self.width)], dtype=out.dtype)
        out[..., -self.width:] = 2.0 * pattern
        return out


ATTACKS = {"spike": SpikeAttack}
