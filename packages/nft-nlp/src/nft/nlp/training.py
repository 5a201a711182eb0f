"""Training text models (the attacker's side): AdamW with warm-up, the recipe transformers need.

The core's ``train_model`` uses SGD, which trains randomly initialised transformers poorly;
this loop uses AdamW with β = (0.9, 0.98) as fairseq's transformer recipe in the NLG-backdoor
scripts, a linear warm-up then cosine decay, gradient clipping at 1, and seeded shuffling, so
the same seed gives the same model on CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nft.core import NonFiniteLossError
from nft.core.data import move_to
from nft.core.purify import resolve_device

__all__ = ["TextTrainConfig", "train_text_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextTrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    """Fraction of the steps spent warming the rate up linearly."""
    clip: float = 1.0
    seed: int = 0
    device: str | None = None
    progress: bool = True


def _rate(step: int, total: int, warmup: float) -> float:
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_text_model(model: nn.Module, dataset: Dataset, config: TextTrainConfig, *, task: Any,
                     collate_fn: Callable[[list], Any],
                     on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train ``model`` in place on ``dataset`` (``(inputs, targets)`` batches from ``collate_fn``)."""
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
                        collate_fn=collate_fn, drop_last=len(dataset) > config.batch_size)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    total = max(1, config.epochs * len(loader))
    step = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        with tqdm(total=total, desc="train", unit="step", disable=not config.progress, leave=False) as bar:
            for epoch in range(config.epochs):
                model.train()
                for inputs, targets in loader:
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * _rate(step, total, config.warmup)
                    inputs, targets = move_to(inputs, device), move_to(targets, device)
                    loss = task.loss(task.forward(model, inputs), targets)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(
                            f"training loss became {float(loss)} at step {step}; lower the learning rate"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                    optimizer.step()
                    step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                log.info("epoch %d/%d: last loss %.4f", epoch + 1, config.epochs, float(loss.detach()))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, model)
    model.eval()
    return model
