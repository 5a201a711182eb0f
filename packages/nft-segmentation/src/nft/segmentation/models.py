"""Segmentation models: torchvision's FCN / DeepLabV3 / LRASPP (no downloaded weights) and a tiny
encoder-decoder that trains on a CPU in minutes.

Every model maps an N×3×H×W image batch to per-pixel class scores at the input's resolution.
torchvision's models return ``{"out": logits}`` (plus ``"aux"`` when built with an auxiliary
head); :class:`~nft.segmentation.task.SegmentationTask` reads ``"out"``, so both kinds are used
the same way. The torchvision models are built with ``weights=None, weights_backbone=None``:
nothing is downloaded and the backbone starts from random initialisation.

All of them carry BatchNorm layers, so NFT's default mask placement (one mask per normalisation
channel's γ) applies unchanged; no extra mask target is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, MaskConfig

__all__ = ["MODELS", "ModelSpec", "TinySegNet", "build_model", "default_mask_config"]


def _cbr(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class TinySegNet(nn.Module):
    """A small encoder-decoder: stride-4 encoder, an image-pooling context branch, a decoder at
    half resolution with a skip connection, and logits upsampled to the input size.

    The pooled branch (global average of the deepest features, as DeepLabV3's image pooling)
    lets a trigger anywhere in the image change the prediction of every pixel, which a
    pixel-level backdoor needs and a small receptive field would not give. Decoding at half
    resolution (as DeepLab decodes at a fraction of the input) keeps a CPU training step cheap.
    """

    def __init__(self, num_classes: int = 11, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if width < 2:
            raise ConfigError(f"TinySegNet width must be ≥ 2, got {width}")
        w = width
        self.stem = nn.Sequential(_cbr(in_channels, w), _cbr(w, 2 * w, stride=2))
        self.enc2 = _cbr(2 * w, 2 * w)
        self.enc3 = nn.Sequential(_cbr(2 * w, 4 * w, stride=2), _cbr(4 * w, 4 * w, dilation=2))
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * w, 4 * w, 1, bias=False),
                                     nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(nn.Conv2d(8 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w),
                                  nn.ReLU(inplace=True))
        self.decoder = _cbr(4 * w, 2 * w)
        self.classifier = nn.Conv2d(2 * w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e2 = self.enc2(self.stem(x))
        e3 = self.enc3(e2)
        f = self.fuse(torch.cat([e3, self.context(e3).expand_as(e3)], 1))
        f = F.interpolate(f, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([f, e2], 1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _torchvision(builder_name: str, aux: bool = True) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int = 3, **options) -> nn.Module:
        import torchvision.models.segmentation as seg

        if in_channels != 3:
            raise ConfigError(f"torchvision's {builder_name} takes 3-channel images, this dataset has "
                              f"{in_channels}; use tiny-seg (it takes any channel count)")
        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if aux:
            kwargs["aux_loss"] = bool(options.pop("aux_loss", False))
        if options:
            raise ConfigError(f"unknown options {sorted(options)} for {builder_name}"
                              + ("; it takes aux_loss" if aux else "; it takes none"))
        return getattr(seg, builder_name)(**kwargs)

    build.__doc__ = f"torchvision's ``{builder_name}`` with random initialisation (no weights downloaded)."
    return build


def _tiny(num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    unknown = sorted(set(options) - {"width"})
    if unknown:
        raise ConfigError(f"unknown options {unknown} for tiny-seg; it takes width")
    return TinySegNet(num_classes, in_channels, int(options.get("width", 16)))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "tiny-seg": _tiny,
    "fcn-resnet50": _torchvision("fcn_resnet50"),
    "fcn-resnet101": _torchvision("fcn_resnet101"),
    "deeplabv3-resnet50": _torchvision("deeplabv3_resnet50"),
    "deeplabv3-resnet101": _torchvision("deeplabv3_resnet101"),
    "deeplabv3-mobilenet-v3": _torchvision("deeplabv3_mobilenet_v3_large"),
    "lraspp-mobilenet-v3": _torchvision("lraspp_mobilenet_v3_large", aux=False),
}
"""Model name -> builder ``(num_classes, in_channels, **options) -> nn.Module``."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a run's network (written to ``model.json`` in the run folder)."""

    name: str
    num_classes: int
    in_channels: int = 3
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**data)


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.name not in MODELS:
        raise ConfigError(f"unknown model {spec.name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[spec.name](spec.num_classes, spec.in_channels, **dict(spec.options))


def default_mask_config(model_name: str) -> MaskConfig:
    """Where NFT puts masks on this model: every BatchNorm γ (the paper's placement) and every
    convolution's output channels. On canvas-seg the conv masks lowered ASR by 1–2 points more than
    norm masks alone (docs/segmentation.md); a norm-only run is ``--set masks.targets=[norm]``."""
    return MaskConfig(targets=("norm", "conv"))
