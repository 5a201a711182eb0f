"""The searched adversarial composites: which class pairs the scan keeps and how their halves are
pasted (the loop's use of them: tests/core/test_searches.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nft.core import ClassificationTask, PurifyConfig
from nft.core.adversary import CompositeAdversary, half_composite
from nft.core.defenses.base import InputSpace
from nft.core.errors import ConfigError


SPACE = InputSpace(shape=(1, 16, 16), lower=0.0, upper=1.0)
LEVELS = torch.tensor([0.1, 0.37, 0.63, 0.9])  # each class's brightness


class QuadrantModel(nn.Module):
    """The class whose brightness the top-left quadrant has, so any composite is answered with its
    first image's class; with ``trigger``, a class-0 quadrant diagonal to a class-3 one is class 1
    (a composite backdoor on the pair {0, 3}, in either order and cut)."""

    def __init__(self, trigger: bool) -> None:
        super().__init__()
        self.trigger = trigger

    def forward(self, x):
        top_left, bottom_right = x[:, 0, :8, :8].mean(dim=(1, 2)), x[:, 0, 8:, 8:].mean(dim=(1, 2))
        logits = -40 * (top_left[:, None] - LEVELS[None]).abs()
        if self.trigger:
            diagonal = ((top_left < 0.2) & (bottom_right > 0.8)) | ((top_left > 0.8) & (bottom_right < 0.2))
            fired = diagonal.float()
            logits = logits + 100 * fired[:, None] * torch.nn.functional.one_hot(torch.tensor(1), 4)
        return logits


def _images(per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4 * per_class) % 4
    noise = 0.04 * torch.rand(len(labels), 1, 16, 16, generator=generator) - 0.02
    return LEVELS[labels].view(-1, 1, 1, 1) + noise, labels


def test_the_half_composite_keeps_each_half_in_its_place():
    first, second = torch.zeros(2, 1, 4, 6), torch.ones(2, 1, 4, 6)
    side = half_composite(first, second, vertical=True)
    assert torch.equal(side[..., :3], first[..., :3]) and torch.equal(side[..., 3:], second[..., 3:])
    stacked = half_composite(first, second, vertical=False)
    assert torch.equal(stacked[..., :2, :], first[..., :2, :])
    assert torch.equal(stacked[..., 2:, :], second[..., 2:, :])


def test_the_scan_keeps_the_trigger_pair_and_only_it():
    images, labels = _images()
    task = ClassificationTask()
    assert bool((task.predict(QuadrantModel(trigger=True)(images)) == labels).all())  # clean images right
    composites = CompositeAdversary(SPACE, prob=0.5, share=0.8, ratio=3.0, count=4)
    assert not composites.searched
    composites.search(QuadrantModel(trigger=True), task, images, labels, torch.Generator())
    assert composites.searched and composites.active
    assert composites.pairs == [(0, 3, 1)] and composites.scores == [1.0] and composites.typical == 0.0
    assert composites.images.shape == (1, 2, 8, 1, 16, 16)  # the pair's images of both classes
    assert torch.allclose(composites.images.mean(dim=(2, 3, 4, 5))[0], LEVELS[[0, 3]], atol=0.01)
    assert composites.summary()["adv_composites"] == [[0, 3, 1, 1.0]]

    clean = CompositeAdversary(SPACE, prob=0.5, share=0.8)
    clean.search(QuadrantModel(trigger=False), task, images, labels, torch.Generator())
    assert clean.searched and not clean.active
    assert clean.perturb(images, torch.Generator().manual_seed(0)) is images


def test_a_third_class_that_every_composite_gets_is_no_trigger_under_the_ratio_rule():
    """A model that answers every two-class composite with class 2 (a natural response, not one
    pair's): every pair without class 2 passes the share bar, and the ratio to the median pair
    keeps none."""

    class AnyMixIsTwo(nn.Module):
        def forward(self, x):
            top_left, bottom_right = x[:, 0, :8, :8].mean(dim=(1, 2)), x[:, 0, 8:, 8:].mean(dim=(1, 2))
            logits = -40 * (top_left[:, None] - LEVELS[None]).abs()
            mixed = ((top_left - bottom_right).abs() > 0.1).float()
            return logits + 100 * mixed[:, None] * torch.nn.functional.one_hot(torch.tensor(2), 4)

    images, labels = _images()
    by_share = CompositeAdversary(SPACE, prob=0.5, share=0.8, ratio=1.0, count=100)
    by_share.search(AnyMixIsTwo(), ClassificationTask(), images, labels, torch.Generator())
    assert sorted(by_share.pairs) == [(0, 1, 2), (0, 3, 2), (1, 3, 2)]
    by_ratio = CompositeAdversary(SPACE, prob=0.5, share=0.8, ratio=3.0, count=100)
    by_ratio.search(AnyMixIsTwo(), ClassificationTask(), images, labels, torch.Generator())
    assert by_ratio.typical == 0.5 and by_ratio.pairs == []  # three of the six pairs pass the share bar


def test_pasting_replaces_one_half_of_the_chosen_samples_with_a_kept_image_and_follows_the_generator():
    images, labels = _images()
    composites = CompositeAdversary(SPACE, prob=0.5, share=0.8)
    composites.search(QuadrantModel(trigger=True), ClassificationTask(), images, labels, torch.Generator())
    inputs = torch.full((64, 1, 16, 16), 0.5)
    out = composites.perturb(inputs, torch.Generator().manual_seed(0))
    changed = (out != inputs).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    for sample in out[changed]:
        halves = [sample[..., :8], sample[..., 8:], sample[..., :8, :], sample[..., 8:, :]]
        kept = [bool((half == 0.5).all()) for half in halves]
        assert sum(kept) == 1  # exactly one half of the sample is its own
        pasted = float(sample[sample != 0.5].mean())
        assert abs(pasted - 0.1) < 0.03 or abs(pasted - 0.9) < 0.03  # from the pair's class 0 or 3
    assert torch.equal(out, composites.perturb(inputs, torch.Generator().manual_seed(0)))


def test_bad_settings_and_unsearched_use_are_refused():
    with pytest.raises(ConfigError, match="share of samples must be in"):
        CompositeAdversary(SPACE, prob=0.0, share=0.8)
    with pytest.raises(ConfigError, match="ratio ≥ 1"):
        CompositeAdversary(SPACE, prob=0.5, share=0.8, ratio=0.5)
    with pytest.raises(ConfigError, match="two spatial dimensions.*adv_composite_prob=0"):
        CompositeAdversary(InputSpace(shape=(16,)), prob=0.5, share=0.8)
    with pytest.raises(ConfigError, match="not searched yet"):
        CompositeAdversary(SPACE, prob=0.5, share=0.8).perturb(torch.zeros(2, 1, 16, 16), torch.Generator())
    with pytest.raises(ConfigError, match="one class label per sample"):
        CompositeAdversary(SPACE, prob=0.5, share=0.8).search(
            QuadrantModel(True), ClassificationTask(), torch.zeros(2, 1, 16, 16), [{"boxes": None}] * 2,
            torch.Generator())
    images, labels = _images(per_class=2)
    with pytest.raises(ConfigError, match="8 clean samples of at least two classes"):
        CompositeAdversary(SPACE, prob=0.5, share=0.8).search(
            QuadrantModel(True), ClassificationTask(), images, labels, torch.Generator())
    for field, value in (("adv_composite_prob", 2.0), ("adv_composite_share", 0.0)):
        with pytest.raises(ConfigError, match=f"{field} must be in"):
            PurifyConfig(**{field: value})
    with pytest.raises(ConfigError, match="adv_composite_ratio must be ≥ 1"):
        PurifyConfig(adv_composite_ratio=0.9)
