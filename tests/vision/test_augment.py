"""Image MixUp and CutMix pass the core's augmentation contract; CutMix weights are exact areas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nft.core import ConfigError
from nft.core.testing import AugmentationContract
from nft.vision.augment import CutMix, MixUp
from nft.vision.models import ModelSpec, build_model


class _ImageBatch(AugmentationContract):
    def make_batch(self):
        g = torch.Generator().manual_seed(0)
        return torch.rand(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)

    def make_model(self):
        return build_model(ModelSpec("small-cnn", 10, 1, 12, {"width": 4})).eval()


class TestMixUp(_ImageBatch):
    def make_augmentation(self):
        return MixUp(1.0)


class TestCutMix(_ImageBatch):
    def make_augmentation(self):
        return CutMix(1.0)


def test_cutmix_pastes_a_box_of_the_partner_and_weights_by_area():
    images = torch.stack([torch.full((1, 10, 10), float(i)) for i in range(4)])
    labels = torch.arange(4)
    mixed = CutMix(1.0)(images, labels, rng=np.random.default_rng(5), generator=torch.Generator().manual_seed(5))
    (own, w_own), (partner, w_partner) = mixed.targets
    assert torch.equal(own, labels)
    for i in range(4):
        pasted = (mixed.inputs[i] != images[i]).float().mean().item()
        if int(partner[i]) != i:
            assert abs(pasted - w_partner) < 1e-6  # the partner's share is its pixel share
    assert abs(w_own + w_partner - 1) < 1e-9


def test_cutmix_rejects_non_images():
    with pytest.raises(ConfigError, match="N×C×H×W"):
        CutMix()(torch.rand(4, 10), torch.zeros(4), rng=np.random.default_rng(0),
                 generator=torch.Generator())
    with pytest.raises(ConfigError):
        CutMix(0.0)
