"""Mixing augmentations for point clouds (NFT's only source of unusual inputs).

All three take a batch ``(B, N, 3)`` with labels and return a :class:`nft.core.Mixed`: the
mixed clouds and the two label sets with scalar weights summing to 1, so the core's
``mixed_loss`` applies unchanged. Partners come from a seeded permutation of the batch and the
mixing ratio from the loop's seeded ``rng``, so a run is reproducible.

* :class:`PointMixup` (Chen et al., ECCV 2020): interpolate every point with its partner under
  the optimal one-to-one assignment between the two clouds (the Earth Mover's Distance
  matching), ``x̃ = (1 − λ)·x + λ·π*(x')``. λ ~ Beta(0.4, 0.4), the paper's README setting.
  The assignment is exact (Hungarian, ``scipy.optimize.linear_sum_assignment``); the reference
  uses an approximate auction solver for speed on GPU.
* :class:`RSMix` (Lee et al., CVPR 2021): replace a rigid subset of a cloud — the k points
  nearest a random query point — by the k points nearest a random query point of the partner,
  translated so the query points coincide; λ = k / N. The reference's k-NN variant
  (``cut_points_knn``) draws the subset size from Beta(1, 1); one size per batch here, which
  keeps λ a scalar.
* :class:`PointWiseMixUp`: the core's MixUp on coordinates, point i with point i; clouds are
  unordered, so this pairs arbitrary points — the naive baseline the two above improve on.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from nft.core import ConfigError, Mixed, MixUp
from nft.core.augment import permute_batch

__all__ = ["POINT_AUGMENTATIONS", "POINT_MIXES", "PointMix", "PointMixup", "PointWiseMixUp", "RSMix", "optimal_assignment"]


def _check_batch(inputs, who: str) -> None:
    if not isinstance(inputs, Tensor) or inputs.ndim != 3 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ConfigError(f"{who} mixes (batch, points, coords) float tensors, got {shape}")


def optimal_assignment(a: Tensor, b: Tensor) -> Tensor:
    """For each pair of clouds, the permutation of ``b``'s points minimising Σ|a_i − b_π(i)|².

    ``a``, ``b``: ``(B, N, 3)``; returns ``(B, N)`` indices into ``b``. Exact (Hungarian).
    """
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(a.detach().double().cpu(), b.detach().double().cpu()).pow(2).numpy()
    out = np.empty(cost.shape[:2], dtype=np.int64)
    for i in range(cost.shape[0]):
        rows, cols = linear_sum_assignment(cost[i])
        out[i, rows] = cols
    return torch.from_numpy(out).to(a.device)


class _PointMix:
    name = "point-mix"

    def hooks(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()


class PointMixup(_PointMix):
    """Interpolation along the optimal point assignment (see the module docstring)."""

    name = "pointmixup"

    def __init__(self, alpha: float = 0.4) -> None:
        if not alpha > 0:
            raise ConfigError(f"PointMixup alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        _check_batch(inputs, "PointMixup")
        lam = float(rng.beta(self.alpha, self.alpha))
        order = torch.randperm(inputs.shape[0], generator=generator)
        partner = permute_batch(inputs, order)
        assign = optimal_assignment(inputs, partner)
        matched = torch.gather(partner, 1, assign.unsqueeze(-1).expand_as(partner))
        mixed = (1.0 - lam) * inputs + lam * matched
        return Mixed(mixed, ((targets, 1.0 - lam), (permute_batch(targets, order), lam)))

    def __repr__(self) -> str:
        return f"PointMixup(alpha={self.alpha})"


class RSMix(_PointMix):
    """Rigid subset mix, k-NN variant (see the module docstring)."""

    name = "rsmix"

    def __init__(self, beta: float = 1.0, max_fraction: float = 1.0) -> None:
        if not beta > 0:
            raise ConfigError(f"RSMix beta must be positive, got {beta}")
        if not 0 < max_fraction <= 1:
            raise ConfigError(f"RSMix max_fraction must be in (0, 1], got {max_fraction}")
        self.beta, self.max_fraction = float(beta), float(max_fraction)

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        _check_batch(inputs, "RSMix")
        b, n, _ = inputs.shape
        k = int(round(float(rng.beta(self.beta, self.beta)) * self.max_fraction * n))
        order = torch.randperm(b, generator=generator)
        if k == 0:
            return Mixed(inputs.clone(), ((targets, 1.0), (permute_batch(targets, order), 0.0)))
        partner = permute_batch(inputs, order)
        q_a = torch.randint(n, (b,), generator=generator).to(inputs.device)
        q_b = torch.randint(n, (b,), generator=generator).to(inputs.device)
        rows = torch.arange(b, device=inputs.device)
        centre_a, centre_b = inputs[rows, q_a], partner[rows, q_b]  # (B, 3)
        near_a = ((inputs - centre_a.unsqueeze(1)) ** 2).sum(-1).topk(k, largest=False).indices
        near_b = ((partner - centre_b.unsqueeze(1)) ** 2).sum(-1).topk(k, largest=False).indices
        moved = torch.gather(partner, 1, near_b.unsqueeze(-1).expand(-1, -1, 3))
        moved = moved - centre_b.unsqueeze(1) + centre_a.unsqueeze(1)
        mixed = inputs.clone()
        mixed.scatter_(1, near_a.unsqueeze(-1).expand(-1, -1, 3), moved)
        lam = k / n
        return Mixed(mixed, ((targets, 1.0 - lam), (permute_batch(targets, order), lam)))

    def __repr__(self) -> str:
        return f"RSMix(beta={self.beta})"


class PointWiseMixUp(MixUp):
    """The core's tensor MixUp applied to coordinates, point by point."""

    name = "mixup"

    def __call__(self, inputs, targets, *, rng, generator) -> Mixed:
        _check_batch(inputs, "PointWiseMixUp")
        return super().__call__(inputs, targets, rng=rng, generator=generator)

    def __repr__(self) -> str:
        return f"PointWiseMixUp(alpha={self.alpha})"


class PointMix(_PointMix):
    """Per batch, PointMixup or RSMix with probability ``p_rsmix`` (the modality's NFT default).

    The two are complementary: PointMixup moves every point a little (shape interpolation),
    RSMix moves some points a lot (a foreign part at a new place). Inserted-point and
    deformation triggers each resemble one of the two.
    """

    name = "pointmix"

    def __init__(self, p_rsmix: float = 0.5, alpha: float = 0.4, beta: float = 1.0, tilt: float = 0.0) -> None:
        if not 0 <= p_rsmix <= 1:
            raise ConfigError(f"PointMix p_rsmix must be in [0, 1], got {p_rsmix}")
        if not 0 <= tilt <= 180:
            raise ConfigError(f"PointMix tilt must be in [0, 180] degrees, got {tilt}")
        self.p_rsmix, self.tilt = float(p_rsmix), float(tilt)
        self.pointmixup, self.rsmix = PointMixup(alpha), RSMix(beta)

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        use_rsmix = float(rng.random()) < self.p_rsmix
        if self.tilt > 0:
            _check_batch(inputs, "PointMix")
            inputs = random_tilt(inputs, self.tilt, generator)
        chosen = self.rsmix if use_rsmix else self.pointmixup
        return chosen(inputs, targets, rng=rng, generator=generator)

    def __repr__(self) -> str:
        return (f"PointMix(p_rsmix={self.p_rsmix}, alpha={self.pointmixup.alpha}, beta={self.rsmix.beta}, "
                f"tilt={self.tilt})")


def random_tilt(points: Tensor, max_degrees: float, generator: torch.Generator) -> Tensor:
    """Rotate every cloud about its centroid by random angles in ±``max_degrees`` about x and y.

    A generic orientation augmentation (upright data sets are usually augmented by rotations):
    it shows NFT clean shapes in orientations the clean set lacks, which a fixed-rotation
    trigger (PointBA-O) hides in; it does not use the trigger.
    """
    b = points.shape[0]
    ang = (torch.rand(b, 2, generator=generator) * 2 - 1) * np.deg2rad(max_degrees)
    cx, sx, cy, sy = ang[:, 0].cos(), ang[:, 0].sin(), ang[:, 1].cos(), ang[:, 1].sin()
    one, zero = torch.ones(b), torch.zeros(b)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(b, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(b, 3, 3)
    rot = (ry @ rx).to(points)
    centre = points.mean(dim=1, keepdim=True)
    return (points - centre) @ rot.transpose(1, 2) + centre


POINT_AUGMENTATIONS = {"pointmixup": PointMixup, "rsmix": RSMix, "mixup": PointWiseMixUp, "pointmix": PointMix,
                       "pointmix-tilt": lambda: PointMix(tilt=45.0)}
POINT_MIXES = POINT_AUGMENTATIONS
