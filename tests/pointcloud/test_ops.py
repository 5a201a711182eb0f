"""Sampling and neighbour functions: the torch backend against brute force, and the compiled
backends (torch-cluster, torch-geometric's ops) against the torch backend where installed."""

import numpy as np
import pytest
import torch

from nft.core import ConfigError
from nft.pointcloud import ops

COMPILED = [b for b in ops.available_backends() if b != "torch"]


def _clouds(sizes=(37, 50, 23), seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.cat([torch.randn(n, 3, generator=g) for n in sizes])
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return pos, batch


def _fps_reference(points: np.ndarray, m: int) -> list[int]:
    chosen = [0]
    dist = ((points - points[0]) ** 2).sum(1)
    for _ in range(m - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((points - points[nxt]) ** 2).sum(1))
    return chosen


def test_fps_matches_a_plain_loop_per_cloud():
    pos, batch = _clouds()
    idx = ops.fps(pos, batch, 0.3, backend="torch")
    start = 0
    expected = []
    for i, n in enumerate((37, 50, 23)):
        m = int(np.ceil(np.float32(n) * np.float32(0.3)))  # torch-cluster's float32 ceil(n · ratio)
        expected += [start + j for j in _fps_reference(pos[batch == i].double().numpy(), m)]
        start += n
    assert idx.tolist() == expected


def test_knn_matches_brute_force():
    pos, batch = _clouds()
    query, qbatch = _clouds((5, 7, 3), seed=1)
    row, col = ops.knn(pos, query, 4, batch, qbatch, backend="torch")
    for q in range(len(query)):
        same = torch.nonzero(batch == qbatch[q]).flatten()
        d = ((pos[same] - query[q]) ** 2).sum(1)
        expected = set(same[d.argsort()[:4]].tolist())
        assert set(col[row == q].tolist()) == expected


def test_radius_matches_brute_force_and_caps_with_the_nearest():
    pos, batch = _clouds()
    query, qbatch = _clouds((5, 7, 3), seed=1)
    row, col = ops.radius(pos, query, 1.2, batch, qbatch, max_num_neighbors=1000, backend="torch")
    for q in range(len(query)):
        same = torch.nonzero(batch == qbatch[q]).flatten()
        inside = same[((pos[same] - query[q]) ** 2).sum(1) < 1.2**2]
        assert set(col[row == q].tolist()) == set(inside.tolist())
    row, col = ops.radius(pos, query, 1.2, batch, qbatch, max_num_neighbors=3, backend="torch")
    for q in range(len(query)):
        same = torch.nonzero(batch == qbatch[q]).flatten()
        d = ((pos[same] - query[q]) ** 2).sum(1)
        inside = same[d < 1.2**2][d[d < 1.2**2].argsort()[:3]]
        assert set(col[row == q].tolist()) == set(inside.tolist())


def test_knn_graph_with_and_without_self_loops():
    pos, batch = _clouds()
    src, dst = ops.knn_graph(pos, 5, batch, loop=True, backend="torch")
    assert len(src) == 5 * len(pos)
    assert bool((src[::5] == dst[::5]).all())  # the nearest neighbour of a point is itself
    assert bool((batch[src] == batch[dst]).all())
    src, dst = ops.knn_graph(pos, 5, batch, loop=False, backend="torch")
    assert len(src) == 5 * len(pos) and not bool((src == dst).any())


def test_bad_arguments_are_named():
    pos, batch = _clouds()
    with pytest.raises(ConfigError, match="unknown"):
        ops.fps(pos, batch, 0.5, backend="magic")
    with pytest.raises(ConfigError, match="sorted"):
        ops.fps(pos, batch.flip(0), 0.5, backend="torch")
    with pytest.raises(ConfigError, match="ratio"):
        ops.fps(pos, batch, 0.0)
    with pytest.raises(ConfigError, match="k ≥ 1"):
        ops.knn(pos, pos, 0, batch, batch)
    for name in ("torch-cluster", "pyg"):
        if name not in ops.available_backends():
            with pytest.raises(ConfigError, match=name):
                ops.resolve_backend(name)


@pytest.mark.skipif(not COMPILED, reason="no compiled backend (torch-cluster or pyg-lib) is installed")
@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_backend_agrees_with_torch(backend):
    pos, batch = _clouds((64, 48, 80), seed=3)
    assert ops.fps(pos, batch, 0.25, backend=backend).tolist() == ops.fps(pos, batch, 0.25, backend="torch").tolist()
    query = pos[ops.fps(pos, batch, 0.25, backend="torch")]
    qbatch = batch[ops.fps(pos, batch, 0.25, backend="torch")]
    a = ops.knn(pos, query, 6, batch, qbatch, backend=backend)
    b = ops.knn(pos, query, 6, batch, qbatch, backend="torch")
    assert sorted(map(tuple, a.t().tolist())) == sorted(map(tuple, b.t().tolist()))
    a = ops.radius(pos, query, 0.9, batch, qbatch, max_num_neighbors=500, backend=backend)
    b = ops.radius(pos, query, 0.9, batch, qbatch, max_num_neighbors=500, backend="torch")
    assert sorted(map(tuple, a.t().tolist())) == sorted(map(tuple, b.t().tolist()))
    # with a cap, both keep `cap` in-radius points per centre (which ones may differ)
    a = ops.radius(pos, query, 0.9, batch, qbatch, max_num_neighbors=4, backend=backend)
    b = ops.radius(pos, query, 0.9, batch, qbatch, max_num_neighbors=4, backend="torch")
    assert torch.equal(torch.bincount(a[0], minlength=len(query)), torch.bincount(b[0], minlength=len(query)))
    inside = {tuple(e) for e in ops.radius(pos, query, 0.9, batch, qbatch, max_num_neighbors=500,
                                           backend="torch").t().tolist()}
    assert {tuple(e) for e in a.t().tolist()} <= inside
