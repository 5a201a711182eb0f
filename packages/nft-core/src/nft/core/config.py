"""Configuration dataclasses: the shared base of every defense's configuration.

Configurations are frozen dataclasses with documented fields. They convert to and from plain
dicts (for ``config.json`` and YAML), reject unknown fields with the list of known ones, and are
copied with :meth:`replace`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["DefenseConfig", "config_from_dict", "config_to_dict", "field_types"]

C = TypeVar("C")


@dataclass(frozen=True)
class DefenseConfig:
    """Options every defense shares: reproducibility, device, progress display."""

    seed: int = 0
    """Seeds every random draw of the run; the same seed gives the same result on CPU."""
    device: str | None = None
    """``cuda`` / ``cpu`` / ``cuda:1`` …; ``None`` picks CUDA when available."""
    progress: bool = True
    """Show a progress bar."""

    def replace(self: C, **changes: Any) -> C:
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as err:
            known = sorted(f.name for f in dataclasses.fields(self))
            raise ConfigError(f"{err}; {type(self).__name__} fields are {known}") from None

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        return config_from_dict(cls, data)


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_to_dict(config: Any) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_from_dict(cls: type[C], data: dict) -> C:
    """Build ``cls`` from a plain dict, converting nested dataclasses and lists to tuples."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} needs a mapping of fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - set(fields))
    if extra:
        raise ConfigError(f"unknown {cls.__name__} fields {extra}; known: {sorted(fields)}")
    hints = field_types(cls)
    values = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"cannot build {cls.__name__}: {err}") from None
