"""The embedded action set ``motion``: real Fashion-MNIST images moving on a canvas.

Each video shows one Fashion-MNIST image (a random garment, tinted a random colour) on a dark
noisy canvas; its class is *how it moves*: right, left, down, up, clockwise, anticlockwise,
growing, shrinking, bouncing vertically, bouncing horizontally. Classes come in pairs that are
time reversals of each other, so a single frame says nothing about the class and a model has to
use time. The garment's own class is ignored.

Videos are written as real H.264 ``.mp4`` files into a user cache folder keyed by the
generation parameters, and read back through :class:`~nft.video.datasets.VideoClips`, the same
loader the real datasets use. Generation is deterministic per seed.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (IDX ``.gz`` files).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nft.core import ConfigError, DataError

from .datasets import VideoClips
from .io import write_video

__all__ = ["MOTIONS", "MotionConfig", "fashion_mnist", "motion_dataset", "render_motion", "cache_dir"]

log = logging.getLogger(__name__)

MOTIONS = ("right", "left", "down", "up", "rotate-cw", "rotate-ccw", "grow", "shrink",
           "bounce-vertical", "bounce-horizontal")
GENERATOR_VERSION = 2
"""Bump when the rendering changes, so old cached videos are not reused. (2: lossless H.264, so
that every machine decodes the same pixels; version 1 was lossy and not reproducible.)"""

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
"""Where Debian's ``dataset-fashion-mnist`` installs the IDX files."""


@dataclass(frozen=True)
class MotionConfig:
    """Generation parameters; together they are the cache key.

    Attributes:
        train_per_class / test_per_class: videos per class in each split.
        frames: frames per video (clips are shorter, so several clips fit in one video).
        size: canvas side in pixels (even, for H.264).
        seed: seeds every random draw of the generator.
        noise: standard deviation of the per-pixel canvas noise (in [0, 1] units).
        fps: the files' frame rate (metadata only).
        classes: use the first ``classes`` motions of :data:`MOTIONS` (fewer make quick tests).
    """

    train_per_class: int = 120
    test_per_class: int = 40
    frames: int = 16
    size: int = 32
    seed: int = 0
    noise: float = 0.03
    fps: int = 8
    classes: int = 10

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(MOTIONS):
            raise ConfigError(f"motion classes must be in [2, {len(MOTIONS)}], got {self.classes}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise ConfigError("motion needs at least one video per class in each split")
        if self.frames < 4:
            raise ConfigError(f"motion videos need ≥ 4 frames, got {self.frames}")
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"motion canvas size must be even and ≥ 16, got {self.size}")

    def key(self) -> str:
        fields = asdict(self)
        if fields["classes"] == len(MOTIONS):  # keys made before the option existed stay valid
            del fields["classes"]
        payload = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---- Fashion-MNIST --------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(dims):
        raise DataError(f"{path} is truncated: {array.size} values for shape {dims}")
    return array.reshape(dims)


def fashion_mnist(train: bool, root: str | Path | None = None) -> np.ndarray:
    """Fashion-MNIST images ``uint8 (N, 28, 28)`` of one split (labels are not needed)."""
    candidates = [Path(root)] if root else []
    if os.environ.get("NFT_FASHION_MNIST"):
        candidates.append(Path(os.environ["NFT_FASHION_MNIST"]))
    candidates += [Path(d) for d in FASHION_MNIST_DIRS]
    name = f"{'train' if train else 't10k'}-images-idx3-ubyte.gz"
    for folder in candidates:
        if (folder / name).is_file():
            return _read_idx(folder / name)
    raise DataError(
        f"Fashion-MNIST ({name}) was not found in {', '.join(str(c) for c in candidates)}; "
        "install Debian's package (`apt-get install dataset-fashion-mnist`) or set "
        "NFT_FASHION_MNIST to a folder holding the four IDX .gz files"
    )


# ---- rendering ------------------------------------------------------------------------------------
def _triangle(phase: np.ndarray) -> np.ndarray:
    """A triangle wave in [-1, 1] with period 1."""
    return 4 * np.abs(phase - np.floor(phase + 0.5)) - 1


def _trajectory(motion: str, frames: int, size: int, rng: np.random.Generator):
    """Per-frame centre (x, y) in pixels, display size in pixels and angle in radians."""
    t = np.arange(frames, dtype=np.float64)
    span = frames - 1
    diameter = np.full(frames, rng.uniform(12, 16))
    angle = np.full(frames, rng.uniform(-0.3, 0.3))
    margin = diameter[0] / 2 - 2
    cx = np.full(frames, rng.uniform(margin, size - margin))
    cy = np.full(frames, rng.uniform(margin, size - margin))
    if motion in ("right", "left", "down", "up"):
        speed = rng.uniform(0.7, 1.1)
        travel = speed * span
        start = rng.uniform(margin, max(margin, size - margin - travel))
        path = start + speed * t
        if motion in ("left", "up"):
            path = path[::-1].copy()
        if motion in ("right", "left"):
            cx = path
        else:
            cy = path
    elif motion in ("rotate-cw", "rotate-ccw"):
        omega = rng.uniform(0.17, 0.3) * (1 if motion == "rotate-cw" else -1)
        angle = angle + omega * t
    elif motion in ("grow", "shrink"):
        small, large = rng.uniform(7, 9), rng.uniform(20, 24)
        diameter = small * (large / small) ** (t / span)
        if motion == "shrink":
            diameter = diameter[::-1].copy()
        cx = np.full(frames, rng.uniform(size / 2 - 3, size / 2 + 3))
        cy = np.full(frames, rng.uniform(size / 2 - 3, size / 2 + 3))
    elif motion in ("bounce-vertical", "bounce-horizontal"):
        amplitude = rng.uniform(4.5, 7)
        period = rng.uniform(6, 8)  # ≤ one clip, so every clip shows a turn
        offset = amplitude * _triangle(t / period + rng.uniform(0, 1))
        centre = rng.uniform(margin + amplitude / 2, size - margin - amplitude / 2)
        if motion == "bounce-vertical":
            cy = centre + offset
        else:
            cx = centre + offset
    else:  # pragma: no cover - MOTIONS is closed
        raise ConfigError(f"unknown motion {motion!r}")
    return cx, cy, diameter, angle


def render_motion(sprite: np.ndarray, motion: str, *, frames: int, size: int,
                  rng: np.random.Generator, noise: float) -> np.ndarray:
    """One video: ``uint8 (frames, size, size, 3)`` of ``sprite`` (28×28 uint8) doing ``motion``."""
    cx, cy, diameter, angle = _trajectory(motion, frames, size, rng)
    # affine_grid maps output (canvas) coordinates to input (sprite) coordinates, both in [-1, 1]:
    # v = (size / D) · R(−θ) · (u − c), with c the centre in normalised canvas coordinates.
    scale = size / diameter
    cos, sin = np.cos(angle), np.sin(angle)
    theta = np.zeros((frames, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = scale * cos, scale * sin
    theta[:, 1, 0], theta[:, 1, 1] = -scale * sin, scale * cos
    centre = np.stack([2 * cx / size - 1, 2 * cy / size - 1], axis=1)
    theta[:, :, 2] = -np.einsum("fij,fj->fi", theta[:, :, :2], centre)
    grid = F.affine_grid(torch.from_numpy(theta).float(), [frames, 1, size, size], align_corners=False)
    source = torch.tensor(sprite, dtype=torch.float32).div(255).expand(frames, 1, 28, 28)
    image = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    tint = torch.from_numpy(rng.uniform(0.55, 1.0, size=3)).float().view(1, 3, 1, 1)
    background = float(rng.uniform(0.0, 0.12))
    video = background + image * tint * (1 - background)
    video = video + torch.from_numpy(rng.normal(0, noise, size=(frames, 1, size, size))).float()
    video = video.clamp(0, 1).mul(255).round().to(torch.uint8)
    return video.permute(0, 2, 3, 1).contiguous().numpy()


def cache_dir() -> Path:
    """The user cache folder for generated data: ``$NFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/nft``,
    else ``~/.cache/nft``."""
    if os.environ.get("NFT_CACHE_DIR"):
        return Path(os.environ["NFT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nft"


def _generate(config: MotionConfig, target: Path, fashion_root: str | Path | None,
              progress: bool) -> None:
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        motions = MOTIONS[: config.classes]
        index = {"config": asdict(config), "version": GENERATOR_VERSION, "classes": list(motions)}
        for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
            sprites = fashion_mnist(split == "train", fashion_root)
            labels = np.repeat(np.arange(len(motions)), per_class)
            labels = labels[rng.permutation(len(labels))]
            choice = rng.choice(len(sprites), size=len(labels), replace=False)
            entries = []
            for i in tqdm(range(len(labels)), desc=f"motion {split}", disable=not progress, leave=False):
                label = int(labels[i])
                video = render_motion(sprites[choice[i]], MOTIONS[label], frames=config.frames,
                                      size=config.size, rng=rng, noise=config.noise)
                name = f"{split}/{MOTIONS[label]}/{split}_{i:05d}.mp4"
                write_video(work / name, video, fps=config.fps, quality=0)
                entries.append([name, label])
            index[split] = entries
        (work / "index.json").write_text(json.dumps(index))
        try:
            os.replace(work, target)
        except OSError:  # another process finished first: use its copy
            if not (target / "index.json").is_file():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def motion_root(config: MotionConfig, *, root: str | Path | None = None,
                fashion_root: str | Path | None = None, progress: bool = False) -> Path:
    """The folder of the generated videos for ``config``, generating them on first use."""
    folder = Path(root) if root else cache_dir() / "video" / f"motion-{config.key()}"
    if not (folder / "index.json").is_file():
        log.info("generating the motion video set into %s", folder)
        _generate(config, folder, fashion_root, progress)
    return folder


def motion_dataset(split: str, config: MotionConfig | None = None, *, frames: int = 8,
                   stride: int = 1, train: bool | None = None, root: str | Path | None = None,
                   fashion_root: str | Path | None = None, progress: bool = False) -> VideoClips:
    """The ``train`` or ``test`` split of the motion set as a :class:`VideoClips` (cached in memory)."""
    if split not in ("train", "test"):
        raise ConfigError(f"motion split must be 'train' or 'test', not {split!r}")
    config = config or MotionConfig()
    folder = motion_root(config, root=root, fashion_root=fashion_root, progress=progress)
    index = json.loads((folder / "index.json").read_text())
    entries = index[split]
    if frames * stride > config.frames + stride - 1:
        raise ConfigError(f"clips of {frames} frames (stride {stride}) do not fit in the "
                          f"{config.frames}-frame motion videos")
    return VideoClips([folder / name for name, _ in entries], [label for _, label in entries],
                      frames=frames, stride=stride, train=(split == "train") if train is None else train,
                      cache=True, classes=index["classes"])
