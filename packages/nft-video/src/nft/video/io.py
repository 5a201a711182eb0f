"""Reading and writing video files with PyAV.

torchvision 0.29 no longer ships ``torchvision.io.read_video``, so every decode in this package
goes through these two functions. Frames are ``uint8`` tensors of shape ``(T, H, W, 3)`` (RGB),
the layout video files store; the datasets turn them into float clips ``(3, T, H, W)``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from nft.core import ConfigError, DataError

__all__ = ["read_video", "write_video", "require_av"]

log = logging.getLogger(__name__)


def require_av():
    """Import PyAV, or explain how to install it."""
    try:
        import av
    except ImportError:  # pragma: no cover - av is a hard dependency of nft-video
        raise ConfigError(
            "decoding video needs PyAV; install it with `pip install av` (it ships FFmpeg)"
        ) from None
    return av


def read_video(path: str | Path, *, max_frames: int | None = None) -> torch.Tensor:
    """Decode every frame (or the first ``max_frames``) of a video file as ``uint8 (T, H, W, 3)``."""
    av = require_av()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video file {path} does not exist; check the dataset root and split files")
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path} has no video stream; it is not a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - av raises many FFmpeg error types
        raise DataError(f"could not decode {path} ({type(err).__name__}: {err}); the file is "
                        "damaged or not a video FFmpeg can read") from None
    if not frames:
        raise DataError(f"{path} decoded to zero frames; the file is empty or damaged")
    return torch.from_numpy(np.stack(frames))


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, *, fps: int = 8,
                codec: str | None = None, quality: int = 12) -> None:
    """Encode ``uint8 (T, H, W, 3)`` frames into ``path`` (atomically: temp file, then rename).

    ``codec`` defaults to H.264 for ``.mp4`` and MPEG-4 part 2 for ``.avi`` (what UCF-101 and
    HMDB-51 ship); ``quality`` is x264's CRF (lower is better; 12 is visually lossless, 0 is
    lossless). Only ``quality=0`` decodes to the same pixels every time: lossy x264 output varies
    from run to run for the same frames (measured: up to 14 grey levels once another video had
    been decoded in the process, with one encoder thread too), so data that must be reproducible
    is written losslessly.
    """
    av = require_av()
    path = Path(path)
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ConfigError(f"write_video needs uint8 frames of shape (T, H, W, 3), got "
                          f"{array.dtype} {array.shape}")
    height, width = array.shape[1:3]
    if height % 2 or width % 2:
        raise ConfigError(f"video frames need even height and width for yuv420p, got {height}x{width}")
    suffix = path.suffix.lower()
    codec = codec or ("mpeg4" if suffix == ".avi" else "libx264")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(quality), "preset": "veryfast"}
            elif codec == "mpeg4":
                stream.options = {"qscale": "2"}
            for image in array:
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
