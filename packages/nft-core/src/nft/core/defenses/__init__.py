"""Registered defenses. Importing this package registers every built-in defense."""

from . import finetune, nft  # noqa: F401  (registration)
from . import anp  # noqa: F401  (registration: the defense zoo)
from .anp import ANP, ANPConfig
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome, InputSpace, get_defense
from .finetune import FineTune, FineTuneConfig
from .nft import NFTDefense

__all__ = [
    "ANP",
    "ANPConfig",
    "DEFENSES",
    "Defense",
    "DefenseContext",
    "DefenseOutcome",
    "FineTune",
    "FineTuneConfig",
    "InputSpace",
    "NFTDefense",
    "get_defense",
]
