"""Clip accuracy, video accuracy and ASR of a video classifier.

* ``acc`` (clip accuracy): every one of ``clips_per_video`` evenly spaced clips of every test
  video is classified on its own; the share that is right.
* ``video_acc``: the softmax scores of a video's clips are averaged and the video gets one
  prediction (the usual multi-clip protocol of action recognition).
* ``asr`` / ``ra``: the same clips of the non-target test videos with the trigger applied; the
  share predicted as the attack's target / still given their true label (clip level), and
  ``video_asr`` at video level.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from nft.core.purify import resolve_device

from .datasets import VideoClips

__all__ = ["evaluate_video"]


@torch.no_grad()
def _scores(model: nn.Module, dataset: VideoClips, indices: np.ndarray, clips: int, batch: int,
            device: torch.device, apply: Callable[[torch.Tensor], torch.Tensor] | None,
            progress: bool, desc: str) -> torch.Tensor:
    from tqdm.auto import tqdm

    out = []
    per_step = max(1, batch // clips)
    for start in tqdm(range(0, len(indices), per_step), desc=desc, disable=not progress, leave=False):
        chunk = indices[start: start + per_step]
        x = torch.cat([dataset.clips(int(i), clips) for i in chunk])
        if apply is not None:
            x = apply(x)
        logits = model(x.to(device)).float().cpu()
        out.append(logits.view(len(chunk), clips, -1))
    return torch.cat(out) if out else torch.empty(0, clips, 0)


@torch.no_grad()
def evaluate_video(model: nn.Module, test: VideoClips, *, trigger: Callable | None = None,
                   target_of: Callable[[int], int] | None = None, clips_per_video: int = 3,
                   batch_size: int = 64, device: str | torch.device | None = None,
                   progress: bool = False) -> dict[str, float]:
    """``{"acc", "video_acc"}`` plus ``{"asr", "ra", "video_asr"}`` when a trigger is given.

    The model is evaluated in eval mode and its mode and device are restored afterwards.
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    original = next(iter(model.parameters()), torch.empty(0)).device
    model.eval().to(device)
    try:
        labels = torch.as_tensor(test.targets)
        all_idx = np.arange(len(test))
        scores = _scores(model, test, all_idx, clips_per_video, batch_size, device, None, progress,
                         "eval clean")
        clip_pred = scores.argmax(-1)
        video_pred = scores.softmax(-1).mean(1).argmax(-1)
        out = {"acc": float((clip_pred == labels[:, None]).float().mean()),
               "video_acc": float((video_pred == labels).float().mean())}
        if trigger is not None and target_of is not None:
            keep = np.array([i for i in all_idx if target_of(int(labels[i])) != int(labels[i])])
            targets = torch.tensor([target_of(int(labels[i])) for i in keep])
            true = labels[keep]
            scores = _scores(model, test, keep, clips_per_video, batch_size, device, trigger,
                             progress, "eval triggered")
            clip_pred = scores.argmax(-1)
            video_pred = scores.softmax(-1).mean(1).argmax(-1)
            out["asr"] = float((clip_pred == targets[:, None]).float().mean())
            out["ra"] = float((clip_pred == true[:, None]).float().mean())
            out["video_asr"] = float((video_pred == targets).float().mean())
        return out
    finally:
        model.to(original)
        model.train(was_training)
