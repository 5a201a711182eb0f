"""Masking and merge equivalence for every point model, on both layer implementations, and the
torch layers against torch-geometric's where it is installed."""

import pytest
import torch

from nft.core import ConfigError, DataError, inject_masks
from nft.core.testing import MaskingContract
from nft.pointcloud import DGCNN, DEFAULT_MASKS, PointCloudTask, PointNet, PointNet2
from nft.pointcloud.layers import pyg_available

LAYERS = ["torch"] + (["pyg"] if pyg_available() else [])


def _points(batch=2, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, n, 3, generator=g)
    return p / p.norm(dim=-1).max(dim=1, keepdim=True).values.unsqueeze(-1)


class _Contract(MaskingContract):
    mask_config = DEFAULT_MASKS
    atol = 1e-4

    def make_inputs(self):
        return _points()


class TestPointNet(_Contract):
    def make_model(self):
        return PointNet(num_classes=5, width=8)


@pytest.mark.parametrize("layers", LAYERS)
class TestPointNet2SSG(_Contract):
    @pytest.fixture(autouse=True)
    def _layers(self, layers):
        self.layers = layers

    def make_model(self):
        return PointNet2(num_classes=5, width=8, layers=self.layers)


class TestPointNet2MSG(_Contract):
    def make_model(self):
        return PointNet2(num_classes=5, variant="msg", width=8)


@pytest.mark.parametrize("layers", LAYERS)
class TestDGCNN(_Contract):
    @pytest.fixture(autouse=True)
    def _layers(self, layers):
        self.layers = layers

    def make_model(self):
        return DGCNN(num_classes=5, k=6, width=8, layers=self.layers)


@pytest.mark.skipif(not pyg_available(), reason="torch-geometric is not installed")
@pytest.mark.parametrize("factory", [
    lambda layers: PointNet(num_classes=5, width=8, layers=layers),
    lambda layers: PointNet2(num_classes=5, width=8, layers=layers),
    lambda layers: PointNet2(num_classes=5, variant="msg", width=8, layers=layers),
    lambda layers: DGCNN(num_classes=5, k=6, width=8, layers=layers),
], ids=["pointnet", "pointnet2-ssg", "pointnet2-msg", "dgcnn"])
def test_torch_layers_match_torch_geometric(factory):
    pyg, plain = factory("pyg").eval(), factory("torch").eval()
    assert list(pyg.state_dict()) == list(plain.state_dict())  # one checkpoint fits both
    plain.load_state_dict(pyg.state_dict())
    x = _points(batch=3, n=40, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), pyg(x), atol=1e-5, rtol=1e-4)


def test_bad_inputs_and_options_are_named():
    with pytest.raises(DataError, match=r"\(batch, points, 3\)"):
        PointCloudTask().forward(PointNet(width=8), torch.zeros(2, 10, 2))
    with pytest.raises(ConfigError, match="variant"):
        PointNet2(variant="xyz")
    with pytest.raises(ConfigError, match="layers"):
        PointNet(layers="tf")
    with pytest.raises(ConfigError, match="neighbors"):
        DGCNN(neighbors="gpu-magic")


def test_default_masks_cover_every_batchnorm():
    model = DGCNN(num_classes=5, k=6, width=8)
    masked = inject_masks(model, DEFAULT_MASKS)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(masked) == len(bns) == 7
