"""How text models are called and scored, and how token sequences are batched.

* :class:`TextClassificationTask` — the core's classification loss on a transformers
  classifier's ``logits``.
* :class:`Seq2SeqTask` — teacher-forced token cross-entropy that ignores padding (labels hold
  ``-100`` there), and beam-search generation for prediction: a batch without
  ``decoder_input_ids`` (a source-only batch) is *generated*, so ``task.predict(task.forward(model,
  sources))`` yields output token ids as the core's evaluation loops expect.

Batches are dicts of padded tensors (``input_ids``, ``attention_mask`` and, for seq2seq training,
``decoder_input_ids``), made by :class:`ClassificationCollate` / :class:`Seq2SeqCollate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ClassificationTask, DataError

from .augment import MIX_KEY, embedding_mix_hooks, mixing_active
from .space import PERTURB_KEY, perturbation_hook

__all__ = ["ClassificationCollate", "Seq2SeqCollate", "Seq2SeqTask", "TextClassificationTask", "pad"]

IGNORE = -100


def pad(sequences: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    """Right-pad 1-D id tensors into a ``(batch, longest)`` tensor."""
    if not sequences:
        raise DataError("cannot batch zero sequences")
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


class ClassificationCollate:
    """``[(ids, label), …]`` → ``({"input_ids", "attention_mask"}, labels)``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, items: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids = pad([item[0] for item in items], self.pad_id)
        labels = torch.tensor([int(item[1]) for item in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}, labels

    def __repr__(self) -> str:
        return f"ClassificationCollate(pad_id={self.pad_id})"


class Seq2SeqCollate:
    """``[(source ids, target ids), …]`` → ``(inputs, labels)`` for teacher forcing.

    ``decoder_input_ids`` are the targets shifted right behind ``decoder_start_id``; labels are
    the targets with padding set to -100 so the loss ignores it. Items with only a source give a
    source-only batch (for generation) and ``None`` labels.
    """

    def __init__(self, pad_id: int, decoder_start_id: int) -> None:
        self.pad_id = int(pad_id)
        self.decoder_start_id = int(decoder_start_id)

    def __call__(self, items: list) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        sources = pad([item[0] for item in items], self.pad_id)
        inputs = {"input_ids": sources, "attention_mask": (sources != self.pad_id).long()}
        if len(items[0]) < 2 or not isinstance(items[0][1], torch.Tensor):
            return inputs, None
        targets = [item[1] for item in items]
        labels = pad(targets, IGNORE)
        decoder = torch.full_like(labels, self.pad_id)
        decoder[:, 0] = self.decoder_start_id
        shifted = labels[:, :-1].clone()
        shifted[shifted == IGNORE] = self.pad_id
        decoder[:, 1:] = shifted
        inputs["decoder_input_ids"] = decoder
        return inputs, labels

    def __repr__(self) -> str:
        return f"Seq2SeqCollate(pad_id={self.pad_id}, decoder_start_id={self.decoder_start_id})"


def _call(model: nn.Module, inputs: Mapping[str, Any]):
    """Call ``model(**inputs)``; a batch mixed by EmbeddingMixUp outside its ``hooks()`` context
    (e.g. a defense that does not install augmentation hooks) gets them for this call only, and
    so does a batch carrying an embedding-space perturbation (``nft.nlp.space``)."""
    if not isinstance(inputs, Mapping):
        raise DataError(
            f"text models take a dict batch (input_ids, attention_mask, …), got {type(inputs).__name__}; "
            "use the modality's collate function"
        )
    if PERTURB_KEY in inputs:  # an embedding-space perturbation (EmbeddingSpace.perturb)
        inputs = dict(inputs)
        with perturbation_hook(model, inputs.pop(PERTURB_KEY)):
            return _call(model, inputs)
    if MIX_KEY in inputs and not mixing_active(model):
        with embedding_mix_hooks(model):
            return model(**inputs)
    return model(**inputs)


class TextClassificationTask(ClassificationTask):
    """A transformers sequence classifier: ``model(**batch).logits`` scored by cross-entropy."""

    name = "text-classification"

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        out = _call(model, inputs)
        return out.logits if hasattr(out, "logits") else out

    def __repr__(self) -> str:
        return f"TextClassificationTask(label_smoothing={self.label_smoothing})"


class Seq2SeqTask:
    """Token cross-entropy (padding ignored) for training; beam search for prediction.

    Generation settings default to the NLG-backdoor paper's evaluation (fairseq-generate with
    ``--beam 5 --lenpen 0.6``; ShannonAI/backdoor_nlg, scripts/wmt14/train_and_eval_attack); the
    maximum output length is ``max_len_a · source length + max_len_b`` as fairseq's.
    """

    name = "seq2seq"

    def __init__(self, *, label_smoothing: float = 0.0, num_beams: int = 5, length_penalty: float = 0.6,
                 max_len_a: float = 1.2, max_len_b: int = 10) -> None:
        if not 0 <= label_smoothing < 1:
            raise DataError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if num_beams < 1:
            raise DataError(f"num_beams must be ≥ 1, got {num_beams}")
        self.label_smoothing = float(label_smoothing)
        self.num_beams = int(num_beams)
        self.length_penalty = float(length_penalty)
        self.max_len_a = float(max_len_a)
        self.max_len_b = int(max_len_b)

    def forward(self, model: nn.Module, inputs: Any):
        if isinstance(inputs, Mapping) and "decoder_input_ids" not in inputs:
            return self.generate(model, inputs)
        out = _call(model, inputs)
        return out.logits if hasattr(out, "logits") else out

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 3:
            raise DataError(
                "the seq2seq loss needs teacher-forced logits (batch, length, vocab); the batch had no "
                "decoder_input_ids (use Seq2SeqCollate)"
            )
        if targets.shape != outputs.shape[:2]:
            raise DataError(f"labels of shape {tuple(targets.shape)} do not fit logits {tuple(outputs.shape)}")
        vocab = outputs.shape[-1]
        valid = targets[targets != IGNORE]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
            raise DataError(f"a target token id is outside the model's {vocab}-token vocabulary")
        return F.cross_entropy(outputs.reshape(-1, vocab).float(), targets.reshape(-1),
                               ignore_index=IGNORE, label_smoothing=self.label_smoothing)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Token ids: generated ids as they are, teacher-forced logits by arg-max."""
        if outputs.is_floating_point():
            return outputs.argmax(dim=-1)
        return outputs

    @torch.no_grad()
    def generate(self, model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Beam search from a source batch; returns ``(batch, length)`` output ids (no start token)."""
        from .models import unwrap

        inner = unwrap(model)
        if not hasattr(inner, "generate"):
            raise DataError(f"{type(inner).__name__} cannot generate; use a seq2seq model")
        source = inputs["input_ids"]
        lengths = inputs["attention_mask"].sum(dim=1)
        max_new = int(self.max_len_a * int(lengths.max()) + self.max_len_b)
        was_training = inner.training
        inner.eval()
        try:
            out = inner.generate(
                input_ids=source, attention_mask=inputs["attention_mask"], num_beams=self.num_beams,
                length_penalty=self.length_penalty, max_new_tokens=max_new, do_sample=False,
                early_stopping=True,
            )
        finally:
            inner.train(was_training)
        start = getattr(getattr(inner, "config", None), "decoder_start_token_id", None)
        if start is not None and out.shape[1] and bool((out[:, 0] == start).all()):
            out = out[:, 1:]
        return out

    def __repr__(self) -> str:
        return (f"Seq2SeqTask(label_smoothing={self.label_smoothing}, num_beams={self.num_beams}, "
                f"length_penalty={self.length_penalty})")
