"""The one exception family users see: each message names the problem and the fix."""

from __future__ import annotations

__all__ = ["NFTError", "ConfigError", "DataError", "NonFiniteLossError", "UnsafeFileError"]


class NFTError(Exception):
    """Base class of every error nft raises on purpose."""


class ConfigError(NFTError, ValueError):
    """A configuration value, a name or a combination of options is not usable."""


class DataError(NFTError, ValueError):
    """The data given (clean set, labels, shapes, files) cannot be used as it is."""


class NonFiniteLossError(NFTError, FloatingPointError):
    """The training loss became NaN or infinite; nothing is written."""


class UnsafeFileError(NFTError, ValueError):
    """A model file is not what it claims to be, or would run code when loaded."""
