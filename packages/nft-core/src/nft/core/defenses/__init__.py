"""Registered defenses. Importing this package registers every built-in defense."""

from . import finetune, nft  # noqa: F401  (registration)
from . import anp, awm, ftsam, ibau, rnp  # noqa: F401  (registration: the defense zoo)
from .anp import ANP, ANPConfig
from .awm import AWM, AWMConfig
from .ftsam import FTSAM, FTSAMConfig
from .ibau import IBAU, IBAUConfig
from .rnp import RNP, RNPConfig
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome, InputSpace, get_defense
from .finetune import FineTune, FineTuneConfig
from .nft import NFTDefense

__all__ = [
    "ANP",
    "ANPConfig",
    "AWM",
    "AWMConfig",
    "DEFENSES",
    "Defense",
    "DefenseContext",
    "DefenseOutcome",
    "FTSAM",
    "FTSAMConfig",
    "FineTune",
    "IBAU",
    "IBAUConfig",
    "FineTuneConfig",
    "InputSpace",
    "NFTDefense",
    "RNP",
    "RNPConfig",
    "get_defense",
]
