"""pytorchvideo's X3D, SlowFast, Slow and I3D, built without downloaded weights.

pytorchvideo is optional (extra ``nft-video[pytorchvideo]``) and imported only when one of these
models is built. pytorchvideo 0.1.5 imports ``torchvision.transforms.functional_tensor``, which
torchvision removed; :func:`import_pytorchvideo` is the one place that installs the
compatibility alias (to ``torchvision.transforms.functional``, which holds the same functions)
before importing it.

Every builder takes the clip geometry (``frames``, ``size``) because pytorchvideo's heads pool
with a fixed kernel computed from it, and a width (``stem_dim``) so CPU runs can use small
networks. Head activations are off: the models return logits.
"""

from __future__ import annotations

import importlib
import math
import sys
from types import ModuleType

import torch
from torch import nn

from nft.core import ConfigError

__all__ = ["SlowFastClip", "build_i3d", "build_slow", "build_slowfast", "build_x3d", "import_pytorchvideo"]

_SHIM = "torchvision.transforms.functional_tensor"


def import_pytorchvideo(submodule: str = "models") -> ModuleType:
    """Import ``pytorchvideo.<submodule>`` with the torchvision shim in place."""
    if _SHIM not in sys.modules:
        try:
            importlib.import_module(_SHIM)
        except ImportError:
            import torchvision.transforms.functional as functional

            sys.modules[_SHIM] = functional
    try:
        return importlib.import_module(f"pytorchvideo.{submodule}")
    except ImportError as err:
        raise ConfigError(
            f"this model needs pytorchvideo ({err}); install it with "
            "`pip install nft-video[pytorchvideo]` (or `pip install pytorchvideo`)"
        ) from None


def _check(frames: int, size: int, temporal: int, spatial: int, name: str) -> None:
    if frames < temporal or frames % temporal:
        raise ConfigError(f"{name} needs a clip length that is a multiple of {temporal}, got {frames}")
    if size < spatial:
        raise ConfigError(f"{name} needs frames of at least {spatial} px, got {size}")


def build_x3d(num_classes: int = 10, *, frames: int = 8, size: int = 32, width: float = 1.0,
              depth: float = 1.0, stem_dim: int = 8, head_dim: int = 64, dropout: float = 0.0,
              in_channels: int = 3) -> nn.Module:
    """X3D (Feichtenhofer, CVPR 2020). X3D-XS is ``width=2.0, depth=2.2, stem_dim=12,
    head_dim=2048`` on 4×160² clips; the defaults here are a CPU-sized variant."""
    x3d = import_pytorchvideo("models.x3d")
    _check(frames, size, 1, 32, "X3D")
    return x3d.create_x3d(
        input_channel=in_channels, input_clip_length=frames, input_crop_size=size,
        model_num_class=num_classes, dropout_rate=dropout, width_factor=width, depth_factor=depth,
        stem_dim_in=stem_dim, head_dim_out=head_dim, head_activation=None,
    )


def _resnet_kwargs(frames: int, size: int, stem_dim: int, temporal_pool: int):
    return {
        "stem_dim_out": stem_dim,
        "head_pool_kernel_size": (frames // temporal_pool, math.ceil(size / 32), math.ceil(size / 32)),
        "head_activation": None,
    }


def build_slow(num_classes: int = 10, *, frames: int = 8, size: int = 32, stem_dim: int = 8,
               dropout: float = 0.0, in_channels: int = 3) -> nn.Module:
    """The Slow pathway alone as a ResNet-50 (pytorchvideo's ``slow_r50`` layout:
    1×7×7 stem, temporal kernels only in res4 / res5)."""
    resnet = import_pytorchvideo("models.resnet")
    _check(frames, size, 1, 32, "Slow")
    return resnet.create_resnet(
        input_channel=in_channels, model_depth=50, model_num_class=num_classes, dropout_rate=dropout,
        stem_conv_kernel_size=(1, 7, 7), **_resnet_kwargs(frames, size, stem_dim, 1),
    )


def build_i3d(num_classes: int = 10, *, frames: int = 8, size: int = 32, stem_dim: int = 8,
              dropout: float = 0.0, in_channels: int = 3) -> nn.Module:
    """Inflated 3D ResNet-50 (pytorchvideo's ``i3d_r50`` layout: 5×7×7 stem, a temporal max
    pool after res2, alternating 3×1×1 / 1×1×1 temporal kernels)."""
    resnet = import_pytorchvideo("models.resnet")
    _check(frames, size, 2, 32, "I3D")
    return resnet.create_resnet(
        input_channel=in_channels, model_depth=50, model_num_class=num_classes, dropout_rate=dropout,
        stem_conv_kernel_size=(5, 7, 7), stage1_pool=nn.MaxPool3d,
        stage_conv_a_kernel_size=((3, 1, 1), [(3, 1, 1), (1, 1, 1)], [(3, 1, 1), (1, 1, 1)],
                                  [(1, 1, 1), (3, 1, 1)]),
        **_resnet_kwargs(frames, size, stem_dim, 2),
    )


class SlowFastClip(nn.Module):
    """SlowFast taking one clip tensor: the fast pathway sees every frame, the slow pathway every
    ``alpha``-th one. pytorchvideo's SlowFast wants the two pathways as a list; wrapping it keeps
    one clip tensor as the input of every video model (Task, MixUp, triggers)."""

    def __init__(self, net: nn.Module, alpha: int) -> None:
        super().__init__()
        self.net = net
        self.alpha = alpha

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        slow = clip[:, :, :: self.alpha]
        return self.net([slow, clip])


def build_slowfast(num_classes: int = 10, *, frames: int = 8, size: int = 32, stem_dim: int = 8,
                   alpha: int = 4, beta: int = 8, dropout: float = 0.0, in_channels: int = 3) -> nn.Module:
    """SlowFast R-50 (Feichtenhofer et al., ICCV 2019): speed ratio ``alpha`` (4 here; 8 in
    SlowFast 8×8 on 32-frame clips), channel ratio ``beta`` = 8, time-strided lateral fusion."""
    slowfast = import_pytorchvideo("models.slowfast")
    _check(frames, size, alpha, 32, "SlowFast")
    if stem_dim % beta:
        raise ConfigError(f"SlowFast stem_dim ({stem_dim}) must be a multiple of beta ({beta})")
    spatial = math.ceil(size / 32)
    net = slowfast.create_slowfast(
        input_channels=(in_channels, in_channels), model_depth=50, model_num_class=num_classes,
        dropout_rate=dropout, slowfast_channel_reduction_ratio=(beta,),
        slowfast_fusion_conv_stride=(alpha, 1, 1), slowfast_fusion_conv_kernel_size=(7, 1, 1),
        stem_dim_outs=(stem_dim, stem_dim // beta),
        head_pool_kernel_sizes=((frames // alpha, spatial, spatial), (frames, spatial, spatial)),
        head_activation=None,
    )
    return SlowFastClip(net, alpha)
