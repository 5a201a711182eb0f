"""Models of this task. Replace ``TinyNet`` with real model families; keep one tiny one for tests.

Each family must pass ``nft.core.testing.MaskingContract`` (see ``tests/``): masks are invisible
at injection, fold into the weights exactly, and are the only trainable tensors. Normalisation,
convolution and linear layers of ``torch.nn`` are maskable out of the box; a custom layer type
needs ``nft.core.register_mask_target`` (done in ``default_mask_config``'s module, at import).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nft.core import ConfigError, MaskConfig

__all__ = ["MODELS", "TinyNet", "build_model", "default_mask_config"]


class TinyNet(nn.Module):
    """Conv1d-BN-ReLU blocks, global average pooling, a linear head: inputs N×C×L."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, w, 5, padding=2, bias=False), nn.BatchNorm1d(w), nn.ReLU(),
            nn.Conv1d(w, 2 * w, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(2 * w), nn.ReLU(),
            nn.Conv1d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm1d(2 * w), nn.ReLU(),
        )
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=-1))


MODELS: dict[str, Callable[..., nn.Module]] = {"tiny": TinyNet}
"""Model name -> builder ``(num_classes, in_channels, **options)``; the names users type."""


def build_model(name: str, num_classes: int, in_channels: int, options: dict | None = None) -> nn.Module:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels, **dict(options or {}))


def default_mask_config(name: str) -> MaskConfig:
    """Where NFT puts masks on model ``name``: the γ of every normalisation layer (the paper)."""
    return MaskConfig(targets=("norm",))
