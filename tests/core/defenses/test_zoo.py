"""Every defense of the zoo on one small synthetic backdoor: it removes the backdoor and changes
only what its mechanism may change (compared state_dict by state_dict).

Each defense runs a tiny version of itself (fewer steps; a larger rate where the official rate
needs thousands of steps), so the whole folder stays within a few minutes on 2 CPU cores. The
defaults themselves are checked against the official code in test_configs.py.

Thresholds (the fixture backdoor has ~100 % clean accuracy and ~99.6 % ASR): after a defense,
ASR ≤ 25 % and clean accuracy ≥ 80 %.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nft.core import PurifyConfig, purify
from nft.core.defenses import (
    ANPConfig, AWMConfig, FineTuneConfig, FSTConfig, FTSAMConfig, IBAUConfig, NADConfig, RNPConfig,
    SAUConfig,
)

ASR_MAX = 0.25
ACC_MIN = 0.80

QUIET = dict(progress=False, device="cpu")

# name -> (tiny config, what the defense may change)
CASES = {
    "anp": (ANPConfig(steps=60, batch_size=64, **QUIET), "prune"),
    "rnp": (RNPConfig(**QUIET), "prune"),  # official defaults: 1 batch per epoch on 100 images
    # three rounds at three times the official rate: two rounds at the official rate left 8-80 % ASR
    # over seeds 0-3 on this fixture; these left 2-10 %
    "i-bau": (IBAUConfig(rounds=3, steps_per_round=25, batch_size=64, lr=0.003, **QUIET), "weights"),
    "awm": (AWMConfig(rounds=10, steps_per_round=20, batch_size=64, **QUIET), "conv"),
    "ft-sam": (FTSAMConfig(steps=150, lr=0.05, batch_size=64, **QUIET), "train"),
    "fst": (FSTConfig(**QUIET), "train"),  # official defaults: 80 steps
    "nad": (NADConfig(steps=150, warm_steps=20, teacher_steps=50, teacher_batch_size=64, **QUIET), "train"),
    "sau": (SAUConfig(steps=100, lr=0.003, batch_size=32, **QUIET), "weights"),
}


def _norm_weight_keys(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _conv_weight_keys(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _changed(before: dict, after: dict) -> set[str]:
    assert list(before) == list(after), "the state_dict keys changed"
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("name", list(CASES))
def test_defense_removes_the_backdoor_and_changes_only_what_it_should(backdoor, name, fake_clock):
    config, scope = CASES[name]
    model = backdoor.fresh()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = purify(model, backdoor.clean, config, method=name, input_space=backdoor.input_space)

    assert type(result.model) is type(model) and result.method == name
    assert result.clean_samples == 100 and fake_clock.readings == 2  # one clock span around the run
    after = backdoor.evaluate(result.model)
    assert after["asr"] <= ASR_MAX, f"{name}: ASR {after['asr']:.3f} (before {backdoor.before['asr']:.3f})"
    assert after["acc"] >= ACC_MIN, f"{name}: ACC {after['acc']:.3f}"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_state.items()), \
        "purify() modified the caller's model"

    state = result.model.state_dict()
    changed = _changed(before_state, state)
    params = {k for k, _ in model.named_parameters()}
    if scope == "prune":  # ANP / RNP: some γ entries set to exactly 0, nothing else
        assert changed and changed <= _norm_weight_keys(model), changed
        zeroed = 0
        for key in changed:
            diff = before_state[key] != state[key]
            assert torch.all(state[key][diff] == 0), f"{key}: pruning must only zero γ entries"
            zeroed += int(diff.sum())
        assert zeroed == result.info["pruned_channels"] > 0
        assert 0 <= result.info["threshold"] <= 0.9
    elif scope == "conv":  # AWM: masks folded into convolution weights only, never enlarged
        assert changed and changed <= _conv_weight_keys(model), changed
        for key in changed:
            assert torch.all(state[key].abs() <= before_state[key].abs() + 1e-7), key
    elif scope == "weights":  # I-BAU / SAU: weights in eval mode; normalisation statistics kept
        assert changed == params, sorted(params ^ changed)
    else:  # fine-tuning in train mode: every weight moves, statistics may too
        assert params <= changed, sorted(params - changed)


def test_ft_changes_weights(backdoor):
    model = backdoor.fresh()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = purify(model, backdoor.clean, FineTuneConfig(steps=20, batch_size=64, **QUIET), method="ft")
    params = {k for k, _ in model.named_parameters()}
    assert params <= _changed(before_state, result.model.state_dict())


def test_nft_changes_masks_and_the_output_bias_only(backdoor):
    """NFT folds its masks into γ: only normalisation scales change, each by a factor in (0, 1];
    then it re-fits the output layer's bias (``calibrate_bias``), and nothing else moves.

    (NFT's shipped defaults are tuned elsewhere; on this synthetic backdoor its depth clamp floor
    limits it, so only its scope and that it does not strengthen the backdoor are asserted.)
    """
    model = backdoor.fresh()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    result = purify(model, backdoor.clean, PurifyConfig(steps=60, rounds=3, **QUIET), method="nft")
    state = result.model.state_dict()
    changed = _changed(before_state, state)
    calibration = result.info["bias_calibration"]
    head_bias = f"{calibration['layer']}.bias"
    torch.testing.assert_close(state[head_bias] - before_state[head_bias],
                               torch.tensor(calibration["shift"]), atol=1e-4, rtol=0)
    changed.discard(head_bias)
    assert changed and changed <= _norm_weight_keys(model), changed
    for key in changed:
        mask = result.masks[key[: -len(".weight")]]
        assert torch.all((mask > 0) & (mask <= 1))
        torch.testing.assert_close(state[key], before_state[key] * mask)
    assert backdoor.evaluate(result.model)["asr"] <= backdoor.before["asr"] + 1e-9


def test_pruning_threshold_is_chosen_on_clean_data_within_the_tolerance(backdoor):
    """ANP's threshold sweep never looks at attack data: the chosen threshold keeps the clean-set
    accuracy within ``acc_tolerance`` (relative) and the next one in the sweep does not."""
    config = ANPConfig(steps=60, batch_size=64, acc_tolerance=0.02, **QUIET)
    result = purify(backdoor.fresh(), backdoor.clean, config, method="anp")
    sweep = result.info["threshold_sweep"]
    base = sweep[0]["quality"]
    chosen = result.info["threshold"]
    rows = {row["threshold"]: row for row in sweep[1:]}
    assert rows[chosen]["quality"] >= base * (1 - 0.02)
    later = [row for row in sweep[1:] if row["threshold"] > chosen]
    assert not later or later[0]["quality"] < base * (1 - 0.02) or chosen == config.max_threshold
    # a fixed threshold skips the sweep
    fixed = purify(backdoor.fresh(), backdoor.clean, config.replace(threshold=0.2), method="anp")
    assert fixed.info["threshold"] == 0.2 and fixed.info["threshold_sweep"] == []


@pytest.mark.filterwarnings("ignore::nft.core.PurificationWarning")  # 10 steps cannot relearn FST's new head
def test_same_seed_same_result(backdoor):
    config = FSTConfig(steps=10, **QUIET)
    a = purify(backdoor.fresh(), backdoor.clean, config, method="fst").model.state_dict()
    b = purify(backdoor.fresh(), backdoor.clean, config, method="fst").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
