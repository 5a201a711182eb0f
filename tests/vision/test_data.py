"""Dataset loaders on small files in each dataset's own on-disk format, written here."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from nft.core import ConfigError, DataError
from nft.vision.data import (
    FASHION_MNIST_DIR,
    ImageTransform,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_gtsrb,
    load_imagenet,
    load_tiny_imagenet,
    read_idx,
)


def write_idx(path, array: np.ndarray, *, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_fashion(root, n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(root / f"{name}.gz", array)
    return arrays


def test_fashion_mnist_reads_idx_gz(tmp_path):
    arrays = write_fashion(tmp_path)
    data = load_fashion_mnist(str(tmp_path))
    assert len(data.train) == 12 and len(data.test) == 6
    x, y = data.train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0] * 255, torch.from_numpy(arrays["train-images-idx3-ubyte"][3]).float())
    assert y == int(arrays["train-labels-idx1-ubyte"][3])
    assert data.num_classes == 10 and data.shape == (1, 28, 28)


def test_fashion_mnist_missing_names_the_debian_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path))


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 10)
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\x00" * 5)
    with pytest.raises(DataError, match="truncated"):
        read_idx(short)


def test_embedded_fashion_mnist_is_the_real_dataset():
    assert (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    data = load_fashion_mnist()
    assert len(data.train) == 60000 and len(data.test) == 10000
    counts = np.bincount(np.asarray(data.train.targets), minlength=10)
    assert (counts == 6000).all()
    mean = data.train.images[:5000].float().div(255).mean().item()
    assert abs(mean - data.mean[0]) < 0.02  # the normalisation constants fit the data


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_digits(), load_digits()
    assert len(a.train) == 1400 and len(a.test) == 397 and a.shape == (1, 8, 8)
    assert torch.equal(a.train.images, b.train.images)
    assert float(a.train.images.max()) == 255.0


def write_cifar(root, n_per_batch=4, n_test=5):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        entry = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        batches[name] = entry
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return batches


def test_cifar10_python_batches(tmp_path):
    batches = write_cifar(tmp_path)
    data = load_cifar10(str(tmp_path))
    assert len(data.train) == 20 and len(data.test) == 5 and data.shape == (3, 32, 32)
    x, y = data.test[2]
    expected = torch.from_numpy(batches["test_batch"]["data"][2].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expected) and y == batches["test_batch"]["labels"][2]
    assert data.classes[:2] == ["c0", "c1"]


def test_cifar10_needs_data_root_and_files(tmp_path):
    with pytest.raises(ConfigError, match="--data-root"):
        load_cifar10(None)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(str(tmp_path))


def _ppm(path, size, colour):
    Image.new("RGB", size, colour).save(path)


def test_gtsrb_torchvision_layout(tmp_path):
    base = tmp_path / "gtsrb"
    for cls in range(2):
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        for k in range(3):
            _ppm(folder / f"00000_{k:05d}.ppm", (40 + k, 35), (200 * cls, 10, 10))
    test_folder = base / "GTSRB" / "Final_Test" / "Images"
    test_folder.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for k, cls in enumerate([1, 0, 1]):
        _ppm(test_folder / f"{k:05d}.ppm", (50, 45), (200 * cls, 10, 10))
        rows.append(f"{k:05d}.ppm;50;45;5;5;45;40;{cls}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    data = load_gtsrb(str(tmp_path))
    assert len(data.train) == 6 and len(data.test) == 3 and data.num_classes == 43
    x, y = data.test[0]
    assert x.shape == (3, 32, 32) and y == 1
    assert abs(float(x[0].mean()) - 200 / 255) < 0.01  # red channel of class 1
    assert list(np.asarray(data.train.targets)) == [0, 0, 0, 1, 1, 1]


def test_tiny_imagenet_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    for i, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (64, 64), (100 * i, 0, 0)).save(folder / f"{wnid}_{k}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for k, wnid in enumerate([wnids[1], wnids[0], wnids[1]]):
        Image.new("RGB", (64, 64), (0, 50 * k, 0)).save(base / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    data = load_tiny_imagenet(str(tmp_path))
    assert len(data.train) == 4 and len(data.test) == 3 and data.num_classes == 2
    assert [data.test[k][1] for k in range(3)] == [1, 0, 1]
    assert data.train[0][0].shape == (3, 64, 64)


def test_imagenet_folder_layout(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for i, wnid in enumerate(["n015", "n020"]):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (80, 60), (0, 0, 120 * i)).save(folder / f"{wnid}_{k}.JPEG")
    data = load_imagenet(str(tmp_path), image_size=32)
    assert len(data.train) == 4 and len(data.test) == 2 and data.num_classes == 2
    x, y = data.test[1]
    assert x.shape == (3, 32, 32) and y == 1 and abs(float(x[2].mean()) - 120 / 255) < 0.01


def test_imagenet_missing_layout(tmp_path):
    with pytest.raises(DataError, match="train/<wnid>"):
        load_imagenet(str(tmp_path))


def test_image_transform_crops_flips_and_normalises():
    x = torch.arange(16.0).view(1, 4, 4) / 16
    plain = ImageTransform((0.5,), (0.25,))
    assert torch.allclose(plain(x), (x - 0.5) / 0.25)
    aug = ImageTransform((0.0,), (1.0,), crop_padding=1, flip=True)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert torch.equal(a, b) and a.shape == x.shape
    outs = set()
    for s in range(20):
        torch.manual_seed(s)
        outs.add(tuple(aug(x).flatten().tolist()))
    assert len(outs) > 3  # crops and flips vary with the seed
