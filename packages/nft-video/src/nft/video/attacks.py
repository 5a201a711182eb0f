"""Video backdoor attacks: ``badnets``, ``blend`` and ``clean-label``.

Every trigger is a :class:`ClipTrigger`: ``x' = (1 − m)·x + m·p`` on a clip ``(3, T, H, W)`` in
[0, 1], with a pattern ``p`` and a mask ``m`` of the clip's shape (or broadcastable to it). It is
applied to the model's input clip, as the clean-label reference code stamps the sampled clip.
Triggers are saved with the run (``trigger.safetensors``) so the triggered test set can be
rebuilt exactly, learned or not.

* ``badnets`` (Gu et al., 2017): a black-and-white checkerboard patch in the bottom-right corner,
  on every frame or on a frame range; dirty-label.
* ``blend`` (Chen et al., 2017, "blended injection"): a random-noise pattern blended over the
  whole clip with ratio ``alpha`` = 0.2 (Chen et al.'s value); the noise is different on every
  frame, so the trigger lives in time as well as space; dirty-label.
* ``clean-label`` (Zhao et al., "Clean-Label Backdoor Attacks on Video Recognition Models",
  CVPR 2020): a universal adversarial patch learned against a clean model, and adversarially
  perturbed target-class training videos that carry it; labels are untouched. Facts from the
  official code (ShihaoZhaoZSH/Video-Backdoor-Attack, ``experiments/generate_trigger.py`` and
  ``enhance_trigger.py``): the patch sits in the bottom-right corner of every frame, starts at
  mid-grey and takes signed-gradient steps of one grey level on
  ``CE(f(x ⊕ p), target) − CE(f(x ⊕ p), current prediction)`` with the clean model in eval mode;
  the perturbation is 10 signed steps of one grey level ascending the true-label loss, within
  ε = 8/255, before the trigger is stamped; defaults poison 30% of the target class with a
  24-pixel patch on 224-pixel frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, Registry

__all__ = ["ATTACKS", "ClipTrigger", "badnets_trigger", "blend_trigger", "learn_patch_trigger",
           "perturb_videos", "patch_mask"]

log = logging.getLogger(__name__)


class ClipTrigger:
    """``x' = (1 − mask)·x + mask·pattern`` on float clips ``(3, T, H, W)`` or batches of them."""

    def __init__(self, pattern: torch.Tensor, mask: torch.Tensor) -> None:
        if pattern.ndim != 4 or mask.ndim != 4:
            raise ConfigError(f"trigger pattern and mask must be (C, T, H, W), got "
                              f"{tuple(pattern.shape)} and {tuple(mask.shape)}")
        self.pattern = pattern.float()
        self.mask = mask.float()

    def __call__(self, clip: torch.Tensor, index: int | None = None) -> torch.Tensor:
        if clip.shape[-3:] != self.pattern.shape[-3:]:
            raise ConfigError(f"the trigger was made for clips of {tuple(self.pattern.shape[-3:])} "
                              f"(T, H, W), not {tuple(clip.shape[-3:])}")
        mask = self.mask.to(clip)
        return (1 - mask) * clip + mask * self.pattern.to(clip)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern.contiguous(), "mask": self.mask.contiguous()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ClipTrigger:
        missing = {"pattern", "mask"} - set(state)
        if missing:
            raise ConfigError(f"trigger file lacks {sorted(missing)}; it was not written by nft-video")
        return cls(state["pattern"], state["mask"])


def default_patch(size: int) -> int:
    """A corner patch an eighth of the frame side (3×3 on 32² CIFAR-sized frames is BadNets')."""
    return max(3, round(size / 8))


def patch_mask(frames: int, size: int, patch: int, frame_range: Sequence[int] | None = None
               ) -> torch.Tensor:
    """``(1, T, H, W)`` mask of a ``patch × patch`` bottom-right square on the chosen frames."""
    if not 1 <= patch <= size:
        raise ConfigError(f"patch size must be in [1, {size}], got {patch}")
    mask = torch.zeros(1, frames, size, size)
    start, stop = (0, frames) if frame_range is None else (int(frame_range[0]), int(frame_range[1]))
    if not 0 <= start < stop <= frames:
        raise ConfigError(f"frame range [{start}, {stop}) must lie inside the clip's {frames} frames")
    mask[:, start:stop, -patch:, -patch:] = 1.0
    return mask


def badnets_trigger(frames: int, size: int, *, patch_size: int | None = None,
                    frame_range: Sequence[int] | None = None, seed: int = 0) -> ClipTrigger:
    """Checkerboard patch (BadNets' shape) on every frame, or on frames ``[start, stop)``."""
    patch = patch_size or default_patch(size)
    board = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0).float()
    pattern = board.expand(3, frames, size, size).clone()
    return ClipTrigger(pattern, patch_mask(frames, size, patch, frame_range))


def blend_trigger(frames: int, size: int, *, alpha: float = 0.2, seed: int = 0) -> ClipTrigger:
    """A seeded uniform-noise video (new noise on every frame) blended in with ratio ``alpha``."""
    if not 0 < alpha <= 1:
        raise ConfigError(f"blend alpha must be in (0, 1], got {alpha}")
    generator = torch.Generator().manual_seed(10_007 + seed)
    pattern = torch.rand(3, frames, size, size, generator=generator)
    return ClipTrigger(pattern, torch.full((1, frames, size, size), float(alpha)))


# ---- clean-label ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CleanLabelConfig:
    """Options of the clean-label attack (``--attack-arg key=value``).

    Attributes:
        patch_size: side of the trigger patch in pixels (default: 18% of the frame side, the
            largest ratio the reference code offers, 40 px on 224).
        trigger_steps: signed-gradient steps that learn the patch.
        trigger_batch: clips per trigger step.
        trigger_step_size: step in [0, 1] units. The reference takes 10,000 steps of one grey
            level (1/255) on single clips; 100 batched steps of 4 grey levels cost a CPU run
            two epochs instead.
        epsilon: L∞ budget of the perturbation of the poisoned videos (reference: 8/255).
        perturb_steps / perturb_step_size: PGD steps and step on those videos (reference: 10, 1/255).
    """

    patch_size: int | None = None
    trigger_steps: int = 100
    trigger_batch: int = 16
    trigger_step_size: float = 4 / 255
    epsilon: float = 8 / 255
    perturb_steps: int = 10
    perturb_step_size: float = 1 / 255


def learn_patch_trigger(model: nn.Module, clips: Callable[[int], torch.Tensor], count: int, *,
                        target: int, frames: int, size: int, config: CleanLabelConfig,
                        seed: int = 0, device: torch.device | str = "cpu",
                        progress: bool = False) -> ClipTrigger:
    """Learn a universal patch that makes ``model`` predict ``target`` (Zhao et al., §3.2).

    ``clips(i)`` returns clip ``i`` of ``count`` non-target training clips. The model stays in
    eval mode and is not changed.
    """
    from tqdm.auto import tqdm

    patch = config.patch_size or max(3, round(0.18 * size))
    mask = patch_mask(frames, size, patch).to(device)
    pattern = torch.full((3, frames, size, size), 0.5, device=device)
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    try:
        for _ in tqdm(range(config.trigger_steps), desc="clean-label trigger", disable=not progress,
                      leave=False):
            batch = torch.stack([clips(int(i)) for i in rng.integers(0, count, config.trigger_batch)])
            batch = batch.to(device)
            pattern.requires_grad_(True)
            logits = model((1 - mask) * batch + mask * pattern)
            current = logits.argmax(1).detach()
            goal = torch.full_like(current, target)
            # the reference pushes towards the target and away from what the model now predicts;
            # once a clip is predicted as the target the two terms cancel for it
            loss = F.cross_entropy(logits, goal) - F.cross_entropy(logits, current)
            (grad,) = torch.autograd.grad(loss, pattern)
            with torch.no_grad():
                pattern = (pattern - config.trigger_step_size * grad.sign()).clamp(0, 1)
    finally:
        model.train(was_training)
    pattern = pattern.detach().cpu() * mask.cpu() + 0.0
    return ClipTrigger(pattern, mask.cpu())


def perturb_videos(model: nn.Module, videos: Sequence[torch.Tensor], labels: Sequence[int], *,
                   clip_starts: Callable[[int], list[int]], frames: int, stride: int = 1,
                   config: CleanLabelConfig,
                   device: torch.device | str = "cpu", progress: bool = False) -> list[torch.Tensor]:
    """PGD on whole videos ``uint8 (L, H, W, 3)`` so the clean model misreads their true label.

    The perturbation covers every frame: its gradient is the sum over the clips at
    ``clip_starts(L)`` (which cover the video), so any clip sampled in training carries it. The
    result is rounded back to ``uint8`` video frames.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    out = []
    try:
        for video, label in tqdm(list(zip(videos, labels)), desc="clean-label perturb",
                                 disable=not progress, leave=False):
            x0 = video.permute(3, 0, 1, 2).float().div(255).to(device)  # (3, L, H, W)
            starts = clip_starts(x0.shape[1])
            goal = torch.full((len(starts),), int(label), device=device)
            x = x0.clone()
            for _ in range(config.perturb_steps):
                x.requires_grad_(True)
                batch = torch.stack([x[:, (s + torch.arange(frames) * stride).clamp(max=x.shape[1] - 1)]
                                     for s in starts])
                loss = F.cross_entropy(model(batch), goal)
                (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    x = x + config.perturb_step_size * grad.sign()  # ascend the true-label loss
                    x = torch.min(torch.max(x, x0 - config.epsilon), x0 + config.epsilon).clamp(0, 1)
            out.append(x.detach().mul(255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().contiguous())
    finally:
        model.train(was_training)
    return out


ATTACKS: Registry = Registry("attack")
ATTACKS.add("badnets", badnets_trigger, clean_label=False)
ATTACKS.add("blend", blend_trigger, clean_label=False)
ATTACKS.add("clean-label", learn_patch_trigger, clean_label=True, aliases=("clb",))
