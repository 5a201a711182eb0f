"""An optional adapter that makes a fairseq transformer look like the transformers seq2seq models.

The NLG-backdoor paper's models are fairseq transformers (``--arch transformer_wmt_en_de
--share-all-embeddings``; ShannonAI/backdoor_nlg, scripts/wmt14/train_and_eval_attack). fairseq
0.12.2, the last release, does not import on Python 3.11 (a dataclass default error); the
third-party ``fairseq-fixed`` fork does. fairseq is therefore optional: it is imported only when
a ``fairseq-transformer`` model is built, and the adapter is tested only where it imports.

The adapter gives the rest of the package the calls it uses on every model:

* ``forward(input_ids, attention_mask, decoder_input_ids)`` → ``(batch, length, vocab)`` logits
  (fairseq's ``prev_output_tokens`` start with end-of-sentence, so ``decoder_start_token_id`` is
  the EOS id, and the collate function reads it from the adapter);
* ``generate(input_ids, attention_mask, num_beams, max_new_tokens, length_penalty)`` with
  fairseq's ``SequenceGenerator`` (beam search);
* ``nft_config()`` / ``from_nft_config()`` to rebuild the architecture from a run folder, and
  ``nft_word_embeddings()`` for embedding MixUp.

The fairseq dictionary is built so that its ids equal the tokenizer's (pad 0, unk 1, bos 2,
eos 3, then the vocabulary), so token ids pass through unchanged.
"""

from __future__ import annotations

from argparse import Namespace
from types import SimpleNamespace

import torch
from torch import nn

from ._deps import require
from .models import BOS, EOS, PAD, UNK, ModelSize

__all__ = ["FairseqSeq2Seq"]


def _dictionary(vocab_size: int):
    data = require("fairseq.data")
    d = data.Dictionary()
    d.symbols, d.count, d.indices = [], [], {}
    for i in range(vocab_size):
        d.add_symbol(f"<{i}>")
    d.pad_index, d.unk_index, d.bos_index, d.eos_index = PAD, UNK, BOS, EOS
    d.nspecial = 4
    return d


class FairseqSeq2Seq(nn.Module):
    """A fairseq ``TransformerModel`` behind the transformers-style calls this package makes."""

    nft_kind = "seq2seq"

    def __init__(self, model: nn.Module, dictionary, args: dict) -> None:
        super().__init__()
        self.model = model
        self.dictionary = dictionary
        self.args = dict(args)
        self.decoder_start_token_id = dictionary.eos()

    @classmethod
    def build(cls, vocab_size: int, size: ModelSize = ModelSize()) -> FairseqSeq2Seq:
        args = {
            "encoder_embed_dim": size.d_model, "decoder_embed_dim": size.d_model,
            "encoder_ffn_embed_dim": size.ffn, "decoder_ffn_embed_dim": size.ffn,
            "encoder_layers": size.layers, "decoder_layers": size.layers,
            "encoder_attention_heads": size.heads, "decoder_attention_heads": size.heads,
            "dropout": size.dropout, "attention_dropout": 0.0, "activation_dropout": 0.0,
            "share_all_embeddings": True, "max_source_positions": size.max_positions,
            "max_target_positions": size.max_positions,
        }
        return cls.from_nft_config({"framework": "fairseq", "args": args, "vocab_size": vocab_size})

    @classmethod
    def from_nft_config(cls, data: dict) -> FairseqSeq2Seq:
        transformer = require("fairseq.models.transformer")
        dictionary = _dictionary(int(data["vocab_size"]))
        namespace = Namespace(**data["args"])
        transformer.base_architecture(namespace)
        task = SimpleNamespace(source_dictionary=dictionary, target_dictionary=dictionary)
        model = transformer.TransformerModel.build_model(namespace, task)
        return cls(model, dictionary, data["args"])

    def nft_config(self) -> dict:
        return {"framework": "fairseq", "args": self.args, "vocab_size": len(self.dictionary)}

    def nft_word_embeddings(self) -> list[nn.Module]:
        tables = [self.model.encoder.embed_tokens, self.model.decoder.embed_tokens]
        out: list[nn.Module] = []
        for table in tables:  # shared embeddings are one module; hook it once
            if all(table is not seen for seen in out):
                out.append(table)
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, **_) -> torch.Tensor:
        if decoder_input_ids is None:
            raise ValueError("the fairseq adapter needs decoder_input_ids for a forward pass; use generate()")
        mask = attention_mask if attention_mask is not None else (input_ids != PAD).long()
        logits, _ = self.model(src_tokens=input_ids, src_lengths=mask.sum(dim=1),
                               prev_output_tokens=decoder_input_ids)
        return logits

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 num_beams: int = 5, max_new_tokens: int = 64, length_penalty: float = 1.0, **_) -> torch.Tensor:
        sequence_generator = require("fairseq.sequence_generator")
        generator = sequence_generator.SequenceGenerator(
            [self.model], self.dictionary, beam_size=num_beams, max_len_a=0, max_len_b=max_new_tokens,
            len_penalty=length_penalty,
        )
        mask = attention_mask if attention_mask is not None else (input_ids != PAD).long()
        sample = {"net_input": {"src_tokens": input_ids, "src_lengths": mask.sum(dim=1)}}
        hypotheses = generator.generate([self.model], sample)
        best = [h[0]["tokens"] for h in hypotheses]
        out = torch.full((len(best), max((len(t) for t in best), default=1)), PAD, dtype=torch.long)
        for i, tokens in enumerate(best):
            out[i, : len(tokens)] = tokens
        return out
