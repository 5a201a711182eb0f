"""Image datasets: every loader yields ``(float image in [0, 1] of shape C×H×W, int label)``.

Images stay in raw pixel space ([0, 1]) up to the point where a model sees them, because
triggers are defined on pixels: an attack stamps its trigger on the raw image, and only then the
training augmentation (random crop with padding, flip) and the normalisation run, as in the
attacks' reference code. :class:`ImageTransform` is that last step.

Loaders:

* ``fashion-mnist`` (embedded default): the IDX ``.gz`` files Debian's ``dataset-fashion-mnist``
  installs in ``/usr/share/datasets/fashion-mnist`` (or any folder holding the four files);
* ``digits``: scikit-learn's 8×8 digits, shipped in its wheel (fastest tests);
* ``cifar10``, ``gtsrb``: torchvision's dataset classes on their on-disk formats;
* ``tiny-imagenet``, ``imagenet``: the standard folder layouts, read with torchvision's
  ``ImageFolder`` machinery.

Nothing here downloads: a missing dataset is a :class:`~nft.core.DataError` that says where the
files were looked for and how to get them.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nft.core import ConfigError, DataError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "ImageData",
    "ImageTransform",
    "TensorImages",
    "load_dataset",
    "read_idx",
]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


# ---- datasets in memory ---------------------------------------------------------------------
class TensorImages(Dataset):
    """Images held in memory as a ``uint8`` (or float) tensor N×C×H×W, with integer ``targets``.

    ``__getitem__`` returns a float image in [0, 1] and the label. Small datasets (Fashion-MNIST,
    digits, CIFAR-10) live here, so an attack can stamp a trigger on many images in one batched
    call instead of one image at a time.
    """

    def __init__(self, images: torch.Tensor, targets, transform: Callable | None = None) -> None:
        if images.ndim != 4:
            raise DataError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
        if isinstance(targets, torch.Tensor):
            targets = targets.detach().to(torch.int64).clone()
        else:
            targets = torch.as_tensor(np.array(targets, dtype=np.int64))
        if len(targets) != len(images):
            raise DataError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> torch.Tensor:
        x = self.images[index]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def batch(self, indices) -> torch.Tensor:
        """Float images in [0, 1] for ``indices`` as one N×C×H×W tensor."""
        x = self.images[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def __getitem__(self, index: int):
        x = self.image(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])

    def with_transform(self, transform: Callable | None) -> TensorImages:
        return TensorImages(self.images, self.targets, transform)


class FileImages(Dataset):
    """A torchvision file dataset (GTSRB, ImageFolder) as float tensors of one fixed size.

    Images of different sizes (GTSRB) are resized to ``size``; PIL decoding happens per item.
    """

    def __init__(self, base, size: tuple[int, int], transform: Callable | None = None,
                 resize: int | None = None) -> None:
        self.base = base
        self.size = tuple(size)
        self.resize = resize
        self.transform = transform
        self.targets = np.asarray([s[1] for s in base.samples] if hasattr(base, "samples")
                                  else base._samples_targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> torch.Tensor:
        from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

        img, _ = self.base[index]
        img = img.convert("RGB")
        if self.resize is not None:  # ImageNet: shorter side to `resize`, then a centre crop
            img = center_crop(resize(img, self.resize), list(self.size))
        elif img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]))
        return pil_to_tensor(img).float().div_(255.0)

    def batch(self, indices) -> torch.Tensor:
        return torch.stack([self.image(int(i)) for i in indices])

    def __getitem__(self, index: int):
        x = self.image(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])

    def with_transform(self, transform: Callable | None) -> FileImages:
        return FileImages(self.base, self.size, transform, self.resize)


# ---- transforms -----------------------------------------------------------------------------
class ImageTransform:
    """Training augmentation (random crop with zero padding, horizontal flip) then normalisation.

    Works on one C×H×W tensor and draws from the global torch RNG, which the core's loops seed
    per batch, so runs are reproducible.
    """

    def __init__(self, mean, std, *, crop_padding: int = 0, flip: bool = False) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_padding > 0:
            p = self.crop_padding
            h, w = x.shape[-2:]
            padded = F.pad(x, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = padded[..., dy:dy + h, dx:dx + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ImageTransform(crop_padding={self.crop_padding}, flip={self.flip})"


@dataclass
class ImageData:
    """A loaded dataset: raw train / test images and how to feed them to a model."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    classes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def train_transform(self) -> ImageTransform:
        return ImageTransform(self.mean, self.std, crop_padding=self.crop_padding, flip=self.flip)

    def test_transform(self) -> ImageTransform:
        return ImageTransform(self.mean, self.std)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * std + mean


# ---- Fashion-MNIST (Debian) -----------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain): the MNIST family's format (magic, dims, uint8 data)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem, root / "FashionMNIST" / "raw" / stem,
                      root / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(root: str | None = None) -> ImageData:
    folder = Path(root) if root else FASHION_MNIST_DIR
    paths = {key: _find_idx(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST was not found in {folder} (missing {', '.join(missing)}). Install it "
            "with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it puts the IDX "
            f"files in {FASHION_MNIST_DIR}), or pass --data-root DIR pointing at a folder with "
            "the four *-idx?-ubyte(.gz) files"
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    return ImageData(
        name="fashion-mnist",
        train=TensorImages(torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
                           arrays["train_labels"]),
        test=TensorImages(torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
                          arrays["test_labels"]),
        num_classes=10, channels=1, size=(28, 28),
        # Training-set statistics of Fashion-MNIST.
        mean=(0.2860,), std=(0.3530,), crop_padding=2, flip=True, classes=classes,
    )


# ---- scikit-learn digits --------------------------------------------------------------------
def load_digits(root: str | None = None, *, test_size: int = 397) -> ImageData:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise ConfigError(
            "the digits dataset comes with scikit-learn; install it with "
            "`pip install nft-vision[digits]` (or `pip install scikit-learn`)"
        ) from None
    bunch = sk_load_digits()
    images = np.round(bunch.images / 16.0 * 255.0).astype(np.uint8)  # values 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(1797).permutation(len(labels))  # fixed split, same everywhere
    test_idx, train_idx = order[:test_size], order[test_size:]
    tensor = torch.from_numpy(images).unsqueeze(1)
    return ImageData(
        name="digits", train=TensorImages(tensor[train_idx], labels[train_idx]),
        test=TensorImages(tensor[test_idx], labels[test_idx]), num_classes=10, channels=1,
        size=(8, 8), mean=(0.3053,), std=(0.3814,), crop_padding=1, flip=False,
        classes=[str(i) for i in range(10)],
    )


# ---- CIFAR-10 (torchvision) -----------------------------------------------------------------
def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10 reading ``cifar-10-batches-py``; files are checked for presence,
        not checksums, so a re-packed or partial copy (and the tests' small files) loads."""

        def _check_integrity(self) -> bool:
            files = self.train_list + self.test_list + [[self.meta["filename"], None]]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, name))
                       for name, _ in files if name in self._needed())

        def _load_meta(self) -> None:
            import pickle

            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not os.path.isfile(path):
                raise RuntimeError(f"{path} is missing")
            with open(path, "rb") as handle:  # the dataset's own format is a pickle, as torchvision reads it
                meta = pickle.load(handle, encoding="latin1")
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        def _needed(self):
            names = [n for n, _ in (self.train_list if self.train else self.test_list)]
            return set(names + [self.meta["filename"]])

    return LocalCIFAR10


def load_cifar10(root: str | None = None) -> ImageData:
    root = _need_root(root, "cifar10", "the folder holding cifar-10-batches-py/")
    klass = _cifar10_class()
    try:
        train = klass(root, train=True, download=False)
        test = klass(root, train=False, download=False)
    except RuntimeError as err:
        raise DataError(
            f"CIFAR-10 was not found under {root} ({err}); download the python version "
            "(cifar-10-python.tar.gz) and extract it there so that "
            f"{Path(root) / 'cifar-10-batches-py'} exists"
        ) from None
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return ImageData(
        name="cifar10", train=TensorImages(to_tensor(train.data), train.targets),
        test=TensorImages(to_tensor(test.data), test.targets), num_classes=10, channels=3,
        size=(32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        crop_padding=4, flip=True, classes=list(train.classes),
    )


# ---- GTSRB (torchvision) --------------------------------------------------------------------
def load_gtsrb(root: str | None = None, *, image_size: int = 32) -> ImageData:
    from torchvision.datasets import GTSRB

    root = _need_root(root, "gtsrb", "the folder holding gtsrb/GTSRB/Training")
    try:
        train = GTSRB(root, split="train", download=False)
        test = GTSRB(root, split="test", download=False)
    except (RuntimeError, FileNotFoundError) as err:
        raise DataError(
            f"GTSRB was not found under {root} ({err}); extract GTSRB-Training_fixed.zip, "
            "GTSRB_Final_Test_Images.zip and GTSRB_Final_Test_GT.zip into "
            f"{Path(root) / 'gtsrb'} (torchvision's GTSRB layout)"
        ) from None
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"GTSRB under {root} has no images ({len(train)} train, {len(test)} test)")
    size = (image_size, image_size)
    return ImageData(
        name="gtsrb", train=_file_images(train, size), test=_file_images(test, size),
        num_classes=43, channels=3, size=size, mean=(0.3403, 0.3121, 0.3214),
        std=(0.2724, 0.2608, 0.2669), crop_padding=4, flip=False,  # flipping changes a sign's meaning
        classes=[f"{i:05d}" for i in range(43)],
    )


def _file_images(base, size, resize=None) -> FileImages:
    if not hasattr(base, "samples"):  # torchvision's GTSRB keeps its list in `_samples`
        base.samples = base._samples
    return FileImages(base, size, resize=resize)


# ---- Tiny-ImageNet (folder layout) ----------------------------------------------------------
class _TinyVal(Dataset):
    """Tiny-ImageNet's ``val/images`` with labels from ``val/val_annotations.txt``."""

    def __init__(self, folder: Path, class_to_idx: dict[str, int]) -> None:
        from torchvision.datasets.folder import default_loader

        self.loader = default_loader
        self.samples = []
        with open(folder / "val_annotations.txt") as handle:
            for line in handle:
                parts = line.strip().split("\t")
                if len(parts) >= 2 and parts[1] in class_to_idx:
                    self.samples.append((str(folder / "images" / parts[0]), class_to_idx[parts[1]]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.loader(path), label


def load_tiny_imagenet(root: str | None = None) -> ImageData:
    from torchvision.datasets import ImageFolder

    root = Path(_need_root(root, "tiny-imagenet", "the folder holding tiny-imagenet-200/"))
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    if not (base / "train").is_dir() or not (base / "val" / "val_annotations.txt").is_file():
        raise DataError(
            f"Tiny-ImageNet was not found under {root}: expected train/<wnid>/images/*.JPEG and "
            "val/val_annotations.txt; extract tiny-imagenet-200.zip there"
        )
    train = ImageFolder(str(base / "train"))
    test = _TinyVal(base / "val", train.class_to_idx)
    if len(test) == 0:
        raise DataError(f"{base / 'val'} lists no image of a known class")
    return ImageData(
        name="tiny-imagenet", train=_file_images(train, (64, 64)), test=_file_images(test, (64, 64)),
        num_classes=len(train.classes), channels=3, size=(64, 64),
        mean=(0.4802, 0.4481, 0.3975), std=(0.2302, 0.2265, 0.2262), crop_padding=4, flip=True,
        classes=list(train.classes),
    )


# ---- ImageNet (folder layout) ---------------------------------------------------------------
def load_imagenet(root: str | None = None, *, image_size: int = 224) -> ImageData:
    from torchvision.datasets import ImageFolder

    root = Path(_need_root(root, "imagenet", "the folder holding train/ and val/ class folders"))
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(
            f"ImageNet was not found under {root}: expected train/<wnid>/*.JPEG and "
            "val/<wnid>/*.JPEG (the usual folder layout; sort val images into class folders first)"
        )
    train = ImageFolder(str(root / "train"))
    test = ImageFolder(str(root / "val"))
    if test.classes != train.classes:
        raise DataError(f"{root}/val has other class folders than {root}/train")
    size = (image_size, image_size)
    resize = int(round(image_size * 256 / 224))  # the usual 256 -> 224 centre crop ratio
    return ImageData(
        name="imagenet", train=_file_images(train, size, resize),
        test=_file_images(test, size, resize), num_classes=len(train.classes), channels=3,
        size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        crop_padding=image_size // 8, flip=True, classes=list(train.classes),
    )


def _need_root(root: str | None, name: str, what: str) -> str:
    if not root:
        raise ConfigError(f"dataset {name!r} lives on disk: pass --data-root DIR ({what})")
    if not Path(root).is_dir():
        raise DataError(f"--data-root {root} is not a folder")
    return str(root)


DATASETS: dict[str, Callable[..., ImageData]] = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "gtsrb": load_gtsrb,
    "tiny-imagenet": load_tiny_imagenet,
    "imagenet": load_imagenet,
}


def load_dataset(name: str, root: str | None = None, **options) -> ImageData:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name](root, **options)
