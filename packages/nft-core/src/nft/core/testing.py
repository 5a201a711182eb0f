"""Conformance suites every model family and augmentation must pass; reused by each modality.

Subclass a contract in a test module (its name must start with ``Test``) and provide the
factories; pytest collects the inherited ``test_*`` methods::

    from nft.core.testing import MaskingContract

    class TestTinyCNN(MaskingContract):
        def make_model(self):  return TinyCNN().eval()
        def make_inputs(self): return torch.rand(4, 3, 8, 8)
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from .augment import Mixed, mixed_loss
from .masking import MaskConfig, inject_masks, mask_candidates

__all__ = ["AugmentationContract", "MaskingContract", "assert_outputs_close"]


def assert_outputs_close(a: Any, b: Any, *, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Compare model outputs: tensors, or lists / tuples / dicts of them (detector outputs)."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
    elif isinstance(a, dict):
        assert set(a) == set(b), f"output keys differ: {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_outputs_close(a[key], b[key], atol=atol, rtol=rtol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"output lengths differ: {len(a)} vs {len(b)}"
        for x, y in zip(a, b):
            assert_outputs_close(x, y, atol=atol, rtol=rtol)
    elif hasattr(a, "logits"):  # transformers ModelOutput
        assert_outputs_close(a.logits, b.logits, atol=atol, rtol=rtol)
    else:
        assert a == b


def _perturb_masks(masked, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mask in masked.mask_parameters():
            mask.copy_(torch.rand(mask.shape, generator=gen).to(mask) * 0.8 + 0.2)


class MaskingContract:
    """Masks must be invisible at start, fold exactly, unload exactly, and be all that trains."""

    mask_config: MaskConfig = MaskConfig()
    atol: float = 1e-5

    def make_model(self) -> nn.Module:
        raise NotImplementedError

    def make_inputs(self) -> Any:
        raise NotImplementedError

    def run(self, model: nn.Module, inputs: Any) -> Any:
        """How to call the model (override for detectors, seq2seq models, …)."""
        return model(inputs)

    def scalar(self, outputs: Any) -> torch.Tensor:
        """A scalar of the outputs to back-propagate in :meth:`test_only_masks_receive_gradients`."""
        if isinstance(outputs, torch.Tensor):
            return outputs.float().square().mean()
        if isinstance(outputs, dict):
            return sum(self.scalar(v) for v in outputs.values() if isinstance(v, torch.Tensor))
        if isinstance(outputs, (list, tuple)):
            return sum(self.scalar(v) for v in outputs)
        if hasattr(outputs, "logits"):
            return outputs.logits.float().square().mean()
        raise TypeError(f"override scalar() for outputs of type {type(outputs).__name__}")

    def _fresh(self) -> nn.Module:
        """The model in eval mode, its normalisation statistics set from one batch.

        Freshly built deep plain networks (VGG, MobileNet) in eval mode with unit running
        statistics shrink activations towards zero, which would hide whether masks are wired in.
        """
        torch.manual_seed(0)
        model = self.make_model()
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model.train()
            with torch.no_grad():
                self.run(model, self.make_inputs())
        return model.eval()

    # ---- the contract --------------------------------------------------------------------
    def test_identity_at_injection(self):
        model = self._fresh()
        inputs = self.make_inputs()
        with torch.no_grad():
            expected = self.run(model, inputs)
            masked = inject_masks(model, self.mask_config)
            assert len(masked) > 0
            assert_outputs_close(self.run(masked, inputs), expected, atol=self.atol)

    def test_merge_matches_masked_model(self):
        model = self._fresh()
        keys = list(model.state_dict())
        klass = type(model)
        masked = inject_masks(model, self.mask_config)
        _perturb_masks(masked)
        inputs = self.make_inputs()
        with torch.no_grad():
            expected = self.run(masked, inputs)
            merged = masked.merge_and_unload()
            got = self.run(merged, inputs)
        assert type(merged) is klass
        assert list(merged.state_dict()) == keys
        assert_outputs_close(got, expected, atol=self.atol)

    def test_masks_change_the_output(self):
        model = self._fresh()
        inputs = self.make_inputs()
        masked = inject_masks(model, self.mask_config)
        with torch.no_grad():
            before = self.run(masked, inputs)
            for mask in masked.mask_parameters():
                mask.mul_(0.5)
            after = self.run(masked, inputs)
        try:
            assert_outputs_close(before, after, atol=self.atol)
        except AssertionError:
            return
        raise AssertionError("halving every mask did not change the output: masks are not wired in")

    def test_unload_restores_exactly(self):
        model = self._fresh()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        grads = {n: p.requires_grad for n, p in model.named_parameters()}
        masked = inject_masks(model, self.mask_config)
        _perturb_masks(masked)
        restored = masked.unload()
        assert restored is model
        after = restored.state_dict()
        assert list(after) == list(state)
        for key, value in state.items():
            assert torch.equal(after[key], value), f"{key} changed after unload()"
        assert {n: p.requires_grad for n, p in restored.named_parameters()} == grads

    def test_only_masks_receive_gradients(self):
        model = self._fresh()
        masked = inject_masks(model, self.mask_config)
        mask_ids = {id(m) for m in masked.mask_parameters()}
        trainable = [p for p in masked.parameters() if p.requires_grad]
        assert {id(p) for p in trainable} == mask_ids, "a non-mask parameter is trainable"
        _perturb_masks(masked)
        masked.train()
        self.scalar(self.run(masked, self.make_inputs())).backward()
        for name, p in masked.model.named_parameters():
            if id(p) not in mask_ids:
                assert p.grad is None, f"{name} received a gradient"
        assert any(m.grad is not None and m.grad.abs().sum() > 0 for m in masked.mask_parameters())

    def test_masks_are_in_depth_order(self):
        model = self._fresh()
        order = [name for name, _ in mask_candidates(model)]
        masked = inject_masks(model, self.mask_config)
        names = list(masked.masks)
        assert names == sorted(names, key=order.index)

    def test_save_load_round_trip(self, tmp_path):
        model = self._fresh()
        masked = inject_masks(copy.deepcopy(model), self.mask_config)
        _perturb_masks(masked, seed=3)
        masked.save_masks(tmp_path)
        other = inject_masks(copy.deepcopy(model), self.mask_config)
        other.load_masks(tmp_path)
        for (n1, m1), (n2, m2) in zip(masked.masks.items(), other.masks.items()):
            assert n1 == n2
            assert torch.equal(m1, m2)
        inputs = self.make_inputs()
        with torch.no_grad():
            assert_outputs_close(self.run(other, inputs), self.run(masked, inputs), atol=self.atol)


class AugmentationContract:
    """A mixing augmentation keeps the batch's form, weights its targets to 1, and is seeded."""

    def make_augmentation(self):
        raise NotImplementedError

    def make_batch(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def make_task(self):
        from .tasks import ClassificationTask

        return ClassificationTask()

    def make_model(self) -> nn.Module:
        """A model whose outputs ``make_task()`` can score."""
        raise NotImplementedError

    def _mix(self, seed: int) -> Mixed:
        inputs, targets = self.make_batch()
        return self.make_augmentation()(
            inputs, targets, rng=np.random.default_rng(seed), generator=torch.Generator().manual_seed(seed)
        )

    def test_weights_sum_to_one(self):
        mixed = self._mix(0)
        weights = [w for _, w in mixed.targets]
        assert all(0 <= w <= 1 for w in weights)
        assert abs(sum(weights) - 1) < 1e-6

    def test_inputs_keep_their_form(self):
        inputs, _ = self.make_batch()
        mixed = self._mix(0)
        if isinstance(inputs, torch.Tensor):
            assert mixed.inputs.shape == inputs.shape
            assert mixed.inputs.dtype == inputs.dtype
        else:
            assert type(mixed.inputs) is type(inputs)

    def test_same_seed_same_result(self):
        a, b = self._mix(7), self._mix(7)
        assert_outputs_close(a.inputs, b.inputs, atol=0, rtol=0)
        assert [w for _, w in a.targets] == [w for _, w in b.targets]

    def test_loss_is_finite(self):
        model = self.make_model()
        mixed = self._mix(1)
        task = self.make_task()
        augmentation = self.make_augmentation()
        hooks = getattr(augmentation, "hooks", None)
        from contextlib import nullcontext

        with hooks(model) if hooks else nullcontext():
            loss = mixed_loss(task, task.forward(model, mixed.inputs), mixed)
        assert torch.isfinite(loss)

    def test_clean_view_matches_the_inputs_form(self):
        """``clean_inputs``, when given, is the same batch in input space without patterns."""
        mixed = self._mix(2)
        if mixed.clean_inputs is None:
            return  # no clean view (detection batches): NFT then trains without its distillation term
        if isinstance(mixed.inputs, torch.Tensor):
            assert isinstance(mixed.clean_inputs, torch.Tensor)
            assert mixed.clean_inputs.shape == mixed.inputs.shape
            assert mixed.clean_inputs.dtype == mixed.inputs.dtype
        else:
            assert type(mixed.clean_inputs) is type(mixed.inputs)
