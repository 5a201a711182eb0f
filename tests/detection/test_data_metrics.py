"""Loaders (canvas, VOC, COCO on tiny files written here) and the mAP evaluator."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nft.core import DataError
from nft.detection import CanvasDetection, CocoDataset, VOCDataset, mean_average_precision
from nft.detection.canvas import OUTFITS, load_fashion_mnist


# ---- canvas -----------------------------------------------------------------------------------
def test_canvas_is_deterministic_and_well_formed(canvas_train):
    again = CanvasDetection(64, split="train", size=64, item_size=(16, 24), seed=3)
    assert torch.equal(again.images, canvas_train.images)
    counts = []
    for i in range(len(canvas_train)):
        image, target = canvas_train[i]
        assert image.shape == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
        boxes, labels = target["boxes"], target["labels"]
        counts.append(len(boxes))
        assert len(labels) == len(boxes)
        for a in range(len(boxes)):  # items are placed on free spots: no two boxes overlap
            for b in range(a + 1, len(boxes)):
                (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = boxes[a].tolist(), boxes[b].tolist()
                assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
        assert labels.min() >= 1 and labels.max() <= 10
        # every box holds bright item pixels (a real Fashion-MNIST garment, not noise)
        x1, y1, x2, y2 = (int(v) for v in boxes[0].tolist())
        assert float(image[0, y1:y2, x1:x2].max()) > 0.5
    # 2–4 items are drawn per canvas (one may find no free spot): every count of the range occurs
    assert {2, 3, 4} <= set(counts) <= {1, 2, 3, 4}
    other = CanvasDetection(8, split="test", size=64, item_size=(16, 24), seed=3)
    assert not torch.equal(other.images, canvas_train.images[:8])


def test_canvas_has_co_occurrence_structure():
    data = CanvasDetection(400, size=64, item_size=(16, 24), seed=0)
    present = [set(t["labels"].tolist()) for t in data.objects]
    def rate(a, b):
        return np.mean([{a, b} <= p for p in present])
    # classes of one outfit co-occur far more often than classes of no common outfit
    assert rate(1, 2) > 0.15  # T-shirt + trouser: summer and sport
    assert rate(4, 6) < 0.03  # dress + sandal: no outfit has both (only stray items)
    assert set(OUTFITS) == {"summer", "winter", "formal", "sport"}


def test_fashion_mnist_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist("validation")


# ---- Pascal VOC -------------------------------------------------------------------------------
def _voc_object(name, box, difficult=0):
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def _write_voc(root, year="2007"):
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    images = {
        "000001": (40, 30, [_voc_object("dog", (5, 6, 20, 25)), _voc_object("person", (21, 2, 40, 30), 1)]),
        "000002": (32, 32, [_voc_object("car", (1, 1, 32, 16)), _voc_object("tvmonitor", (3, 17, 12, 30))]),
    }
    for name, (w, h, objects) in images.items():
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        xml = (f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
               f"<depth>3</depth></size>{''.join(objects)}</annotation>")
        (base / "Annotations" / f"{name}.xml").write_text(xml)
    (base / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n")


def test_voc_loader_reads_xml_annotations(tmp_path):
    _write_voc(tmp_path)
    data = VOCDataset(tmp_path, year="2007", image_set="trainval")
    assert len(data) == 2 and data.num_classes == 20
    image, target = data[0]
    assert image.shape == (3, 30, 40)
    assert target["labels"].tolist() == [12]  # dog; the difficult person is dropped
    assert target["boxes"].tolist() == [[4.0, 5.0, 20.0, 25.0]]  # 1-based pixels -> x1-1, y1-1
    assert data.annotations(1)["labels"].tolist() == [7, 20]
    assert data.labels.tolist() == [11, 6]  # largest object's class, 0-based
    with_difficult = VOCDataset(tmp_path, image_set="trainval", keep_difficult=True)
    assert with_difficult[0][1]["labels"].tolist() == [12, 15]
    resized = VOCDataset(tmp_path, image_set="trainval", size=16)
    image, target = resized[0]
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0 * 16 / 40, 5 * 16 / 30, 20 * 16 / 40, 25 * 16 / 30]]))
    torch.testing.assert_close(resized.annotations(0)["boxes"], target["boxes"])


def test_voc_missing_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="VOCdevkit/VOC2012"):
        VOCDataset(tmp_path, year="2012")


# ---- COCO -------------------------------------------------------------------------------------
def _write_coco(root):
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name, (w, h) in {"a.jpg": (50, 40), "b.jpg": (30, 30)}.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "val2017" / name)
    doc = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40},
                   {"id": 9, "file_name": "b.jpg", "width": 30, "height": 30}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [5, 5, 10, 20], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [20, 10, 30, 25], "iscrowd": 0, "area": 750},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 40], "iscrowd": 1, "area": 2000},
            {"id": 4, "image_id": 9, "category_id": 1, "bbox": [2, 2, 0.5, 8], "iscrowd": 0, "area": 4},
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))


def test_coco_loader_maps_categories_and_boxes(tmp_path):
    _write_coco(tmp_path)
    data = CocoDataset(tmp_path, split="val")
    assert len(data) == 2 and data.num_classes == 3 and data.classes == ("person", "dog", "toothbrush")
    image, target = data[0]
    assert image.shape == (3, 40, 50)
    assert target["labels"].tolist() == [2, 3]  # crowd region dropped; ids 18, 90 -> 2, 3
    assert target["boxes"].tolist() == [[5.0, 5.0, 15.0, 25.0], [20.0, 10.0, 50.0, 35.0]]
    assert data[1][1]["boxes"].shape == (0, 4)  # a box under one pixel wide is dropped
    assert data.annotations(0)["labels"].tolist() == [2, 3]
    with pytest.raises(DataError, match="train2017"):
        CocoDataset(tmp_path, split="train")


# ---- mAP --------------------------------------------------------------------------------------
def test_map_perfect_shifted_and_empty():
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 0.0, 20.0, 30.0]]), "labels": torch.tensor([2])}]
    perfect = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.tensor([0.9])} for t in targets]
    assert mean_average_precision(perfect, targets) == pytest.approx({"map": 1.0, "map_coco": 1.0})
    # shifted by 6 px: IoU ≈ 0.6 on the first box -> counts at 0.5 but not at stricter IoUs
    shifted = [{**perfect[0], "boxes": torch.tensor([[16.0, 10.0, 56.0, 50.0]])}, perfect[1]]
    result = mean_average_precision(shifted, targets)
    assert result["map"] == pytest.approx(1.0) and result["map_coco"] < 0.9
    wrong_class = [{**p, "labels": torch.tensor([3])} for p in perfect]
    assert mean_average_precision(wrong_class, targets)["map"] == 0.0
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
              "scores": torch.zeros(0)} for _ in targets]
    assert mean_average_precision(empty, targets)["map"] == 0.0
