"""FST: Feature Shift Tuning (Min, Qin, Shen, Cheng, NeurIPS 2023).

Vanilla fine-tuning on few clean samples barely moves the features, so the backdoor survives.
FST forces the feature extractor to shift: the final linear layer is re-initialised and the
whole model is fine-tuned on ``L(x, y) + α · ⟨W, W_orig⟩`` (the inner product of the new head's
weight with the backdoored head's), which pushes the new head away from the compromised one; after
every step W is rescaled to the original head's norm, so the penalty cannot be met by shrinking W.

Defaults are the official code's (AISafety-HKUST/stable_backdoor_purification,
``fine_tune/ft.py --ft_mode fst``): SGD lr 0.01, momentum 0.9, no weight decay, cosine schedule,
batch 128, head re-initialised uniformly in ±1/√fan_in (weight and bias), α = 0.1 (the README's
CIFAR-10 command; the argparse default is 0.2, and the README advises a small α when accuracy
drops). The README runs 10 epochs on 2 % of CIFAR-10 (1,000 images, 8 batches): 80 optimiser
steps; ``steps`` counts them whatever the clean-set size (with 100 clean images, 80 steps of 128
draws are about 100 passes). The cosine schedule is applied per step instead of per epoch.

The final linear layer is found by running the model once (:func:`~._common.find_head`); a model
without one gets a clear error, and ``head`` names it explicitly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import DefenseConfig
from ..errors import ConfigError
from . import _common as C
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["FST", "FSTConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FSTConfig(DefenseConfig):
    """FST's knobs; defaults from the official ``fine_tune/ft.py``."""

    steps: int = 80
    """Optimiser steps (10 epochs × 8 batches in the README command)."""
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    alpha: float = 0.1
    """Weight of ⟨W, W_orig⟩ (``--alpha``)."""
    head: str | None = None
    """Module name of the final linear layer; ``None`` finds it."""

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.alpha >= 0, f"alpha must be ≥ 0, got {self.alpha}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"FSTConfig: {message}")


class FST(Defense):
    config_class = FSTConfig

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: FSTConfig = self.config
        device = C.device_of(cfg)
        task = context.task
        model.to(device)
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        history = []
        with C.seeded_run(device, cfg.seed):
            probe_inputs, _, _, generator = batches.get(0)
            name, head = C.find_head(model, task, probe_inputs, cfg.head)
            w_orig = head.weight.detach().clone()
            norm_orig = w_orig.norm()
            with torch.no_grad():  # uniform in ±1/√fan_in, bias with the weight's bound (official)
                bound = 1.0 / math.sqrt(head.weight.shape[-1])
                head.weight.copy_((torch.rand(head.weight.shape, generator=generator) * 2 - 1) * bound)
                if head.bias is not None:
                    head.bias.copy_((torch.rand(head.bias.shape, generator=generator) * 2 - 1) * bound)
            log.info("%s: re-initialised the head %s (%s)", self.name, name, tuple(head.weight.shape))
            model.train()
            params = [p for p in model.parameters() if p.is_floating_point()]
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay)
            with C.bar(cfg.steps, self.name, cfg.progress) as pbar:
                for step in range(cfg.steps):
                    for group in optimizer.param_groups:
                        group["lr"] = C.cosine(cfg.lr, step, cfg.steps)
                    inputs, targets, _, _ = batches.get(step)
                    task_loss = task.loss(task.forward(model, inputs), targets)
                    shift = (head.weight * w_orig).sum()
                    loss = task_loss + cfg.alpha * shift
                    C.check_finite(loss, self.name, step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():  # keep the head's norm at the original's
                        head.weight.mul_(norm_orig / head.weight.norm().clamp_min(1e-12))
                    pbar.update(1)
                    if (step + 1) % max(1, cfg.steps // 5) == 0:
                        history.append({"step": step + 1, "loss": float(task_loss.detach()),
                                        "inner_product": float(shift.detach())})
        model.eval()
        return DefenseOutcome(model=model, history=history, info={"head": name})


DEFENSES.add("fst", lambda config=None: FST("fst", config), family="finetune")
