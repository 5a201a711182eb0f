"""Point-cloud datasets: the embedded parametric shapes, and ModelNet40 / ModelNet10 loaders.

Every dataset yields ``(points, label)`` with ``points`` a ``(num_points, 3)`` float tensor
centred on its centroid and scaled into the unit ball (the usual ModelNet preprocessing, e.g.
``pc_normalize`` in the PointNet++ / IRBA data loaders), and exposes ``targets`` and
``classes`` so the core can pick k clean samples per class without loading points.

* :class:`Shapes` — no files needed: ten classes of parametric surfaces sampled uniformly by
  area, with a random per-axis scale, a random rotation about the vertical axis (objects stay
  upright, as ModelNet's aligned meshes, so an orientation trigger is meaningful) and noise.
* :class:`ModelNetOFF` — the ModelNet folder layout ``<root>/<class>/<train|test>/*.off``;
  points are sampled from each mesh's surface (area-weighted), once, deterministically.
* :class:`ModelNetHDF5` — the widely used ``ply_data_<split><i>.h5`` files (``data``
  ``(n, 2048, 3)``, ``label`` ``(n, 1)``) with ``shape_names.txt``; ModelNet10 can be read
  from the ModelNet40 files by keeping its ten classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nft.core import ConfigError, DataError

__all__ = [
    "MODELNET10_CLASSES",
    "SHAPE_CLASSES",
    "ModelNetHDF5",
    "ModelNetOFF",
    "PointCloudDataset",
    "Shapes",
    "load_modelnet",
    "normalize_cloud",
    "read_off",
    "sample_mesh",
]

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule",
                 "octahedron", "bowl", "hourglass")
MODELNET10_CLASSES = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand",
                      "sofa", "table", "toilet")


def normalize_cloud(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1."""
    points = points - points.mean(axis=0, keepdims=True)
    scale = float(np.sqrt((points**2).sum(axis=1)).max())
    return points / scale if scale > 0 else points


class PointCloudDataset(Dataset):
    """Clouds held in memory as one ``(n, num_points, 3)`` tensor plus labels."""

    def __init__(self, points: np.ndarray | torch.Tensor, labels: Sequence[int], classes: Sequence[str]) -> None:
        points = torch.as_tensor(np.asarray(points, dtype=np.float32))
        if points.ndim != 3 or points.shape[-1] != 3:
            raise DataError(f"clouds must have shape (n, points, 3), got {tuple(points.shape)}")
        if not torch.isfinite(points).all():
            raise DataError("the point clouds contain NaN or inf coordinates; fix the source files")
        self.points = points
        self.targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if len(self.targets) != len(points):
            raise DataError(f"{len(points)} clouds but {len(self.targets)} labels")
        self.classes = list(classes)

    @property
    def num_points(self) -> int:
        return int(self.points.shape[1])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.points[index], int(self.targets[index])


# ---- surface sampling ---------------------------------------------------------------------
def sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniformly on a triangle mesh: faces by area, then uniform barycentrics."""
    tri = vertices[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise DataError("the mesh has no surface area (all faces degenerate); it cannot be sampled")
    chosen = rng.choice(len(faces), size=n, p=areas / total)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[chosen]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _unit_sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _mixture(parts: list[tuple[float, callable]], n: int, rng: np.random.Generator) -> np.ndarray:
    """Sample ``n`` points from surface pieces ``(area, sampler)`` in proportion to area."""
    areas = np.array([a for a, _ in parts], dtype=np.float64)
    counts = rng.multinomial(n, areas / areas.sum())
    return np.concatenate([f(c) for (_, f), c in zip(parts, counts) if c > 0], axis=0)


def _disk(n, rng, z, radius=1.0):
    r = radius * np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(t), r * np.sin(t), np.full(n, z)], axis=1)


def _cylinder_side(n, rng, radius=1.0, z0=-1.0, z1=1.0):
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([radius * np.cos(t), radius * np.sin(t), rng.uniform(z0, z1, n)], axis=1)


def _cone_side(n, rng, apex_z=1.0, base_z=-1.0, radius=1.0):
    s = np.sqrt(rng.random(n))  # density ∝ distance from the apex
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([radius * s * np.cos(t), radius * s * np.sin(t), apex_z + s * (base_z - apex_z)], axis=1)


_CUBE_V = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
_CUBE_F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
_PYR_V = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [0, 0, 1]], dtype=np.float64)
_PYR_F = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
_OCT_V = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
_OCT_F = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])


def _shape_points(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "sphere":
        return _unit_sphere(n, rng)
    if name == "cube":
        return sample_mesh(_CUBE_V, _CUBE_F, n, rng)
    if name == "cylinder":  # radius 0.6, height 2
        return _mixture([(2 * np.pi * 0.6 * 2, lambda c: _cylinder_side(c, rng, 0.6)),
                         (np.pi * 0.36, lambda c: _disk(c, rng, 1.0, 0.6)),
                         (np.pi * 0.36, lambda c: _disk(c, rng, -1.0, 0.6))], n, rng)
    if name == "cone":
        return _mixture([(np.pi * np.sqrt(5.0), lambda c: _cone_side(c, rng)),
                         (np.pi, lambda c: _disk(c, rng, -1.0))], n, rng)
    if name == "torus":  # major radius 0.7, minor 0.3, rejection-sampled by area density
        out = np.zeros((0, 3))
        while len(out) < n:
            u, v = rng.uniform(0, 2 * np.pi, 2 * n), rng.uniform(0, 2 * np.pi, 2 * n)
            keep = rng.random(2 * n) < (0.7 + 0.3 * np.cos(v)) / 1.0
            u, v = u[keep], v[keep]
            ring = 0.7 + 0.3 * np.cos(v)
            out = np.concatenate([out, np.stack([ring * np.cos(u), ring * np.sin(u), 0.3 * np.sin(v)], 1)])
        return out[:n]
    if name == "pyramid":
        return sample_mesh(_PYR_V, _PYR_F, n, rng)
    if name == "capsule":  # cylinder radius 0.45, height 1.1, hemispherical caps
        r, h = 0.45, 0.55

        def cap(c, sign):
            p = _unit_sphere(c, rng)
            p[:, 2] = np.abs(p[:, 2]) * sign
            return p * r + np.array([0, 0, sign * h])

        return _mixture([(2 * np.pi * r * 2 * h, lambda c: _cylinder_side(c, rng, r, -h, h)),
                         (2 * np.pi * r * r, lambda c: cap(c, 1.0)),
                         (2 * np.pi * r * r, lambda c: cap(c, -1.0))], n, rng)
    if name == "octahedron":
        return sample_mesh(_OCT_V, _OCT_F, n, rng)
    if name == "bowl":  # open lower hemisphere
        p = _unit_sphere(n, rng)
        p[:, 2] = -np.abs(p[:, 2])
        return p
    if name == "hourglass":  # two cones meeting at their apexes, with base disks
        half = lambda c, s: _cone_side(c, rng, apex_z=0.0, base_z=s, radius=0.8)  # noqa: E731
        side = np.pi * 0.8 * np.sqrt(0.64 + 1.0)
        return _mixture([(side, lambda c: half(c, 1.0)), (side, lambda c: half(c, -1.0)),
                         (np.pi * 0.64, lambda c: _disk(c, rng, 1.0, 0.8)),
                         (np.pi * 0.64, lambda c: _disk(c, rng, -1.0, 0.8))], n, rng)
    raise ConfigError(f"unknown shape {name!r}; known: {SHAPE_CLASSES}")


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


class Shapes(PointCloudDataset):
    """The embedded data set: ``n`` clouds of ``num_points`` points from 10 parametric surfaces.

    Each sample: its class's surface (sphere, cube, cylinder, cone, torus, pyramid, capsule,
    octahedron, bowl, hourglass) sampled uniformly by area, scaled per axis by
    ``U(1 − scale_jitter, 1 + scale_jitter)``, rotated about the vertical axis by a uniform
    angle, given Gaussian noise of std ``noise`` and normalised into the unit ball.
    Deterministic for a given ``seed``; labels are balanced.
    """

    def __init__(self, n: int = 2000, *, num_points: int = 128, seed: int = 0, classes: int = 10,
                 scale_jitter: float = 0.25, noise: float = 0.02) -> None:
        if n < 1:
            raise ConfigError(f"Shapes needs n ≥ 1, got {n}")
        if not 2 <= classes <= len(SHAPE_CLASSES):
            raise ConfigError(f"Shapes has 2 to {len(SHAPE_CLASSES)} classes, got {classes}")
        if num_points < 8:
            raise ConfigError(f"num_points must be ≥ 8, got {num_points}")
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n) % classes)
        clouds = np.empty((n, num_points, 3), dtype=np.float32)
        for i, label in enumerate(labels):
            p = _shape_points(SHAPE_CLASSES[label], num_points, rng)
            p = p * rng.uniform(1 - scale_jitter, 1 + scale_jitter, size=3)
            p = p @ _rotation_z(rng.uniform(0, 2 * np.pi)).T
            p = p + rng.normal(0, noise, size=p.shape)
            clouds[i] = normalize_cloud(p)
        super().__init__(clouds, labels, SHAPE_CLASSES[:classes])


# ---- ModelNet: OFF meshes -----------------------------------------------------------------
def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` and triangles ``(F, 3)`` of an OFF file (polygons fan-triangulated).

    Accepts ModelNet's known quirk of a header fused with the counts (``OFF490 518 0``).
    """
    path = Path(path)
    try:
        tokens = path.read_text(errors="strict").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read OFF file {path}: {err}") from None
    lines = [ln.split("#", 1)[0].strip() for ln in tokens]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise DataError(f"{path} is not an OFF file (its first line must start with 'OFF')")
    head = lines[0][3:].strip()
    body = lines[1:]
    if not head:
        if not body:
            raise DataError(f"{path} has no vertex / face counts after the OFF header")
        head, body = body[0], body[1:]
    try:
        n_v, n_f = (int(t) for t in head.split()[:2])
        vertices = np.array([[float(t) for t in body[i].split()[:3]] for i in range(n_v)])
        faces = []
        for i in range(n_v, n_v + n_f):
            parts = [int(t) for t in body[i].split()]
            k, idx = parts[0], parts[1:1 + parts[0]]
            if k < 3 or len(idx) < k:
                raise ValueError(f"face line {i + 1} lists {len(idx)} of {k} indices")
            faces.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, k - 1))
    except (ValueError, IndexError) as err:
        raise DataError(f"{path} is a malformed OFF file ({err}); re-export the mesh") from None
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if vertices.shape != (n_v, 3) or len(faces) == 0:
        raise DataError(f"{path} has {len(vertices)} vertices and {len(faces)} faces; it needs both")
    if faces.min() < 0 or faces.max() >= n_v:
        raise DataError(f"{path} has a face index outside its {n_v} vertices")
    return vertices, faces


def _class_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*/*.off")))


class ModelNetOFF(PointCloudDataset):
    """ModelNet's mesh folders: ``<root>/<class>/<split>/<class>_XXXX.off``.

    Points are sampled from every mesh surface once (area-weighted, seeded per file) and
    normalised into the unit ball. ``classes`` restricts and orders the classes (default: every
    class folder, sorted, which is ModelNet's label order).
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_points: int = 1024,
                 classes: Sequence[str] | None = None, seed: int = 0, progress: bool = False) -> None:
        from tqdm.auto import tqdm

        root = Path(root)
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        if not root.is_dir():
            raise DataError(f"ModelNet folder {root} does not exist; pass --data-root to the unpacked ModelNet40/10")
        names = list(classes) if classes is not None else _class_dirs(root)
        if not names:
            raise DataError(f"{root} holds no <class>/<split>/*.off folders; is it the unpacked ModelNet folder?")
        files: list[tuple[Path, int]] = []
        for label, name in enumerate(names):
            folder = root / name / split
            if not folder.is_dir():
                raise DataError(f"{folder} is missing: class {name!r} has no {split} split")
            files.extend((f, label) for f in sorted(folder.glob("*.off")))
        if not files:
            raise DataError(f"no .off files under {root}/*/{split}")
        clouds = np.empty((len(files), num_points, 3), dtype=np.float32)
        for i, (f, _) in enumerate(tqdm(files, desc=f"sample {split} meshes", disable=not progress)):
            vertices, faces = read_off(f)
            rng = np.random.default_rng([seed, i, 7])
            clouds[i] = normalize_cloud(sample_mesh(vertices, faces, num_points, rng))
        super().__init__(clouds, [label for _, label in files], names)
        self.files = [f for f, _ in files]


# ---- ModelNet: HDF5 point files -----------------------------------------------------------
def _h5py():
    try:
        import h5py
    except ImportError:
        raise ConfigError(
            "reading ModelNet HDF5 files needs h5py; install it with `pip install nft-pointcloud[modelnet]`"
        ) from None
    return h5py


class ModelNetHDF5(PointCloudDataset):
    """The HDF5 release of ModelNet: ``ply_data_<split><i>.h5`` with ``data`` and ``label``.

    ``shape_names.txt`` (one class per line) names the labels. The first ``num_points`` points
    of each cloud are kept (the files store them in random order). ``classes`` keeps only those
    classes and relabels them in the given order (ModelNet10 from the ModelNet40 files).
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_points: int = 1024,
                 classes: Sequence[str] | None = None) -> None:
        h5py = _h5py()
        root = Path(root)
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        files = sorted(root.glob(f"*{split}*.h5"))
        if not files:
            raise DataError(f"no *{split}*.h5 files in {root}; is it the unpacked ModelNet HDF5 folder?")
        names_file = root / "shape_names.txt"
        datas, labels = [], []
        for f in files:
            try:
                with h5py.File(f, "r") as h:
                    if "data" not in h or "label" not in h:
                        raise DataError(f"{f} has no 'data' / 'label' datasets; it is not a ModelNet HDF5 file")
                    datas.append(np.asarray(h["data"][:, :, :3], dtype=np.float32))
                    labels.append(np.asarray(h["label"]).reshape(-1).astype(np.int64))
            except OSError as err:
                raise DataError(f"cannot read {f}: {err}") from None
        data, label = np.concatenate(datas), np.concatenate(labels)
        if data.shape[1] < num_points:
            raise DataError(f"the files hold {data.shape[1]} points per cloud, fewer than num_points={num_points}")
        if names_file.is_file():
            names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        else:
            names = [str(i) for i in range(int(label.max()) + 1)]
        if label.min() < 0 or label.max() >= len(names):
            raise DataError(f"labels run to {int(label.max())} but {names_file} names {len(names)} classes")
        if classes is not None:
            missing = [c for c in classes if c not in names]
            if missing:
                raise DataError(f"classes {missing} are not in {names_file}")
            mapping = {names.index(c): i for i, c in enumerate(classes)}
            keep = np.isin(label, list(mapping))
            data, label = data[keep], np.array([mapping[int(v)] for v in label[keep]], dtype=np.int64)
            names = list(classes)
        clouds = np.stack([normalize_cloud(c[:num_points]) for c in data]) if len(data) else data[:, :num_points]
        super().__init__(clouds, label, names)


def load_modelnet(root: str | Path, split: str, *, variant: int = 40, num_points: int = 1024,
                  seed: int = 0, progress: bool = False) -> PointCloudDataset:
    """ModelNet40 or ModelNet10 from ``root``, in whichever of the two formats it holds.

    HDF5 files (``*.h5``) are preferred when present; otherwise the OFF folder layout. For
    ModelNet10 from ModelNet40 files, only the ten ModelNet10 classes are kept.
    """
    if variant not in (10, 40):
        raise ConfigError(f"ModelNet variant must be 10 or 40, got {variant}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ModelNet folder {root} does not exist; pass --data-root to the unpacked data")
    if any(root.glob("*.h5")):
        names_file = root / "shape_names.txt"
        names = names_file.read_text().split() if names_file.is_file() else []
        classes = MODELNET10_CLASSES if variant == 10 and len(names) > 10 else None
        return ModelNetHDF5(root, split, num_points=num_points, classes=classes)
    present = _class_dirs(root)
    if not present:
        raise DataError(
            f"{root} holds neither ModelNet HDF5 files (*.h5) nor mesh folders (<class>/<split>/*.off)"
        )
    classes = MODELNET10_CLASSES if variant == 10 and len(present) > 10 else None
    return ModelNetOFF(root, split, num_points=num_points, classes=classes, seed=seed, progress=progress)
