"""Per-channel neural masks: inject them into any ``nn.Module``, train them, fold them back.

A mask is one learnable scale per output channel of a layer, initialised to 1 so the model's
output is unchanged at injection. Masks are attached with ``torch.nn.utils.parametrize``: the
layer's own tensor (a normalisation layer's γ, a conv or linear weight) is replaced, at every
forward, by ``tensor * mask``. This keeps ``type(module)`` and its ``forward`` untouched, so
models with custom forwards (detection heads, transformers) keep working, and both ways out are
one library call: ``merge_and_unload()`` folds the masks into the tensors, ``unload()`` drops them.

Which layers can be masked, and along which axis, is a small dispatch table
(:func:`register_mask_target`) that modality packages may extend.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "MaskConfig",
    "MaskTarget",
    "MaskedModel",
    "inject_masks",
    "register_mask_target",
    "mask_candidates",
    "module_mask",
]

KINDS = ("norm", "conv", "linear", "embedding")


@dataclass(frozen=True)
class MaskTarget:
    """How to mask one module type.

    ``kind`` groups types for :class:`MaskConfig` (``norm``, ``conv``, ``linear``, ``embedding``);
    ``tensors`` names the tensors scaled by the shared mask (a normalisation layer scales only
    γ, as the reference code; a conv scales weight and bias so the whole channel is scaled);
    ``axis`` is the output-channel axis of the weight (1 for transposed convolutions).
    """

    kind: str
    tensors: tuple[str, ...] = ("weight",)
    axis: int = 0


_TARGETS: dict[type, MaskTarget] = {}


def register_mask_target(module_type: type, target: MaskTarget) -> None:
    """Teach the masker a module type (modality packages call this for their own layers)."""
    if target.kind not in KINDS:
        raise ConfigError(f"mask target kind {target.kind!r} is unknown; use one of {KINDS}")
    _TARGETS[module_type] = target


def _register_builtin_targets() -> None:
    norm = MaskTarget("norm", ("weight",), 0)
    for t in (
        nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
        nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    ):
        register_mask_target(t, norm)
    if hasattr(nn, "RMSNorm"):
        register_mask_target(nn.RMSNorm, norm)
    for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register_mask_target(t, MaskTarget("conv", ("weight", "bias"), 0))
    for t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        register_mask_target(t, MaskTarget("conv", ("weight", "bias"), 1))
    register_mask_target(nn.Linear, MaskTarget("linear", ("weight", "bias"), 0))
    # A lookup table is a linear layer on one-hot inputs: one scale per row silences one input
    # entry (a word) and nothing else; text's adversarial word trains these (nft.nlp).
    register_mask_target(nn.Embedding, MaskTarget("embedding", ("weight",), 0))
    try:  # torchvision's detection backbones freeze BN into a module whose γ is a buffer
        from torchvision.ops.misc import FrozenBatchNorm2d
    except Exception:  # noqa: BLE001 - torchvision is optional for the core
        return
    register_mask_target(FrozenBatchNorm2d, norm)


_register_builtin_targets()


def _lookup(module: nn.Module) -> MaskTarget | None:
    for klass in type(module).__mro__:
        if klass in _TARGETS:
            return _TARGETS[klass]
    return None


@dataclass(frozen=True)
class MaskConfig:
    """Which layers get a mask.

    Attributes:
        targets: kinds of layers to mask: ``"norm"`` (normalisation γ, the paper's choice),
            ``"conv"`` and ``"linear"`` (output channels), ``"embedding"`` (one scale per row of
            a lookup table: per word of a token table).
        include: if given, only layers whose dotted name matches one of these patterns are
            masked. A pattern matches when it equals the name, is a dotted suffix of it
            (``"bn1"`` matches ``"layer1.0.bn1"``), or full-matches it as a regular expression.
        exclude: layers matching any of these patterns are never masked.
        skip_first_norm: leave the first normalisation layer unmasked (the reference code
            leaves the stem BN of its ResNets plain).
        scale_bias: for conv / linear targets, also scale the bias so the whole output channel
            is scaled (normalisation layers never scale β, as the reference code).
    """

    targets: tuple[str, ...] = ("norm",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_first_norm: bool = False
    scale_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("targets", "include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        unknown = [t for t in self.targets if t not in KINDS]
        if unknown or not self.targets:
            raise ConfigError(
                f"MaskConfig.targets {self.targets!r} is invalid; use a non-empty subset of {KINDS}"
            )
        for pattern in self.include + self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"mask pattern {pattern!r} is not a valid regex: {err}") from None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> MaskConfig:
        known = {f for f in cls.__dataclass_fields__}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"unknown MaskConfig fields {sorted(extra)}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _matches(name: str, pattern: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    return re.fullmatch(pattern, name) is not None


def _has_tensor(module: nn.Module, tensor_name: str) -> bool:
    return isinstance(getattr(module, tensor_name, None), torch.Tensor)


def mask_candidates(model: nn.Module) -> list[tuple[str, str]]:
    """Every maskable layer of ``model`` as ``(dotted name, kind)``, in module order."""
    out = []
    for name, module in model.named_modules():
        target = _lookup(module)
        if target is not None and _has_tensor(module, target.tensors[0]):
            out.append((name, target.kind))
    return out


def _select(model: nn.Module, config: MaskConfig) -> list[tuple[str, nn.Module, MaskTarget]]:
    chosen, first_norm_seen = [], False
    for name, module in model.named_modules():
        target = _lookup(module)
        if target is None or not _has_tensor(module, target.tensors[0]):
            continue
        if target.kind == "norm":
            is_first = not first_norm_seen
            first_norm_seen = True
            if is_first and config.skip_first_norm:
                continue
        if target.kind not in config.targets:
            continue
        if config.include and not any(_matches(name, p) for p in config.include):
            continue
        if any(_matches(name, p) for p in config.exclude):
            continue
        chosen.append((name, module, target))
    return chosen


def _tied_tensors(model: nn.Module, chosen: list[tuple[str, nn.Module, MaskTarget]]
                  ) -> tuple[list[str], list[str]]:
    """Selected tensors other layers share (a seq2seq model's token table, used by its encoder,
    decoder and output layer): those selected at more than one layer, and those shared only
    with unselected layers, each as ``"a.weight = b.weight, c.weight"``."""
    owners: dict[int, list[str]] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(tensor), []).append(name)
    selected: dict[int, list[str]] = {}
    for name, module, target in chosen:
        for tensor_name in target.tensors:
            tensor = getattr(module, tensor_name, None)
            if isinstance(tensor, nn.Parameter) and len(owners.get(id(tensor), [])) > 1:
                selected.setdefault(id(tensor), []).append(f"{name}.{tensor_name}" if name else tensor_name)
    twice, shared = [], []
    for key, names in selected.items():
        others = [n for n in owners[key] if n not in names]
        (twice if len(names) > 1 else shared).append(" = ".join([", ".join(names), *([", ".join(others)] if others else [])]))
    return twice, shared


class ChannelScale(nn.Module):
    """Parametrization ``tensor -> tensor * mask`` broadcast along one axis.

    Several ``ChannelScale`` objects may share one mask (a conv's weight and bias).
    ``index`` maps channels to mask entries for grouped transposed convolutions, whose weight
    axis 1 holds only ``out_channels / groups`` entries.
    """

    def __init__(self, mask: nn.Parameter, axis: int, ndim: int, index: torch.Tensor | None):
        super().__init__()
        self.mask = mask
        self.axis = axis
        self.ndim = ndim
        self.register_buffer("index", index, persistent=False)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.index is not None:
            scale = self.mask[self.index]  # (in_channels, out_channels / groups)
            return tensor * scale.view(*scale.shape, *([1] * (tensor.ndim - 2)))
        if self.mask.ndim == tensor.ndim:  # element-wise (LayerNorm over several dims)
            return tensor * self.mask
        shape = [1] * tensor.ndim
        shape[self.axis] = -1
        return tensor * self.mask.view(shape)


def _channel_count(module: nn.Module, target: MaskTarget) -> tuple[tuple[int, ...], torch.Tensor | None]:
    weight = getattr(module, target.tensors[0])
    if target.kind == "norm":
        return tuple(weight.shape), None
    groups = getattr(module, "groups", 1)
    if target.axis == 1 and groups > 1:  # grouped transposed convolution
        in_ch, per_group = weight.shape[0], weight.shape[1]
        rows = torch.arange(in_ch) // (in_ch // groups)
        index = rows[:, None] * per_group + torch.arange(per_group)[None, :]
        return (per_group * groups,), index
    return (weight.shape[target.axis],), None


class MaskedModel(nn.Module):
    """A model with masks attached. Call it like the model; only the masks are trainable.

    Use :meth:`merge_and_unload` to get the original architecture back with the masks folded
    into its weights, or :meth:`unload` to drop the masks and restore the original exactly.
    """

    def __init__(self, model: nn.Module, config: MaskConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        chosen = _select(model, config)
        if not chosen:
            candidates = mask_candidates(model)
            listing = ", ".join(f"{n or '<root>'} ({k})" for n, k in candidates[:40]) or "none"
            more = f" … and {len(candidates) - 40} more" if len(candidates) > 40 else ""
            raise ConfigError(
                f"MaskConfig {config} matched no layer of {type(model).__name__}. "
                f"Maskable layers: {listing}{more}. Adjust targets / include / exclude."
            )
        twice, shared = _tied_tensors(model, chosen)
        if twice:
            raise ConfigError(
                "masks fold into the tensors they scale, and these selected layers share one tensor "
                f"(tied weights): {'; '.join(twice)}. Their masks would multiply when folded; select "
                "only one of them (MaskConfig.include / exclude)"
            )
        for line in shared:
            log.warning("folding the mask of %s also changes the layers that share its tensor "
                        "(tied weights); exclude it, or untie the weights, if they must stay as they are",
                        line)
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self._sites: list[tuple[str, nn.Module, tuple[str, ...], tuple[list, list]]] = []
        masks: OrderedDict[str, nn.Parameter] = OrderedDict()
        for name, module, target in chosen:
            order = _tensor_order(module)
            weight = getattr(module, target.tensors[0])
            shape, index = _channel_count(module, target)
            mask = nn.Parameter(torch.ones(shape, device=weight.device, dtype=weight.dtype))
            if target.kind == "norm":  # γ only: the reference never scales the shift β
                names = (target.tensors[0],)
            else:
                names = tuple(
                    t for t in target.tensors
                    if _has_tensor(module, t) and (t == target.tensors[0] or config.scale_bias)
                )
            for tensor_name in names:
                tensor = getattr(module, tensor_name)
                axis = target.axis if tensor.ndim > 1 else 0
                scale = ChannelScale(mask, axis, tensor.ndim, index if tensor.ndim > 1 else None)
                parametrize.register_parametrization(module, tensor_name, scale, unsafe=True)
                getattr(module.parametrizations, tensor_name).original.requires_grad_(False)
            masks[name] = mask
            self._sites.append((name, module, names, order))
        # Registered under safe keys so ``mask_parameters()`` sees them in depth order.
        self._masks = nn.ParameterDict({_key(n): m for n, m in masks.items()})
        self._names = list(masks)
        self._attached = True
        self.train(model.training)  # the wrapper starts in the wrapped model's mode

    # ---- access --------------------------------------------------------------------------
    @property
    def masks(self) -> OrderedDict[str, nn.Parameter]:
        """Layer name -> mask, ordered by depth (module registration order)."""
        return OrderedDict((n, self._masks[_key(n)]) for n in self._names)

    def mask_parameters(self) -> list[nn.Parameter]:
        return list(self.masks.values())

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._names)

    def summary(self) -> list[dict]:
        """One row per masked layer: name, channels, mean / min mask value."""
        rows = []
        for depth, (name, mask) in enumerate(self.masks.items(), start=1):
            m = mask.detach().float()
            rows.append({
                "depth": depth, "layer": name, "channels": m.numel(),
                "mean": float(m.mean()), "min": float(m.min()),
            })
        return rows

    # ---- state ---------------------------------------------------------------------------
    def mask_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().clone() for n, m in self.masks.items()}

    def load_mask_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self._names if n not in state]
        unexpected = [n for n in state if n not in self._names]
        if missing or unexpected:
            raise ConfigError(
                f"mask state does not fit this model: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}; it was saved with a different model or MaskConfig"
            )
        with torch.no_grad():
            for name, mask in self.masks.items():
                value = state[name]
                if value.shape != mask.shape:
                    raise ConfigError(
                        f"mask {name!r} has shape {tuple(value.shape)}, expected {tuple(mask.shape)}"
                    )
                mask.copy_(value.to(mask))

    def save_masks(self, directory: str | Path) -> None:
        """Write ``masks.safetensors`` and ``mask_config.json`` into ``directory``."""
        from .io import atomic_write_text, save_tensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.mask_state_dict(), directory / "masks.safetensors")
        atomic_write_text(directory / "mask_config.json", json.dumps(self.config.to_dict(), indent=2))

    def load_masks(self, directory: str | Path) -> None:
        from .io import load_tensors

        directory = Path(directory)
        saved = MaskConfig.from_dict(json.loads((directory / "mask_config.json").read_text()))
        if saved != self.config:
            raise ConfigError(f"masks in {directory} were made with {saved}, not {self.config}")
        self.load_mask_state_dict(load_tensors(directory / "masks.safetensors"))

    # ---- leaving -------------------------------------------------------------------------
    def _detach(self, leave_parametrized: bool) -> nn.Module:
        if not self._attached:
            raise ConfigError("masks were already merged or unloaded from this MaskedModel")
        with torch.no_grad():
            for _, module, names, order in self._sites:
                for tensor_name in names:
                    parametrize.remove_parametrizations(
                        module, tensor_name, leave_parametrized=leave_parametrized
                    )
                _restore_tensor_order(module, order)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(name, True))
        self._attached = False
        return self.model

    def merge_and_unload(self) -> nn.Module:
        """Fold the masks into the weights and return the original model object.

        The result has the model's own class, state_dict keys and cost; its outputs equal the
        masked model's.
        """
        return self._detach(leave_parametrized=True)

    def unload(self) -> nn.Module:
        """Drop the masks and return the original model, bit for bit as before injection."""
        return self._detach(leave_parametrized=False)


def _tensor_order(module: nn.Module) -> tuple[list, list]:
    return list(module._parameters), list(module._buffers)


def _restore_tensor_order(module: nn.Module, order: tuple[list, list]) -> None:
    """Removing a parametrization re-adds the tensor last; put state_dict keys back in order."""
    for store, names in ((module._parameters, order[0]), (module._buffers, order[1])):
        items = dict(store)
        store.clear()
        for n in names + [n for n in items if n not in names]:
            if n in items:
                store[n] = items[n]


def _key(name: str) -> str:
    return name.replace(".", "__") or "__root__"


def module_mask(module: nn.Module) -> nn.Parameter | None:
    """The mask that scales ``module`` inside a :class:`MaskedModel`, or ``None`` when it has
    none (for augmentations that act on one layer's mask, such as text's adversarial word)."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is None:
        return None
    for scales in parametrizations.values():
        for scale in scales:
            if isinstance(scale, ChannelScale):
                return scale.mask
    return None


def inject_masks(model: nn.Module, config: MaskConfig | None = None) -> MaskedModel:
    """Attach one mask per output channel to the layers ``config`` selects (in place)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"inject_masks needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, MaskedModel) or any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ConfigError(
            "this model already has parametrizations (masks?); merge_and_unload() or unload() "
            "the previous masks before injecting new ones"
        )
    return MaskedModel(model, config or MaskConfig())


def iter_norm_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Normalisation layers that keep running statistics (their mode matters during NFT)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            yield module


def depth_floor(depth: int, alpha: float, beta: float) -> float:
    """The reference code's clamp floor for the ``depth``-th masked layer (1-based)."""
    return alpha * math.exp(-beta * depth)

