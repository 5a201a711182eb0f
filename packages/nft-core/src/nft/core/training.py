"""Training a (backdoored) model: the plain supervised loop every modality's ``nft attack`` uses.

SGD with Nesterov-free momentum 0.9, weight decay 5e-4 and a one-cycle schedule (warm-up to
``lr`` then cosine to 0) — the recipe that trains small ResNets to convergence in few epochs
on CPU. Shuffling is seeded, so the same seed gives the same model on CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .augment import mixed_loss, Mixed
from .data import collate, move_to
from .errors import NonFiniteLossError
from .purify import resolve_device
from .tasks import ClassificationTask, Task

__all__ = ["OneCycleSGD", "TrainConfig", "train_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.15
    """Fraction of the steps spent warming the rate up linearly (one-cycle)."""
    seed: int = 0
    device: str | None = None
    progress: bool = True
    num_workers: int = 0
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` autocast (GPU users)."""
    channels_last: bool = False


def one_cycle(step: int, total: int, warmup: float) -> float:
    """Multiplier of the peak rate at ``step`` of ``total``: linear warm-up, then cosine to 0."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


class OneCycleSGD:
    """The recipe's optimiser step: SGD on ``params`` with the one-cycle rate over ``total`` steps.

    :meth:`update` does one checked step: it sets the rate for this step, stops with an error
    naming the fix if the loss is not finite, and runs backward and the optimiser step (through
    ``scaler`` under fp16 autocast). ``extras`` are other optimisers trained from the same loss (a
    trigger generator learned jointly with the classifier); their rates follow the same schedule,
    each scaled from its own starting rate. ``train_model`` and the learned image attacks' loop
    step through this, so they train with one schedule and fail the same way. (Text models use
    their own AdamW loop, ``nft.nlp.training``.)
    """

    def __init__(self, params, config: TrainConfig, total: int, *,
                 extras: Iterable[torch.optim.Optimizer] = (), scaler=None, desc: str = "training"):
        self.config, self.total, self.desc, self.scaler = config, max(1, int(total)), desc, scaler
        self.optimizer = torch.optim.SGD(list(params), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.extras = list(extras)
        self._extra_lrs = [[group["lr"] for group in other.param_groups] for other in self.extras]
        self.count = 0

    def update(self, loss: torch.Tensor) -> None:
        factor = one_cycle(self.count, self.total, self.config.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * factor
        for other, lrs in zip(self.extras, self._extra_lrs):
            for group, lr in zip(other.param_groups, lrs):
                group["lr"] = lr * factor
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{self.desc} loss became {float(loss.detach())} at step "
                                     f"{self.count}; lower the learning rate (--lr)")
        optimizers = [self.optimizer, *self.extras]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            for optimizer in optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        self.count += 1


def train_model(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    task: Task | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    extra_loss: Callable[[nn.Module, Any, Any], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` on ``dataset`` (in place) and return it in eval mode.

    Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` and each rank reads a
    disjoint shard of every epoch's shuffled order, with ``batch_size / world_size`` per rank.
    """
    from torch.utils.data import DistributedSampler
    from tqdm.auto import tqdm

    from .distributed import current, rank_device
    from .precision import autocast, check_precision, grad_scaler, to_memory_format

    check_precision(config.precision)
    task = task or ClassificationTask()
    device = rank_device(resolve_device(config.device))
    info = current()
    to_memory_format(model.to(device), config.channels_last).train()
    trained = model
    if info.distributed:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = -(-config.batch_size // info.world_size)
    sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed) if info.distributed else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        drop_last=len(dataset) > config.batch_size, generator=generator,
                        num_workers=config.num_workers, collate_fn=collate_fn or collate)
    total = config.epochs * len(loader)
    sgd = OneCycleSGD([p for p in model.parameters() if p.requires_grad], config, total,
                      scaler=grad_scaler(device, config.precision))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        bar = tqdm(total=total, desc="train", unit="step", disable=not config.progress, leave=False)
        with bar:
            for epoch in range(config.epochs):
                trained.train()
                if sampler is not None:
                    sampler.set_epoch(epoch)
                for inputs, targets in loader:
                    inputs, targets = move_to(inputs, device), move_to(targets, device)
                    with autocast(device, config.precision):
                        outputs = task.forward(trained, to_memory_format(inputs, config.channels_last))
                        loss = mixed_loss(task, outputs, Mixed(inputs, ((targets, 1.0),)))
                        if extra_loss is not None:
                            loss = loss + extra_loss(model, inputs, targets)
                    sgd.update(loss)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch, model)
    model.eval()
    return model
