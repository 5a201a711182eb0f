"""Registered defenses. Importing this package registers every built-in defense."""

from . import finetune, nft  # noqa: F401  (registration)
from . import anp, awm, fst, ftsam, ibau, nad, rnp, sau  # noqa: F401  (registration: the defense zoo)
from .anp import ANP, ANPConfig
from .awm import AWM, AWMConfig
from .fst import FST, FSTConfig
from .ftsam import FTSAM, FTSAMConfig
from .ibau import IBAU, IBAUConfig
from .nad import NAD, NADConfig
from .rnp import RNP, RNPConfig
from .sau import SAU, SAUConfig
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
    "FST",
    "FSTConfig",
    "FTSAM",
    "FTSAMConfig",
    "FineTune",
    "IBAU",
    "IBAUConfig",
    "FineTuneConfig",
    "InputSpace",
    "NAD",
    "NADConfig",
    "NFTDefense",
    "RNP",
    "RNPConfig",
    "SAU",
    "SAUConfig",
    "get_defense",
]
