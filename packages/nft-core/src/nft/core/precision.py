"""Mixed precision and memory format, as options for GPU users.

``precision`` is ``fp32`` (default), ``bf16`` or ``fp16``: the forward pass and loss run under
``torch.autocast``; fp16 also scales the loss (``GradScaler``) so small mask gradients do not
underflow. ``channels_last`` stores 4-D activations NHWC, which tensor cores prefer.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "grad_scaler", "to_memory_format"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; use one of {PRECISIONS}")


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str):
    """A ``GradScaler`` for fp16, ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def to_memory_format(value, channels_last: bool):
    """Convert a model or a 4-D input batch to channels-last when asked; anything else unchanged."""
    if not channels_last:
        return value
    if isinstance(value, nn.Module):
        return value.to(memory_format=torch.channels_last)
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return value.contiguous(memory_format=torch.channels_last)
    return value
