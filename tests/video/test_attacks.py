"""Triggers and poisoning of the three video attacks (no training here; see test_end_to_end)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nft.core import ConfigError, PoisonedDataset
from nft.video import ClipTrigger, badnets_trigger, blend_trigger
from nft.video.attacks import CleanLabelConfig, learn_patch_trigger, perturb_videos


def _clips(n=4, frames=8, size=16, seed=0):
    return torch.rand(n, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_badnets_patch_on_every_frame_or_a_range():
    x = _clips()
    trigger = badnets_trigger(8, 16, patch_size=3)
    y = trigger(x)
    changed = (y != x).any(dim=1).any(dim=0)  # (T, H, W)
    assert changed[:, -3:, -3:].all() and not changed[:, :-3, :].any() and not changed[:, :, :-3].any()
    corner = y[0, :, 0, -3:, -3:]
    assert set(corner.unique().tolist()) == {0.0, 1.0}  # black and white checkerboard
    assert torch.equal(corner[:, 0, 0], torch.ones(3)) and torch.equal(corner[:, 0, 1], torch.zeros(3))
    ranged = badnets_trigger(8, 16, patch_size=3, frame_range=[2, 5])(x)
    frames_changed = (ranged != x).flatten(3).any(-1).any(1).any(0)
    assert frames_changed.tolist() == [False, False, True, True, True, False, False, False]
    with pytest.raises(ConfigError, match="frame range"):
        badnets_trigger(8, 16, frame_range=[4, 12])
    with pytest.raises(ConfigError, match="patch size"):
        badnets_trigger(8, 16, patch_size=20)


def test_blend_is_a_temporal_noise_blend():
    x = _clips()
    trigger = blend_trigger(8, 16, alpha=0.2, seed=0)
    y = trigger(x)
    torch.testing.assert_close(y, 0.8 * x + 0.2 * trigger.pattern)
    assert not torch.equal(trigger.pattern[:, 0], trigger.pattern[:, 1])  # changes over time
    assert torch.equal(blend_trigger(8, 16, seed=0).pattern, trigger.pattern)  # seeded
    assert not torch.equal(blend_trigger(8, 16, seed=1).pattern, trigger.pattern)
    assert 0 <= y.min() and y.max() <= 1
    with pytest.raises(ConfigError, match="alpha"):
        blend_trigger(8, 16, alpha=0)


def test_trigger_round_trip_and_shape_check(tmp_path):
    from nft.core import load_tensors, save_tensors

    trigger = badnets_trigger(8, 16, patch_size=4)
    save_tensors(trigger.state_dict(), tmp_path / "trigger.safetensors")
    back = ClipTrigger.from_state_dict(load_tensors(tmp_path / "trigger.safetensors"))
    x = _clips()
    assert torch.equal(back(x), trigger(x))
    with pytest.raises(ConfigError, match="made for clips"):
        trigger(_clips(frames=4))
    with pytest.raises(ConfigError, match="lacks"):
        ClipTrigger.from_state_dict({"pattern": trigger.pattern})


class _Corner(nn.Module):
    """A fixed 'clean model' whose class-1 logit grows with the brightness of the bottom-right
    corner: a universal patch can make every clip class 1."""

    def forward(self, x):
        corner = x[:, :, :, -4:, -4:].mean(dim=(1, 2, 3, 4))
        rest = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([rest + 0.4, 4 * corner - 2.5, 0.3 + 0 * rest], 1)


def test_clean_label_trigger_is_learned_towards_the_target():
    clips = _clips(n=20, seed=2) * 0.6
    model = _Corner()
    trigger = learn_patch_trigger(model, lambda i: clips[i], len(clips), target=1, frames=8, size=16,
                                  config=CleanLabelConfig(patch_size=4, trigger_steps=30,
                                                          trigger_batch=8), seed=0)
    assert trigger.mask.sum() == 8 * 4 * 4  # a 4×4 patch on every frame
    assert 0 <= trigger.pattern.min() and trigger.pattern.max() <= 1
    grey = ClipTrigger(torch.full_like(trigger.pattern, 0.5), trigger.mask)
    with torch.no_grad():
        hit = (model(trigger(clips)).argmax(1) == 1).float().mean()
        base = (model(grey(clips)).argmax(1) == 1).float().mean()
    assert base < 0.5 and hit == 1.0


def test_clean_label_perturbation_stays_in_budget_and_hurts_the_true_class():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8 * 8, 3))
    videos = [torch.randint(0, 256, (12, 8, 8, 3), dtype=torch.uint8) for _ in range(3)]
    config = CleanLabelConfig(epsilon=8 / 255, perturb_steps=10, perturb_step_size=1 / 255)
    starts = lambda n: [0, 2, 4]  # noqa: E731
    out = perturb_videos(model, videos, [0, 1, 2], clip_starts=starts, frames=8, config=config)
    for before, after, label in zip(videos, out, [0, 1, 2]):
        assert after.dtype == torch.uint8 and after.shape == before.shape
        assert (after.int() - before.int()).abs().max() <= 8
        clips = lambda v: torch.stack([v.permute(3, 0, 1, 2).float()[:, s:s + 8] / 255 for s in starts(12)])  # noqa: E731
        with torch.no_grad():
            loss_before = nn.functional.cross_entropy(model(clips(before)), torch.full((3,), label))
            loss_after = nn.functional.cross_entropy(model(clips(after)), torch.full((3,), label))
        assert loss_after > loss_before


def test_poisoned_sets_keep_or_flip_labels():
    base = [(c, int(y)) for c, y in zip(_clips(n=6), [0, 1, 2, 0, 1, 2])]
    trigger = badnets_trigger(8, 16, patch_size=3)
    dirty = PoisonedDataset(base, [1, 2], lambda x, y, i: (trigger(x), 0))
    clean_label = PoisonedDataset(base, [0, 3], lambda x, y, i: (trigger(x), y))
    assert [dirty[i][1] for i in range(6)] == [0, 0, 0, 0, 1, 2]
    assert [clean_label[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert torch.equal(dirty[1][0], trigger(base[1][0])) and torch.equal(dirty[4][0], base[4][0])
    assert np.array_equal(clean_label.poison_indices, [0, 3])
