"""Image classifiers, built by name with the dataset's channels, size and class count.

The CIFAR-style networks written here (PreActResNet-18, ResNet-18/34/50, VGG-11/16-BN, a small
CNN) take any channel count and any input size ≥ 8 px (global average pooling before the head) and
have a ``width`` multiplier (the number of channels of the first stage; 64 is the published
network), so CPU runs can use a narrow one. MobileNetV2 is torchvision's, with the CIFAR stem
adaptation for small inputs. Any other torchvision or timm classifier is available as
``torchvision:<name>`` / ``timm:<name>`` and gets an :class:`InputAdapter` in front that converts
the channel count and resizes (28×28 grey to 224×224 RGB by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError, MaskConfig

__all__ = [
    "MODELS",
    "InputAdapter",
    "ModelSpec",
    "PreActResNet18",
    "ResNet",
    "SmallCNN",
    "VGG",
    "build_model",
    "default_mask_config",
]


# ---- PreActResNet-18 ------------------------------------------------------------------------
class PreActBlock(nn.Module):
    """BN-ReLU-conv twice, identity (or 1×1 conv) shortcut (He et al., 2016, "Identity Mappings")."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreActResNet-18 as used by the NFT paper's CIFAR experiments and BackdoorBench.

    ``width`` is the channel count of the first stage (64 in the paper; 16 runs ~10× faster on a
    CPU). A final BN-ReLU precedes the pooling (BackdoorBench's version); it is not masked by
    :func:`default_mask_config`, which masks the 16 BN layers inside the residual blocks.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        w = int(width)
        if w < 1:
            raise ConfigError(f"width must be ≥ 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, w, 3, stride=1, padding=1, bias=False)
        planes, layers, in_planes = [w, 2 * w, 4 * w, 8 * w], [], w
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(PreActBlock(in_planes, p, stride), PreActBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(8 * w)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(F.relu(self.bn(out))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


# ---- ResNet (CIFAR stem) --------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNet of the NFT reference code (3×3 stem, no max-pool; the stem BN is ``bn1``),
    with a width multiplier and global average pooling so any input size works."""

    def __init__(self, block, num_blocks, num_classes: int = 10, in_channels: int = 3,
                 width: int = 64) -> None:
        super().__init__()
        w = int(width)
        self.conv1 = nn.Conv2d(in_channels, w, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        in_planes, stages = w, []
        for i, n in enumerate(num_blocks):
            planes = w * 2 ** i
            blocks = []
            for s in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


# ---- VGG with BN ----------------------------------------------------------------------------
VGG_CONFIGS = {
    "vgg11": [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"],
    "vgg16": [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"],
}


class VGG(nn.Module):
    """VGG-11 / VGG-16 with BN (Simonyan & Zisserman; the CIFAR variant with one linear head).

    Channel counts are multiples of ``width`` (64 in the original). Max-pools are skipped once the
    feature map is 1 px, so small inputs (8×8 digits, 28×28) work.
    """

    def __init__(self, config: str = "vgg16", num_classes: int = 10, in_channels: int = 3,
                 width: int = 64, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, int(image_size)
        for item in VGG_CONFIGS[config]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = int(width) * item
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


# ---- small CNN ------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers (two with stride 2), pooling to a 4×4 map, a linear head: the
    fastest model here, for tests and quick runs. Keeping a coarse 4×4 layout (rather than global
    pooling) lets it tell where a small trigger sits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = int(width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(4 * w * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


# ---- torchvision / timm by name -------------------------------------------------------------
class InputAdapter(nn.Module):
    """Put images into the form a model expects: repeat grey to RGB (or average RGB to grey) and
    resize bilinearly. Wraps the model as ``.model`` so its layer names keep a ``model.`` prefix."""

    def __init__(self, model: nn.Module, *, in_channels: int, model_channels: int,
                 input_size: int | None) -> None:
        super().__init__()
        self.model = model
        self.in_channels = int(in_channels)
        self.model_channels = int(model_channels)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels != self.model_channels:
            if self.in_channels == 1:
                x = x.expand(-1, self.model_channels, -1, -1)
            elif self.model_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ConfigError(f"cannot adapt {self.in_channels} input channels to {self.model_channels}")
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        return self.model(x)


def _torchvision_model(name: str, num_classes: int, in_channels: int, image_size: int,
                       input_size: int | None = 224, **kwargs) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError) as err:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:20])
        raise ConfigError(f"torchvision has no classifier {name!r} ({err}); e.g. {known}, …") from None
    return InputAdapter(model, in_channels=in_channels, model_channels=3, input_size=input_size)


def _timm_model(name: str, num_classes: int, in_channels: int, image_size: int,
                input_size: int | None = None, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError("timm models need timm: `pip install nft-vision[timm]`") from None
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                  in_chans=in_channels, **kwargs)
    except RuntimeError as err:
        raise ConfigError(f"timm cannot build {name!r}: {err}") from None
    if input_size is None:
        default = getattr(model, "default_cfg", {}).get("input_size", (3, image_size, image_size))
        needs_fixed = "vit" in name or "deit" in name or "swin" in name
        input_size = default[-1] if needs_fixed else None
    return InputAdapter(model, in_channels=in_channels, model_channels=in_channels, input_size=input_size)


def _mobilenet_v2(num_classes: int, in_channels: int, image_size: int, width: float = 1.0) -> nn.Module:
    """torchvision's MobileNetV2; for inputs ≤ 64 px the stem and first stride-2 block use stride 1
    (the usual CIFAR adaptation), and the stem takes ``in_channels``."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=float(width))
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride=1 if image_size <= 64 else 2,
                                     padding=1, bias=False)
    if image_size <= 64:
        model.features[2].conv[1][0].stride = (1, 1)  # first depthwise stride-2 block
    return model


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in a run folder as ``model.json``."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(data["name"], int(data["num_classes"]), int(data["in_channels"]),
                   int(data["image_size"]), dict(data.get("args", {})))


Builder = Callable[..., nn.Module]
MODELS: dict[str, Builder] = {
    "preactresnet18": lambda c, ch, s, **a: PreActResNet18(c, ch, **a),
    "resnet18": lambda c, ch, s, **a: ResNet(BasicBlock, [2, 2, 2, 2], c, ch, **a),
    "resnet34": lambda c, ch, s, **a: ResNet(BasicBlock, [3, 4, 6, 3], c, ch, **a),
    "resnet50": lambda c, ch, s, **a: ResNet(Bottleneck, [3, 4, 6, 3], c, ch, **a),
    "vgg11-bn": lambda c, ch, s, **a: VGG("vgg11", c, ch, image_size=s, **a),
    "vgg16-bn": lambda c, ch, s, **a: VGG("vgg16", c, ch, image_size=s, **a),
    "mobilenetv2": lambda c, ch, s, **a: _mobilenet_v2(c, ch, s, **a),
    "small-cnn": lambda c, ch, s, **a: SmallCNN(c, ch, **a),
}


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a fresh model from its spec (random weights; seed torch first for determinism)."""
    name, args = spec.name, dict(spec.args)
    if name.startswith("torchvision:"):
        return _torchvision_model(name.split(":", 1)[1], spec.num_classes, spec.in_channels,
                                  spec.image_size, **args)
    if name.startswith("timm:"):
        return _timm_model(name.split(":", 1)[1], spec.num_classes, spec.in_channels,
                           spec.image_size, **args)
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}, or torchvision:<name> / "
            "timm:<name> for any torchvision or timm classifier"
        )
    try:
        return MODELS[name](spec.num_classes, spec.in_channels, spec.image_size, **args)
    except TypeError as err:
        raise ConfigError(f"model {name!r} does not take these options {args}: {err}") from None


def default_mask_config(model_name: str) -> MaskConfig | None:
    """The masks NFT trains for a model family, or ``None`` for the core default (every norm γ).

    For the ResNets the NFT reference code masks every BN inside the residual blocks and leaves
    the stem BN plain (nazmul-karim170/NFT, src/networks/network_cifar10.py); PreActResNet-18 has
    no stem BN, and its final BN is outside the blocks, so both map to "BN layers in layer1-4".
    """
    if model_name in ("preactresnet18", "resnet18", "resnet34", "resnet50"):
        return MaskConfig(targets=("norm",), include=(r"layer\d\..*",))
    return None
