"""MixUp / no-op augmentation, the mixed loss, the regulariser, the depth-decay clamp and the
clean-view distillation term."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nft.core import (
    ClassificationTask, ConfigError, DepthDecayClamp, L1ToOne, MixUp, NoAugmentation, mixed_loss,
)
from nft.core import PurifyConfig
from nft.core.augment import CutMix, Mixed, RandomPatterns
from nft.core.objective import CleanViewDistillation
from nft.core.testing import AugmentationContract

from .toy_models import CNNBatchNorm


class TestMixUpContract(AugmentationContract):
    def make_augmentation(self): return MixUp(1.0)
    def make_batch(self):
        g = torch.Generator().manual_seed(0)
        return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)
    def make_model(self): return CNNBatchNorm()


class TestNoAugmentationContract(TestMixUpContract):
    def make_augmentation(self): return NoAugmentation()


class TestRandomPatternsContract(TestMixUpContract):
    def make_augmentation(self): return RandomPatterns(MixUp(1.0), patch_prob=1.0, blend_prob=1.0)


def test_random_patterns_keep_the_base_targets_and_draw_inside_each_sample_range():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 12, 12, generator=g) * 4 - 1          # normalised-looking values in [-1, 3]
    y = torch.arange(16) % 4
    base = _mix(NoAugmentation(), x, y)
    patterned = _mix(RandomPatterns(NoAugmentation(), patch_prob=1.0, blend_prob=0.0, max_patch=0.5), x, y)
    assert len(patterned.targets) == len(base.targets) and all(
        torch.equal(a, b) and wa == wb for (a, wa), (b, wb) in zip(patterned.targets, base.targets))
    changed = (patterned.inputs != x).flatten(1).any(1)
    assert bool(changed.all()), "patch_prob=1 stamps a box on every sample"
    lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
    out = patterned.inputs
    assert bool((out.amin(dim=(1, 2, 3)) >= lo - 1e-6).all() and (out.amax(dim=(1, 2, 3)) <= hi + 1e-6).all())
    # a box covers at most max_patch of the side, squared
    assert int(((out != x).any(1)).flatten(1).sum(1).max()) <= 6 * 6


def test_random_patterns_are_seeded_and_off_at_zero_probability():
    x, y = torch.rand(8, 1, 10, 10), torch.arange(8) % 2
    aug = RandomPatterns(MixUp(1.0))
    assert torch.equal(_mix(aug, x, y, seed=3).inputs, _mix(aug, x, y, seed=3).inputs)
    assert not torch.equal(_mix(aug, x, y, seed=3).inputs, _mix(aug, x, y, seed=4).inputs)
    off = RandomPatterns(MixUp(1.0), patch_prob=0.0, blend_prob=0.0)
    assert torch.equal(_mix(off, x, y, seed=3).inputs, _mix(MixUp(1.0), x, y, seed=3).inputs)


def test_random_patterns_leave_non_spatial_inputs_to_the_base_with_one_warning(caplog):
    x, y = torch.rand(8, 5), torch.arange(8) % 2
    aug = RandomPatterns(NoAugmentation(), patch_prob=1.0, blend_prob=1.0)
    with caplog.at_level("WARNING"):
        assert torch.equal(_mix(aug, x, y).inputs, x)
        _mix(aug, x, y)
    assert sum("only mixed" in r.message for r in caplog.records) == 1


def test_random_patterns_refuse_probabilities_outside_the_unit_interval():
    with pytest.raises(ConfigError, match="patch_prob"):
        RandomPatterns(patch_prob=1.5)
    with pytest.raises(ConfigError, match="pattern_prob"):
        PurifyConfig(pattern_prob=-0.1)


class TestCutMixContract(TestMixUpContract):
    def make_augmentation(self): return CutMix(MixUp(1.0), prob=1.0)


def test_cutmix_pastes_one_region_of_the_permuted_batch_and_weights_labels_by_area():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 10, 12).clone()
    y = torch.arange(6)  # each image's pixels equal its label
    for seed in range(20):
        mixed = _mix(CutMix(MixUp(1.0), prob=1.0), x, y, seed)
        (ya, kept), (yb, pasted) = mixed.targets
        assert torch.equal(ya, y) and kept + pasted == pytest.approx(1.0)
        assert torch.equal(mixed.clean_inputs, x)  # the teacher sees the images before pasting
        for i in range(6):
            own = (mixed.inputs[i] == i).float().mean()
            assert float(own) == pytest.approx(kept) or int(yb[i]) == i
            assert set(mixed.inputs[i].unique().tolist()) <= {float(i), float(yb[i])}


def test_cutmix_draws_strips_and_boxes_and_leaves_other_batches_to_the_base():
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    shapes = set()
    for seed in range(40):
        changed = (_mix(CutMix(MixUp(1.0), prob=1.0), x, y, seed).inputs != x).any(dim=(0, 1))
        rows, cols = changed.any(1).sum().item(), changed.any(0).sum().item()
        shapes.add("column strip" if rows == 8 and cols < 8 else "row strip" if cols == 8 and rows < 8
                   else "box" if 0 < rows < 8 and 0 < cols < 8 else "other")
    assert {"column strip", "row strip", "box"} <= shapes
    never = _mix(CutMix(MixUp(1.0), prob=0.0), x, y)  # prob 0: always the base's MixUp
    (_, lam), (yb, _) = never.targets
    torch.testing.assert_close(never.inputs, lam * x + (1 - lam) * x[yb])
    with pytest.raises(ConfigError, match="prob must be in"):
        CutMix(prob=1.5)
    assert repr(PurifyConfig(cutmix_prob=0.5).augmentation()).startswith(
        "RandomPatterns(base=CutMix(base=MixUp(alpha=1.0), prob=0.5")


def test_the_config_builds_mixup_then_patterns_and_the_reference_has_none():
    assert repr(PurifyConfig().augmentation()).startswith("RandomPatterns(base=MixUp(alpha=1.0)")
    assert repr(PurifyConfig(pattern_prob=0).augmentation()) == "MixUp(alpha=1.0)"
    assert repr(PurifyConfig.preset("nft-reference").augmentation()) == "MixUp(alpha=1.0)"
    assert repr(PurifyConfig.preset("nft-no-mixup").augmentation()).startswith("RandomPatterns(base=NoAugmentation()")


def _mix(aug, x, y, seed=0):
    return aug(x, y, rng=np.random.default_rng(seed), generator=torch.Generator().manual_seed(seed))


def test_mixup_is_a_convex_combination_of_the_batch_and_its_permutation():
    x = torch.arange(4, dtype=torch.float32).view(4, 1) * torch.ones(4, 3)
    y = torch.tensor([0, 1, 2, 3])
    mixed = _mix(MixUp(1.0), x, y)
    (ya, lam), (yb, rest) = mixed.targets
    assert torch.equal(ya, y) and sorted(yb.tolist()) == [0, 1, 2, 3]
    assert lam + rest == pytest.approx(1.0)
    expected = lam * x + (1 - lam) * x[yb]  # rows of x are their own labels
    torch.testing.assert_close(mixed.inputs, expected)


def test_mixup_alpha_controls_lambda_spread():
    x, y = torch.rand(4, 2), torch.arange(4)
    low = [_mix(MixUp(0.1), x, y, s).targets[0][1] for s in range(200)]
    high = [_mix(MixUp(8.0), x, y, s).targets[0][1] for s in range(200)]
    assert np.mean([min(v, 1 - v) for v in low]) < 0.15 < np.mean([min(v, 1 - v) for v in high])


def test_mixup_rejects_bad_inputs():
    with pytest.raises(ConfigError, match="positive"):
        MixUp(0)
    with pytest.raises(ConfigError, match="floating-point"):
        _mix(MixUp(), torch.arange(4), torch.arange(4))


def test_mixed_loss_weights_each_target():
    task = ClassificationTask()
    logits = torch.randn(5, 3)
    a, b = torch.randint(0, 3, (5,)), torch.randint(0, 3, (5,))
    got = mixed_loss(task, logits, Mixed(None, ((a, 0.3), (b, 0.7))))
    expected = 0.3 * nn.functional.cross_entropy(logits, a) + 0.7 * nn.functional.cross_entropy(logits, b)
    torch.testing.assert_close(got, expected)


def test_regulariser_is_weighted_l1_distance_to_one():
    masks = [torch.tensor([1.0, 0.5]), torch.tensor([0.25])]
    assert float(L1ToOne(0.1)(masks)) == pytest.approx(0.1 * (0.5 + 0.75))
    assert float(L1ToOne(0.0)(masks)) == 0.0
    with pytest.raises(ConfigError):
        L1ToOne(-1)


def test_depth_decay_clamp_matches_the_reference_floors():
    clamp = DepthDecayClamp(0.8, 0.5)
    floors = clamp.floors(19)
    assert floors[0] == pytest.approx(0.8 * math.exp(-0.5)) == pytest.approx(0.4852, abs=1e-4)
    assert floors[18] == pytest.approx(6.0e-5, rel=0.05)
    masks = [nn.Parameter(torch.tensor([-1.0, 0.3, 2.0])) for _ in range(3)]
    clamp(masks)
    for floor, m in zip(clamp.floors(3), masks):
        assert m.tolist() == pytest.approx([floor, max(floor, 0.3), 1.0])
    with pytest.raises(ConfigError):
        DepthDecayClamp(alpha=1.5)


def test_random_patterns_keep_the_unpatterned_mixed_batch_as_the_clean_view():
    x, y = torch.rand(8, 1, 10, 10), torch.arange(8) % 2
    plain = _mix(MixUp(1.0), x, y, seed=5)
    patterned = _mix(RandomPatterns(MixUp(1.0), patch_prob=1.0, blend_prob=1.0), x, y, seed=5)
    assert torch.equal(plain.clean_inputs, plain.inputs)  # plain mixing: the view is the input
    assert torch.equal(patterned.clean_inputs, plain.inputs)
    assert bool((patterned.inputs != patterned.clean_inputs).flatten(1).any(1).all())


class _Recorder(nn.Module):
    """A linear classifier that remembers what it was shown."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return self.linear(x)


def test_distillation_is_zero_on_agreement_and_only_the_student_gets_gradients():
    torch.manual_seed(0)
    teacher = _Recorder()
    term = CleanViewDistillation(teacher, weight=2.0, temperature=3.0)
    clean, patterned = torch.randn(5, 4), torch.randn(5, 4)
    agreeing = teacher.linear(clean).detach()
    assert float(term(agreeing, clean)) == pytest.approx(0.0, abs=1e-6)
    assert teacher.seen[-1] is clean  # the teacher sees the clean view, never the patterned one
    student = nn.Linear(4, 3)
    loss = term(student(patterned), clean)
    assert float(loss) > 0
    loss.backward()
    assert student.weight.grad is not None and teacher.linear.weight.grad is None
    assert not teacher.training
    # weight and T² scale: the same KL at weight 1 is half
    single = CleanViewDistillation(teacher, weight=1.0, temperature=3.0)(student(patterned), clean)
    assert float(loss) == pytest.approx(2 * float(single), rel=1e-5)


def test_distillation_refuses_bad_settings():
    with pytest.raises(ConfigError, match="weight"):
        CleanViewDistillation(nn.Linear(2, 2), weight=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        CleanViewDistillation(nn.Linear(2, 2), temperature=0.0)
