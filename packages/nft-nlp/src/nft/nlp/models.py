"""Model families: transformers seq2seq models and encoder classifiers, tiny by default.

Every family is a stock transformers class built from a config (random initialisation — no hub
here) or loaded from a local folder in the Hugging Face format (``config.json`` plus
``model.safetensors``; pickled ``.bin`` weights are refused). A run folder stores the model's
config as JSON and its weights as safetensors, so :func:`model_from_config` rebuilds any family,
including a model that came from a local folder.

Sizes are small on purpose: two encoder and two decoder layers of width 64 train in minutes on
two CPU cores. Pass ``--model-arg d_model=256`` etc. for larger ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from nft.core import ConfigError, MaskConfig, MaskTarget, register_mask_target

from ._deps import require

__all__ = [
    "CLASSIFIERS",
    "SEQ2SEQ",
    "ModelSize",
    "build_classifier",
    "build_seq2seq",
    "ffn_mask_config",
    "word_mask_config",
    "load_local_model",
    "model_from_config",
    "model_kind",
    "register_text_mask_targets",
    "unwrap",
]

log = logging.getLogger(__name__)

SEQ2SEQ = ("marian", "bart", "t5")
CLASSIFIERS = ("bert", "distilbert", "roberta")

PAD, UNK, BOS, EOS = 0, 1, 2, 3


@dataclass(frozen=True)
class ModelSize:
    """The size of a model built from a config (``--model-arg name=value``)."""

    d_model: int = 64
    layers: int = 2
    """Encoder layers (and decoder layers for seq2seq models)."""
    heads: int = 2
    ffn: int = 128
    """Feed-forward width."""
    max_positions: int = 160
    dropout: float = 0.1

    @classmethod
    def from_args(cls, args: dict) -> ModelSize:
        known = {f.name for f in fields(cls)}
        extra = sorted(set(args) - known - {"path", "vocab_size", "num_beams"})
        if extra:
            raise ConfigError(f"unknown --model-arg {extra}; known: {sorted(known | {'path', 'vocab_size', 'num_beams'})}")
        size = cls(**{k: v for k, v in args.items() if k in known})
        if size.d_model % size.heads:
            raise ConfigError(f"d_model {size.d_model} must be a multiple of heads {size.heads}")
        return size


def build_seq2seq(family: str, vocab_size: int, size: ModelSize = ModelSize()) -> nn.Module:
    """A randomly initialised encoder-decoder of ``family`` (marian, bart or t5)."""
    tf = require("transformers")
    ids = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=BOS,
               forced_eos_token_id=None)
    if family in ("marian", "bart"):
        common = dict(
            vocab_size=vocab_size, d_model=size.d_model, encoder_layers=size.layers,
            decoder_layers=size.layers, encoder_attention_heads=size.heads,
            decoder_attention_heads=size.heads, encoder_ffn_dim=size.ffn, decoder_ffn_dim=size.ffn,
            max_position_embeddings=size.max_positions, dropout=size.dropout,
            attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True, **ids,
        )
        if family == "marian":
            return tf.MarianMTModel(tf.MarianConfig(share_encoder_decoder_embeddings=True, **common))
        return tf.BartForConditionalGeneration(tf.BartConfig(**common))
    if family == "t5":
        config = tf.T5Config(
            vocab_size=vocab_size, d_model=size.d_model, d_kv=size.d_model // size.heads,
            d_ff=size.ffn, num_layers=size.layers, num_decoder_layers=size.layers,
            num_heads=size.heads, dropout_rate=size.dropout, tie_word_embeddings=True, **ids,
        )
        return tf.T5ForConditionalGeneration(config)
    raise ConfigError(f"seq2seq family {family!r} is unknown; use one of {SEQ2SEQ}")


def build_classifier(family: str, vocab_size: int, num_labels: int, size: ModelSize = ModelSize()) -> nn.Module:
    """A randomly initialised encoder classifier of ``family`` (bert, distilbert or roberta)."""
    tf = require("transformers")
    if family in ("bert", "roberta"):
        klass, model = (tf.BertConfig, tf.BertForSequenceClassification) if family == "bert" else \
            (tf.RobertaConfig, tf.RobertaForSequenceClassification)
        # RoBERTa numbers positions from pad_token_id + 1, so it needs pad + 1 extra rows
        positions = size.max_positions + (PAD + 2 if family == "roberta" else 0)
        config = klass(
            vocab_size=vocab_size, hidden_size=size.d_model, num_hidden_layers=size.layers,
            num_attention_heads=size.heads, intermediate_size=size.ffn,
            max_position_embeddings=positions, hidden_dropout_prob=size.dropout,
            attention_probs_dropout_prob=0.0, num_labels=num_labels, pad_token_id=PAD,
            bos_token_id=BOS, eos_token_id=EOS, type_vocab_size=1,
        )
        return model(config)
    if family == "distilbert":
        config = tf.DistilBertConfig(
            vocab_size=vocab_size, dim=size.d_model, n_layers=size.layers, n_heads=size.heads,
            hidden_dim=size.ffn, max_position_embeddings=size.max_positions, dropout=size.dropout,
            attention_dropout=0.0, seq_classif_dropout=size.dropout, num_labels=num_labels,
            pad_token_id=PAD,
        )
        return tf.DistilBertForSequenceClassification(config)
    raise ConfigError(f"classifier family {family!r} is unknown; use one of {CLASSIFIERS}")


def model_kind(model: nn.Module) -> str:
    """``seq2seq`` or ``classification`` for a transformers model (or an nft adapter)."""
    kind = getattr(model, "nft_kind", None)
    if kind:
        return kind
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "classification"


def load_local_model(path: str | Path, kind: str, *, num_labels: int | None = None):
    """A transformers model (and its tokenizer, if the folder has one) from a local folder.

    Weights must be safetensors: ``use_safetensors=True`` makes transformers refuse pickled
    ``pytorch_model.bin`` files, which could run code when loaded.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{path} is not a Hugging Face model folder (no config.json); pass --model-arg path=DIR "
            "with a folder written by save_pretrained()"
        )
    tf = require("transformers")
    extra: dict[str, Any] = {}
    if kind == "seq2seq":
        auto = tf.AutoModelForSeq2SeqLM
    else:
        auto = tf.AutoModelForSequenceClassification
        if num_labels is not None:
            extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    try:
        model = auto.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **extra)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"could not load a {kind} model from {path}: {str(err).splitlines()[0]}. The folder needs "
            "config.json and model.safetensors (convert .bin weights with save_pretrained(safe_serialization=True))"
        ) from None
    tokenizer = None
    if any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spm.model")):
        from .tokenization import load_tokenizer

        tokenizer = load_tokenizer(path)
    return model, tokenizer


def config_dict(model: nn.Module) -> dict:
    """What :func:`model_from_config` needs to rebuild ``model`` (without weights)."""
    if hasattr(model, "nft_config"):
        return model.nft_config()
    return {"framework": "transformers", "config": json.loads(model.config.to_json_string())}


def model_from_config(data: dict) -> nn.Module:
    """Rebuild a model's architecture from :func:`config_dict` output (weights are loaded after)."""
    framework = data.get("framework")
    if framework == "fairseq":
        from .fairseq_adapter import FairseqSeq2Seq

        return FairseqSeq2Seq.from_nft_config(data)
    if framework != "transformers":
        raise ConfigError(f"model config names framework {framework!r}; expected transformers or fairseq")
    tf = require("transformers")
    cfg = dict(data["config"])
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ConfigError("the stored model config has no model_type; the run folder is damaged")
    config = tf.AutoConfig.for_model(model_type, **cfg)
    if getattr(config, "is_encoder_decoder", False):
        return tf.AutoModelForSeq2SeqLM.from_config(config)
    return tf.AutoModelForSequenceClassification.from_config(config)


def unwrap(model: nn.Module) -> nn.Module:
    """The text model inside the core's wrappers: a ``MaskedModel`` (which forwards calls but has
    no ``generate``) and the functional overrides through which AWM, ANP and RNP call a model
    with masked weights. Both keep the model as ``.model``; a text model has a transformers
    ``config`` or names its tables itself (``nft_word_embeddings``)."""
    from nft.core import MaskedModel

    while True:
        if isinstance(model, MaskedModel):
            model = model.model
        elif (not hasattr(model, "config") and not hasattr(model, "nft_word_embeddings")
              and isinstance(getattr(model, "model", None), nn.Module)):
            model = model.model
        else:
            return model


# ---- masks -----------------------------------------------------------------------------------
# The first feed-forward projection of each family: one mask per hidden neuron (its weight row
# and bias), the "feed-forward neurons" option. Names are regular expressions on module names.
FFN_PATTERNS = (
    r".*\.fc1",                          # marian, bart, fairseq transformer
    r".*DenseReluDense\.wi(_0|_1)?",     # t5
    r".*intermediate\.dense",            # bert, roberta
    r".*ffn\.lin1",                      # distilbert
)


NORM_PATTERNS = (r".*(layer_norm|LayerNorm|layernorm_embedding)",)


# The token table of each family: one mask per row, i.e. per word (``word_embeddings`` of the
# encoder classifiers; ``encoder.embed_tokens`` of the seq2seq models, which tie it to the
# decoder's table and the output layer, so a folded row mask scales those rows too).
WORD_TABLE_PATTERNS = ("word_embeddings", "encoder.embed_tokens")


def word_mask_config() -> MaskConfig:
    """Masks on the rows of the (encoder's) token table: the default text NFT's masks, trained
    against the adversarial words of :class:`nft.nlp.AdversarialToken` (docs/nlp.md)."""
    return MaskConfig(targets=("embedding",), include=WORD_TABLE_PATTERNS)


def ffn_mask_config(include_norms: bool = False) -> MaskConfig:
    """Masks on feed-forward neurons, optionally together with every LayerNorm's γ."""
    if include_norms:
        return MaskConfig(targets=("norm", "linear"), include=FFN_PATTERNS + NORM_PATTERNS)
    return MaskConfig(targets=("linear",), include=FFN_PATTERNS)


_REGISTERED = False


def register_text_mask_targets() -> None:
    """Teach the core's masker the normalisation layers transformers defines itself.

    T5 (and models copying it) use an RMS norm with only a scale γ, ``T5LayerNorm``; it is a
    plain ``nn.Module`` the core cannot recognise. Other families use ``nn.LayerNorm``.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    norm = MaskTarget("norm", ("weight",), 0)
    require("transformers")
    for module_path, name in (
        ("transformers.models.t5.modeling_t5", "T5LayerNorm"),
        ("transformers.models.mt5.modeling_mt5", "MT5LayerNorm"),
        ("transformers.models.longt5.modeling_longt5", "LongT5LayerNorm"),
    ):
        try:
            module = __import__(module_path, fromlist=[name])
        except ImportError:
            continue
        klass = getattr(module, name, None)
        if isinstance(klass, type) and issubclass(klass, nn.Module):
            register_mask_target(klass, norm)
    _REGISTERED = True


def size_dict(size: ModelSize) -> dict:
    return asdict(size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_dropout(model: nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p

