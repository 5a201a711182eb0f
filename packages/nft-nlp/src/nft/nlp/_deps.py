"""Lazy imports of the heavy text libraries, with an error that says how to install them.

``transformers`` takes seconds to import and ``fairseq`` rarely installs at all, so nothing in
this package imports them at module level: ``nft list`` and the core's entry-point discovery stay
fast, and a missing library fails only the command that needs it, with the fix in the message.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nft.core import ConfigError

__all__ = ["require", "fairseq_available"]

_HINTS = {
    "transformers": "pip install -e packages/nft-nlp (it depends on transformers)",
    "tokenizers": "pip install -e packages/nft-nlp (it depends on tokenizers)",
    "sacrebleu": "pip install -e packages/nft-nlp (it depends on sacrebleu)",
    "fairseq": (
        "fairseq 0.12.2 does not import on Python 3.11; install the third-party fork that does "
        "(pip install fairseq-fixed) or use a transformers model (marian, bart, t5)"
    ),
}


def require(name: str) -> ModuleType:
    """Import ``name`` or raise a :class:`ConfigError` naming the package to install."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        root = name.split(".")[0]
        hint = _HINTS.get(root, f"pip install {root}")
        raise ConfigError(f"{name} is needed here but cannot be imported ({err}); {hint}") from None
    except Exception as err:  # noqa: BLE001 - fairseq 0.12.2 raises ValueError on Python 3.11
        root = name.split(".")[0]
        raise ConfigError(
            f"{name} is installed but fails to import ({type(err).__name__}: {err}); "
            f"{_HINTS.get(root, 'reinstall it')}"
        ) from None


def fairseq_available() -> bool:
    """True when ``import fairseq`` works in this interpreter."""
    try:
        importlib.import_module("fairseq")
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    return True
