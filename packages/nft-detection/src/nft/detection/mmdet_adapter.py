"""mmdet 3.x detectors behind the same calling convention as torchvision's.

:class:`MMDetDetector` wraps any mmdet detector (built from any mmdet config) so that it takes a
list of ``3×H×W`` images in [0, 1] (RGB) and, in training mode, a list of ``{"boxes", "labels"}``
targets (labels 1..C) and returns a dict of loss tensors; in eval mode it returns
``[{"boxes", "labels", "scores"}]`` per image. So :class:`~nft.detection.DetectionTask`,
detection MixUp, the attacks and the metrics work unchanged.

The wrapper does what mmdet's ``DetDataPreprocessor`` does for tensors already in memory:
scale to 0–255, reorder channels to what the config expects (``bgr_to_rgb=False`` means the
model was trained on BGR, mmcv's loading order), normalise with the config's mean/std, pad to
the size divisor, and fill each ``DetDataSample``'s meta information.

Masks: mmcv builds normalisation layers as ``torch.nn`` classes (``BatchNorm2d``, ``GroupNorm``,
``SyncBatchNorm``...), which the core already masks; merging leaves ``wrapper.detector`` a plain
mmdet model, and :func:`save_mmdet_checkpoint` writes it as a checkpoint mmdet's own tools load.

mmdet needs the compiled mmcv 2.1.0; build it once with ``scripts/build_mmcv.sh``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nft.core import ConfigError

__all__ = ["DEFAULT_CONFIG", "MMDetDetector", "build_mmdet_detector", "mmdet_available",
           "save_mmdet_checkpoint"]

DEFAULT_CONFIG = "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py"
"""FCOS (anchor-free, GroupNorm head): its P3 level suits the canvas items (≈ 20–35 px)."""

_INSTALL_HINT = ("mmdet 3.3.0 with the compiled mmcv 2.1.0 is needed: run scripts/build_mmcv.sh "
                 "(it builds mmcv once, caches the wheel and installs mmdet==3.3.0, mmengine==0.10.7)")


def mmdet_available() -> bool:
    """Whether mmdet *and* mmcv's compiled ops import (mmdet's models need both)."""
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def _require():
    if not mmdet_available():
        raise ConfigError(_INSTALL_HINT)
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@contextlib.contextmanager
def _quiet_mmengine():
    """mmengine logs one INFO block per parameter when it initialises weights (hundreds of lines
    per detector built); only its warnings are worth showing here."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _config_path(name: str | Path) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    import mmdet

    shipped = Path(mmdet.__file__).parent / ".mim" / "configs" / str(name)
    if shipped.is_file():
        return shipped
    raise ConfigError(f"mmdet config {name!r} not found (neither a file nor one of mmdet's shipped "
                      f"configs under {shipped.parent.parent}); e.g. {DEFAULT_CONFIG!r}")


def _set_num_classes(node: Any, num_classes: int) -> int:
    """Set every ``num_classes`` in the model config (heads, RoI heads); returns how many."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "num_classes":
                node[key] = num_classes
                count += 1
            else:
                count += _set_num_classes(value, num_classes)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _set_num_classes(value, num_classes)
    return count


def _drop_init_cfg(node: Any) -> None:
    """No pretrained checkpoints: every ``init_cfg`` of type Pretrained is removed."""
    if isinstance(node, dict):
        init = node.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            node["init_cfg"] = None
        for value in node.values():
            _drop_init_cfg(value)
    elif isinstance(node, list):
        for value in node:
            _drop_init_cfg(value)


class MMDetDetector(nn.Module):
    """An mmdet detector with torchvision's calling convention (see the module docstring)."""

    def __init__(self, detector: nn.Module, *, mean, std, to_bgr: bool, pad_divisor: int = 32) -> None:
        super().__init__()
        self.detector = detector
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.to_bgr = bool(to_bgr)
        self.pad_divisor = max(1, int(pad_divisor))

    def _batch(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[dict]]:
        height = max(int(i.shape[-2]) for i in images)
        width = max(int(i.shape[-1]) for i in images)
        height = -(-height // self.pad_divisor) * self.pad_divisor
        width = -(-width // self.pad_divisor) * self.pad_divisor
        batch, metas = [], []
        for image in images:
            x = image * 255.0
            if self.to_bgr:
                x = x.flip(0)
            x = (x - self.mean) / self.std
            h, w = int(image.shape[-2]), int(image.shape[-1])
            batch.append(F.pad(x, (0, width - w, 0, height - h)))
            metas.append({"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (height, width),
                          "batch_input_shape": (height, width), "scale_factor": (1.0, 1.0)})
        return torch.stack(batch), metas

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        batch, metas = self._batch(list(images))
        samples = [DetDataSample(metainfo=meta) for meta in metas]
        if self.training:
            if targets is None:
                raise ConfigError("an mmdet detector in training mode needs targets")
            for sample, target in zip(samples, targets):
                sample.gt_instances = InstanceData(bboxes=target["boxes"].float(),
                                                   labels=target["labels"].long() - 1)
            losses = self.detector.loss(batch, samples)
            out = {}
            for key, value in losses.items():
                if "loss" not in key:  # accuracies and the like are logged, not optimised
                    continue
                out[key] = sum(value) if isinstance(value, (list, tuple)) else value
            return out
        results = self.detector.predict(batch, samples, rescale=False)
        return [{"boxes": r.pred_instances.bboxes, "labels": r.pred_instances.labels.long() + 1,
                 "scores": r.pred_instances.scores} for r in results]


def build_mmdet_detector(num_classes: int, *, config: str | Path = DEFAULT_CONFIG,
                         depth: int | None = 18, size: int | None = None,
                         overrides: dict | None = None) -> MMDetDetector:
    """Build an mmdet detector from a config (a path, or a config shipped inside mmdet) with
    random weights (every ``Pretrained`` init is dropped) and ``num_classes`` categories.

    ``depth`` swaps a ResNet backbone for a plain (pytorch-style, trainable-BN) ResNet of that
    depth and fits the neck's input channels — ResNet-18 keeps CPU training affordable; ``None``
    keeps the config's backbone. ``overrides`` is merged into the model config (mmengine style).
    ``size`` is accepted for symmetry with the torchvision builders (inputs are used as given).
    """
    _require()
    from mmdet.registry import MODELS
    from mmengine.config import Config

    cfg = Config.fromfile(str(_config_path(config)))
    model_cfg = copy.deepcopy(cfg.model)
    if _set_num_classes(model_cfg, num_classes) == 0:
        raise ConfigError(f"mmdet config {config} has no num_classes to set")
    backbone = model_cfg.get("backbone", {})
    if depth is not None and backbone.get("type") in ("ResNet", "ResNetV1d"):
        widths = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048],
                  101: [256, 512, 1024, 2048]}
        if depth not in widths:
            raise ConfigError(f"ResNet depth {depth} is not one of {sorted(widths)}")
        backbone.update(type="ResNet", depth=depth, style="pytorch", frozen_stages=-1,
                        norm_cfg=dict(type="BN", requires_grad=True), norm_eval=False, init_cfg=None)
        neck = model_cfg.get("neck")
        out_indices = backbone.get("out_indices", (0, 1, 2, 3))
        if isinstance(neck, dict) and "in_channels" in neck:
            neck["in_channels"] = [widths[depth][i] for i in out_indices]
        cfg_pre = dict(cfg.model.get("data_preprocessor", {}))
        cfg_pre.update(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
        model_cfg["data_preprocessor"] = cfg_pre
    if overrides:
        from mmengine.config import ConfigDict

        merged = Config(dict(model=model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg))
        merged.merge_from_dict({f"model.{k}": v for k, v in overrides.items()})
        model_cfg = ConfigDict(merged.model)
    _drop_init_cfg(model_cfg)
    pre = dict(model_cfg.get("data_preprocessor", {}) or {})
    with _quiet_mmengine():
        detector = MODELS.build(model_cfg)
        detector.init_weights()
    mean = pre.get("mean", [0.0, 0.0, 0.0])
    std = pre.get("std", [1.0, 1.0, 1.0])
    to_bgr = not pre.get("bgr_to_rgb", False) and not pre.get("rgb_to_bgr", False)
    return MMDetDetector(detector, mean=mean, std=std, to_bgr=to_bgr,
                         pad_divisor=pre.get("pad_size_divisor", 32))


def save_mmdet_checkpoint(model: MMDetDetector, path: str | Path) -> Path:
    """Write the wrapped detector as an mmengine checkpoint (``{"meta", "state_dict"}``), which
    ``mmengine.runner.load_checkpoint`` / ``mmdet.apis.init_detector`` load into the same config."""
    if not isinstance(model, MMDetDetector):
        raise ConfigError(f"save_mmdet_checkpoint needs an MMDetDetector, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.detector.state_dict().items()}
    torch.save({"meta": {"source": "nft-detection"}, "state_dict": state}, path)
    return path
