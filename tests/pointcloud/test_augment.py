"""PointMixup, RSMix and point-wise MixUp: the augmentation contract and what each one promises."""

import itertools

import numpy as np
import pytest
import torch
from nft.core import ConfigError
from nft.core.testing import AugmentationContract
from nft.pointcloud import (
    PointCloudTask,
    PointMix,
    PointMixup,
    PointNet,
    PointWiseMixUp,
    RandomPointPatterns,
    RSMix,
    optimal_assignment,
)
from nft.pointcloud.augment import axis_angle_matrix, random_tilt


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 32, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])


class _Contract(AugmentationContract):
    def make_batch(self):
        return _batch()

    def make_task(self):
        return PointCloudTask()

    def make_model(self):
        torch.manual_seed(0)
        return PointNet(num_classes=3, width=8).eval()


class TestPointMixup(_Contract):
    def make_augmentation(self):
        return PointMixup()


class TestRSMix(_Contract):
    def make_augmentation(self):
        return RSMix()


class TestPointMixWithTilt(_Contract):
    def make_augmentation(self):
        return PointMix(tilt=45.0)


def test_random_tilt_is_rigid_and_bounded():
    x, _ = _batch()
    out = random_tilt(x, 30.0, torch.Generator().manual_seed(0))
    pair = lambda p: ((p[:, None] - p[None]) ** 2).sum(-1)  # noqa: E731
    for a, b in zip(x, out):
        torch.testing.assert_close(pair(a), pair(b), atol=1e-4, rtol=1e-4)
    # the vertical axis moves by at most the tilt (30° about x, then 30° about y)
    z = torch.tensor([0.0, 0.0, 1.0])
    e = random_tilt(torch.stack([torch.zeros(3), z]).unsqueeze(0).repeat(64, 1, 1), 30.0,
                    torch.Generator().manual_seed(1))
    axis = e[:, 1] - e[:, 0]
    cos = (axis @ z) / axis.norm(dim=1)
    assert float(cos.min()) >= np.cos(np.deg2rad(43.0)) and float(cos.max()) < 1.0


class TestRandomPointPatterns(_Contract):
    def make_augmentation(self):
        return RandomPointPatterns(PointMix(), cluster_prob=0.5, rotate_prob=0.5, warp_prob=0.5)


def test_plain_mixings_give_the_mix_as_their_clean_view():
    inputs, labels = _batch()
    for aug in (PointMixup(), RSMix(), PointMix(), PointWiseMixUp()):
        mixed = _mix(aug, inputs, labels, seed=3)
        assert mixed.clean_inputs is mixed.inputs


def test_random_point_patterns_perturb_the_mix_and_keep_it_as_the_clean_view():
    """Every perturbation changes the clouds; ``clean_inputs`` is exactly the plain mix (same
    seeds, same draws), and the labels are the mix's."""
    inputs, labels = _batch()
    plain = _mix(PointMix(), inputs, labels, seed=4)
    for kind in ("cluster_prob", "rotate_prob", "warp_prob"):
        probs = {"cluster_prob": 0.0, "rotate_prob": 0.0, "warp_prob": 0.0, kind: 1.0}
        mixed = _mix(RandomPointPatterns(PointMix(), **probs), inputs, labels, seed=4)
        assert torch.equal(mixed.clean_inputs, plain.inputs), kind
        assert [w for _, w in mixed.targets] == [w for _, w in plain.targets]
        for (a, _), (b, _) in zip(mixed.targets, plain.targets, strict=True):
            assert torch.equal(a, b)
        moved = (mixed.inputs - plain.inputs).norm(dim=-1)  # (B, N)
        assert bool((moved.amax(dim=1) > 0.05).all()), kind  # every cloud perturbed
        if kind == "cluster_prob":  # overwrites a few points, keeps the rest
            changed = (moved > 0).sum(dim=1)
            assert bool((changed >= 1).all()) and bool((changed <= 32 // 8).all())
        if kind == "rotate_prob":  # rigid: pairwise distances kept
            d = lambda p: ((p[:, :, None] - p[:, None]) ** 2).sum(-1)  # noqa: E731  (exact, not cdist's mm)
            torch.testing.assert_close(d(mixed.inputs), d(plain.inputs), atol=1e-4, rtol=1e-4)
        if kind == "warp_prob":  # not rigid, but the cloud keeps its centroid and radius
            torch.testing.assert_close(mixed.inputs.mean(1), plain.inputs.mean(1), atol=1e-5, rtol=0)
            radius = lambda p: (p - p.mean(1, keepdim=True)).norm(dim=-1).amax(1)  # noqa: E731
            torch.testing.assert_close(radius(mixed.inputs), radius(plain.inputs), atol=1e-5, rtol=0)
    still = RandomPointPatterns(PointMix(), cluster_prob=0, rotate_prob=0, warp_prob=0)
    none = _mix(still, inputs, labels, seed=4)
    assert torch.equal(none.inputs, plain.inputs)


def test_axis_angle_matrix_is_a_rotation_by_the_angle():
    axis = torch.nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    angle = torch.tensor([0.1, 0.5, 1.0, -0.7, 3.0])
    rot = axis_angle_matrix(axis, angle)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    # the axis stays where it is
    torch.testing.assert_close((rot @ axis.unsqueeze(-1)).squeeze(-1), axis, atol=1e-5, rtol=0)
    trace = rot.diagonal(dim1=1, dim2=2).sum(-1)
    torch.testing.assert_close(trace, 1 + 2 * angle.cos(), atol=1e-5, rtol=0)


class TestPointWiseMixUp(_Contract):
    def make_augmentation(self):
        return PointWiseMixUp()


def _nearest(a, b):
    """Distance from every point of ``a`` to its nearest point of ``b`` (exact, not cdist's mm)."""
    return ((a[:, None] - b[None]) ** 2).sum(-1).min(dim=1).values.sqrt()


def _mix(aug, inputs, labels, seed=0):
    return aug(inputs, labels, rng=np.random.default_rng(seed), generator=torch.Generator().manual_seed(seed))


def test_optimal_assignment_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 6, 3, generator=g), torch.randn(3, 6, 3, generator=g)
    assign = optimal_assignment(a, b)
    for i in range(3):
        cost = lambda perm: float(((a[i] - b[i][list(perm)]) ** 2).sum())  # noqa: E731
        best = min(itertools.permutations(range(6)), key=cost)
        assert cost(assign[i].tolist()) == pytest.approx(cost(best))
        assert sorted(assign[i].tolist()) == list(range(6))  # a bijection


def test_pointmixup_of_a_cloud_with_a_shuffled_copy_is_the_cloud():
    """Interpolating along the optimal matching, not point indices: order does not matter."""
    cloud = torch.randn(1, 40, 3)
    shuffled = cloud[:, torch.randperm(40)]
    batch = torch.cat([cloud, shuffled])
    # a seed whose partner permutation swaps the two clouds (the augmentations draw it first)
    seed = next(s for s in range(100) if torch.randperm(2, generator=torch.Generator().manual_seed(s))[0] == 1)
    mixed = _mix(PointMixup(), batch, torch.tensor([0, 0]), seed=seed)
    for out in mixed.inputs:
        assert float(_nearest(out, cloud[0]).max()) < 1e-5
    naive = _mix(PointWiseMixUp(), batch, torch.tensor([0, 0]), seed=seed)
    assert float(_nearest(naive.inputs[0], cloud[0]).max()) > 1e-2


def test_rsmix_moves_a_rigid_subset_and_weights_by_its_size():
    inputs, labels = _batch()
    mixed = _mix(RSMix(), inputs, labels, seed=2)
    lam = mixed.targets[1][1]
    changed = (mixed.inputs != inputs).any(dim=-1)  # (B, N) replaced points
    k = int(round(lam * 32))
    assert k > 0 and all(int(c.sum()) <= k for c in changed)
    for i in range(len(inputs)):
        moved = mixed.inputs[i][changed[i]]
        if len(moved) < 2:
            continue
        # the inserted points are a translated copy of partner points: pairwise distances are
        # distances within one other cloud of the batch
        d = torch.cdist(moved, moved)
        ok = False
        for j in range(len(inputs)):  # the partner (may be the cloud itself)
            offsets = moved[0] - inputs[j]
            for off in offsets:
                shifted = inputs[j] + off
                if float(_nearest(moved, shifted).max()) < 1e-5:
                    ok = True
                    break
            if ok:
                break
        assert ok, f"cloud {i}: inserted points are not a rigid copy of a partner's points"
        assert torch.allclose(d, d.T)


def test_augmentations_reject_non_cloud_batches():
    for aug in (PointMixup(), RSMix(), PointWiseMixUp()):
        with pytest.raises(ConfigError, match="points"):
            _mix(aug, torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="alpha"):
        PointMixup(alpha=0)
    with pytest.raises(ConfigError, match="rotate_prob"):
        RandomPointPatterns(rotate_prob=1.5)


def test_the_patterns_config_names_the_wrapper_and_valid_settings():
    """configs/pointcloud/nft-patterns.yaml: its augmentation is RandomPointPatterns by its
    registry name and its defense settings are NFT's, as `nft purify --config` reads them."""
    from pathlib import Path

    import yaml

    from nft.core import PurifyConfig
    from nft.core.config import config_from_dict
    from nft.pointcloud import modality

    path = Path(__file__).resolve().parents[2] / "configs" / "pointcloud" / "nft-patterns.yaml"
    config = yaml.safe_load(path.read_text())
    augmentation = modality.augmentations.get(config["augmentation"])()
    assert isinstance(augmentation, RandomPointPatterns) and isinstance(augmentation.base, PointMix)
    assert config_from_dict(PurifyConfig, config["defense"]).steps == 300
