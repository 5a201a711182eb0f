"""nft.detection: Neural mask Fine-Tuning for object detectors.

>>> from nft.detection import build_detector, CanvasDetection, DetectionTask, DetectionMixUp
>>> from nft.core import purify, PurifyConfig
>>> result = purify(detector, clean_images, PurifyConfig(steps=200, batch_size=16),
...                 task=DetectionTask(), augmentation=DetectionMixUp(), collate_fn=detection_collate)
"""

from .attacks import (
    ATTACKS,
    BadDetGMA,
    BadDetODA,
    BadDetOGA,
    BadDetRMA,
    CleanImage,
    DetectionAttack,
    PoisonedDetection,
    TriggeredDetection,
    explore_trigger,
)
from .augment import DetectionMixUp
from .canvas import CanvasDetection
from .datasets import CocoDataset, VOCDataset
from .metrics import attack_success, evaluate_detection, mean_average_precision, untriggered_asr
from .models import DETECTORS, build_detector, default_mask_config, freeze_batchnorm
from .modality import DetectionModality, modality
from .task import DetectionTask, detection_collate, detection_loss

__all__ = [
    "ATTACKS",
    "DETECTORS",
    "BadDetGMA",
    "BadDetODA",
    "BadDetOGA",
    "BadDetRMA",
    "CanvasDetection",
    "CleanImage",
    "CocoDataset",
    "DetectionAttack",
    "DetectionMixUp",
    "DetectionModality",
    "DetectionTask",
    "PoisonedDetection",
    "TriggeredDetection",
    "VOCDataset",
    "attack_success",
    "build_detector",
    "default_mask_config",
    "detection_collate",
    "detection_loss",
    "evaluate_detection",
    "explore_trigger",
    "freeze_batchnorm",
    "mean_average_precision",
    "modality",
    "untriggered_asr",
]
