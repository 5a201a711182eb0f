"""Video I/O, the UCF-101 / HMDB-51 loaders on split files and videos written here, and the
embedded motion set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nft.core import ConfigError, DataError
from nft.video import VideoClips, hmdb51_split, read_video, ucf101_split, write_video
from nft.video.motion import MOTIONS, MotionConfig, fashion_mnist, motion_dataset, motion_root, render_motion


def _video(frames: int = 12, size: int = 24, seed: int = 0) -> np.ndarray:
    """A smooth moving gradient (compresses well, so lossy codecs keep it close)."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(size), np.arange(size), indexing="ij")
    base = (np.sin((x + 2 * t + seed) / 4.0) * 0.5 + 0.5) * 200 + 20
    return np.stack([base, base[:, ::-1], np.full_like(base, 90.0)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_read_round_trip(tmp_path, suffix):
    frames = _video()
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, fps=10)
    back = read_video(path)
    assert back.dtype == torch.uint8 and tuple(back.shape) == frames.shape
    # lossy (chroma is subsampled): compare brightness
    luma = (back.float().mean(-1) - torch.from_numpy(frames).float().mean(-1)).abs().mean()
    assert luma < 6
    assert tuple(read_video(path, max_frames=5).shape) == (5, 24, 24, 3)


def test_io_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(DataError, match="could not decode|no video stream"):
        read_video(junk)
    with pytest.raises(ConfigError, match="uint8 frames"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 9, 8, 3), np.uint8))


def test_video_clips_sampling(tmp_path):
    write_video(tmp_path / "a.mp4", _video(frames=12, size=24))
    write_video(tmp_path / "b.mp4", _video(frames=5, size=24, seed=3))  # shorter than a clip
    ds = VideoClips([tmp_path / "a.mp4", tmp_path / "b.mp4"], [0, 1], frames=8, size=(16, 16),
                    train=False, cache=True)
    clip, label = ds[0]
    assert clip.shape == (3, 8, 16, 16) and label == 0
    assert 0 <= clip.min() and clip.max() <= 1
    assert torch.equal(clip, ds.clip_at(0, 2))  # the central clip of 12 frames starts at 2
    many = ds.clips(0, 3)
    assert many.shape == (3, 3, 8, 16, 16)
    assert torch.equal(many[0], ds.clip_at(0, 0)) and torch.equal(many[2], ds.clip_at(0, 4))
    short, _ = ds[1]  # 5 frames: the last frame repeats
    assert torch.equal(short[:, 4], short[:, 7])
    train = ds.with_mode(train=True)
    torch.manual_seed(1)
    starts = {int(((train[0][0] - ds.clip_at(0, s)).abs().sum() == 0).item()) * s for s in range(5)}
    assert len(starts) >= 1
    with pytest.raises(DataError, match="one label per video"):
        VideoClips([tmp_path / "a.mp4"], [0, 1])


def _ucf_tree(root, classes=("ApplyEyeMakeup", "Biking", "Surfing")):
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    train, test = [], []
    for i, c in enumerate(classes):
        for g, kind in ((8, train), (9, train), (1, test)):
            name = f"{c}/v_{c}_g{g:02d}_c01.avi"
            write_video(root / "UCF-101" / name, _video(frames=10, size=16, seed=i), fps=10)
            kind.append(f"{name} {i + 1}" if kind is train else name)
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    return lists


def test_ucf101_split(tmp_path):
    lists = _ucf_tree(tmp_path)
    videos, labels, classes = ucf101_split(tmp_path, split=1, train=True)
    assert classes == ["ApplyEyeMakeup", "Biking", "Surfing"]
    assert labels == [0, 0, 1, 1, 2, 2] and len(videos) == 6
    assert videos[2].name == "v_Biking_g08_c01.avi"
    tvideos, tlabels, _ = ucf101_split(tmp_path, split=1, train=False)
    assert tlabels == [0, 1, 2] and all("_g01_" in v.name for v in tvideos)
    ds = VideoClips(tvideos, tlabels, frames=4, stride=2, size=(8, 8))
    clip, label = ds[1]
    assert clip.shape == (3, 4, 8, 8) and label == 1
    # errors name the problem
    with pytest.raises(DataError, match="split file"):
        ucf101_split(tmp_path, split=2)
    with pytest.raises(ConfigError, match="1, 2 and 3"):
        ucf101_split(tmp_path, split=4)
    (lists / "trainlist01.txt").write_text("Biking/v_Biking_g08_c01.avi 3\n")
    with pytest.raises(DataError, match="disagrees with classInd"):
        ucf101_split(tmp_path)
    (lists / "trainlist01.txt").write_text("Biking/v_Biking_g99_c01.avi 2\n")
    with pytest.raises(DataError, match="missing"):
        ucf101_split(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ucf101_split(tmp_path / "nowhere")


def test_hmdb51_split(tmp_path):
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    for c in ("brush_hair", "cartwheel"):
        rows = []
        for k, flag in enumerate(["1", "1", "2", "0"]):
            name = f"{c}_clip{k}.avi"
            write_video(tmp_path / c / name, _video(frames=6, size=16, seed=k), fps=10)
            rows.append(f"{name} {flag} ")
        (lists / f"{c}_test_split1.txt").write_text("\n".join(rows) + "\n")
        (lists / f"{c}_test_split2.txt").write_text(f"{c}_clip3.avi 1 \n")
    videos, labels, classes = hmdb51_split(tmp_path, split=1, train=True)
    assert classes == ["brush_hair", "cartwheel"]
    assert labels == [0, 0, 1, 1]
    assert [v.name for v in videos[:2]] == ["brush_hair_clip0.avi", "brush_hair_clip1.avi"]
    tvideos, tlabels, _ = hmdb51_split(tmp_path, split=1, train=False)
    assert tlabels == [0, 1] and all(v.name.endswith("clip2.avi") for v in tvideos)
    assert [v.name for v in hmdb51_split(tmp_path, split=2)[0]] == ["brush_hair_clip3.avi",
                                                                     "cartwheel_clip3.avi"]
    with pytest.raises(DataError, match="no \\*_test_split3"):
        hmdb51_split(tmp_path, split=3)
    (lists / "cartwheel_test_split1.txt").write_text("cartwheel_clip0.avi train\n")
    with pytest.raises(DataError, match="expected"):
        hmdb51_split(tmp_path, split=1)


def _centroid(video: np.ndarray) -> np.ndarray:
    """Per-frame brightness-weighted centre (x, y) and mass of the moving image."""
    grey = video.astype(np.float64).mean(-1)
    grey = np.clip(grey - np.median(grey, axis=(1, 2), keepdims=True) - 20, 0, None)
    ys, xs = np.mgrid[0:grey.shape[1], 0:grey.shape[2]]
    mass = grey.sum((1, 2))
    return np.stack([(grey * xs).sum((1, 2)) / mass, (grey * ys).sum((1, 2)) / mass, mass], 1)


def test_motion_classes_move_as_named():
    sprites = fashion_mnist(train=True)
    assert sprites.shape[1:] == (28, 28) and sprites.dtype == np.uint8
    rng = np.random.default_rng(0)
    trends = {}
    for motion in ("right", "left", "down", "up", "grow", "shrink"):
        moves = []
        for k in range(4):
            video = render_motion(sprites[k], motion, frames=16, size=32, rng=rng, noise=0.0)
            c = _centroid(video)
            moves.append(c[-1] - c[0])
        trends[motion] = np.mean(moves, axis=0)
    assert trends["right"][0] > 6 and trends["left"][0] < -6
    assert trends["down"][1] > 6 and trends["up"][1] < -6
    assert trends["grow"][2] > 0 > trends["shrink"][2]
    # the same seed renders the same video
    a = render_motion(sprites[0], "rotate-cw", frames=8, size=32, rng=np.random.default_rng(5), noise=0.03)
    b = render_motion(sprites[0], "rotate-cw", frames=8, size=32, rng=np.random.default_rng(5), noise=0.03)
    assert np.array_equal(a, b)


def test_motion_set_written_as_videos_and_cached(small_motion):
    folder = motion_root(small_motion)
    index = json.loads((folder / "index.json").read_text())
    assert index["classes"] == list(MOTIONS[: small_motion.classes])
    assert len(index["train"]) == small_motion.classes * small_motion.train_per_class
    files = sorted(folder.glob("train/*/*.mp4"))
    assert len(files) == len(index["train"])
    stamp = files[0].stat().st_mtime_ns
    assert motion_root(small_motion) == folder and files[0].stat().st_mtime_ns == stamp  # reused
    assert folder.name.endswith(small_motion.key())
    assert MotionConfig(train_per_class=31).key() != small_motion.key()
    ds = motion_dataset("test", small_motion, frames=8)
    clip, label = ds[0]
    assert clip.shape == (3, 8, 32, 32) and 0 <= label < small_motion.classes
    assert torch.equal(ds.video(0), read_video(ds.videos[0]))  # the loader reads the real file
    counts = np.bincount(ds.targets, minlength=small_motion.classes).tolist()
    assert counts == [small_motion.test_per_class] * small_motion.classes
    assert MotionConfig().key() != MotionConfig(classes=4).key()


def test_motion_set_decodes_to_the_same_pixels_every_time(small_motion, tmp_path):
    """The generated set is written losslessly: generating it again (another folder, after other
    videos were decoded in this process, which made lossy x264 output differ) gives the same
    pixels, so a seed fixes a video run's data on every machine."""
    read_video(sorted(motion_root(small_motion).glob("test/*/*.mp4"))[0])
    again = MotionConfig(train_per_class=2, test_per_class=2, classes=3)
    first = motion_root(again, root=tmp_path / "a")
    read_video(sorted(first.glob("train/*/*.mp4"))[-1])
    second = motion_root(again, root=tmp_path / "b")
    names = [name for name, _ in json.loads((first / "index.json").read_text())["train"]]
    assert len(names) == 6
    for name in names:
        assert torch.equal(read_video(first / name), read_video(second / name)), name


def test_fashion_mnist_missing_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("nft.video.motion.FASHION_MNIST_DIRS", ())
    monkeypatch.delenv("NFT_FASHION_MNIST", raising=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(train=True, root=tmp_path)
