"""Masks on every detector family: invisible at injection, folded exactly, plain model after merge."""

import copy
import functools

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from nft.core import MaskConfig, MaskedModel, inject_masks
from nft.core.testing import MaskingContract, assert_outputs_close
from nft.detection import build_detector, default_mask_config, freeze_batchnorm
from nft.detection.mmdet_adapter import mmdet_available

from .helpers import toy_targets

NUM_CLASSES = 10


def _images(size, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def _targets(size):
    return toy_targets(size)


def _calibrated(model, size, frozen=False):
    """Give a random detector realistic BatchNorm statistics (one batch), optionally freeze them
    into FrozenBatchNorm2d, and stop later train-mode calls from moving them (momentum 0).
    Without this, a random detector's eval activations are ~1e-7 and comparisons are vacuous."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # cumulative average: one call sets the batch statistics
    model.train()
    with torch.no_grad():
        batch, _ = model.transform(_images(size, n=2, seed=9))
        model.backbone(batch.tensors)
        if hasattr(model, "head"):
            model.head(list(model.backbone(batch.tensors).values()))
    for m in norms:
        m.momentum = 0.0
    if frozen:
        freeze_batchnorm(model.backbone)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _ssdlite():
    """Built and calibrated once; every contract test gets a deep copy (building is the slow part)."""
    torch.manual_seed(0)
    return _calibrated(build_detector("ssdlite", NUM_CLASSES, size=64, width=0.5), 64)


class TestSSDLiteContract(MaskingContract):
    """The core's full conformance suite on the default detector."""

    atol = 1e-7

    def make_model(self):
        return copy.deepcopy(_ssdlite())

    def make_inputs(self):
        return _images(64)

    def run(self, model, inputs):
        # a fresh MaskedModel wrapper is in training mode; the detector's own mode decides
        if (model.model if isinstance(model, MaskedModel) else model).training:
            return model(inputs, _targets(64))
        return _raw(model, inputs)


def _raw(model, images):
    """Eval-mode raw outputs (features and head outputs): a random detector's post-processed
    predictions can be empty, which would make output comparisons vacuous."""
    detector = model.model if isinstance(model, MaskedModel) else model
    batch, _ = detector.transform(images)
    features = detector.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = {"0": features}
    out = dict(features)
    if hasattr(detector, "head"):
        head = detector.head(list(features.values()))
        out.update({f"head_{k}": v for k, v in head.items()})
    else:  # two-stage: the RPN head's objectness and box deltas
        objectness, deltas = detector.rpn.head(list(features.values()))
        out.update({f"rpn_obj_{i}": o for i, o in enumerate(objectness)})
        out.update({f"rpn_box_{i}": d for i, d in enumerate(deltas)})
    return out


def _perturb(masked, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masked.mask_parameters():
            m.copy_(torch.rand(m.shape, generator=g) * 0.7 + 0.3)


FAMILIES = [
    # name, build options, input size
    ("ssd-tiny", {"size": 48}, 48),
    ("ssd300-vgg16", {"size": 268}, 268),
    ("fasterrcnn-mobilenet", {"size": 96, "frozen_bn": True}, 96),
    ("fasterrcnn-r50", {"size": 64, "frozen_bn": True}, 64),
    ("retinanet", {"size": 64}, 64),
    ("fcos", {"size": 64}, 64),
]


@pytest.mark.parametrize("name,options,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_merge_equivalence(name, options, size):
    torch.manual_seed(0)
    options = dict(options)
    frozen = options.pop("frozen_bn", False)
    model = _calibrated(build_detector(name, NUM_CLASSES, **options), size, frozen=frozen)
    klass, keys = type(model), list(model.state_dict())
    images, targets = _images(size, n=1), _targets(size)[:1]
    reference = copy.deepcopy(model)
    masked = inject_masks(model, default_mask_config(name))
    assert len(masked) > 0
    if name == "ssd300-vgg16":  # no BatchNorm: the L2Norm scale is its norm mask, convs the rest
        assert masked.masks["backbone"].shape == (512,)
        assert any(n.startswith("head.") for n in masked.masks)
    _perturb(masked)
    with torch.no_grad():
        expected = _raw(masked, images)
        masked.train()
        torch.manual_seed(1)  # two-stage detectors sample proposals at random
        expected_loss = masked(images, targets)
        masked.eval()
    merged = masked.merge_and_unload()
    assert type(merged) is klass and list(merged.state_dict()) == keys
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in merged.modules())
    with torch.no_grad():
        assert_outputs_close(_raw(merged, images), expected, atol=1e-5)
        merged.train()
        torch.manual_seed(1)
        assert_outputs_close(merged(images, targets), expected_loss, atol=1e-5)
        merged.eval()
        # the masks really changed the model (so the equalities above are not vacuous)
        before = _raw(reference.eval(), images)
    assert any(float((before[k] - expected[k]).abs().max()) > 1e-2 * float(expected[k].abs().max())
               for k in expected)
    if frozen:
        frozen = [n for n, m in merged.named_modules() if isinstance(m, FrozenBatchNorm2d)]
        assert frozen and set(frozen) <= set(masked.masks), "a FrozenBatchNorm2d was not masked"
        # γ is a buffer and stays one after merging
        layer = dict(merged.named_modules())[frozen[0]]
        assert "weight" in dict(layer.named_buffers()) and not list(layer.parameters())


def test_norm_masks_cover_backbone_and_head():
    model = copy.deepcopy(_ssdlite())
    names = list(inject_masks(model, MaskConfig()).masks)
    assert any(n.startswith("backbone.features") for n in names)
    assert any(n.startswith("backbone.extra") for n in names)
    assert any(n.startswith("head.") for n in names)


def test_unknown_detector_is_rejected():
    from nft.core import ConfigError

    with pytest.raises(ConfigError, match="unknown torchvision detector"):
        build_detector("yolo-v99", NUM_CLASSES)
    with pytest.raises(ConfigError, match="268"):
        build_detector("ssd300-vgg16", NUM_CLASSES, size=200)


@pytest.mark.skipif(not mmdet_available(), reason="mmdet with compiled mmcv is not installed "
                    "(scripts/build_mmcv.sh installs it)")
def test_mmdet_merge_equivalence_and_checkpoint(tmp_path):
    from mmengine.runner import load_checkpoint

    from nft.detection.mmdet_adapter import build_mmdet_detector, save_mmdet_checkpoint

    torch.manual_seed(0)
    model = build_mmdet_detector(NUM_CLASSES).eval()
    images, targets = _images(64, n=1), _targets(64)[:1]
    klass = type(model.detector)
    masked = inject_masks(model, MaskConfig())
    masked_layers = [m for n, m in model.named_modules() if n in masked.masks]
    # backbone BN and the head's GroupNorm (parametrised, so matched by base class, not name)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in masked_layers)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in masked_layers)
    _perturb(masked)

    def features(m):
        return list(m.detector.extract_feat(m._batch(images)[0]))

    with torch.no_grad():
        # The training-mode pass first: it updates BN running statistics, which the eval-mode
        # features must already include.
        masked.train()
        expected_loss = masked(images, targets)
        masked.eval()
        expected = features(model)
    merged = masked.merge_and_unload()
    assert type(merged.detector) is klass
    with torch.no_grad():
        assert_outputs_close(features(merged), expected, atol=1e-4)
        merged.train()
        assert_outputs_close(merged(images, targets), expected_loss, atol=1e-4)
    path = save_mmdet_checkpoint(merged, tmp_path / "fcos.pth")
    fresh = build_mmdet_detector(NUM_CLASSES).eval()
    load_checkpoint(fresh.detector, str(path), map_location="cpu")
    merged.eval()
    with torch.no_grad():
        assert_outputs_close(features(fresh), features(merged), atol=1e-5)
