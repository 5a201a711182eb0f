"""RNP: Reconstructive Neuron Pruning (Li et al., ICML 2023).

Unlearning exposes backdoor neurons; recovering tells them apart:

1. **unlearning**: a copy of the model takes gradient *ascent* steps on the clean loss until its
   accuracy on the clean batches of an epoch falls to ``clean_threshold`` (or ``unlearn_epochs``
   run out). Clean features are destroyed first; the backdoor survives;
2. **recovering**: on the unlearned copy (weights frozen), a mask ``m`` ∈ [0, 1] (init 1) on every
   normalisation γ is trained to *minimise* the clean loss. Masks of clean channels recover
   towards 1; backdoor channels, useless for clean data, stay low;
3. **pruning**: in the *original* model, γ of every channel whose recovered mask is ≤ the
   threshold is set to 0. Nothing else of the model changes (the first two stages work on a copy).

Defaults are the official code's (bboylyg/RNP, ``main.py``): unlearning SGD lr 0.01, momentum
0.9, weight decay 5e-4, gradient-norm clip 20, lr × 0.1 at epochs 10 and 20, at most 20 epochs,
stop at 20 % clean accuracy; recovering SGD lr 0.2, momentum 0.9, 20 epochs, loss 0.2 · L;
batch 128; model in train mode; masks on every normalisation layer, the stem's too. An epoch is
one pass over the clean set, as in the official code: ⌈n_clean / batch⌉ batches drawn with
replacement (4 for the official 500 images; 1 for 100 clean images, so unlearning is at most 20
steps and recovering 20 steps there; 24 for 3,000). ``steps_per_epoch`` fixes it instead.
Unlearning is sensitive to this granularity: the stop test runs once per epoch, and a model that
unlearns fast can overshoot the 20 % target within one long epoch, after which recovering cannot
bring clean channels back. The official code calls ``clip_grad_norm_`` before ``backward()``,
so it clips nothing; here the clip is applied to the real gradient, as intended.

Pruning threshold: as for ANP (see :mod:`nft.core.defenses.anp`), the official sweep over
0 → 0.9 by 0.05 is judged on the defender's clean set only: the largest threshold whose clean-set
accuracy stays within ``acc_tolerance`` of the unpruned model's; a fixed ``threshold`` skips it.
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

__all__ = ["RNP", "RNPConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RNPConfig(DefenseConfig):
    """RNP's knobs; defaults from the official ``main.py``."""

    batch_size: int = 128
    steps_per_epoch: int | None = None
    """Batches per epoch; ``None`` = one pass over the clean set, ⌈n_clean / batch_size⌉."""
    unlearn_epochs: int = 20
    """Maximum unlearning epochs (``--unlearning_epochs``)."""
    unlearn_lr: float = 0.01
    unlearn_milestones: tuple[int, ...] = (10, 20)
    """Epochs at which the unlearning rate is multiplied by 0.1 (``--schedule``)."""
    clean_threshold: float = 0.2
    """Stop unlearning once an epoch's clean accuracy is at most this (``--clean_threshold``)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_norm: float = 20.0
    """Gradient-norm clip during unlearning."""
    recover_epochs: int = 20
    recover_lr: float = 0.2
    alpha: float = 0.2
    """Scale of the recovering loss (``--alpha``)."""
    train_mode: bool = True
    """Normalisation layers use batch statistics while unlearning and recovering (official)."""
    threshold: float | None = None
    """Prune channels whose recovered mask is ≤ this; ``None`` chooses it on the clean set."""
    max_threshold: float = 0.9
    threshold_step: float = 0.05
    acc_tolerance: float = 0.1
    """Largest relative clean-set accuracy drop the chosen threshold may cost."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "unlearn_milestones", tuple(int(m) for m in self.unlearn_milestones))
        checks = [
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"steps_per_epoch must be ≥ 1 or None, got {self.steps_per_epoch}"),
            (self.unlearn_epochs >= 1, f"unlearn_epochs must be ≥ 1, got {self.unlearn_epochs}"),
            (self.recover_epochs >= 1, f"recover_epochs must be ≥ 1, got {self.recover_epochs}"),
            (self.unlearn_lr > 0 and self.recover_lr > 0, "learning rates must be > 0"),
            (0 <= self.clean_threshold <= 1, f"clean_threshold must be in [0, 1], got {self.clean_threshold}"),
            (self.threshold is None or 0 <= self.threshold <= 1,
             f"threshold must be in [0, 1] or None, got {self.threshold}"),
            (0 <= self.max_threshold <= 1, f"max_threshold must be in [0, 1], got {self.max_threshold}"),
            (self.threshold_step > 0, f"threshold_step must be > 0, got {self.threshold_step}"),
            (0 <= self.acc_tolerance < 1, f"acc_tolerance must be in [0, 1), got {self.acc_tolerance}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"RNPConfig: {message}")


class RNP(Defense):
    config_class = RNPConfig

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: RNPConfig = self.config
        device = C.device_of(cfg)
        model.to(device).eval()
        layers = C.norm_layers(model, self.name)
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        self._history: list[dict] = []
        self._per_epoch = cfg.steps_per_epoch or -(-len(clean) // cfg.batch_size)
        with C.seeded_run(device, cfg.seed), C.bar(
                (cfg.unlearn_epochs + cfg.recover_epochs) * self._per_epoch, self.name, cfg.progress) as pbar:
            work = C.copy_model(model)
            epochs = self._unlearn(work, batches, context, pbar)
            scores = self._recover(work, [n for n, _ in layers], batches, context, pbar)
        del work
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
        log.info("%s: unlearned %d epochs; pruned %d of %d channels at threshold %s",
                 self.name, epochs, pruned, total, threshold)
        model.eval()
        return DefenseOutcome(
            model=model, masks=scores, history=self._history,
            info={"unlearn_epochs": epochs, "threshold": threshold, "pruned_channels": pruned,
                  "channels": total, "threshold_sweep": sweep},
        )

    def _unlearn(self, work: nn.Module, batches, context: DefenseContext, pbar) -> int:
        cfg: RNPConfig = self.config
        task = context.task
        params = [p for p in work.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=cfg.unlearn_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        work.train(cfg.train_mode)
        step = 0
        for epoch in range(cfg.unlearn_epochs):
            lr = cfg.unlearn_lr * 0.1 ** sum(epoch >= m for m in cfg.unlearn_milestones)
            for group in opt.param_groups:
                group["lr"] = lr
            correct = seen = 0
            for _ in range(self._per_epoch):
                inputs, targets, _, _ = batches.get(step)
                outputs = task.forward(work, inputs)
                loss = task.loss(outputs, targets)
                C.check_finite(loss, self.name, step)
                correct, seen = _count(task, outputs, targets, correct, seen)
                opt.zero_grad(set_to_none=True)
                (-loss).backward()  # gradient ascent: unlearn the clean task
                nn.utils.clip_grad_norm_(params, max_norm=cfg.clip_norm)
                opt.step()
                step += 1
                pbar.update(1)
            accuracy = correct / seen if seen else None  # no accuracy outside classification
            self._history.append({"stage": "unlearn", "epoch": epoch + 1, "loss": float(loss.detach()),
                                  "accuracy": accuracy})
            if accuracy is not None and accuracy <= cfg.clean_threshold:
                return epoch + 1
        log.info("%s: unlearning ran all %d epochs (clean accuracy %s, target %.0f%%)", self.name,
                 cfg.unlearn_epochs, "n/a" if accuracy is None else f"{100 * accuracy:.1f}%",
                 100 * cfg.clean_threshold)
        return cfg.unlearn_epochs

    def _recover(self, work: nn.Module, names: list[str], batches, context: DefenseContext,
                 pbar) -> dict[str, torch.Tensor]:
        cfg: RNPConfig = self.config
        task = context.task
        modules = dict(work.named_modules())
        masks = {n: torch.ones_like(modules[n].weight, requires_grad=True) for n in names}
        net = C.Overridden(work, lambda: {f"{n}.weight": modules[n].weight * masks[n] for n in names})
        opt = torch.optim.SGD(list(masks.values()), lr=cfg.recover_lr, momentum=cfg.momentum)
        work.train(cfg.train_mode)
        step = 10**6  # batches distinct from the unlearning stage's
        with C.frozen(work):
            for epoch in range(cfg.recover_epochs):
                correct = seen = 0
                for _ in range(self._per_epoch):
                    inputs, targets, _, _ = batches.get(step)
                    outputs = task.forward(net, inputs)
                    loss = cfg.alpha * task.loss(outputs, targets)
                    C.check_finite(loss, self.name, step)
                    correct, seen = _count(task, outputs, targets, correct, seen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for m in masks.values():
                            m.clamp_(0.0, 1.0)
                    step += 1
                    pbar.update(1)
                self._history.append({"stage": "recover", "epoch": epoch + 1, "loss": float(loss.detach()),
                                      "accuracy": correct / seen if seen else None})
        return {n: m.detach().cpu() for n, m in masks.items()}


def _count(task, outputs, targets, correct: int, seen: int) -> tuple[int, int]:
    """Running clean accuracy of the batches (classification; other tasks count nothing)."""
    if isinstance(task, ClassificationTask):
        with torch.no_grad():
            correct += int((task.predict(outputs) == targets).sum())
            seen += int(targets.shape[0])
    return correct, seen


DEFENSES.add("rnp", lambda config=None: RNP("rnp", config), family="pruning")
