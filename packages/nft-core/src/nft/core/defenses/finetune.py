"""Vanilla fine-tuning baselines: all weights on the clean set (``ft``), and with MixUp
(``ft-mixup``, the paper's "weight fine-tuning instead of masks" ablation).

Settings follow the FST repository's ``--ft_mode ft`` (SGD, momentum 0.9, cosine schedule,
lr 0.01; AISafety-HKUST/stable_backdoor_purification, fine_tune/ft.py) with weight decay 5e-4 as
in BackdoorBench's ft defense; the model trains in train mode, as both do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..augment import MixUp, NoAugmentation, mixed_loss
from ..data import SeededBatches
from ..errors import NonFiniteLossError
from ..config import DefenseConfig
from ..purify import resolve_device
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["FineTuneConfig", "FineTune"]


@dataclass(frozen=True)
class FineTuneConfig(DefenseConfig):
    steps: int = 300
    """Optimiser steps (batches drawn with replacement from the clean set)."""
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    mixup_alpha: float = 0.0
    """MixUp's Beta(α, α); 0 = plain fine-tuning."""


class FineTune(Defense):
    config_class = FineTuneConfig

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg = self.config
        device = resolve_device(cfg.device)
        model.to(device).train()
        for p in model.parameters():
            p.requires_grad_(True)
        params = [p for p in model.parameters() if p.is_floating_point()]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        batches = SeededBatches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        if cfg.mixup_alpha > 0:
            augmentation = context.augmentation or MixUp(cfg.mixup_alpha)
        else:
            augmentation = NoAugmentation()
        from tqdm.auto import tqdm

        history = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for step in tqdm(range(cfg.steps), desc=self.name, disable=not cfg.progress, leave=False):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * (1 + math.cos(math.pi * step / cfg.steps)) / 2
                inputs, targets, rng, generator = batches.get(step)
                mixed = augmentation(inputs, targets, rng=rng, generator=generator)
                loss = mixed_loss(context.task, context.task.forward(model, mixed.inputs), mixed)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"{self.name}: loss became {float(loss.detach())} at step {step}; "
                                             "lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if (step + 1) % max(1, cfg.steps // 5) == 0:
                    history.append({"step": step + 1, "loss": float(loss.detach())})
        model.eval()
        return DefenseOutcome(model=model, history=history)


DEFENSES.add("ft", lambda config=None: FineTune("ft", config), family="finetune")
DEFENSES.add(
    "ft-mixup",
    lambda config=None: FineTune("ft-mixup", config or FineTuneConfig(mixup_alpha=1.0)),
    family="finetune",
)
