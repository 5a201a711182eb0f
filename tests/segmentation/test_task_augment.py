"""The segmentation Task (per-pixel CE, ignore 255, clear errors) and the two mixings."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nft.core import ConfigError, DataError, mixed_loss
from nft.core.testing import AugmentationContract
from nft.segmentation import SegCutMix, SegMixUp, SegmentationTask, TinySegNet


def _batch(n=6, classes=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n, size, size), generator=g)


class _Contract(AugmentationContract):
    def make_batch(self):
        return _batch()

    def make_task(self):
        return SegmentationTask()

    def make_model(self):
        torch.manual_seed(0)
        return TinySegNet(num_classes=5, width=4)


class TestSegMixUpContract(_Contract):
    def make_augmentation(self):
        return SegMixUp()


class TestSegCutMixContract(_Contract):
    def make_augmentation(self):
        return SegCutMix()


def _mix(aug, seed=3):
    x, y = _batch()
    return x, y, aug(x, y, rng=np.random.default_rng(seed), generator=torch.Generator().manual_seed(seed))


def test_mixup_mixes_images_and_weights_both_label_maps_with_the_same_lambda():
    x, y, mixed = _mix(SegMixUp())
    (y1, lam), (y2, rest) = mixed.targets
    assert torch.equal(y1, y) and lam + rest == pytest.approx(1.0) and 0 < lam < 1
    order = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y2, y[order])
    torch.testing.assert_close(mixed.inputs, lam * x + rest * x[order])


def test_mixup_loss_equals_cross_entropy_against_the_blended_one_hot_maps():
    x, y, mixed = _mix(SegMixUp())
    logits = torch.randn(6, 5, 16, 16, generator=torch.Generator().manual_seed(1))
    (y1, lam), (y2, rest) = mixed.targets
    soft = lam * F.one_hot(y1, 5).permute(0, 3, 1, 2).float() + rest * F.one_hot(y2, 5).permute(0, 3, 1, 2).float()
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(mixed_loss(SegmentationTask(), logits, mixed), expected)


def test_cutmix_cuts_the_label_maps_with_the_image_box():
    x, y, mixed = _mix(SegCutMix(), seed=5)
    (labels, weight), = mixed.targets
    assert weight == 1.0
    order = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    from_other = (mixed.inputs != x).any(dim=1)  # pixels whose image came from x[order]
    assert from_other.any() and (~from_other).any()
    assert torch.equal(labels[from_other], y[order][from_other])
    inside = torch.zeros_like(from_other)
    top, bottom, left, right = SegCutMix().box(16, 16, np.random.default_rng(5))
    inside[:, top:bottom, left:right] = True
    assert torch.equal(mixed.inputs[:, :, ~inside[0]], x[:, :, ~inside[0]])
    assert torch.equal(labels[~inside], y[~inside]) and torch.equal(labels[inside], y[order][inside])


def test_mixing_rejects_batches_without_label_maps():
    x, y = _batch()
    for aug in (SegMixUp(), SegCutMix()):
        with pytest.raises(ConfigError, match="label map"):
            aug(x, y[:, 0, 0], rng=np.random.default_rng(0), generator=torch.Generator())
    with pytest.raises(ConfigError, match="alpha must be positive"):
        SegCutMix(alpha=0)


def test_task_ignores_255_and_checks_labels():
    task = SegmentationTask()
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    y = torch.randint(0, 4, (2, 8, 8))
    y_ignored = y.clone()
    y_ignored[:, :4] = 255
    expected = F.cross_entropy(logits[:, :, 4:], y[:, 4:])
    torch.testing.assert_close(task.loss(logits, y_ignored), expected)
    all_ignored = task.loss(logits, torch.full((2, 8, 8), 255))
    assert float(all_ignored.detach()) == 0.0 and all_ignored.requires_grad
    with pytest.raises(DataError, match="label 7 is out of range for a model with 4 classes"):
        task.loss(logits, torch.full((2, 8, 8), 7))
    with pytest.raises(DataError, match="do not fit logits"):
        task.loss(logits, y[:, :4])
    assert torch.equal(task.predict({"out": logits}), logits.argmax(1))
    with pytest.raises(DataError, match="'out'"):
        task.predict({"aux": logits})


def test_score_counts_labelled_pixels_only():
    """The clean-set check (nft.core.guard) scores pixel accuracy; 255 pixels are left out."""
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0  # every pixel predicted as class 1
    labels = torch.tensor([[[1, 2], [255, 1]]])
    assert SegmentationTask().score(logits, labels) == (2, 3)


def test_nft_refits_the_classifier_bias_of_a_segmentation_model_not_an_auxiliary_head():
    """The core's output-bias calibration treats every labelled pixel as a sample and finds the
    main classifier, even when an auxiliary head runs after it (torchvision's DeepLabV3)."""
    from torch.utils.data import TensorDataset
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    from nft.core.calibrate import calibrate_output_bias

    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32), torch.randint(0, 4, (8, 32, 32))
    labels[:, :4] = 255
    data = TensorDataset(images, labels)
    tiny = TinySegNet(num_classes=4, width=4).eval()
    info = calibrate_output_bias(tiny, data, SegmentationTask(), device=torch.device("cpu"), batch_size=4)
    assert info["layer"] == "classifier" and len(info["shift"]) == 4
    deeplab = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4,
                                           aux_loss=True).eval()
    before = copy.deepcopy(deeplab.aux_classifier.state_dict())
    info = calibrate_output_bias(deeplab, data, SegmentationTask(), device=torch.device("cpu"), batch_size=4)
    assert info["layer"] == "classifier.4", info
    assert all(torch.equal(v, before[k]) for k, v in deeplab.aux_classifier.state_dict().items())
