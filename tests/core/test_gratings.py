"""The searched adversarial gratings: which gratings the scan keeps and how they are added (the
loop's use of them: tests/core/test_searches.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nft.core import ClassificationTask, PurifyConfig
from nft.core.adversary import GratingAdversary, grating
from nft.core.defenses.base import InputSpace
from nft.core.errors import ConfigError


SPACE = InputSpace(shape=(1, 16, 16), lower=0.0, upper=1.0)


class StripeTrigger(nn.Module):
    """Class 2 when the image holds vertical stripes of 4 cycles (a SIG-like trigger: its
    Fourier coefficient along the columns is large), otherwise the class its brightness says
    (0 dark, 1 bright)."""

    def forward(self, x):
        columns = torch.arange(16, dtype=x.dtype)
        wave = torch.stack([torch.cos(2 * math.pi * 4 * columns / 16), torch.sin(2 * math.pi * 4 * columns / 16)])
        profile = x[:, 0].mean(dim=1) - x[:, 0].mean(dim=(1, 2))[:, None]  # column means, centred
        energy = (profile @ wave.T).pow(2).sum(1).sqrt() / 8  # the stripe's amplitude
        brightness = x.mean(dim=(1, 2, 3))
        return torch.stack([10 * (0.5 - brightness), 10 * (brightness - 0.5), 200 * (energy - 0.04)], dim=1)


def _images(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = 0.25 + 0.5 * labels.view(-1, 1, 1, 1).float() + 0.05 * torch.rand(n, 1, 16, 16, generator=generator)
    return images, labels


def test_the_grating_is_a_unit_plane_wave_with_the_given_cycles():
    wave = grating(8, 12, cycles=2.0, angle=0.0, phase=math.pi / 2)  # a cosine along the columns
    assert wave.shape == (8, 12)
    assert torch.allclose(wave[0], wave[5]) and float(wave.abs().max()) <= 1.0
    assert torch.allclose(wave[0, :5], torch.cos(2 * math.pi * 2 * torch.arange(5.0) / 8), atol=1e-5)
    assert torch.allclose(grating(8, 8, 1.0, math.pi / 2, 0.0)[:, 0], torch.sin(2 * math.pi * torch.arange(8.0) / 8),
                          atol=1e-5)


def test_the_scan_keeps_the_trigger_stripes_and_only_them():
    images, labels = _images()
    model, task = StripeTrigger(), ClassificationTask()
    assert bool((task.predict(model(images)) == labels).all())  # the clean images are answered right
    gratings = GratingAdversary(SPACE, prob=0.5, amplitude=0.1, share=0.8, count=4)
    assert not gratings.searched
    gratings.search(model, task, images, labels, torch.Generator())
    assert gratings.searched and 1 <= len(gratings.waves) <= 4
    for cycles, angle, _ in gratings.waves:  # vertical stripes (0°) of 4 cycles
        assert cycles == 4.0 and angle == 0.0
    assert min(gratings.scores) >= 0.8 > gratings.typical
    summary = gratings.summary()
    assert [row[:2] for row in summary["adv_waves"]] == [[4.0, 0]] * len(gratings.waves)


def test_a_model_without_a_grating_trigger_keeps_nothing_and_is_left_alone():
    """The brightness classifier alone: a grating of amplitude 0.1 moves the mean by at most the
    clamping, so no grating sends the other class's images anywhere."""

    class Brightness(nn.Module):
        def forward(self, x):
            b = x.mean(dim=(1, 2, 3))
            return torch.stack([10 * (0.5 - b), 10 * (b - 0.5)], dim=1)

    images, labels = _images()
    gratings = GratingAdversary(SPACE, prob=1.0, amplitude=0.1, share=0.8)
    gratings.search(Brightness(), ClassificationTask(), images, labels, torch.Generator())
    assert gratings.searched and gratings.waves == [] and not gratings.active
    assert gratings.perturb(images, torch.Generator().manual_seed(0)) is images


def test_a_class_that_every_grating_reaches_is_no_trigger_under_the_ratio_rule():
    """A model that answers any textured image with class 2 (a natural response to stripes, not
    one grating's): most gratings pass the share bar, and the ratio to the median keeps none."""

    class AnyTextureIsTwo(nn.Module):
        def forward(self, x):
            b = x.mean(dim=(1, 2, 3))
            texture = x.flatten(1).std(dim=1)
            return torch.stack([10 * (0.5 - b), 10 * (b - 0.5), 400 * (texture - 0.04)], dim=1)

    images, labels = _images()
    by_share = GratingAdversary(SPACE, prob=0.5, amplitude=0.1, share=0.8, ratio=1.0, count=1000)
    by_share.search(AnyTextureIsTwo(), ClassificationTask(), images, labels, torch.Generator())
    assert len(by_share.waves) > len(by_share.candidates(16, 16)) // 2
    by_ratio = GratingAdversary(SPACE, prob=0.5, amplitude=0.1, share=0.8, ratio=3.0)
    by_ratio.search(AnyTextureIsTwo(), ClassificationTask(), images, labels, torch.Generator())
    assert by_ratio.typical >= 0.8 and by_ratio.waves == []


def test_adding_changes_only_the_chosen_samples_by_the_amplitude_and_follows_the_generator():
    gratings = GratingAdversary(SPACE, prob=0.5, amplitude=0.1, share=0.8)
    gratings.waves, gratings.scores, gratings._searched = [(2.0, 0.0, 0.0), (3.0, math.pi / 2, 1.0)], [0.9, 0.85], True
    inputs = torch.full((64, 1, 16, 16), 0.5)
    out = gratings.perturb(inputs, torch.Generator().manual_seed(0))
    changed = (out != inputs).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    expected = [0.5 + 0.1 * grating(16, 16, *wave) for wave in gratings.waves]
    for sample in out[changed]:
        assert sum(torch.allclose(sample[0], e, atol=1e-6) for e in expected) == 1  # exactly one grating
    assert torch.equal(out, gratings.perturb(inputs, torch.Generator().manual_seed(0)))
    assert float(gratings.perturb(torch.ones(8, 1, 16, 16), torch.Generator()).max()) <= 1.0  # clamped


def test_bad_settings_and_unsearched_use_are_refused():
    with pytest.raises(ConfigError, match="share of samples must be in"):
        GratingAdversary(SPACE, prob=0.0, amplitude=0.1, share=0.8)
    with pytest.raises(ConfigError, match="0 < amplitude ≤ 1"):
        GratingAdversary(SPACE, prob=0.5, amplitude=2.0, share=0.8)
    with pytest.raises(ConfigError, match="two spatial dimensions.*adv_wave_prob=0"):
        GratingAdversary(InputSpace(shape=(16,)), prob=0.5, amplitude=0.1, share=0.8)
    with pytest.raises(ConfigError, match="not searched yet"):
        GratingAdversary(SPACE, prob=0.5, amplitude=0.1, share=0.8).perturb(torch.zeros(2, 1, 16, 16),
                                                                             torch.Generator())
    with pytest.raises(ConfigError, match="one class label per sample"):
        GratingAdversary(SPACE, prob=0.5, amplitude=0.1, share=0.8).search(
            StripeTrigger(), ClassificationTask(), torch.zeros(2, 1, 16, 16), [{"boxes": None}] * 2, torch.Generator())
    for field, value in (("adv_wave_prob", 2.0), ("adv_wave_amplitude", 0.0), ("adv_wave_share", 1.5)):
        with pytest.raises(ConfigError, match=f"{field} must be in"):
            PurifyConfig(**{field: value})
    with pytest.raises(ConfigError, match="adv_wave_ratio must be ≥ 1"):
        PurifyConfig(adv_wave_ratio=0.5)
