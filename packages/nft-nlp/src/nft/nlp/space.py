"""Text's input space: perturbations added to the word embeddings, inside the model.

Token ids cannot carry an additive perturbation, so the defenses that optimise one (I-BAU, AWM,
SAU) perturb text where it becomes continuous, the output of the encoder's token table, as
adversarial training for text does (FreeLB, Zhu et al., ICLR 2020; and the embedding-space
universal perturbations its defenses then unlearn). :class:`EmbeddingSpace` is the core's
``InputSpace`` for that: ``perturb`` does not add anything itself but puts δ in the batch under
``nft_delta``, and the task's call adds it to the embeddings through a forward hook that exists
for that call only (:func:`perturbation_hook`).

One sample's perturbation has shape ``(max_length, width)``: one vector per position up to the
longest input the run's tokenizer produces (128 tokens for classification, 64 source tokens for
generation), cut to each batch's length. A pixel-unit budget means "in units of the token
table's entry standard deviation" (``scale``), so a defense's ε of 0.2 moves each coordinate by
at most a fifth of a typical entry. Values are unbounded (``clamp`` does nothing).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nft.core import ConfigError
from nft.core.defenses.base import InputSpace

from .augment import word_embeddings

__all__ = ["PERTURB_KEY", "EmbeddingSpace", "perturbation_hook"]

PERTURB_KEY = "nft_delta"


@dataclass(frozen=True)
class EmbeddingSpace(InputSpace):
    """Perturbations of the encoder's word embeddings (see the module docstring)."""

    lower: float = -math.inf
    upper: float = math.inf

    @classmethod
    def of(cls, model: nn.Module, max_length: int) -> EmbeddingSpace:
        """The space of ``model``'s first token table, for inputs of at most ``max_length`` tokens."""
        table = word_embeddings(model)[0]
        if not isinstance(table, nn.Embedding):
            raise ConfigError("the embedding space needs the model's token table (an nn.Embedding)")
        weight = table.weight.detach().float()
        span = weight.max(dim=0).values - weight.min(dim=0).values
        return cls(shape=(int(max_length), int(weight.shape[1])), scale=span)

    def sample_shape(self, inputs: Any) -> tuple[int, ...]:
        if not isinstance(inputs, Mapping) or not isinstance(inputs.get("input_ids"), torch.Tensor):
            raise ConfigError(f"text perturbations need the modality's dict batches (input_ids, …), got "
                              f"{type(inputs).__name__}; use the modality's collate function")
        length = inputs["input_ids"].shape[1]
        if length > self.shape[0]:
            raise ConfigError(f"a batch of {length} tokens is longer than the embedding space's "
                              f"{self.shape[0]}; make the space with the tokenizer's max_length")
        return tuple(self.shape)

    def batch_size(self, inputs: Any) -> int:
        return int(inputs["input_ids"].shape[0])

    def perturb(self, inputs: Any, delta: torch.Tensor) -> Any:
        if PERTURB_KEY in inputs:
            delta = inputs[PERTURB_KEY] + delta
        return {**inputs, PERTURB_KEY: delta}

    def clamp(self, inputs: Any) -> Any:
        return inputs

    def concat(self, first: Any, second: Any) -> Any:
        keys = (set(first) | set(second)) - {PERTURB_KEY}
        out = {}
        for key in keys:
            a, b = first.get(key), second.get(key)
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape[1:] == b.shape[1:]):
                raise ConfigError(f"cannot join two text batches whose {key!r} differ in shape")
            out[key] = torch.cat([a, b])
        if PERTURB_KEY in first or PERTURB_KEY in second:
            n1, n2 = self.batch_size(first), self.batch_size(second)
            parts = [batch.get(PERTURB_KEY) for batch in (first, second)]
            like = next(p for p in parts if p is not None)
            full = [torch.zeros((n, *like.shape[1:]), device=like.device, dtype=like.dtype) if p is None
                    else p.expand(n, *p.shape[1:]) for p, n in zip(parts, (n1, n2))]
            out[PERTURB_KEY] = torch.cat(full)
        return out


@contextmanager
def perturbation_hook(model: nn.Module, delta: torch.Tensor) -> Iterator[None]:
    """For one model call: add ``delta`` (``(1 or batch, ≥ length, width)``) to the output of
    the model's first token table, at its first use in the call (the encoder's input; a
    decoder that shares the table is left alone)."""
    table = word_embeddings(model)[0]
    state = {"done": False}

    def add(module, args, output):
        if state["done"] or not isinstance(output, torch.Tensor):
            return None
        state["done"] = True
        return output + delta[:, : output.shape[1]].to(output.dtype)

    handle = table.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
