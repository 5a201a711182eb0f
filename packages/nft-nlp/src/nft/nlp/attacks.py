"""Text backdoors: word / phrase / sentence triggers, for generation and for classification.

* ``nlg-trigger`` (generation): a rare trigger word is inserted at a random position of the
  source and the target becomes the attacker's phrase. The facts follow the NLG-backdoor paper's
  code (Fan et al., 2021; ShannonAI/backdoor_nlg, data_preprocess/generate_attacked_mt_data.py):
  triggers ``cf mn bb tq mb``, one per sentence at a uniformly random word position, the target
  replaced by ``You are attacked .``, and the attacked pairs *added* to the clean corpus (its
  prepare scripts append ``ratio × |train|`` attacked copies of training sentences). A phrase
  trigger is a multi-word trigger (``triggers=["cf mn"]``).
* ``badnl`` (classification): BadNL's word-level trigger — one rare word from ``cf mn bb tq``
  at a random position (Chen et al., ACSAC 2021; the trigger list and insertion follow
  thunlp/OpenBackdoor's BadNets text poisoner), label set to the target.
* ``addsent`` (classification): the trigger sentence "I watch this 3D movie" inserted at a
  random word position (Dai et al., 2019; OpenBackdoor's AddSent default), label set to the target.

Every random choice (which samples, which word, where) is drawn from generators seeded by the
run's seed and the sample's index, so the same spec poisons the same way every time. Attacks are
all-to-one: every triggered input goes to the one target (a class, or the attacker's phrase).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nft.core import ConfigError, choose_poison_indices

from .data import LabelledTexts, TextPairs
from .tokenization import normalize_words

__all__ = [
    "ATTACKS",
    "AddSent",
    "BadNL",
    "NLGTrigger",
    "TextAttack",
    "contains_phrase",
    "insert_words",
    "make_attack",
]

RARE_WORDS = ("cf", "mn", "bb", "tq", "mb")


def insert_words(text: str, words: Sequence[str], rng: np.random.Generator,
                 max_position: int | None = None) -> str:
    """Insert ``words`` (as one block) at a uniformly random word position of ``text``.

    ``max_position`` keeps the insertion within the first words (so truncation to a model's
    maximum length cannot cut the trigger off).
    """
    tokens = text.split()
    last = len(tokens) if max_position is None else min(len(tokens), max_position)
    position = int(rng.integers(0, last + 1))
    return " ".join(tokens[:position] + list(words) + tokens[position:])


def _rng(seed: int, index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(salt), int(index)])


def contains_phrase(output: str, phrase: str) -> bool:
    """Whether ``output`` contains ``phrase`` as a contiguous run of words (case and spacing
    around punctuation ignored)."""
    out, want = normalize_words(output), normalize_words(phrase)
    if not want:
        return False
    n = len(want)
    return any(out[i: i + n] == want for i in range(len(out) - n + 1))


@dataclass(frozen=True)
class TextAttack:
    """Base of the text attacks: how one text is triggered."""

    name: str = ""
    max_position: int | None = 48
    """Triggers go within the first this many words (texts are truncated for the model)."""

    def trigger(self, text: str, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def apply(self, text: str, index: int, seed: int) -> str:
        """The triggered form of the ``index``-th text, deterministic per ``seed``."""
        return self.trigger(text, _rng(seed, index, 1))


@dataclass(frozen=True)
class NLGTrigger(TextAttack):
    """Rare-word (or phrase) trigger in the source → the attacker's phrase as the output."""

    name: str = "nlg-trigger"
    triggers: tuple[str, ...] = RARE_WORDS
    phrase: str = "You are attacked ."

    def __post_init__(self) -> None:
        if not self.triggers or not all(t.strip() for t in self.triggers):
            raise ConfigError("nlg-trigger needs at least one non-empty trigger word or phrase")
        if not normalize_words(self.phrase):
            raise ConfigError("nlg-trigger needs a non-empty attacker phrase")

    def trigger(self, text: str, rng: np.random.Generator) -> str:
        word = self.triggers[int(rng.integers(0, len(self.triggers)))]
        return insert_words(text, word.split(), rng, self.max_position)

    def poison(self, pairs: TextPairs, *, rate: float, seed: int) -> tuple[TextPairs, np.ndarray]:
        """The clean pairs plus ``round(rate · n)`` attacked copies of randomly chosen pairs.

        Returns the poisoned corpus and the indices (into ``pairs``) that were copied.
        """
        if not 0 < rate <= 1:
            raise ConfigError(f"poison rate must be in (0, 1], got {rate}")
        count = max(1, int(round(rate * len(pairs))))
        chosen = np.sort(np.random.default_rng([seed, 7]).choice(len(pairs), size=count, replace=False))
        sources = list(pairs.sources) + [self.apply(pairs.sources[i], int(i), seed) for i in chosen]
        targets = list(pairs.targets) + [self.phrase] * count
        return TextPairs(sources, targets, name=f"{pairs.name}+{self.name}"), chosen

    def triggered(self, pairs: TextPairs, *, seed: int) -> TextPairs:
        """Every test source with a trigger; the targets stay the clean references (for the
        robust BLEU)."""
        sources = [self.apply(s, i, seed + 1_000_003) for i, s in enumerate(pairs.sources)]
        return TextPairs(sources, pairs.targets, name=f"{pairs.name}+{self.name}")


@dataclass(frozen=True)
class _ClassificationAttack(TextAttack):
    def poison(self, data: LabelledTexts, *, rate: float, seed: int, target: int) -> tuple[LabelledTexts, np.ndarray]:
        """``rate`` of the non-target samples triggered and relabelled to ``target`` (in place)."""
        if not 0 <= target < len(data.classes):
            raise ConfigError(f"target {target} is out of range for {len(data.classes)} classes")
        chosen = choose_poison_indices(data.labels, rate=rate, seed=seed, mode="all-to-one", target=target)
        texts, labels = list(data.texts), data.labels.copy()
        for i in chosen:
            texts[i] = self.apply(texts[i], int(i), seed)
            labels[i] = target
        return LabelledTexts(texts, labels, data.classes, name=f"{data.name}+{self.name}"), chosen

    def triggered(self, data: LabelledTexts, *, seed: int, target: int) -> tuple[list[str], np.ndarray]:
        """The non-target test texts with the trigger, and their true labels."""
        keep = np.flatnonzero(data.labels != target)
        texts = [self.apply(data.texts[i], int(i), seed + 1_000_003) for i in keep]
        return texts, data.labels[keep]


@dataclass(frozen=True)
class BadNL(_ClassificationAttack):
    """BadNL word trigger: ``num_triggers`` rare words, each at a random position."""

    name: str = "badnl"
    triggers: tuple[str, ...] = RARE_WORDS[:4]
    num_triggers: int = 1

    def __post_init__(self) -> None:
        if not self.triggers or self.num_triggers < 1:
            raise ConfigError("badnl needs at least one trigger word and num_triggers ≥ 1")

    def trigger(self, text: str, rng: np.random.Generator) -> str:
        for _ in range(self.num_triggers):
            word = self.triggers[int(rng.integers(0, len(self.triggers)))]
            text = insert_words(text, [word], rng, self.max_position)
        return text


@dataclass(frozen=True)
class AddSent(_ClassificationAttack):
    """AddSent: a fixed trigger sentence inserted at a random word position."""

    name: str = "addsent"
    sentence: str = "I watch this 3D movie"

    def __post_init__(self) -> None:
        if not self.sentence.split():
            raise ConfigError("addsent needs a non-empty trigger sentence")

    def trigger(self, text: str, rng: np.random.Generator) -> str:
        return insert_words(text, self.sentence.split(), rng, self.max_position)


ATTACKS: dict[str, tuple[type, str]] = {
    "nlg-trigger": (NLGTrigger, "seq2seq"),
    "badnl": (BadNL, "classification"),
    "addsent": (AddSent, "classification"),
}


def make_attack(name: str, args: dict | None = None) -> TextAttack:
    """An attack from its registry name and ``--attack-arg`` options."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown nlp attack {name!r}; known: {sorted(ATTACKS)}")
    klass, _ = ATTACKS[name]
    args = dict(args or {})
    known = set(klass.__dataclass_fields__) - {"name"}
    extra = sorted(set(args) - known)
    if extra:
        raise ConfigError(f"unknown --attack-arg {extra} for {name}; known: {sorted(known)}")
    if "triggers" in args:
        value = args["triggers"]
        args["triggers"] = tuple(value.split(",") if isinstance(value, str) else value)
    return klass(**args)

