"""Named things users type (models, attacks, datasets, defenses) and modality discovery.

A modality package (``nft-vision``, ``nft-video``, …) exposes one :class:`Modality` object
through the entry-point group ``nft.modalities``; the core finds installed modalities there and
never imports one by name.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "Registry", "available_modalities", "load_modality"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nft.modalities"
T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, with metadata. Duplicate names are an error, unknown names list the known."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[T, dict[str, Any]]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = (), **meta: Any) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.add(name, obj, aliases=aliases, **meta)
            return obj

        return add

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), **meta: Any) -> None:
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                raise ConfigError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = (obj, meta)
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or 'none'}"
            )
        return name

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)][0]

    def meta(self, name: str) -> dict[str, Any]:
        return dict(self._entries[self.canonical(name)][1])

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(fnmatch.filter(self._entries, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def available_modalities() -> list[str]:
    """Names of the installed modality packages."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_modality(name: str):
    """The :class:`~nft.core.modality.Modality` object of an installed package."""
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        installed = ", ".join(available_modalities()) or "none"
        raise ConfigError(
            f"no modality {name!r} is installed (installed: {installed}); "
            f"install it with `pip install -e packages/nft-{name}`"
        )
    return found[0].load()
