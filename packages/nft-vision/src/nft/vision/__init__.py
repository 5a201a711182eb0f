"""nft.vision: image classification for NFT — datasets, models, pattern backdoors, MixUp / CutMix.

>>> from nft.vision import modality               # the `vision` entry of the `nft` command
>>> from nft.vision import load_dataset, build_model, ModelSpec, build_attack
"""

from .attacks import ATTACKS, Attack, build_attack
from .augment import AUGMENTATIONS, CutMix, MixUp
from .data import DATASETS, ImageData, ImageTransform, TensorImages, load_dataset
from .models import MODELS, InputAdapter, ModelSpec, PreActResNet18, build_model, default_mask_config
from .modality import VisionModality, VisionRun, modality

__all__ = [
    "ATTACKS",
    "AUGMENTATIONS",
    "DATASETS",
    "MODELS",
    "Attack",
    "CutMix",
    "ImageData",
    "ImageTransform",
    "InputAdapter",
    "MixUp",
    "ModelSpec",
    "PreActResNet18",
    "TensorImages",
    "VisionModality",
    "VisionRun",
    "build_attack",
    "build_model",
    "default_mask_config",
    "load_dataset",
    "modality",
]
