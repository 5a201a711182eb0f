"""Text's input space: a perturbation added to the encoder's word embeddings, for one call."""

from __future__ import annotations

import pytest
import torch

from nft.core import ConfigError
from nft.nlp.augment import hook_count, word_embeddings
from nft.nlp.models import ModelSize, build_classifier, build_seq2seq
from nft.nlp.space import PERTURB_KEY, EmbeddingSpace, perturbation_hook
from nft.nlp.tasks import ClassificationCollate, Seq2SeqCollate, Seq2SeqTask, TextClassificationTask

VOCAB = 30
SIZE = ModelSize(d_model=16, layers=1, heads=2, ffn=16, max_positions=32, dropout=0.0)


def _batch():
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(4, VOCAB, (int(n),), generator=g), int(y)) for n, y in zip([5, 8, 3], [0, 1, 2])]
    return ClassificationCollate(0)(items)


def test_the_perturbation_is_added_to_the_word_embeddings_for_that_call_only():
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE).eval()
    space = EmbeddingSpace.of(model, max_length=12)
    table = word_embeddings(model)[0]
    assert space.shape == (12, 16)
    weight = table.weight.detach()  # one "pixel unit": the span of the table's entries, per coordinate
    assert torch.allclose(space.scale, weight.max(0).values - weight.min(0).values)
    inputs, _ = _batch()
    length = inputs["input_ids"].shape[1]
    delta = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(1))
    task = TextClassificationTask()
    hooks = hook_count(model)
    perturbed = space.perturb(inputs, delta)
    assert PERTURB_KEY not in inputs and space.clamp(perturbed) is perturbed
    with torch.no_grad():
        out = task.forward(model, perturbed)
        embeds = table(inputs["input_ids"]) + delta[:, :length]
        expected = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits
        plain = task.forward(model, inputs)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)
    assert hook_count(model) == hooks  # the hook lived for that call only
    assert space.batch_size(inputs) == 3 and space.sample_shape(inputs) == (12, 16)
    # the gradient reaches δ, which is what I-BAU, AWM and SAU move
    d = torch.zeros(1, 12, 16, requires_grad=True)
    task.forward(model, space.perturb(inputs, d)).sum().backward()
    assert d.grad[:, :length].abs().sum() > 0 and d.grad[:, length:].abs().sum() == 0


def test_only_the_first_use_of_the_table_in_a_call_is_perturbed():
    """Generators may read encoder and decoder tokens through one table: only its first use in
    a call (the encoder's input) carries δ."""

    class TwoReads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(VOCAB, 16)

        def forward(self, ids):
            return self.embed_tokens(ids), self.embed_tokens(ids)

    model = TwoReads()
    ids = torch.tensor([[4, 5, 6]])
    delta = torch.ones(1, 10, 16)
    with torch.no_grad(), perturbation_hook(model, delta):
        first, second = model(ids)
    plain = model.embed_tokens(ids)
    assert torch.allclose(first, plain + 1) and torch.allclose(second, plain)
    assert hook_count(model) == 0


def test_a_generator_trains_its_perturbation_through_the_task():
    torch.manual_seed(0)
    model = build_seq2seq("marian", VOCAB, SIZE).eval()
    space = EmbeddingSpace.of(model, max_length=10)
    g = torch.Generator().manual_seed(2)
    items = [(torch.randint(4, VOCAB, (5,), generator=g), torch.randint(4, VOCAB, (4,), generator=g))
             for _ in range(2)]
    inputs, targets = Seq2SeqCollate(0, 2)(items)
    task = Seq2SeqTask()
    d = torch.zeros(1, 10, 16, requires_grad=True)
    task.loss(task.forward(model, space.perturb(inputs, d)), targets).backward()
    assert d.grad[:, :6].abs().sum() > 0 and hook_count(model) == 0


def test_two_batches_join_with_zero_perturbation_where_none_was_given():
    space = EmbeddingSpace(shape=(12, 16), scale=0.1)
    inputs, _ = _batch()
    delta = torch.full((3, 12, 16), 2.0)
    both = space.concat(inputs, space.perturb(inputs, delta))
    assert both["input_ids"].shape[0] == 6 and space.batch_size(both) == 6
    assert both[PERTURB_KEY][:3].abs().sum() == 0 and torch.equal(both[PERTURB_KEY][3:], delta)
    # perturbing twice adds up
    twice = space.perturb(space.perturb(inputs, delta), delta)
    assert torch.equal(twice[PERTURB_KEY], 2 * delta)


def test_bad_batches_are_refused():
    space = EmbeddingSpace(shape=(4, 16))
    inputs, _ = _batch()
    with pytest.raises(ConfigError, match="longer than"):
        space.sample_shape(inputs)
    with pytest.raises(ConfigError, match="dict batches"):
        space.sample_shape(torch.zeros(3, 4, 16))
