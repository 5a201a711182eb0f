"""Video classifiers: torchvision's R3D-18, R(2+1)D-18, MC3-18 and S3D with a width option, and
pytorchvideo's X3D, SlowFast, Slow and I3D (see :mod:`nft.video.pyvideo`).

torchvision hard-codes 64 stem channels; the classes here rebuild the same layouts from
torchvision's own blocks with every channel count scaled by ``width / 64``, so ``width=64`` is
exactly torchvision's network (same modules, same ``state_dict`` keys and shapes) and
``width=8`` or ``16`` trains on a CPU. Nothing is downloaded: weights start random.

Every builder takes ``num_classes`` and the clip geometry ``frames`` / ``size`` (pytorchvideo's
heads pool with a kernel fixed by it; torchvision's models pool adaptively and ignore it).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.video import resnet as tv_resnet
from torchvision.models.video.s3d import S3D, SepInceptionBlock3D, TemporalSeparableConv
from torchvision.ops.misc import Conv3dNormActivation

from nft.core import ConfigError, Registry

from . import pyvideo

__all__ = ["MODELS", "ScalableS3D", "ScalableVideoResNet", "build_model", "mc3_18", "r2plus1d_18",
           "r3d_18", "s3d"]


def _scaled(channels: int, width: int) -> int:
    return max(1, int(round(channels * width / 64)))


class ScalableVideoResNet(tv_resnet.VideoResNet):
    """torchvision's ``VideoResNet`` with ``width`` stem channels (64 in torchvision) and
    ``width × (1, 2, 4, 8)`` channels in its four stages. Forward is torchvision's."""

    def __init__(self, block, conv_makers, layers, stem: str, num_classes: int = 400,
                 width: int = 64) -> None:
        nn.Module.__init__(self)
        if width < 1:
            raise ConfigError(f"model width must be ≥ 1, got {width}")
        self.inplanes = width
        if stem == "basic":
            self.stem = nn.Sequential(
                nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        else:  # R(2+1)D's factorised stem: 45 = the mid channels torchvision uses at width 64
            mid = _scaled(45, width)
            self.stem = nn.Sequential(
                nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
                nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
                nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        self.layer1 = self._make_layer(block, conv_makers[0], width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, conv_makers[1], 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, conv_makers[2], 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, conv_makers[3], 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)


def r3d_18(num_classes: int = 400, *, width: int = 64, frames: int | None = None,
           size: int | None = None) -> ScalableVideoResNet:
    """R3D-18 (Tran et al., CVPR 2018): 3×3×3 convolutions throughout."""
    return ScalableVideoResNet(tv_resnet.BasicBlock, [tv_resnet.Conv3DSimple] * 4, [2, 2, 2, 2],
                               "basic", num_classes, width)


def mc3_18(num_classes: int = 400, *, width: int = 64, frames: int | None = None,
           size: int | None = None) -> ScalableVideoResNet:
    """MC3-18: 3D convolutions in the first stage, 2D (1×3×3) in the others."""
    return ScalableVideoResNet(tv_resnet.BasicBlock,
                               [tv_resnet.Conv3DSimple] + [tv_resnet.Conv3DNoTemporal] * 3,
                               [2, 2, 2, 2], "basic", num_classes, width)


def r2plus1d_18(num_classes: int = 400, *, width: int = 64, frames: int | None = None,
                size: int | None = None) -> ScalableVideoResNet:
    """R(2+1)D-18: every 3D convolution factorised into a spatial and a temporal one."""
    return ScalableVideoResNet(tv_resnet.BasicBlock, [tv_resnet.Conv2Plus1D] * 4, [2, 2, 2, 2],
                               "r2plus1d", num_classes, width)


class ScalableS3D(S3D):
    """torchvision's S3D (Xie et al., ECCV 2018) with channels scaled by ``width / 64`` and,
    with ``adaptive_pool=True``, a global average pool instead of torchvision's fixed 2×7×7
    one (which needs 16×224² clips), so small clips fit. Forward is torchvision's."""

    # torchvision's SepInceptionBlock3D arguments after the input channels, block by block
    _BLOCKS = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "pool3",
               (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
               (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "pool2",
               (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]

    def __init__(self, num_classes: int = 400, dropout: float = 0.2, *, width: int = 64,
                 adaptive_pool: bool = False, bn_momentum: float = 0.001) -> None:
        nn.Module.__init__(self)
        if width < 1:
            raise ConfigError(f"model width must be ≥ 1, got {width}")
        norm = partial(nn.BatchNorm3d, eps=0.001, momentum=bn_momentum)
        c = partial(_scaled, width=width)
        layers: list[nn.Module] = [
            TemporalSeparableConv(3, c(64), 7, 2, 3, norm),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            Conv3dNormActivation(c(64), c(64), kernel_size=1, stride=1, norm_layer=norm),
            TemporalSeparableConv(c(64), c(192), 3, 1, 1, norm),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        ]
        channels = c(192)
        for spec in self._BLOCKS:
            if spec == "pool3":
                layers.append(nn.MaxPool3d(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1)))
            elif spec == "pool2":
                layers.append(nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0)))
            else:
                b0, b1m, b1, b2m, b2, b3 = (c(v) for v in spec)
                layers.append(SepInceptionBlock3D(channels, b0, b1m, b1, b2m, b2, b3, norm))
                channels = b0 + b1 + b2 + b3
        self.features = nn.Sequential(*layers)
        self.avgpool = (nn.AdaptiveAvgPool3d(1) if adaptive_pool
                        else nn.AvgPool3d(kernel_size=(2, 7, 7), stride=1))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Conv3d(channels, num_classes, kernel_size=1, stride=1, bias=True))


def s3d(num_classes: int = 400, *, width: int = 64, frames: int | None = None, size: int | None = None,
        dropout: float = 0.2, bn_momentum: float | None = None) -> ScalableS3D:
    """S3D; pools adaptively unless the clip is at least 16×224² (torchvision's geometry).

    torchvision's BN momentum is 0.001 (tuned for long Kinetics training); reduced widths
    default to 0.1 so running statistics settle within a short CPU run.
    """
    adaptive = not (frames is not None and size is not None and frames >= 16 and size >= 224)
    momentum = bn_momentum if bn_momentum is not None else (0.001 if width == 64 else 0.1)
    return ScalableS3D(num_classes, dropout, width=width, adaptive_pool=adaptive, bn_momentum=momentum)


MODELS: Registry = Registry("model")
MODELS.add("r3d-18", r3d_18, aliases=("r3d",))
MODELS.add("r2plus1d-18", r2plus1d_18, aliases=("r2plus1d", "r(2+1)d"))
MODELS.add("mc3-18", mc3_18, aliases=("mc3",))
MODELS.add("s3d", s3d)
MODELS.add("x3d", pyvideo.build_x3d)
MODELS.add("slowfast", pyvideo.build_slowfast)
MODELS.add("slow", pyvideo.build_slow)
MODELS.add("i3d", pyvideo.build_i3d)


def build_model(name: str, num_classes: int, *, frames: int, size: int, **options) -> nn.Module:
    """Build a registered model for ``num_classes`` classes and ``frames × size²`` clips."""
    builder = MODELS.get(name)
    try:
        return builder(num_classes, frames=frames, size=size, **options)
    except TypeError as err:
        raise ConfigError(f"model {name!r} does not take these options {sorted(options)}: {err}") from None


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
