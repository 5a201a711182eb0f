"""Conformance and end-to-end tests of the `yourtask` modality (generated from templates/nft-task).

Keep these green while replacing the toy pieces: add one MaskingContract class per model family
and one AugmentationContract class per augmentation.
"""

import json

import torch

from nft.core import ClassificationTask, available_modalities, load_modality
from nft.core.cli import main
from nft.core.testing import AugmentationContract, MaskingContract
from nft.yourtask import AUGMENTATIONS, TinyNet, modality


class TestTinyNetMasking(MaskingContract):
    def make_model(self):
        return TinyNet(num_classes=4, in_channels=1, width=8)

    def make_inputs(self):
        return torch.randn(4, 1, 64, generator=torch.Generator().manual_seed(0))


class TestMixUpContract(AugmentationContract):
    def make_augmentation(self):
        return AUGMENTATIONS["mixup"]()

    def make_batch(self):
        g = torch.Generator().manual_seed(0)
        return torch.randn(6, 1, 64, generator=g), torch.randint(0, 4, (6,), generator=g)

    def make_task(self):
        return ClassificationTask()

    def make_model(self):
        return TinyNet(num_classes=4, in_channels=1, width=8)


def test_the_core_finds_the_modality_through_its_entry_point():
    assert "yourtask" in available_modalities()
    assert load_modality("yourtask") is modality


def test_attack_then_purify_through_the_cli(tmp_path):
    quick = ["--train-limit", "1500", "--test-limit", "400", "--epochs", "4", "--no-progress"]
    attack = tmp_path / "attack"
    assert main(["attack", "--modality", "yourtask", "--out", str(attack), *quick]) == 0
    before = json.loads((attack / "report.json").read_text())
    assert before["asr"] >= 0.9 and before["acc"] >= 0.8
    purified = tmp_path / "purified"
    assert main(["purify", "--run", str(attack), "--out", str(purified), "--clean-per-class", "20",
                 "--steps", "60", "--set", "batch_size=32", "--no-progress", "--no-plots"]) == 0
    report = json.loads((purified / "report.json").read_text())
    assert set(report["after"]) == {"acc", "asr", "ra"}
    assert report["after"]["asr"] < report["before"]["asr"]
    assert (purified / "model.safetensors").is_file() and (purified / "masks.safetensors").is_file()
