"""torchvision detectors built without downloaded weights, at sizes a CPU can train.

Every builder takes ``num_classes`` (object categories, **without** background) and returns a
plain torchvision detector whose label space is ``0 = background, 1..num_classes = categories``
(RetinaNet and FCOS have no background logit; they get ``num_classes + 1`` outputs so labels mean
the same thing for every family). ``size`` is the side the detector resizes its inputs to; the
torchvision defaults (300/320/800 px) are far too slow for CPU experiments.

``frozen_bn=True`` turns the backbone's BatchNorm layers into ``FrozenBatchNorm2d``, which is what
a torchvision detector fine-tuned from ImageNet weights carries; NFT masks them too (their γ is a
buffer, see :mod:`nft.core.masking`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from nft.core import ConfigError, MaskConfig, MaskTarget, register_mask_target

__all__ = [
    "DETECTORS",
    "build_detector",
    "default_mask_config",
    "freeze_batchnorm",
    "set_input_size",
]


def _register_targets() -> None:
    """SSD300-VGG16 has no BatchNorm; its only normalisation is the L2Norm of conv4_3 with a
    learnable per-channel scale (``scale_weight``, 512 channels, init 20; Liu et al. 2016, §3.1 of
    ParseNet). Registering it as a norm target lets the paper's detector carry a norm mask."""
    from torchvision.models.detection.ssd import SSDFeatureExtractorVGG

    register_mask_target(SSDFeatureExtractorVGG, MaskTarget("norm", ("scale_weight",), 0))


_register_targets()


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def set_input_size(model: nn.Module, size: int) -> nn.Module:
    """Make a torchvision detector resize its inputs to ``size`` (fixed square for SSD)."""
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    old = model.transform
    if isinstance(model, SSD):
        model.transform = GeneralizedRCNNTransform(
            size, size, old.image_mean, old.image_std, size_divisible=1, fixed_size=(size, size))
    else:
        model.transform = GeneralizedRCNNTransform(size, size, old.image_mean, old.image_std)
    return model


def _ssdlite(num_classes: int, size: int, width: float = 1.0, **_: object) -> nn.Module:
    # The builder fixes 320 px and width 1; the pieces are assembled here with torchvision's own
    # parts so both can be chosen (the reduced tail is what torchvision uses without ImageNet weights).
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init

    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = mobilenet_v3_large(weights=None, norm_layer=norm, reduced_tail=True, width_mult=width)
    _normal_init(backbone)
    backbone = _mobilenet_extractor(backbone, 6, norm)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(backbone, (size, size))
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes + 1, norm)
    # Post-processing as torchvision's ssdlite320 builder (score 0.001, NMS 0.55), but at most
    # 100 detections per image (the COCO evaluator's maxDets).
    return SSD(backbone, anchors, (size, size), num_classes + 1, head=head,
               image_mean=[0.5] * 3, image_std=[0.5] * 3, score_thresh=0.001, nms_thresh=0.55,
               detections_per_img=100, topk_candidates=300)


class _TinyBackbone(nn.Module):
    """Four stride-2 conv-BN-ReLU stages; features of the last two (stride 8 and 16)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(stage(3, w), stage(w, 2 * w), stage(2 * w, 4 * w))
        self.down = stage(4 * w, 4 * w)
        self.out_channels = [4 * w, 4 * w]

    def forward(self, x):
        from collections import OrderedDict

        c3 = self.stem(x)
        return OrderedDict([("0", c3), ("1", self.down(c3))])


def _ssd_tiny(num_classes: int, size: int, width: int = 32, **_: object) -> nn.Module:
    # A small SSD (torchvision's SSD class and SSDHead) on a 4-stage BatchNorm CNN: the detector
    # for tests and quick CPU demos; everything NFT does to SSDLite applies to it unchanged.
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    backbone = _TinyBackbone(int(width))
    anchors = DefaultBoxGenerator([[2], [2]], min_ratio=0.25, max_ratio=0.6)
    head = SSDHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1)
    return SSD(backbone, anchors, (size, size), num_classes + 1, head=head, image_mean=[0.5] * 3,
               image_std=[0.5] * 3, score_thresh=0.001, nms_thresh=0.5, detections_per_img=50,
               topk_candidates=100)


def _ssd300(num_classes: int, size: int, **_: object) -> nn.Module:
    from torchvision.models.detection import ssd300_vgg16

    if size < 268:
        raise ConfigError(f"SSD300-VGG16 needs inputs of at least 268 px (its last two layers are "
                          f"unpadded 3×3 convolutions), got size={size}; use size ≥ 268")
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                         detections_per_img=100)
    return set_input_size(model, size)


def _rcnn_kwargs(size: int) -> dict:
    return {"min_size": size, "max_size": size}


def _faster_mobilenet(num_classes: int, size: int, **_: object) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, **_rcnn_kwargs(size))


def _faster_r50(num_classes: int, size: int, **_: object) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                   num_classes=num_classes + 1, **_rcnn_kwargs(size))


def _retinanet(num_classes: int, size: int, **_: object) -> nn.Module:
    from torchvision.models.detection import retinanet_resnet50_fpn

    return retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                  num_classes=num_classes + 1, **_rcnn_kwargs(size))


def _fcos(num_classes: int, size: int, **_: object) -> nn.Module:
    from torchvision.models.detection import fcos_resnet50_fpn

    return fcos_resnet50_fpn(weights=None, weights_backbone=None,
                             num_classes=num_classes + 1, **_rcnn_kwargs(size))


# name -> (builder, default input size, default mask kinds)
DETECTORS: dict[str, tuple[Callable[..., nn.Module], int, tuple[str, ...]]] = {
    "ssdlite": (_ssdlite, 64, ("norm",)),
    "ssd-tiny": (_ssd_tiny, 64, ("norm",)),
    # SSD300-VGG16's only normalisation is one L2Norm, so the conv output channels carry masks too.
    "ssd300-vgg16": (_ssd300, 300, ("norm", "conv")),
    "fasterrcnn-mobilenet": (_faster_mobilenet, 128, ("norm",)),
    "fasterrcnn-r50": (_faster_r50, 128, ("norm",)),
    "retinanet": (_retinanet, 128, ("norm",)),
    "fcos": (_fcos, 128, ("norm",)),
}


def build_detector(name: str, num_classes: int, *, size: int | None = None,
                   frozen_bn: bool = False, **options) -> nn.Module:
    """A randomly initialised torchvision detector (no downloaded weights).

    Args:
        name: one of :data:`DETECTORS`.
        num_classes: object categories, background excluded.
        size: input side the detector resizes to (default: the family's CPU-sized default).
        frozen_bn: turn the backbone's BatchNorm into ``FrozenBatchNorm2d`` (pretrained style).
        options: family options (``width`` for SSDLite's MobileNetV3 width multiplier).
    """
    if name not in DETECTORS:
        raise ConfigError(f"unknown torchvision detector {name!r}; known: {sorted(DETECTORS)}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
    builder, default_size, _ = DETECTORS[name]
    size = int(size or default_size)
    if size < 32:
        raise ConfigError(f"input size {size} is too small for a detector; use ≥ 32")
    model = builder(num_classes, size, **options)
    if frozen_bn:
        freeze_batchnorm(model.backbone)
    return model


def default_mask_config(name: str) -> MaskConfig:
    """Norm layers everywhere they exist (backbone, neck, heads); conv channels where there are none."""
    if name in DETECTORS:
        return MaskConfig(targets=DETECTORS[name][2])
    return MaskConfig()
