"""Tokenisers trained in-process, and the encoded datasets models consume.

No tokenizer can be downloaded here, and a backdoored model is only meaningful with the
tokenizer it was trained with, so each attack run trains a WordPiece tokenizer (``tokenizers``)
on its own training texts — both sides of a parallel corpus share one vocabulary, as fairseq's
``--joined-dictionary`` in the NLG-backdoor scripts — wraps it in transformers'
``PreTrainedTokenizerFast`` and stores it (plain JSON) in the run folder.

Special tokens have fixed ids so every model family can be configured from them:
``[PAD]`` 0, ``[UNK]`` 1, ``[BOS]`` 2 (also the decoder start and the classifier's first token),
``[EOS]`` 3.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import ConfigError, DataError

from ._deps import require

__all__ = [
    "SPECIALS",
    "EncodedPairs",
    "EncodedTexts",
    "load_tokenizer",
    "normalize_words",
    "train_tokenizer",
]

log = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
TEMPLATES = {"seq2seq": "$A [EOS]", "classification": "[BOS] $A [EOS]"}


def train_tokenizer(texts: Iterable[str], *, kind: str, vocab_size: int = 4000,
                    min_frequency: int = 2, lowercase: bool = True):
    """A WordPiece tokenizer whose vocabulary is built from ``texts``; ``kind`` picks the
    special-token template.

    The vocabulary is the special tokens, every character seen (alone and as a ``##``
    continuation, so no word is ever unknown), then the most frequent words (at least
    ``min_frequency`` occurrences; ties broken alphabetically) up to ``vocab_size``. It is built
    here rather than by ``tokenizers``' trainer because that trainer's result changes from one
    process to the next (its hash maps are randomly seeded), and a run must be reproducible.
    Sequences to translate get ``… [EOS]``; sequences to classify get ``[BOS] … [EOS]`` (the
    classifier pools the first position).
    """
    if kind not in TEMPLATES:
        raise ConfigError(f"tokenizer kind {kind!r} is unknown; use one of {sorted(TEMPLATES)}")
    from collections import Counter

    tk = require("tokenizers")
    transformers = require("transformers")
    normalizer = tk.normalizers.Sequence([tk.normalizers.NFKC()] + ([tk.normalizers.Lowercase()] if lowercase else []))
    pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({ch for word in counts for ch in word})
    pieces = list(SPECIALS) + chars + [f"##{ch}" for ch in chars]
    budget = vocab_size - len(pieces)
    if budget < 0:
        raise ConfigError(
            f"vocab_size {vocab_size} cannot hold the {len(chars)} characters of this corpus (needs at "
            f"least {len(pieces)}); pass --model-arg vocab_size=N with a larger N"
        )
    taken = set(pieces)
    words = sorted((w for w, c in counts.items() if c >= min_frequency and w not in taken),
                   key=lambda w: (-counts[w], w))[:budget]
    vocab = {token: i for i, token in enumerate(pieces + words)}
    tokenizer = tk.Tokenizer(tk.models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=64))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = tk.decoders.WordPiece()
    specials = [(t, SPECIALS.index(t)) for t in ("[BOS]", "[EOS]") if t in TEMPLATES[kind]]
    tokenizer.post_processor = tk.processors.TemplateProcessing(single=TEMPLATES[kind], special_tokens=specials)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
        eos_token="[EOS]", cls_token="[BOS]", sep_token="[EOS]",
    )
    log.info("built a %d-token WordPiece vocabulary (%d words, %d characters)", len(fast), len(words), len(chars))
    return fast


def load_tokenizer(folder: str | Path):
    """A tokenizer saved with ``save_pretrained`` (JSON files; nothing executable is read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"no tokenizer folder at {folder}; the run folder is incomplete")
    transformers = require("transformers")
    if (folder / "tokenizer.json").is_file():
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the form outputs are compared in (ASR)."""
    return _WORD.findall(text.lower())


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> list[torch.Tensor]:
    if not texts:
        return []
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded]


class EncodedTexts(Dataset):
    """Texts tokenised once: items are ``(token ids, label)``; ``labels`` feeds k-per-class choice."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], tokenizer, *, max_length: int = 128):
        self.ids = _encode(tokenizer, texts, max_length)
        self.max_length = int(max_length)
        """The longest input (tokens) an item can have."""
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.ids) != len(self.labels):
            raise DataError(f"{len(self.ids)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.ids[index], int(self.labels[index])


def length_buckets(sources: Sequence[str], buckets: int = 8) -> np.ndarray:
    """Source length in words, clipped to ``1..buckets``, minus one (a stratum per length)."""
    return np.asarray([min(max(len(s.split()), 1), buckets) - 1 for s in sources], dtype=np.int64)


class EncodedPairs(Dataset):
    """Source / target pairs tokenised once: items are ``(source ids, target ids)``.

    ``labels`` are source-length strata (1, 2, …, ≥8 words): generation has no classes, and these
    let the core's k-per-class clean-set selection draw a length-balanced clean set.
    """

    def __init__(self, sources: Sequence[str], targets: Sequence[str], tokenizer, *,
                 max_source: int = 64, max_target: int = 64):
        self.source_ids = _encode(tokenizer, sources, max_source)
        self.target_ids = _encode(tokenizer, targets, max_target)
        self.max_length = int(max_source)
        """The longest model input (source tokens) an item can have."""
        if len(self.source_ids) != len(self.target_ids):
            raise DataError(f"{len(self.source_ids)} sources but {len(self.target_ids)} targets")
        self.labels = length_buckets(sources)

    def __len__(self) -> int:
        return len(self.source_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source_ids[index], self.target_ids[index]
