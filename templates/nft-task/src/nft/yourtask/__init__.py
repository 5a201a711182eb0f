"""nft.yourtask: the `yourtask` modality of nft.

>>> from nft.yourtask import modality    # what the `nft.modalities` entry point loads
"""

from .attacks import ATTACKS, SpikeAttack
from .augment import AUGMENTATIONS
from .data import DATASETS, ToySignals, load_dataset
from .models import MODELS, TinyNet, build_model, default_mask_config
from .modality import YourTaskModality, modality
from .task import YourTaskTask

__all__ = [
    "ATTACKS",
    "AUGMENTATIONS",
    "DATASETS",
    "MODELS",
    "SpikeAttack",
    "TinyNet",
    "ToySignals",
    "YourTaskModality",
    "YourTaskTask",
    "build_model",
    "default_mask_config",
    "load_dataset",
    "modality",
]
