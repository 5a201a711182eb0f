"""Searched point clusters: the point-cloud counterpart of the image searches for patches.

Why: a trigger made of inserted points (PointBA-I's ball, PCBA's optimised cluster) drives a
few channels that clean clouds, mixed or not, never wake, so NFT's masks get no gradient to
turn them down (NFT left 12-73 % of a PCBA backdoor on PointNet). A backdoored model has one place
where a few points send every cloud to its target, and a clean model has none; the places are
few enough to scan. Measured on PointNet / ``shapes`` (docs/pointcloud.md): on the PCBA and
PointBA-I models the best clusters sat in the trigger's corner and sent all the other-class
clouds of the clean set to the target, against 9-11 % for the median cluster; on the PointBA-O
and IRBA models no cluster sent more than 67 %. With the kept cluster stamped, NFT took PCBA
from 27.5 % to 4.0 % ASR on average over five seeds, for 0.9 more points of accuracy (on DGCNN,
13.0 % to 6.1 % at seed 0).

The search keeps a cluster by what it does to the answers, not by its loss: the share of the
clean set's clouds of other classes that it sends to one class (as the core's
:class:`~nft.core.adversary.GratingAdversary` does), which a trigger's place drives to 1.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from nft.core import ConfigError, InputSpace
from nft.core.adversary import keep_standouts, require_labelled, share_sent_to_one_class, stamp_rows

__all__ = ["ClusterAdversary", "cluster_centres"]


def cluster_centres(extent: float, step: float) -> Tensor:
    """The centres of the scan: a cubic grid from ``-extent`` to ``extent`` every ``step`` on
    each axis (clouds are normalised into the unit ball; a trigger often sits just off the
    object, near a corner of the cube)."""
    axis = np.arange(-extent, extent + step / 2, step)
    return torch.tensor(list(itertools.product(axis, axis, axis)), dtype=torch.float32)


class ClusterAdversary:
    """The cluster of points that most sends clouds to one class, found once, then written into a
    share of the clouds, which keep their labels.

    The scan (:meth:`search`, on up to ``samples`` clouds of the first clean batch, before the
    first step): a ball of ``points`` points (``fraction`` of the cloud, points on a sphere of
    each radius in ``radii``) is written over the same ``points`` point slots of every cloud, at
    each centre of :func:`cluster_centres`; a cluster's score is the largest share of the
    clouds of other classes that it sends to one class. Clusters that reach ``share`` and
    ``ratio`` times the median cluster's score pass; of those, the ``count`` of highest loss are
    kept (one: in a prototype, stamping the best four left 25 % of a PCBA backdoor at 4 points of
    accuracy, the best one alone 9 % at 2 points). When none passes, nothing is stamped. During the
    purification each cloud, with probability ``prob``, gets one kept cluster over the same
    slots; the masks learn to answer it with the cloud's own label.
    """

    def __init__(self, space: InputSpace, *, prob: float, fraction: float = 1 / 16,
                 radii: tuple[float, ...] = (0.1, 0.25), extent: float = 0.9, step: float = 0.3,
                 share: float = 0.9, ratio: float = 3.0, count: int = 1, samples: int = 128,
                 seed: int = 0) -> None:
        if not 0 < prob <= 1:
            raise ConfigError(f"the searched clusters' share of clouds must be in (0, 1], got {prob}")
        if len(space.shape) != 2 or space.shape[-1] != 3:
            raise ConfigError(f"searched clusters need clouds of shape (points, 3), and the input space's "
                              f"shape is {tuple(space.shape)}; set adv_search_prob=0")
        if not 0 < fraction < 1 or not radii or min(radii) <= 0 or extent <= 0 or step <= 0:
            raise ConfigError(f"searched clusters need 0 < fraction < 1, radii > 0, extent > 0 and "
                              f"step > 0, got {fraction}, {radii}, {extent}, {step}")
        if not 0 < share <= 1 or ratio < 1 or count < 1 or samples < 1:
            raise ConfigError(f"searched clusters need 0 < share ≤ 1, ratio ≥ 1, count ≥ 1 and "
                              f"samples ≥ 1, got {share}, {ratio}, {count}, {samples}")
        num_points = int(space.shape[0])
        self.space, self.prob, self.share, self.ratio = space, float(prob), float(share), float(ratio)
        self.radii, self.count, self.samples = tuple(float(r) for r in radii), int(count), int(samples)
        self.centres = cluster_centres(extent, step)
        generator = torch.Generator().manual_seed(seed)
        size = max(1, round(fraction * num_points))
        pattern = torch.randn(size, 3, generator=generator)
        self.pattern = pattern / pattern.norm(dim=1, keepdim=True)  # points on the unit sphere
        self.slots = torch.randperm(num_points, generator=generator)[:size]  # the points a cluster replaces
        self.kept: list[tuple[tuple[float, float, float], float]] = []  # (centre, radius) of each kept one
        self.scores: list[float] = []  # the share each kept cluster sent to one class
        self.typical = 0.0  # the median cluster's share
        self._searched = False

    @classmethod
    def factory(cls, space: InputSpace, prob: float) -> ClusterAdversary:
        """What the modality's input space lists in ``searches``: the defaults at ``prob``."""
        return cls(space, prob=prob)

    @property
    def searched(self) -> bool:
        return self._searched

    @property
    def active(self) -> bool:
        return bool(self.kept)

    def cluster(self, centre, radius: float, like: Tensor) -> Tensor:
        """The ``(points, 3)`` cluster of ``radius`` around ``centre``."""
        return torch.as_tensor(centre, dtype=like.dtype, device=like.device) + radius * self.pattern.to(like)

    def _write(self, clouds: Tensor, cluster: Tensor) -> Tensor:
        out = clouds.clone()
        out[:, self.slots.to(clouds.device)] = cluster
        return out

    @torch.no_grad()
    def search(self, model: torch.nn.Module, task, inputs: Tensor, targets, generator: torch.Generator) -> None:
        """Score every cluster on (up to ``samples`` of) a clean batch; ``generator`` is unused
        (the scan is a grid)."""
        require_labelled(inputs, targets, "searched clusters", "adv_search_prob")
        self.space.sample_shape(inputs)
        n = min(self.samples, inputs.shape[0])
        x, y = inputs[:n].detach(), targets[:n].to(inputs.device)
        found = []
        for radius in self.radii:
            for centre in self.centres.tolist():
                outputs = task.forward(model, self._write(x, self.cluster(centre, radius, x)))
                sent = share_sent_to_one_class(task.predict(outputs).to(y.device), y)
                found.append((sent, float(task.loss(outputs, y)), (tuple(centre), radius)))
        self.typical, passing = keep_standouts(found, self.share, self.ratio, self.count)
        self.scores = [sent for sent, *_ in passing]
        self.kept = [place for *_, place in passing]
        self._searched = True

    def perturb(self, inputs: Tensor, generator: torch.Generator) -> Tensor:
        """``inputs`` with one kept cluster written into each of a ``prob`` share of the clouds."""
        if not self.searched:
            raise ConfigError("the clusters were not searched yet; call search() first")
        if not self.kept:
            return inputs
        out = inputs.clone()
        rows = stamp_rows(inputs.shape[0], len(self.kept), self.prob, generator, inputs.device)
        for k, (centre, radius) in enumerate(self.kept):
            out[rows[k]] = self._write(inputs[rows[k]], self.cluster(centre, radius, inputs))
        return out

    def summary(self) -> dict:
        """Each kept ball as ``[x, y, z, radius, share]`` (the share of other classes' clouds
        it sends to one class), and the median ball's share."""
        return {"adv_clusters": [[*(round(v, 2) for v in centre), radius, round(score, 3)]
                                 for (centre, radius), score in zip(self.kept, self.scores)],
                "adv_cluster_typical": round(self.typical, 3)}

    def state_dict(self) -> dict:
        if not self.searched:
            return {}
        return {"kept": torch.tensor([[*centre, radius] for centre, radius in self.kept],
                                     dtype=torch.float64).view(-1, 4),
                "scores": torch.tensor(self.scores, dtype=torch.float64),
                "typical": torch.tensor(self.typical, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.kept = [(tuple(row[:3]), row[3]) for row in state["kept"].tolist()]
            self.scores = [float(v) for v in state["scores"].tolist()]
            self.typical = float(state["typical"])
            self._searched = True
