"""The embedded shapes and the ModelNet loaders (OFF meshes and HDF5 files written here)."""

import numpy as np
import pytest
import torch

from nft.core import ConfigError, DataError, select_clean_subset
from nft.pointcloud import (
    MODELNET10_CLASSES,
    ModelNetHDF5,
    ModelNetOFF,
    Shapes,
    load_modelnet,
    read_off,
    sample_mesh,
)

CUBE_OFF = """OFF
8 6 0
-1 -1 -1
1 -1 -1
1 1 -1
-1 1 -1
-1 -1 1
1 -1 1
1 1 1
-1 1 1
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 0 4 7 3
4 1 2 6 5
"""

# ModelNet's known quirk: the header fused with the counts; a tetrahedron stretched along x
TETRA_OFF = "OFF4 4 0\n0 0 0\n4 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"


def test_shapes_is_deterministic_balanced_and_normalised():
    a, b = Shapes(60, num_points=64, seed=3), Shapes(60, num_points=64, seed=3)
    assert torch.equal(a.points, b.points) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.points, Shapes(60, num_points=64, seed=4).points)
    assert a.points.shape == (60, 64, 3)
    assert np.bincount(a.targets.numpy()).tolist() == [6] * 10
    norms = a.points.norm(dim=-1)
    assert torch.allclose(norms.max(dim=1).values, torch.ones(60), atol=1e-5)
    assert a.points.mean(dim=1).abs().max() < 1e-5
    assert len(select_clean_subset(a, per_class=2)) == 20


def test_shapes_classes_differ_in_geometry():
    s = Shapes(200, num_points=128, seed=0, noise=0.0, scale_jitter=0.0)
    # a sphere's points are (up to the centroid's sampling shift) equidistant from its centre
    radial = s.points.norm(dim=-1).std(dim=1)
    per_class = [float(radial[s.targets == c].mean()) for c in range(10)]
    assert per_class[0] < 0.06 and min(per_class[1:]) > 0.09


def test_bad_shapes_arguments():
    with pytest.raises(ConfigError, match="classes"):
        Shapes(10, classes=11)
    with pytest.raises(ConfigError, match="num_points"):
        Shapes(10, num_points=4)


def test_read_off_triangulates_and_accepts_the_fused_header(tmp_path):
    (tmp_path / "cube.off").write_text(CUBE_OFF)
    v, f = read_off(tmp_path / "cube.off")
    assert v.shape == (8, 3) and f.shape == (12, 3)
    (tmp_path / "t.off").write_text(TETRA_OFF)
    v, f = read_off(tmp_path / "t.off")
    assert v.shape == (4, 3) and f.shape == (4, 3)
    pts = sample_mesh(v, f, 500, np.random.default_rng(0))
    assert pts.shape == (500, 3) and pts.min() >= -1e-9  # on the tetrahedron's faces
    (tmp_path / "bad.off").write_text("PLY\n1 2 3\n")
    with pytest.raises(DataError, match="not an OFF file"):
        read_off(tmp_path / "bad.off")
    (tmp_path / "short.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n3 0 1 2\n")
    with pytest.raises(DataError, match="malformed"):
        read_off(tmp_path / "short.off")


def _write_modelnet_off(root, classes=("cube", "tetra"), per_split=2):
    for name in classes:
        for split in ("train", "test"):
            folder = root / name / split
            folder.mkdir(parents=True)
            for i in range(per_split):
                (folder / f"{name}_{i:04d}.off").write_text(CUBE_OFF if name == "cube" else TETRA_OFF)


def test_modelnet_off_folder_layout(tmp_path):
    _write_modelnet_off(tmp_path)
    train = ModelNetOFF(tmp_path, "train", num_points=32)
    assert train.classes == ["cube", "tetra"]
    assert train.points.shape == (4, 32, 3) and train.targets.tolist() == [0, 0, 1, 1]
    cube = train.points[0]
    # surface points of the cube: their largest |coordinate| is the half side (up to the
    # centroid's sampling shift), never well inside
    half = cube.abs().max(dim=1).values
    assert float(half.max() - half.min()) < 0.25 and float(half.min()) > 0.4
    again = ModelNetOFF(tmp_path, "train", num_points=32)
    assert torch.equal(again.points, train.points)
    assert load_modelnet(tmp_path, "test", num_points=16).points.shape == (4, 16, 3)
    with pytest.raises(DataError, match="does not exist"):
        ModelNetOFF(tmp_path / "missing", "train")


def _write_h5(root, names, per_file=6, points=40, files=2):
    h5py = pytest.importorskip("h5py")
    (root / "shape_names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(files):
            with h5py.File(root / f"ply_data_{split}{k}.h5", "w") as h:
                h["data"] = rng.normal(size=(per_file, points, 3)).astype(np.float32)
                h["label"] = (np.arange(per_file) % len(names)).astype(np.uint8).reshape(-1, 1)


def test_modelnet_hdf5_files(tmp_path):
    names = ["airplane", "bathtub", "bed", "chair"]
    _write_h5(tmp_path, names)
    data = ModelNetHDF5(tmp_path, "train", num_points=32)
    assert data.points.shape == (12, 32, 3) and data.classes == names
    assert data.targets.tolist() == [0, 1, 2, 3, 0, 1] * 2
    assert torch.allclose(data.points.norm(dim=-1).max(dim=1).values, torch.ones(12), atol=1e-5)
    only = ModelNetHDF5(tmp_path, "test", num_points=32, classes=["bed", "bathtub"])
    assert only.classes == ["bed", "bathtub"] and sorted(set(only.targets.tolist())) == [0, 1]
    with pytest.raises(DataError, match="fewer than num_points"):
        ModelNetHDF5(tmp_path, "train", num_points=64)


def test_modelnet10_is_read_from_modelnet40_files(tmp_path):
    names = [f"extra{i}" for i in range(30)] + list(MODELNET10_CLASSES)
    _write_h5(tmp_path, names, per_file=40)
    ten = load_modelnet(tmp_path, "train", variant=10, num_points=16)
    assert ten.classes == list(MODELNET10_CLASSES)
    assert set(ten.targets.tolist()) <= set(range(10)) and len(ten) == 20
    forty = load_modelnet(tmp_path, "train", variant=40, num_points=16)
    assert len(forty.classes) == 40 and len(forty) == 80


def test_load_modelnet_names_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="neither ModelNet HDF5"):
        load_modelnet(tmp_path, "train")
    with pytest.raises(ConfigError, match="10 or 40"):
        load_modelnet(tmp_path, "train", variant=20)
