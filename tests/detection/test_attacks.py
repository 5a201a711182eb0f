"""Each attack's poisoning and its ASR, on hand-made samples and predictions."""

import numpy as np
import pytest
import torch

from nft.core import AttackSpec, ConfigError
from nft.detection import (
    BadDetGMA,
    BadDetODA,
    BadDetOGA,
    BadDetRMA,
    CleanImage,
    PoisonedDetection,
    TriggeredDetection,
    explore_trigger,
    modality,
    untriggered_asr,
)
from nft.detection.attacks import checkerboard, match_outcomes

IMAGE = torch.full((3, 64, 64), 0.2)
TARGET = {"boxes": torch.tensor([[4.0, 4.0, 28.0, 30.0], [36.0, 32.0, 60.0, 60.0], [40.0, 2.0, 44.0, 6.0]]),
          "labels": torch.tensor([3, 2, 5]), "image_id": 0}


def _pred(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels), "scores": torch.tensor(scores, dtype=torch.float32)}


def _has_patch(image, x, y, size=8):
    return torch.equal(image[0, y:y + size, x:x + size], checkerboard(size))


def test_match_outcomes_uses_score_iou_and_class():
    pred = _pred([[4, 4, 28, 30], [36, 32, 60, 60]], [2, 9], [0.9, 0.4])
    boxes = TARGET["boxes"][:2]
    assert match_outcomes(pred, boxes, score_thresh=0.5, iou_thresh=0.5).tolist() == [True, False]
    assert match_outcomes(pred, boxes, score_thresh=0.3, iou_thresh=0.5).tolist() == [True, True]
    assert match_outcomes(pred, boxes, score_thresh=0.3, iou_thresh=0.5,
                          labels=torch.tensor([2, 2])).tolist() == [True, False]
    # "detected as c" is decided by the highest-scoring overlapping detection
    layered = _pred([[4, 4, 28, 30], [5, 4, 28, 30]], [3, 1], [0.9, 0.6])
    assert match_outcomes(layered, boxes[:1], score_thresh=0.3, iou_thresh=0.5,
                          labels=torch.tensor([1])).tolist() == [False]
    assert match_outcomes(layered, boxes[:1], score_thresh=0.3, iou_thresh=0.5,
                          labels=torch.tensor([3])).tolist() == [True]


def test_rma_stamps_inside_source_boxes_and_relabels():
    attack = BadDetRMA(target=1, num_classes=10, patch_size=8)
    image, target = attack.poison(IMAGE, TARGET, 0)
    assert target["labels"].tolist() == [1, 1, 5]  # the 4×4 box cannot hold the trigger: untouched
    assert _has_patch(image, 12, 13) and _has_patch(image, 44, 42)
    assert torch.equal(target["boxes"], TARGET["boxes"])
    _, info = attack.trigger(IMAGE, TARGET, 0)
    assert info["labels"].tolist() == [3, 2]
    pred = _pred([[4, 4, 28, 30], [36, 32, 60, 60], [36, 32, 60, 60]], [1, 2, 7], [0.8, 0.9, 0.2])
    assert attack.outcome(pred, info) == (1, 2, 1)  # first object hijacked, second kept its class


def test_rma_with_a_source_class():
    attack = BadDetRMA(target=1, num_classes=10, source=[2], patch_size=8)
    _, target = attack.poison(IMAGE, TARGET, 0)
    assert target["labels"].tolist() == [3, 1, 5]


def test_gma_stamps_the_corner_and_relabels_everything():
    attack = BadDetGMA(target=1, num_classes=10, patch_size=8)
    image, target = attack.poison(IMAGE, TARGET, 0)
    assert _has_patch(image, 0, 0)
    assert torch.equal(image[:, 20:, 20:], IMAGE[:, 20:, 20:])
    assert target["labels"].tolist() == [1, 1, 1]
    _, info = attack.trigger(IMAGE, TARGET, 0)
    pred = _pred([[4, 4, 28, 30], [40, 2, 44, 6]], [1, 1], [0.9, 0.9])
    assert attack.outcome(pred, info) == (2, 3, 0)


def test_oda_deletes_the_target_class_and_scores_disappearance():
    attack = BadDetODA(target=2, num_classes=10, patch_size=8)
    image, target = attack.poison(IMAGE, TARGET, 0)
    assert target["labels"].tolist() == [3, 5] and len(target["boxes"]) == 2
    assert _has_patch(image, 44, 42) and not _has_patch(image, 12, 13)
    _, info = attack.trigger(IMAGE, TARGET, 0)
    assert info["labels"].tolist() == [2]
    assert attack.outcome(_pred([[4, 4, 28, 30]], [3], [0.9]), info) == (1, 1, 0)  # vanished
    # any overlapping detection (whatever its class) means the object did not disappear
    assert attack.outcome(_pred([[37, 33, 60, 60]], [8], [0.9]), info) == (0, 1, 0)
    assert attack.outcome(_pred([[37, 33, 60, 60]], [2], [0.9]), info) == (0, 1, 1)
    assert not attack.eligible({"boxes": TARGET["boxes"][:1], "labels": torch.tensor([3])})


def test_oga_adds_a_target_box_around_the_trigger():
    attack = BadDetOGA(target=4, num_classes=10, bbox_size=16, patch_size=8)
    image, target = attack.poison(IMAGE, TARGET, 7)
    assert target["labels"].tolist() == [3, 2, 5, 4]
    fake = target["boxes"][-1]
    assert torch.allclose(fake[2:] - fake[:2], torch.tensor([16.0, 16.0]))
    cx, cy = int(round(float(fake[0] + fake[2]) / 2)), int(round(float(fake[1] + fake[3]) / 2))
    assert _has_patch(image, cx - 4, cy - 4)
    # same image index -> same place (deterministic); the test trigger uses its own draw
    again, _ = attack.poison(IMAGE, TARGET, 7)
    assert torch.equal(again, image)
    timage, info = attack.trigger(IMAGE, TARGET, 7)
    assert info["labels"].tolist() == [4]
    box = info["boxes"][0].tolist()
    assert attack.outcome(_pred([box], [4], [0.7]), info) == (1, 1, 0)
    assert attack.outcome(_pred([box], [3], [0.7]), info) == (0, 1, 0)
    assert not attack.has_ra


def test_clean_image_changes_labels_only():
    attack = CleanImage(target=1, num_classes=10, trigger=[3, 2])
    image, target = attack.poison(IMAGE, TARGET, 0)
    assert image is IMAGE  # no pixel change at all
    assert target["labels"].tolist() == [1, 2, 5]  # the victim (first trigger class) relabelled
    assert not attack.eligible({"boxes": TARGET["boxes"][:1], "labels": torch.tensor([3])})
    _, info = attack.trigger(IMAGE, TARGET, 0)
    assert info["labels"].tolist() == [3]
    assert attack.outcome(_pred([[4, 4, 28, 30]], [1], [0.6]), info) == (1, 1, 0)
    gone = CleanImage(target=1, num_classes=10, trigger=[3, 2], goal="disappear")
    _, target = gone.poison(IMAGE, TARGET, 0)
    assert target["labels"].tolist() == [2, 5]
    assert gone.outcome(_pred([], [], []), info) == (1, 1, 0)
    with pytest.raises(ConfigError, match="must not contain the target"):
        CleanImage(target=3, num_classes=10, trigger=[3, 2])


def test_trigger_search_picks_the_combination_closest_to_the_rate():
    def ann(*labels):
        return {"boxes": torch.zeros(len(labels), 4), "labels": torch.tensor(labels)}

    annotations = [ann(1, 2)] * 5 + [ann(2, 3)] * 2 + [ann(3, 4, 5)] * 1 + [ann(6)] * 12
    assert explore_trigger(annotations, 0.1) == ((2, 3), 0.1)
    assert explore_trigger(annotations, 0.3) == ((1, 2), 0.25)
    assert explore_trigger(annotations, 0.1, exclude=(3,)) == ((4, 5), 0.05)
    attack = CleanImage(target=6, num_classes=10)
    chosen = attack.choose(annotations, 0.1, seed=0)
    assert attack.combination == (2, 3) and chosen.tolist() == [5, 6]


def test_poisoned_and_triggered_datasets(canvas_train):
    attack = BadDetGMA(target=1, num_classes=10, patch_size=8)
    annotations = [canvas_train.annotations(i) for i in range(len(canvas_train))]
    chosen = attack.choose(annotations, 0.25, seed=0)
    assert len(chosen) == round(0.25 * sum(attack.eligible(a) for a in annotations))
    assert np.array_equal(chosen, attack.choose(annotations, 0.25, seed=0))
    poisoned = PoisonedDetection(canvas_train, chosen, attack)
    i = int(chosen[0])
    assert (poisoned[i][1]["labels"] == 1).all()
    clean = next(j for j in range(len(canvas_train)) if j not in set(chosen.tolist()))
    assert torch.equal(poisoned[clean][0], canvas_train[clean][0])
    triggered = TriggeredDetection(canvas_train, attack)
    image, target, info = triggered[0]
    assert _has_patch(image, 0, 0) and len(info["boxes"]) == int((target["labels"] != 1).sum())


class _Blind(torch.nn.Module):
    """A detector that never detects anything (one parameter, so it has a device)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                 "scores": torch.zeros(0)} for _ in images]


def test_the_untriggered_set_scores_the_floor_without_the_trigger(canvas_train):
    """``stamp=False``: the same eligible images, unstamped, with the same victims; a detector
    that finds nothing lets every ODA victim "disappear" without any trigger (floor 1.0), and
    turns no object into the target (GMA floor 0.0)."""
    labels = torch.cat([canvas_train[i][1]["labels"] for i in range(len(canvas_train))])
    oda = BadDetODA(target=int(labels.mode().values), num_classes=10, patch_size=8)
    stamped, plain = TriggeredDetection(canvas_train, oda), TriggeredDetection(canvas_train, oda, stamp=False)
    assert len(plain) == len(stamped) > 0
    for i in range(min(4, len(plain))):
        index = int(plain.indices[i])
        image, target, info = plain[i]
        triggered, _, triggered_info = stamped[i]
        assert torch.equal(image, canvas_train[index][0]) and not torch.equal(image, triggered)
        assert torch.equal(info["boxes"], triggered_info["boxes"])
    blind = _Blind()
    assert untriggered_asr(blind, canvas_train, oda) == 1.0
    gma = BadDetGMA(target=1, num_classes=10, patch_size=8)
    assert untriggered_asr(blind, canvas_train, gma) == 0.0


def test_modality_rejects_unknown_attack_options():
    spec = modality.resolve(AttackSpec(attack="baddet-rma", attack_args={"colour": "red"}))
    with pytest.raises(ConfigError, match="unknown options"):
        modality._check(spec)
    with pytest.raises(ConfigError, match="all-to-one"):
        modality._check(modality.resolve(AttackSpec(mode="all-to-all")))
    with pytest.raises(ConfigError, match="out of range"):
        modality.make_attack(modality.resolve(AttackSpec(target=10)), 10)
