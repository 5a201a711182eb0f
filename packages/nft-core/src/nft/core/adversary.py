"""A universal adversarial pattern that NFT's masks learn to ignore.

Random patterns (:class:`~nft.core.augment.RandomPatterns`) are a blind stand-in for a trigger:
they excite a patch or blend detector only by chance. A backdoor trigger is a *universal*
perturbation (one change that sends every input to the target), and the easiest universal
change of a backdoored model's output is usually its trigger, the premise of I-BAU (Zeng et al.,
ICLR 2022) and SAU (Wei et al., NeurIPS 2023). This module keeps one perturbation δ for the whole
purification and moves it, at every step, up the gradient of the very loss the masks go down:
the "free" universal adversarial training of Shafahi et al. (AAAI 2020), which reuses the
masks' backward pass for δ's gradient instead of solving an inner problem. The masks are then
trained to answer a δ-carrying sample as the clean model answers the sample without it.

δ lives in raw input units (pixels in [0, 1]) and is bounded in L2 norm by ``eps · √d`` for a
d-element sample: ``eps`` is the root-mean-square change per element, so a small patch at full
contrast and a faint full-image blend fit in one budget (a 3 × 3 patch on a 28 × 28 grey image
is an RMS change of about 0.1; a blend at α = 0.2, about 0.08).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .defenses.base import InputSpace

__all__ = ["UniversalAdversary", "ascend_within"]


@torch.no_grad()
def ascend_within(delta: torch.Tensor, grad: torch.Tensor | None, step_size: float, radius: float) -> None:
    """Move ``delta`` in place by ``step_size`` along ``grad``'s direction, then back into the L2
    ball of ``radius``; no step for a missing, zero or non-finite gradient. Shared by every
    adversarial input NFT trains against (this pattern, the text modality's token)."""
    if grad is None:
        return
    norm = grad.norm()
    if torch.isfinite(norm) and norm > 0:
        delta.add_(grad, alpha=step_size / float(norm))
        size = delta.norm()
        if size > radius:
            delta.mul_(radius / float(size))


class UniversalAdversary:
    """One additive perturbation shared by every sample, updated by normalised gradient ascent.

    Call :meth:`perturb` on a batch before the forward pass (δ is added to a random ``prob``
    share of its samples and the result clamped to the input bounds), then :meth:`ascend` after
    the backward pass: δ takes a step of ``step · radius`` along its gradient's direction and is
    projected back onto the L2 ball of the given radius.
    """

    def __init__(self, space: InputSpace, *, prob: float, eps: float, step: float,
                 device: torch.device) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"the adversarial pattern's share must be in (0, 1], got {prob}")
        if eps <= 0 or step <= 0:
            raise ConfigError(f"the adversarial pattern needs eps > 0 and step > 0, got {eps} and {step}")
        self.space = space
        self.prob = prob
        self.radius = eps * math.sqrt(math.prod(space.shape))
        self.step_size = step * self.radius
        self.delta = torch.zeros(tuple(space.shape), device=device, requires_grad=True)

    def _bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def as_tensor(value):
            return torch.as_tensor(value, dtype=like.dtype, device=like.device)
        return as_tensor(self.space.scale), as_tensor(self.space.lower), as_tensor(self.space.upper)

    def perturb(self, inputs: torch.Tensor | list[torch.Tensor],
                generator: torch.Generator) -> torch.Tensor | list[torch.Tensor]:
        """``inputs`` with δ added to a random share of the samples (the others unchanged).

        A batch is a tensor, or a list of same-shape sample tensors (detection batches), which
        comes back as a list."""
        if isinstance(inputs, (list, tuple)):
            if not inputs or not all(isinstance(x, torch.Tensor) and x.shape == inputs[0].shape
                                     for x in inputs):
                raise ConfigError(
                    "the adversarial pattern needs a batch tensor or a list of same-shape sample "
                    "tensors; this batch has neither (samples of different sizes?); set adv_prob=0")
            return list(self.perturb(torch.stack(list(inputs)), generator).unbind(0))
        if not isinstance(inputs, torch.Tensor):
            raise ConfigError(f"the adversarial pattern needs tensor batches, got {type(inputs).__name__}; "
                              "set adv_prob=0")
        self.space.sample_shape(inputs)
        chosen = torch.rand(inputs.shape[0], generator=generator, device=generator.device) < self.prob
        if not bool(chosen.any()):
            return inputs  # δ is not in this step's graph, so it gets no gradient and stays
        scale, lower, upper = self._bounds(inputs)
        carrying = (inputs + self.delta.to(inputs.dtype) * scale).clamp(lower, upper)
        where = chosen.to(inputs.device).view(-1, *([1] * (inputs.dim() - 1)))
        return torch.where(where, carrying, inputs)

    def ascend(self) -> None:
        """One step up the loss, then back onto the L2 ball; a no-op when no sample carried δ."""
        ascend_within(self.delta, self.delta.grad, self.step_size, self.radius)
        self.delta.grad = None

    def rms(self) -> float:
        """δ's root-mean-square value per element, in raw input units."""
        return float(self.delta.detach().pow(2).mean().sqrt())
