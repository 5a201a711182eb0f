"""Every segmentation model family passes the core's masking contract on tiny inputs.

torchvision's ResNet-50 / MobileNetV3 models are built once per class (random init, no weights
downloaded) and deep-copied for each contract test, which keeps the file fast. Their BatchNorm
statistics are first calibrated on random batches: with the init statistics (mean 0, var 1) the
activations of a deep random network fade towards zero, and scaling a mask would change the
output by less than any tolerance — a trained model is never in that state.
"""

import copy
import functools

import pytest
import torch

from nft.core import MaskConfig, inject_masks, mask_candidates
from nft.core.testing import MaskingContract
from nft.segmentation import ModelSpec, SegmentationTask, TinySegNet, build_model
from nft.segmentation.task import logits_of


def _inputs():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=None)
def _calibrated(name):
    torch.manual_seed(0)
    options = {"width": 4} if name == "tiny-seg" else {}
    model = build_model(ModelSpec(name, num_classes=5, options=options)).train()
    with torch.no_grad():  # one batch sets the running statistics (momentum 1)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 1.0
        model(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.1
    return model.eval()


class _Cached(MaskingContract):
    name = ""

    def make_model(self):
        return copy.deepcopy(_calibrated(self.name))

    def make_inputs(self):
        # 16 px keeps the ResNet-50 / MobileNetV3 passes cheap; two images because
        # DeepLabV3's image-pooling BatchNorm needs more than one value per channel in training.
        return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class TestTinySegNet(MaskingContract):
    def make_model(self):
        return TinySegNet(num_classes=5, width=4)

    def make_inputs(self):
        return _inputs()


class TestFCNResNet50(_Cached):
    name = "fcn-resnet50"


class TestDeepLabV3MobileNet(_Cached):
    name = "deeplabv3-mobilenet-v3"


class TestLRASPPMobileNet(_Cached):
    name = "lraspp-mobilenet-v3"


@pytest.mark.parametrize("name", ["tiny-seg", "fcn-resnet50", "deeplabv3-mobilenet-v3", "lraspp-mobilenet-v3"])
def test_models_give_per_pixel_logits_at_input_size(name):
    model = _calibrated(name)
    task = SegmentationTask()
    with torch.no_grad():
        logits = task.forward(model, torch.rand(2, 3, 24, 16))
    assert logits.shape == (2, 5, 24, 16)
    assert task.predict(logits).shape == (2, 24, 16)
    assert len([k for _, k in mask_candidates(model) if k == "norm"]) >= 5


def test_torchvision_models_are_built_without_weights():
    model = _calibrated("deeplabv3-mobilenet-v3")
    # Random init: the classifier has our class count and no auxiliary head is attached.
    assert model.state_dict()["classifier.4.weight"].shape[0] == 5
    assert model.aux_classifier is None
    with pytest.raises(Exception, match="3-channel"):
        build_model(ModelSpec("fcn-resnet50", num_classes=3, in_channels=1))
    with pytest.raises(Exception, match="unknown options"):
        build_model(ModelSpec("tiny-seg", num_classes=3, options={"depth": 3}))
    with pytest.raises(Exception, match="unknown model 'unet'"):
        build_model(ModelSpec("unet", num_classes=3))


def test_merged_torchvision_model_keeps_its_class_and_dict_output():
    masked = inject_masks(copy.deepcopy(_calibrated("lraspp-mobilenet-v3")), MaskConfig())
    with torch.no_grad():
        for mask in masked.mask_parameters():
            mask.mul_(0.9)
    merged = masked.merge_and_unload()
    assert type(merged).__name__ == "LRASPP"
    assert logits_of(merged(torch.rand(2, 3, 16, 16))).shape == (2, 5, 16, 16)
