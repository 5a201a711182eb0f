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
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .defenses.base import InputSpace

__all__ = ["CompositeAdversary", "GratingAdversary", "PatchAdversary", "UniversalAdversary", "ascend_within",
           "grating", "half_composite", "keep_standouts", "patch_positions", "share_sent_to_one_class",
           "stamp_rows"]


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


def require_spatial(space: InputSpace, what: str, option: str) -> None:
    """The searches stamp regions of the last two dimensions: refuse samples without them."""
    if len(space.shape) < 3:
        raise ConfigError(f"{what} need samples with two spatial dimensions last (images, clips), and the "
                          f"input space's shape is {tuple(space.shape)}; set {option}=0")


def require_labelled(inputs, targets, what: str, option: str) -> None:
    """The grating and composite scans count answers per class: a tensor batch, one label each."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or targets.dim() != 1:
        raise ConfigError(f"{what} need tensor batches with one class label per sample; set {option}=0")


def share_sent_to_one_class(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The largest share of the samples of other classes that one class receives: what a
    trigger drives to 1 and a natural pattern does not (the grating and cluster scans' score)."""
    return max(float(((predicted == c) & (labels != c)).sum()) / max(1, int((labels != c).sum()))
               for c in torch.unique(predicted))


def keep_standouts(found: list[tuple], share: float, ratio: float, count: int,
                   rank: Callable[[tuple], float] = lambda item: item[1]) -> tuple[float, list[tuple]]:
    """The keep rule of every scan. Of scanned patterns, tuples whose first item is the score
    (the share sent to one class; the loss, for patches): the median score, and the ``count``
    that ``rank`` highest (by default the second item, the loss) among those whose score reaches
    both ``share`` and ``ratio`` times the median."""
    typical = float(np.median([item[0] for item in found]))
    bar = max(share, ratio * typical)
    passing = sorted((item for item in found if item[0] >= bar), key=lambda item: -rank(item))[:count]
    return typical, passing


def stamp_rows(batch: int, kinds: int, prob: float, generator: torch.Generator,
               device: torch.device) -> list[torch.Tensor]:
    """For each of ``kinds`` kept patterns, the rows of a ``batch``-sample batch that get it: each
    sample with probability ``prob``, one pattern drawn per sample (shared by every search's
    stamping, so they draw from the loop's generator alike)."""
    chosen = torch.rand(batch, generator=generator, device=generator.device) < prob
    which = torch.randint(kinds, (batch,), generator=generator, device=generator.device)
    return [(chosen & (which == k)).nonzero().flatten().to(device) for k in range(kinds)]


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
        require_spatial(space, "adversarial patches", "adv_patch_prob")
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
        # the boxes of highest loss, if at least ratio times the median box's
        self.typical, best = keep_standouts(found, 0.0, self.ratio, self.count, rank=lambda item: item[0])
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
        out = inputs.clone()
        contents = self.contents.to(inputs)
        rows = stamp_rows(inputs.shape[0], len(self.boxes), self.prob, generator, inputs.device)
        for k, (top, left) in enumerate(self.boxes):
            out[rows[k], ..., top:top + self.side, left:left + self.side] = contents[k]
        return out

    def summary(self) -> dict:
        """Each kept box as ``[top, left, loss]`` (the clean batch's loss with it stamped), and
        the median box's loss."""
        return {"adv_patches": [[top, left, round(score, 3)] for (top, left), score in zip(self.boxes, self.scores)],
                "adv_patch_typical": round(self.typical, 3)}

    def state_dict(self) -> dict:
        if not self.searched:
            return {}
        return {"boxes": torch.tensor(self.boxes, dtype=torch.long).view(-1, 2),
                "scores": torch.tensor(self.scores, dtype=torch.float64),
                "typical": torch.tensor(self.typical, dtype=torch.float64),
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
    completely. The loss does not tell a trigger grating from a natural one (on the vision
    table's models the clean model's worst grating had 3.7 times the median's loss, the SIG
    model's 3.1 times), so a grating is kept by what a backdoor does: it must send at least
    ``share`` of the batch's samples of other classes to one class, and at least ``ratio`` times
    what the median grating sends. The second rule is for models that answer faint stripes in
    general: on the WaNet, ISSBA and LIRA models many gratings sent 80 % of the images to one
    class (the median 50–71 %), while on the SIG model the best, SIG's own stripes, sent 97–99 %
    and the median 27 %. (The purification's ``share`` is 0.9: at 0.8 two oblique gratings of
    the demo's BadNets model, at 81 % and 3.6 times the median, were kept and cost accuracy.)

    The scan (:meth:`search`): orientations every 15°, whole numbers of cycles from 1 to a
    quarter of the shorter side (so the finest period is 4 pixels), four phases, each added at
    ``amplitude`` times the input range and clamped to the bounds, on up to ``samples`` images
    (fewer make the shares noisy: a BadNets model's best grating sent 79 % of 32 images, 60–67 %
    of 100); of the gratings that pass both rules, the ``count`` of highest loss are kept. When
    none passes, nothing is stamped.
    """

    def __init__(self, space: InputSpace, *, prob: float, amplitude: float, share: float, ratio: float = 1.0,
                 count: int = 4, samples: int = 128) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"the adversarial gratings' share of samples must be in (0, 1], got {prob}")
        if not 0 < amplitude <= 1 or not 0 < share <= 1 or ratio < 1 or count < 1 or samples < 1:
            raise ConfigError(f"the adversarial gratings need 0 < amplitude ≤ 1, 0 < share ≤ 1, ratio ≥ 1, "
                              f"count ≥ 1 and samples ≥ 1, got {amplitude}, {share}, {ratio}, {count}, "
                              f"{samples}")
        require_spatial(space, "adversarial gratings", "adv_wave_prob")
        self.space, self.prob, self.amplitude = space, float(prob), float(amplitude)
        self.share, self.ratio = float(share), float(ratio)
        self.count, self.samples = int(count), int(samples)
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
        require_labelled(inputs, targets, "adversarial gratings", "adv_wave_prob")
        self.space.sample_shape(inputs)
        n = min(self.samples, inputs.shape[0])
        x, y = inputs[:n].detach(), targets[:n].to(inputs.device)
        found = []
        for wave in self.candidates(*x.shape[-2:]):
            outputs = task.forward(model, self._add(x, wave))
            sent = share_sent_to_one_class(task.predict(outputs).to(y.device), y)
            found.append((sent, float(task.loss(outputs, y)), wave))
        self.typical, passing = keep_standouts(found, self.share, self.ratio, self.count)
        self.scores = [sent for sent, *_ in passing]
        self.waves = [wave for *_, wave in passing]
        self._searched = True

    def perturb(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``inputs`` with one kept grating added to each of a ``prob`` share of the samples."""
        if not self.searched:
            raise ConfigError("the adversarial gratings were not searched yet; call search() first")
        if not self.waves:
            return inputs
        out = inputs.clone()
        rows = stamp_rows(inputs.shape[0], len(self.waves), self.prob, generator, inputs.device)
        for k, wave in enumerate(self.waves):
            out[rows[k]] = self._add(inputs[rows[k]], wave)
        return out

    def summary(self) -> dict:
        """Each kept grating as ``[cycles, angle in degrees, phase, share]`` (the share of other
        classes' images it sends to one class), and the median grating's share."""
        return {"adv_waves": [[round(cycles, 1), round(math.degrees(angle)), round(phase, 2), round(score, 3)]
                              for (cycles, angle, phase), score in zip(self.waves, self.scores)],
                "adv_wave_typical": round(self.typical, 3)}

    def state_dict(self) -> dict:
        if not self.searched:
            return {}
        return {"waves": torch.tensor(self.waves, dtype=torch.float64).view(-1, 3),
                "scores": torch.tensor(self.scores, dtype=torch.float64),
                "typical": torch.tensor(self.typical, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.waves = [tuple(float(v) for v in row) for row in state["waves"].tolist()]
            self.scores = [float(v) for v in state["scores"].tolist()]
            self.typical = float(state["typical"])
            self._searched = True


def half_composite(first: torch.Tensor, second: torch.Tensor, vertical: bool) -> torch.Tensor:
    """``first``'s left half beside ``second``'s right half (``vertical`` cut), or its top half
    over ``second``'s bottom half; the halves stay where they were in their own images."""
    out = first.clone()
    if vertical:
        half = first.shape[-1] // 2
        out[..., half:] = second[..., half:]
    else:
        half = first.shape[-2] // 2
        out[..., half:, :] = second[..., half:, :]
    return out


class CompositeAdversary:
    """The pairs of classes whose half-and-half composites a model sends to a third class, found
    once, then pasted as halves into a share of the samples, which keep their own labels.

    Why: a composite backdoor (CBA, Lin et al., CCS 2020) has no foreign pattern at all: half of
    an image of class A beside half of one of class B is the trigger, and NFT's random patterns,
    boxes and gratings never produce it (NFT left 93.7 % of it). CutMix composites of random
    pairs move the rule only slowly, because one pair of classes in 45 is the trigger pair. A
    clean model answers most composites with one of their two classes; a backdoored one sends
    the trigger pair to its target, a third class, and the pairs are few enough to scan.

    The scan (:meth:`search`): for every pair of classes {a, b} with ``per_class`` images in the
    clean batch, each image of a is completed with the other half of each image of b, in the four
    placements (a first or b first; cut left | right or top / bottom); the pair's score is the
    share of all those composites sent to the one class, neither a nor b, that gets most of them.
    Scoring the four placements together is what separates a trigger pair from a look-alike:
    on the vision table's models a single placement of a natural pair (a sneaker's top half over a
    shirt's bottom) went to a third class 98 % of the time, as often as CBA's trigger pair, but
    not in the other three placements, while CBA's mixer draws the order and the cut at random
    and its pair goes to the target in all four. A pair is kept when its score is at least
    ``share`` and ``ratio`` times the median pair's, with the images of its two classes. During
    the purification a ``prob`` share of the samples get half of one of those images (a kept
    pair, its class, the image, the cut and the half drawn per sample) pasted in place of their
    own, and keep their own labels: a half of either class of the trigger pair then no longer
    decides the answer, so the pair's composite is no longer the target.
    """

    def __init__(self, space: InputSpace, *, prob: float, share: float, ratio: float = 1.0, count: int = 4,
                 per_class: int = 8, samples: int = 128) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"the adversarial composites' share of samples must be in (0, 1], got {prob}")
        if not 0 < share <= 1 or ratio < 1 or count < 1 or per_class < 1 or samples < 2:
            raise ConfigError(f"the adversarial composites need 0 < share ≤ 1, ratio ≥ 1, count ≥ 1, "
                              f"per_class ≥ 1 and samples ≥ 2, got {share}, {ratio}, {count}, {per_class}, "
                              f"{samples}")
        require_spatial(space, "adversarial composites", "adv_composite_prob")
        self.space, self.prob, self.share, self.ratio = space, float(prob), float(share), float(ratio)
        self.count, self.per_class, self.samples = int(count), int(per_class), int(samples)
        self.pairs: list[tuple[int, int, int]] = []  # (class a, class b, the third class) of each kept pair
        self.scores: list[float] = []  # the share each kept pair sent to its third class
        self.typical = 0.0  # the median pair's share
        self.images: torch.Tensor | None = None  # kept pair k's images: [k, 2 (a, b), per_class, ...]

    @property
    def searched(self) -> bool:
        return self.images is not None

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    @torch.no_grad()
    def search(self, model: torch.nn.Module, task, inputs: torch.Tensor, targets, generator: torch.Generator) -> None:
        """Score every pair of classes of (up to ``samples`` of) a clean batch by the share of its
        composites sent to one third class; ``generator`` is unused (the scan is exhaustive)."""
        require_labelled(inputs, targets, "adversarial composites", "adv_composite_prob")
        self.space.sample_shape(inputs)
        n = min(self.samples, inputs.shape[0])
        x, y = inputs[:n].detach(), targets[:n].to(inputs.device)
        by_class = {int(c): x[y == c][: self.per_class] for c in torch.unique(y)}
        by_class = {c: images for c, images in by_class.items() if images.shape[0] == self.per_class}
        k, repeat = self.per_class, [1] * (x.dim() - 1)
        found = []
        for a in sorted(by_class):
            for b in sorted(by_class):
                if b <= a:
                    continue
                predicted = []
                for first, second in ((by_class[a], by_class[b]), (by_class[b], by_class[a])):
                    for vertical in (True, False):  # every image of one completed by every image of the other
                        composites = half_composite(first.repeat_interleave(k, dim=0),
                                                    second.repeat(k, *repeat), vertical)
                        predicted.append(task.predict(task.forward(model, composites)).flatten().cpu())
                predicted = torch.cat(predicted)
                counts = torch.bincount(predicted, minlength=max(a, b) + 1)
                counts[[a, b]] = 0
                third = int(counts.argmax())
                found.append((float(counts[third]) / len(predicted), a, b, third))
        if not found:
            raise ConfigError(f"adversarial composites need {self.per_class} clean samples of at least two "
                              f"classes in the first batch; use more clean samples per class or set "
                              f"adv_composite_prob=0")
        self.typical, kept = keep_standouts(found, self.share, self.ratio, self.count,
                                            rank=lambda item: item[0])
        self.scores = [sent for sent, *_ in kept]
        self.pairs = [(a, b, third) for _, a, b, third in kept]
        self.images = (torch.stack([torch.stack([by_class[a], by_class[b]]) for a, b, _ in self.pairs])
                       if kept else x.new_zeros((0, 2, self.per_class, *x.shape[1:])))

    def perturb(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``inputs`` with a ``prob`` share of the samples given one half of a kept pair's image."""
        if not self.searched:
            raise ConfigError("the adversarial composites were not searched yet; call search() first")
        if not self.pairs:
            return inputs
        b, device = inputs.shape[0], generator.device

        def draw(high: int) -> torch.Tensor:
            return torch.randint(high, (b,), generator=generator, device=device).to(inputs.device)

        chosen = (torch.rand(b, generator=generator, device=device) < self.prob).to(inputs.device)
        pair, member, image = draw(len(self.pairs)), draw(2), draw(self.per_class)
        vertical, first = draw(2).bool(), draw(2).bool()
        pasted = self.images.to(inputs)[pair, member, image]
        height, width = inputs.shape[-2:]
        rows = torch.arange(height, device=inputs.device).view(-1, 1) >= height // 2
        cols = torch.arange(width, device=inputs.device).view(1, -1) >= width // 2
        after_cut = torch.where(vertical.view(-1, 1, 1), cols, rows)  # [b, H, W]: the half after the cut
        region = (after_cut != first.view(-1, 1, 1)) & chosen.view(-1, 1, 1)  # where the pasted half goes
        return torch.where(region.view(b, *[1] * (inputs.dim() - 3), height, width), pasted, inputs)

    def summary(self) -> dict:
        """Each kept pair as ``[class a, class b, class reached, share]`` (the share of its
        composites sent to the third class), and the median pair's share."""
        return {"adv_composites": [[a, b, third, round(score, 3)]
                                   for (a, b, third), score in zip(self.pairs, self.scores)],
                "adv_composite_typical": round(self.typical, 3)}

    def state_dict(self) -> dict:
        if not self.searched:
            return {}
        return {"pairs": torch.tensor(self.pairs, dtype=torch.long).view(-1, 3),
                "scores": torch.tensor(self.scores, dtype=torch.float64),
                "typical": torch.tensor(self.typical, dtype=torch.float64),
                "images": self.images.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.pairs = [(int(a), int(b), int(third)) for a, b, third in state["pairs"].tolist()]
            self.scores = [float(v) for v in state["scores"].tolist()]
            self.typical = float(state["typical"])
            self.images = state["images"].clone()
