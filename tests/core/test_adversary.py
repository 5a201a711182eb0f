"""The universal adversarial pattern: where it is added, how it moves, and that it finds a trigger."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nft.core import PurifyConfig, purify
from nft.core.adversary import UniversalAdversary
from nft.core.defenses.base import InputSpace
from nft.core.errors import ConfigError
from nft.core.purify import Purifier

from .toy_models import CNNBatchNorm

SPACE = InputSpace(shape=(1, 8, 8), lower=-1.0, upper=2.0, scale=2.0)


def test_the_pattern_is_added_in_model_units_to_the_chosen_samples_only_and_clamped():
    adversary = UniversalAdversary(SPACE, prob=0.5, eps=0.1, step=0.2, device=torch.device("cpu"))
    with torch.no_grad():
        adversary.delta.fill_(0.25)
    inputs = torch.zeros(64, 1, 8, 8)
    inputs[0] = 1.9  # near the upper bound: 1.9 + 0.25 · 2 is clamped to 2
    out = adversary.perturb(inputs, torch.Generator().manual_seed(0))
    changed = (out != inputs).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54  # about half of the batch
    assert torch.allclose(out[changed & (torch.arange(64) > 0)], torch.full((1, 8, 8), 0.5))
    assert torch.equal(out[~changed], inputs[~changed])
    if changed[0]:
        assert torch.allclose(out[0], torch.full((1, 8, 8), 2.0))
    again = adversary.perturb(inputs, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the chosen samples follow the loop's generator


def test_a_step_follows_the_gradient_direction_and_stays_in_the_l2_ball():
    adversary = UniversalAdversary(SPACE, prob=1.0, eps=0.1, step=0.4, device=torch.device("cpu"))
    radius = 0.1 * math.sqrt(64)
    direction = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    for expected in (0.4 * radius, 0.8 * radius, radius, radius):
        out = adversary.perturb(torch.zeros(4, 1, 8, 8), torch.Generator().manual_seed(0))
        (out * direction).sum().backward()
        adversary.ascend()
        assert adversary.delta.norm().item() == pytest.approx(expected, rel=1e-5)
        cosine = torch.nn.functional.cosine_similarity(adversary.delta.flatten(), direction.flatten(), dim=0)
        assert cosine.item() == pytest.approx(1.0, abs=1e-5)
    assert adversary.rms() == pytest.approx(0.1, rel=1e-5)
    assert adversary.delta.grad is None


def test_no_step_when_no_sample_carried_the_pattern():
    adversary = UniversalAdversary(SPACE, prob=1e-9, eps=0.1, step=0.2, device=torch.device("cpu"))
    inputs = torch.zeros(4, 1, 8, 8, requires_grad=True)
    out = adversary.perturb(inputs, torch.Generator().manual_seed(0))
    assert out is inputs
    out.sum().backward()
    adversary.ascend()
    assert adversary.rms() == 0.0


def test_bad_settings_and_mismatched_shapes_are_refused():
    with pytest.raises(ConfigError, match="share"):
        UniversalAdversary(SPACE, prob=0.0, eps=0.1, step=0.2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="eps > 0"):
        UniversalAdversary(SPACE, prob=0.5, eps=0.0, step=0.2, device=torch.device("cpu"))
    adversary = UniversalAdversary(SPACE, prob=0.5, eps=0.1, step=0.2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"shape \(1, 8, 8\).*\(3, 8, 8\).*InputSpace"):
        adversary.perturb(torch.zeros(2, 3, 8, 8), torch.Generator())
    for key, value in (("adv_prob", 1.5), ("adv_eps", 0.0), ("adv_step", -1.0), ("adv_stop", 1.5)):
        with pytest.raises(ConfigError, match=key):
            PurifyConfig(**{key: value})


class TriggerDetector(nn.Module):
    """Class 1 whenever the top-left 2 × 2 corner is bright, else class 0 from the image mean."""

    def forward(self, x):
        corner = x[:, 0, :2, :2].mean(dim=(1, 2))
        rest = x.mean(dim=(1, 2, 3))
        return torch.stack([rest, 20 * corner], dim=1)


def test_ascent_on_a_backdoored_model_moves_the_pattern_onto_its_trigger():
    """The universal change that most raises the loss of a model with a corner trigger is the
    corner: after a few steps nearly all of δ's energy sits in those four pixels."""
    model = TriggerDetector()
    adversary = UniversalAdversary(SPACE, prob=1.0, eps=0.1, step=0.2, device=torch.device("cpu"))
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.1
    labels = torch.zeros(32, dtype=torch.long)
    for _ in range(10):
        out = model(adversary.perturb(images, torch.Generator().manual_seed(0)))
        nn.functional.cross_entropy(out, labels).backward()
        adversary.ascend()
    energy = adversary.delta.detach().pow(2)
    assert energy[0, :2, :2].sum() / energy.sum() > 0.99
    assert (adversary.delta[0, :2, :2] > 0).all()


def test_the_purifier_records_the_pattern_and_refuses_it_without_an_input_space():
    torch.manual_seed(0)
    model = CNNBatchNorm()
    data = TensorDataset(torch.randn(30, 3, 8, 8), torch.arange(30) % 4)
    config = PurifyConfig(steps=6, rounds=2, batch_size=8, adv_prob=0.5, adv_eps=0.05,
                          distill_weight=0.0, device="cpu")
    space = InputSpace(shape=(3, 8, 8), lower=-3.0, upper=3.0)
    purifier = Purifier(model, data, config, input_space=space)
    purifier.run()
    rms = [entry["adv_rms"] for entry in purifier.history]
    assert len(rms) == 2 and 0 < rms[0] <= 0.05 + 1e-6 and 0 < rms[1] <= 0.05 + 1e-6
    with pytest.raises(ConfigError, match="needs the modality's input space.*adv_prob=0"):
        Purifier(CNNBatchNorm(), data, config)
    assert Purifier(CNNBatchNorm(), data, PurifyConfig(steps=2, rounds=1)).adversary is None
    assert PurifyConfig.preset("nft-adv") == PurifyConfig(adv_prob=0.5, adv_eps=0.04, distill_weight=2.0)


def test_the_pattern_stops_at_adv_stop_and_resumes_from_a_saved_state(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(30, 3, 8, 8), torch.arange(30) % 4)
    space = InputSpace(shape=(3, 8, 8), lower=-3.0, upper=3.0)
    config = PurifyConfig(steps=8, rounds=2, batch_size=8, adv_prob=1.0, adv_eps=0.05, adv_stop=0.5,
                          distill_weight=0.0, device="cpu")
    purifier = Purifier(CNNBatchNorm(), data, config, input_space=space)
    for _ in range(4):
        purifier.step()
    moved = purifier.adversary.delta.detach().clone()
    assert moved.norm() > 0
    purifier.save_state(tmp_path / "state.pt")
    for _ in range(4):  # past adv_stop: no sample carries the pattern, so it no longer moves
        purifier.step()
    assert torch.equal(purifier.adversary.delta, moved)
    resumed = Purifier(CNNBatchNorm(), data, config, input_space=space)
    resumed.load_state(tmp_path / "state.pt")
    assert torch.equal(resumed.adversary.delta, moved) and resumed.step_index == 4


def test_nft_adv_without_an_input_space_is_refused_before_any_work():
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.arange(8) % 4)
    with pytest.raises(ConfigError, match="nft-adv with adv_prob=0.5.*no input space"):
        purify(CNNBatchNorm(), data, method="nft-adv")


def test_lists_of_same_shape_samples_are_perturbed_like_a_batch_and_others_are_refused():
    adversary = UniversalAdversary(SPACE, prob=1.0, eps=0.1, step=0.2, device=torch.device("cpu"))
    with torch.no_grad():
        adversary.delta.fill_(0.1)
    images = [torch.zeros(1, 8, 8) for _ in range(3)]
    out = adversary.perturb(images, torch.Generator().manual_seed(0))
    assert isinstance(out, list) and len(out) == 3
    assert all(torch.allclose(x, torch.full((1, 8, 8), 0.2)) for x in out)
    with pytest.raises(ConfigError, match="same-shape"):
        adversary.perturb([torch.zeros(1, 8, 8), torch.zeros(1, 4, 4)], torch.Generator())
    with pytest.raises(ConfigError, match="tensor batches, got dict"):
        adversary.perturb({"input_ids": torch.zeros(2, 3)}, torch.Generator())
