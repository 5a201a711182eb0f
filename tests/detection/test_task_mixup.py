"""Detection Task and MixUp: loss dicts summed, per-box weights honoured, seeded mixing."""

import numpy as np
import pytest
import torch

from nft.core import ConfigError, DataError, Mixed, mixed_loss
from nft.core.testing import AugmentationContract
from nft.detection import DetectionMixUp, DetectionTask, build_detector, detection_loss
from nft.detection.augment import mix_pair
from nft.detection.task import _ssd_box_weights

from .helpers import toy_targets


def _ssdlite():
    torch.manual_seed(0)
    return build_detector("ssdlite", 10, size=64, width=0.5).train()


def _images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


class TestDetectionMixUpContract(AugmentationContract):
    def make_augmentation(self):
        return DetectionMixUp(1.0)

    def make_batch(self):
        return _images(2), toy_targets()

    def make_task(self):
        return DetectionTask()

    def make_model(self):
        return _ssdlite()


def test_mixup_keeps_both_box_sets_with_image_weights():
    images, targets = _images(2), toy_targets()
    lam = 0.3
    mixed, target = mix_pair(images[0], targets[0], images[1], targets[1], lam)
    torch.testing.assert_close(mixed, lam * images[0] + (1 - lam) * images[1])
    assert torch.equal(target["boxes"], torch.cat([targets[0]["boxes"], targets[1]["boxes"]]))
    assert target["labels"].tolist() == [3, 7, 5]
    torch.testing.assert_close(target["weights"], torch.tensor([0.3, 0.3, 0.7]))
    assert target["mix_source"].tolist() == [0, 0, 1]


def test_mixup_pads_images_of_different_sizes_without_moving_boxes():
    a, b = torch.ones(3, 20, 30), torch.ones(3, 40, 10)
    ta = {"boxes": torch.tensor([[1.0, 1.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    tb = {"boxes": torch.tensor([[2.0, 25.0, 8.0, 39.0]]), "labels": torch.tensor([2])}
    mixed, target = mix_pair(a, ta, b, tb, 0.5)
    assert mixed.shape == (3, 40, 30)
    assert float(mixed[0, 30, 20]) == 0.0  # outside both images
    assert float(mixed[0, 5, 5]) == 1.0  # inside both
    assert torch.equal(target["boxes"][1], tb["boxes"][0])


def test_mixup_draws_lambda_and_partner_from_the_given_generators():
    aug = DetectionMixUp(1.0)
    images, targets = _images(4), toy_targets() * 2
    out = aug(images, targets, rng=np.random.default_rng(5), generator=torch.Generator().manual_seed(5))
    assert isinstance(out, Mixed) and len(out.targets) == 1 and out.targets[0][1] == 1.0
    lam = float(np.random.default_rng(5).beta(1.0, 1.0))
    order = torch.randperm(4, generator=torch.Generator().manual_seed(5)).tolist()
    for i, j in enumerate(order):
        t = out.targets[0][0][i]
        if i == j:
            assert torch.all(t["weights"] == 1)
            continue
        torch.testing.assert_close(out.inputs[i], lam * images[i] + (1 - lam) * images[j])
        n_own = len(targets[i]["boxes"])
        torch.testing.assert_close(t["weights"][:n_own], torch.full((n_own,), lam))
        torch.testing.assert_close(t["weights"][n_own:], torch.full((len(targets[j]["boxes"]),), 1 - lam))


def test_weighted_ssd_loss_equals_torchvision_with_unit_weights():
    model = _ssdlite()
    images, targets = _images(2), toy_targets()
    torch.manual_seed(1)
    plain = model(images, targets)
    weighted_targets = [{**t, "weights": torch.ones(len(t["boxes"]))} for t in targets]
    with _ssd_box_weights(model):
        ours = model(images, weighted_targets)
    assert "compute_loss" not in model.__dict__  # the class is untouched after the call
    for key in plain:
        torch.testing.assert_close(ours[key], plain[key], rtol=1e-6, atol=1e-6)


def test_ssd_box_weights_scale_each_objects_terms_linearly():
    model = _ssdlite()
    images, targets = _images(2), toy_targets()  # image 0 has two boxes; image 1's box weighs 0

    def losses(w):
        with _ssd_box_weights(model):
            return model(images, [{**targets[0], "weights": torch.tensor(w)},
                                  {**targets[1], "weights": torch.tensor([0.0])}])

    both, first, second = losses([0.25, 0.75]), losses([1.0, 0.0]), losses([0.0, 1.0])
    # box regression has only positive (object) terms: exactly linear in the box weights
    torch.testing.assert_close(both["bbox_regression"],
                               0.25 * first["bbox_regression"] + 0.75 * second["bbox_regression"])
    zero = losses([0.0, 0.0])
    assert float(zero["bbox_regression"]) == 0.0
    assert float(zero["classification"]) > 0  # background terms keep weight 1
    # classification = weighted positives + unweighted negatives
    neg = zero["classification"]
    torch.testing.assert_close(both["classification"] - neg,
                               0.25 * (first["classification"] - neg) + 0.75 * (second["classification"] - neg))


def test_mixed_loss_uses_per_source_losses_for_other_detectors():
    torch.manual_seed(0)
    model = build_detector("fcos", 10, size=64).train()
    images, targets = _images(2), toy_targets()
    mixed, target = mix_pair(images[0], targets[0], images[1], targets[1], 0.4)
    got = detection_loss(model, [mixed], [target])
    own = sum(model([mixed], [targets[0]]).values())
    other = sum(model([mixed], [targets[1]]).values())
    torch.testing.assert_close(got, 0.4 * own + 0.6 * other)


def test_task_trains_and_predicts():
    model = _ssdlite()
    task = DetectionTask()
    images, targets = _images(2), toy_targets()
    loss = mixed_loss(task, task.forward(model, images), Mixed(images, ((targets, 1.0),)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        preds = task.predict(task.forward(model, images))
    assert len(preds) == 2 and set(preds[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(ConfigError, match="training mode"):
        task.loss(preds, targets)


def test_bad_targets_are_named():
    model = _ssdlite()
    images = _images(1)
    with pytest.raises(DataError, match="label 0"):
        detection_loss(model, images, [{"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([0])}])
    with pytest.raises(DataError, match="zero or negative"):
        detection_loss(model, images, [{"boxes": torch.tensor([[5.0, 1, 5, 9]]), "labels": torch.tensor([1])}])
    with pytest.raises(DataError, match="list of 1"):
        detection_loss(model, images, [])


def _prediction(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}


def test_score_counts_objects_found_by_a_confident_detection_of_their_class():
    targets = toy_targets()  # image 0: class 3 and class 7; image 1: class 5
    predictions = [
        _prediction([[4, 6, 26, 30],      # finds the class-3 box
                     [5, 6, 26, 30],      # a duplicate of it: finds nothing more
                     [34, 30, 60, 58]],   # right place, wrong class (4, not 7)
                    [3, 3, 4], [0.9, 0.8, 0.95]),
        _prediction([[10, 10, 40, 44]], [5], [0.2]),  # right box and class, under the threshold
    ]
    assert DetectionTask().score(predictions, targets) == (1, 3)
    assert DetectionTask(score_thresh=0.1).score(predictions, targets) == (2, 3)
    shifted = [_prediction([[4, 20, 26, 44]], [3], [0.9]), _prediction([], [], [])]  # IoU 0.27
    shifted[1]["boxes"] = shifted[1]["boxes"].reshape(0, 4)
    assert DetectionTask().score(shifted, targets) == (0, 3)
    assert DetectionTask(iou_thresh=0.25).score(shifted, targets) == (1, 3)
    with pytest.raises(ConfigError, match="score_thresh"):
        DetectionTask(score_thresh=1.0)


class _FixedDetector(torch.nn.Module):
    """Answers every image with the same boxes (a stand-in for a trained or a wrecked detector)."""

    def __init__(self, boxes, labels):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.answer = _prediction(boxes, labels, [0.9] * len(labels))
        if not labels:
            self.answer["boxes"] = self.answer["boxes"].reshape(0, 4)

    def forward(self, images, targets=None):
        return [dict(self.answer) for _ in images]


def test_purify_collapse_check_scores_detectors_by_recall_on_the_clean_set():
    from nft.core.guard import clean_set_score, collapsed
    from nft.detection import detection_collate

    targets = toy_targets()
    clean = [(image, target) for image, target in zip(_images(2), targets)] * 3
    good = _FixedDetector([[4, 6, 26, 30], [34, 30, 60, 58], [10, 10, 40, 44]], [3, 7, 5])
    wrecked = _FixedDetector([], [])
    before = clean_set_score(good, clean, DetectionTask(), collate_fn=detection_collate)
    after = clean_set_score(wrecked, clean, DetectionTask(), collate_fn=detection_collate)
    # image 0's boxes are all found on image 0; on image 1 only the class-5 box is there to find
    assert before == pytest.approx(1.0) and after == 0.0
    assert collapsed(before, after)
