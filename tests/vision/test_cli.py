"""The command-line path: `nft attack --modality vision` then `nft purify`, on tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nft.core import AttackSpec, load_tensors
from nft.core.cli import main
from nft.vision import modality


def test_defaults_run_on_the_embedded_data():
    spec = modality.resolve(AttackSpec())
    assert (spec.dataset, spec.model, spec.attack) == ("fashion-mnist", "preactresnet18", "badnets")
    assert spec.model_args == {"width": 16} and spec.holdout == 5000 and spec.epochs == 10
    assert spec.poison_rate == 0.1 and spec.mode == "all-to-one"
    given = modality.resolve(AttackSpec(model_args={"width": 32}))
    assert given.model_args == {"width": 32}


def test_defender_pool_is_disjoint_from_training_and_poison():
    vrun = modality.prepare(AttackSpec(dataset="digits", model="small-cnn", train_limit=800))
    assert not set(vrun.pool_idx) & set(vrun.train_idx)
    assert len(vrun.pool_idx) == 200 and len(vrun.train_idx) == 800
    poisoned = modality.poisoned_train_set(vrun)
    assert poisoned.attack_indices.max() < len(vrun.train_idx)
    pool = vrun.defender_pool()
    labels = np.asarray(vrun.data.train.targets)[vrun.pool_idx]
    assert [pool[i][1] for i in range(5)] == labels[:5].tolist()


@pytest.mark.integration
def test_attack_then_purify_writes_the_documented_files(tmp_path, capsys, fake_clock):
    run, out = tmp_path / "run", tmp_path / "purified"
    code = main(["attack", "--modality", "vision", "--dataset", "digits", "--model", "small-cnn",
                 "--attack", "badnets", "--epochs", "10", "--batch-size", "64", "--lr", "0.05",
                 "--out", str(run), "--no-progress", "--device", "cpu"])
    assert code == 0
    for name in ("model.safetensors", "model.json", "attack.safetensors", "config.json",
                 "report.json", "report.md", "data.json"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert all(0 <= report[k] <= 1 for k in ("acc", "asr", "ra"))
    assert report["acc"] > 0.85 and report["asr"] > 0.8
    assert json.loads((run / "model.json").read_text())["name"] == "small-cnn"

    fake_clock.readings = 0
    code = main(["purify", "--run", str(run), "--out", str(out), "--clean-per-class", "5",
                 "--steps", "20", "--no-progress", "--device", "cpu"])
    assert code == 0
    for name in ("model.safetensors", "masks.safetensors", "config.json", "report.json", "report.md",
                 "metrics.png", "masks.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "report.json").read_text())
    # the report's time is purify()'s own span, read from the fake clock (two readings, 1.0 apart)
    span = result["seconds"]
    assert result["clean_samples"] == 50 and fake_clock.readings == 2 and span == 1.0
    assert result["before"]["asr"] == pytest.approx(report["asr"])
    assert result["before"]["acc"] == pytest.approx(report["acc"])
    assert len(load_tensors(out / "masks.safetensors")) == 3  # every BN of the small CNN

    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx(result["after"])


def test_bad_options_fail_before_writing(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["attack", "--modality", "vision", "--dataset", "digits", "--attack", "sig",
                 "--mode", "all-to-all", "--out", str(out), "--no-progress"])
    assert code == 2 and not out.exists()
    assert "all-to-one" in capsys.readouterr().err
    code = main(["attack", "--modality", "vision", "--dataset", "digits", "--attack", "badnets",
                 "--attack-arg", "radius=3", "--out", str(out), "--no-progress"])
    assert code == 2 and "patch_size" in capsys.readouterr().err
    code = main(["attack", "--modality", "vision", "--dataset", "cifar10", "--out", str(out),
                 "--no-progress"])
    assert code == 2 and "--data-root" in capsys.readouterr().err


def test_input_space_bounds_normalised_pixels():
    vrun = modality.prepare(AttackSpec(dataset="digits", model="small-cnn"))
    space = vrun.input_space()
    raw = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 8, 8)
    normalised = vrun.data.normalise(raw)
    assert torch.allclose(normalised[0], space.lower.expand(1, 8, 8))
    assert torch.allclose(normalised[1], space.upper.expand(1, 8, 8))
    # one raw-pixel unit of budget is 1/std model-input units
    assert torch.allclose(space.scale, torch.tensor(1 / vrun.data.std[0]).view(1, 1, 1))
    too_far = normalised + 10 * space.scale
    assert torch.allclose(space.clamp(too_far)[0], space.upper.expand(1, 8, 8))
