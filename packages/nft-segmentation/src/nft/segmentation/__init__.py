"""nft.segmentation: semantic segmentation for NFT — models, pixel backdoors, segmentation mixing.

>>> from nft.segmentation import modality     # the `segmentation` entry of the `nft` command
>>> from nft.segmentation import SegmentationTask, SegMixUp, build_model, ModelSpec
"""

from .attacks import ATTACKS, BadNetsSeg, HiddenSeg, SegAttack, build_attack
from .augment import AUGMENTATIONS, SegCutMix, SegMixUp
from .data import (
    CANVAS_CLASSES,
    DATASETS,
    VOC_CLASSES,
    SegmentationData,
    TensorSegmentation,
    VOCSegmentationSet,
    load_dataset,
    make_canvases,
)
from .metrics import evaluate_segmentation, mean_iou
from .modality import SegmentationModality, SegmentationRun, modality
from .models import MODELS, ModelSpec, TinySegNet, build_model, default_mask_config
from .task import SegmentationTask

__all__ = [
    "ATTACKS",
    "AUGMENTATIONS",
    "BadNetsSeg",
    "CANVAS_CLASSES",
    "DATASETS",
    "HiddenSeg",
    "MODELS",
    "ModelSpec",
    "SegAttack",
    "SegCutMix",
    "SegMixUp",
    "SegmentationData",
    "SegmentationModality",
    "SegmentationRun",
    "SegmentationTask",
    "TensorSegmentation",
    "TinySegNet",
    "VOCSegmentationSet",
    "VOC_CLASSES",
    "build_attack",
    "build_model",
    "default_mask_config",
    "evaluate_segmentation",
    "load_dataset",
    "make_canvases",
    "mean_iou",
    "modality",
]
