"""One small backdoored model for the whole defense-zoo test session.

The core's synthetic modality (blob-pattern images, a 3×3 checkerboard patch in the corner,
target class 0, 10 % of the non-target training images poisoned) trains a width-8 SmallCNN in a
few seconds to ~100 % clean accuracy and ~99 % ASR. The defender gets 10 clean images per class
from a disjoint pool, the paper's "10 per class" budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from nft.core import (
    InputSpace, PoisonedDataset, TrainConfig, TriggeredDataset, choose_poison_indices,
    evaluate_classification, select_clean_subset, train_model,
)
from nft.core.synthetic import PatternImages, SmallCNN, add_patch


@dataclass
class Backdoor:
    model: nn.Module
    clean: Dataset
    test: Dataset
    triggered: Dataset
    before: dict
    input_space: InputSpace

    def fresh(self) -> nn.Module:
        """A private copy of the backdoored model."""
        return copy.deepcopy(self.model)

    def evaluate(self, model: nn.Module) -> dict:
        return evaluate_classification(model, self.test, self.triggered, device="cpu")


@pytest.fixture(scope="session")
def backdoor() -> Backdoor:
    return make_backdoor()


def make_backdoor() -> Backdoor:
    train = PatternImages(2000, seed=0)
    poison = choose_poison_indices(train.targets.numpy(), rate=0.1, seed=0, mode="all-to-one", target=0)
    poisoned = PoisonedDataset(train, poison, lambda x, y, i: (add_patch(x), 0))
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    train_model(model, poisoned, TrainConfig(epochs=5, batch_size=64, lr=0.05, seed=0,
                                             device="cpu", progress=False))
    test = PatternImages(1000, seed=10_000)
    triggered = TriggeredDataset(test, test.targets.numpy(), lambda x, i: add_patch(x), lambda y: 0)
    pool = PatternImages(500, seed=20_000)
    clean = select_clean_subset(pool, per_class=10, seed=0)
    before = evaluate_classification(model, test, triggered, device="cpu")
    assert before["acc"] >= 0.95 and before["asr"] >= 0.95, f"the fixture backdoor did not train: {before}"
    return Backdoor(model.eval(), clean, test, triggered, before, InputSpace(shape=(1, 16, 16)))
