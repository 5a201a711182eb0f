"""Pascal VOC 2007/2012 and MS-COCO 2017 through torchvision's dataset classes.

Both yield what every detector here takes: ``(image 3×H×W float in [0, 1], {"boxes" N×4 x1 y1 x2
y2 float, "labels" N int64 in 1..C, "image_id" int})``. ``size`` (optional) resizes every image to
``size×size`` and scales its boxes, so a batch stacks and an input-space perturbation has one
shape (SSD resizes to a fixed square anyway).

* VOC (``torchvision.datasets.VOCDetection``, XML annotations): the 20 classes in the usual
  order; VOC's 1-based pixel coordinates become ``xmin − 1, ymin − 1, xmax, ymax``; objects
  marked ``difficult`` are dropped unless ``keep_difficult``.
* COCO (``torchvision.datasets.CocoDetection``, ``instances_*.json``): category ids are mapped,
  in increasing order, to 1..80; ``[x, y, w, h]`` becomes ``x1 y1 x2 y2``; crowd regions and boxes
  under one pixel are dropped.

Each class also reads one image's annotation without decoding the image (``annotations(i)``),
and has ``labels`` (the class of the largest object, per image) for k-per-class selection.
Nothing is downloaded: point ``root`` at a local copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import DataError

__all__ = ["COCO_SPLITS", "VOC_CLASSES", "CocoDataset", "VOCDataset"]

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
COCO_SPLITS = {"train": "train2017", "val": "val2017"}


def _to_tensor(image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255.0)


def _resize(image, boxes: torch.Tensor, size: int | None):
    if size is None:
        return image, boxes
    width, height = image.size
    image = image.resize((size, size))
    scale = torch.tensor([size / width, size / height, size / width, size / height])
    return image, boxes * scale


def _largest_labels(annotations: list[dict]) -> np.ndarray:
    out = np.zeros(len(annotations), dtype=np.int64)
    for i, t in enumerate(annotations):
        if len(t["labels"]):
            area = (t["boxes"][:, 2] - t["boxes"][:, 0]) * (t["boxes"][:, 3] - t["boxes"][:, 1])
            out[i] = int(t["labels"][int(area.argmax())]) - 1
    return out


class VOCDataset(Dataset):
    """Pascal VOC detection from a local ``VOCdevkit`` (``root`` holds ``VOCdevkit/VOC<year>``)."""

    classes = VOC_CLASSES
    num_classes = len(VOC_CLASSES)

    def __init__(self, root: str | Path, *, year: str = "2007", image_set: str = "trainval",
                 size: int | None = None, keep_difficult: bool = False) -> None:
        from torchvision.datasets import VOCDetection

        root = Path(root)
        if not (root / "VOCdevkit" / f"VOC{year}").is_dir():
            raise DataError(f"no Pascal VOC {year} under {root} (expected {root}/VOCdevkit/VOC{year}"
                            "/{Annotations,ImageSets/Main,JPEGImages}); download it there first")
        try:
            self.voc = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        except (RuntimeError, ValueError, FileNotFoundError) as err:
            raise DataError(f"Pascal VOC {year} {image_set} in {root} cannot be read: {err}") from None
        self.size, self.keep_difficult = size, keep_difficult
        self._index = {name: i + 1 for i, name in enumerate(VOC_CLASSES)}
        self._cache: dict[int, dict] = {}
        self.labels = _largest_labels([self.annotations(i) for i in range(len(self))])

    def __len__(self) -> int:
        return len(self.voc)

    def _parse(self, tree: dict, index: int) -> dict:
        objects = tree["annotation"].get("object", [])
        if isinstance(objects, dict):
            objects = [objects]
        boxes, labels = [], []
        for obj in objects:
            if not self.keep_difficult and str(obj.get("difficult", "0")) == "1":
                continue
            name = obj["name"].strip()
            if name not in self._index:
                raise DataError(f"VOC image {index} has an object of unknown class {name!r}")
            b = obj["bndbox"]
            x1, y1, x2, y2 = (float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x2 <= x1 - 1 or y2 <= y1 - 1:
                continue
            boxes.append([x1 - 1, y1 - 1, x2, y2])
            labels.append(self._index[name])
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64), "image_id": index}

    def _size_of(self, tree: dict) -> tuple[int, int]:
        size = tree["annotation"]["size"]
        return int(size["width"]), int(size["height"])

    def annotations(self, index: int) -> dict:
        if index not in self._cache:
            import xml.etree.ElementTree as ET

            tree = self.voc.parse_voc_xml(ET.parse(self.voc.annotations[index]).getroot())
            target = self._parse(tree, index)
            if self.size is not None:
                w, h = self._size_of(tree)
                scale = torch.tensor([self.size / w, self.size / h] * 2)
                target["boxes"] = target["boxes"] * scale
            self._cache[index] = target
        t = self._cache[index]
        return {"boxes": t["boxes"].clone(), "labels": t["labels"].clone(), "image_id": index}

    def __getitem__(self, index: int):
        image, tree = self.voc[index]
        target = self._parse(tree, index)
        image, target["boxes"] = _resize(image, target["boxes"], self.size)
        return _to_tensor(image), target


class CocoDataset(Dataset):
    """MS-COCO 2017 detection from a local copy: ``root/{train2017,val2017}`` and
    ``root/annotations/instances_{train,val}2017.json``."""

    def __init__(self, root: str | Path, *, split: str = "val", size: int | None = None) -> None:
        from torchvision.datasets import CocoDetection

        if split not in COCO_SPLITS:
            raise DataError(f"COCO split {split!r} is unknown; use one of {sorted(COCO_SPLITS)}")
        root = Path(root)
        folder = root / COCO_SPLITS[split]
        ann_file = root / "annotations" / f"instances_{COCO_SPLITS[split]}.json"
        if not folder.is_dir() or not ann_file.is_file():
            raise DataError(f"no COCO 2017 {split} under {root} (expected {folder} and {ann_file}); "
                            "download it there first")
        try:
            self.coco = CocoDetection(str(folder), str(ann_file))
        except (KeyError, ValueError) as err:
            raise DataError(f"{ann_file} is not a COCO instances file: {err}") from None
        categories = sorted(self.coco.coco.getCatIds())
        self._index = {cat: i + 1 for i, cat in enumerate(categories)}
        self.classes = tuple(self.coco.coco.loadCats(c)[0]["name"] for c in categories)
        self.num_classes = len(categories)
        self.size = size
        self.labels = _largest_labels([self.annotations(i) for i in range(len(self))])

    def __len__(self) -> int:
        return len(self.coco)

    def _convert(self, anns: list[dict], index: int, width: int, height: int) -> dict:
        boxes, labels = [], []
        for ann in anns:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w < 1 or h < 1:
                continue
            if ann["category_id"] not in self._index:
                raise DataError(f"COCO image {index} has unknown category {ann['category_id']}")
            boxes.append([x, y, min(x + w, width), min(y + h, height)])
            labels.append(self._index[ann["category_id"]])
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.size is not None:
            boxes_t = boxes_t * torch.tensor([self.size / width, self.size / height] * 2)
        return {"boxes": boxes_t, "labels": torch.tensor(labels, dtype=torch.int64), "image_id": index}

    def annotations(self, index: int) -> dict:
        api = self.coco.coco
        image_id = self.coco.ids[index]
        info = api.loadImgs(image_id)[0]
        return self._convert(api.loadAnns(api.getAnnIds(imgIds=image_id)), index,
                             int(info["width"]), int(info["height"]))

    def __getitem__(self, index: int):
        image, anns = self.coco[index]
        width, height = image.size
        target = self._convert(anns, index, width, height)
        if self.size is not None:
            image = image.resize((self.size, self.size))
        return _to_tensor(image), target
