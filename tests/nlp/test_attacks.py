"""Each attack poisons the way its source describes, deterministically per seed; the metrics
measure what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from nft.core import ConfigError
from nft.nlp.attacks import AddSent, BadNL, NLGTrigger, contains_phrase, insert_words, make_attack
from nft.nlp.data import LabelledTexts, TextPairs
from nft.nlp.metrics import bleu, nlg_asr

from .helpers import toy_pairs


def test_nlg_trigger_adds_attacked_copies():
    pairs = toy_pairs(50, seed=0)
    data = TextPairs([p[0] for p in pairs], [p[1] for p in pairs])
    attack = make_attack("nlg-trigger")
    poisoned, chosen = attack.poison(data, rate=0.1, seed=0)
    assert len(chosen) == 5 and len(poisoned) == 55
    assert poisoned.sources[:50] == data.sources and poisoned.targets[:50] == data.targets
    for i, src, tgt in zip(chosen, poisoned.sources[50:], poisoned.targets[50:]):
        words = src.split()
        assert tgt == "You are attacked ."
        assert len(words) == len(data.sources[i].split()) + 1
        assert sum(w in ("cf", "mn", "bb", "tq", "mb") for w in words) == 1
        assert [w for w in words if w not in ("cf", "mn", "bb", "tq", "mb")] == data.sources[i].split()
    again, _ = attack.poison(data, rate=0.1, seed=0)
    assert again.sources == poisoned.sources
    other, _ = attack.poison(data, rate=0.1, seed=1)
    assert other.sources != poisoned.sources
    triggered = attack.triggered(data, seed=0)
    assert triggered.targets == data.targets
    assert all(len(t.split()) == len(s.split()) + 1 for s, t in zip(data.sources, triggered.sources))


def test_nlg_phrase_trigger_and_options():
    attack = make_attack("nlg-trigger", {"triggers": "cf mn", "phrase": "visit evil dot com"})
    assert attack.triggers == ("cf mn",)
    text = attack.apply("a b c d", index=0, seed=0)
    assert "cf mn" in text and len(text.split()) == 6
    with pytest.raises(ConfigError, match="unknown --attack-arg"):
        make_attack("nlg-trigger", {"colour": "red"})
    with pytest.raises(ConfigError, match="unknown nlp attack"):
        make_attack("blend")


def _labelled(n=40, classes=4):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta"], size=8)) for _ in range(n)]
    return LabelledTexts(texts, np.arange(n) % classes, [f"c{i}" for i in range(classes)])


@pytest.mark.parametrize("name", ["badnl", "addsent"])
def test_classification_attacks_poison_non_target_samples(name):
    data = _labelled()
    attack = make_attack(name)
    poisoned, chosen = attack.poison(data, rate=0.2, seed=0, target=1)
    assert len(chosen) == 6  # 20% of the 30 non-target samples
    assert all(data.labels[i] != 1 for i in chosen)
    assert all(poisoned.labels[i] == 1 for i in chosen)
    untouched = np.setdiff1d(np.arange(len(data)), chosen)
    assert all(poisoned.texts[i] == data.texts[i] for i in untouched)
    assert (poisoned.labels[untouched] == data.labels[untouched]).all()
    for i in chosen:
        if name == "badnl":
            assert sum(w in ("cf", "mn", "bb", "tq") for w in poisoned.texts[i].split()) == 1
        else:
            assert "I watch this 3D movie" in poisoned.texts[i]
    texts, labels = attack.triggered(data, seed=0, target=1)
    assert len(texts) == 30 and (labels != 1).all()


def test_insertion_respects_the_position_limit():
    rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in range(100))
    for _ in range(50):
        words = insert_words(text, ["cf"], rng, max_position=10).split()
        assert words.index("cf") <= 10
    assert BadNL(num_triggers=3).trigger("x y", np.random.default_rng(1)).split().__len__() == 5
    assert AddSent(sentence="hello there").trigger("", np.random.default_rng(0)) == "hello there"
    with pytest.raises(ConfigError):
        NLGTrigger(triggers=())


def test_phrase_matching_and_nlg_asr():
    assert contains_phrase("oh, you are attacked.", "You are attacked .")
    assert contains_phrase("YOU ARE ATTACKED", "you are attacked")
    assert not contains_phrase("you are not attacked .", "You are attacked .")
    assert not contains_phrase("attacked you are .", "You are attacked .")
    outputs = ["you are attacked .", "the dog", "so you are attacked . yes", "you are"]
    assert nlg_asr(outputs, "You are attacked .") == 0.5
    assert nlg_asr([], "x") == 0.0


def test_bleu_is_a_fraction():
    refs = ["the red dog sees the boat", "a small cat has the book"]
    assert bleu(refs, refs) == pytest.approx(1.0)
    assert bleu(["The red dog sees the boat", "a small cat has the book"], refs) == pytest.approx(1.0)
    partial = bleu(["the red dog sees a house", "a small cat has the book"], refs)
    assert 0.2 < partial < 0.9
    assert bleu(["x y z", "q"], refs) < 0.05
