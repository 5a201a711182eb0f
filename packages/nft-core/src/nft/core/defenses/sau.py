"""SAU: Shared Adversarial Unlearning (Wei, Zhang, Zha, Wu, NeurIPS 2023).

Poisoned samples act like adversarial examples *shared* by the backdoored model and any model
that keeps the backdoor. SAU keeps a frozen copy of the backdoored model (the reference) and,
for every clean batch:

1. **shared PGD** (maximisation): per-sample perturbations within an L∞ ball, initialised at
   +bound, take signed steps on ``β₁ · L_adv + β₂ · L_share``: ``L_adv`` is minus the loss of both
   models on samples not yet fooled, ``L_share`` the Jensen–Shannon divergence between the two
   models' predictions on samples whose adversarial labels are not yet shared; it stops early
   once every sample is a shared adversarial example;
2. **unlearning** (minimisation): ``λ₁ · L(x, y) + λ₂ · L(x + δ, y) + λ₃ · L_SAR`` where
   ``L_SAR`` lowers, on samples that fool the reference model, the current model's probability of
   the reference model's adversarial label.

Defaults are the official implementation's (BackdoorBench ``defense/sau.py``, written by the first
author, with ``config/defense/sau/config.yaml``): Adam lr 1e-4, cosine schedule, batch 256,
L∞ bound 0.2 in pixel units, PGD step 0.2, 5 PGD steps, init "max", β₁ = 0.01, β₂ = 1,
λ₁ = 1, λ₂ = 0, λ₃ = 1, one outer step per batch, both models in eval mode (BN frozen). The
official 100 rounds over 5 % of CIFAR-10 (2,500 images, 10 batches of 256) are 1,000 unlearning
steps; ``steps`` counts them whatever the clean-set size. δ lives in pixel units and is
converted with the modality's ``InputSpace.scale``; as in the official code the perturbed input
is not clipped to the valid range. The models' predictions on the clean batch are computed once
per batch instead of at every PGD step (they do not change during PGD).

SAU applies to classifiers (it compares class labels and probabilities).
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

__all__ = ["SAU", "SAUConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAUConfig(DefenseConfig):
    """SAU's knobs; defaults from BackdoorBench's sau config (the official implementation)."""

    steps: int = 1000
    """Unlearning steps (100 rounds × 10 batches of 256)."""
    batch_size: int = 256
    lr: float = 1e-4
    """Adam rate of the model's weights, cosine-annealed to 0."""
    bound: float = 0.2
    """L∞ bound of the perturbation, pixel units (``trigger_norm``)."""
    pgd_lr: float = 0.2
    """PGD step (``adv_lr``)."""
    pgd_steps: int = 5
    """PGD steps (``adv_steps``)."""
    beta1: float = 0.01
    """Weight of the adversarial loss in PGD."""
    beta2: float = 1.0
    """Weight of the shared (JS-divergence) loss in PGD."""
    lambda1: float = 1.0
    """Weight of the clean loss."""
    lambda2: float = 0.0
    """Weight of adversarial training on the perturbed inputs (0: off, as in the official config)."""
    lambda3: float = 1.0
    """Weight of the shared adversarial risk."""
    train_mode: bool = False
    """Update normalisation statistics during unlearning (off in the official code)."""

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.bound > 0, f"bound must be > 0, got {self.bound}"),
            (self.pgd_steps >= 1, f"pgd_steps must be ≥ 1, got {self.pgd_steps}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"SAUConfig: {message}")


class SAU(Defense):
    config_class = SAUConfig
    needs_input_space = True

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: SAUConfig = self.config
        device = C.device_of(cfg)
        model.to(device).eval()
        reference = C.copy_model(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        history = []
        with C.seeded_run(device, cfg.seed), C.bar(cfg.steps, self.name, cfg.progress) as pbar:
            for step in range(cfg.steps):
                for group in opt.param_groups:
                    group["lr"] = C.cosine(cfg.lr, step, cfg.steps)
                inputs, targets, _, _ = batches.get(step)
                space = context.input_space
                shape = space.sample_shape(inputs)
                if not (isinstance(targets, torch.Tensor) and targets.ndim == 1 and not targets.is_floating_point()):
                    raise ConfigError("SAU compares class labels, so it needs a classification clean set "
                                      "(integer labels); choose another defense for this task")
                n = space.batch_size(inputs)
                scale = C.pixel_scale(space, torch.zeros((), device=targets.device))
                delta = self._shared_pgd(model, reference, inputs, targets, scale, context, (n, *shape))
                perturbed = space.perturb(inputs, delta * scale)
                model.train(cfg.train_mode)
                logits, adv_logits = C.tensor_outputs(
                    context.task.forward(model, space.concat(inputs, perturbed))).split(n)
                model.eval()
                with torch.no_grad():
                    ref_clean = C.tensor_outputs(context.task.forward(reference, inputs)).argmax(1)
                    ref_adv = C.tensor_outputs(context.task.forward(reference, perturbed)).argmax(1)
                fooled_ref = (ref_adv != targets) & (ref_adv != ref_clean)
                loss_clean = F.cross_entropy(logits, targets)
                loss_adv = F.cross_entropy(adv_logits, targets)
                if fooled_ref.any():  # push down p(reference's adversarial label) where it is fooled
                    probs = F.softmax(adv_logits, dim=1)
                    hot = F.one_hot(ref_adv, num_classes=probs.shape[1]).to(probs.dtype)
                    pos = (probs * hot).sum(1)[fooled_ref]
                    neg = (probs * (1 - hot)).sum(1)[fooled_ref]
                    loss_shared = (-torch.log(1e-6 + neg.clamp(max=0.999)).sum()
                                   - torch.log(1 + 1e-6 - pos.clamp(min=0.001)).sum()) / 2 / n
                else:
                    loss_shared = torch.zeros((), device=device)
                loss = cfg.lambda1 * loss_clean + cfg.lambda2 * loss_adv + cfg.lambda3 * loss_shared
                C.check_finite(loss, self.name, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                pbar.update(1)
                if (step + 1) % max(1, cfg.steps // 5) == 0:
                    history.append({"step": step + 1, "loss": float(loss.detach()),
                                    "loss_shared": float(loss_shared.detach()),
                                    "reference_fooled": float(fooled_ref.float().mean())})
        model.eval()
        return DefenseOutcome(model=model, history=history)

    def _shared_pgd(self, model, reference, inputs, targets, scale, context, shape) -> torch.Tensor:
        """Per-sample perturbations (pixel units, ``shape`` = (batch, *sample)) fooling both
        models towards a shared label."""
        cfg: SAUConfig = self.config
        task, space = context.task, context.input_space
        n = shape[0]
        with torch.no_grad():
            own = C.tensor_outputs(task.forward(model, inputs)).argmax(1)
            own_ref = C.tensor_outputs(task.forward(reference, inputs)).argmax(1)
        delta = torch.full(shape, cfg.bound, device=targets.device)  # init "max", inside the L∞ ball
        with C.frozen(model):
            for _ in range(cfg.pgd_steps):
                delta.requires_grad_(True)
                x = space.perturb(inputs, delta * scale)
                logits = C.tensor_outputs(task.forward(model, x))
                logits_ref = C.tensor_outputs(task.forward(reference, x))
                label, label_ref = logits.argmax(1), logits_ref.argmax(1)
                fooled, fooled_ref = label != own, label_ref != own_ref
                shared = fooled & fooled_ref & (label == label_ref)
                loss_adv = torch.zeros((), device=targets.device)
                if (~fooled).any():
                    loss_adv = loss_adv + F.cross_entropy(logits, targets, reduction="none")[~fooled].sum()
                if (~fooled_ref).any():
                    loss_adv = loss_adv + F.cross_entropy(logits_ref, targets, reduction="none")[~fooled_ref].sum()
                loss_adv = -loss_adv / 2 / n
                p = F.softmax(logits, dim=1).clamp(min=1e-8)
                q = F.softmax(logits_ref, dim=1).clamp(min=1e-8)
                m = 0.5 * (p + q)
                js = 0.5 * (p * p.log() + q * q.log()) - 0.5 * (p * m.log() + q * m.log())
                loss_share = js[~shared].sum(dim=1).sum() / n
                loss = cfg.beta1 * loss_adv + cfg.beta2 * loss_share
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():  # descend on β₁·(−L) + β₂·JS, project onto the L∞ ball
                    delta = (delta - cfg.pgd_lr * grad.sign()).clamp(-cfg.bound, cfg.bound)
                if bool(shared.all()):
                    break
        return delta.detach()


DEFENSES.add("sau", lambda config=None: SAU("sau", config), family="unlearning")
