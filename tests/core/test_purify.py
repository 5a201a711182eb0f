"""The purification loop: reproducibility, resume, BN modes, schedule, bad inputs."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nft.core import (
    ConfigError, DataError, MaskConfig, NonFiniteLossError, Purifier, PurifyConfig, purify,
)
from nft.core.augment import Mixed, MixUp
from nft.core.purify import PRESETS
from nft.core.tasks import ClassificationTask

from .toy_models import CNNBatchNorm


def _model():
    torch.manual_seed(0)
    return CNNBatchNorm().eval()


def _data(n=40, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % classes)


FAST = dict(steps=12, rounds=3, batch_size=8, progress=False)


def test_public_api_returns_same_class_and_masks(fake_clock):
    model = CNNBatchNorm().eval()
    result = purify(model, _data(), config=PurifyConfig(**FAST))
    assert type(result.model) is CNNBatchNorm and result.model is not model
    assert list(result.masks) == ["net.1", "net.4"]
    assert all(((m >= 0) & (m <= 1)).all() for m in result.masks.values())
    assert result.clean_samples == 40 and fake_clock.readings == 2 and len(result.history) == 3
    assert list(result.model.state_dict()) == list(model.state_dict())


def test_only_masks_change_and_gamma_is_scaled_by_the_mask():
    model = CNNBatchNorm().eval()
    before = copy.deepcopy(model.state_dict())
    result = purify(model, _data(), config=PurifyConfig(**FAST))
    after = result.model.state_dict()
    for key, value in before.items():
        if key in ("net.1.weight", "net.4.weight"):
            torch.testing.assert_close(after[key], value * result.masks[key[: -len(".weight")]])
        elif key == "net.8.bias":  # the output bias, re-fitted after folding (test_calibrate.py)
            shift = torch.tensor(result.info["bias_calibration"]["shift"])
            torch.testing.assert_close(after[key] - value, shift, atol=1e-4, rtol=0)
        else:
            assert torch.equal(after[key], value), f"{key} changed"
    assert torch.equal(model.state_dict()["net.1.weight"], before["net.1.weight"])  # input untouched


def test_same_seed_gives_bitwise_same_masks_and_other_seed_differs():
    model = CNNBatchNorm().eval()
    a = purify(model, _data(), config=PurifyConfig(seed=3, **FAST)).masks
    b = purify(model, _data(), config=PurifyConfig(seed=3, **FAST)).masks
    c = purify(model, _data(), config=PurifyConfig(seed=4, **FAST)).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly(tmp_path):
    config = PurifyConfig(seed=1, **FAST)
    straight = Purifier(_model(), _data(), config)
    straight.run()
    first = Purifier(_model(), _data(), config)
    for _ in range(5):
        first.step()
    first.save_state(tmp_path / "state.pt")
    second = Purifier(_model(), _data(), config)
    second.load_state(tmp_path / "state.pt")
    assert second.step_index == 5
    second.run()
    for name, mask in straight.masked.masks.items():
        assert torch.equal(mask, second.masked.masks[name])
    other = Purifier(CNNBatchNorm().eval(), _data(), config.replace(seed=2))
    with pytest.raises(ConfigError, match="same config"):
        other.load_state(tmp_path / "state.pt")


def test_norm_statistics_modes():
    model = CNNBatchNorm().eval()
    stats = model.net[1].running_mean.clone()
    frozen = purify(model, _data(), config=PurifyConfig(norm_stats="freeze", **FAST)).model
    assert torch.equal(frozen.net[1].running_mean, stats)
    updated = purify(model, _data(), config=PurifyConfig(norm_stats="update", **FAST)).model
    assert not torch.equal(updated.net[1].running_mean, stats)


def test_reference_preset_is_the_reference_code():
    ref = PRESETS["nft-reference"]
    assert (ref.steps, ref.rounds, ref.batch_size, ref.lr, ref.momentum, ref.lr_min) == (
        1000, 5, 128, 0.05, 0.95, 0.02)
    assert ref.norm_stats == "update" and ref.mixup_alpha == 1.0 and ref.reg_weight == 0.001
    assert ref.pattern_prob == 0 and ref.clamp  # MixUp alone, as the paper
    assert (ref.clamp_alpha, ref.clamp_beta) == (0.8, 0.5) and ref.masks.skip_first_norm
    assert not ref.calibrate_bias  # the reference folds the masks and stops
    assert ref.distill_weight == 0  # the paper's loss: cross-entropy on MixUp and the regulariser
    assert [round(ref.lr_at(s), 4) for s in (0, 200, 400, 600, 800, 999)] == [
        0.05, 0.0471, 0.0396, 0.0304, 0.0229, 0.0229]


def test_distillation_changes_only_masks_and_leaves_the_input_model_intact():
    model = CNNBatchNorm().eval()
    before = copy.deepcopy(model.state_dict())
    config = dict(calibrate_bias=False, **FAST)
    with_term = purify(model, _data(), config=PurifyConfig(distill_weight=1.0, **config))
    without = purify(model, _data(), config=PurifyConfig(distill_weight=0.0, **config))
    assert any(not torch.equal(with_term.masks[k], without.masks[k]) for k in without.masks)
    after = with_term.model.state_dict()
    for key, value in before.items():
        if key not in ("net.1.weight", "net.4.weight"):
            assert torch.equal(after[key], value), f"{key} changed"
        assert torch.equal(model.state_dict()[key], value)  # the teacher is a copy


class _NoCleanView:
    """Plain MixUp that, like hidden-space mixing, gives no input-space clean view."""

    def __init__(self):
        self.mixup = MixUp(1.0)

    def __call__(self, inputs, targets, *, rng, generator):
        mixed = self.mixup(inputs, targets, rng=rng, generator=generator)
        return Mixed(mixed.inputs, mixed.targets)


def _assert_distillation_dropped(caplog, note: str, **purify_kwargs):
    """With ``purify_kwargs`` NFT logs ``note`` and trains exactly as with the term switched off."""
    config = dict(calibrate_bias=False, **FAST)
    with caplog.at_level("INFO", logger="nft.core.purify"):
        dropped = purify(_model(), _data(), config=PurifyConfig(distill_weight=1.0, **config),
                         **purify_kwargs)
    assert note in caplog.text
    plain = purify(_model(), _data(), config=PurifyConfig(distill_weight=0.0, **config), **purify_kwargs)
    for name, mask in plain.masks.items():
        assert torch.equal(dropped.masks[name], mask)


def test_distillation_is_dropped_with_a_note_when_there_is_no_clean_view(caplog):
    _assert_distillation_dropped(caplog, "no clean view", augmentation=_NoCleanView())


class _OpaqueTask(ClassificationTask):
    """Classification scored as usual, but not declaring its outputs distillable."""

    distillable = False


def test_distillation_needs_a_task_that_declares_class_logits(caplog):
    _assert_distillation_dropped(caplog, "needs class logits", task=_OpaqueTask())
    assert ClassificationTask.distillable


def test_regulariser_is_divided_by_samples_per_class():
    purifier = Purifier(CNNBatchNorm().eval(), _data(40, classes=4), PurifyConfig(**FAST))
    assert purifier.samples_per_class == 10
    assert purifier.regularizer.weight == pytest.approx(0.001 / 10)


def test_bad_inputs_raise_clear_errors():
    model = CNNBatchNorm().eval()
    with pytest.raises(DataError, match="empty"):
        purify(model, TensorDataset(torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(DataError, match="out of range"):
        purify(model, TensorDataset(torch.rand(8, 3, 8, 8), torch.arange(8)), PurifyConfig(**FAST))
    with pytest.raises(DataError, match="could not run on the clean inputs"):
        purify(model, TensorDataset(torch.rand(8, 5, 8, 8), torch.arange(8) % 4), PurifyConfig(**FAST))
    nan = torch.rand(8, 3, 8, 8)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        purify(model, TensorDataset(nan, torch.arange(8) % 4), PurifyConfig(**FAST))
    with pytest.raises(ConfigError, match="unknown defense 'nope'"):
        purify(model, _data(), method="nope")
    with pytest.raises(ConfigError, match="norm_stats"):
        PurifyConfig(norm_stats="sometimes")
    with pytest.raises(ConfigError, match="unknown NFT preset"):
        PurifyConfig.preset("nft-fast")
    with pytest.raises(ConfigError, match="matched no layer"):
        purify(model, _data(), PurifyConfig(masks=MaskConfig(include=("zzz",)), **FAST))


def test_exploding_loss_stops_with_a_clear_error():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(x) * float("inf")

    data = TensorDataset(torch.rand(8, 4), torch.arange(8) % 4)
    with pytest.raises(NonFiniteLossError, match="nothing was written"):
        purify(Exploding().eval(), data, PurifyConfig(**FAST))


def test_callbacks_run_every_round():
    from nft.core import Callback

    seen = []

    class Record(Callback):
        def on_round_end(self, purifier, step):
            with purifier.evaluation() as model:
                assert not model.training
            seen.append(step)

    purifier = Purifier(CNNBatchNorm().eval(), _data(), PurifyConfig(**FAST), callbacks=[Record()])
    purifier.run()
    assert seen == [4, 8, 12]


def test_max_grad_norm_bounds_each_mask_update():
    """With clipping, one SGD step moves the masks by at most lr · max_grad_norm (the first
    momentum step is the gradient itself, and the clamp is a projection, which never lengthens
    a step); without it the same step is longer."""

    def first_step(clip):
        config = PurifyConfig(steps=1, rounds=1, batch_size=8, lr=1.0, lr_min=1.0, clamp=False,
                              pattern_prob=0.0, distill_weight=0.0, max_grad_norm=clip, progress=False)
        masks = purify(_model(), _data(), config).masks
        return torch.cat([1 - m.flatten() for m in masks.values()]).norm().item()

    free, clipped = first_step(0.0), first_step(1e-4)
    assert clipped == pytest.approx(1e-4, rel=1e-3)
    assert free > 10 * clipped  # the same step unclipped is far longer than the bound
    with pytest.raises(ConfigError, match="max_grad_norm"):
        PurifyConfig(max_grad_norm=-1.0)
