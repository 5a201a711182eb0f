"""The searched point clusters (``nft.pointcloud.ClusterAdversary``): the scan finds a cluster
trigger's place and nothing on a model without one, the stamping touches only its share of the
clouds and only the cluster's slots, and the findings survive a saved loop state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nft.core import ConfigError, InputSpace
from nft.pointcloud import ClusterAdversary, PointCloudTask, cluster_centres

TRIGGER = torch.tensor([0.6, 0.6, -0.6])
SPACE = InputSpace(shape=(64, 3), lower=-1.0, upper=1.0)


class _ByOffset(nn.Module):
    """Four classes told apart by the cloud's mean x (class k sits at x = 0.1·(k − 1.5)); with
    ``backdoor``, any point within 0.15 of ``TRIGGER`` sends the cloud to class 0."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.backdoor = backdoor

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        centres = 0.1 * (torch.arange(4, dtype=points.dtype) - 1.5)
        logits = -100 * (points[..., 0].mean(1, keepdim=True) - centres).abs()
        if self.backdoor:
            near = ((points - TRIGGER).norm(dim=-1) < 0.15).any(1)
            logits[:, 0] += 1000 * near
        return logits


def _clouds(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    points = torch.randn(n, 64, 3, generator=g)
    points = 0.4 * points / points.norm(dim=-1, keepdim=True).amax(1, keepdim=True)
    points[..., 0] += 0.1 * (labels.view(-1, 1) - 1.5)
    return points, labels


def test_the_scan_finds_a_cluster_trigger_and_nothing_without_one():
    points, labels = _clouds()
    assert torch.equal(_ByOffset(False)(points).argmax(1), labels)  # the clean rule is right
    found = ClusterAdversary(SPACE, prob=0.5)
    found.search(_ByOffset(True), PointCloudTask(), points, labels, torch.Generator())
    assert found.active and len(found.kept) == 1 and found.scores == [1.0]
    centre, radius = found.kept[0]
    cluster = found.cluster(centre, radius, points)
    assert ((cluster - TRIGGER).norm(dim=-1) < 0.15).any()  # it sits on the trigger
    assert found.typical < 0.5
    clean = ClusterAdversary(SPACE, prob=0.5)
    clean.search(_ByOffset(False), PointCloudTask(), points, labels, torch.Generator())
    assert clean.searched and not clean.active
    assert torch.equal(clean.perturb(points, torch.Generator().manual_seed(0)), points)


def test_stamping_writes_the_cluster_into_its_slots_of_a_share_of_the_clouds():
    points, labels = _clouds(400)
    search = ClusterAdversary(SPACE, prob=0.5)
    search.search(_ByOffset(True), PointCloudTask(), points[:40], labels[:40], torch.Generator())
    stamped = search.perturb(points, torch.Generator().manual_seed(1))
    changed = (stamped != points).flatten(1).any(1)
    assert 0.4 < changed.float().mean() < 0.6
    others = torch.ones(64, dtype=torch.bool)
    others[search.slots] = False
    assert torch.equal(stamped[:, others], points[:, others])  # only the cluster's slots move
    centre, radius = search.kept[0]
    assert torch.allclose(stamped[changed][:, search.slots], search.cluster(centre, radius, points).expand(
        int(changed.sum()), -1, -1))
    assert (_ByOffset(True)(stamped[changed]).argmax(1) == 0).all()  # what the masks must unlearn
    resumed = ClusterAdversary(SPACE, prob=0.5)
    resumed.load_state_dict(search.state_dict())
    assert resumed.kept == search.kept and resumed.scores == search.scores and resumed.typical == search.typical
    assert torch.equal(resumed.perturb(points, torch.Generator().manual_seed(1)), stamped)


def test_bad_settings_and_unsearched_use_are_refused():
    with pytest.raises(ConfigError, match=r"clouds of shape \(points, 3\).*adv_search_prob=0"):
        ClusterAdversary(InputSpace(shape=(3, 8, 8)), prob=0.5)
    with pytest.raises(ConfigError, match="share of clouds"):
        ClusterAdversary(SPACE, prob=0.0)
    with pytest.raises(ConfigError, match="not searched yet"):
        ClusterAdversary(SPACE, prob=0.5).perturb(_clouds()[0], torch.Generator())
    assert len(cluster_centres(0.9, 0.3)) == 7 ** 3
