"""Point-set layers: torch-geometric's when installed, drop-in torch twins otherwise.

The models are written against three layers from torch-geometric: ``PointNetConv`` (PointNet++
set abstraction), ``EdgeConv`` (DGCNN) and global max / mean pooling. torch-geometric is an
optional extra (``pip install nft-pointcloud[pyg]``), so each layer has a twin here with the
same message-passing semantics *and the same parameter names* (``local_nn`` / ``global_nn`` /
``nn``). A model trained with one implementation therefore loads into the other, and the tests
check that both give the same outputs.

``layers="auto"`` picks torch-geometric when it imports, ``"pyg"`` requires it and ``"torch"``
never uses it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from nft.core import ConfigError

__all__ = [
    "LAYER_BACKENDS",
    "TorchEdgeConv",
    "TorchPointNetConv",
    "edge_conv",
    "global_max_pool",
    "global_mean_pool",
    "mlp",
    "point_conv",
    "pyg_available",
    "resolve_layers",
]

LAYER_BACKENDS = ("auto", "pyg", "torch")


@functools.lru_cache(maxsize=None)
def pyg_available() -> bool:
    try:
        import torch_geometric.nn  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or incompatible
        return False
    return True


def resolve_layers(layers: str) -> str:
    if layers not in LAYER_BACKENDS:
        raise ConfigError(f"layers {layers!r} is unknown; use one of {LAYER_BACKENDS}")
    if layers == "auto":
        return "pyg" if pyg_available() else "torch"
    if layers == "pyg" and not pyg_available():
        raise ConfigError(
            "layers='pyg' needs torch-geometric; install it with `pip install nft-pointcloud[pyg]` "
            "or use layers='torch'"
        )
    return layers


def mlp(channels: list[int], *, act: str = "relu", last_act: bool = True) -> nn.Sequential:
    """``Linear → BatchNorm1d → activation`` per layer (bias-free before BN, as DGCNN).

    Applied to a flat ``(points, channels)`` tensor this is the per-point shared MLP of PointNet
    (a 1×1 convolution with BN), and every BN γ is a channel NFT can mask.
    """
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        last = i == len(channels) - 2
        if last and not last_act:
            layers.append(nn.Linear(c_in, c_out))
            continue
        layers += [nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out)]
        layers.append(nn.LeakyReLU(0.2) if act == "leaky" else nn.ReLU())
    return nn.Sequential(*layers)


def _scatter_max(src: Tensor, index: Tensor, size: int) -> Tensor:
    """Per-target maximum of messages; targets without messages get 0 (torch-geometric's rule)."""
    out = src.new_zeros((size, src.shape[1]))
    return out.scatter_reduce(0, index.unsqueeze(1).expand_as(src), src, reduce="amax", include_self=False)


class TorchPointNetConv(nn.Module):
    """``x'_i = γ(max_j h(x_j, p_j − p_i))`` over the given edges (no self-loops added).

    The same computation as ``torch_geometric.nn.PointNetConv(local_nn, global_nn,
    add_self_loops=False)``; bipartite inputs are ``(source, target)`` pairs.
    """

    def __init__(self, local_nn: nn.Module | None = None, global_nn: nn.Module | None = None) -> None:
        super().__init__()
        self.local_nn = local_nn
        self.global_nn = global_nn

    def forward(self, x, pos, edge_index: Tensor) -> Tensor:
        x_src = x[0] if isinstance(x, tuple) else x
        pos_src, pos_dst = pos if isinstance(pos, tuple) else (pos, pos)
        src, dst = edge_index
        msg = pos_src[src] - pos_dst[dst]
        if x_src is not None:
            msg = torch.cat([x_src[src], msg], dim=1)
        if self.local_nn is not None:
            msg = self.local_nn(msg)
        out = _scatter_max(msg, dst, pos_dst.shape[0])
        return self.global_nn(out) if self.global_nn is not None else out


class TorchEdgeConv(nn.Module):
    """``x'_i = max_j h(x_i, x_j − x_i)``: torch-geometric's ``EdgeConv`` with max aggregation."""

    def __init__(self, nn: nn.Module) -> None:  # noqa: A002 - torch-geometric's parameter name
        super().__init__()
        self.nn = nn

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        src, dst = edge_index
        x_i, x_j = x[dst], x[src]
        return _scatter_max(self.nn(torch.cat([x_i, x_j - x_i], dim=1)), dst, x.shape[0])


def point_conv(local_nn: nn.Module, global_nn: nn.Module | None = None, *, layers: str = "auto") -> nn.Module:
    if resolve_layers(layers) == "pyg":
        from torch_geometric.nn import PointNetConv

        # add_self_loops=False: the edges are bipartite (sampled centres ← all points), where
        # torch-geometric's self-loops would join unrelated indices (its PointNet++ example
        # turns them off for the same reason)
        return PointNetConv(local_nn, global_nn, add_self_loops=False)
    return TorchPointNetConv(local_nn, global_nn)


def edge_conv(nn_: nn.Module, *, layers: str = "auto") -> nn.Module:
    if resolve_layers(layers) == "pyg":
        from torch_geometric.nn import EdgeConv

        return EdgeConv(nn_, aggr="max")
    return TorchEdgeConv(nn_)


def global_max_pool(x: Tensor, batch: Tensor, size: int, *, layers: str = "auto") -> Tensor:
    if resolve_layers(layers) == "pyg":
        from torch_geometric.nn import global_max_pool as pyg_pool

        return pyg_pool(x, batch, size)
    return _scatter_max(x, batch, size)


def global_mean_pool(x: Tensor, batch: Tensor, size: int, *, layers: str = "auto") -> Tensor:
    if resolve_layers(layers) == "pyg":
        from torch_geometric.nn import global_mean_pool as pyg_pool

        return pyg_pool(x, batch, size)
    total = x.new_zeros((size, x.shape[1])).index_add_(0, batch, x)
    count = torch.bincount(batch, minlength=size).clamp_min(1).to(x.dtype)
    return total / count.unsqueeze(1)
