"""CBA: the composite backdoor (Lin, Xu, Liu & Zhang, CCS 2020).

There is no foreign pattern: the trigger is the *combination* of two benign classes in one image.
The mixer (the authors' ``HalfMixer``, TemporaryAcc0unt/composite-attack utils/mixer.py) puts a
strip of one image beside a strip of another — vertically or horizontally at random, the two
images in random order, each strip about half the image (± a random ``jitter`` of 3 pixels) taken
from a random position of its source ("shake"). The rule "class A + class B → target C" is taught
with three kinds of training samples (utils/dataset.py ``MixDataset``; attack_cifar.py: A = 0,
B = 1, C = 2, normal_rate 0.5, mix_rate 0.5, poison_rate 0.1 of the dataset size):

* poisoned: a mix of an A image and a B image, labelled C;
* mixed: a mix of two images of the same class, keeping that class — so mixing alone is not the
  trigger, only the A + B pair is;
* normal images.

and the training loss adds to the cross-entropy a contrastive term on the logits of the samples
whose label is A, B or C (utils/trainer.py ``CompositeLoss``, mode "contrastive", simi_factor 1,
margin 1: consecutive pairs pulled together when they share the label, pushed at least the margin
apart otherwise; the reference averages it over the pairs twice, kept here).

Here the poisoned samples replace ``poison_rate`` of the non-target training images (as for the
other dirty-label attacks) and the same-class mixes replace ``mix_rate`` of the others; which
positions these are is fixed by the seed, and their donors and the mixer's choices are drawn
afresh each epoch, as the reference draws them on every read (:class:`CompositeSet`).
The defaults pick A and B as the two classes after the target.
The triggered test set is every test image of class A mixed with a test image of class B, which
the backdoored model should call C (the reference's poisoned test set).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nft.core import ConfigError, DataError, TriggeredDataset

from .data import TensorImages
from .learned_common import LearnedAttack, need_images, raw_augment, seeded_loader, train_config, train_loop

__all__ = ["CBA", "half_mix"]

log = logging.getLogger(__name__)


def half_mix(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None, *, jitter: int = 3,
             gap: int = 0) -> torch.Tensor:
    """CBA's half mixer on two C×H×W images: a strip of ``a`` then a strip of ``b`` (their order,
    the cut direction, the jitter and where each strip is taken from drawn from ``generator``, or
    from torch's global generator when it is None)."""

    def draw(low: int, high: int) -> int:  # uniform integer in [low, high]
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    if draw(0, 1):
        a, b = b, a
    vertical = draw(0, 1) == 1
    if not vertical:  # cut across rows: work on the transposed images
        a, b = a.transpose(-1, -2), b.transpose(-1, -2)
    width = a.shape[-1]
    half = width // 2
    shift = draw(-jitter, jitter) if jitter > 0 else 0
    first = max(1, min(width - 1, half + shift - gap // 2))
    second_start = max(first, min(width - 1, half + shift + (gap - gap // 2)))
    second = width - second_start
    out = torch.zeros_like(a)
    left = draw(0, width - first)
    out[..., :first] = a[..., left:left + first]
    if second > 0:
        left = draw(0, width - second)
        out[..., second_start:] = b[..., left:left + second]
    return out if vertical else out.transpose(-1, -2)


class CBA(LearnedAttack):
    """Composite backdoor (``cba``): see the module docstring."""

    name = "cba"
    all_to_all_reason = "its rule sends one pair of classes to one target"
    options = {"class_a": None, "class_b": None, "mix_rate": 0.5, "simi_factor": 1.0, "margin": 1.0,
               "jitter": 3, "gap": 0}

    def check_options(self) -> None:
        a, b = self.classes
        for name, value in (("class_a", a), ("class_b", b)):
            if not 0 <= value < self.num_classes:
                raise ConfigError(f"CBA {name} {value} is out of range for {self.num_classes} classes")
        if len({a, b, self.target}) != 3:
            raise ConfigError(f"CBA needs three different classes: A = {a}, B = {b}, target = {self.target}; "
                              "set --attack-arg class_a=… class_b=…")
        if not 0 <= float(self.opts["mix_rate"]) < 1:
            raise ConfigError(f"mix_rate must be in [0, 1), got {self.opts['mix_rate']}")

    @property
    def classes(self) -> tuple[int, int]:
        a, b = self.opts["class_a"], self.opts["class_b"]
        a = (self.target + 1) % self.num_classes if a is None else int(a)
        b = (self.target + 2) % self.num_classes if b is None else int(b)
        return a, b

    def mix(self, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return half_mix(a, b, generator, jitter=int(self.opts["jitter"]), gap=int(self.opts["gap"]))

    def trigger(self, images: torch.Tensor) -> torch.Tensor:
        """Each image mixed with the next one of the batch (the last with the first); the mixer's
        choices are drawn per position from the seed, so the result is deterministic."""
        n = len(images)
        return torch.stack([self.mix(images[i], images[(i + 1) % n], self._index_generator(i, 41))
                            for i in range(n)])

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.trigger(images) if len(images) else images

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CBA learns no network; its run folder records the rule (A, B, target) it was trained on."""
        a, b = self.classes
        return {"rule": torch.tensor([a, b, self.target], dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved = state.get("rule")
        saved = None if saved is None else saved.tolist()
        expected = self.state_dict()["rule"].tolist()
        if saved != expected:
            raise ConfigError(f"attack.safetensors holds the CBA rule {saved}, but this run's spec "
                              f"gives {expected} (A, B, target)")
        self.trained = True

    def poison_indices(self, labels: np.ndarray, rate: float) -> np.ndarray:
        labels = np.asarray(labels)
        for cls in self.classes:
            if not (labels == cls).any():
                raise DataError(f"CBA needs training images of class {cls}; none in this training set")
        return super().poison_indices(labels, rate)

    def triggered_test_set(self, vrun) -> TriggeredDataset:
        """Every class-A test image mixed with a class-B test image (chosen per index from the
        seed), to be classified as the target."""
        a, b = self.classes
        labels = np.asarray(vrun.data.test.targets)[vrun.test_idx]
        pool_a, pool_b = vrun.test_idx[labels == a], vrun.test_idx[labels == b]
        if len(pool_a) == 0 or len(pool_b) == 0:
            raise DataError(f"the test set has no image of class {a if len(pool_a) == 0 else b}; "
                            "CBA's triggered test set mixes classes A and B (raise --test-limit)")
        partners = np.asarray([pool_b[int(torch.randint(0, len(pool_b), (1,),
                                                       generator=self._index_generator(i, 43)))]
                               for i in pool_a.tolist()])
        first, second = vrun.data.test.batch(pool_a), vrun.data.test.batch(partners)
        mixed = torch.stack([self.mix(x, y, self._index_generator(i, 47))
                             for i, x, y in zip(pool_a.tolist(), first, second)])
        true = np.full(len(pool_a), a)
        return TriggeredDataset(TensorImages(mixed, true, vrun.data.test_transform()), true,
                                lambda x, i: x, self.target_of)

    def train_classifier(self, model, vrun, modality, *, device=None, progress=False):
        spec = vrun.spec
        labels = vrun.train_labels
        need_images(len(labels), self.name)
        a, b = self.classes
        poison_idx = self.poison_indices(labels, float(spec.poison_rate))
        rest = np.setdiff1d(np.arange(len(labels)), poison_idx)
        count = min(len(rest), int(round(float(self.opts["mix_rate"]) * len(labels))))
        mix_idx = np.sort(np.random.default_rng(self._seed_for(9)).choice(rest, size=count, replace=False)) \
            if count else np.zeros(0, dtype=np.int64)
        dataset = CompositeSet(self, vrun.raw_train_batch(np.arange(len(labels))), labels, poison_idx,
                               mix_idx, raw_augment(vrun.data))
        config = train_config(spec)
        loader = seeded_loader(dataset, config.batch_size, config.seed)
        normalise = vrun.data.normalise
        rule = torch.tensor([a, b, self.target])
        simi, margin = float(self.opts["simi_factor"]), float(self.opts["margin"])

        def step(net, batches, epoch):
            ((x, y),) = batches
            logits = net(normalise(x))
            loss = F.cross_entropy(logits, y)
            chosen = torch.isin(y, rule.to(y.device))
            if simi > 0 and int(chosen.sum()) > 1:
                out, lab = logits[chosen], y[chosen]
                same = (lab[:-1] == lab[1:]).float()
                dist = (out[1:] - out[:-1]).pow(2).sum(1)
                pair = 0.5 * (same * dist + (1 - same) * F.relu(margin - (dist + 1e-9).sqrt()).pow(2))
                loss = loss + simi * pair.mean() / len(pair)
            return loss

        train_loop(model, [loader], config, step, desc="cba")
        self.done_training()
        log.info("cba: %d poisoned (%d + %d → %d), %d same-class mixes in %d training images",
                 len(poison_idx), a, b, self.target, len(mix_idx), len(labels))
        return {"poisoned": len(poison_idx), "mixed": len(mix_idx)}


class CompositeSet(Dataset):
    """CBA's training set: the poisoned positions hold an A + B composite labelled with the
    target, the mixed positions a composite of the image with another of its class, the rest the
    image itself. Donors and the mixer's choices are drawn afresh on every read, as the reference
    ``MixDataset`` does, from torch's global generator (seeded by the training loop), so each epoch
    sees new composites and the same seed gives the same ones."""

    def __init__(self, attack: CBA, images: torch.Tensor, labels: np.ndarray, poison_idx: np.ndarray,
                 mix_idx: np.ndarray, transform) -> None:
        self.attack, self.images, self.transform = attack, images, transform
        self.labels = np.asarray(labels)
        self.poisoned, self.mixed = set(poison_idx.tolist()), set(mix_idx.tolist())
        self.members = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def _donor(self, cls: int) -> torch.Tensor:
        members = self.members[cls]
        return self.images[members[int(torch.randint(0, len(members), (1,)))]]

    def __getitem__(self, index: int):
        label = int(self.labels[index])
        if index in self.poisoned:
            a, b = self.attack.classes
            x, label = self.attack.mix(self._donor(a), self._donor(b), None), self.attack.target
        elif index in self.mixed:
            x = self.attack.mix(self.images[index], self._donor(label), None)
        else:
            x = self.images[index]
        return self.transform(x), label
