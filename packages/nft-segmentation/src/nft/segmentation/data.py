"""Segmentation datasets: every loader yields ``(float image C×H×W in [0, 1], int64 label map H×W)``.

Label maps hold class indices, with ``255`` marking pixels that are scored nowhere (Pascal VOC's
object boundaries, a trigger's footprint). Images stay in raw pixel space, because triggers are
defined on pixels; the models see them as they are (their first normalisation layer adapts).

Loaders:

* ``canvas-seg`` (embedded default): real Fashion-MNIST objects, read from the IDX ``.gz`` files
  Debian's ``dataset-fashion-mnist`` installs, resized, tinted and pasted on noisy coloured
  canvases; the object's pixels (intensity above a threshold) are labelled with its class
  (1..10), the rest is background (0). Canvas ``i`` is a pure function of ``(seed, i)``, so the
  set is fixed like a real dataset and a prefix of any length is the same canvases.
* ``voc-seg``: Pascal VOC 2012 segmentation in torchvision's ``VOCSegmentation`` layout
  (``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}``), resized to
  one size (bilinear for images, nearest for label maps).

Every dataset also knows, per image, how many pixels of each class it has
(:meth:`class_pixel_counts`): the attacks poison images that contain the victim class, and its
``targets`` (the dominant object class of each image) let the core pick a class-balanced
clean set (``nft purify --clean-per-class k``).

Nothing here downloads: a missing dataset is a :class:`~nft.core.DataError` that says where the
files were looked for and how to get them.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import ConfigError, DataError

__all__ = [
    "CANVAS_CLASSES",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "IGNORE_INDEX",
    "SegmentationData",
    "TensorSegmentation",
    "VOCSegmentationSet",
    "VOC_CLASSES",
    "load_dataset",
    "make_canvases",
    "read_idx",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
"""Label of pixels no loss and no metric looks at (VOC's boundary band; a trigger's footprint)."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CANVAS_CLASSES = ("background", "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                  "shirt", "sneaker", "bag", "ankle-boot")
"""``canvas-seg`` classes: 0 is background, ``k + 1`` is Fashion-MNIST class ``k``."""

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


# ---- the common interface ------------------------------------------------------------------
class _CountsMixin:
    """``targets`` (dominant object class per image) and per-class presence from pixel counts."""

    num_classes: int

    def class_pixel_counts(self) -> np.ndarray:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    @property
    def targets(self) -> np.ndarray:
        """Image-level label: the class with most pixels other than background (0 when none).

        Only used to draw a class-balanced clean subset; the training target is the label map.
        """
        counts = self.class_pixel_counts()
        objects = counts[:, 1:]
        labels = objects.argmax(axis=1) + 1
        labels[objects.sum(axis=1) == 0] = 0
        return labels.astype(np.int64)

    def contains(self, class_id: int) -> np.ndarray:
        """Boolean per image: does its label map have any pixel of ``class_id``."""
        return self.class_pixel_counts()[:, int(class_id)] > 0


class TensorSegmentation(_CountsMixin, Dataset):
    """Images (uint8 or float, N×C×H×W) and label maps (N×H×W) held in memory."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, num_classes: int) -> None:
        if images.ndim != 4 or masks.ndim != 3:
            raise DataError(f"images must be N×C×H×W and label maps N×H×W, got {tuple(images.shape)} "
                            f"and {tuple(masks.shape)}")
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise DataError(f"{images.shape[0]} images of size {tuple(images.shape[-2:])} do not match "
                            f"{masks.shape[0]} label maps of size {tuple(masks.shape[-2:])}")
        self.images, self.masks, self.num_classes = images, masks, int(num_classes)
        self._counts: np.ndarray | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        x = self.images[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, self.masks[index].long()

    def class_pixel_counts(self) -> np.ndarray:
        if self._counts is None:
            flat = self.masks.reshape(len(self), -1).long()
            valid = flat < self.num_classes
            counts = torch.zeros(len(self), self.num_classes, dtype=torch.int64)
            counts.scatter_add_(1, flat.clamp(max=self.num_classes - 1), valid.long())
            self._counts = counts.numpy()
        return self._counts


@dataclass
class SegmentationData:
    """A dataset's train and test splits and what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    class_names: tuple[str, ...]
    shape: tuple[int, int, int]
    """One image's shape, C×H×W."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---- Fashion-MNIST canvases -----------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain): the MNIST family's format (magic, dims, uint8 data)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        "re-install the Fashion-MNIST files")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem, root / "FashionMNIST" / "raw" / stem,
                      root / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_objects(root: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` (``train`` / ``test``) as uint8 images N×28×28 and labels."""
    folder = Path(root) if root else FASHION_MNIST_DIR
    stems = FASHION_MNIST_FILES[split]
    paths = [_find(folder, stem) for stem in stems]
    missing = [stem for stem, path in zip(stems, paths) if path is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST was not found in {folder} (missing {', '.join(missing)}); canvas-seg "
            "pastes its objects on canvases. Install it with `sudo apt-get install "
            f"dataset-fashion-mnist` (Debian/Ubuntu; the IDX files land in {FASHION_MNIST_DIR}), "
            "or pass --data-root DIR pointing at a folder with the four *-idx?-ubyte(.gz) files"
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{paths[0]} and {paths[1]} do not hold matching images and labels")
    return images, labels.astype(np.int64)


def _streams(seed: int, n: int):
    """One random stream per quantity: the first ``n`` draws of a stream do not depend on ``n``,
    so a set of ``n`` canvases is a prefix of any larger set with the same seed."""
    return lambda field: np.random.default_rng(np.random.SeedSequence([seed, field]))


def make_canvases(
    objects: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    size: int = 32,
    seed: int = 0,
    object_size: tuple[int, int] = (16, 22),
    two_objects: float = 0.7,
    threshold: float = 0.25,
    noise: float = 0.04,
) -> TensorSegmentation:
    """``n`` RGB canvases with one or two pasted objects and their label maps.

    Each canvas has a dim background colour with a soft gradient and noise, then one object
    (two with probability ``two_objects``), each a random Fashion-MNIST image resized to a side
    in ``object_size``, tinted with a random bright colour (so colour says nothing about the
    class) and alpha-blended by its own intensity at a random position. Pixels whose object
    intensity exceeds ``threshold`` get the object's class; the second object covers the first,
    in the image and in the label map. Canvas ``i`` is the same whatever ``n`` is.
    """
    import torch.nn.functional as F

    if n < 1:
        raise ConfigError(f"a canvas set needs n ≥ 1 canvases, got {n}")
    lo, hi = object_size
    if not 4 <= lo <= hi <= size:
        raise ConfigError(f"object_size {object_size} must satisfy 4 ≤ low ≤ high ≤ canvas size {size}")
    stream = _streams(seed, n)
    base = stream(0).uniform(0.0, 0.45, size=(n, 3)).astype(np.float32)
    slope = stream(1).uniform(-0.08, 0.08, size=(n, 2)).astype(np.float32)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    canvas = (base[:, :, None, None] + slope[:, 0, None, None, None] * ramp[None, None, :, None]
              + slope[:, 1, None, None, None] * ramp[None, None, None, :])
    canvas += noise * stream(2).standard_normal(size=(n, 3, size, size), dtype=np.float32)
    present = np.stack([np.ones(n, bool), stream(3).random(n) < two_objects], axis=1)
    which = stream(4).integers(0, len(objects), size=(n, 2))
    sides = stream(5).integers(lo, hi + 1, size=(n, 2))
    corner = stream(6).random(size=(n, 2, 2))
    tints = stream(7).uniform(0.55, 1.0, size=(n, 2, 3)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    alphas: dict[tuple[int, int], np.ndarray] = {}
    for side in np.unique(sides[present]):  # resize every needed object once per side length
        slots = np.argwhere(present & (sides == side))
        chosen = torch.from_numpy(objects[which[slots[:, 0], slots[:, 1]]].astype(np.float32) / 255.0)
        resized = F.interpolate(chosen[:, None], size=(int(side), int(side)), mode="bilinear",
                                antialias=True, align_corners=False)[:, 0].clamp_(0, 1).numpy()
        for (i, j), alpha in zip(slots.tolist(), resized):
            alphas[i, j] = alpha
    for i in range(n):
        for j in (0, 1):
            if not present[i, j]:
                continue
            side = int(sides[i, j])
            top, left = (int(c * (size - side + 1)) for c in corner[i, j])
            alpha = alphas[i, j]
            window = canvas[i, :, top:top + side, left:left + side]
            window *= 1 - alpha
            window += tints[i, j][:, None, None] * alpha
            masks[i, top:top + side, left:left + side][alpha > threshold] = labels[which[i, j]] + 1
    images = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    return TensorSegmentation(torch.from_numpy(images), torch.from_numpy(masks), len(CANVAS_CLASSES))


def load_canvas_seg(root: str | None = None, *, train_size: int = 8000, test_size: int = 1000,
                    size: int = 32, **options) -> SegmentationData:
    """``canvas-seg``: Fashion-MNIST training objects on the training canvases, test objects on
    the test canvases (so no object image is shared between the splits)."""
    train_objects, train_labels = fashion_mnist_objects(root, "train")
    test_objects, test_labels = fashion_mnist_objects(root, "test")
    log.info("canvas-seg: drawing %d training and %d test canvases of %d px", train_size, test_size, size)
    train = make_canvases(train_objects, train_labels, train_size, size=size, seed=0, **options)
    test = make_canvases(test_objects, test_labels, test_size, size=size, seed=1, **options)
    return SegmentationData("canvas-seg", train, test, CANVAS_CLASSES, (3, size, size))


# ---- Pascal VOC -----------------------------------------------------------------------------
class VOCSegmentationSet(_CountsMixin, Dataset):
    """torchvision's ``VOCSegmentation`` (no download), resized to ``size`` and made tensors."""

    def __init__(self, root: str | Path, image_set: str, *, year: str = "2012",
                 size: tuple[int, int] = (128, 128)) -> None:
        from torchvision.datasets import VOCSegmentation

        root = Path(root)
        try:
            self.base = VOCSegmentation(str(root), year=year, image_set=image_set, download=False)
        except (RuntimeError, FileNotFoundError, ValueError) as err:
            raise DataError(
                f"Pascal VOC {year} ({image_set}) was not found under {root} ({err}). Put the "
                f"extracted VOCtrainval tar there, so that {root}/VOCdevkit/VOC{year}/JPEGImages, "
                f"SegmentationClass and ImageSets/Segmentation/{image_set}.txt exist, and pass "
                "--data-root to that folder"
            ) from None
        if len(self.base) == 0:
            raise DataError(f"{root}/VOCdevkit/VOC{year}/ImageSets/Segmentation/{image_set}.txt lists no image")
        self.size = tuple(int(s) for s in size)
        self.num_classes = len(VOC_CLASSES)
        self._counts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.base)

    def _mask(self, index: int) -> torch.Tensor:
        from PIL import Image

        mask = Image.open(self.base.masks[index])  # palette PNG: the palette index is the class
        mask = mask.resize((self.size[1], self.size[0]), Image.NEAREST)
        return torch.from_numpy(np.array(mask, dtype=np.uint8).copy()).long()

    def __getitem__(self, index: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        image = Image.open(self.base.images[index]).convert("RGB")
        image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        mask = self._mask(index)
        labelled = mask[mask != IGNORE_INDEX]
        if labelled.numel() and int(labelled.max()) >= self.num_classes:
            raise DataError(f"{self.base.masks[index]} has label values ≥ {self.num_classes}; VOC label "
                            "maps are palette PNGs with classes 0..20 and 255 for boundaries")
        return pil_to_tensor(image).float().div_(255.0), mask

    def class_pixel_counts(self) -> np.ndarray:
        if self._counts is None:
            counts = np.zeros((len(self), self.num_classes), np.int64)
            for i in range(len(self)):
                values = self._mask(i).flatten()
                values = values[values < self.num_classes]
                counts[i] = np.bincount(values.numpy(), minlength=self.num_classes)
            self._counts = counts
        return self._counts


def load_voc_seg(root: str | None = None, *, size: int | Sequence[int] = 128, year: str = "2012",
                 **_) -> SegmentationData:
    """``voc-seg``: VOC ``train`` for training (and the defender's pool), ``val`` for testing."""
    if not root:
        raise DataError("voc-seg reads Pascal VOC from disk and nothing is downloaded; pass "
                        "--data-root DIR, the folder that holds VOCdevkit/VOC2012")
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    train = VOCSegmentationSet(root, "train", year=year, size=hw)
    test = VOCSegmentationSet(root, "val", year=year, size=hw)
    return SegmentationData("voc-seg", train, test, VOC_CLASSES, (3, *hw))


DATASETS = {"canvas-seg": load_canvas_seg, "voc-seg": load_voc_seg}


def load_dataset(name: str, root: str | None = None, **options) -> SegmentationData:
    """Load a registered dataset by name (``options`` go to its loader, e.g. ``size``)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root, **options)
