"""ANP: Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Backdoor neurons are the ones that, once perturbed slightly, flip the model's predictions.
ANP gives every normalisation channel a mask ``m`` ∈ [0, 1] (init 1) on its scale γ plus
multiplicative noises δ (on γ) and ξ (on β), and for every clean batch:

1. draws the noises uniformly in [−ε, ε] and takes ``anp_steps`` signed-gradient ascent steps on
   them (step ε / steps) to *increase* the loss;
2. updates the masks on ``α · L(x; m) + (1 − α) · L(x; m + δ, 1 + ξ)``, then clips them to [0, 1].

Channels whose mask ends up small are pruned: their γ is set to 0 in the *original* model (the
mask optimisation runs on a copy, so nothing else of the model changes, not even BN statistics).

Defaults are the official code's (csdongxian/ANP_backdoor, ``optimize_mask_cifar.py``):
ε = 0.4, one noise step, α = 0.2, mask SGD lr 0.2 / momentum 0.9, 2000 iterations of 128 images
drawn with replacement from the clean set (500 CIFAR-10 images there), model in train mode.
"Iterations" are optimiser steps whatever the clean-set size: with 100 clean images, 2000 steps
of 128 draws are about 2,560 passes over the set. The noise is not projected back into [−ε, ε]
after its ascent step, as in the official code.

Pruning threshold: the official ``prune_neuron_cifar.py`` sweeps thresholds 0 → 0.9 by 0.05 and
reports test ASR for each; BackdoorBench picks the lowest test ASR among thresholds within 10 %
relative clean accuracy — both use attack data. Here (``threshold=None``) the threshold is the
largest of that sweep whose accuracy on the defender's *clean set* stays within ``acc_tolerance``
(relative, BackdoorBench's ``acc_ratio`` = 0.1) of the unpruned model's; a fixed ``threshold``
(the paper's recipe uses 0.2) skips the sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import DefenseConfig
from ..errors import ConfigError
from ..tasks import ClassificationTask
from . import _common as C
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["ANP", "ANPConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ANPConfig(DefenseConfig):
    """ANP's knobs; defaults from the official code (``optimize_mask_cifar.py``)."""

    steps: int = 2000
    """Mask-optimisation steps (``--nb-iter``), each on ``batch_size`` clean samples drawn with
    replacement."""
    batch_size: int = 128
    lr: float = 0.2
    """Mask SGD learning rate (momentum ``momentum``)."""
    momentum: float = 0.9
    eps: float = 0.4
    """Noise budget ε of the multiplicative perturbation on γ and β (``--anp-eps``)."""
    noise_steps: int = 1
    """Signed-gradient ascent steps on the noise per batch (``--anp-steps``)."""
    alpha: float = 0.2
    """Weight of the natural loss; 1 − α weighs the perturbed loss (``--anp-alpha``)."""
    train_mode: bool = True
    """Normalisation layers use batch statistics during mask optimisation (the official code
    runs ``model.train()``); the original model's statistics are never changed."""
    threshold: float | None = None
    """Prune channels with mask ≤ this; ``None`` chooses it on the clean set (module docstring)."""
    max_threshold: float = 0.9
    """Upper end of the threshold sweep (``--pruning-max``)."""
    threshold_step: float = 0.05
    """Sweep step (``--pruning-step``)."""
    acc_tolerance: float = 0.1
    """Largest relative clean-set accuracy drop the chosen threshold may cost."""

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.eps >= 0, f"eps must be ≥ 0, got {self.eps}"),
            (self.noise_steps >= 1, f"noise_steps must be ≥ 1, got {self.noise_steps}"),
            (0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.threshold is None or 0 <= self.threshold <= 1,
             f"threshold must be in [0, 1] or None, got {self.threshold}"),
            (0 <= self.max_threshold <= 1, f"max_threshold must be in [0, 1], got {self.max_threshold}"),
            (self.threshold_step > 0, f"threshold_step must be > 0, got {self.threshold_step}"),
            (0 <= self.acc_tolerance < 1, f"acc_tolerance must be in [0, 1), got {self.acc_tolerance}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"ANPConfig: {message}")


class ANP(Defense):
    config_class = ANPConfig

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: ANPConfig = self.config
        device = C.device_of(cfg)
        model.to(device).eval()
        layers = C.norm_layers(model, self.name)
        scores = self._optimise_masks(model, clean, context, device, [n for n, _ in layers])
        classification = isinstance(context.task, ClassificationTask)
        if cfg.threshold is None:
            def quality(m: nn.Module) -> float:
                return C.clean_quality(m, clean, context.task, device, context.collate_fn)

            threshold, sweep = C.choose_threshold(
                model, layers, scores, quality, max_threshold=cfg.max_threshold,
                step=cfg.threshold_step, tolerance=cfg.acc_tolerance, classification=classification)
        else:
            threshold, sweep = cfg.threshold, []
        kept = C.prune_norm_channels(layers, scores, threshold)
        pruned = int(sum(int((k == 0).sum()) for k in kept.values()))
        total = int(sum(k.numel() for k in kept.values()))
        log.info("%s: pruned %d of %d channels at threshold %s", self.name, pruned, total, threshold)
        model.eval()
        return DefenseOutcome(
            model=model, masks=scores, history=self._history,
            info={"threshold": threshold, "pruned_channels": pruned, "channels": total,
                  "threshold_sweep": sweep},
        )

    def _optimise_masks(self, model: nn.Module, clean: Dataset, context: DefenseContext,
                        device: torch.device, names: list[str]) -> dict[str, torch.Tensor]:
        cfg: ANPConfig = self.config
        work = C.copy_model(model)  # train-mode statistics drift here, not in the model we prune
        modules = dict(work.named_modules())
        masks = {n: torch.ones_like(modules[n].weight, requires_grad=True) for n in names}
        noise_w = {n: torch.zeros_like(modules[n].weight, requires_grad=True) for n in names}
        has_bias = {n: isinstance(getattr(modules[n], "bias", None), torch.Tensor) for n in names}
        noise_b = {n: torch.zeros_like(modules[n].weight, requires_grad=True) for n in names if has_bias[n]}
        state = {"perturbed": False}

        def overrides() -> dict[str, torch.Tensor]:
            out = {}
            for n in names:
                module = modules[n]
                if state["perturbed"]:
                    out[f"{n}.weight"] = module.weight * (masks[n] + noise_w[n])
                    if has_bias[n]:
                        out[f"{n}.bias"] = module.bias * (1.0 + noise_b[n])
                else:
                    out[f"{n}.weight"] = module.weight * masks[n]
            return out

        net = C.Overridden(work, overrides)
        mask_opt = torch.optim.SGD(list(masks.values()), lr=cfg.lr, momentum=cfg.momentum)
        noises = list(noise_w.values()) + list(noise_b.values())
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        task = context.task
        self._history = []
        work.train(cfg.train_mode)
        with C.frozen(work), C.seeded_run(device, cfg.seed), C.bar(cfg.steps, self.name, cfg.progress) as pbar:
            for step in range(cfg.steps):
                inputs, targets, _, generator = batches.get(step)
                if cfg.eps > 0:
                    with torch.no_grad():
                        for p in noises:  # uniform in [-eps, eps] (``reset(rand_init=True)``)
                            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1).to(p) * cfg.eps)
                    for _ in range(cfg.noise_steps):
                        state["perturbed"] = True
                        loss_noise = task.loss(task.forward(net, inputs), targets)
                        grads = torch.autograd.grad(loss_noise, noises)
                        with torch.no_grad():  # ascent: noise += (ε / steps) · sign(∇ loss)
                            for p, g in zip(noises, grads):
                                p.add_(torch.sign(g), alpha=cfg.eps / cfg.noise_steps)
                    state["perturbed"] = True
                    loss_rob = task.loss(task.forward(net, inputs), targets)
                else:
                    loss_rob = torch.zeros((), device=device)
                state["perturbed"] = False
                loss_nat = task.loss(task.forward(net, inputs), targets)
                loss = cfg.alpha * loss_nat + (1 - cfg.alpha) * loss_rob
                C.check_finite(loss, self.name, step)
                mask_opt.zero_grad(set_to_none=True)
                loss.backward(inputs=list(masks.values()))
                mask_opt.step()
                with torch.no_grad():
                    for m in masks.values():
                        m.clamp_(0.0, 1.0)
                pbar.update(1)
                if (step + 1) % max(1, cfg.steps // 5) == 0:
                    self._history.append({"step": step + 1, "loss": float(loss.detach()),
                                          "loss_natural": float(loss_nat.detach())})
        return {n: m.detach().cpu() for n, m in masks.items()}


DEFENSES.add("anp", lambda config=None: ANP("anp", config), family="pruning")
