"""Clip MixUp and VideoMix: the core's augmentation contract plus what makes each one itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nft.core import ConfigError, mixed_loss
from nft.core.testing import AugmentationContract
from nft.video import ClipMixUp, VideoMix, build_model
from nft.video.augment import PatternNoise


def _batch():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(6, 3, 8, 16, 16, generator=gen), torch.tensor([0, 1, 2, 3, 4, 0])


class _Clips(AugmentationContract):
    def make_batch(self):
        return _batch()

    def make_model(self):
        return build_model("r3d-18", 5, frames=8, size=16, width=2).eval()


class TestClipMixUp(_Clips):
    def make_augmentation(self):
        return ClipMixUp(1.0)


class TestVideoMixSpatioTemporal(_Clips):
    def make_augmentation(self):
        return VideoMix(1.0, "spatio-temporal")


class TestVideoMixSpatial(_Clips):
    def make_augmentation(self):
        return VideoMix(1.0, "spatial")


class TestVideoMixTemporal(_Clips):
    def make_augmentation(self):
        return VideoMix(1.0, "temporal")


class TestPatternNoise(_Clips):
    def make_augmentation(self):
        return PatternNoise(ClipMixUp(1.0), patch_prob=1.0, blend_prob=0.5)


def test_pattern_noise_adds_patterns_and_keeps_labels():
    x, y = _batch()
    aug = PatternNoise(ClipMixUp(1.0), patch_prob=1.0, blend_prob=0.0, max_patch=0.25)
    base = ClipMixUp(1.0)(x, y, rng=np.random.default_rng(2), generator=torch.Generator().manual_seed(2))
    mixed = aug(x, y, rng=np.random.default_rng(2), generator=torch.Generator().manual_seed(2))
    assert [w for _, w in mixed.targets] == [w for _, w in base.targets]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(mixed.targets, base.targets))
    # the clean view NFT's distillation shows the original model is the mix without patterns
    assert torch.equal(mixed.clean_inputs, base.inputs) and torch.equal(base.clean_inputs, base.inputs)
    changed = (mixed.inputs != base.inputs).any(dim=1).any(dim=1)  # (B, H, W)
    for i in range(len(x)):
        idx = changed[i].nonzero()
        assert len(idx) > 0, "every clip gets a patch when patch_prob = 1"
        side = idx.max(0).values - idx.min(0).values + 1
        assert int(side.max()) <= 4  # at most a quarter of the 16-px frame
    assert 0 <= mixed.inputs.min() and mixed.inputs.max() <= 1
    with pytest.raises(ConfigError, match="patch_prob"):
        PatternNoise(patch_prob=2.0)


def _mix(aug, seed):
    x, y = _batch()
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    lam = np.random.default_rng(seed).beta(1.0, 1.0)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
    return x, y, aug(x, y, rng=rng, generator=gen), lam, order


def test_clip_mixup_uses_one_lambda_for_every_frame():
    x, y, mixed, lam, order = _mix(ClipMixUp(1.0), 4)
    torch.testing.assert_close(mixed.inputs, lam * x + (1 - lam) * x[order])
    (t1, w1), (t2, w2) = mixed.targets
    assert torch.equal(t1, y) and torch.equal(t2, y[order]) and w1 == pytest.approx(lam)
    # the per-frame mixing weight is the same on every frame of every clip
    other = x[order]
    for f in range(8):
        frame_lam = ((mixed.inputs[:, :, f] - other[:, :, f]) / (x[:, :, f] - other[:, :, f] + 1e-12))
        valid = (x[:, :, f] - other[:, :, f]).abs() > 1e-2
        torch.testing.assert_close(frame_lam[valid], torch.full_like(frame_lam[valid], lam), atol=1e-3,
                                   rtol=1e-3)


@pytest.mark.parametrize("mode", ["spatial", "temporal", "spatio-temporal"])
def test_videomix_pastes_a_cuboid_and_weighs_by_volume(mode):
    for seed in range(6):
        x, y, mixed, _, order = _mix(VideoMix(1.0, mode), seed)
        assert mixed.clean_inputs is mixed.inputs  # no pattern is added: the mix is its own clean view
        other = x[order]
        region = (mixed.inputs != x).any(dim=1).any(dim=0)  # (T, H, W) voxels taken from others
        (_, w_self), (t_other, w_other) = mixed.targets
        assert torch.equal(t_other, y[order]) and w_self + w_other == pytest.approx(1.0)
        idx = region.nonzero()
        if len(idx) == 0:
            assert w_other == pytest.approx(0.0, abs=1e-9)
            continue
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        box = torch.zeros_like(region)
        box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        assert torch.equal(region, box), "the pasted region is not a cuboid"
        inside = mixed.inputs[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        assert torch.equal(inside, other[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        assert w_other == pytest.approx(float(box.float().mean()))
        if mode == "spatial":
            assert (int(lo[0]), int(hi[0])) == (0, 8)  # every frame
        if mode == "temporal":
            assert [int(v) for v in (lo[1], hi[1], lo[2], hi[2])] == [0, 16, 0, 16]  # whole frames


def test_mixed_loss_trains_a_video_model():
    model = build_model("r3d-18", 5, frames=8, size=16, width=2)
    x, y = _batch()
    mixed = VideoMix()(x, y, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0))
    from nft.core import ClassificationTask

    loss = mixed_loss(ClassificationTask(), model(mixed.inputs), mixed)
    loss.backward()
    assert torch.isfinite(loss) and model.fc.weight.grad.abs().sum() > 0


def test_bad_inputs_and_options():
    rng, gen = np.random.default_rng(0), torch.Generator()
    with pytest.raises(ConfigError, match=r"\(B, C, T, H, W\)"):
        ClipMixUp()(torch.rand(4, 3, 16, 16), torch.zeros(4), rng=rng, generator=gen)
    with pytest.raises(ConfigError, match=r"\(B, C, T, H, W\)"):
        VideoMix()(torch.zeros(4, 3, 8, 16, 16, dtype=torch.uint8), torch.zeros(4), rng=rng, generator=gen)
    with pytest.raises(ConfigError, match="mode"):
        VideoMix(mode="frames")
    with pytest.raises(ConfigError, match="positive"):
        ClipMixUp(0)
