"""Video datasets: clips decoded from files, and the UCF-101 / HMDB-51 official splits.

A :class:`VideoClips` dataset holds a list of video files and their labels and yields one clip
per video, ``(float clip (3, T, H, W) in [0, 1], label)``. In training mode the clip starts at a
random frame (drawn from torch's global RNG, which the training and purification loops seed);
in evaluation mode it is the central clip. :meth:`VideoClips.clips` gives several evenly spaced
clips of one video, which the video-level accuracy averages.

Horizontal flips are deliberately not part of training augmentation: the embedded ``motion``
set has left/right classes, and flipping would swap them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nft.core import ConfigError, DataError

from .io import read_video

__all__ = ["VideoClips", "hmdb51_split", "ucf101_split"]

log = logging.getLogger(__name__)


class VideoClips(Dataset):
    """One clip per video file.

    Args:
        videos: video file paths.
        labels: one integer label per video.
        frames: clip length ``T``.
        stride: temporal step between the clip's frames.
        size: ``(H, W)`` the frames are resized to (``None``: keep the file's size).
        train: random clip start (training) or the central clip (evaluation).
        cache: keep decoded videos in memory (small datasets: the embedded ``motion`` set).
        classes: class names, index = label (for reports).
    """

    def __init__(self, videos: Sequence[str | Path], labels: Sequence[int], *, frames: int = 8,
                 stride: int = 1, size: tuple[int, int] | None = None, train: bool = False,
                 cache: bool = False, classes: Sequence[str] | None = None) -> None:
        if len(videos) != len(labels):
            raise DataError(f"{len(videos)} videos but {len(labels)} labels; give one label per video")
        if frames < 1 or stride < 1:
            raise ConfigError(f"clip frames and stride must be ≥ 1, got {frames} and {stride}")
        self.videos = [Path(v) for v in videos]
        self.targets = np.asarray(labels, dtype=np.int64)
        self.frames, self.stride = int(frames), int(stride)
        self.size = tuple(size) if size is not None else None
        self.train = train
        self.cache = cache
        self.classes = list(classes) if classes is not None else None
        self._store: dict[int, torch.Tensor] = {}
        self.overrides: dict[int, torch.Tensor] = {}
        """Index -> replacement ``uint8 (T, H, W, 3)`` frames (clean-label poisoned videos)."""

    def __len__(self) -> int:
        return len(self.videos)

    def with_mode(self, *, train: bool) -> VideoClips:
        """A view of the same videos (sharing the decode cache) in another sampling mode."""
        other = VideoClips.__new__(VideoClips)
        other.__dict__.update(self.__dict__)
        other.train = train
        other.overrides = dict(self.overrides)
        return other

    # ---- decoding --------------------------------------------------------------------------
    def video(self, index: int) -> torch.Tensor:
        """All frames of video ``index``, ``uint8 (T, H, W, 3)``, resized to ``size``."""
        if index in self.overrides:
            return self.overrides[index]
        if index in self._store:
            return self._store[index]
        frames = read_video(self.videos[index])
        if self.size is not None and tuple(frames.shape[1:3]) != self.size:
            resized = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=self.size,
                                    mode="bilinear", align_corners=False, antialias=True)
            frames = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        if self.cache:
            self._store[index] = frames
        return frames

    def _indices(self, length: int, start: int) -> torch.Tensor:
        idx = start + torch.arange(self.frames) * self.stride
        return idx.clamp(max=length - 1)  # a video shorter than a clip repeats its last frame

    def span(self) -> int:
        return (self.frames - 1) * self.stride + 1

    def starts(self, length: int, count: int) -> list[int]:
        """``count`` evenly spaced clip starts covering a video of ``length`` frames."""
        last = max(0, length - self.span())
        if count == 1:
            return [last // 2]
        return [int(round(i * last / (count - 1))) for i in range(count)]

    @staticmethod
    def to_clip(frames: torch.Tensor) -> torch.Tensor:
        """``uint8 (T, H, W, 3)`` -> ``float (3, T, H, W)`` in [0, 1]."""
        return frames.permute(3, 0, 1, 2).float().div_(255.0)

    def clip_at(self, index: int, start: int) -> torch.Tensor:
        frames = self.video(index)
        return self.to_clip(frames[self._indices(len(frames), start)])

    def clips(self, index: int, count: int) -> torch.Tensor:
        """``count`` evenly spaced clips of video ``index``: ``(count, 3, T, H, W)``."""
        frames = self.video(index)
        return torch.stack([self.to_clip(frames[self._indices(len(frames), s)])
                            for s in self.starts(len(frames), count)])

    def __getitem__(self, index: int):
        frames = self.video(index)
        last = max(0, len(frames) - self.span())
        if self.train:
            start = int(torch.randint(0, last + 1, (1,)))
        else:
            start = last // 2
        return self.to_clip(frames[self._indices(len(frames), start)]), int(self.targets[index])


# ---- UCF-101 ------------------------------------------------------------------------------------
def _find(root: Path, names: Sequence[str], what: str, fix: str) -> Path:
    for name in names:
        for candidate in (root / name, *root.glob(f"*/{name}")):
            if candidate.exists():
                return candidate
    raise DataError(f"{what} not found under {root} (looked for {', '.join(names)}); {fix}")


def ucf101_split(root: str | Path, *, split: int = 1, train: bool = True
                 ) -> tuple[list[Path], list[int], list[str]]:
    """Videos, labels and class names of one official UCF-101 split.

    Expects the dataset as distributed: ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and the split
    folder ``ucfTrainTestlist/`` (``classInd.txt`` "1 ApplyEyeMakeup", ``trainlist0N.txt``
    "Class/video.avi 1", ``testlist0N.txt`` "Class/video.avi"), both under ``root``.
    Labels are ``classInd`` indices minus one.
    """
    if split not in (1, 2, 3):
        raise ConfigError(f"UCF-101 has official splits 1, 2 and 3, not {split}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"UCF-101 root {root} does not exist; pass --data-root pointing at the "
                        "folder holding UCF-101/ and ucfTrainTestlist/")
    fix = "download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip and extract both there"
    lists = _find(root, ["ucfTrainTestlist"], "the UCF-101 split folder ucfTrainTestlist", fix)
    video_root = _find(root, ["UCF-101", "UCF101", "videos"], "the UCF-101 video folder", fix)
    classes: list[str] = []
    for line in (lists / "classInd.txt").read_text().splitlines():
        if line.strip():
            number, name = line.split()
            if int(number) != len(classes) + 1:
                raise DataError(f"{lists / 'classInd.txt'} is not numbered 1..N in order at {line!r}")
            classes.append(name)
    index = {name.lower(): i for i, name in enumerate(classes)}
    list_file = lists / f"{'trainlist' if train else 'testlist'}0{split}.txt"
    if not list_file.is_file():
        raise DataError(f"split file {list_file} is missing; {fix}")
    videos, labels = [], []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        relative = parts[0].replace("\\", "/")
        name = relative.split("/")[0].lower()
        if name not in index:
            raise DataError(f"{list_file}:{number}: class {relative.split('/')[0]!r} is not in classInd.txt")
        label = index[name]
        if len(parts) > 1 and int(parts[1]) - 1 != label:
            raise DataError(f"{list_file}:{number}: label {parts[1]} disagrees with classInd.txt "
                            f"({label + 1} for {classes[label]})")
        videos.append(video_root / relative)
        labels.append(label)
    missing = [v for v in videos if not v.is_file()]
    if missing:
        raise DataError(f"{len(missing)} videos listed in {list_file.name} are missing, e.g. "
                        f"{missing[0]}; extract UCF101.rar into {video_root}")
    return videos, labels, classes


# ---- HMDB-51 ------------------------------------------------------------------------------------
_HMDB_SPLIT = re.compile(r"^(?P<cls>.+)_test_split(?P<split>[123])\.txt$")


def hmdb51_split(root: str | Path, *, split: int = 1, train: bool = True
                 ) -> tuple[list[Path], list[int], list[str]]:
    """Videos, labels and class names of one official HMDB-51 split.

    Expects ``<Class>/<video>.avi`` (the per-class rar archives extracted) and the split folder
    ``testTrainMulti_7030_splits/`` whose ``<class>_test_split<N>.txt`` files list
    "<video>.avi <id>" with id 1 = train, 2 = test, 0 = unused. Classes are sorted by name.
    """
    if split not in (1, 2, 3):
        raise ConfigError(f"HMDB-51 has official splits 1, 2 and 3, not {split}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"HMDB-51 root {root} does not exist; pass --data-root pointing at the "
                        "folder holding the class folders and testTrainMulti_7030_splits/")
    fix = "download hmdb51_org.rar and test_train_splits.rar and extract both there"
    lists = _find(root, ["testTrainMulti_7030_splits"], "the HMDB-51 split folder", fix)
    files = {}
    for path in lists.iterdir():
        match = _HMDB_SPLIT.match(path.name)
        if match and int(match["split"]) == split:
            files[match["cls"]] = path
    if not files:
        raise DataError(f"no *_test_split{split}.txt files in {lists}; {fix}")
    classes = sorted(files)
    video_root = lists.parent
    wanted = "1" if train else "2"
    videos, labels = [], []
    for label, name in enumerate(classes):
        folder = _find(video_root, [name, f"hmdb51_org/{name}"], f"HMDB-51 class folder {name}", fix)
        for number, line in enumerate(files[name].read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{files[name]}:{number}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] == wanted:
                videos.append(folder / parts[0])
                labels.append(label)
    missing = [v for v in videos if not v.is_file()]
    if missing:
        raise DataError(f"{len(missing)} HMDB-51 videos of split {split} are missing, e.g. {missing[0]}")
    return videos, labels, classes
