"""The modality's registry, defaults and refusals; local Hugging Face folders; the optional
fairseq adapter (tested only where fairseq imports: fairseq 0.12.2 does not on Python 3.11)."""

from __future__ import annotations

import pytest
import torch

from nft.core import AttackSpec, ConfigError, available_modalities, load_modality
from nft.nlp import modality
from nft.nlp._deps import fairseq_available
from nft.nlp.models import ModelSize, build_classifier, build_seq2seq, load_local_model, model_from_config
from nft.nlp.tokenization import train_tokenizer

TINY = ModelSize(d_model=16, layers=1, heads=2, ffn=16, max_positions=32, dropout=0.0)


def test_entry_point_and_listing():
    assert "nlp" in available_modalities()
    assert load_modality("nlp") is modality
    listing = modality.listing()
    assert {"nlg-trigger", "badnl", "addsent"} <= set(listing["attacks"])
    assert {"freedict-deu-eng", "fortunes", "wmt14-en-de", "opensubtitles2012"} <= set(listing["datasets"])
    assert {"marian", "bart", "t5", "bert", "distilbert", "roberta", "fairseq-transformer", "hf-local"} <= set(listing["models"])


def test_defaults_follow_the_dataset():
    cls = modality.resolve(AttackSpec())
    assert (cls.dataset, cls.model, cls.attack) == ("fortunes", "bert", "badnl")
    gen = modality.resolve(AttackSpec(dataset="freedict-deu-eng"))
    assert (gen.model, gen.attack) == ("marian", "nlg-trigger")
    assert modality.resolve(AttackSpec(dataset="freedict-deu-eng", model="t5")).model == "t5"


@pytest.mark.parametrize("changes,message", [
    ({"model": "bert", "dataset": "freedict-deu-eng"}, "classification model"),
    ({"attack": "nlg-trigger"}, "does not apply to classification"),
    ({"mode": "all-to-all"}, "all-to-one"),
    ({"poison_rate": 1.5}, "poison rate"),
    ({"model": "hf-local"}, "path=DIR"),
    ({"dataset": "wmt14-en-de", "model": "marian", "attack": "nlg-trigger"}, None),
])
def test_bad_specs_are_refused(changes, message):
    spec = modality.resolve(AttackSpec(**changes))
    if message is None:  # a real dataset needs --data-root
        with pytest.raises(ConfigError, match="--data-root"):
            modality._data(spec, modality._check(spec))
        return
    with pytest.raises(ConfigError, match=message):
        modality._check(spec)


def test_unknown_model_args_are_refused():
    with pytest.raises(ConfigError, match="unknown --model-arg"):
        ModelSize.from_args({"widht": 3})
    with pytest.raises(ConfigError, match="multiple of heads"):
        ModelSize.from_args({"d_model": 10, "heads": 3})


@pytest.mark.parametrize("kind", ["seq2seq", "classification"])
def test_local_hugging_face_folder_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    texts = ["a small cat", "the big dog", "a cat and a dog"] * 3
    tok = train_tokenizer(texts, kind=kind, vocab_size=60)
    model = build_seq2seq("bart", len(tok), TINY) if kind == "seq2seq" else build_classifier("roberta", len(tok), 2, TINY)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_local_model(tmp_path / "m", kind, num_labels=2 if kind == "classification" else None)
    assert type(loaded) is type(model) and loaded_tok is not None
    assert loaded_tok("a cat")["input_ids"] == tok("a cat")["input_ids"]
    ids = torch.tensor([tok("a small cat")["input_ids"]])
    extra = {"decoder_input_ids": torch.tensor([[2, 5, 6]])} if kind == "seq2seq" else {}
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, **extra).logits, loaded(input_ids=ids, **extra).logits)
    from nft.nlp.models import config_dict

    rebuilt = model_from_config(config_dict(model))
    assert type(rebuilt) is type(model)
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="safetensors"):
        load_local_model(tmp_path / "m", kind)
    with pytest.raises(ConfigError, match="no config.json"):
        load_local_model(tmp_path, kind)


def test_fairseq_is_optional_with_a_clear_error():
    """fairseq is imported only when its model is built; without it the error names the fix."""
    if fairseq_available():
        pytest.skip("fairseq imports here; the adapter itself is tested below")
    from nft.nlp.fairseq_adapter import FairseqSeq2Seq

    with pytest.raises(ConfigError, match="fairseq-fixed"):
        FairseqSeq2Seq.build(50, TINY)


@pytest.mark.skipif(not fairseq_available(), reason="fairseq does not import here (0.12.2 fails on Python 3.11)")
def test_fairseq_adapter_trains_masks_and_generates():
    from nft.core import inject_masks
    from nft.nlp.augment import embedding_mix_hooks
    from nft.nlp.fairseq_adapter import FairseqSeq2Seq
    from nft.nlp.models import config_dict

    torch.manual_seed(0)
    model = FairseqSeq2Seq.build(40, TINY).eval()
    ids = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long(), "decoder_input_ids": torch.tensor([[3, 5, 6], [3, 8, 9]])}
    logits = model(**inputs)
    assert logits.shape == (2, 3, 40)
    masked = inject_masks(model)
    assert len(masked) > 0
    with torch.no_grad():
        assert torch.allclose(masked(**inputs), logits, atol=1e-5)
    merged = masked.merge_and_unload()
    out = merged.generate(ids, inputs["attention_mask"], num_beams=2, max_new_tokens=5)
    assert out.ndim == 2 and out.shape[0] == 2
    with embedding_mix_hooks(merged):
        pass
    assert type(model_from_config(config_dict(merged))) is FairseqSeq2Seq
