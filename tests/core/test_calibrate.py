"""Output-bias calibration (nft.core.calibrate), the last step of the default `nft`."""

import copy

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nft.core import PurifyConfig, purify
from nft.core.calibrate import calibrate_output_bias
from nft.core.tasks import ClassificationTask

from .toy_models import MLPBatchNorm

CPU = torch.device("cpu")


def _labelled_by(model, n=300, seed=0):
    """Inputs labelled by ``model`` itself: with its own bias it is 100 % accurate."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    return TensorDataset(x, y)


def _accuracy(model, data):
    x, y = data.tensors
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def _model():
    """A random MLP with batch-norm statistics of its input distribution (so its predictions vary)."""
    torch.manual_seed(0)
    model = MLPBatchNorm()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.momentum = None  # a plain average over the batches seen
    with torch.no_grad():
        model.train()(torch.randn(2000, 6))
        model.net[6].weight *= 10  # the confident scores of a trained classifier
    return model.eval()


def test_a_shifted_class_score_is_restored_and_only_the_output_bias_changes():
    model = _model()
    data = _labelled_by(model)
    assert _accuracy(model, data) == 1.0 and len(set(data.tensors[1].tolist())) == 3
    with torch.no_grad():
        model.net[6].bias[0] -= 8.0  # what masking does to a class that rests on weakened channels
    assert _accuracy(model, data) < 0.8
    before = copy.deepcopy(model.state_dict())
    info = calibrate_output_bias(model, data, ClassificationTask(), device=CPU)
    shift = info["shift"]  # only differences between classes matter to the predictions
    assert info["layer"] == "net.6" and shift[0] - max(shift[1:]) > 5
    assert _accuracy(model, data) >= 0.97
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) == (key != "net.6.bias"), key
    assert not model.training


def test_calibration_is_deterministic_and_restores_the_training_mode():
    model = _model()
    data = _labelled_by(model)
    with torch.no_grad():
        model.net[6].bias[1] += 6.0
    a, b = copy.deepcopy(model).train(), copy.deepcopy(model)
    assert calibrate_output_bias(a, data, ClassificationTask(), device=CPU) == \
        calibrate_output_bias(b, data, ClassificationTask(), device=CPU)
    assert a.training and torch.equal(a.net[6].bias, b.net[6].bias)


class _Scaled(nn.Module):
    """Logits are twice the last linear layer's output: adding to its bias would be wrong."""

    def __init__(self):
        super().__init__()
        self.inner = _model()

    def forward(self, x):
        return 2 * self.inner(x)


class _Segmenter:
    """A task that is not classification."""

    def forward(self, model, inputs):
        return model(inputs)


def test_models_it_does_not_apply_to_are_left_untouched_with_the_reason():
    data = _labelled_by(_model())
    cases = [
        (_Scaled(), ClassificationTask(), "not the output of"),
        (_model(), _Segmenter(), "not classification"),
        (nn.Sequential(nn.Linear(6, 3, bias=False)), ClassificationTask(), "has no bias"),
        (nn.Sequential(nn.Unflatten(1, (6, 1)), nn.Conv1d(6, 3, 1), nn.Flatten()), ClassificationTask(),
         "no nn.Linear"),
    ]
    for model, task, reason in cases:
        before = copy.deepcopy(model.state_dict())
        info = calibrate_output_bias(model, data, task, device=CPU)
        assert reason in info["skipped"], info
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nft_calibrates_by_default_and_the_reference_preset_does_not():
    model = _model()
    data = _labelled_by(model, n=60)
    fast = dict(steps=6, rounds=2, batch_size=16, progress=False)
    on = purify(model, data, PurifyConfig(**fast))
    off = purify(model, data, PurifyConfig(calibrate_bias=False, **fast))
    assert on.info["bias_calibration"]["layer"] == "net.6" and "bias_calibration" not in off.info
    shift = torch.tensor(on.info["bias_calibration"]["shift"])
    torch.testing.assert_close(on.model.net[6].bias - off.model.net[6].bias, shift, atol=1e-4, rtol=0)
    assert not PurifyConfig.preset("nft-reference").calibrate_bias


class _DenseTask:
    """Per-position classes (logits N×C×H×W, 255 = unlabelled), as segmentation declares them."""

    distillable = True
    ignore_index = 255

    def forward(self, model, inputs):
        return model(inputs)

    def loss(self, outputs, targets):
        return nn.functional.cross_entropy(outputs, targets.long(), ignore_index=255)


class _Segmenter2d(nn.Module):
    """Features at half resolution, a 1×1 classifier, logits upsampled to the input's size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 3, 1)
        with torch.no_grad():
            self.classifier.weight *= 10

    def forward(self, x):
        logits = self.classifier(self.features(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _maps_labelled_by(model, n=300, size=12):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    y[:, :2] = 255  # an unlabelled band: it must not count
    return TensorDataset(x, y)


def _pixel_accuracy(model, data):
    x, y = data.tensors
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    keep = y != 255
    return (pred == y)[keep].float().mean().item()


def test_dense_logits_are_calibrated_per_labelled_position():
    model = _Segmenter2d()
    data = _maps_labelled_by(model)
    assert _pixel_accuracy(model, data) == 1.0
    with torch.no_grad():
        model.classifier.bias[0] -= 8.0
    lowered = _pixel_accuracy(model, data)
    assert lowered < 0.85  # class 0 (19 % of the labelled pixels) all but lost
    before = copy.deepcopy(model.state_dict())
    info = calibrate_output_bias(model, data, _DenseTask(), device=CPU, batch_size=16)
    # Most of the 8 logits come back (cross-entropy's optimum on the blurry upsampled borders is
    # not exactly the original bias), and the unlabelled band (label 255) is left out of the fit.
    assert info["layer"] == "classifier" and info["shift"][0] - max(info["shift"][1:]) > 7
    assert _pixel_accuracy(model, data) > lowered + 0.03
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) == (key != "classifier.bias"), key
