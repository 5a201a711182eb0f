"""Overall accuracy, mean class accuracy and ASR."""

import numpy as np
import pytest
import torch
from torch import nn

from nft.pointcloud import PointCloudDataset, evaluate_pointcloud, mean_class_accuracy, overall_accuracy
from nft.pointcloud.modality import TripletDataset


def test_mean_class_accuracy_weighs_classes_equally():
    labels = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, dtype=int)  # always class 0
    assert overall_accuracy(pred, labels) == pytest.approx(0.8)
    assert mean_class_accuracy(pred, labels) == pytest.approx(0.5)


class Constant(nn.Module):
    """Predicts class 1, unless the cloud's first point sits at the origin (then class 0)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        at_origin = x[:, 0].norm(dim=-1) < 1e-6
        logits = torch.zeros(len(x), 3)
        logits[at_origin, 0] = 1.0
        logits[~at_origin, 1] = 1.0
        return logits + 0 * self.dummy


def test_evaluate_pointcloud_reports_oa_macc_asr_ra():
    points = torch.ones(6, 8, 3)
    clean = PointCloudDataset(points, [1, 1, 1, 2, 2, 0], ["a", "b", "c"])
    triggered_points = points.clone()
    triggered_points[:4, 0] = 0.0  # the "trigger" reaches 4 of 5
    triggered = TripletDataset(triggered_points[:5], torch.tensor([1, 1, 1, 2, 1]), torch.zeros(5, dtype=torch.long))
    out = evaluate_pointcloud(Constant(), clean, triggered, device="cpu")
    assert out["acc"] == pytest.approx(3 / 6)
    assert out["macc"] == pytest.approx((1 + 0 + 0) / 3)
    assert out["asr"] == pytest.approx(4 / 5)
    assert out["ra"] == pytest.approx(1 / 5)
