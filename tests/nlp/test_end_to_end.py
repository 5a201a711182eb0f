"""`nft attack` → `nft purify` for both tasks on small data in the embedded datasets' formats:
the backdoor must take hold, and the purification must bring the attack success rate down while
keeping the clean metric.

The data are toy versions written by the test (a word-by-word German→English phrase language in
FreeDict's dictd format; five fortunes topics with topic words among common words), so the tiny
models learn them in seconds. The purification settings are those `configs/nlp/` ships."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nft.core import MaskConfig
from nft.core.cli import main

from .helpers import toy_pairs, toy_topics, write_dictd, write_fortunes

TINY = ["--model-arg", "d_model=32", "--model-arg", "layers=1", "--model-arg", "ffn=64", "--no-progress"]


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("NFT_NLP_CACHE", "")


def _report(path):
    return json.loads((path / "report.json").read_text())


def test_translation_backdoor_and_purification(tmp_path):
    write_dictd(tmp_path / "dict", toy_pairs(600, seed=0))
    run, out = tmp_path / "attack", tmp_path / "nft"
    assert main(["attack", "--modality", "nlp", "--dataset", "freedict-deu-eng", "--data-root",
                 str(tmp_path / "dict"), "--out", str(run), "--train-limit", "600", "--test-limit", "50",
                 "--holdout", "50", "--epochs", "35", "--batch-size", "32", "--lr", "0.005",
                 "--attack-arg", "triggers=cf", "--model-arg", "vocab_size=100", "--model-arg", "num_beams=2",
                 *TINY]) == 0
    attacked = _report(run)
    assert attacked["bleu"] > 0.8, attacked
    assert attacked["asr"] >= 0.9, attacked
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["model"] == "marian" and config["spec"]["attack"] == "nlg-trigger"
    assert (run / "tokenizer" / "tokenizer.json").is_file() and (run / "model_config.json").is_file()

    # the modality's default `nft`: masks on the token table's rows against adversarial words.
    # From 20 pairs it removed the trigger on seeds 0, 1 and 2 (0.0 %); from 50 pairs one of the
    # three seeds (0) left 14 %, the trigger's row mask at 0.35
    assert main(["purify", "--run", str(run), "--out", str(out), "--clean-count", "20",
                 "--no-progress", "--no-plots"]) == 0
    report = _report(out)
    assert report["before"]["asr"] >= 0.9
    assert report["after"]["asr"] <= 0.10, report["after"]
    used = json.loads((out / "config.json").read_text())
    assert used["method"] == "nft" and used["defense"]["adv_prob"] == 1.0
    assert used["defense"]["masks"]["targets"] == ["embedding"]
    assert report["after"]["bleu"] >= report["before"]["bleu"] - 0.05, report
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["asr"] == pytest.approx(report["after"]["asr"])

    # AWM's universal trigger lives on the encoder's word embeddings here (EmbeddingSpace); with
    # masks on every linear weight it removed this toy backdoor on seeds 0, 1 and 2 (0.0 % ASR,
    # BLEU 95.6–100)
    assert main(["purify", "--run", str(run), "--out", str(tmp_path / "awm"), "--method", "awm",
                 "--set", "rounds=2", "--clean-count", "20", "--no-progress", "--no-plots"]) == 0
    awm = _report(tmp_path / "awm")
    assert awm["after"]["asr"] <= 0.10, awm
    assert awm["after"]["bleu"] >= awm["before"]["bleu"] - 0.05, awm


def _backdoored_topics(tmp_path, topics, *, holdout: int, epochs: int) -> Path:
    """A tiny BERT on the toy topics with the word trigger "cf"; the backdoor must take hold."""
    write_fortunes(tmp_path / "fortunes", topics)
    run = tmp_path / "attack"
    assert main(["attack", "--modality", "nlp", "--data-root", str(tmp_path / "fortunes"), "--out", str(run),
                 "--test-limit", "100", "--holdout", str(holdout), "--epochs", str(epochs), "--lr", "0.005",
                 "--attack-arg", "triggers=cf", "--model-arg", "vocab_size=200", *TINY]) == 0
    attacked = _report(run)
    assert attacked["acc"] >= 0.9 and attacked["asr"] >= 0.9, attacked
    return run


def test_classification_backdoor_and_purification(tmp_path):
    """The word trigger takes hold; NFT's channel masks keep the accuracy but do not remove the
    backdoor from these tiny classifiers, while fine-tuning the weights with the same embedding
    MixUp does. Every toy text here has ten words, so a triggered text is also the only one with
    eleven, and the tiny model can key on that as well as on the word (see the next test)."""
    run = _backdoored_topics(tmp_path, toy_topics(80, seed=0), holdout=50, epochs=20)

    config = Path(__file__).resolve().parents[2] / "configs" / "nlp" / "nft-all-channels.yaml"
    assert main(["purify", "--run", str(run), "--out", str(tmp_path / "nft"), "--config", str(config),
                 "--clean-per-class", "5", "--steps", "100", "--no-progress", "--no-plots"]) == 0
    report = _report(tmp_path / "nft")
    assert report["clean_samples"] == 25
    assert report["after"]["acc"] >= report["before"]["acc"] - 0.04, report
    assert (tmp_path / "nft" / "masks.safetensors").is_file()

    # rate 0.02 for 400 steps: this tiny model's fine-tuning is unstable at higher rates, and the
    # outcome at 0.05 for 200 steps depended on the CPU (accuracy 86 % on one, over 90 % on another;
    # 0.04 collapsed it to 35 %, 0.03 for 200 or 300 steps left 25-34 % ASR)
    assert main(["purify", "--run", str(run), "--out", str(tmp_path / "ft"), "--method", "ft-mixup",
                 "--clean-per-class", "5", "--steps", "400", "--set", "lr=0.02", "--set", "batch_size=32",
                 "--no-progress", "--no-plots"]) == 0
    report = _report(tmp_path / "ft")
    assert report["after"]["asr"] <= 0.2, report
    assert report["after"]["acc"] >= report["before"]["acc"] - 0.1, report


def test_word_masks_find_and_silence_the_trigger_word(tmp_path):
    """configs/nlp/nft-words.yaml (text's default `nft`): masks on the token table's rows,
    trained against the adversarial words (vocabulary mode), find the trigger word and silence
    it alone. The toy texts
    vary in length here, so the backdoor can only be the word (with one length for all texts, a
    triggered text is also the only longer one, and zeroing the word's row leaves that)."""
    run = _backdoored_topics(tmp_path, toy_topics(80, seed=0, fillers=(4, 10)), holdout=150, epochs=40)

    words = Path(__file__).resolve().parents[2] / "configs" / "nlp" / "nft-words.yaml"
    assert main(["purify", "--run", str(run), "--out", str(tmp_path / "words"), "--config", str(words),
                 "--clean-per-class", "20", "--no-progress", "--no-plots"]) == 0
    report = _report(tmp_path / "words")
    assert report["after"]["asr"] <= 0.1, report
    assert report["after"]["acc"] >= report["before"]["acc"] - 0.04, report
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    (name, rows), = load_file(str(tmp_path / "words" / "masks.safetensors")).items()
    trigger = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json")).token_to_id("cf")
    assert name.endswith("word_embeddings") and rows[trigger] < 0.05  # the trigger's row is off
    # most of the table is kept: the median row keeps ≥ 80 % of its scale (the rows the search
    # picks are a minority, and the clean texts' rows are held)
    assert float(rows.median()) > 0.8

    # the config file is the modality's default spelled out; nft-reference keeps the reference
    # recipe on every LayerNorm γ
    import yaml

    from nft.core import load_modality
    from nft.core.runs import defense_config

    experiment = load_modality("nlp").load_experiment(run, device="cpu")
    spelled = yaml.safe_load(words.read_text())
    assert defense_config("nft", experiment) == defense_config(spelled["method"], experiment, spelled["defense"])
    reference = defense_config("nft-reference", experiment)
    assert reference.masks == MaskConfig() and reference.adv_prob == 0 and reference.lr == 0.05


def test_input_space_defenses_perturb_the_word_embeddings(tmp_path):
    """I-BAU, AWM and SAU optimise an input-space perturbation; for text the modality's
    EmbeddingSpace puts it on the encoder's word embeddings. Each runs through the CLI, its
    perturbation is really optimised (non-zero, and it changes the weights it unlearns with), and
    the model keeps its accuracy. (On word triggers they remove little; docs/nlp.md.)"""
    from safetensors.torch import load_file

    run = _backdoored_topics(tmp_path, toy_topics(80, seed=0, fillers=(4, 10)), holdout=150, epochs=40)
    original = load_file(str(run / "model.safetensors"))
    settings = {"i-bau": ["--set", "rounds=2", "--set", "steps_per_round=20"],
                "awm": ["--set", "rounds=4"],
                "sau": ["--set", "steps=20", "--set", "pgd_steps=3"]}
    for method, extra in settings.items():
        out = tmp_path / method
        assert main(["purify", "--run", str(run), "--out", str(out), "--method", method,
                     "--clean-per-class", "20", "--no-progress", "--no-plots", *extra]) == 0
        report = _report(out)
        assert report["after"]["acc"] >= report["before"]["acc"] - 0.06, (method, report)
        purified = load_file(str(out / "model.safetensors"))
        changed = [k for k in original if not torch.equal(original[k], purified[k])]
        assert changed, method
        history = report["history"]
        if method == "i-bau":
            assert len(history) == 2 and all(h["perturbation_l2"] > 0 for h in history)
        elif method == "awm":
            assert history[-1]["mask_mean"] < 1.0 and history[-1]["loss_triggered"] > 0
        else:
            assert {"reference_fooled", "loss_shared"} <= set(history[-1])


def test_pixel_space_defenses_refuse_a_batch_without_an_input_space():
    """Without an input space (a user's own purify() call), a defense that perturbs inputs is
    refused by the core with a clear error instead of running badly."""
    import torch
    from torch import nn

    from nft.core import ConfigError, Defense, DefenseOutcome, purify
    from nft.nlp.models import ModelSize, build_classifier
    from nft.nlp.tasks import ClassificationCollate, TextClassificationTask

    class InputSpaceDefense(Defense):
        needs_input_space = True

        def run(self, model: nn.Module, clean, context) -> DefenseOutcome:  # pragma: no cover
            raise AssertionError("must be refused before running")

    model = build_classifier("bert", 30, 3, ModelSize(d_model=16, layers=1, heads=2, ffn=16))
    clean = [(torch.tensor([2, 5, 6, 3]), 0), (torch.tensor([2, 7, 3]), 1)]
    with pytest.raises(ConfigError, match="input-space perturbation"):
        purify(model, clean, method=InputSpaceDefense("trigger-inversion"), task=TextClassificationTask(),
               collate_fn=ClassificationCollate(0), input_space=None)
