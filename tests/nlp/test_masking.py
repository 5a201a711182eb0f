"""The core's masking contract for every model family: LayerNorm γ masks (the reference's), the
token table's row masks (text's default ``nft``) and feed-forward-neuron masks (the option) are
invisible at injection, fold exactly into the weights, unload exactly, and are the only thing
that trains."""

from __future__ import annotations

import pytest
import torch

from nft.core import MaskConfig, inject_masks, mask_candidates
from nft.core.testing import MaskingContract
from nft.nlp.models import (
    ModelSize,
    build_classifier,
    build_seq2seq,
    ffn_mask_config,
    register_text_mask_targets,
    word_mask_config,
)

register_text_mask_targets()

VOCAB = 40
SIZE = ModelSize(d_model=16, layers=2, heads=2, ffn=24, max_positions=32, dropout=0.0)
FFN = ffn_mask_config()


def _spread(model):
    """Random-init transformers weights are tiny (std 0.02), which makes deep layers' effect on
    the logits fall below the contract's tolerance; widen them so every mask visibly matters."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _seq2seq_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    decoder = torch.randint(4, VOCAB, (3, 5), generator=g)
    decoder[:, 0] = 2
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder}


def _classifier_inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, VOCAB, (3, 9), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    ids[2, 6:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


class _Seq2Seq(MaskingContract):
    family = "marian"

    def make_model(self):
        return _spread(build_seq2seq(self.family, VOCAB, SIZE))

    def make_inputs(self):
        return _seq2seq_inputs()

    def run(self, model, inputs):
        return model(**inputs).logits


class _Classifier(MaskingContract):
    family = "bert"

    def make_model(self):
        return _spread(build_classifier(self.family, VOCAB, 3, SIZE))

    def make_inputs(self):
        return _classifier_inputs()

    def run(self, model, inputs):
        return model(**inputs).logits


class TestMarianNorm(_Seq2Seq):
    family = "marian"


class TestBartNorm(_Seq2Seq):
    family = "bart"


class TestT5Norm(_Seq2Seq):
    family = "t5"


class TestBertNorm(_Classifier):
    family = "bert"


class TestDistilBertNorm(_Classifier):
    family = "distilbert"


class TestRobertaNorm(_Classifier):
    family = "roberta"


class TestBertWords(_Classifier):
    family = "bert"
    mask_config = word_mask_config()


class TestDistilBertWords(_Classifier):
    family = "distilbert"
    mask_config = word_mask_config()


class TestRobertaWords(_Classifier):
    family = "roberta"
    mask_config = word_mask_config()


@pytest.mark.parametrize("family,table", [
    ("marian", "model.encoder.embed_tokens"), ("bart", "model.encoder.embed_tokens"),
    ("t5", "encoder.embed_tokens"), ("bert", "bert.embeddings.word_embeddings"),
    ("distilbert", "distilbert.embeddings.word_embeddings"), ("roberta", "roberta.embeddings.word_embeddings"),
])
def test_word_masks_are_one_per_row_of_the_encoders_token_table(family, table):
    """The default text masks find each family's (encoder's) token table and nothing else. A
    generator's table is tied to its decoder and output layer; the masker masks it once, at the
    encoder (masking a second name of the same tensor would multiply the masks when folded)."""
    build = build_seq2seq if family in ("marian", "bart", "t5") else \
        (lambda f, v, s: build_classifier(f, v, 3, s))
    masked = inject_masks(build(family, VOCAB, SIZE), word_mask_config())
    assert list(masked.masks) == [table]
    assert masked.masks[table].shape == (VOCAB,)


class TestMarianFFN(_Seq2Seq):
    family = "marian"
    mask_config = FFN


class TestBertFFN(_Classifier):
    family = "bert"
    mask_config = FFN


@pytest.mark.parametrize("family,expected", [
    ("marian", 10), ("bart", 12), ("t5", 12), ("bert", 5), ("distilbert", 5), ("roberta", 5),
])
def test_layernorm_masks_cover_every_norm(family, expected):
    """Default masks land on every LayerNorm (T5's RMS norm included, via the registered type)."""
    build = build_seq2seq if family in ("marian", "bart", "t5") else \
        (lambda f, v, s: build_classifier(f, v, 3, s))
    model = build(family, VOCAB, SIZE)
    masked = inject_masks(model, MaskConfig())
    assert len(masked) == expected
    assert all(kind == "norm" for name, kind in mask_candidates(model) if name in masked.masks)


@pytest.mark.parametrize("family,layers", [("marian", 4), ("bart", 4), ("t5", 4), ("bert", 2),
                                           ("distilbert", 2), ("roberta", 2)])
def test_ffn_masks_are_one_per_hidden_neuron(family, layers):
    build = build_seq2seq if family in ("marian", "bart", "t5") else \
        (lambda f, v, s: build_classifier(f, v, 3, s))
    masked = inject_masks(build(family, VOCAB, SIZE), ffn_mask_config())
    assert len(masked) == layers
    assert all(m.numel() == SIZE.ffn for m in masked.mask_parameters())
    both = inject_masks(build(family, VOCAB, SIZE), ffn_mask_config(include_norms=True))
    assert len(both) > layers
