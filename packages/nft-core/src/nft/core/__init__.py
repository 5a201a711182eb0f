"""nft.core: Neural mask Fine-Tuning (NFT) for any PyTorch model.

>>> from nft.core import purify, PurifyConfig
>>> result = purify(model, clean_dataset, config=PurifyConfig(steps=300, batch_size=64, seed=0))
>>> result.model   # purified nn.Module, masks folded in, same class as `model`
>>> result.masks   # {layer name: tensor}
"""

from .api import purify
from .attacks import PoisonedDataset, TriggeredDataset, attack_target, choose_poison_indices
from .augment import Augmentation, CutMix, Mixed, MixUp, NoAugmentation, RandomPatterns, mixed_loss
from .config import DefenseConfig
from .data import SeededBatches, dataset_labels, select_clean_subset
from .defenses import DEFENSES, Defense, DefenseContext, DefenseOutcome, InputSpace, get_defense
from .errors import ConfigError, DataError, NFTError, NonFiniteLossError, UnsafeFileError
from .guard import PurificationWarning
from .io import RunFolder, load_model_weights, load_tensors, save_tensors
from .masking import MaskConfig, MaskedModel, MaskTarget, inject_masks, mask_candidates, register_mask_target
from .metrics import defense_effectiveness_rating, evaluate_classification
from .modality import AttackSpec, Experiment, Modality
from .objective import DepthDecayClamp, L1ToOne, NoClamp
from .purify import PRESETS, Callback, Purifier, PurifyConfig, PurifyResult
from .registry import Registry, available_modalities, load_modality
from .tasks import ClassificationTask, Task
from .training import OneCycleSGD, TrainConfig, train_model

__version__ = "0.1.0"

__all__ = [
    "DEFENSES",
    "PRESETS",
    "AttackSpec",
    "Augmentation",
    "Callback",
    "ClassificationTask",
    "ConfigError",
    "CutMix",
    "DataError",
    "Defense",
    "DefenseConfig",
    "DefenseContext",
    "DefenseOutcome",
    "DepthDecayClamp",
    "Experiment",
    "InputSpace",
    "L1ToOne",
    "MaskConfig",
    "MaskTarget",
    "MaskedModel",
    "MixUp",
    "Mixed",
    "Modality",
    "NFTError",
    "NoAugmentation",
    "NoClamp",
    "NonFiniteLossError",
    "OneCycleSGD",
    "PoisonedDataset",
    "PurificationWarning",
    "PurifyConfig",
    "PurifyResult",
    "Purifier",
    "RandomPatterns",
    "Registry",
    "RunFolder",
    "SeededBatches",
    "Task",
    "TrainConfig",
    "TriggeredDataset",
    "UnsafeFileError",
    "attack_target",
    "available_modalities",
    "choose_poison_indices",
    "dataset_labels",
    "defense_effectiveness_rating",
    "evaluate_classification",
    "get_defense",
    "inject_masks",
    "load_modality",
    "load_model_weights",
    "load_tensors",
    "mask_candidates",
    "mixed_loss",
    "purify",
    "register_mask_target",
    "save_tensors",
    "select_clean_subset",
    "train_model",
]
