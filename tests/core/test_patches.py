"""The searched adversarial patches: where the search puts them, how they are stamped, and that
the gradient is clipped only while they are (the loop's search-once and resume:
tests/core/test_searches.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nft.core import ClassificationTask, PurifyConfig
from nft.core.adversary import PatchAdversary, patch_positions
from nft.core.defenses.base import InputSpace
from nft.core.errors import ConfigError
from nft.core.purify import Purifier

from .toy_models import CNNBatchNorm

SPACE = InputSpace(shape=(1, 10, 10), lower=-1.0, upper=2.0)


class CornerTrigger(nn.Module):
    """Class 1 whenever the bottom-right 2 × 2 corner is bright, else class 0 (a corner trigger
    that nothing else in the image can imitate)."""

    def forward(self, x):
        corner = x[:, 0, -2:, -2:].mean(dim=(1, 2))
        return torch.stack([x.mean(dim=(1, 2, 3)), 20 * corner], dim=1)


def test_positions_cover_the_axis_and_always_include_the_far_edge():
    assert patch_positions(10, 3, 2) == [0, 2, 4, 6, 7]
    assert patch_positions(28, 3, 2)[-2:] == [24, 25]
    assert patch_positions(4, 4, 3) == [0]


def test_the_search_finds_the_trigger_corner_and_keeps_contents_within_bounds():
    images = torch.rand(32, 1, 10, 10, generator=torch.Generator().manual_seed(0)) * 0.1
    labels = torch.zeros(32, dtype=torch.long)
    patches = PatchAdversary(SPACE, prob=0.5, size=0.3, count=3, ratio=4.0)
    assert patches.side == 3 and not patches.searched
    patches.search(CornerTrigger(), ClassificationTask(), images, labels, torch.Generator().manual_seed(0))
    assert len(patches.boxes) == 3 and patches.scores[-1] >= 4.0 * patches.typical
    assert patches.boxes[0] == (7, 7)  # the box over the whole 2 × 2 trigger
    assert all(top >= 6 and left >= 6 for top, left in patches.boxes)  # every kept box touches it
    assert patches.scores == sorted(patches.scores, reverse=True) and patches.scores[0] > 10
    assert patches.contents.shape == (3, 1, 3, 3)
    assert patches.contents.min() >= -1.0 and patches.contents.max() <= 2.0
    # the trigger's pixels climbed from random starts (mean 0.5) towards the upper bound
    assert patches.contents[0, 0, 1:, 1:].mean() > 1.2


def test_without_a_box_that_stands_out_nothing_is_kept_or_stamped():
    """A model no patch can fool (its answer is the image mean): every box does about as much
    as the median one, so none is kept and the batches pass unchanged."""

    class MeanOnly(nn.Module):
        def forward(self, x):
            mean = x.mean(dim=(1, 2, 3))
            return torch.stack([mean, -mean], dim=1)

    images = torch.rand(32, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    patches = PatchAdversary(SPACE, prob=1.0, size=0.3, count=3, ratio=4.0)
    patches.search(MeanOnly(), ClassificationTask(), images, torch.zeros(32, dtype=torch.long),
                   torch.Generator().manual_seed(0))
    assert patches.searched and patches.boxes == [] and patches.typical > 0
    assert patches.perturb(images, torch.Generator().manual_seed(0)) is images
    assert patches.summary()["adv_patches"] == []


def test_stamping_changes_only_the_chosen_samples_and_follows_the_generator():
    patches = PatchAdversary(SPACE, prob=0.5, size=0.2, count=2)
    patches.boxes, patches.scores = [(0, 0), (8, 8)], [3.0, 2.0]
    patches.contents = torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), -1.0)])
    inputs = torch.zeros(64, 1, 10, 10)
    out = patches.perturb(inputs, torch.Generator().manual_seed(0))
    changed = (out != inputs).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    for sample in out[changed]:
        first = torch.equal(sample[0, :2, :2], torch.full((2, 2), 2.0))
        second = torch.equal(sample[0, 8:, 8:], torch.full((2, 2), -1.0))
        assert first != second  # exactly one patch per stamped sample
        assert int((sample != 0).sum()) == 4  # and nothing else changed
    assert torch.equal(out, patches.perturb(inputs, torch.Generator().manual_seed(0)))
    assert patches.summary()["adv_patches"] == [[0, 0, 3.0], [8, 8, 2.0]]


def test_bad_settings_and_unsearched_use_are_refused():
    with pytest.raises(ConfigError, match="share must be in"):
        PatchAdversary(SPACE, prob=0.0, size=0.1, count=1)
    with pytest.raises(ConfigError, match="0 < size < 1"):
        PatchAdversary(SPACE, prob=0.5, size=1.5, count=1)
    with pytest.raises(ConfigError, match="two spatial dimensions.*adv_patch_prob=0"):
        PatchAdversary(InputSpace(shape=(16,)), prob=0.5, size=0.1, count=1)
    with pytest.raises(ConfigError, match="not searched yet"):
        PatchAdversary(SPACE, prob=0.5, size=0.1, count=1).perturb(torch.zeros(2, 1, 10, 10),
                                                                    torch.Generator())
    with pytest.raises(ConfigError, match="adv_patch_prob must be in"):
        PurifyConfig(adv_patch_prob=2.0)
    with pytest.raises(ConfigError, match="adv_patch_ratio must be"):
        PurifyConfig(adv_patch_ratio=0.5)


def test_the_mask_gradient_is_clipped_only_while_patches_are_stamped():
    data = TensorDataset(torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(30) % 4)
    space = InputSpace(shape=(3, 8, 8), lower=-3.0, upper=3.0)

    def first_step(ratio: float) -> float:
        torch.manual_seed(0)
        config = PurifyConfig(steps=1, rounds=1, batch_size=8, lr=1.0, momentum=0.0, adv_patch_prob=1.0,
                              adv_patch_size=0.25, adv_patch_ratio=ratio, adv_patch_clip=1e-4,
                              distill_weight=0.0, pattern_prob=0.0, mixup_alpha=0.0, clamp=False, device="cpu")
        purifier = Purifier(CNNBatchNorm(), data, config, input_space=space)
        purifier.step()
        return max(float((m.detach() - 1).abs().max()) for m in purifier.masked.mask_parameters())

    assert first_step(1.0) <= 1e-4 + 1e-7  # a box kept (any box passes ratio 1): stamped, clipped
    assert first_step(1e6) > 1e-3  # no box stands out that far: nothing stamped, not clipped
