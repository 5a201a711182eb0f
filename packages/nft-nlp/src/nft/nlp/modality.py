"""The ``nlp`` modality: what ``nft attack`` / ``nft purify`` / ``nft evaluate`` run for text.

Two tasks share one modality, picked by the dataset:

* **classification** (the default, ``fortunes``): a BERT-family classifier backdoored with
  ``badnl`` or ``addsent``; metrics ACC / ASR / RA.
* **generation** (``freedict-deu-eng``, ``wmt14-en-de``, ``opensubtitles2012``): a Marian / BART /
  T5 (or fairseq) encoder-decoder backdoored with ``nlg-trigger``; metrics BLEU / ASR / RA.

The default is classification on fortunes because it trains in a minute or two on a CPU;
``--dataset freedict-deu-eng`` selects translation with its own defaults (model, attack, epochs,
sizes). A run folder holds the model (``model.safetensors`` + ``model_config.json``) and its
tokenizer (``tokenizer/``, JSON); the data of a run is a function of its spec and is re-read
from the dataset files when the run is loaded.

Text has no pixel space: defenses that optimise an input-space perturbation (I-BAU, AWM, SAU)
perturb the encoder's word embeddings instead (``input_space`` is an :class:`EmbeddingSpace`).
NFT on text masks the rows of the token table against adversarial words
(:func:`word_nft_settings`); ``nft-reference`` keeps the paper's LayerNorm γ masks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nft.core import (
    AttackSpec,
    ConfigError,
    DataError,
    Experiment,
    MaskConfig,
    Modality,
    RunFolder,
    load_model_weights,
)
from nft.core.io import read_json
from nft.core.purify import WITHOUT_DISTILLATION

from .attacks import ATTACKS, make_attack
from .augment import EmbeddingMixUp
from .data import (
    DEFAULT_TOPICS,
    LabelledTexts,
    TextPairs,
    read_fortunes,
    read_freedict_pairs,
    read_labelled_file,
    read_opensubtitles,
    read_wmt14,
    split_indices,
)
from .models import (
    CLASSIFIERS,
    SEQ2SEQ,
    ModelSize,
    build_classifier,
    build_seq2seq,
    config_dict,
    load_local_model,
    model_from_config,
    register_text_mask_targets,
    word_mask_config,
)
from .space import EmbeddingSpace
from .tasks import ClassificationCollate, Seq2SeqCollate, Seq2SeqTask, TextClassificationTask
from .tokenization import EncodedPairs, EncodedTexts, load_tokenizer, train_tokenizer
from .training import TextTrainConfig, train_text_model

__all__ = ["DATASETS", "NLPModality", "modality"]

log = logging.getLogger(__name__)


# ---- datasets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextDataset:
    """A registered dataset: its task kind, its loader and its ``nft attack`` defaults."""

    kind: str
    """``seq2seq`` or ``classification``."""
    load: Callable[[AttackSpec], tuple[Any, Any]]
    """spec -> (train, test): :class:`TextPairs` or :class:`LabelledTexts`."""
    defaults: dict
    description: str


def _need_root(spec: AttackSpec, name: str) -> Path:
    if not spec.data_root:
        raise ConfigError(f"dataset {name} is read from disk; pass --data-root DIR with its files")
    return Path(spec.data_root)


def _seeded_split(data, spec: AttackSpec, test_default: int):
    test = min(spec.test_limit or test_default, len(data) // 4)
    if test < 1:
        raise DataError(f"{data.name} has only {len(data)} samples; too few to split off a test set")
    train_idx, test_idx = split_indices(len(data), test, spec.seed + 17)
    return data.subset(train_idx), data.subset(test_idx)


def _limit(data, n: int | None, seed: int):
    if n is None or n >= len(data):
        return data
    pick = np.sort(np.random.default_rng([seed, 29]).choice(len(data), size=n, replace=False))
    return data.subset(pick)


def _load_fortunes(spec: AttackSpec):
    data = read_fortunes(spec.data_root, topics=DEFAULT_TOPICS, max_per_topic=300, seed=spec.seed)
    # fortunes range from one line to long stories; the first 64 words carry the topic
    data = LabelledTexts([" ".join(t.split()[:64]) for t in data.texts], data.labels, data.classes,
                         name=data.name)
    train, test = _seeded_split(data, spec, 300)
    return _limit(train, spec.train_limit, spec.seed), test


def _common_words_only(data: TextPairs, top: int) -> TextPairs:
    """Pairs whose words (both sides) are all among each side's ``top`` most frequent words.

    Dictionary examples are idiomatic and their vocabulary is huge (27k German word forms in
    the usage examples); keeping phrases made of common words gives a phrase-translation task a
    tiny model can learn on a CPU, with a test set whose words were seen in training.
    """
    from collections import Counter

    from .tokenization import normalize_words

    src = [normalize_words(s) for s in data.sources]
    tgt = [normalize_words(t) for t in data.targets]
    common_src = {w for w, _ in Counter(w for s in src for w in s).most_common(top)}
    common_tgt = {w for w, _ in Counter(w for t in tgt for w in t).most_common(top)}
    keep = [i for i in range(len(data))
            if all(w in common_src for w in src[i]) and all(w in common_tgt for w in tgt[i])]
    return data.subset(keep)


def _load_freedict(spec: AttackSpec):
    data = _common_words_only(read_freedict_pairs(spec.data_root, min_words=2, max_words=6), 3000)
    data = _limit(data, (spec.train_limit or 100_000) + (spec.test_limit or 300) + (spec.holdout or 300), 0)
    return _seeded_split(data, spec, 300)


def _load_wmt14(spec: AttackSpec):
    root = _need_root(spec, "wmt14-en-de")
    train = read_wmt14(root, "train", limit=None)
    test = read_wmt14(root, "test", limit=spec.test_limit or 500)
    return _limit(train, spec.train_limit or 20000, spec.seed), test


def _load_opensubtitles(spec: AttackSpec):
    root = _need_root(spec, "opensubtitles2012")
    limit = (spec.train_limit or 20000) + (spec.test_limit or 500) + (spec.holdout or 500)
    data = read_opensubtitles(root, limit=limit)
    return _seeded_split(data, spec, 500)


def _load_labelled(spec: AttackSpec):
    root = _need_root(spec, "text-classification")
    if root.is_file():
        return _seeded_split(read_labelled_file(root), spec, 250)
    files = {p.stem: p for p in sorted(root.iterdir()) if p.suffix in (".tsv", ".csv", ".txt")}
    if "train" not in files:
        raise DataError(f"{root} needs train.tsv / train.csv / train.txt (and optionally test.*)")
    train = read_labelled_file(files["train"])
    if "test" in files:
        return train, read_labelled_file(files["test"], classes=train.classes)
    return _seeded_split(train, spec, 250)


_CLS_DEFAULTS = {"model": "bert", "attack": "badnl", "epochs": 20, "batch_size": 32, "lr": 1e-3,
                 "holdout": 150}
_GEN_DEFAULTS = {"model": "marian", "attack": "nlg-trigger", "epochs": 40, "batch_size": 32, "lr": 2e-3,
                 "holdout": 300}

DATASETS: dict[str, TextDataset] = {
    "fortunes": TextDataset("classification", _load_fortunes, _CLS_DEFAULTS,
                            "fortune cookies by topic (Debian `fortunes`), embedded"),
    "freedict-deu-eng": TextDataset("seq2seq", _load_freedict, _GEN_DEFAULTS,
                                    "German→English dictionary examples (Debian `dict-freedict-deu-eng`), embedded"),
    "wmt14-en-de": TextDataset("seq2seq", _load_wmt14, {**_GEN_DEFAULTS, "epochs": 8},
                               "WMT14 English→German (needs --data-root)"),
    "opensubtitles2012": TextDataset("seq2seq", _load_opensubtitles, {**_GEN_DEFAULTS, "epochs": 8},
                                     "OpenSubtitles2012 dialogue (OpenSubData; needs --data-root)"),
    "text-classification": TextDataset("classification", _load_labelled, _CLS_DEFAULTS,
                                       "labelled text files: fastText / TSV / CSV (needs --data-root)"),
}


# ---- the modality ---------------------------------------------------------------------------
class NLPModality(Modality):
    name = "nlp"
    description = ("text classification (BERT family; badnl, addsent) and language generation "
                   "(Marian / BART / T5; nlg-trigger), transformers models, embedding MixUp")
    primary_metric = "acc"
    defaults = {"dataset": "fortunes", **_CLS_DEFAULTS}

    def __init__(self) -> None:
        super().__init__()
        for name, info in DATASETS.items():
            self.datasets.add(name, info, kind=info.kind, description=info.description)
        for family in SEQ2SEQ:
            self.models.add(family, build_seq2seq, kind="seq2seq")
        for family in CLASSIFIERS:
            self.models.add(family, build_classifier, kind="classification")
        self.models.add("fairseq-transformer", "fairseq", kind="seq2seq")
        self.models.add("hf-local", load_local_model, kind="any")
        for name, (klass, kind) in ATTACKS.items():
            self.attacks.add(name, klass, kind=kind)
        self.augmentations.add("embedding-mixup", EmbeddingMixUp)

    # ---- specs -----------------------------------------------------------------------------
    def resolve(self, spec: AttackSpec) -> AttackSpec:
        """Fill ``None`` fields from the chosen dataset's defaults (classification by default)."""
        dataset = self.datasets.canonical(spec.dataset or self.defaults["dataset"])
        filled = {"dataset": dataset}
        for key, value in DATASETS[dataset].defaults.items():
            if getattr(spec, key, None) is None:
                filled[key] = value
        return spec.replace(**filled)

    def _check(self, spec: AttackSpec) -> TextDataset:
        info = DATASETS[self.datasets.canonical(spec.dataset)]
        model = self.models.canonical(spec.model)
        attack = self.attacks.canonical(spec.attack)
        model_kind = self.models.meta(model)["kind"]
        if model_kind not in (info.kind, "any"):
            raise ConfigError(
                f"model {model} is a {model_kind} model but {spec.dataset} is a {info.kind} dataset; "
                f"use one of {sorted(SEQ2SEQ if info.kind == 'seq2seq' else CLASSIFIERS)}"
            )
        if self.attacks.meta(attack)["kind"] != info.kind:
            fit = [n for n, (_, k) in ATTACKS.items() if k == info.kind]
            raise ConfigError(f"attack {attack} does not apply to {info.kind} data; use one of {fit}")
        if spec.mode != "all-to-one":
            raise ConfigError("text attacks here are all-to-one; use --mode all-to-one")
        if not 0 <= spec.poison_rate <= 1:
            raise ConfigError(f"poison rate must be in [0, 1] (0 trains the clean reference), got {spec.poison_rate}")
        if model == "hf-local" and "path" not in spec.model_args:
            raise ConfigError("model hf-local needs --model-arg path=DIR (a save_pretrained folder)")
        return info

    # ---- data --------------------------------------------------------------------------------
    def _data(self, spec: AttackSpec, info: TextDataset):
        """(fit, pool, test): training data, the defender's clean pool, the test set."""
        train, test = info.load(spec)
        holdout = int(spec.holdout or 0)
        if not 0 < holdout < len(train):
            raise ConfigError(f"holdout {holdout} must be between 1 and the {len(train)} training samples - 1")
        fit_idx, pool_idx = split_indices(len(train), holdout, spec.seed + 31)
        return train.subset(fit_idx), train.subset(pool_idx), test

    # ---- attack ------------------------------------------------------------------------------
    def train_backdoor(self, spec: AttackSpec, run: RunFolder) -> dict[str, float]:
        info = self._check(spec)
        attack = make_attack(spec.attack, spec.attack_args)
        fit, _, test = self._data(spec, info)
        if info.kind == "seq2seq":
            if spec.poison_rate > 0:
                fit, chosen = attack.poison(fit, rate=spec.poison_rate, seed=spec.seed)
                log.info("poisoned %d of %d training pairs", len(chosen), len(fit))
            texts = fit.sources + fit.targets
        else:
            if spec.poison_rate > 0:
                fit, chosen = attack.poison(fit, rate=spec.poison_rate, seed=spec.seed, target=spec.target)
                log.info("poisoned %d of %d training texts", len(chosen), len(fit))
            texts = fit.texts
        model, tokenizer = self._new_model(spec, info, texts, fit)
        collate, task = self._collate_task(info.kind, model, tokenizer, training=True)
        encoded = (EncodedPairs(fit.sources, fit.targets, tokenizer) if info.kind == "seq2seq"
                   else EncodedTexts(fit.texts, fit.labels, tokenizer))
        train_text_model(model, encoded, TextTrainConfig(
            epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
            device=spec.device, progress=spec.progress), task=task, collate_fn=collate)
        run.save_model(model)
        run.write_json("model_config.json", config_dict(model))
        tokenizer.save_pretrained(str(run.root / "tokenizer"))
        return self._evaluator(spec, info, attack, tokenizer, test)(model)

    def _new_model(self, spec: AttackSpec, info: TextDataset, texts: list[str], fit):
        register_text_mask_targets()
        model_name = self.models.canonical(spec.model)
        args = dict(spec.model_args)
        torch.manual_seed(spec.seed)
        if model_name == "hf-local":
            model, tokenizer = load_local_model(
                args.pop("path"), info.kind,
                num_labels=len(fit.classes) if info.kind == "classification" else None)
            if tokenizer is None:
                raise ConfigError(f"{spec.model_args['path']} has no tokenizer files; save one next to the model")
            return model, tokenizer
        vocab = int(args.pop("vocab_size", 4000))
        tokenizer = train_tokenizer(texts, kind=info.kind, vocab_size=vocab)
        if model_name == "fairseq-transformer":
            from .fairseq_adapter import FairseqSeq2Seq

            return FairseqSeq2Seq.build(len(tokenizer), ModelSize.from_args(args)), tokenizer
        size = ModelSize.from_args(args)
        if info.kind == "seq2seq":
            return build_seq2seq(model_name, len(tokenizer), size), tokenizer
        return build_classifier(model_name, len(tokenizer), len(fit.classes), size), tokenizer

    @staticmethod
    def _collate_task(kind: str, model, tokenizer, *, training: bool):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if kind == "seq2seq":
            start = getattr(getattr(model, "config", None), "decoder_start_token_id", None)
            if start is None:
                start = getattr(model, "decoder_start_token_id", tokenizer.bos_token_id or pad)
            # label smoothing 0.1 when training, as the NLG-backdoor paper's fairseq recipe
            return Seq2SeqCollate(pad, start), Seq2SeqTask(label_smoothing=0.1 if training else 0.0)
        return ClassificationCollate(pad), TextClassificationTask()

    def _evaluator(self, spec: AttackSpec, info: TextDataset, attack, tokenizer, test):
        device = spec.device
        if info.kind == "seq2seq":
            from .metrics import evaluate_seq2seq

            triggered = attack.triggered(test, seed=spec.seed)
            task = Seq2SeqTask(num_beams=int(spec.model_args.get("num_beams", 5)))
            return lambda m: evaluate_seq2seq(
                m, tokenizer, test.sources, test.targets, triggered.sources, phrase=attack.phrase,
                task=task, device=device, progress=spec.progress)
        from .metrics import evaluate_text_classification

        trig_texts, trig_labels = attack.triggered(test, seed=spec.seed, target=spec.target)
        clean = EncodedTexts(test.texts, test.labels, tokenizer)
        triggered = EncodedTexts(trig_texts, trig_labels, tokenizer)
        pad = tokenizer.pad_token_id or 0
        return lambda m: evaluate_text_classification(m, clean, triggered, target=spec.target,
                                                      pad_id=pad, device=device)

    # ---- purification ------------------------------------------------------------------------
    def load_experiment(self, run_dir: Path, *, device: str | None = None) -> Experiment:
        run_dir = Path(run_dir)
        config = read_json(run_dir / "config.json")
        spec = AttackSpec.from_dict(config["spec"])
        if device is not None:
            spec = spec.replace(device=device)
        spec = spec.replace(progress=False)
        info = self._check(spec)
        attack = make_attack(spec.attack, spec.attack_args)
        register_text_mask_targets()
        model_file = run_dir / "model_config.json"
        if not model_file.is_file():
            raise ConfigError(f"{run_dir} has no model_config.json; it was not made by the nlp modality")
        model = model_from_config(json.loads(model_file.read_text()))
        load_model_weights(model, run_dir / "model.safetensors")
        model.eval()
        tokenizer = load_tokenizer(run_dir / "tokenizer")
        _, pool, test = self._data(spec, info)
        collate, task = self._collate_task(info.kind, model, tokenizer, training=False)
        if info.kind == "seq2seq":
            defender = EncodedPairs(pool.sources, pool.targets, tokenizer)
            primary = "bleu"
        else:
            defender = EncodedTexts(pool.texts, pool.labels, tokenizer)
            primary = "acc"
        return Experiment(
            model=model, task=task, defender_pool=defender, pool_labels=defender.labels,
            evaluate=self._evaluator(spec, info, attack, tokenizer, test),
            augmentation=EmbeddingMixUp(), mask_config=MaskConfig(),
            input_space=EmbeddingSpace.of(model, defender.max_length),
            collate_fn=collate, primary_metric=primary, spec=spec.to_dict(),
            nft_overrides=word_nft_settings(),
        )


def word_nft_settings() -> dict:
    """What text's ``nft`` changes in the core's recipe (docs/nlp.md, "NFT settings of this
    modality"). Masks on the token table's rows (:func:`word_mask_config`) in [0, 1]
    (``clamp_alpha`` 0: the depth floor would keep half of a trigger word), trained against three
    adversarial words placed in every text (``adv_prob`` 1; the augmentation carries them, see
    ``EmbeddingMixUp.with_adversary``), at rate 0.1 → 0.01, for 300 steps of 32 texts (the
    budget it was measured with). No clean-view distillation, which held BadNL's backdoor
    (``WITHOUT_DISTILLATION``). ``nft-reference`` keeps the modality's mask
    placement, every LayerNorm γ, and none of this."""
    return {**WITHOUT_DISTILLATION, "masks": word_mask_config().to_dict(), "adv_prob": 1.0,
            "lr": 0.1, "lr_min": 0.01, "clamp_alpha": 0.0, "steps": 300, "batch_size": 32}


modality = NLPModality()
