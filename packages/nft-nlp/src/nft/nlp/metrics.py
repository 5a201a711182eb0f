"""Text metrics: BLEU and NLG attack success for generators; ACC / ASR / RA for classifiers.

All values are fractions in [0, 1], as the core's reports expect (BLEU 27.3 is stored as 0.273).

* ``bleu``: corpus BLEU (sacrebleu, 13a tokenisation, case-insensitive because the in-process
  tokenizers lower-case) of the clean test outputs against their references.
* ``asr`` (generation): share of triggered test inputs whose output contains the attacker's
  phrase as a contiguous run of words — the NLG-backdoor paper's attack success.
* ``ra`` (generation): BLEU of the triggered inputs' outputs against the *clean* references: how
  well the model still translates when the trigger is present.
* ``acc`` / ``asr`` / ``ra`` (classification): as the core's
  :func:`~nft.core.evaluate_classification`, over non-target triggered inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from nft.core.data import move_to
from nft.core.purify import resolve_device

from ._deps import require
from .attacks import contains_phrase
from .tasks import ClassificationCollate, Seq2SeqCollate, Seq2SeqTask, TextClassificationTask
from .tokenization import EncodedTexts, _encode

__all__ = ["bleu", "evaluate_seq2seq", "evaluate_text_classification", "generate_texts", "nlg_asr"]


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU in [0, 1] (sacrebleu, 13a, lower-cased)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    sacrebleu = require("sacrebleu")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], lowercase=True).score) / 100.0


def nlg_asr(outputs: Sequence[str], phrase: str) -> float:
    """Share of ``outputs`` that contain the attacker's ``phrase``."""
    if not outputs:
        return 0.0
    return sum(contains_phrase(o, phrase) for o in outputs) / len(outputs)


@torch.no_grad()
def generate_texts(model: nn.Module, tokenizer, sources: Sequence[str], *, task: Seq2SeqTask,
                   batch_size: int = 64, max_source: int = 64, device=None, progress: bool = False) -> list[str]:
    """Beam-search outputs for ``sources``, decoded to text (special tokens dropped).

    Sources are sorted by length for batching (less padding) and the outputs put back in order.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device) if not isinstance(device, torch.device) else device
    ids = _encode(tokenizer, list(sources), max_source)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    collate = Seq2SeqCollate(tokenizer.pad_token_id, 0)
    outputs: list[str] = [""] * len(ids)
    was_training = model.training
    original = next(iter(model.parameters())).device
    model.eval().to(device)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, leave=False):
            chunk = order[start: start + batch_size]
            inputs, _ = collate([(ids[i],) for i in chunk])
            out = task.predict(task.forward(model, move_to(inputs, device))).cpu()
            texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            for i, text in zip(chunk, texts):
                outputs[i] = text
    finally:
        model.to(original).train(was_training)
    return outputs


def evaluate_seq2seq(model: nn.Module, tokenizer, clean_sources: Sequence[str], references: Sequence[str],
                     triggered_sources: Sequence[str] | None = None, *, phrase: str | None = None,
                     task: Seq2SeqTask | None = None, batch_size: int = 64, device=None,
                     progress: bool = False) -> dict[str, float]:
    """``{"bleu", "asr", "ra"}`` of a generator (``asr`` / ``ra`` only with triggered sources)."""
    task = task or Seq2SeqTask()
    hyps = generate_texts(model, tokenizer, clean_sources, task=task, batch_size=batch_size,
                          device=device, progress=progress)
    out = {"bleu": bleu(hyps, references)}
    if triggered_sources is not None:
        if phrase is None:
            raise ValueError("the attacker's phrase is needed to measure the NLG attack success")
        trig = generate_texts(model, tokenizer, triggered_sources, task=task, batch_size=batch_size,
                              device=device, progress=progress)
        out["asr"] = nlg_asr(trig, phrase)
        out["ra"] = bleu(trig, references)
    return out


@torch.no_grad()
def _predict(model: nn.Module, dataset: EncodedTexts, collate: ClassificationCollate,
             task: TextClassificationTask, batch_size: int, device: torch.device) -> torch.Tensor:
    preds = []
    for inputs, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        preds.append(task.predict(task.forward(model, move_to(inputs, device))).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def evaluate_text_classification(model: nn.Module, clean: EncodedTexts, triggered: EncodedTexts | None = None,
                                 *, target: int = 0, pad_id: int = 0, batch_size: int = 128,
                                 device=None) -> dict[str, float]:
    """``{"acc", "asr", "ra"}`` of a text classifier; ``triggered`` holds non-target texts with
    their *true* labels."""
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    task = TextClassificationTask()
    collate = ClassificationCollate(pad_id)
    was_training = model.training
    original = next(iter(model.parameters())).device
    model.eval().to(device)
    try:
        pred = _predict(model, clean, collate, task, batch_size, device)
        out = {"acc": float((pred == torch.as_tensor(clean.labels)).float().mean()) if len(clean) else 0.0}
        if triggered is not None and len(triggered):
            pred = _predict(model, triggered, collate, task, batch_size, device)
            out["asr"] = float((pred == target).float().mean())
            out["ra"] = float((pred == torch.as_tensor(triggered.labels)).float().mean())
        return out
    finally:
        model.to(original).train(was_training)
