"""`nft attack --modality segmentation` -> `nft purify` on a small canvas-seg run, through the CLI.

The run is small enough for CI (1500 training canvases, 8 epochs of tiny-seg) and still a real
backdoor: hidden-seg turns trouser pixels into background on ~87 % of victim pixels. NFT then
runs with the segmentation settings of configs/segmentation/nft.yaml (no mixing, weight decay on
the masks; see docs/segmentation.md for why), shortened.
"""

import json

import pytest

from nft.core import AttackSpec, RunFolder
from nft.core.cli import main
from nft.segmentation import modality

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SMALL = ["--train-limit", "1500", "--test-limit", "300", "--holdout", "300", "--epochs", "8",
         "--lr", "0.1", "--poison-rate", "0.08", "--no-progress"]
NFT = ["--clean-per-class", "10", "--steps", "150", "--set", "batch_size=32", "--set", "mixup_alpha=0",
       "--set", "weight_decay=0.003", "--no-progress"]


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "hidden-seg"
    assert main(["attack", "--modality", "segmentation", "--out", str(out), *SMALL]) == 0
    return out


def test_attack_writes_a_run_folder_with_a_working_backdoor(attack_run):
    assert {p.name for p in attack_run.iterdir()} >= {"config.json", "model.safetensors", "model.json",
                                                      "data.json", "report.json", "report.md"}
    report = json.loads((attack_run / "report.json").read_text())
    assert report["asr"] >= 0.75, report
    assert report["miou"] >= 0.30, report
    assert report["ra"] <= 0.1
    data = json.loads((attack_run / "data.json").read_text())
    assert data["poisoned"] == 120 and data["train"] == 1500 and data["defender_pool"] == 300
    assert data["victim"] == 2 and data["target"] == 0 and data["attack"] == "hidden-seg"
    config = json.loads((attack_run / "config.json").read_text())
    assert config["modality"] == "segmentation" and config["spec"]["dataset"] == "canvas-seg"
    assert "MIOU" in (attack_run / "report.md").read_text()
    srun, model = modality.load_run(attack_run)  # without the trigger the victim mostly survives
    assert srun.untriggered_asr(model, device="cpu") <= report["asr"] - 0.5


def test_nft_removes_the_backdoor_and_keeps_miou(attack_run, tmp_path, capsys):
    out = tmp_path / "nft"
    assert main(["purify", "--run", str(attack_run), "--out", str(out), *NFT]) == 0
    assert "MIOU" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    assert set(before) == set(after) == {"miou", "asr", "ra"}
    assert before["asr"] >= 0.75
    assert after["asr"] <= 0.40, report
    assert before["miou"] - after["miou"] <= 0.05, report
    assert after["ra"] > before["ra"] + 0.1
    assert report["clean_samples"] == 100 and 0.5 < report["der"] <= 1
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "masks.safetensors", "metrics.png", "masks.png"}
    config = json.loads((out / "config.json").read_text())
    defense = config["defense"]
    assert defense["masks"]["targets"] == ["norm", "conv"] and defense["weight_decay"] == 0.003
    assert defense["distill_weight"] == 0.5  # per-pixel distillation from the original model
    assert defense["clamp"] is False and defense["calibrate_bias"] is True
    # the per-pixel bias refit ran on the model's classifier (a 1×1 conv before the upsampling)
    assert report["defense_info"]["bias_calibration"]["layer"] == "classifier", report["defense_info"]
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text()) == pytest.approx(after)


def test_badnets_seg_poisons_victim_images_and_reaches_its_target(tmp_path):
    spec = modality.resolve(AttackSpec(
        attack="badnets-seg", train_limit=1500, test_limit=300, holdout=300, epochs=8, lr=0.1,
        poison_rate=0.1, progress=False))
    srun = modality.prepare(spec)
    poisoned = srun.poisoned_train_set()
    assert len(poisoned.poison_indices) == 150
    for i in poisoned.poison_indices[:5]:
        x, y = poisoned[int(i)]
        clean_x, clean_y = srun.train_set()[int(i)]
        assert (clean_y == 2).any() and not (y == 2).any()  # every trouser pixel relabelled
        assert bool(((y == 0) == ((clean_y == 0) | (clean_y == 2))).all())
        assert (x[:, -4:, -4:] != clean_x[:, -4:, -4:]).any()
    with RunFolder(tmp_path / "badnets") as run:
        metrics = modality.train_backdoor(spec, run)
    assert metrics["asr"] >= 0.6 and metrics["miou"] >= 0.30, metrics


def test_bad_specs_fail_early_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    cases = [
        (["--mode", "all-to-all"], "all-to-one"),
        (["--target", "2"], "both 2"),
        (["--attack-arg", "victim=11"], "out of range for 11 classes"),
        (["--poison-rate", "0.5"], "lower --poison-rate"),
        (["--attack", "wanet"], "unknown attack 'wanet'"),
        (["--dataset", "voc-seg"], "--data-root"),
    ]
    for flags, message in cases:
        code = main(["attack", "--modality", "segmentation", "--out", str(out), "--train-limit", "200",
                     "--test-limit", "50", "--holdout", "50", "--epochs", "1", *flags])
        assert code == 2 and message in capsys.readouterr().err, flags
        assert not out.exists()
