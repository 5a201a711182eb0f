"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng et al., ICLR 2022).

Backdoor removal as a minimax problem over one *universal* additive perturbation δ:
``min_θ max_δ  L(f_θ(x + δ), y)``. Each round:

1. **inner maximisation**: δ (init 0) takes one SGD step per clean batch on
   ``−L(f(x + δ), f(x)) + 0.001 · ‖δ‖²`` (lr 10): the universal perturbation that changes the
   model's own predictions the most, a proxy for the trigger;
2. **outer minimisation**: for every batch, the loss of the model on the batch with δ added
   to a ``portion`` of its samples is minimised with the *implicit hypergradient*: δ is seen as
   the fixed point of the inner gradient-descent map ``Φ(δ, θ) = δ − 0.1 · ∇_δ L_inner``, and
   ``dL/dθ = ∂L/∂θ + (∂Φ/∂θ)ᵀ v`` with ``v = Σ_k (∂Φ/∂δ)ᵀᵏ ∂L/∂δ`` computed by ``K``
   fixed-point iterations (Neumann series; the official ``hypergrad.fixed_point``).

Defaults are the official code's (YiZeng623/I-BAU, ``defense.py``): 5 rounds, K = 5, batch 100,
Adam lr 1e-3 on all weights, δ SGD lr 10 with 0.001‖δ‖², inner map step 0.1, ``portion`` 0.01 of
each batch patched (one image of 100; at least one here), model in eval mode throughout.
The official code makes one pass over 5,000 unlearning images per round, i.e. 50 batches of 100;
a round here is ``steps_per_round`` = 50 batches drawn with replacement from the clean set
whatever its size (with 100 clean images, a round is 50 passes over them). δ lives in pixel
units (the official code works on [0, 1] images) and is converted with the modality's
``InputSpace.scale``; as in the official code it is not clipped to the image range.

Deviation: the official fixed-point map always evaluates the inner loss on the round's first
batch; here it uses the current batch (the same quantity in expectation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset

from ..config import DefenseConfig
from ..errors import ConfigError
from . import _common as C
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["IBAU", "IBAUConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IBAUConfig(DefenseConfig):
    """I-BAU's knobs; defaults from the official ``defense.py``."""

    rounds: int = 5
    """Unlearning rounds (``--n_rounds``); each re-solves the universal perturbation from 0."""
    steps_per_round: int = 50
    """Clean batches per round, for both the perturbation pass and the unlearning pass
    (the official 5,000 images / batch 100)."""
    batch_size: int = 100
    lr: float = 0.001
    """Adam learning rate of the model's weights (``--lr``, ``--optim Adam``)."""
    fixed_point_steps: int = 5
    """K, the fixed-point iterations of the hypergradient (``--K``)."""
    inner_lr: float = 0.1
    """Step of the inner gradient-descent map Φ (``hg.GradientDescent(loss_inner, 0.1)``)."""
    perturbation_lr: float = 10.0
    """SGD rate of the universal perturbation (``lr=10``)."""
    perturbation_reg: float = 0.001
    """Weight of ‖δ‖² (pixel units) in the inner loss."""
    portion: float = 0.01
    """Share of each batch that carries δ in the unlearning loss (at least one sample)."""

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, f"rounds must be ≥ 1, got {self.rounds}"),
            (self.steps_per_round >= 1, f"steps_per_round must be ≥ 1, got {self.steps_per_round}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.fixed_point_steps >= 1, f"fixed_point_steps must be ≥ 1, got {self.fixed_point_steps}"),
            (0 < self.portion <= 1, f"portion must be in (0, 1], got {self.portion}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"IBAUConfig: {message}")


class IBAU(Defense):
    config_class = IBAUConfig
    needs_input_space = True

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        cfg: IBAUConfig = self.config
        device = C.device_of(cfg)
        task, space = context.task, context.input_space
        model.to(device).eval()  # the official code keeps the model in eval mode
        params = [p for p in model.parameters() if p.is_floating_point()]
        for p in params:
            p.requires_grad_(True)
        outer_opt = torch.optim.Adam(params, lr=cfg.lr)
        batches = C.make_batches(clean, cfg.batch_size, cfg.seed, device, context.collate_fn)
        total = cfg.rounds * cfg.steps_per_round
        history = []
        # the hypergradient differentiates through a gradient, and the fused attention kernels
        # have no double backward (transformers' text models use them): the math kernel has
        with C.seeded_run(device, cfg.seed), sdpa_kernel(SDPBackend.MATH), \
                C.bar(total, self.name, cfg.progress) as pbar:
            for r in range(cfg.rounds):
                ids = [r * cfg.steps_per_round + i for i in range(cfg.steps_per_round)]
                delta = self._perturbation(model, batches, ids, context)
                for step in ids:
                    inputs, targets, _, generator = batches.get(step)
                    scale = C.pixel_scale(space, delta)
                    loss = self._hypergradient(model, params, inputs, targets, delta, scale, generator,
                                               task, space)
                    C.check_finite(loss, self.name, step)
                    outer_opt.step()
                    outer_opt.zero_grad(set_to_none=True)
                    pbar.update(1)
                history.append({"round": r + 1, "loss": float(loss),
                                "perturbation_l2": float(delta.norm())})
        model.eval()
        return DefenseOutcome(model=model, history=history)

    def _perturbation(self, model: nn.Module, batches, ids: list[int],
                      context: DefenseContext) -> torch.Tensor:
        """One pass of SGD on the universal perturbation (pixel units), maximising the change."""
        cfg: IBAUConfig = self.config
        task, space = context.task, context.input_space
        delta = None
        with C.frozen(model):
            for step in ids:
                inputs, _, _, _ = batches.get(step)
                if delta is None:
                    shape = space.sample_shape(inputs)
                    delta = torch.zeros((1, *shape), device=C.device_of(cfg), requires_grad=True)
                    opt = torch.optim.SGD([delta], lr=cfg.perturbation_lr)
                scale = C.pixel_scale(space, delta)
                with torch.no_grad():
                    own = C.predicted_targets(task, task.forward(model, inputs))
                loss = -task.loss(task.forward(model, space.perturb(inputs, delta * scale)), own)
                loss = loss + cfg.perturbation_reg * delta.pow(2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return delta.detach()

    def _hypergradient(self, model, params, inputs, targets, delta, scale, generator, task, space) -> float:
        """Set ``p.grad`` of every weight to I-BAU's implicit hypergradient on this batch."""
        cfg: IBAUConfig = self.config
        n = space.batch_size(inputs)
        count = max(1, int(n * cfg.portion))
        chosen = torch.randperm(n, generator=generator)[:count].to(delta.device)
        patch_rows = torch.zeros(n, device=delta.device, dtype=delta.dtype)
        patch_rows[chosen] = 1.0
        patch_rows = patch_rows.view(n, *([1] * (delta.ndim - 1)))

        def outer_loss(d: torch.Tensor) -> torch.Tensor:
            return task.loss(task.forward(model, space.perturb(inputs, patch_rows * d * scale)), targets)

        def fixed_point_map(d: torch.Tensor) -> torch.Tensor:  # one inner gradient step on δ
            inner = -task.loss(task.forward(model, space.perturb(inputs, d * scale)), targets)
            inner = inner + cfg.perturbation_reg * d.pow(2).sum()
            (g,) = torch.autograd.grad(inner, d, create_graph=True)
            return d - cfg.inner_lr * g

        d = delta.detach().clone().requires_grad_(True)
        o_loss = outer_loss(d)
        grads = torch.autograd.grad(o_loss, [d, *params], allow_unused=True)
        g_delta = grads[0]
        g_direct = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:])]
        mapped = fixed_point_map(d)
        v = torch.zeros_like(d)
        for _ in range(cfg.fixed_point_steps):  # v ← (∂Φ/∂δ)ᵀ v + ∂L/∂δ
            v_prev = v
            (jv,) = torch.autograd.grad(mapped, d, grad_outputs=v, retain_graph=True)
            v = jv + g_delta
            if float((v - v_prev).norm()) < 1e-10:
                break
        implicit = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
        for p, direct, extra in zip(params, g_direct, implicit):
            p.grad = direct + (extra if extra is not None else 0.0)
        return float(o_loss.detach())


DEFENSES.add("i-bau", lambda config=None: IBAU("i-bau", config), family="unlearning")
