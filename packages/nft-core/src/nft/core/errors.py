"""The one exception family users see: each message names the problem and the fix."""

from __future__ import annotations

__all__ = ["NFTError", "ConfigError", "DataError", "NonFiniteLossError", "UnsafeFileError"]


class NFTError(Exception):
    """Base class of every error nft raises on purpose."""


class ConfigError(NFTError, ValueError):
    """A configuration value, a name or a combination of options is not usable."""


class DataError(NFTError, ValueError):
    """The data given (clean set, labels, shapes, files) cannot be used as it is."""

    @classmethod
    def model_cannot_run(cls, inputs, err: Exception) -> DataError:
        """The error for a model that fails on the first batch of the clean set."""
        shape = tuple(inputs.shape) if hasattr(inputs, "shape") else type(inputs).__name__
        return cls(f"the model could not run on the clean inputs (batch shape {shape}): {err}. "
                   "Check that the dataset's transform produces what the model expects")


class NonFiniteLossError(NFTError, FloatingPointError):
    """The training loss became NaN or infinite; nothing is written."""


class UnsafeFileError(NFTError, ValueError):
    """A model file is not what it claims to be, or would run code when loaded."""
