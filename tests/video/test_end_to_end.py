"""Backdoors take hold on the small motion set, and NFT removes one: through the ``nft`` command
(``nft attack --modality video`` then ``nft purify``) and through the modality's API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from nft.core import AttackSpec, RunFolder
from nft.core.cli import main
from nft.core.io import write_json
from nft.video import modality

from .conftest import SMALL

TINY = {**SMALL, "width": 8}
TRAIN = {"epochs": 10, "holdout": 40, "batch_size": 16}


def _nft(*args: str) -> None:
    """Run ``nft ARGS`` in a fresh one-thread process, as a user would: in-process, these runs
    also inherited whatever state earlier tests left in the interpreter. Since the motion set is
    written losslessly these runs repeat exactly on one machine (the numbers quoted below); the
    bounds leave room for another CPU's floating-point order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nft.core.cli", *args], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _model_args(model_args=None):
    return [arg for k, v in (model_args or TINY).items() for arg in ("--model-arg", f"{k}={v}")]


@pytest.fixture(scope="module")
def blend_run(tmp_path_factory, video_cache):
    run = tmp_path_factory.mktemp("video-e2e") / "blend"
    _nft("attack", "--modality", "video", "--attack", "blend", "--out", str(run),
         "--epochs", str(TRAIN["epochs"]), "--holdout", str(TRAIN["holdout"]),
         "--batch-size", str(TRAIN["batch_size"]), "--poison-rate", "0.3", *_model_args(), "--no-progress")
    return run


def test_blend_takes_hold_through_the_command(blend_run):
    report = json.loads((blend_run / "report.json").read_text())
    assert report["attack"] == "blend" and report["dataset"] == "motion"
    # measured: ASR 0.956, ACC 0.867 (before the motion set was lossless, runs of the same seed
    # spread from 0.81 to 0.94 ASR because the lossy encoder gave different pixels each time)
    assert report["asr"] >= 0.85
    assert report["acc"] >= 0.7  # far above chance (0.25): the model also learned the motions
    assert {"video_acc", "video_asr", "ra"} <= set(report)
    assert (blend_run / "trigger.safetensors").is_file() and (blend_run / "video.json").is_file()


def test_nft_purify_removes_the_backdoor(blend_run, tmp_path):
    """Measured: ACC 86.7 → 81.1 %, ASR 95.6 → 8.9 % (RA 82.2 %), the same in repeated runs (150
    steps of 16 clips at mask rate 0.05 → 0.02). This 120-clip model does not stand the
    modality's rate 0.2 (ACC 85.0 → 45.6 % with it, and 51.7 % before distillation, on the lossy
    set; docs/video.md), so the test runs the modality's distillation and clipping at the
    reference rate."""
    out = tmp_path / "purified"
    _nft("purify", "--run", str(blend_run), "--out", str(out), "--clean-per-class", "5",
         "--steps", "150", "--set", "batch_size=16", "--set", "lr=0.05", "--set", "lr_min=0.02",
         "--no-progress", "--no-plots")
    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    assert report["clean_samples"] == 20
    assert before["asr"] >= 0.85 and after["asr"] <= 0.2
    # On the lossy set of earlier versions, whose pixels changed from run to run, two runs of this
    # test lost 5.6 and 23.9 points; on the lossless set it loses 5.6 every time.
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


def _attack(tmp_path, attack: str, *options: str, model_args=None):
    """``nft attack`` in a fresh process; returns its report and the run's video.json."""
    run = tmp_path / attack
    _nft("attack", "--modality", "video", "--attack", attack, "--out", str(run),
         "--epochs", str(TRAIN["epochs"]), "--holdout", str(TRAIN["holdout"]),
         "--batch-size", str(TRAIN["batch_size"]), *options, *_model_args(model_args), "--no-progress")
    return json.loads((run / "report.json").read_text()), json.loads((run / "video.json").read_text())


def test_badnets_takes_hold(tmp_path, video_cache):
    metrics, _ = _attack(tmp_path, "badnets", "--poison-rate", "0.3", "--attack-arg", "patch_size=6")
    # measured: ASR 0.948, ACC 0.783
    assert metrics["asr"] >= 0.85 and metrics["acc"] >= 0.65


def test_clean_label_takes_hold_without_changing_labels(tmp_path, video_cache):
    # 120 trigger steps: with 60 the learned patch reached 80.7 % ASR on an AVX-512 CPU (90.4 % on
    # the CPU the test was written on)
    metrics, info = _attack(tmp_path, "clean-label", "--poison-rate", "1.0", "--attack-arg", "patch_size=8",
                            "--attack-arg", "trigger_steps=120", model_args={**TINY, "width": 4})
    assert info["poisoned"] > 0
    # the backdoored model follows the trigger far more than the clean model it was learned on
    assert metrics["asr"] >= info["clean_model_asr"] + 0.2
    # measured: ASR 0.904, ACC 0.728 (on the lossy set of earlier versions: 0.77 to 0.98)
    assert metrics["asr"] >= 0.85 and metrics["acc"] >= 0.6


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
