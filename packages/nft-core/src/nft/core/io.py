"""Files: atomic writes, safe model loading, and the run folder.

Every file is written to a temporary name in the same directory and then renamed, so a reader
never sees half a file. A run folder is built under a temporary name and renamed into place only
when the run succeeded, so a failed run leaves no partial output.

Model files never run code when loaded: ``.safetensors`` is plain tensors, and ``.pt`` / ``.pth``
files go through ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, UnsafeFileError

__all__ = [
    "RunFolder",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_model_weights",
    "load_tensors",
    "read_json",
    "replace_marked_block",
    "save_tensors",
    "to_jsonable",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, tensors, tuples and non-finite floats as plain JSON values."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def replace_marked_block(path: str | Path, start: str, end: str, block: str) -> None:
    """Replace the text between the marker lines ``start`` and ``end`` of a Markdown file.

    The results scripts write their tables into the guides this way, so rerunning one updates
    the guide without touching the prose around the table. A missing file is created with
    just the block; a file without both markers is an error and is left as it was.
    """
    path = Path(path)
    text = path.read_text() if path.is_file() else f"{start}\n{end}\n"
    if start not in text or end not in text:
        raise ConfigError(f"{path} has no {start} … {end} block to replace; add the two marker lines")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, f"{head}{start}\n{block}{end}{tail}")


def write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(value), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; check the path (a run folder has config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); rewrite or regenerate it") from None


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Save tensors as safetensors (contiguous CPU copies; shared storage is split)."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(plain))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a tensor file without running code from it.

    ``.safetensors`` is read directly; anything else goes through
    ``torch.load(weights_only=True)``, which refuses a pickle that would execute code.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError) as err:
            raise UnsafeFileError(
                f"{path} is not a valid safetensors file ({err}); re-export it with "
                "safetensors.torch.save_file"
            ) from None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise UnsafeFileError(
            f"refused to load {path}: it is not a plain tensor checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). nft never unpickles code; save the "
            "weights with safetensors or torch.save(model.state_dict())"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeFileError(f"{path} does not hold a state_dict of tensors; save model.state_dict()")
    return dict(obj)


def load_model_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict file into ``model`` strictly, with a clear error on mismatch."""
    state = load_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{path} does not fit {type(model).__name__}: missing keys {missing[:5]}, unexpected "
            f"keys {unexpected[:5]}, wrong shapes {wrong[:5]}; was it saved from the same model spec?"
        )
    model.load_state_dict(state, strict=True)
    return model


class RunFolder:
    """A folder that holds one run: config, weights, report. Created all at once.

    Use it as a context manager: files go to a hidden staging folder next to ``path``; on
    success it is renamed to ``path``, on error it is deleted, so no partial run is left.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, discard: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.discard = discard
        """Build the folder and throw it away (non-zero ranks under torchrun write nothing)."""
        if self.path.exists() and not overwrite and not discard:
            raise ConfigError(f"{self.path} already exists; choose another --out or pass --overwrite")
        self._staging: Path | None = None

    @property
    def root(self) -> Path:
        if self._staging is None:
            raise RuntimeError("RunFolder is written inside its `with` block")
        return self._staging

    def __enter__(self) -> RunFolder:
        if self.discard:
            self._staging = Path(tempfile.mkdtemp(prefix="nft-discard-"))
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        staging, self._staging = self._staging, None
        if exc_type is not None or self.discard:
            shutil.rmtree(staging, ignore_errors=True)
            return
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(staging, self.path)

    def write_json(self, name: str, value: Any) -> Path:
        write_json(self.root / name, value)
        return self.root / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.root / name, text)
        return self.root / name

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        save_tensors(tensors, self.root / name)
        return self.root / name

    def save_model(self, model: nn.Module, name: str = "model.safetensors") -> Path:
        return self.save_tensors(name, model.state_dict())
