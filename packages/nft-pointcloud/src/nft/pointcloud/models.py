"""PointNet, PointNet++ (SSG / MSG) and DGCNN classifiers on ``(batch, points, 3)`` tensors.

Every model takes a dense batch of equally sized clouds, flattens it into torch-geometric's
``(points, channels)`` + ``batch`` form inside ``forward``, and returns logits. Dense inputs keep
the rest of nft (collation, MixUp-style augmentations, input-space defenses) unchanged.

Widths are parameters: the defaults are small enough to train on CPU in minutes, and the
paper-size networks are ``width=64`` (PointNet, DGCNN) / ``width=64`` with the default radii
(PointNet++). Normalisation is ``BatchNorm1d`` after every hidden linear layer, so NFT's default
masks (one per BN channel) cover every block. Two options choose implementations without
changing parameter names: ``layers`` (torch-geometric or torch layers, see :mod:`.layers`) and
``neighbors`` (compiled or torch sampling, see :mod:`.ops`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nft.core import ConfigError, DataError

from . import ops
from .layers import TorchEdgeConv, edge_conv, global_max_pool, global_mean_pool, mlp, point_conv, resolve_layers

__all__ = ["DGCNN", "PointNet", "PointNet2", "check_points", "flatten_points"]


def check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor) or points.ndim != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise DataError(
            f"point-cloud models take a (batch, points, 3) float tensor, got {shape}; "
            "stack clouds of equal size (the datasets resample every cloud to num_points)"
        )


def flatten_points(points: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(B, N, 3)`` → flat positions ``(B·N, 3)``, the batch vector and ``B``."""
    check_points(points)
    b, n, _ = points.shape
    batch = torch.arange(b, device=points.device).repeat_interleave(n)
    return points.reshape(b * n, 3), batch, b


class _PointModel(nn.Module):
    def __init__(self, layers: str, neighbors: str) -> None:
        super().__init__()
        resolve_layers(layers)  # fail at construction, not at the first forward
        if neighbors not in ops.BACKENDS:
            raise ConfigError(f"neighbors {neighbors!r} is unknown; use one of {ops.BACKENDS}")
        self.layers = layers
        self.neighbors = neighbors


class PointNet(_PointModel):
    """PointNet (Qi et al., CVPR 2017) without the input / feature T-Nets.

    A shared per-point MLP ``3 → w → w → 2w → 8w``, global max pooling, and an MLP head
    ``8w → 4w → 2w → classes`` with dropout (the original is ``w = 128`` up to 1024 features).
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.3,
                 layers: str = "auto", neighbors: str = "auto") -> None:
        super().__init__(layers, neighbors)
        w = width
        self.features = mlp([3, w, w, 2 * w, 8 * w])
        self.head = nn.Sequential(
            *mlp([8 * w, 4 * w, 2 * w]), nn.Dropout(dropout), nn.Linear(2 * w, num_classes)
        )

    def forward(self, points: Tensor) -> Tensor:
        pos, batch, size = flatten_points(points)
        feats = global_max_pool(self.features(pos), batch, size, layers=self.layers)
        return self.head(feats)


class SetAbstraction(nn.Module):
    """One PointNet++ level: FPS centres, a radius ball per scale, a ``PointNetConv`` per scale."""

    def __init__(self, ratio: float, radii: tuple[float, ...], mlps: list[list[int]],
                 max_neighbors: tuple[int, ...], layers: str) -> None:
        super().__init__()
        if not (len(radii) == len(mlps) == len(max_neighbors)):
            raise ConfigError("each PointNet++ scale needs a radius, an MLP and a neighbour cap")
        self.ratio = ratio
        self.radii = tuple(radii)
        self.max_neighbors = tuple(max_neighbors)
        self.convs = nn.ModuleList(point_conv(mlp(c), layers=layers) for c in mlps)

    def forward(self, x: Tensor | None, pos: Tensor, batch: Tensor, neighbors: str):
        idx = ops.fps(pos, batch, self.ratio, backend=neighbors)
        centres, centre_batch = pos[idx], batch[idx]
        outs = []
        for r, cap, conv in zip(self.radii, self.max_neighbors, self.convs):
            row, col = ops.radius(pos, centres, r, batch, centre_batch, max_num_neighbors=cap,
                                  backend=neighbors)
            edge_index = torch.stack([col, row])  # source: neighbour point, target: centre
            x_dst = None if x is None else x[idx]
            outs.append(conv((x, x_dst), (pos, centres), edge_index))
        return torch.cat(outs, dim=1), centres, centre_batch


class PointNet2(_PointModel):
    """PointNet++ (Qi et al., NeurIPS 2017) classifier, single- or multi-scale grouping.

    ``variant="ssg"``: two set-abstraction levels (FPS ratio 0.5 / 0.25, radius 0.2 / 0.4, as
    the paper and torch-geometric's example) and a global level. ``variant="msg"``: three
    radii per level (0.1 / 0.2 / 0.4 and 0.2 / 0.4 / 0.8, the paper's MSG radii) whose features
    are concatenated.
    """

    def __init__(self, num_classes: int = 10, variant: str = "ssg", width: int = 16,
                 dropout: float = 0.3, layers: str = "auto", neighbors: str = "auto") -> None:
        super().__init__(layers, neighbors)
        if variant not in ("ssg", "msg"):
            raise ConfigError(f"PointNet++ variant {variant!r} is unknown; use 'ssg' or 'msg'")
        self.variant = variant
        w = width
        if variant == "ssg":
            self.sa1 = SetAbstraction(0.5, (0.2,), [[3, w, w, 2 * w]], (64,), layers)
            c1 = 2 * w
            self.sa2 = SetAbstraction(0.25, (0.4,), [[c1 + 3, 2 * w, 2 * w, 4 * w]], (64,), layers)
            c2 = 4 * w
        else:
            self.sa1 = SetAbstraction(0.5, (0.1, 0.2, 0.4),
                                      [[3, w // 2, w], [3, w, 2 * w], [3, w, 2 * w]], (16, 32, 64), layers)
            c1 = w + 4 * w
            self.sa2 = SetAbstraction(0.25, (0.2, 0.4, 0.8),
                                      [[c1 + 3, w, 2 * w], [c1 + 3, 2 * w, 4 * w], [c1 + 3, 2 * w, 4 * w]],
                                      (32, 64, 64), layers)
            c2 = 2 * w + 8 * w
        self.sa3 = mlp([c2 + 3, 4 * w, 8 * w])
        self.head = nn.Sequential(
            *mlp([8 * w, 4 * w, 2 * w]), nn.Dropout(dropout), nn.Linear(2 * w, num_classes)
        )

    def forward(self, points: Tensor) -> Tensor:
        pos, batch, size = flatten_points(points)
        x, pos1, batch1 = self.sa1(None, pos, batch, self.neighbors)
        x, pos2, batch2 = self.sa2(x, pos1, batch1, self.neighbors)
        x = self.sa3(torch.cat([x, pos2], dim=1))
        return self.head(global_max_pool(x, batch2, size, layers=self.layers))


class DynamicEdge(nn.Module):
    """An ``EdgeConv`` on the k-NN graph of its own input features (DGCNN's dynamic graph).

    torch-geometric's ``DynamicEdgeConv`` computes the graph with its compiled ``knn``; here
    the graph comes from :func:`.ops.knn_graph` so the layer runs with any neighbour backend.
    The point itself counts among its k neighbours, as in both reference implementations.
    """

    def __init__(self, nn_: nn.Module, k: int, layers: str) -> None:
        super().__init__()
        self.k = k
        self.conv = edge_conv(nn_, layers=layers)

    def forward(self, x: Tensor, batch: Tensor, neighbors: str) -> Tensor:
        with torch.no_grad():
            edge_index = ops.knn_graph(x.detach(), self.k, batch, loop=True, backend=neighbors)
        if isinstance(self.conv, TorchEdgeConv):
            dense = _regular_neighbours(edge_index, x.shape[0], self.k)
            if dense is not None:  # every centre has exactly k neighbours: gather, no scatter
                x_j = x[dense]  # (points, k, C)
                x_i = x.unsqueeze(1).expand_as(x_j)
                msg = self.conv.nn(torch.cat([x_i, x_j - x_i], dim=-1).reshape(-1, 2 * x.shape[1]))
                return msg.view(x.shape[0], self.k, -1).amax(dim=1)
        return self.conv(x, edge_index)


def _regular_neighbours(edge_index: Tensor, n: int, k: int) -> Tensor | None:
    """``(n, k)`` neighbour table when the edges list exactly k sources per centre in centre order."""
    src, dst = edge_index
    if src.numel() != n * k:
        return None
    expected = torch.arange(n, device=dst.device).repeat_interleave(k)
    if not torch.equal(dst, expected):
        return None
    return src.view(n, k)


class DGCNN(_PointModel):
    """DGCNN (Wang et al., TOG 2019): four dynamic EdgeConv layers, max + mean pooling.

    EdgeConv widths ``w, w, 2w, 4w`` (the paper: 64, 64, 128, 256), a ``8w → 16w`` embedding,
    and a head ``32w → 8w → 4w → classes``; LeakyReLU(0.2) as the paper. ``k=20`` in the
    paper for 1024 points; the default 16 suits the smaller clouds used here.
    """

    def __init__(self, num_classes: int = 10, k: int = 16, width: int = 16, dropout: float = 0.5,
                 layers: str = "auto", neighbors: str = "auto") -> None:
        super().__init__(layers, neighbors)
        if k < 1:
            raise ConfigError(f"DGCNN needs k ≥ 1, got {k}")
        w = width
        self.k = k
        widths = [w, w, 2 * w, 4 * w]
        c_in = 3
        self.edge_convs = nn.ModuleList()
        for c_out in widths:
            self.edge_convs.append(DynamicEdge(mlp([2 * c_in, c_out], act="leaky"), k, layers))
            c_in = c_out
        self.embed = mlp([sum(widths), 16 * w], act="leaky")
        self.head = nn.Sequential(
            *mlp([32 * w, 8 * w, 4 * w], act="leaky"), nn.Dropout(dropout), nn.Linear(4 * w, num_classes)
        )

    def forward(self, points: Tensor) -> Tensor:
        x, batch, size = flatten_points(points)
        outs = []
        for layer in self.edge_convs:
            x = layer(x, batch, self.neighbors)
            outs.append(x)
        h = self.embed(torch.cat(outs, dim=1))
        pooled = torch.cat([global_max_pool(h, batch, size, layers=self.layers),
                            global_mean_pool(h, batch, size, layers=self.layers)], dim=1)
        return self.head(pooled)
