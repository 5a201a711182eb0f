"""nft.nlp: NFT for text classifiers and language generators.

>>> from nft.nlp import modality            # what `nft attack --modality nlp` uses
>>> from nft.nlp import EmbeddingMixUp, Seq2SeqTask, TextClassificationTask

transformers, tokenizers and sacrebleu are imported only when a model, tokenizer or metric is
made, so importing this package (and `nft list`) stays fast; fairseq is optional.
"""

from .attacks import AddSent, BadNL, NLGTrigger, contains_phrase, make_attack
from .augment import (
    AdversarialToken,
    EmbeddingMixUp,
    embedding_mix_hooks,
    hook_count,
    word_embeddings,
)
from .data import (
    LabelledTexts,
    TextPairs,
    read_fortunes,
    read_freedict_pairs,
    read_labelled_file,
    read_opensubtitles,
    read_parallel,
    read_sgm,
    read_wmt14,
)
from .metrics import bleu, evaluate_seq2seq, evaluate_text_classification, nlg_asr
from .modality import DATASETS, NLPModality, modality
from .models import (
    CLASSIFIERS,
    SEQ2SEQ,
    ModelSize,
    build_classifier,
    build_seq2seq,
    ffn_mask_config,
    load_local_model,
    register_text_mask_targets,
    word_mask_config,
)
from .space import EmbeddingSpace
from .tasks import ClassificationCollate, Seq2SeqCollate, Seq2SeqTask, TextClassificationTask
from .tokenization import EncodedPairs, EncodedTexts, train_tokenizer
from .training import TextTrainConfig, train_text_model

__all__ = [
    "CLASSIFIERS",
    "DATASETS",
    "SEQ2SEQ",
    "AddSent",
    "AdversarialToken",
    "BadNL",
    "ClassificationCollate",
    "EmbeddingMixUp",
    "EmbeddingSpace",
    "EncodedPairs",
    "EncodedTexts",
    "LabelledTexts",
    "ModelSize",
    "NLGTrigger",
    "NLPModality",
    "Seq2SeqCollate",
    "Seq2SeqTask",
    "TextClassificationTask",
    "TextPairs",
    "TextTrainConfig",
    "bleu",
    "build_classifier",
    "build_seq2seq",
    "contains_phrase",
    "embedding_mix_hooks",
    "evaluate_seq2seq",
    "evaluate_text_classification",
    "ffn_mask_config",
    "word_mask_config",
    "hook_count",
    "load_local_model",
    "make_attack",
    "modality",
    "nlg_asr",
    "read_fortunes",
    "read_freedict_pairs",
    "read_labelled_file",
    "read_opensubtitles",
    "read_parallel",
    "read_sgm",
    "read_wmt14",
    "register_text_mask_targets",
    "train_text_model",
    "train_tokenizer",
    "word_embeddings",
]
