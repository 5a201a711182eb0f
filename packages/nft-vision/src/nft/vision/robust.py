"""L∞ adversarial examples and adversarial training, for the attacks that perturb images against
a model (CLB).

The label-consistent backdoor (Turner, Tsipras & Madry, 2019) makes its poisoned target-class
images hard to classify with adversarial perturbations, and it takes them from an *adversarially
trained* model: a robust model's adversarial examples carry features of other classes rather
than imperceptible noise, so the network cannot fit them from their content and leans on the
trigger instead. :func:`adversarial_train` makes such a model with the training recipe of the
clean models here; :func:`linf_pgd` is the one L∞ attack both the training and the poisoning use.

Two training adversaries, chosen by the number of steps:

* one step: FGSM from a uniform random start in the ε-ball, step 1.25·ε (Wong, Rice & Kolter,
  ICLR 2020, "Fast is better than free"), at the cost of one extra forward and backward pass
  per batch;
* k > 1 steps: PGD from a random start with step 2.5·ε / k (Madry et al., ICLR 2018), k extra
  passes per batch.

Budgets are given in raw pixel units ([0, 1]) and converted to the model's normalised inputs
through the run's :class:`~nft.core.InputSpace`, so the ball and the valid-pixel box are the same
in both spaces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nft.core import ConfigError, InputSpace
from nft.core.training import TrainConfig

__all__ = ["adversarial_train", "l2_pgd", "linf_pgd", "training_step_size"]

log = logging.getLogger(__name__)

Bound = torch.Tensor | float


def linf_pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
             eps: Bound, step: Bound, steps: int, lower: Bound = 0.0, upper: Bound = 1.0,
             random_start: bool = False) -> torch.Tensor:
    """Untargeted L∞ PGD: ``steps`` signed-gradient ascent steps of size ``step`` on the
    cross-entropy of ``forward(x')`` against ``y``, each projected onto the ε-ball around ``x`` and
    the box ``[lower, upper]``. ``eps``, ``step`` and the bounds may be per-channel tensors
    (broadcastable to one sample). A random start draws uniformly from the ball with the global
    torch generator, which the training loops seed. Returns the detached adversarial batch."""
    def like(value: Bound) -> torch.Tensor:
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)

    eps, step, lower, upper = like(eps), like(step), like(lower), like(upper)
    x = x.detach()
    adv = x.clone()
    if random_start:
        adv = adv + (torch.rand_like(x) * 2 - 1) * eps
        adv = torch.max(torch.min(adv, upper), lower)
    for _ in range(int(steps)):
        adv.requires_grad_(True)
        loss = F.cross_entropy(forward(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.max(torch.min(adv, x + eps), x - eps)
        adv = torch.max(torch.min(adv, upper), lower)
    return adv.detach()


def l2_pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
           eps: float, step: float, steps: int, lower: Bound = 0.0, upper: Bound = 1.0) -> torch.Tensor:
    """Untargeted L2 PGD: ``steps`` ascent steps of L2 length ``step`` along each sample's
    normalised gradient of the cross-entropy, each projected onto the L2 ball of radius ``eps``
    around ``x`` (per sample) and the box ``[lower, upper]``. Unlike an L∞ step, which moves every
    pixel with a non-zero gradient by the full step, an L2 step goes where the gradient is large:
    on a robust model that is the object's shape, not a noise texture over the whole image."""
    def like(value: Bound) -> torch.Tensor:
        return torch.as_tensor(value, dtype=x.dtype, device=x.device)

    lower, upper = like(lower), like(upper)
    x = x.detach()
    view = (-1,) + (1,) * (x.dim() - 1)
    adv = x.clone()
    for _ in range(int(steps)):
        adv.requires_grad_(True)
        loss = F.cross_entropy(forward(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        delta = adv.detach() + float(step) * grad - x
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
        adv = x + delta * torch.clamp(float(eps) / length, max=1.0)
        adv = torch.max(torch.min(adv, upper), lower)
    return adv.detach()


def training_step_size(eps: float, steps: int) -> float:
    """The training adversary's step: 1.25·ε for FGSM with a random start (Wong et al. 2020),
    2.5·ε / k for k-step PGD (Madry et al. 2018)."""
    return 1.25 * eps if steps == 1 else 2.5 * eps / steps


def adversarial_train(model: nn.Module, dataset: Dataset, config: TrainConfig, space: InputSpace, *,
                      eps: float, steps: int = 1) -> nn.Module:
    """Train ``model`` (in place) on ``dataset``'s adversarial examples only, and return it in eval
    mode.

    Each batch is replaced by its L∞ adversarial examples at ``eps`` (raw pixel units) against the
    model being trained (in train mode, as both recipes do), found from a random start by
    ``steps`` steps (:func:`training_step_size`), and the model takes one step of the clean
    models' recipe (SGD, one-cycle rate: :func:`nft.vision.learned_common.train_loop`) on their
    loss. Deterministic per ``config.seed``: the shuffling, the augmentation and the random starts
    all draw from generators the loop seeds.
    """
    from .learned_common import seeded_loader, train_loop

    if not 0 < float(eps) < 1:
        raise ConfigError(f"the adversarial-training budget must be in (0, 1) pixel units, got {eps}")
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"adversarial training needs at least one attack step, got {steps}")
    scale = torch.as_tensor(space.scale, dtype=torch.float32)
    ball = float(eps) * scale
    stride = training_step_size(float(eps), int(steps)) * scale

    def step(net: nn.Module, batches: tuple, epoch: int) -> torch.Tensor:
        x, y = batches[0]
        adv = linf_pgd(net, x, y, eps=ball, step=stride, steps=int(steps),
                       lower=space.lower, upper=space.upper, random_start=True)
        return F.cross_entropy(net(adv), y)

    loader = seeded_loader(dataset, config.batch_size, config.seed)
    log.info("adversarial training: L∞ ε = %.4f, %d-step adversary, %d epochs", eps, steps, config.epochs)
    return train_loop(model, [loader], config, step, desc="robust train")
