"""AWM: Adversarial Weight Masking (Chai & Chen, NeurIPS 2022).

A soft mask of the same shape as every convolution weight (one value per weight, in [0, 1],
init 1; ``MaskedConv2d`` computes ``weight · mask``) is learned against a universal trigger.
Each outer round:

1. **trigger**: a universal additive perturbation δ (init 0) takes one SGD step (lr 10) per clean
   batch to change the masked model's own predictions, then is rescaled to an L1 norm of at
   most ``trigger_norm``;
2. **masks**: Adam on ``α · L(x, y) + (1 − α) · L(clip(x + δ), y) + γ · ‖m‖₁``, masks clipped to
   [0, 1] after every step.

At the end the masks are multiplied into the weights, so the model keeps its architecture; only
convolution weights change.

Defaults are the official code's (jinghuichen/AWM, ``main.py``): 20 outer rounds, α = 0.9,
γ = 1e-8, mask Adam lr 1e-2, trigger lr 10, batch 128, no shrink phase, no lr decay, model in
eval mode. The official round is ``int(n_clean / batch) · inner`` = int(500 / 128) · 5 = 15 batches
(also 15 for its one-shot example, 10 images expanded to 100 with batch 32); a round here is
``steps_per_round`` = 15 batches drawn with replacement whatever the clean-set size.
The official trigger budget is an L1 norm of 1000 on 3×32×32 CIFAR-10 images in [0, 1], i.e.
1000 / 3072 ≈ 0.33 per input value; ``trigger_norm`` is that per-value budget (pixel units),
multiplied by the number of input values of the modality's samples. Models without convolutions
(transformers) get masks on their linear layers instead, with a log line saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import DefenseConfig
from ..errors import ConfigError
from . import _common as C
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["AWM", "AWMConfig"]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class AWMConfig(DefenseConfig):
    """AWM's knobs; defaults from the official ``main.py``."""

    rounds: int = 20
    """Outer rounds (``--outer``)."""
    steps_per_round: int = 15
    """Clean batches per round, for the trigger pass and for the mask pass."""
    batch_size: int = 128
    lr: float = 0.01
    """Adam rate of the masks (``--lr2``)."""
    alpha: float = 0.9
    """Weight of the clean loss; 1 − α weighs the loss under the trigger (``--alpha``)."""
    gamma: float = 1e-8
    """Weight of the masks' L1 norm (``--gamma``)."""
    trigger_lr: float = 10.0
    """SGD rate of the universal trigger."""
    trigger_norm: float = 1000.0 / 3072.0
    """L1 budget of the trigger per input value, pixel units (official 1000 over 3×32×32)."""
    shrink_steps: int = 0
    """Optional rounds of ``γ·L1 + L`` before AWM (``--shrink-steps``, Adam lr ``shrink_lr``)."""
    shrink_lr: float = 0.001

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, f"rounds must be ≥ 1, got {self.rounds}"),
            (self.steps_per_round >= 1, f"steps_per_round must be ≥ 1, got {self.steps_per_round}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.gamma >= 0, f"gamma must be ≥ 0, got {self.gamma}"),
            (self.trigger_norm > 0, f"trigger_norm must be > 0, got {self.trigger_norm}"),
            (self.shrink_steps >= 0, f"shrink_steps must be ≥ 0, got {self.shrink_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"AWMConfig: {message}")


class AWM(Defense):
    config_class = AWMConfig
    needs_input_space = True

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: AWMConfig = self.config
        device = C.device_of(cfg)
        task, space = context.task, context.input_space
        model.to(device).eval()  # the official code trains the masks with model.eval()
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _CONV)]
        if not layers:
            layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not layers:
                raise ConfigError(f"AWM masks convolution (or linear) weights, and {type(model).__name__} "
                                  "has none; choose another defense")
            log.info("%s: the model has no convolution; masking its %d linear layers", self.name, len(layers))
        masks = {n: torch.ones_like(m.weight, requires_grad=True) for n, m in layers}
        modules = dict(layers)
        net = C.Overridden(model, lambda: {f"{n}.weight": modules[n].weight * masks[n] for n in masks})
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        mask_list = list(masks.values())
        history = []
        step = 0
        total = (cfg.shrink_steps + cfg.rounds) * cfg.steps_per_round
        with C.frozen(model), C.seeded_run(device, cfg.seed), C.bar(total, self.name, cfg.progress) as pbar:
            shrink_opt = torch.optim.Adam(mask_list, lr=cfg.shrink_lr)
            for _ in range(cfg.shrink_steps * cfg.steps_per_round):
                inputs, targets, _, _ = batches.get(step)
                loss = task.loss(task.forward(net, inputs), targets) + cfg.gamma * _l1(mask_list)
                C.check_finite(loss, self.name, step)
                shrink_opt.zero_grad(set_to_none=True)
                loss.backward()
                shrink_opt.step()
                _clip(mask_list)
                step += 1
                pbar.update(1)
            mask_opt = torch.optim.Adam(mask_list, lr=cfg.lr)
            for r in range(cfg.rounds):
                delta, step = self._trigger(net, batches, step, context)
                for _ in range(cfg.steps_per_round):
                    inputs, targets, _, _ = batches.get(step)
                    scale = C.pixel_scale(space, delta)
                    triggered = space.clamp(space.perturb(inputs, delta * scale))
                    loss_rob = task.loss(task.forward(net, triggered), targets)
                    loss_nat = task.loss(task.forward(net, inputs), targets)
                    loss = cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_rob + cfg.gamma * _l1(mask_list)
                    C.check_finite(loss, self.name, step)
                    mask_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    mask_opt.step()
                    _clip(mask_list)
                    step += 1
                    pbar.update(1)
                history.append({"round": r + 1, "loss": float(loss.detach()),
                                "loss_triggered": float(loss_rob.detach()),
                                "mask_mean": float(sum(m.detach().sum() for m in mask_list)
                                                   / sum(m.numel() for m in mask_list))})
        with torch.no_grad():
            for n, module in layers:
                module.weight.mul_(masks[n].detach())
        kept = sum(float(m.detach().sum()) for m in mask_list) / sum(m.numel() for m in mask_list)
        model.eval()
        return DefenseOutcome(model=model, history=history,
                              info={"masked_layers": len(layers), "mask_mean": kept})

    def _trigger(self, net: nn.Module, batches, step: int, context: DefenseContext):
        """One pass of the universal trigger; returns it (pixel units) within its L1 budget."""
        cfg: AWMConfig = self.config
        task, space = context.task, context.input_space
        delta = None
        for _ in range(cfg.steps_per_round):
            inputs, _, _, _ = batches.get(step)
            if delta is None:
                shape = space.sample_shape(inputs)
                delta = torch.zeros((1, *shape), device=C.device_of(cfg), requires_grad=True)
                opt = torch.optim.SGD([delta], lr=cfg.trigger_lr)
            scale = C.pixel_scale(space, delta)
            with torch.no_grad():
                own = C.predicted_targets(task, task.forward(net, inputs))
            loss = -task.loss(task.forward(net, space.perturb(inputs, delta * scale)), own)
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[delta])
            opt.step()
            step += 1
        with torch.no_grad():
            budget = cfg.trigger_norm * delta.numel()
            delta = delta * min(1.0, budget / max(float(delta.abs().sum()), 1e-12))
        return delta.detach(), step


def _l1(masks: list[torch.Tensor]) -> torch.Tensor:
    return sum(m.abs().sum() for m in masks)


@torch.no_grad()
def _clip(masks: list[torch.Tensor]) -> None:
    for m in masks:
        m.clamp_(0.0, 1.0)


DEFENSES.add("awm", lambda config=None: AWM("awm", config), family="masking")
