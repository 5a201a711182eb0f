"""Backdoors take hold on the small motion set, and NFT removes one: through the ``nft`` command
(``nft attack --modality video`` then ``nft purify``) and through the modality's API."""

from __future__ import annotations

import json

import pytest

from nft.core import AttackSpec, RunFolder
from nft.core.cli import main
from nft.core.io import write_json
from nft.video import modality

from .conftest import SMALL

TINY = {**SMALL, "width": 8}
TRAIN = {"epochs": 10, "holdout": 40, "batch_size": 16}


def _model_args():
    return [arg for k, v in TINY.items() for arg in ("--model-arg", f"{k}={v}")]


@pytest.fixture(scope="module")
def badnets_run(tmp_path_factory, video_cache):
    run = tmp_path_factory.mktemp("video-e2e") / "badnets"
    code = main(["attack", "--modality", "video", "--out", str(run), "--epochs", str(TRAIN["epochs"]),
                 "--holdout", str(TRAIN["holdout"]), "--batch-size", str(TRAIN["batch_size"]),
                 "--poison-rate", "0.3", "--attack-arg", "patch_size=6", *_model_args(), "--no-progress"])
    assert code == 0
    return run


def test_badnets_takes_hold(badnets_run):
    report = json.loads((badnets_run / "report.json").read_text())
    assert report["attack"] == "badnets" and report["dataset"] == "motion"
    assert report["asr"] >= 0.85
    assert report["acc"] >= 0.45  # far above chance (0.25): the model also learned the motions
    assert {"video_acc", "video_asr", "ra"} <= set(report)
    assert (badnets_run / "trigger.safetensors").is_file() and (badnets_run / "video.json").is_file()


def test_nft_purify_removes_the_backdoor(badnets_run, tmp_path):
    out = tmp_path / "purified"
    code = main(["purify", "--run", str(badnets_run), "--out", str(out), "--clean-per-class", "5",
                 "--steps", "150", "--set", "batch_size=16", "--set", "lr=0.2", "--no-progress",
                 "--no-plots"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    assert report["clean_samples"] == 20
    assert before["asr"] >= 0.85 and after["asr"] <= before["asr"] - 0.3
    assert after["acc"] >= before["acc"] - 0.1
    # the purified run evaluates through the same modality
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["asr"] == pytest.approx(after["asr"])


def _train(tmp_path, attack: str, model_args=None, **fields):
    spec = modality.resolve(AttackSpec(attack=attack, model_args=model_args or TINY, progress=False,
                                       **TRAIN, **fields))
    with RunFolder(tmp_path / attack) as run:
        metrics = modality.train_backdoor(spec, run)
        write_json(run.root / "config.json", {"kind": "attack", "modality": "video", "spec": spec.to_dict()})
    return metrics, json.loads((tmp_path / attack / "video.json").read_text())


def test_blend_takes_hold(tmp_path, video_cache):
    metrics, _ = _train(tmp_path, "blend", poison_rate=0.3)
    assert metrics["asr"] >= 0.8 and metrics["acc"] >= 0.45


def test_clean_label_takes_hold_without_changing_labels(tmp_path, video_cache):
    metrics, info = _train(tmp_path, "clean-label", poison_rate=1.0, model_args={**TINY, "width": 4},
                           attack_args={"patch_size": 8, "trigger_steps": 30})
    assert info["poisoned"] > 0
    # the backdoored model follows the trigger far more than the clean model it was learned on
    assert metrics["asr"] >= info["clean_model_asr"] + 0.2
    assert metrics["asr"] >= 0.8 and metrics["acc"] >= 0.45


def test_bad_options_are_refused_before_training(tmp_path, video_cache):
    from nft.core import ConfigError

    with pytest.raises(ConfigError, match="does not take"):
        _train(tmp_path, "badnets", attack_args={"alpha": 0.3})
    with pytest.raises(ConfigError, match="out of range"):
        _train(tmp_path, "badnets", target=12)
    with pytest.raises(ConfigError, match="all-to-one"):
        _train(tmp_path, "clean-label", mode="all-to-all")
    with pytest.raises(ConfigError, match="--data-root"):
        modality.setup(modality.resolve(AttackSpec(dataset="ucf101")))
