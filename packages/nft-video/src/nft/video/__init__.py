"""nft.video: Neural mask Fine-Tuning for video action recognition.

>>> from nft.video import modality            # the ``video`` entry of ``nft`` (group nft.modalities)
>>> from nft.video import build_model, ClipMixUp, VideoMix, motion_dataset, evaluate_video

Models: torchvision R3D-18 / R(2+1)D-18 / MC3-18 / S3D (with a width option) and pytorchvideo
X3D / SlowFast / Slow / I3D (optional extra). Data: the embedded ``motion`` set (real
Fashion-MNIST images moving on a canvas, written as video files), UCF-101 and HMDB-51 with their
official splits, all decoded with PyAV. Attacks: ``badnets``, ``blend``, ``clean-label``.
"""

from .attacks import ATTACKS, CleanLabelConfig, ClipTrigger, badnets_trigger, blend_trigger
from .augment import ClipMixUp, VideoMix
from .datasets import VideoClips, hmdb51_split, ucf101_split
from .io import read_video, write_video
from .metrics import evaluate_video
from .modality import VideoModality, VideoSetup, modality
from .models import MODELS, build_model
from .motion import MOTIONS, MotionConfig, motion_dataset

__version__ = "0.1.0"

__all__ = [
    "ATTACKS",
    "MODELS",
    "MOTIONS",
    "CleanLabelConfig",
    "ClipMixUp",
    "ClipTrigger",
    "MotionConfig",
    "VideoClips",
    "VideoMix",
    "VideoModality",
    "VideoSetup",
    "badnets_trigger",
    "blend_trigger",
    "build_model",
    "evaluate_video",
    "hmdb51_split",
    "modality",
    "motion_dataset",
    "read_video",
    "ucf101_split",
    "write_video",
]
