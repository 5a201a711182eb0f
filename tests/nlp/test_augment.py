"""Embedding-space MixUp: the core's augmentation contract, the mixing itself, and its hooks
(installed only while purifying, removed afterwards — also when the purification fails)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nft.core import ConfigError, MaskConfig, PurifyConfig, inject_masks, purify
from nft.core.objective import CleanViewDistillation
from nft.core.purify import Purifier
from nft.core.testing import AugmentationContract
from nft.nlp.augment import (
    MIX_KEY,
    AdversarialToken,
    EmbeddingMixUp,
    embedding_mix_hooks,
    hook_count,
    word_embeddings,
)
from nft.nlp.models import ModelSize, build_classifier, build_seq2seq, register_text_mask_targets
from nft.nlp.tasks import ClassificationCollate, Seq2SeqCollate, Seq2SeqTask, TextClassificationTask

register_text_mask_targets()
VOCAB = 30
SIZE = ModelSize(d_model=16, layers=1, heads=2, ffn=16, max_positions=32, dropout=0.0)


def _classification_batch():
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(4, VOCAB, (int(n),), generator=g), int(y))
             for n, y in zip([5, 8, 3, 6], [0, 1, 2, 1])]
    return ClassificationCollate(0)(items)


def _seq2seq_batch():
    g = torch.Generator().manual_seed(1)
    items = [(torch.randint(4, VOCAB, (int(n),), generator=g), torch.randint(4, VOCAB, (int(m),), generator=g))
             for n, m in zip([5, 7, 3, 4], [4, 2, 6, 5])]
    return Seq2SeqCollate(0, 2)(items)


class TestEmbeddingMixUpClassification(AugmentationContract):
    def make_augmentation(self):
        return EmbeddingMixUp(1.0)

    def make_batch(self):
        return _classification_batch()

    def make_task(self):
        return TextClassificationTask()

    def make_model(self):
        torch.manual_seed(0)
        return build_classifier("bert", VOCAB, 3, SIZE)


class TestEmbeddingMixUpSeq2Seq(AugmentationContract):
    def make_augmentation(self):
        return EmbeddingMixUp(0.4)

    def make_batch(self):
        return _seq2seq_batch()

    def make_task(self):
        return Seq2SeqTask()

    def make_model(self):
        torch.manual_seed(0)
        return build_seq2seq("marian", VOCAB, SIZE)


def _mix(inputs, targets, seed=3):
    return EmbeddingMixUp(1.0)(inputs, targets, rng=np.random.default_rng(seed),
                               generator=torch.Generator().manual_seed(seed))


def _first_layer_inputs(model, layer, inputs, hooked):
    seen = []
    grab = layer.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True)
    try:
        if hooked:
            with embedding_mix_hooks(model):
                model(**inputs)
        else:
            model(**{k: v for k, v in inputs.items() if k != MIX_KEY})
    finally:
        grab.remove()
    return seen[0]


@pytest.mark.parametrize("family", ["marian", "t5", "bert"])
def test_mixing_happens_in_embedding_space(family):
    """With the hooks, the first layer receives λ·h(x) + (1−λ)·h(x[π]) where h(x) is what it gets
    unmixed (token embeddings, scaled, plus positions; for BERT the input of the embedding
    LayerNorm): mixing is linear in the embeddings.
    For seq2seq models the decoder's first layer is checked too; the attention mask is the union."""
    torch.manual_seed(0)
    if family == "bert":
        model = build_classifier(family, VOCAB, 3, SIZE).eval()
        inputs, labels = _classification_batch()
        layers = [model.bert.embeddings.LayerNorm]  # BERT normalises the summed embeddings
    else:
        model = build_seq2seq(family, VOCAB, SIZE).eval()
        inputs, labels = _seq2seq_batch()
        inner = model.model if family == "marian" else model
        layers = ([inner.encoder.layers[0], inner.decoder.layers[0]] if family == "marian"
                  else [inner.encoder.block[0], inner.decoder.block[0]])
    mixed = _mix(inputs, labels)
    spec = mixed.inputs[MIX_KEY]
    lam, order = spec.lam, spec.order
    assert 0 < lam < 1 and sorted(order.tolist()) == list(range(len(order)))
    assert torch.equal(mixed.inputs["attention_mask"],
                       torch.maximum(inputs["attention_mask"], inputs["attention_mask"][order]))
    assert mixed.targets[0][1] == lam and torch.equal(mixed.targets[1][0], labels[order])
    assert len(word_embeddings(model)) == (1 if family == "bert" else 2)
    for layer in layers:
        plain = _first_layer_inputs(model, layer, mixed.inputs, hooked=False)
        got = _first_layer_inputs(model, layer, mixed.inputs, hooked=True)
        assert torch.allclose(got, lam * plain + (1 - lam) * plain[order], atol=1e-5)
        assert not torch.allclose(got, plain, atol=1e-3)


def test_hooks_are_removed_after_the_context_and_on_error():
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE)
    before = hook_count(model)
    with embedding_mix_hooks(model):
        assert hook_count(model) == before + 3  # pre-hook, post-hook, one embedding table
        with pytest.raises(ConfigError, match="already installed"):
            with embedding_mix_hooks(model):
                pass
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with embedding_mix_hooks(model):
            raise RuntimeError("boom")
    assert hook_count(model) == before


def test_mixed_batch_without_hooks_is_still_mixed():
    """A defense that does not install the augmentation's hooks (vanilla ft-mixup) still gets
    mixed embeddings: the task installs them for that one call."""
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE).eval()
    inputs, labels = _classification_batch()
    mixed = _mix(inputs, labels)
    task = TextClassificationTask()
    before = hook_count(model)
    out_task = task.forward(model, dict(mixed.inputs))
    assert hook_count(model) == before
    with embedding_mix_hooks(model):
        out_hooked = model(**mixed.inputs).logits
    plain = model(**{k: v for k, v in mixed.inputs.items() if k != MIX_KEY}).logits
    assert torch.allclose(out_task, out_hooked)
    assert not torch.allclose(out_task, plain)


def test_purification_removes_the_hooks():
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE)
    g = torch.Generator().manual_seed(5)
    clean = [(torch.randint(4, VOCAB, (6,), generator=g), i % 3) for i in range(12)]
    before = hook_count(model)
    result = purify(model, clean, PurifyConfig(steps=3, rounds=1, batch_size=4, progress=False),
                    task=TextClassificationTask(), augmentation=EmbeddingMixUp(),
                    collate_fn=ClassificationCollate(0))
    assert hook_count(result.model) == before
    assert type(result.model) is type(model)
    assert len(result.masks) == 3  # one-layer BERT: embedding, attention and output LayerNorms


def test_wrong_batches_are_refused():
    with pytest.raises(ConfigError, match="dict with input_ids"):
        _mix(torch.rand(4, 3), torch.zeros(4))
    with pytest.raises(ConfigError, match="positive"):
        EmbeddingMixUp(0.0)


def test_the_free_adversarial_token_replaces_one_inner_word_embedding_of_the_chosen_texts():
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE)
    inputs, targets = _classification_batch()
    augmentation = EmbeddingMixUp(1.0).with_adversary(prob=1.0, step=0.2, count=1, vocabulary=False)
    assert isinstance(augmentation.adversary, AdversarialToken)
    seen = []
    table = word_embeddings(model)[0]
    with augmentation.hooks(model):
        # δ starts as a row of the model's own table, no longer than its longest row
        rows = table.weight.detach()
        assert torch.isclose(rows, augmentation.adversary.delta.detach()).all(1).any()
        handle = table.register_forward_hook(lambda m, a, out: seen.append(out))
        mixed = augmentation(inputs, targets, rng=np.random.default_rng(0),
                             generator=torch.Generator().manual_seed(0))
        at = mixed.inputs[MIX_KEY].token_at[:, 0]
        lengths = mixed.inputs["attention_mask"].sum(1)  # of the mixed pair: the union of the two
        assert ((at >= 1) & (at <= lengths - 2)).all()  # never the first or last real token
        loss = TextClassificationTask().loss(model(**mixed.inputs).logits, targets)
        handle.remove()
    placed = seen[-1]  # the embedding output after mixing and placing (hooks run in order)
    delta = augmentation.adversary.delta
    for i, position in enumerate(at.tolist()):
        assert torch.allclose(placed[i, position], delta)
        assert not torch.allclose(placed[i, position - 1], delta)
    loss.backward()
    assert delta.grad is not None and delta.grad.norm() > 0
    before = delta.detach().clone()
    augmentation.adversary.ascend()
    assert not torch.equal(before, delta.detach())
    assert delta.norm() <= augmentation.adversary.radius + 1e-5
    assert augmentation.adversary.radius == pytest.approx(float(rows.norm(dim=1).max()))
    assert hook_count(model) == 0


def test_the_vocabulary_tokens_are_the_unseen_words_of_largest_gain_and_train_only_their_row_masks():
    """Vocabulary mode (the default: three words, momentum 0.9, clean rows held): the placed
    tokens are real rows of the *masked* table, so their row masks get the gradient; the clean
    words' row masks get none; each step takes the three unseen words whose linear gain g · e_w
    (g summed over the tokens) is largest; words of the clean batches are never chosen."""
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE)
    inputs, targets = _classification_batch()
    augmentation = EmbeddingMixUp(1.0).with_adversary(prob=1.0, step=0.2)
    token = augmentation.adversary
    assert token.vocabulary and token.count == 3 and token.momentum == 0.9 and token.hold_seen
    masked = inject_masks(model, MaskConfig(targets=("embedding",), include=("word_embeddings",)))
    (name, row_masks), = masked.masks.items()
    assert name.endswith("word_embeddings") and row_masks.shape == (VOCAB,)
    with augmentation.hooks(masked):
        mixed = augmentation(inputs, targets, rng=np.random.default_rng(0),
                             generator=torch.Generator().manual_seed(0))
        assert token.seen == set(torch.unique(inputs["input_ids"]).tolist())
        placed = {int(token.rows[w]) for w in mixed.inputs[MIX_KEY].token_at[:, 1].tolist()}
        loss = TextClassificationTask().loss(masked(**mixed.inputs).logits, targets)
        loss.backward()
        # the only row masks with a gradient: the placed words' (the clean words' are held)
        touched = set(row_masks.grad.nonzero().flatten().tolist())
        assert touched and touched <= placed and not touched & token.seen
        grad = token.delta.grad.sum(dim=0)
        token.ascend()
    table = masked.model.bert.embeddings.word_embeddings.weight.detach()
    gains = grad @ table.T
    unseen = sorted((w for w in range(VOCAB) if w not in token.seen), key=lambda w: -float(gains[w]))
    assert sorted(token.rows.tolist()) == sorted(unseen[:3])
    assert torch.allclose(token.score, gains)  # the first step's score is its own gain
    assert torch.equal(token.delta.detach(), torch.zeros_like(token.delta))  # it only collects gradients
    assert hook_count(masked) == 0
    # leaving the hooks also removes the hold: the clean rows' masks train again
    row_masks.grad = None
    masked(**inputs).logits.sum().backward()
    assert set(row_masks.grad.nonzero().flatten().tolist()) & token.seen


def test_the_word_scores_are_averaged_over_steps_with_the_momentum():
    """One step's gain picks a different word nearly every step; the choice is made on the
    running average ``score = m · score + (1 − m) · gain`` instead."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(VOCAB, 16)
    token = AdversarialToken(prob=1.0, count=2, vocabulary=True, momentum=0.75)
    token.reset(table, torch.Generator().manual_seed(0))
    token.observe(torch.tensor([[0, 1, 2, 3]]))
    g = torch.Generator().manual_seed(2)
    first, second = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    weight = table.weight.detach()
    for grad in (first, second):
        token.delta.grad = grad.clone()
        token.ascend()
    expected = 0.75 * (first.sum(0) @ weight.T) + 0.25 * (second.sum(0) @ weight.T)
    assert torch.allclose(token.score, expected, atol=1e-6)
    ranked = sorted(range(4, VOCAB), key=lambda w: -float(expected[w]))
    assert sorted(token.rows.tolist()) == sorted(ranked[:2])
    with pytest.raises(ConfigError, match="momentum"):
        AdversarialToken(momentum=1.0)
    with pytest.raises(ConfigError, match="lower count"):
        AdversarialToken(count=VOCAB + 1, vocabulary=True).reset(table, torch.Generator())


def test_nft_adv_on_text_moves_the_token_after_each_backward_pass_until_adv_stop():
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE)
    g = torch.Generator().manual_seed(5)
    clean = [(torch.randint(4, VOCAB, (6,), generator=g), i % 3) for i in range(12)]
    config = PurifyConfig.preset("nft-adv", steps=4, rounds=1, batch_size=4, progress=False,
                                 distill_weight=0.0, adv_prob=1.0, adv_stop=0.5)
    ascents, placed = [], []
    ascend, place = AdversarialToken.ascend, AdversarialToken.place

    def counting_ascend(self):
        ascents.append(self.delta.grad is not None)
        ascend(self)

    def counting_place(self, hidden, token_at):
        placed.append(int((token_at[:, 0] >= 0).sum()))
        return place(self, hidden, token_at)

    AdversarialToken.ascend, AdversarialToken.place = counting_ascend, counting_place
    try:
        result = purify(model, clean, config, task=TextClassificationTask(), augmentation=EmbeddingMixUp(),
                        collate_fn=ClassificationCollate(0))
    finally:
        AdversarialToken.ascend, AdversarialToken.place = ascend, place
    # the first half of the steps put the token in every text, and the loop steps it right after
    # each backward pass with that pass's gradient; the second half carry no token, so there is
    # no gradient to step with
    assert placed == [4, 4]
    assert ascents == [True, True, False, False]
    assert hook_count(result.model) == hook_count(model)


def test_the_clean_view_is_the_same_mixture_without_the_token_and_feeds_the_distillation(monkeypatch):
    """NFT's distillation shows the original model the clean view of each batch: for text, the
    same λ and π with no adversarial token. The teacher (outside the student's hooks) gets exactly
    the plain mixture's output, which differs from what the student gets with the token."""
    torch.manual_seed(0)
    model = build_classifier("bert", VOCAB, 3, SIZE).eval()
    teacher = copy.deepcopy(model)
    inputs, targets = _classification_batch()
    task = TextClassificationTask()
    plain = _mix(inputs, targets, seed=4)
    assert plain.clean_inputs is plain.inputs  # no token: the mixture is its own clean view
    augmentation = EmbeddingMixUp(1.0).with_adversary(prob=1.0, step=0.2)
    with augmentation.hooks(model):
        mixed = augmentation(inputs, targets, rng=np.random.default_rng(4),
                             generator=torch.Generator().manual_seed(4))
        with_token = task.forward(model, mixed.inputs)
    clean_spec = mixed.clean_inputs[MIX_KEY]
    assert clean_spec.token_at is None and mixed.inputs[MIX_KEY].token_at is not None
    assert clean_spec == plain.inputs[MIX_KEY]  # same λ and π as the mixture without a token
    teacher_out = task.forward(teacher, mixed.clean_inputs)
    assert torch.allclose(teacher_out, task.forward(teacher, plain.inputs), rtol=0, atol=1e-7)
    # (an untrained model's logits are about 0.01, so the token's effect is small but real)
    assert (teacher_out - with_token).abs().max() > 1e-5
    assert hook_count(teacher) == 0

    # in a purification the term stays on (it used to be dropped for want of a clean view)
    g = torch.Generator().manual_seed(5)
    clean = [(torch.randint(4, VOCAB, (6,), generator=g), i % 3) for i in range(12)]
    config = PurifyConfig.preset("nft-adv", steps=2, rounds=1, batch_size=4, progress=False,
                                 distill_weight=1.0, adv_prob=1.0)
    purifier = Purifier(build_classifier("bert", VOCAB, 3, SIZE), clean, config, task=task,
                        augmentation=EmbeddingMixUp(), collate_fn=ClassificationCollate(0))
    calls = []
    original = CleanViewDistillation.__call__

    def counting(self, student_logits, teacher_inputs):
        calls.append(teacher_inputs[MIX_KEY].token_at)
        return original(self, student_logits, teacher_inputs)

    monkeypatch.setattr(CleanViewDistillation, "__call__", counting)
    purifier.run()
    assert calls == [None, None] and purifier.distillation is not None


def test_texts_too_short_for_an_inner_word_get_no_token_and_bad_settings_are_refused():
    token = AdversarialToken(prob=1.0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    at = token.positions(mask, torch.Generator().manual_seed(0))[:, 0]
    assert at[0] == -1 and at[1] == 1 and 1 <= at[2] <= 2
    with pytest.raises(ConfigError, match="prob in"):
        AdversarialToken(prob=0.0)
    with pytest.raises(ConfigError, match="count"):
        AdversarialToken(count=0)


def test_several_tokens_each_move_along_their_own_gradient_within_the_radius():
    torch.manual_seed(0)
    table = torch.nn.Embedding(VOCAB, 16)
    token = AdversarialToken(prob=1.0, step=0.5, count=3)
    token.reset(table, torch.Generator().manual_seed(0))
    assert token.delta.shape == (3, 16)
    hidden = torch.zeros(4, 6, 16)
    token_at = torch.tensor([[1, 0], [2, 2], [-1, 1], [4, 2]])
    placed = token.place(hidden, token_at)
    assert torch.equal(placed[0, 1], token.delta[0].detach())
    assert torch.equal(placed[1, 2], token.delta[2].detach())
    assert placed[2].abs().sum() == 0 and placed[0, 2].abs().sum() == 0
    direction = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    (token.delta * direction).sum().backward()
    before = token.delta.detach().clone()
    token.ascend()
    moved = token.delta.detach() - before
    for i in range(3):  # each row moves along its own gradient, by the same share of the radius
        cosine = torch.nn.functional.cosine_similarity(moved[i], direction[i], dim=0)
        assert cosine > 0.99 or token.delta[i].norm() == pytest.approx(token.radius, rel=1e-5)
    assert (token.delta.norm(dim=1) <= token.radius * (1 + 1e-5)).all()
