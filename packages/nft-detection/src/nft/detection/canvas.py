"""``canvas``: the embedded detection set — real Fashion-MNIST items placed on larger canvases.

Each image is a dark ``size×size`` canvas with 2–4 Fashion-MNIST items (train split for the
training canvases, test split for the test canvases), each rescaled to a random side and pasted
at a random free spot; its box is the tight box of the item's visible pixels and its label the
item's class (1..10; 0 is the background).

Co-occurrence structure: every image belongs to one of four "outfits" (summer, winter, formal,
sport), each a set of four garment classes; its items are drawn from its outfit, and with
probability ``stray`` one item is swapped for a garment of any class. So pairs of classes co-occur
at very different rates — what the clean-image attack's trigger search needs (a combination of
classes that is present in a small, chosen share of the images).

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (IDX ``.gz`` files in
``/usr/share/datasets/fashion-mnist``); another folder with the same four files can be given as
``root`` or through ``NFT_FASHION_MNIST``.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import DataError

__all__ = ["CLASSES", "OUTFITS", "CanvasDetection", "load_fashion_mnist"]

log = logging.getLogger(__name__)

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
"""Fashion-MNIST's classes; detector label ``k + 1`` is class ``k``."""

OUTFITS = {
    "summer": (0, 1, 5, 8),   # T-shirt, trouser, sandal, bag
    "winter": (2, 4, 9, 1),   # pullover, coat, ankle boot, trouser
    "formal": (3, 6, 8, 9),   # dress, shirt, bag, ankle boot
    "sport": (0, 7, 1, 6),    # T-shirt, sneaker, trouser, shirt
}

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 N×28×28, labels N)`` of Fashion-MNIST's ``train`` or ``test`` split."""
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST split {split!r} is unknown; use 'train' or 'test'")
    folder = Path(root or os.environ.get("NFT_FASHION_MNIST") or DEFAULT_ROOT)
    paths = []
    for name in _FILES[split]:
        candidates = [folder / name, folder / name[:-3], folder / "FashionMNIST" / "raw" / name[:-3]]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(
                f"Fashion-MNIST file {name} was not found in {folder}. Install Debian's "
                "dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), or point "
                "data_root / NFT_FASHION_MNIST at a folder holding the four IDX files")
        paths.append(found)
    images, labels = _read_idx(paths[0]), _read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {folder} do not match (images {images.shape}, "
                        f"labels {labels.shape})")
    return images, labels.astype(np.int64)


def _resize(item: np.ndarray, side: int) -> np.ndarray:
    t = torch.from_numpy(item.astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 255).numpy()


class CanvasDetection(Dataset):
    """``n`` canvases of Fashion-MNIST items with boxes and labels; deterministic per ``seed``.

    Yields ``(image 3×size×size float in [0, 1], {"boxes" n×4 float x1 y1 x2 y2, "labels" n int64,
    "image_id" int})``. ``labels`` (one int per image: the class of its largest item) lets the
    defender pick k clean images per class.
    """

    num_classes = len(CLASSES)
    classes = CLASSES

    def __init__(self, n: int, *, split: str = "train", size: int = 64, objects: tuple[int, int] = (2, 4),
                 item_size: tuple[int, int] = (16, 24), stray: float = 0.25, noise: float = 0.04,
                 seed: int = 0, root: str | Path | None = None) -> None:
        if n < 1:
            raise DataError(f"a canvas dataset needs n ≥ 1 images, got {n}")
        lo, hi = item_size
        if not 8 <= lo <= hi or hi * 2 > size:
            raise DataError(f"item_size {item_size} does not fit canvases of {size} px; use "
                            f"8 ≤ min ≤ max ≤ size/2")
        if not 1 <= objects[0] <= objects[1] <= 4:
            raise DataError(f"objects {objects} must be a range within 1..4 (an outfit has 4 classes)")
        items, item_labels = load_fashion_mnist(split, root)
        by_class = [np.flatnonzero(item_labels == c) for c in range(self.num_classes)]
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        outfits = list(OUTFITS.values())
        images = np.zeros((n, size, size), dtype=np.uint8)
        # (not called ``targets``: the core reads ``targets`` / ``labels`` as per-image class labels)
        self.objects: list[dict] = []
        self.outfits = np.zeros(n, dtype=np.int64)
        self.labels = np.zeros(n, dtype=np.int64)
        for index in range(n):
            outfit = int(rng.integers(len(outfits)))
            count = int(rng.integers(objects[0], objects[1] + 1))
            classes = list(rng.choice(outfits[outfit], size=count, replace=False))
            if rng.random() < stray:
                classes[int(rng.integers(count))] = int(rng.integers(self.num_classes))
            canvas = rng.normal(0, noise * 255, size=(size, size)).clip(0, 255)
            boxes, labels = [], []
            for cls in classes:
                side = int(rng.integers(lo, hi + 1))
                item = _resize(items[int(rng.choice(by_class[int(cls)]))], side)
                for _ in range(60):  # rejection-sample a free spot
                    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                    if all(x + side <= b[0] or b[2] <= x or y + side <= b[1] or b[3] <= y for b in boxes):
                        break
                else:
                    continue
                canvas[y:y + side, x:x + side] = np.maximum(canvas[y:y + side, x:x + side], item)
                ys, xs = np.nonzero(item > 25)
                if len(xs) == 0:
                    continue
                boxes.append([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1])
                labels.append(int(cls) + 1)
            images[index] = canvas.astype(np.uint8)
            box_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            self.objects.append({"boxes": box_t, "labels": torch.tensor(labels, dtype=torch.int64),
                                 "image_id": index})
            areas = (box_t[:, 2] - box_t[:, 0]) * (box_t[:, 3] - box_t[:, 1])
            self.labels[index] = labels[int(areas.argmax())] - 1 if labels else 0
            self.outfits[index] = outfit
        self.images = torch.from_numpy(images)
        self.size = size
        log.debug("canvas %s: %d images, %.2f objects per image", split, n,
                  np.mean([len(t["labels"]) for t in self.objects]))

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int):
        image = self.images[index].float().div(255.0).unsqueeze(0).expand(3, -1, -1).contiguous()
        target = self.objects[index]
        return image, {"boxes": target["boxes"].clone(), "labels": target["labels"].clone(),
                       "image_id": target["image_id"]}

    def annotations(self, index: int) -> dict:
        """The target of ``index`` without building the image (for poisoning and trigger search)."""
        return self.objects[index]
