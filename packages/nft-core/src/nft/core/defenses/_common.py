"""Pieces shared by the defense zoo (ANP, I-BAU, AWM, FT-SAM, RNP, FST, NAD, SAU).

Every defense here sees only a model, a :class:`~nft.core.tasks.Task`, a clean dataset and, for
input-space defenses, an :class:`~nft.core.defenses.base.InputSpace`. What they have in common
lives in this module, so that each defense file reads as its paper's algorithm:

* :func:`seeded_run` / :func:`bar` / :func:`check_finite`: the reproducible loop scaffolding
  (batches come from :class:`~nft.core.data.SeededBatches`, as in NFT);
* :class:`Overridden`: call a model with some of its tensors replaced (masks times weights, noisy
  normalisation scales) without touching the model's modules, through
  :func:`torch.func.functional_call`, so any architecture works;
* :func:`norm_layers`, :func:`prune_norm_channels`, :func:`choose_threshold`: pruning by zeroing
  normalisation scales γ (the architecture is kept), with the pruning threshold chosen on the
  clean set only;
* :func:`pixel_scale`: from pixel budgets to model-input units;
* :func:`find_head`, :func:`feature_taps`: the classifier head (FST) and depth-spread feature maps
  (NAD), found by running the model once with hooks.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import SeededBatches, collate, move_to
from ..errors import ConfigError, NonFiniteLossError
from ..masking import mask_candidates
from ..purify import resolve_device
from ..tasks import ClassificationTask, Task
from .base import InputSpace

__all__ = [
    "Overridden",
    "bar",
    "check_finite",
    "choose_threshold",
    "clean_quality",
    "cosine",
    "feature_taps",
    "find_head",
    "frozen",
    "norm_layers",
    "pixel_scale",
    "predicted_targets",
    "prune_norm_channels",
    "seeded_run",
    "tensor_outputs",
]

log = logging.getLogger(__name__)


# ---- loop scaffolding ------------------------------------------------------------------------
@contextlib.contextmanager
def seeded_run(device: torch.device, seed: int) -> Iterator[None]:
    """Fork the global RNG (the caller's state is untouched) and seed it for this run."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def check_finite(loss: torch.Tensor | float, name: str, step: int,
                 fix: str = "lower the learning rate") -> None:
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLossError(f"{name}: the loss became {float(loss)} at step {step}; {fix}")


def cosine(base: float, step: int, total: int, floor: float = 0.0) -> float:
    """Cosine annealing from ``base`` to ``floor`` over ``total`` steps (per step)."""
    return floor + (base - floor) * (1 + math.cos(math.pi * step / max(1, total))) / 2


def make_batches(clean: Dataset, batch_size: int, seed: int, device: torch.device,
                 collate_fn: Callable | None) -> SeededBatches:
    return SeededBatches(clean, batch_size, seed, device, collate_fn)


def device_of(config: Any) -> torch.device:
    return resolve_device(config.device)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn off gradients for every parameter of ``model``; restore the flags after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def tensor_outputs(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs (a tensor, or an object / dict carrying ``logits``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(
        f"this defense needs the model's outputs as a tensor of logits, got {type(outputs).__name__}; "
        "it applies to classifiers (use NFT or FT for other tasks)"
    )


def predicted_targets(task: Task, outputs: Any) -> Any:
    """The model's own predictions, used as targets (I-BAU's and AWM's trigger search)."""
    return task.predict(outputs).detach()


# ---- functional overrides --------------------------------------------------------------------
class Overridden(nn.Module):
    """Call ``model`` with some of its tensors replaced by the values ``overrides()`` returns.

    Masks (AWM, ANP, RNP) are applied as ``weight * mask`` this way: the model's modules and
    state_dict stay untouched, gradients flow to the masks, and any architecture works because
    :func:`torch.func.functional_call` swaps tensors by their state_dict name.
    """

    def __init__(self, model: nn.Module, overrides: Callable[[], dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.model = model
        self.overrides = overrides

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.overrides(), args, kwargs, strict=False)


# ---- normalisation layers and pruning --------------------------------------------------------
def norm_layers(model: nn.Module, defense: str) -> list[tuple[str, nn.Module]]:
    """Normalisation layers with a scale γ, in module order (the layers ANP and RNP mask)."""
    modules = dict(model.named_modules())
    out = []
    for name, kind in mask_candidates(model):
        module = modules[name]
        weight = getattr(module, "weight", None)
        if kind == "norm" and isinstance(weight, torch.Tensor) and weight.is_floating_point():
            out.append((name, module))
    if not out:
        raise ConfigError(
            f"defense {defense!r} masks and prunes normalisation channels, and "
            f"{type(model).__name__} has no normalisation layer with a scale (BatchNorm, LayerNorm, "
            "GroupNorm with affine=True); choose a defense that works on weights (ft, ft-sam, nad)"
        )
    return out


@torch.no_grad()
def prune_norm_channels(layers: Sequence[tuple[str, nn.Module]], scores: dict[str, torch.Tensor],
                        threshold: float | None) -> dict[str, torch.Tensor]:
    """Zero γ of every channel whose score is ≤ ``threshold``; return the kept-channel masks.

    ``threshold=None`` prunes nothing.

    Zeroing γ is how ANP's and RNP's official code prune (``prune_neuron_cifar.py``: the BN
    ``weight`` entry is set to 0); β stays, so the channel outputs a constant.
    """
    kept = {}
    for name, module in layers:
        if threshold is None:
            kept[name] = torch.ones(module.weight.shape)
            continue
        pruned = scores[name].to(module.weight.device) <= threshold
        module.weight[pruned] = 0.0
        kept[name] = (~pruned).float().cpu()
    return kept


def _eval_loader(dataset: Dataset, batch_size: int, collate_fn: Callable | None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn or collate)


@torch.no_grad()
def clean_quality(model: nn.Module, dataset: Dataset, task: Task, device: torch.device,
                  collate_fn: Callable | None = None, batch_size: int = 256) -> float:
    """Clean-set quality, bigger is better: accuracy for classification, else minus the loss.

    Evaluated in eval mode in the dataset's fixed order under a fixed seed (the dataset may carry
    random training augmentation); the model's mode is restored after.
    """
    was_training = model.training
    model.eval()
    classification = isinstance(task, ClassificationTask)
    total = correct = 0
    loss_sum = 0.0
    try:
        with seeded_run(device, 0):
            for inputs, targets in _eval_loader(dataset, batch_size, collate_fn):
                inputs, targets = move_to(inputs, device), move_to(targets, device)
                outputs = task.forward(model, inputs)
                if classification:
                    correct += int((task.predict(outputs) == targets).sum())
                    total += int(targets.shape[0])
                else:
                    loss_sum += float(task.loss(outputs, targets))
                    total += 1
    finally:
        model.train(was_training)
    return correct / max(1, total) if classification else -loss_sum / max(1, total)


def within(base: float, value: float, tolerance: float, classification: bool) -> bool:
    """Is ``value`` within a relative ``tolerance`` of ``base``? (accuracy, or minus a loss)."""
    if classification:
        return value >= base * (1.0 - tolerance) - 1e-12
    return -value <= -base * (1.0 + tolerance) + 1e-12


def choose_threshold(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    scores: dict[str, torch.Tensor],
    quality: Callable[[nn.Module], float],
    *,
    max_threshold: float,
    step: float,
    tolerance: float,
    classification: bool,
) -> tuple[float | None, list[dict]]:
    """The largest pruning threshold whose clean-set quality stays within ``tolerance``.

    The official ANP and RNP scripts sweep thresholds 0, 0.05, …, 0.9 and pick by eye on the
    triggered test set; BackdoorBench keeps thresholds whose clean accuracy stays within a relative
    ``acc_ratio`` = 0.1 and picks the lowest *test* ASR among them, which uses attack data. Here the
    sweep stops at the first threshold whose accuracy on the defender's clean set falls more than
    ``tolerance`` (relative) below the unpruned model's, and the threshold before it is chosen:
    prune as much as the clean data says is affordable, and nothing about the attack is used.
    ``None`` when even the lowest threshold costs too much (then nothing is pruned). The model's
    γ values are restored before returning.
    """
    originals = {name: module.weight.detach().clone() for name, module in layers}
    base = quality(model)
    sweep = [{"threshold": None, "pruned": 0, "quality": base}]
    chosen: float | None = None
    thresholds = np.round(np.arange(0.0, max_threshold + step / 2, step), 6) if step > 0 else [max_threshold]
    try:
        for threshold in thresholds:
            kept = prune_norm_channels(layers, scores, float(threshold))
            value = quality(model)
            pruned = int(sum(int((k == 0).sum()) for k in kept.values()))
            sweep.append({"threshold": float(threshold), "pruned": pruned, "quality": value})
            if not within(base, value, tolerance, classification):
                break
            chosen = float(threshold)
    finally:
        with torch.no_grad():
            for name, module in layers:
                module.weight.copy_(originals[name])
    return chosen, sweep


# ---- input space -----------------------------------------------------------------------------
def pixel_scale(space: InputSpace, like: torch.Tensor) -> torch.Tensor:
    """``space.scale`` as a tensor broadcastable to one sample (on ``like``'s device and dtype):
    model units per pixel unit."""
    scale = torch.as_tensor(space.scale, dtype=like.dtype, device=like.device)
    return scale


# ---- model anatomy: the head and depth-spread feature maps ------------------------------------
def _probe(model: nn.Module, task: Task, inputs: Any, modules: dict[str, nn.Module]):
    """Run the model once in eval mode; record each listed module's output in call order."""
    order: list[tuple[str, Any]] = []
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_hook(
            lambda mod, args, out, name=name: order.append((name, out))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = task.forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return outputs, order


def find_head(model: nn.Module, task: Task, inputs: Any, name: str | None = None,
              user: str = "FST") -> tuple[str, nn.Linear]:
    """The model's final linear layer: the ``nn.Linear`` whose output is the model's output.

    FST re-initialises this layer and NFT re-fits its bias (``user`` names the caller in
    messages). Found by one forward pass with hooks on every ``nn.Linear``:
    the layer whose output *is* (or equals) the logits; failing that, the last linear layer called
    whose width equals the number of logits. ``name`` picks it explicitly.
    """
    modules = dict(model.named_modules())
    if name is not None:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise ConfigError(
                f"head {name!r} is not an nn.Linear of {type(model).__name__}; its linear layers: "
                f"{', '.join(linears[-10:]) or 'none'}"
            )
        return name, module
    linears = {n: m for n, m in modules.items() if isinstance(m, nn.Linear)}
    if not linears:
        raise ConfigError(
            f"{user} needs the model's final linear classification layer, and "
            f"{type(model).__name__} has no nn.Linear; this step does not apply to it"
            + (" (choose ft-sam, nad or nft)" if user == "FST" else "")
        )
    outputs, order = _probe(model, task, inputs, linears)
    logits = tensor_outputs(outputs)
    for layer, out in reversed(order):
        if isinstance(out, torch.Tensor) and (out is logits or (
                out.shape == logits.shape and torch.equal(out, logits))):
            return layer, linears[layer]
    for layer, out in reversed(order):
        if isinstance(out, torch.Tensor) and out.shape[-1] == logits.shape[-1]:
            log.warning("%s: no linear layer outputs the logits exactly; using %s", user, layer)
            return layer, linears[layer]
    raise ConfigError(
        f"{user} could not find the final linear layer of {type(model).__name__}: no nn.Linear "
        f"outputs {logits.shape[-1]} logits. Name it with head=<module name> "
        f"(linear layers: {', '.join(list(linears)[-10:])})"
    )


_TOKEN_NORMS = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def feature_taps(model: nn.Module, task: Task, inputs: Any, count: int,
                 names: Sequence[str] = ()) -> list[tuple[str, int]]:
    """``count`` depth-spread feature maps for attention distillation, as ``(module, channel axis)``.

    NAD's official code distils the outputs of the three residual groups of a WideResNet (low,
    middle, high). A generic model has no such groups, so: run the model once, list the
    normalisation layers (convolutions if there are none) whose outputs are feature maps (a batch,
    channels and at least one position axis), in call order; split that list into ``count``
    contiguous, equally long parts and tap the last layer of each part, i.e. the ends of the
    early, middle and late thirds of the network. ``names`` picks the modules explicitly.
    LayerNorm / RMSNorm outputs carry channels last (tokens), every other layer on axis 1.
    """
    modules = dict(model.named_modules())
    if names:
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"feature layers {missing} are not modules of {type(model).__name__}")
        return [(n, -1 if isinstance(modules[n], _TOKEN_NORMS) else 1) for n in names]
    norm_names = {n for n, k in mask_candidates(model) if k == "norm"}
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    candidates = {n: modules[n] for n in norm_names} or {
        n: m for n, m in modules.items() if isinstance(m, conv_types)}
    _, order = _probe(model, task, inputs, candidates)
    seen: list[str] = []
    for name, out in order:
        if isinstance(out, torch.Tensor) and out.ndim >= 3 and name not in seen:
            seen.append(name)
    if len(seen) < count:
        raise ConfigError(
            f"NAD distils {count} feature maps, and {type(model).__name__} has only {len(seen)} "
            "normalisation / convolution layers with spatial or token outputs; set feature_layers "
            "to module names, lower attention_layers, or choose another defense"
        )
    parts = np.array_split(np.arange(len(seen)), count)
    chosen = [seen[int(part[-1])] for part in parts]
    return [(n, -1 if isinstance(modules[n], _TOKEN_NORMS) else 1) for n in chosen]


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
