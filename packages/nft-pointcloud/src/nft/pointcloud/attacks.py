"""Point-cloud backdoor triggers: PointBA-I, PointBA-O, PCBA and IRBA.

A trigger maps one normalised cloud ``(N, 3)`` to its triggered version ``(N, 3)``,
deterministically, so the poisoned training set and the triggered test set are pure functions
of the run's spec. Point-inserting triggers keep the cloud size by overwriting a fixed set of
point slots (PCBA deletes random points before inserting its cluster; the points of our clouds
are in random order, so fixed slots are random points).

* ``pointba-i`` — the interaction trigger of PointBA (Li et al., ICCV 2021): a small ball of
  points at a fixed place next to the object.
* ``pointba-o`` — PointBA's orientation trigger: the whole cloud rotated by a fixed rotation.
  The paper uses it clean-label (only target-class samples are rotated, labels untouched);
  ``clean_label=True`` does that, the default poisons with changed labels like the others.
* ``pcba`` — Xiang et al., ICCV 2021 (github.com/zhenxianglance/PCBA): a cluster of 32 points
  on a small sphere whose *centre* is optimised against a surrogate classifier trained on the
  attacker's own small data set, to raise the target posterior while staying close to the
  object; the sphere radius matches the clouds' typical 4-NN spacing.
* ``irba`` — Gao et al., TIFS 2023 (github.com/KuofengGao/IRBA): a weighted local
  transformation (WLT): 16 anchors by farthest-point sampling, each applying a fixed rotation
  (5° about every axis) and scaling (×5) around itself, blended per point with Gaussian kernel
  weights (σ = 0.5), then the cloud is re-normalised.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nft.core import ConfigError

__all__ = ["IRBA", "PCBA", "PointBAI", "PointBAO", "PointTrigger", "rotation_matrix"]

log = logging.getLogger(__name__)


def rotation_matrix(degrees_xyz: tuple[float, float, float]) -> Tensor:
    """``R = Rz · Ry · Rx`` for rotations in degrees about x, y, z (applied as ``p @ R.T``)."""
    ax, ay, az = (math.radians(float(a)) for a in degrees_xyz)
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return (rz @ ry @ rx).float()


def _sphere_pattern(n: int, seed: int) -> Tensor:
    """``n`` fixed points on the unit sphere (the same pattern for every triggered cloud)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g)
    return p / p.norm(dim=1, keepdim=True)


def _slots(num_points: int, count: int, seed: int) -> Tensor:
    if count >= num_points:
        raise ConfigError(f"a trigger of {count} points does not fit clouds of {num_points} points")
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randperm(num_points, generator=g)[:count]


def _normalize(points: Tensor) -> Tensor:
    points = points - points.mean(dim=0, keepdim=True)
    scale = points.norm(dim=1).max()
    return points / scale if scale > 0 else points


class PointTrigger:
    """Base: ``trigger(points) -> points``; ``state()`` holds what a run must store."""

    name = "trigger"
    clean_label = False

    def __call__(self, points: Tensor) -> Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, Tensor]:
        return {}

    def load_state(self, state: dict[str, Tensor]) -> None:
        return None

    def describe(self) -> dict:
        return {"name": self.name, "clean_label": self.clean_label}


class _Cluster(PointTrigger):
    """Overwrite ``count`` fixed point slots with a sphere of ``radius`` points around ``center``."""

    def __init__(self, num_points: int, count: int, radius: float, center, seed: int) -> None:
        if count < 1:
            raise ConfigError(f"a point trigger needs at least 1 point, got {count}")
        if not radius > 0:
            raise ConfigError(f"trigger radius must be positive, got {radius}")
        self.num_points, self.count, self.radius, self.seed = num_points, count, float(radius), seed
        self.center = torch.as_tensor(center, dtype=torch.float32).reshape(3)
        self.pattern = _sphere_pattern(count, seed)
        self.slots = _slots(num_points, count, seed)

    def cluster(self) -> Tensor:
        return self.center + self.radius * self.pattern

    def __call__(self, points: Tensor) -> Tensor:
        if points.shape[0] != self.num_points:
            raise ConfigError(f"trigger made for {self.num_points}-point clouds got {points.shape[0]} points")
        out = points.clone()
        out[self.slots.to(points.device)] = self.cluster().to(points)
        return out

    def state(self) -> dict[str, Tensor]:
        return {"center": self.center.clone()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.center = state["center"].float().reshape(3)

    def describe(self) -> dict:
        return {**super().describe(), "points": self.count, "radius": self.radius,
                "center": [round(float(v), 4) for v in self.center]}


class PointBAI(_Cluster):
    """PointBA's interaction trigger: a ball of ``points`` points of ``radius`` at ``center``.

    PointBA describes the trigger as a small ball of points placed at a fixed position by the
    object; the size, radius and place here are this package's defaults for unit-ball clouds
    (a corner just off the object, 1/16 of the cloud's points).
    """

    name = "pointba-i"

    def __init__(self, num_points: int, points: int | None = None, radius: float = 0.08,
                 center: tuple[float, float, float] = (0.6, 0.6, 0.6), seed: int = 1) -> None:
        super().__init__(num_points, points or max(4, num_points // 16), radius, center, seed)


class PointBAO(PointTrigger):
    """PointBA's orientation trigger: rotate the whole cloud by fixed angles (degrees, x/y/z).

    The default tilts the (upright) object by 30° about x and 20° about y; the rotation is
    about the centroid, so the cloud stays normalised.
    """

    name = "pointba-o"

    def __init__(self, num_points: int, angles: tuple[float, float, float] = (30.0, 20.0, 0.0),
                 clean_label: bool = False) -> None:
        self.num_points = num_points
        self.angles = tuple(float(a) for a in angles)
        if len(self.angles) != 3:
            raise ConfigError(f"pointba-o angles are (x, y, z) degrees, got {angles}")
        self.rotation = rotation_matrix(self.angles)
        self.clean_label = bool(clean_label)

    def __call__(self, points: Tensor) -> Tensor:
        centre = points.mean(dim=0, keepdim=True)
        return (points - centre) @ self.rotation.to(points).T + centre

    def describe(self) -> dict:
        return {**super().describe(), "angles": list(self.angles)}


class IRBA(PointTrigger):
    """IRBA's weighted local transformation, with the reference code's defaults.

    For anchors ``a_m`` (farthest-point sampling from a fixed start), every point gets
    ``p' = Σ_m w_m(p) (a_m + (p − a_m) R S) / Σ_m w_m(p)``, ``w_m = exp(−|p − a_m|² / 2σ²)``,
    with one rotation ``R`` (``rotation`` degrees about x, y, z) and scaling ``S = scale·I``
    shared by the anchors, as in the official ``WLT.py``; the result is re-normalised (the
    reference loader normalises every cloud). The anchors depend on the cloud, so the
    distortion is sample-specific but deterministic.
    """

    name = "irba"

    def __init__(self, num_points: int, anchors: int = 16, rotation: float = 5.0, scale: float = 5.0,
                 sigma: float = 0.5, start: int = 0) -> None:
        if not 1 <= anchors <= num_points:
            raise ConfigError(f"irba anchors must be in [1, {num_points}], got {anchors}")
        if not sigma > 0:
            raise ConfigError(f"irba sigma must be positive, got {sigma}")
        self.num_points, self.anchors, self.sigma, self.start = num_points, anchors, float(sigma), start
        self.rotation_deg, self.scale = float(rotation), float(scale)
        self.matrix = rotation_matrix((rotation, rotation, rotation)).T * scale  # p @ (R S)

    def _anchors(self, points: Tensor) -> Tensor:
        idx = [self.start % points.shape[0]]
        dist = ((points - points[idx[0]]) ** 2).sum(1)
        for _ in range(self.anchors - 1):
            nxt = int(dist.argmax())
            idx.append(nxt)
            dist = torch.minimum(dist, ((points - points[nxt]) ** 2).sum(1))
        return points[idx]

    def __call__(self, points: Tensor) -> Tensor:
        p = points.double()
        a = self._anchors(p)  # (M, 3)
        local = (p.unsqueeze(0) - a.unsqueeze(1)) @ self.matrix.to(p) + a.unsqueeze(1)  # (M, N, 3)
        w = torch.exp(-0.5 * ((p.unsqueeze(0) - a.unsqueeze(1)) ** 2).sum(-1) / self.sigma**2)  # (M, N)
        moved = (w.unsqueeze(-1) * local).sum(0) / w.sum(0).clamp_min(1e-12).unsqueeze(-1)
        return _normalize(moved).to(points.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "anchors": self.anchors, "rotation": self.rotation_deg,
                "scale": self.scale, "sigma": self.sigma}


@dataclass(frozen=True)
class PCBASearch:
    """The centre search of PCBA's ``attack_crafting.py`` (defaults: its argparse values)."""

    restarts: int = 3
    """Random initialisations (the reference: 10)."""
    steps: int = 300
    """Steps per initialisation (the reference: 1000)."""
    step_size: float = 0.1
    momentum: float = 0.5
    target_posterior: float = 0.5
    """Mean target posterior the centre must reach (the reference's PI is 0.01 on ModelNet40's
    40 classes; with 10 classes a higher bar gives a trigger the victim learns reliably)."""
    batch_size: int = 28
    cost_init: float = 1.0
    cost_max: float = 1e3
    patience: int = 5
    cost_factor: float = 1.5
    convergence: int = 100


class PCBA(_Cluster):
    """PCBA: a 32-point sphere cluster whose centre is optimised against a surrogate model.

    :meth:`prepare` trains nothing itself: it takes a trained surrogate classifier and the
    attacker's clean clouds (never the victim's training set) and searches the centre as the
    reference does: normalised-gradient steps with momentum on the cross-entropy towards the
    target, then, once the mean target posterior passed ``target_posterior``, a Lagrangian
    penalty on the cluster's distance to the object whose multiplier grows while the posterior
    holds and shrinks when it does not; the closest centre that kept the posterior wins.
    The sphere radius is chosen as in ``create_points_RS``: the radius whose cluster 4-NN
    spacing best matches the clouds' median 4-NN spacing.
    """

    name = "pcba"

    def __init__(self, num_points: int, points: int = 32, radius: float | None = None,
                 center: tuple[float, float, float] | None = None, seed: int = 2,
                 surrogate_epochs: int = 15, attacker_samples: int = 600, **search) -> None:
        count = min(points, max(4, num_points // 8))
        self.surrogate_epochs, self.attacker_samples = int(surrogate_epochs), int(attacker_samples)
        super().__init__(num_points, count, radius or 0.05, center if center is not None else (0.0, 0.0, 1.2), seed)
        self._radius_given = radius is not None
        try:
            self.search = PCBASearch(**search)
        except TypeError as err:
            raise ConfigError(f"pcba does not take {sorted(search)}: {err}") from None

    @staticmethod
    def _knn_spacing(points: Tensor, k: int = 4) -> Tensor:
        d = torch.cdist(points, points)
        return d.topk(k + 1, largest=False).values[..., 1:].mean(-1)

    def fit_radius(self, clouds: Tensor) -> float:
        target = float(self._knn_spacing(clouds[:64]).median())
        best, best_err = self.radius, math.inf
        for r in np.arange(0.01, 0.5, 0.01):  # the reference's grid
            spacing = self._knn_spacing(float(r) * self.pattern).median()
            err = abs(float(spacing) - target)
            if err < best_err:
                best, best_err = float(r), err
        self.radius = best
        return best

    def prepare(self, surrogate: nn.Module, clouds: Tensor, labels: Tensor, target: int, *, seed: int = 0) -> None:
        """Search the cluster centre on the attacker's ``clouds`` of non-target classes."""
        if not self._radius_given:
            self.fit_radius(clouds)
        source = clouds[labels != target]
        if len(source) == 0:
            raise ConfigError("pcba needs attacker clouds outside the target class")
        s = self.search
        surrogate = copy.deepcopy(surrogate).eval()
        for p in surrogate.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        device = next(surrogate.parameters()).device
        slots = self.slots.to(device)
        pattern = (self.radius * self.pattern).to(device)
        best_center, best_dist = None, math.inf
        fallback, fallback_post = None, -1.0  # the best posterior seen, if none reaches the bar
        give_up = max(int(0.1 * s.steps), min(s.steps, 50))
        for _ in range(s.restarts):
            while True:  # start off the object, as the reference (|c| > 1)
                center = torch.randn(3, generator=g) * 0.5
                if center.norm() > 1.0:
                    break
            center = center.to(device)
            velocity = torch.zeros(3, device=device)
            reached, cost, up, down, stale, run_best = False, s.cost_init, 0, 0, 0, math.inf
            for step in range(s.steps):
                pick = torch.randint(len(source), (min(s.batch_size, len(source)),), generator=g)
                batch = source[pick].to(device)
                c = center.clone().requires_grad_(True)
                trig = batch.clone()
                trig[:, slots] = c + pattern
                logits = surrogate(trig)
                posterior = logits.softmax(-1)[:, target].mean()
                loss = F.cross_entropy(logits, torch.full((len(batch),), target, device=device))
                if bool(posterior > s.target_posterior):
                    reached = True
                if float(posterior.detach()) > fallback_post:
                    fallback, fallback_post = c.detach().cpu().clone(), float(posterior)
                dist = ((batch - c) ** 2).sum(-1).min(dim=1).values.mean()  # to the nearest object point
                if reached:
                    loss = loss + cost * dist
                (grad,) = torch.autograd.grad(loss, c)
                velocity = (1 - s.momentum) * grad / grad.norm().clamp_min(1e-12) + s.momentum * velocity
                center = (center - s.step_size * velocity).detach()
                if not reached:
                    if step >= give_up:
                        break  # the reference gives up on an initialisation that never reaches PI
                    continue
                holds = bool(posterior >= s.target_posterior)
                up, down = (up + 1, 0) if holds else (0, down + 1)
                if up >= s.patience and cost <= s.cost_max:
                    up, cost = 0, cost * s.cost_factor
                elif down >= s.patience:
                    down, cost = 0, cost / s.cost_factor
                if holds and float(dist.detach()) < run_best:
                    run_best, stale = float(dist), 0
                    if run_best < best_dist:
                        best_dist, best_center = run_best, c.detach().cpu().clone()
                else:
                    stale += 1
                if stale >= s.convergence:
                    break
        if best_center is None:
            # the reference stops here; a victim trained on the poisoned set still learns the
            # cluster, so the centre that came closest is used, with a warning
            log.warning("pcba: no centre reached target posterior %.2f on the surrogate (best %.2f); "
                        "using the best one seen, %s — raise restarts / steps for a stronger trigger",
                        s.target_posterior, fallback_post, fallback.tolist())
            best_center = fallback
        else:
            log.info("pcba centre %s (mean squared distance to the object %.4f)",
                     best_center.tolist(), best_dist)
        self.center = best_center

    def state(self) -> dict[str, Tensor]:
        return {"center": self.center.clone(), "radius": torch.tensor([self.radius])}

    def load_state(self, state: dict[str, Tensor]) -> None:
        super().load_state(state)
        if "radius" in state:
            self.radius = float(state["radius"].reshape(-1)[0])
