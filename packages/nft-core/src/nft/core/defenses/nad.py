"""NAD: Neural Attention Distillation (Li et al., ICLR 2021).

A *teacher* is the backdoored model fine-tuned on the clean set; fine-tuning alone weakens the
backdoor. The *student* (the backdoored model itself) is then trained on the clean set with
``L(x, y) + Σ_k β_k · AT(student_k, teacher_k)``, where ``AT`` is the mean squared error between
normalised attention maps of intermediate feature maps (channel sum of ``|a|^p``, L2-normalised
over positions; Zagoruyko & Komodakis). Matching the teacher's attention erases the backdoor
features while the task loss keeps accuracy.

Defaults: student as in the official code (bboylyg/NAD, ``config.py``, ``main.py``): 20 epochs,
batch 64, SGD lr 0.1 with Nesterov momentum 0.9, weight decay 1e-4, lr 0.1 for epochs 0–1 then
0.01 (``adjust_learning_rate``), β = 500 / 1000 / 1000 for the low / middle / high maps, p = 2,
5 % of the training set. The official repository ships its teacher; its fine-tuning follows
BackdoorBench's NAD (``te_epochs`` 10, SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine,
batch 256). Epochs are counted on the official 5 % of CIFAR-10 (2,500 images): the student runs
``steps`` = 20 × 40 = 800 batches of 64 (lr drop after ``warm_steps`` = 80), the teacher
``teacher_steps`` = 10 × 10 = 100 batches of 256, whatever the clean-set size (with 100 clean
images: 512 and 256 passes). Both models train in train mode; the teacher predicts in eval mode.

Which feature maps: NAD distils the outputs of the three residual groups of its WideResNet.
For any model, :func:`~._common.feature_taps` lists the normalisation layers whose outputs are
feature maps in call order, splits them into three equal parts and taps the last layer of each
(the ends of the early, middle and late thirds); ``feature_layers`` names modules explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..config import DefenseConfig
from ..errors import ConfigError
from . import _common as C
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["NAD", "NADConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NADConfig(DefenseConfig):
    """NAD's knobs; defaults from the official code (student) and BackdoorBench (teacher)."""

    steps: int = 800
    """Student optimiser steps (20 epochs × 40 batches of 64 on 2,500 images)."""
    batch_size: int = 64
    lr: float = 0.1
    lr_after: float = 0.01
    """Student rate after ``warm_steps`` (the official schedule: 0.1 for 2 epochs, then 0.01)."""
    warm_steps: int = 80
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)
    """Weights β of the attention losses, low to high."""
    p: float = 2.0
    """Power of the attention map."""
    teacher_steps: int = 100
    """Teacher fine-tuning steps (10 epochs × 10 batches of 256)."""
    teacher_batch_size: int = 256
    teacher_lr: float = 0.01
    teacher_weight_decay: float = 5e-4
    feature_layers: tuple[str, ...] = ()
    """Module names of the distilled feature maps; empty = chosen as the module docstring says."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "feature_layers", tuple(self.feature_layers))
        checks = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.teacher_steps >= 0, f"teacher_steps must be ≥ 0, got {self.teacher_steps}"),
            (self.batch_size >= 1 and self.teacher_batch_size >= 1, "batch sizes must be ≥ 1"),
            (self.lr > 0 and self.teacher_lr > 0, "learning rates must be > 0"),
            (len(self.betas) >= 1, "betas needs at least one weight"),
            (not self.feature_layers or len(self.feature_layers) == len(self.betas),
             f"feature_layers must name {len(self.betas)} modules (one per beta), "
             f"got {len(self.feature_layers)}"),
            (self.p > 0, f"p must be > 0, got {self.p}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"NADConfig: {message}")


def attention_map(features: torch.Tensor, channel_axis: int, p: float) -> torch.Tensor:
    """Channel sum of ``|a|^p``, flattened over positions and L2-normalised (NAD's ``AT``)."""
    am = features.abs().pow(p).sum(dim=channel_axis).flatten(1)
    return am / (am.norm(dim=1, keepdim=True) + 1e-6)


class NAD(Defense):
    config_class = NADConfig

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: NADConfig = self.config
        device = C.device_of(cfg)
        task = context.task
        model.to(device)
        history = []
        with C.seeded_run(device, cfg.seed):
            probe = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
            taps = C.feature_taps(model, task, probe.get(0)[0], len(cfg.betas), cfg.feature_layers)
            log.info("%s: distilling attention of %s", self.name, ", ".join(n for n, _ in taps))
            teacher = self._teacher(C.copy_model(model), clean, context, device, history)
            teacher.eval()
            student_maps: dict[str, torch.Tensor] = {}
            teacher_maps: dict[str, torch.Tensor] = {}
            handles = []
            for net, store in ((model, student_maps), (teacher, teacher_maps)):
                modules = dict(net.named_modules())
                for name, axis in taps:
                    handles.append(modules[name].register_forward_hook(
                        lambda mod, args, out, name=name, axis=axis, store=store:
                        store.__setitem__(name, attention_map(out, axis, cfg.p))))
            try:
                self._distil(model, teacher, clean, context, device, taps, student_maps, teacher_maps, history)
            finally:
                for h in handles:
                    h.remove()
        model.eval()
        return DefenseOutcome(model=model, history=history,
                              info={"feature_layers": [n for n, _ in taps]})

    def _teacher(self, teacher: nn.Module, clean, context, device, history) -> nn.Module:
        cfg: NADConfig = self.config
        task = context.task
        teacher.train()
        params = [p for p in teacher.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=cfg.teacher_lr, momentum=cfg.momentum,
                              weight_decay=cfg.teacher_weight_decay)
        batches = C.make_batches(clean, cfg.teacher_batch_size, cfg.seed + 1, device, context.collate_fn)
        with C.bar(cfg.teacher_steps, f"{self.name} teacher", cfg.progress) as pbar:
            for step in range(cfg.teacher_steps):
                for group in opt.param_groups:
                    group["lr"] = C.cosine(cfg.teacher_lr, step, cfg.teacher_steps)
                inputs, targets, _, _ = batches.get(step)
                loss = task.loss(task.forward(teacher, inputs), targets)
                C.check_finite(loss, f"{self.name} teacher", step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                pbar.update(1)
        if cfg.teacher_steps:
            history.append({"stage": "teacher", "step": cfg.teacher_steps, "loss": float(loss.detach())})
        for p in params:
            p.requires_grad_(False)
        return teacher

    def _distil(self, model, teacher, clean, context, device, taps, student_maps, teacher_maps, history) -> None:
        cfg: NADConfig = self.config
        task = context.task
        model.train()
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              nesterov=cfg.momentum > 0)
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        with C.bar(cfg.steps, self.name, cfg.progress) as pbar:
            for step in range(cfg.steps):
                for group in opt.param_groups:
                    group["lr"] = cfg.lr if step < cfg.warm_steps else cfg.lr_after
                inputs, targets, _, _ = batches.get(step)
                with torch.no_grad():
                    task.forward(teacher, inputs)
                task_loss = task.loss(task.forward(model, inputs), targets)
                at_loss = sum(beta * F.mse_loss(student_maps[name], teacher_maps[name])
                              for beta, (name, _) in zip(cfg.betas, taps))
                loss = task_loss + at_loss
                C.check_finite(loss, self.name, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                pbar.update(1)
                if (step + 1) % max(1, cfg.steps // 5) == 0:
                    history.append({"stage": "student", "step": step + 1, "loss": float(task_loss.detach()),
                                    "attention_loss": float(at_loss.detach())})


DEFENSES.add("nad", lambda config=None: NAD("nad", config), family="finetune")
