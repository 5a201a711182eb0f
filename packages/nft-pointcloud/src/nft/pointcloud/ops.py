"""Farthest-point sampling, k-nearest neighbours and radius search, with interchangeable backends.

PointNet++ and DGCNN need three neighbourhood operations. Compiled implementations exist
(``torch-cluster``, and torch-geometric's own ops, which need ``pyg-lib`` since 2.8), but they
do not install everywhere: torch-cluster ships only as source (minutes of C++ compilation) and
pyg-lib's wheels are not on PyPI. So every operation has a vectorised pure-torch version that
always works, on any device, and the compiled one is used when present:

* ``"torch"``: this module's own implementations (dense, padded per cloud);
* ``"torch-cluster"``: ``torch_cluster.fps / knn / radius``;
* ``"pyg"``: ``torch_geometric.nn.pool.fps / knn / radius`` (needs pyg-lib, or torch-cluster
  with torch-geometric < 2.8);
* ``"auto"``: the first available of torch-cluster, pyg, torch.

All backends share torch-geometric's conventions. Point sets are flat ``(N, D)`` tensors with a
sorted ``batch`` vector assigning each row to a cloud. ``knn`` and ``radius`` return
``(2, E)`` index pairs ``[index into y, index into x]``. FPS starts at each cloud's first point
(``random_start=False``) so a model's output is deterministic. One documented difference: when
more than ``max_num_neighbors`` points lie within the radius, the torch backend keeps the
nearest ones while torch-cluster keeps an arbitrary subset (its KD-tree search is unsorted).
"""

from __future__ import annotations

import functools
import logging
import math
import os

import torch
from torch import Tensor

from nft.core import ConfigError

__all__ = [
    "BACKENDS",
    "available_backends",
    "fps",
    "knn",
    "knn_graph",
    "radius",
    "resolve_backend",
    "set_default_backend",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "torch-cluster", "pyg")
_default_backend = os.environ.get("NFT_POINTCLOUD_NEIGHBORS", "auto")


@functools.lru_cache(maxsize=None)
def _has_torch_cluster() -> bool:
    try:
        import torch_cluster  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or built against another torch
        return False
    return True


@functools.lru_cache(maxsize=None)
def _has_pyg_ops() -> bool:
    try:
        import torch_geometric.typing as pyg_typing
    except Exception:  # noqa: BLE001
        return False
    return bool(getattr(pyg_typing, "WITH_FPS", False) and getattr(pyg_typing, "WITH_KNN", False)
                and getattr(pyg_typing, "WITH_RADIUS", False))


def available_backends() -> list[str]:
    """The concrete backends usable here (``torch`` always is)."""
    out = ["torch"]
    if _has_torch_cluster():
        out.append("torch-cluster")
    if _has_pyg_ops():
        out.append("pyg")
    return out


def set_default_backend(name: str) -> None:
    """Choose the backend that calls without ``backend=`` use from now on (tests, benchmarks)."""
    global _default_backend
    if name not in BACKENDS:
        raise ConfigError(f"neighbour backend {name!r} is unknown; use one of {BACKENDS}")
    _default_backend = name


def resolve_backend(name: str | None = None) -> str:
    """Turn ``None`` / ``"auto"`` into a concrete backend; reject unavailable ones clearly."""
    name = name or _default_backend
    if name not in BACKENDS:
        raise ConfigError(f"neighbour backend {name!r} is unknown; use one of {BACKENDS}")
    if name == "auto":
        if _has_torch_cluster():
            return "torch-cluster"
        if _has_pyg_ops():
            return "pyg"
        return "torch"
    if name == "torch-cluster" and not _has_torch_cluster():
        raise ConfigError(
            "neighbour backend 'torch-cluster' was asked for but torch_cluster is not importable; "
            "build it with `pip install --no-build-isolation torch-cluster` or use backend 'torch'"
        )
    if name == "pyg" and not _has_pyg_ops():
        raise ConfigError(
            "neighbour backend 'pyg' was asked for but torch-geometric's compiled fps / knn / "
            "radius are unavailable (they need pyg-lib); use backend 'torch' or 'torch-cluster'"
        )
    return name


# ---- dense packing ----------------------------------------------------------------------
def _batch_vector(x: Tensor, batch: Tensor | None) -> Tensor:
    if batch is None:
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    if batch.ndim != 1 or batch.shape[0] != x.shape[0]:
        raise ConfigError(f"batch vector of shape {tuple(batch.shape)} does not fit {x.shape[0]} points")
    return batch.long()


def _to_dense(x: Tensor, batch: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pack a flat point set into ``(B, n_max, D)`` plus a validity mask, counts and offsets."""
    if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ConfigError("the batch vector must be sorted (points of one cloud contiguous)")
    counts = torch.bincount(batch, minlength=size)
    ptr = torch.zeros(size + 1, dtype=torch.long, device=x.device)
    ptr[1:] = torch.cumsum(counts, 0)
    n_max = int(counts.max()) if counts.numel() else 0
    local = torch.arange(x.shape[0], device=x.device) - ptr[batch]
    dense = x.new_zeros((size, n_max, x.shape[1]))
    dense[batch, local] = x
    mask = torch.zeros((size, n_max), dtype=torch.bool, device=x.device)
    mask[batch, local] = True
    return dense, mask, counts, ptr


def _size(*batches: Tensor) -> int:
    return max((int(b.max()) + 1 if b.numel() else 0) for b in batches)


def _sq_dist(y: Tensor, x: Tensor) -> Tensor:
    """Squared Euclidean distances ``(B, m, n)`` via the matmul expansion (memory-light)."""
    d = (y * y).sum(-1, keepdim=True) + (x * x).sum(-1).unsqueeze(-2) - 2.0 * y @ x.transpose(-1, -2)
    return d.clamp_min_(0.0)


# ---- farthest-point sampling ------------------------------------------------------------
def _fps_torch(x: Tensor, batch: Tensor, ratio: float) -> Tensor:
    size = _size(batch)
    dense, mask, counts, ptr = _to_dense(x, batch, size)
    m = torch.ceil(counts.to(torch.float32) * ratio).long()  # as torch-cluster: ceil(n · ratio)
    steps = int(m.max()) if m.numel() else 0
    rows = torch.arange(size, device=x.device)
    chosen = torch.zeros((size, steps), dtype=torch.long, device=x.device)
    current = torch.zeros(size, dtype=torch.long, device=x.device)  # start at each cloud's first point
    dist = torch.full(mask.shape, float("inf"), dtype=x.dtype, device=x.device)
    for i in range(steps):
        chosen[:, i] = current
        step = (dense - dense[rows, current].unsqueeze(1)).pow(2).sum(-1)
        dist = torch.minimum(dist, step)
        dist = dist.masked_fill(~mask, -1.0)  # padding is never the farthest point
        current = dist.argmax(dim=1)  # first index among ties, as torch.argmax documents
    keep = torch.arange(steps, device=x.device).unsqueeze(0) < m.unsqueeze(1)
    return (chosen + ptr[:-1].unsqueeze(1))[keep]


def fps(x: Tensor, batch: Tensor | None = None, ratio: float = 0.5, *, backend: str | None = None) -> Tensor:
    """Indices of ``ceil(ratio · n)`` farthest points of every cloud, starting at its first point."""
    if not 0 < ratio <= 1:
        raise ConfigError(f"fps ratio must be in (0, 1], got {ratio}")
    batch = _batch_vector(x, batch)
    backend = resolve_backend(backend)
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    if backend == "torch-cluster":
        import torch_cluster

        return torch_cluster.fps(x, batch, ratio=ratio, random_start=False)
    if backend == "pyg":
        from torch_geometric.nn.pool import fps as pyg_fps

        return pyg_fps(x, batch, ratio=ratio, random_start=False)
    return _fps_torch(x, batch, ratio)


# ---- k nearest neighbours ---------------------------------------------------------------
def _knn_torch(x: Tensor, y: Tensor, k: int, batch_x: Tensor, batch_y: Tensor) -> Tensor:
    size = _size(batch_x, batch_y)
    xd, xm, _, x_ptr = _to_dense(x, batch_x, size)
    yd, ym, _, y_ptr = _to_dense(y, batch_y, size)
    if xd.shape[1] == 0 or yd.shape[1] == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=x.device)
    d = _sq_dist(yd, xd).masked_fill_(~xm.unsqueeze(1), float("inf"))
    kk = min(k, xd.shape[1])
    dist, idx = d.topk(kk, dim=-1, largest=False, sorted=True)  # (B, m, kk), nearest first
    valid = torch.isfinite(dist) & ym.unsqueeze(-1)
    q = torch.arange(yd.shape[1], device=x.device).view(1, -1, 1).expand_as(idx)
    row = (q + y_ptr[:-1].view(-1, 1, 1))[valid]
    col = (idx + x_ptr[:-1].view(-1, 1, 1))[valid]
    return torch.stack([row, col])


def knn(x: Tensor, y: Tensor, k: int, batch_x: Tensor | None = None, batch_y: Tensor | None = None,
        *, backend: str | None = None) -> Tensor:
    """For each row of ``y``, its ``k`` nearest rows of ``x`` in the same cloud: ``[y index, x index]``."""
    if k < 1:
        raise ConfigError(f"knn needs k ≥ 1, got {k}")
    batch_x, batch_y = _batch_vector(x, batch_x), _batch_vector(y, batch_y)
    backend = resolve_backend(backend)
    if backend == "torch-cluster":
        import torch_cluster

        return torch_cluster.knn(x, y, k, batch_x, batch_y)
    if backend == "pyg":
        from torch_geometric.nn.pool import knn as pyg_knn

        return pyg_knn(x, y, k, batch_x, batch_y)
    return _knn_torch(x, y, k, batch_x, batch_y)


def knn_graph(x: Tensor, k: int, batch: Tensor | None = None, *, loop: bool = True,
              backend: str | None = None) -> Tensor:
    """``(2, E)`` edges ``[neighbour j, centre i]`` from every point to its ``k`` nearest.

    With ``loop=True`` a point counts among its own neighbours, as in DGCNN's reference code and
    torch-geometric's ``DynamicEdgeConv``.
    """
    batch = _batch_vector(x, batch)
    if loop:
        return knn(x, x, k, batch, batch, backend=backend).flip(0)
    row, col = knn(x, x, k + 1, batch, batch, backend=backend)
    keep = row != col
    row, col = row[keep], col[keep]
    # keep at most k per centre (a duplicate point may have displaced the centre itself)
    order = torch.argsort(row, stable=True)
    row, col = row[order], col[order]
    rank = torch.arange(row.numel(), device=x.device)
    first = torch.zeros_like(row)
    if row.numel():
        starts = torch.ones_like(row, dtype=torch.bool)
        starts[1:] = row[1:] != row[:-1]
        first = torch.cummax(torch.where(starts, rank, torch.zeros_like(rank)), 0).values
    keep = (rank - first) < k
    return torch.stack([col[keep], row[keep]])


# ---- radius search ----------------------------------------------------------------------
def _radius_torch(x: Tensor, y: Tensor, r: float, batch_x: Tensor, batch_y: Tensor,
                  max_num_neighbors: int) -> Tensor:
    size = _size(batch_x, batch_y)
    xd, xm, _, x_ptr = _to_dense(x, batch_x, size)
    yd, ym, _, y_ptr = _to_dense(y, batch_y, size)
    if xd.shape[1] == 0 or yd.shape[1] == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=x.device)
    d = _sq_dist(yd, xd)
    # strictly inside, as the KD-tree search of torch-cluster (nanoflann) counts a neighbour
    outside = (d >= r * r) | ~xm.unsqueeze(1)
    d = d.masked_fill_(outside, float("inf"))
    kk = min(max_num_neighbors, xd.shape[1])
    dist, idx = d.topk(kk, dim=-1, largest=False, sorted=True)
    valid = torch.isfinite(dist) & ym.unsqueeze(-1)
    q = torch.arange(yd.shape[1], device=x.device).view(1, -1, 1).expand_as(idx)
    row = (q + y_ptr[:-1].view(-1, 1, 1))[valid]
    col = (idx + x_ptr[:-1].view(-1, 1, 1))[valid]
    return torch.stack([row, col])


def radius(x: Tensor, y: Tensor, r: float, batch_x: Tensor | None = None, batch_y: Tensor | None = None,
           max_num_neighbors: int = 64, *, backend: str | None = None) -> Tensor:
    """For each row of ``y``, up to ``max_num_neighbors`` rows of ``x`` closer than ``r``.

    The torch backend keeps the nearest ones when there are more; see the module docstring.
    """
    if not (r > 0 and math.isfinite(r)):
        raise ConfigError(f"radius must be a positive number, got {r}")
    if max_num_neighbors < 1:
        raise ConfigError(f"max_num_neighbors must be ≥ 1, got {max_num_neighbors}")
    batch_x, batch_y = _batch_vector(x, batch_x), _batch_vector(y, batch_y)
    backend = resolve_backend(backend)
    if backend == "torch-cluster":
        import torch_cluster

        return torch_cluster.radius(x, y, r, batch_x, batch_y, max_num_neighbors=max_num_neighbors)
    if backend == "pyg":
        from torch_geometric.nn.pool import radius as pyg_radius

        return pyg_radius(x, y, r, batch_x, batch_y, max_num_neighbors=max_num_neighbors)
    return _radius_torch(x, y, r, batch_x, batch_y, max_num_neighbors)
