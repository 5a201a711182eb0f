"""Every vision model family passes the core's masking contract; names and adaptation work."""

from __future__ import annotations

import pytest
import torch

from nft.core import ConfigError, inject_masks
from nft.core.testing import MaskingContract
from nft.vision.models import InputAdapter, ModelSpec, build_model, default_mask_config


def _model(name, channels=1, size=16, **args):
    return build_model(ModelSpec(name, 10, channels, size, args))


def calibrated(model, channels, size):
    """Set BN running statistics from one batch, as a trained model has them: with the default
    (0, 1) statistics, deep plain nets such as VGG shrink activations to ~1e-5 and every output
    equals the head's bias."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.rand(8, channels, size, size, generator=torch.Generator().manual_seed(2)))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


class _Contract(MaskingContract):
    channels, size = 1, 16

    def make_model(self):
        torch.manual_seed(0)
        return calibrated(self.build(), self.channels, self.size)

    def make_inputs(self):
        return torch.rand(3, self.channels, self.size, self.size, generator=torch.Generator().manual_seed(1))


class TestPreActResNet18(_Contract):
    mask_config = default_mask_config("preactresnet18")

    def build(self):
        return _model("preactresnet18", width=4)


class TestResNet18(_Contract):
    channels = 3
    mask_config = default_mask_config("resnet18")

    def build(self):
        return _model("resnet18", channels=3, width=4)


class TestResNet50(_Contract):
    size = 8

    def build(self):
        return _model("resnet50", width=2)


class TestVGG16BN(_Contract):
    def build(self):
        return _model("vgg16-bn", width=4)


class TestVGG11BN(_Contract):
    def build(self):
        return _model("vgg11-bn", width=4)


class TestMobileNetV2(_Contract):
    channels = 3

    def build(self):
        return _model("mobilenetv2", channels=3, width=0.25)


class TestSmallCNN(_Contract):
    def build(self):
        return _model("small-cnn", width=4)


class TestTorchvisionByName(_Contract):
    """A torchvision ImageNet classifier fed 16×16 grey images through the input adapter."""

    def build(self):
        return _model("torchvision:resnet18", input_size=32)


def test_mask_counts_follow_the_reference():
    # 16 BN inside PreActResNet-18's blocks; ResNet-18's 19 (stem BN left plain, shortcuts masked),
    # as nazmul-karim170/NFT's Masked_BN2d placement.
    assert len(inject_masks(_model("preactresnet18", width=4), default_mask_config("preactresnet18"))) == 16
    assert len(inject_masks(_model("resnet18", width=4), default_mask_config("resnet18"))) == 19
    assert default_mask_config("vgg16-bn") is None


@pytest.mark.parametrize("name,channels,size", [
    ("preactresnet18", 1, 28), ("resnet34", 3, 32), ("vgg16-bn", 1, 8), ("mobilenetv2", 3, 64),
    ("small-cnn", 3, 28),
])
def test_output_shape_for_any_input_size(name, channels, size):
    model = _model(name, channels, size, width=2 if name != "mobilenetv2" else 0.25).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 10)


def test_width_multiplier_shrinks_preactresnet():
    wide = sum(p.numel() for p in _model("preactresnet18", width=64).parameters())
    narrow = sum(p.numel() for p in _model("preactresnet18", width=16).parameters())
    assert 11.0e6 < wide < 11.4e6  # the paper's PreActResNet-18 (11.2M parameters)
    assert narrow < wide / 12


def test_input_adapter_makes_grey_small_images_rgb_224():
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["shape"] = tuple(x.shape)
            return x.mean(dim=(2, 3))

    adapter = InputAdapter(Probe(), in_channels=1, model_channels=3, input_size=224)
    adapter(torch.rand(2, 1, 28, 28))
    assert seen["shape"] == (2, 3, 224, 224)


def test_unknown_models_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="known models"):
        _model("resnet9000")
    with pytest.raises(ConfigError, match="does not take"):
        _model("small-cnn", depth=3)
    with pytest.raises(ConfigError, match="torchvision has no classifier"):
        _model("torchvision:not_a_model")


def test_timm_is_optional_and_named_in_the_error():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"nft-vision\[timm\]"):
            _model("timm:resnet18")
    else:
        model = _model("timm:resnet18").eval()
        assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)
