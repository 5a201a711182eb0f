"""The masking contract over a matrix of layer families, plus the masker's own rules."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from nft.core import ConfigError, MaskConfig, inject_masks, mask_candidates
from nft.core.masking import module_mask
from nft.core.testing import MaskingContract

from .toy_models import (
    CNNBatchNorm, Conv3dBatchNorm, GroupNormCNN, MLPBatchNorm, TransformerBlock, TransposedConvNet,
)


class TestMLPBatchNorm1d(MaskingContract):
    def make_model(self): return MLPBatchNorm()
    def make_inputs(self): return torch.randn(5, 6, generator=torch.Generator().manual_seed(1))


class TestCNNBatchNorm2d(MaskingContract):
    def make_model(self): return CNNBatchNorm()
    def make_inputs(self): return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class TestConv3dBatchNorm3d(MaskingContract):
    def make_model(self): return Conv3dBatchNorm()
    def make_inputs(self): return torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))


class TestTransformerLayerNorm(MaskingContract):
    def make_model(self): return TransformerBlock()
    def make_inputs(self): return torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(1))


class TestGroupNormCNN(MaskingContract):
    def make_model(self): return GroupNormCNN()
    def make_inputs(self): return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class TestTorchvisionResNet18(MaskingContract):
    atol = 1e-4

    def make_model(self): return torchvision.models.resnet18(num_classes=5)
    def make_inputs(self): return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class TestConvAndLinearChannels(MaskingContract):
    mask_config = MaskConfig(targets=("conv", "linear"))

    def make_model(self): return CNNBatchNorm()
    def make_inputs(self): return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class TestGroupedTransposedConv(MaskingContract):
    mask_config = MaskConfig(targets=("norm", "conv"))

    def make_model(self): return TransposedConvNet()
    def make_inputs(self): return torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))


class TestTokenTableRows(MaskingContract):
    mask_config = MaskConfig(targets=("embedding",))

    def make_model(self): return TransformerBlock()
    def make_inputs(self): return torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(1))


def test_embedding_masks_scale_one_row_per_entry():
    """An ``embedding`` mask has one entry per row of the table: zeroing entry w silences
    exactly the inputs equal to w."""
    table = nn.Embedding(10, 4)
    masked = inject_masks(nn.Sequential(table), MaskConfig(targets=("embedding",)))
    ids = torch.tensor([[1, 3, 3, 7]])
    with torch.no_grad():
        base = masked(ids)
        masked.masks["0"][3] = 0.0
        out = masked(ids)
    assert masked.masks["0"].shape == (10,)
    assert torch.equal(out[0, 1], torch.zeros(4)) and torch.equal(out[0, 2], torch.zeros(4))
    assert torch.equal(out[0, [0, 3]], base[0, [0, 3]])


def test_module_mask_finds_the_mask_of_a_masked_layer_only():
    """``module_mask`` gives an augmentation the mask of one layer (text's adversarial words hold
    some of a table's rows with it); unmasked layers and unloaded models have none."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    masked = inject_masks(model, MaskConfig(targets=("embedding",)))
    assert module_mask(model[0]) is masked.masks["0"]
    assert module_mask(model[1]) is None
    masked.unload()
    assert module_mask(model[0]) is None


class _Tied(nn.Module):
    """A token table tied to an output layer, as in seq2seq models."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_a_tensor_selected_twice_is_refused_and_one_shared_with_unmasked_layers_is_named(caplog):
    """Masks fold into their tensors: two masks on one tied tensor would multiply when folded
    (refused, naming both), and a mask on a tensor an unmasked layer shares changes that layer
    when folded (a warning names it)."""
    model = _Tied()
    with pytest.raises(ConfigError, match=r"tied weights\): embed.weight, head.weight"):
        inject_masks(model, MaskConfig(targets=("embedding", "linear")))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # nothing attached
    with caplog.at_level("WARNING", logger="nft.core.masking"):
        masked = inject_masks(model, MaskConfig(targets=("embedding",)))
    assert "embed.weight = head.weight" in caplog.text
    assert list(masked.masks) == ["embed"]


def test_grouped_transposed_conv_masks_each_output_channel():
    model = TransposedConvNet().eval()
    masked = inject_masks(model, MaskConfig(targets=("conv",), include=("up",)))
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        base = masked.model.up(x)
        masked.masks["up"][4] = 0.0
        out = masked.model.up(x)
    bias = model.up.parametrizations.bias.original[4]
    assert torch.allclose(out[:, 4], torch.zeros_like(out[:, 4]))
    assert torch.allclose(out[:, :4], base[:, :4]) and torch.allclose(out[:, 5], base[:, 5])
    assert bias != 0  # the bias was scaled too


def test_norm_masks_scale_gamma_only():
    bn = nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        bn.bias.fill_(0.5)
    masked = inject_masks(nn.Sequential(bn), MaskConfig())
    with torch.no_grad():
        masked.mask_parameters()[0].zero_()
        out = masked(torch.randn(3, 4))
    assert torch.allclose(out, torch.full_like(out, 0.5))  # β survives a zero mask


def test_include_exclude_and_skip_first_norm():
    model = torchvision.models.resnet18(num_classes=3)
    all_norms = [n for n, k in mask_candidates(model) if k == "norm"]
    masked = inject_masks(model, MaskConfig(skip_first_norm=True))
    names = list(masked.masks)
    assert names == all_norms[1:] and "bn1" not in names
    assert masked.unload() is model
    masked = inject_masks(model, MaskConfig(include=(r"layer4\..*",), exclude=("downsample.1",)))
    assert all(n.startswith("layer4.") for n in masked.masks)
    assert "layer4.0.downsample.1" not in masked.masks and len(masked) == 4
    masked.unload()
    masked = inject_masks(model, MaskConfig(include=("bn2",)))
    assert list(masked.masks) == [n for n in all_norms if n.endswith(".bn2")]
    masked.unload()


def test_unmatched_config_lists_candidates():
    model = CNNBatchNorm()
    with pytest.raises(ConfigError, match=r"matched no layer.*net\.1 \(norm\)"):
        inject_masks(model, MaskConfig(include=("nonexistent",)))


def test_bad_config_values():
    with pytest.raises(ConfigError, match="targets"):
        MaskConfig(targets=("weights",))
    with pytest.raises(ConfigError, match="regex"):
        MaskConfig(include=("(",))
    with pytest.raises(ConfigError, match="nn.Module"):
        inject_masks("not a model")


def test_double_injection_is_refused():
    model = CNNBatchNorm()
    inject_masks(model)
    with pytest.raises(ConfigError, match="already"):
        inject_masks(model)


def test_merged_model_has_no_overhead():
    model = CNNBatchNorm()
    count = sum(p.numel() for p in model.parameters())
    merged = inject_masks(model).merge_and_unload()
    assert sum(p.numel() for p in merged.parameters()) == count
    assert not any(hasattr(m, "parametrizations") for m in merged.modules())
    with pytest.raises(ConfigError, match="already merged"):
        merged_again = inject_masks(CNNBatchNorm())
        merged_again.merge_and_unload()
        merged_again.merge_and_unload()


def test_frozen_batchnorm_buffer_gamma():
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4)).eval()
    x = torch.randn(1, 3, 6, 6)
    masked = inject_masks(model)
    assert list(masked.masks) == ["1"]
    with torch.no_grad():
        masked.masks["1"].fill_(0.5)
        expected = masked(x)
        merged = masked.merge_and_unload()
    assert torch.allclose(merged(x), expected, atol=1e-6)
    assert isinstance(merged[1].weight, torch.Tensor) and "weight" in dict(merged[1].named_buffers())
