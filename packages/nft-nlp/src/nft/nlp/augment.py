"""MixUp for text, in embedding space, through forward hooks that live only while purifying.

Token ids cannot be averaged, so text is mixed where it becomes continuous: the output of the
word-embedding layers. With λ ~ Beta(α, α) and a batch permutation π,

    e(x̃) = λ·e(x) + (1 − λ)·e(x[π]),   loss = λ·L(y) + (1 − λ)·L(y[π]),

the NFT reference's MixUp, moved to the embeddings as Mixup-Transformer does for text (Sun et
al., COLING 2020, the reference README's pointer for language generation). For encoder-decoder
models the decoder's (teacher-forced) target embeddings are mixed with the same λ and π, so the
decoder sees a mixture of the two targets it is scored against — SeqMix's recipe (Guo, Kim and
Rush, EMNLP 2020). Attention masks are the union of the two inputs' masks.

The augmentation cannot reach inside the model, so it works in two halves:

* ``__call__`` draws λ and π and returns the batch with a ``nft_mix`` entry describing them;
* ``hooks(model)`` is a context manager that installs a forward pre-hook on ``model`` (it takes
  ``nft_mix`` out of the call's keyword arguments and arms the mixing for that one call) and a
  forward hook on each word-embedding module (it mixes the embeddings while armed). Leaving the
  context removes every hook, so the purified model is a plain model again.

A batch carrying ``nft_mix`` that reaches a model without the hooks (a defense that does not
install them) gets them for that call only (see :mod:`nft.nlp.tasks`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nft.core import ConfigError, Mixed
from nft.core.adversary import ascend_within
from nft.core.augment import permute_batch
from nft.core.distributed import union_over_ranks
from nft.core.masking import module_mask

__all__ = ["MIX_KEY", "AdversarialToken", "EmbeddingMixUp", "embedding_mix_hooks", "mixing_active",
           "word_embeddings"]

MIX_KEY = "nft_mix"
_MASK_KEYS = ("attention_mask", "decoder_attention_mask")
_ACTIVE: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True, eq=False)
class MixSpec:
    """One batch's mixing: weight ``lam`` of the batch itself, ``1 − lam`` of ``batch[order]``;
    ``token_at`` (per sample: a position, −1 for none, and which token) places the adversarial token."""

    lam: float
    order: torch.Tensor
    token_at: torch.Tensor | None = None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MixSpec) and self.lam == other.lam
                and torch.equal(self.order.cpu(), other.order.cpu()))

    __hash__ = None  # mutable tensor inside: not hashable

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[0] != self.order.shape[0]:
            raise ConfigError(
                f"embedding MixUp was armed for a batch of {self.order.shape[0]} but the embedding "
                f"layer saw {hidden.shape[0]} rows; mix only full batches"
            )
        return self.lam * hidden + (1.0 - self.lam) * hidden[self.order.to(hidden.device)]


def word_embeddings(model: nn.Module, names: Sequence[str] = ()) -> list[nn.Module]:
    """The modules whose outputs are mixed.

    By default the token-embedding tables: ``nn.Embedding`` modules with one row per vocabulary
    entry (positional and token-type tables are left alone; they are the same for both inputs of
    a mixed pair). ``names`` picks modules by dotted name instead (any module returning a
    ``(batch, length, width)`` tensor: mixing in a hidden layer).
    """
    from .models import unwrap

    inner = unwrap(model)
    named = dict(inner.named_modules())
    if names:
        missing = [n for n in names if n not in named]
        if missing:
            raise ConfigError(f"EmbeddingMixUp modules {missing} are not in {type(inner).__name__}")
        return [named[n] for n in names]
    if hasattr(inner, "nft_word_embeddings"):
        return list(inner.nft_word_embeddings())
    stacks = []
    for getter in ("get_encoder", "get_decoder"):
        try:
            stacks.append(getattr(inner, getter)())
        except (AttributeError, NotImplementedError, TypeError):
            pass
    tables = [getattr(s, "embed_tokens", None) for s in stacks]
    if tables and all(isinstance(t, nn.Embedding) for t in tables):
        # encoder-decoder: the two stacks' own tables (a shared table not called is left alone)
        out: list[nn.Module] = []
        for table in tables:
            if all(table is not seen for seen in out):
                out.append(table)
        return out
    config = getattr(inner, "config", None)
    vocab = getattr(config, "vocab_size", None)
    tables = [m for m in inner.modules() if isinstance(m, nn.Embedding)]
    if vocab is None and tables:
        vocab = max(m.num_embeddings for m in tables)
    found = [m for m in tables if m.num_embeddings == vocab]
    if not found:
        raise ConfigError(
            f"found no token-embedding table in {type(inner).__name__}; pass "
            "EmbeddingMixUp(modules=[...]) with the names of the modules to mix"
        )
    return found


class AdversarialToken:
    """A virtual input word moved up the loss while NFT's masks go down it.

    The text counterpart of the core's universal adversarial pattern (``nft.core.adversary``):
    a word trigger is one embedding that sends any text to the target, so a word put in place
    of a random inner word of a ``prob`` share of each batch's texts and moved up the loss is
    pulled towards the trigger, and the masks learn to ignore it. NFT's loop calls
    :meth:`ascend` right after each backward pass, as it does for the image pattern, with the
    gradient averaged over ranks first. It is made anew each time the hooks are installed (one
    per purification). Two ways to move it:

    * ``vocabulary=True`` (the default of :meth:`EmbeddingMixUp.with_adversary`): the ``count``
      tokens are always real words, looked up through the model's (masked) token table. Each
      step scores every word by its linear loss gain ``g · e_w`` (HotFlip's estimate, the word
      search of Wallace et al.'s universal adversarial triggers, EMNLP 2019; ``g`` summed over
      the tokens), averages the scores over steps with ``momentum``, and takes the ``count``
      best-scoring words. Words the clean batches contain are never candidates: they are
      evidence the model is meant to use, and a rare-word trigger is by construction a word
      clean text does not show. With masks on the token table's rows
      (``MaskConfig(targets=("embedding",))``) a chosen word's own row mask gets the gradient,
      so a trigger word, once found, is silenced alone. ``hold_seen`` keeps the row masks of
      the clean words where they are (their gradient is zeroed from the first batch that shows
      them): one scale per word fits 50 clean texts too easily, and left free the clean loss
      drove common words' masks to 0 (BadNL: "i" to 0.0 at 5 points of accuracy). Why the
      score is averaged and several words are used at once: one step's gain is noisy (a
      different word won nearly every step), and a backdoor may have several trigger words
      (docs/nlp.md). ``step`` is unused. In a distributed run the ranks pool the words they have
      seen at each step, so all exclude and hold the same words (a word first seen on another
      rank in the current step is held there only from the next step).
    * ``vocabulary=False``: free embeddings ``δ``, each started at a random row of the table
      and moved by normalised gradient ascent (``step`` of the table's largest row norm per
      step) within that norm.
    """

    def __init__(self, prob: float = 0.5, step: float = 0.2, count: int = 1, *,
                 vocabulary: bool = False, momentum: float = 0.0, hold_seen: bool = False) -> None:
        if not 0 < prob <= 1 or step <= 0 or count < 1 or not 0 <= momentum < 1:
            raise ConfigError(f"the adversarial token needs prob in (0, 1], step > 0, count ≥ 1 and "
                              f"momentum in [0, 1), got {prob}, {step}, {count}, {momentum}")
        self.prob, self.step, self.count = float(prob), float(step), int(count)
        self.vocabulary, self.momentum, self.hold_seen = bool(vocabulary), float(momentum), bool(hold_seen)
        self.delta: torch.Tensor | None = None
        """The free embeddings, or in vocabulary mode a zero tensor added to the looked-up words
        only to collect their gradient."""
        self.rows: torch.Tensor | None = None
        """Vocabulary mode: the word ids in use, one per token."""
        self.score: torch.Tensor | None = None
        """Vocabulary mode: every word's loss gain, averaged over steps with ``momentum``."""
        self.table: nn.Embedding | None = None
        self.radius = 0.0
        self.seen: set[int] = set()
        """Vocabulary mode: the word ids the clean batches have shown (never chosen)."""
        self.enabled = True
        """Whether the next batches carry the token (NFT's loop clears it after ``adv_stop``)."""
        self._hold: torch.utils.hooks.RemovableHandle | None = None

    def reset(self, table: nn.Embedding, generator: torch.Generator) -> None:
        weight = table.weight.detach()
        if self.vocabulary and self.count > weight.shape[0]:
            raise ConfigError(f"the adversarial token wants {self.count} words at once but the token "
                              f"table has {weight.shape[0]} rows; lower count")
        rows = torch.randint(weight.shape[0], (self.count,), generator=generator)
        self.table, self.seen, self.score = table, set(), None
        self.radius = float(weight.norm(dim=1).max())
        self.release()
        if self.vocabulary:
            self.rows = rows.to(weight.device)
            self.delta = torch.zeros(self.count, weight.shape[1], device=weight.device,
                                     dtype=weight.dtype, requires_grad=True)
            mask = module_mask(table)
            if self.hold_seen and mask is not None and mask.shape[0] == weight.shape[0]:
                self._hold = mask.register_hook(self._without_seen_rows)
        else:
            self.delta = weight[rows].clone().requires_grad_(True)

    def release(self) -> None:
        """Remove the gradient hook that holds the clean words' row masks (the hooks' exit)."""
        if self._hold is not None:
            self._hold.remove()
            self._hold = None

    def _seen_ids(self, size: int, device: torch.device) -> torch.Tensor:
        return torch.tensor(sorted(i for i in self.seen if i < size), dtype=torch.long, device=device)

    def _without_seen_rows(self, grad: torch.Tensor) -> torch.Tensor:
        if not self.seen:
            return grad
        grad = grad.clone()
        grad[self._seen_ids(grad.shape[0], grad.device)] = 0
        return grad

    def observe(self, input_ids: torch.Tensor) -> None:
        """Note the words of a clean batch (vocabulary mode never picks them)."""
        if self.vocabulary:
            self.seen.update(torch.unique(input_ids).tolist())

    def positions(self, attention_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(position, token)`` per text: a position strictly between its first and last real
        token and which of the ``count`` tokens goes there, or −1 for no token."""
        lengths = attention_mask.sum(dim=1).cpu()
        chosen = torch.rand(len(lengths), generator=generator) < self.prob
        offset = (torch.rand(len(lengths), generator=generator) * (lengths - 2).clamp(min=1)).long() + 1
        which = torch.randint(self.count, (len(lengths),), generator=generator)
        at = torch.where(chosen & (lengths >= 3), offset, torch.full_like(offset, -1))
        return torch.stack([at, which], dim=1)

    def ascend(self) -> None:
        """One step up the loss for each token (see the class docstring for the two modes)."""
        if self.delta is None or self.delta.grad is None:
            return
        if self.vocabulary:
            # every rank must exclude (and hold) the same words: the union of what they have seen
            size = self.table.weight.shape[0]
            self.seen = union_over_ranks({i for i in self.seen if i < size}, size, self.delta.device)
            with torch.no_grad():
                gains = self.delta.grad.sum(dim=0) @ self.table.weight.detach().to(self.delta.grad).T
                if self.score is not None:
                    gains = self.momentum * self.score + (1 - self.momentum) * gains
                self.score = gains
                candidates = gains.clone()
                candidates[self._seen_ids(len(candidates), candidates.device)] = -math.inf
                self.rows = candidates.topk(self.count).indices
        else:
            for row, grad in zip(self.delta.detach(), self.delta.grad):
                ascend_within(row, grad, self.step * self.radius, self.radius)
        self.delta.grad = None

    def embeddings(self) -> torch.Tensor:
        """``(count, width)``: the tokens as placed (vocabulary mode: through the live table,
        so its row masks are in the graph)."""
        if self.vocabulary:
            return self.table.weight[self.rows] + self.delta
        return self.delta

    def place(self, hidden: torch.Tensor, token_at: torch.Tensor) -> torch.Tensor:
        """``hidden`` with token ``token_at[i, 1]`` at position ``token_at[i, 0]`` of text i."""
        rows = (token_at[:, 0] >= 0).nonzero().flatten()
        where = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        where[rows.to(hidden.device), token_at[rows, 0].to(hidden.device)] = True
        tokens = self.embeddings()[token_at[:, 1].to(self.delta.device)].to(hidden.dtype)  # (batch, width)
        return torch.where(where.unsqueeze(-1), tokens.unsqueeze(1), hidden)


def mixing_active(model: nn.Module) -> bool:
    """True inside ``hooks(model)``: mixed batches given to ``model`` are mixed."""
    return model in _ACTIVE


@contextmanager
def embedding_mix_hooks(model: nn.Module, names: Sequence[str] = (),
                        adversary: AdversarialToken | None = None) -> Iterator[None]:
    """Install the mixing hooks on ``model`` for the ``with`` block; remove them after, always.

    With an ``adversary``, its token is placed in the first embedding output of each armed call
    (the encoder's input; a decoder's target embeddings come later and are left alone)."""
    if model in _ACTIVE:
        raise ConfigError("embedding MixUp hooks are already installed on this model")
    state: dict = {"mix": None, "placed": False}
    tables = word_embeddings(model, names)
    if adversary is not None:
        if not isinstance(tables[0], nn.Embedding):
            raise ConfigError(
                "the adversarial token needs a token-embedding table (nn.Embedding) to start from")
        adversary.reset(tables[0], torch.Generator().manual_seed(0))

    def arm(module, args, kwargs):
        mix = kwargs.pop(MIX_KEY, None)
        state["mix"], state["placed"] = mix, False
        return args, kwargs

    def disarm(module, args, kwargs, output):
        state["mix"] = None

    def mix_output(module, args, output):
        mix = state["mix"]
        if mix is None or not isinstance(output, torch.Tensor):
            return None
        mixed = mix.apply(output)
        if adversary is not None and mix.token_at is not None and not state["placed"]:
            state["placed"] = True
            mixed = adversary.place(mixed, mix.token_at)
        return mixed

    handles = [model.register_forward_pre_hook(arm, with_kwargs=True),
               model.register_forward_hook(disarm, with_kwargs=True, always_call=True)]
    handles += [m.register_forward_hook(mix_output) for m in tables]
    _ACTIVE.add(model)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if adversary is not None:
            adversary.release()
        _ACTIVE.discard(model)


class EmbeddingMixUp:
    """MixUp of text batches in embedding space (see the module docstring).

    Args:
        alpha: λ ~ Beta(alpha, alpha); the NFT reference code uses 1.
        modules: dotted names of the modules whose outputs are mixed; empty = the token-embedding
            tables (``word_embeddings``).
        adversary: an :class:`AdversarialToken` placed in the mixed texts, or ``None``.
    """

    name = "embedding-mixup"

    def __init__(self, alpha: float = 1.0, modules: Sequence[str] = (),
                 adversary: AdversarialToken | None = None) -> None:
        if not alpha > 0:
            raise ConfigError(f"EmbeddingMixUp alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        self.modules = tuple(modules)
        self.adversary = adversary

    def __call__(self, inputs, targets, *, rng: np.random.Generator, generator: torch.Generator) -> Mixed:
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise ConfigError(
                "EmbeddingMixUp mixes text batches (a dict with input_ids); got "
                f"{type(inputs).__name__}. Use the nlp modality's collate function"
            )
        lam = float(rng.beta(self.alpha, self.alpha))
        batch = inputs["input_ids"].shape[0]
        order = torch.randperm(batch, generator=generator)
        mixed = {k: v for k, v in inputs.items() if k != MIX_KEY}
        for key in _MASK_KEYS:
            if key in mixed and isinstance(mixed[key], torch.Tensor):
                mixed[key] = torch.maximum(mixed[key], mixed[key][order.to(mixed[key].device)])
        token_at = None
        if self.adversary is not None:  # the words of both sides (a shared table serves both)
            for key in ("input_ids", "decoder_input_ids"):
                if isinstance(inputs.get(key), torch.Tensor):
                    self.adversary.observe(inputs[key])
        if self.adversary is not None and self.adversary.enabled:
            mask = mixed.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(inputs["input_ids"])
            token_at = self.adversary.positions(mask, generator)
        order = order.to(inputs["input_ids"].device)
        mixed[MIX_KEY] = MixSpec(lam, order, token_at)
        # the clean view NFT's distillation shows the original model: the same mixture without
        # the adversarial token (no token placed: the batch itself)
        clean = mixed if token_at is None else {**mixed, MIX_KEY: MixSpec(lam, order)}
        return Mixed(mixed, ((targets, lam), (permute_batch(targets, order), 1.0 - lam)), clean_inputs=clean)

    def with_adversary(self, *, prob: float, step: float, count: int = 3, vocabulary: bool = True,
                       momentum: float = 0.9, hold_seen: bool = True) -> EmbeddingMixUp:
        """The same mixing with an :class:`AdversarialToken` (NFT's ``adv_prob`` / ``adv_step``
        for text, whose inputs have no space to add a pattern to): by default three real words
        at a time, chosen on gains averaged with momentum 0.9, with the clean words' row masks
        held. Measured in docs/nlp.md ("The adversarial word")."""
        return EmbeddingMixUp(self.alpha, self.modules,
                              AdversarialToken(prob, step, count, vocabulary=vocabulary,
                                               momentum=momentum, hold_seen=hold_seen))

    def hooks(self, model: nn.Module):
        """Context manager: the mixing hooks on ``model``, removed on exit."""
        return embedding_mix_hooks(model, self.modules, self.adversary)

    def __repr__(self) -> str:
        extra = f", modules={list(self.modules)}" if self.modules else ""
        if self.adversary is not None:
            a = self.adversary
            extra += (f", adversary=AdversarialToken({a.prob}, {a.step}, {a.count}, vocabulary={a.vocabulary}, "
                      f"momentum={a.momentum}, hold_seen={a.hold_seen})")
        return f"EmbeddingMixUp(alpha={self.alpha}{extra})"


def hook_count(model: nn.Module) -> int:
    """Forward (pre-)hooks on ``model`` and its submodules: 0 for a clean model."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
    return total

