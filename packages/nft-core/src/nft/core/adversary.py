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

import numpy as np
import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .defenses.base import InputSpace

__all__ = ["GratingAdversary", "PatchAdversary", "UniversalAdversary", "ascend_within", "grating",
           "patch_positions"]


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

    def summary(self) -> dict:
        """What the purification's history records of this adversary after each round."""
        return {"adv_rms": self.rms()}

    def state_dict(self) -> dict:
        return {"delta": self.delta.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.delta.copy_(state["delta"])


def patch_positions(length: int, side: int, stride: int) -> list[int]:
    """Offsets of a box of ``side`` along an axis of ``length``, every ``stride``, the far edge
    always included (patch triggers usually sit in a corner)."""
    return sorted(set(range(0, length - side + 1, stride)) | {length - side})


class PatchAdversary:
    """The few small patches that most change the model's answers, found once, then stamped on
    a share of the samples with their own labels.

    Why: a patch trigger (BadNets, TrojanNN, a video corner patch) drives a few channels that
    clean data, mixed or noised, almost never wakes (measured: random noise boxes sent 3 % of the
    demo's clean images to the BadNets target, against 1 % unperturbed), so NFT's masks get
    little gradient to turn them down. An additive universal pattern finds it, but spread over
    the whole input it also finds the model's natural universal perturbations, and the masks pay
    for ignoring those in clean accuracy. A patch is a far smaller search space: a backdoored
    model has one place where a few pixels send every input to its target, and a clean model has
    none, so the search finds the trigger (on the demo's BadNets model every one of the four
    best 3 × 3 boxes was in a bottom corner and sent all the non-target images to the target;
    the median box, 5 %).

    The search (:meth:`search`, on one batch of clean samples, before the first step): a box of
    ``side`` pixels at every position of a grid (stride ``side − 1``, edges included), its
    content started at random within the input bounds and moved ``iters`` signed-gradient steps
    up the task's loss; of the ``count`` boxes with the highest loss, those whose loss is at
    least ``ratio`` times the median box's are kept, with their contents. A model without a
    patch trigger has no such box (the median is what any small occlusion does), and then
    nothing is stamped: stamping natural patches bought nothing and, with the clipping that
    stamping needs, left more of the WaNet and ISSBA backdoors. During the purification each
    sample is stamped, with probability ``prob``, with one of the kept patches (drawn per
    sample); the contents stay fixed, so the masks learn to answer the trigger's place and look
    as the clean model answers the sample without it.
    """

    def __init__(self, space: InputSpace, *, prob: float, size: float, count: int, ratio: float = 4.0,
                 iters: int = 2, samples: int = 32) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"the adversarial patches' share must be in (0, 1], got {prob}")
        if not 0 < size < 1 or count < 1 or ratio < 1 or iters < 0 or samples < 1:
            raise ConfigError(f"the adversarial patches need 0 < size < 1, count ≥ 1, ratio ≥ 1, iters ≥ 0 "
                              f"and samples ≥ 1, got {size}, {count}, {ratio}, {iters}, {samples}")
        if len(space.shape) < 3:
            raise ConfigError(f"adversarial patches need samples with two spatial dimensions last "
                              f"(images, clips), and the input space's shape is {tuple(space.shape)}; "
                              "set adv_patch_prob=0")
        self.space, self.prob, self.count, self.ratio = space, float(prob), int(count), float(ratio)
        self.iters, self.samples = int(iters), int(samples)
        height, width = space.shape[-2:]
        self.side = max(2, round(size * min(height, width)))
        self.boxes: list[tuple[int, int]] = []
        self.scores: list[float] = []
        self.typical = 0.0  # the median box's loss: what a patch without a trigger does
        self.contents: torch.Tensor | None = None

    @property
    def searched(self) -> bool:
        return self.contents is not None

    def _bounds(self, like: torch.Tensor, top: int, left: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(self.space.shape)
        box = (..., slice(top, top + self.side), slice(left, left + self.side))
        lower = torch.broadcast_to(torch.as_tensor(self.space.lower, dtype=like.dtype, device=like.device), shape)
        upper = torch.broadcast_to(torch.as_tensor(self.space.upper, dtype=like.dtype, device=like.device), shape)
        return lower[box], upper[box]

    def _stamp(self, inputs: torch.Tensor, top: int, left: int, content: torch.Tensor) -> torch.Tensor:
        out = inputs.clone()
        out[..., top:top + self.side, left:left + self.side] = content
        return out

    def search(self, model: torch.nn.Module, task, inputs: torch.Tensor, targets, generator: torch.Generator) -> None:
        """Find the ``count`` boxes of highest loss on (up to ``samples`` of) a clean batch; the
        model's parameters get no gradient."""
        if not isinstance(inputs, torch.Tensor):
            raise ConfigError(f"adversarial patches need tensor batches, got {type(inputs).__name__}; "
                              "set adv_patch_prob=0")
        self.space.sample_shape(inputs)
        n = min(self.samples, inputs.shape[0])
        x, y = inputs[:n].detach(), targets[:n] if isinstance(targets, torch.Tensor) else targets
        height, width = x.shape[-2:]
        stride = max(1, self.side - 1)
        found = []
        for top in patch_positions(height, self.side, stride):
            for left in patch_positions(width, self.side, stride):
                lower, upper = self._bounds(x, top, left)
                noise = torch.rand(lower.shape, generator=generator).to(x)
                content = lower + (upper - lower) * noise
                for _ in range(self.iters):
                    content.requires_grad_(True)
                    loss = task.loss(task.forward(model, self._stamp(x, top, left, content)), y)
                    (grad,) = torch.autograd.grad(loss, content)
                    with torch.no_grad():
                        content = torch.maximum(torch.minimum(
                            content + 0.25 * (upper - lower) * grad.sign(), upper), lower)
                with torch.no_grad():
                    score = float(task.loss(task.forward(model, self._stamp(x, top, left, content)), y))
                found.append((score, top, left, content.detach()))
        found.sort(key=lambda item: -item[0])
        self.typical = float(np.median([score for score, *_ in found]))
        best = [item for item in found[: self.count] if item[0] >= self.ratio * self.typical]
        self.scores = [score for score, *_ in best]
        self.boxes = [(top, left) for _, top, left, _ in best]
        self.contents = (torch.stack([content for *_, content in best]) if best
                         else x.new_zeros((0, *x.shape[1:-2], self.side, self.side)))

    @property
    def active(self) -> bool:
        """Whether the search kept anything to stamp."""
        return bool(self.boxes)

    def perturb(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``inputs`` with a ``prob`` share of the samples stamped with one found patch each."""
        if not self.searched:
            raise ConfigError("the adversarial patches were not searched yet; call search() first")
        if not isinstance(inputs, torch.Tensor):
            raise ConfigError(f"adversarial patches need tensor batches, got {type(inputs).__name__}; "
                              "set adv_patch_prob=0")
        if not self.boxes:
            return inputs  # no box stood out: no patch trigger to train against
        b = inputs.shape[0]
        chosen = torch.rand(b, generator=generator, device=generator.device) < self.prob
        which = torch.randint(len(self.boxes), (b,), generator=generator, device=generator.device)
        out = inputs.clone()
        contents = self.contents.to(inputs)
        for k, (top, left) in enumerate(self.boxes):
            rows = (chosen & (which == k)).nonzero().flatten().to(inputs.device)
            out[rows, ..., top:top + self.side, left:left + self.side] = contents[k]
        return out

    def summary(self) -> dict:
        return {"adv_patches": [[top, left, round(score, 3)] for (top, left), score in zip(self.boxes, self.scores)],
                "adv_patch_typical": round(self.typical, 3)}

    def state_dict(self) -> dict:
        if not self.searched:
            return {}
        return {"boxes": torch.tensor(self.boxes, dtype=torch.long).view(-1, 2),
                "scores": torch.tensor(self.scores), "typical": torch.tensor(self.typical),
                "contents": self.contents.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.boxes = [(int(top), int(left)) for top, left in state["boxes"].tolist()]
            self.scores = [float(v) for v in state["scores"].tolist()]
            self.typical = float(state["typical"])
            self.contents = state["contents"].clone()


def grating(height: int, width: int, cycles: float, angle: float, phase: float) -> torch.Tensor:
    """``sin(2π · cycles · (c·cos θ + r·sin θ) / min(height, width) + phase)`` at every row r and
    column c: a plane wave of unit amplitude with ``cycles`` periods across the shorter side."""
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    along = cols * math.cos(angle) + rows * math.sin(angle)
    return torch.sin(2 * math.pi * cycles * along / min(height, width) + phase)


class GratingAdversary:
    """The few full-image gratings that send a clean batch to one class, found once, then added
    to a share of the samples with their own labels: :class:`PatchAdversary`'s counterpart for
    smooth, global triggers.

    Why: a trigger spread over the whole image at one low spatial frequency (SIG's sinusoid) is
    what neither random noise boxes nor per-pixel noise blends resemble, and NFT left 27 % of a
    SIG backdoor. Gratings are a small family (orientation, frequency, phase) that a scan covers
    completely. Measured on the vision table's models with gratings of amplitude 0.1 on 32 clean
    images: on the SIG model the most harmful gratings were vertical stripes at SIG's own
    frequency and sent 91–97 % of the images to the target; on the clean and Blend models no
    grating sent more than 56 % to any one class. The loss alone does not tell them apart (the
    clean model's worst grating had 3.7 times the median's loss, the SIG model's 3.1 times), so
    a grating is kept by what a backdoor does: it must send at least ``share`` of the batch's
    samples of other classes to one class.

    The scan (:meth:`search`): orientations every 15°, whole numbers of cycles from 1 to a
    quarter of the shorter side (so the finest period is 4 pixels), four phases, each added at
    ``amplitude`` times the input range and clamped to the bounds; of the gratings that pass the
    share rule, the ``count`` of highest loss are kept. When none passes, nothing is stamped.
    """

    def __init__(self, space: InputSpace, *, prob: float, amplitude: float, share: float, count: int = 4,
                 samples: int = 32) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"the adversarial gratings' share of samples must be in (0, 1], got {prob}")
        if not 0 < amplitude <= 1 or not 0 < share <= 1 or count < 1 or samples < 1:
            raise ConfigError(f"the adversarial gratings need 0 < amplitude ≤ 1, 0 < share ≤ 1, count ≥ 1 "
                              f"and samples ≥ 1, got {amplitude}, {share}, {count}, {samples}")
        if len(space.shape) < 3:
            raise ConfigError(f"adversarial gratings need samples with two spatial dimensions last "
                              f"(images, clips), and the input space's shape is {tuple(space.shape)}; "
                              "set adv_wave_prob=0")
        self.space, self.prob, self.amplitude = space, float(prob), float(amplitude)
        self.share, self.count, self.samples = float(share), int(count), int(samples)
        self.waves: list[tuple[float, float, float]] = []  # (cycles, angle, phase) of each kept grating
        self.scores: list[float] = []  # the share each kept grating sent to one class
        self.typical = 0.0  # the median grating's share
        self._searched = False

    @property
    def searched(self) -> bool:
        return self._searched

    @property
    def active(self) -> bool:
        return bool(self.waves)

    def _add(self, inputs: torch.Tensor, wave: tuple[float, float, float]) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        lower = torch.as_tensor(self.space.lower, dtype=inputs.dtype, device=inputs.device)
        upper = torch.as_tensor(self.space.upper, dtype=inputs.dtype, device=inputs.device)
        pattern = grating(height, width, *wave).to(inputs)
        return torch.maximum(torch.minimum(inputs + self.amplitude * (upper - lower) * pattern, upper), lower)

    def candidates(self, height: int, width: int) -> list[tuple[float, float, float]]:
        most = max(1, min(height, width) // 4)
        return [(float(cycles), math.radians(degrees), phase)
                for degrees in range(0, 180, 15) for cycles in range(1, most + 1)
                for phase in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)]

    @torch.no_grad()
    def search(self, model: torch.nn.Module, task, inputs: torch.Tensor, targets, generator: torch.Generator) -> None:
        """Score every grating on (up to ``samples`` of) a clean batch by the largest share of
        other-class samples it sends to one class; ``generator`` is unused (the scan is a grid)."""
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or targets.dim() != 1:
            raise ConfigError("adversarial gratings need tensor batches with one class label per sample; "
                              "set adv_wave_prob=0")
        self.space.sample_shape(inputs)
        n = min(self.samples, inputs.shape[0])
        x, y = inputs[:n].detach(), targets[:n].to(inputs.device)
        found = []
        for wave in self.candidates(*x.shape[-2:]):
            outputs = task.forward(model, self._add(x, wave))
            predicted = task.predict(outputs).to(y.device)
            classes = torch.unique(predicted)
            sent = max(float(((predicted == c) & (y != c)).sum()) / max(1, int((y != c).sum())) for c in classes)
            found.append((sent, float(task.loss(outputs, y)), wave))
        self.typical = float(np.median([sent for sent, *_ in found]))
        passing = sorted((item for item in found if item[0] >= self.share), key=lambda item: -item[1])[: self.count]
        self.scores = [sent for sent, *_ in passing]
        self.waves = [wave for *_, wave in passing]
        self._searched = True

    def perturb(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``inputs`` with one kept grating added to each of a ``prob`` share of the samples."""
        if not self.searched:
            raise ConfigError("the adversarial gratings were not searched yet; call search() first")
        if not self.waves:
            return inputs
        b = inputs.shape[0]
        chosen = torch.rand(b, generator=generator, device=generator.device) < self.prob
        which = torch.randint(len(self.waves), (b,), generator=generator, device=generator.device)
        out = inputs.clone()
        for k, wave in enumerate(self.waves):
            rows = (chosen & (which == k)).nonzero().flatten().to(inputs.device)
            out[rows] = self._add(inputs[rows], wave)
        return out

    def summary(self) -> dict:
        return {"adv_waves": [[round(cycles, 1), round(math.degrees(angle)), round(phase, 2), round(score, 3)]
                              for (cycles, angle, phase), score in zip(self.waves, self.scores)],
                "adv_wave_typical": round(self.typical, 3)}

    def state_dict(self) -> dict:
        if not self.searched:
            return {}
        return {"waves": torch.tensor(self.waves, dtype=torch.float64).view(-1, 3),
                "scores": torch.tensor(self.scores, dtype=torch.float64), "typical": torch.tensor(self.typical)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.waves = [tuple(float(v) for v in row) for row in state["waves"].tolist()]
            self.scores = [float(v) for v in state["scores"].tolist()]
            self.typical = float(state["typical"])
            self._searched = True
