"""The core's masking contract on every video model family (tiny widths and clips), the width
option's fidelity to torchvision, and the pytorchvideo import shim."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch
import torchvision

from nft.core import ConfigError
from nft.core.testing import MaskingContract
from nft.video import build_model
from nft.video.pyvideo import SlowFastClip, import_pytorchvideo

CLIP = (2, 3, 8, 32, 32)


def _calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """Set BN running statistics from one batch, as training would: a freshly initialised deep
    network in eval mode (running variance 1) shrinks activations towards zero, which would hide
    the masks' effect below the contract's tolerance."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1)))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


class _VideoContract(MaskingContract):
    name = ""
    options: dict = {}

    def make_model(self):
        return _calibrated(build_model(self.name, 5, frames=8, size=32, **self.options))

    def make_inputs(self):
        return torch.rand(*CLIP, generator=torch.Generator().manual_seed(0))


class TestR3D(_VideoContract):
    name, options = "r3d-18", {"width": 4}


class TestR2Plus1D(_VideoContract):
    name, options = "r2plus1d-18", {"width": 4}


class TestMC3(_VideoContract):
    name, options = "mc3-18", {"width": 4}


class TestS3D(_VideoContract):
    name, options = "s3d", {"width": 4}


class TestX3D(_VideoContract):
    name, options = "x3d", {"stem_dim": 4, "head_dim": 16}


class TestSlowFast(_VideoContract):
    name, options = "slowfast", {"stem_dim": 8}


class TestSlow(_VideoContract):
    name, options = "slow", {"stem_dim": 4}


class TestI3D(_VideoContract):
    name, options = "i3d", {"stem_dim": 4}


class TestR3DConvMasks(_VideoContract):
    """Output-channel masks on 3D convolutions (not only BN γ) fold exactly too."""

    from nft.core import MaskConfig

    name, options = "r3d-18", {"width": 4}
    mask_config = MaskConfig(targets=("conv",))


@pytest.mark.parametrize("name,builder", [
    ("r3d-18", torchvision.models.video.r3d_18),
    ("r2plus1d-18", torchvision.models.video.r2plus1d_18),
    ("mc3-18", torchvision.models.video.mc3_18),
    ("s3d", torchvision.models.video.s3d),
])
def test_full_width_is_torchvisions_network(name, builder):
    """width=64 rebuilds torchvision's architecture: same state_dict keys and shapes."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = build_model(name, 400, frames=16, size=224).state_dict()
        theirs = builder(weights=None).state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]


@pytest.mark.parametrize("name,options", [("r3d-18", {"width": 4}), ("s3d", {"width": 4}),
                                          ("x3d", {"stem_dim": 4, "head_dim": 16}),
                                          ("slowfast", {"stem_dim": 8}), ("i3d", {"stem_dim": 4})])
def test_logits_for_every_family(name, options):
    model = build_model(name, 7, frames=8, size=32, **options).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 8, 32, 32))
    assert out.shape == (3, 7)
    assert not torch.allclose(out.softmax(1).sum(1), torch.zeros(3))  # logits, not probabilities
    assert (out < 0).any()  # pytorchvideo's default X3D head would return softmax probabilities


def test_slowfast_feeds_both_pathways():
    model = build_model("slowfast", 3, frames=8, size=32, stem_dim=8, alpha=4)
    assert isinstance(model, SlowFastClip) and model.alpha == 4
    seen = []
    model.net.blocks[0].multipathway_blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.net.blocks[0].multipathway_blocks[1].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.eval()(torch.rand(1, 3, 8, 32, 32))
    assert seen == [torch.Size([1, 3, 2, 32, 32]), torch.Size([1, 3, 8, 32, 32])]


def test_geometry_errors():
    with pytest.raises(ConfigError, match="multiple of 4"):
        build_model("slowfast", 3, frames=6, size=32)
    with pytest.raises(ConfigError, match="at least 32"):
        build_model("x3d", 3, frames=8, size=16)
    with pytest.raises(ConfigError, match="does not take"):
        build_model("r3d-18", 3, frames=8, size=32, depth=3)
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("c3d", 3, frames=8, size=32)


def test_pytorchvideo_shim_is_contained():
    """pytorchvideo.transforms imports torchvision's removed functional_tensor; the shim fixes it."""
    transforms = import_pytorchvideo("transforms")
    assert hasattr(transforms, "UniformTemporalSubsample")
    assert sys.modules["torchvision.transforms.functional_tensor"] is not None


def test_missing_pytorchvideo_names_the_extra(monkeypatch):
    real_import = builtins.__import__
    for key in [k for k in sys.modules if k.startswith("pytorchvideo")]:
        monkeypatch.delitem(sys.modules, key)

    def fake(name, *args, **kwargs):
        if name.startswith("pytorchvideo"):
            raise ImportError("No module named 'pytorchvideo'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: fake(name))
    with pytest.raises(ConfigError, match=r"nft-video\[pytorchvideo\]"):
        build_model("x3d", 3, frames=8, size=32)
