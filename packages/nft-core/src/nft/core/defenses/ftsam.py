"""FT-SAM: fine-tuning with adaptive sharpness-aware minimisation (Zhu, Wei, Zha, Wu, ICCV 2023).

Backdoor neurons have large weight norms; fine-tuning with *adaptive* SAM (ASAM) perturbs each
weight in proportion to its magnitude, ``e_w = ρ · g ⊙ w² / ‖|w| ⊙ g‖``, takes the gradient at
``w + e_w`` and applies it at ``w``. Large backdoor weights see large perturbations and are
shrunk, which moves the model out of the backdoor's minimum; the clean loss keeps accuracy.
The second (perturbed) pass does not update normalisation running statistics.

Defaults are BackdoorBench's ``defense/ft-sam.py`` with ``config/defense/ft-sam/config.yaml``
(the authors' group): SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule to 0,
batch 256, ρ = 2 (ρ_max = ρ_min), adaptive, label smoothing 0.1, gradient decomposition α = 0
(a no-op, so not implemented), all weights trained in train mode. BackdoorBench runs 100 epochs
over 5 % of CIFAR-10 (2,500 images, 10 batches of 256): 1,000 optimiser steps. ``steps`` counts
those steps whatever the clean-set size (with 100 clean images, 1,000 steps of 256 draws are
about 2,560 passes). Label smoothing applies to classification tasks (torch's formula, ε spread
over all classes; BackdoorBench spreads it over the other classes); other tasks use their loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import DefenseConfig
from ..errors import ConfigError
from ..tasks import ClassificationTask
from . import _common as C
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["FTSAM", "FTSAMConfig"]


@dataclass(frozen=True)
class FTSAMConfig(DefenseConfig):
    """FT-SAM's knobs; defaults from BackdoorBench's ft-sam config."""

    steps: int = 1000
    """Optimiser steps (100 epochs × 10 batches in BackdoorBench)."""
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    rho: float = 2.0
    """Neighbourhood radius ρ of (adaptive) SAM."""
    adaptive: bool = True
    """ASAM: scale the perturbation by |w| (BackdoorBench's default)."""
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.rho >= 0, f"rho must be ≥ 0, got {self.rho}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"FTSAMConfig: {message}")


class FTSAM(Defense):
    config_class = FTSAMConfig

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: FTSAMConfig = self.config
        device = C.device_of(cfg)
        task = context.task
        if isinstance(task, ClassificationTask) and cfg.label_smoothing > 0:
            task = ClassificationTask(label_smoothing=cfg.label_smoothing)
        model.to(device).train()
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        history = []
        with C.seeded_run(device, cfg.seed), C.bar(cfg.steps, self.name, cfg.progress) as pbar:
            for step in range(cfg.steps):
                for group in optimizer.param_groups:
                    group["lr"] = C.cosine(cfg.lr, step, cfg.steps)
                inputs, targets, _, _ = batches.get(step)
                loss = task.loss(task.forward(model, inputs), targets)
                C.check_finite(loss, self.name, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                shifts = self._ascent(params, cfg.rho, cfg.adaptive)
                momenta = [m.momentum for m in norms]
                for m in norms:  # no running-statistics update in the perturbed pass
                    m.momentum = 0.0
                try:
                    optimizer.zero_grad(set_to_none=True)
                    perturbed = task.loss(task.forward(model, inputs), targets)
                    perturbed.backward()
                finally:
                    for m, value in zip(norms, momenta):
                        m.momentum = value
                with torch.no_grad():
                    for p, e in zip(params, shifts):
                        if e is not None:
                            p.sub_(e)
                optimizer.step()
                pbar.update(1)
                if (step + 1) % max(1, cfg.steps // 5) == 0:
                    history.append({"step": step + 1, "loss": float(loss.detach()),
                                    "loss_perturbed": float(perturbed.detach())})
        model.eval()
        return DefenseOutcome(model=model, history=history)

    @staticmethod
    @torch.no_grad()
    def _ascent(params: list[nn.Parameter], rho: float, adaptive: bool) -> list[torch.Tensor | None]:
        """Move every weight to ``w + e_w`` (ASAM) and return the shifts to undo afterwards."""
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return [None] * len(params)
        norm = torch.norm(torch.stack([((p.abs() if adaptive else 1.0) * p.grad).norm(2) for p in with_grad]), 2)
        scale = rho / (norm + 1e-12)
        shifts = []
        for p in params:
            if p.grad is None:
                shifts.append(None)
                continue
            e = p.grad * scale
            if adaptive:
                e = e * p.pow(2)
            p.add_(e)
            shifts.append(e)
        return shifts


DEFENSES.add("ft-sam", lambda config=None: FTSAM("ft-sam", config), family="finetune")
