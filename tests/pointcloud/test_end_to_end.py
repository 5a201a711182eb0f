"""``nft attack --modality pointcloud`` then ``nft purify``: the backdoor takes hold and NFT removes it."""

import json
import math

import pytest

from nft.core import AttackSpec, ConfigError, RunFolder
from nft.core.cli import main
from nft.pointcloud import modality

# width 16 and 20 epochs, the table's recipe on fewer, smaller clouds: at width 8 and 12 epochs the model
# is far from converged and the searched cluster's stamping cost it 10-14 points of accuracy
SMALL = ["--train-limit", "500", "--holdout", "100", "--test-limit", "200", "--epochs", "20",
         "--model-arg", "width=16", "--model-arg", "num_points=64", "--no-progress"]


def test_attack_then_nft_removes_the_backdoor(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "purified"
    assert main(["attack", "--modality", "pointcloud", "--out", str(run), *SMALL]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["attack"] == "pointba-i" and report["model"] == "pointnet"
    assert report["asr"] >= 0.9 and report["acc"] >= 0.85, report
    assert (run / "trigger.json").is_file()
    assert main(["purify", "--run", str(run), "--out", str(out), "--clean-per-class", "5",
                 "--steps", "300", "--set", "batch_size=32", "--no-progress", "--no-plots"]) == 0
    result = json.loads((out / "report.json").read_text())
    before, after = result["before"], result["after"]
    assert result["clean_samples"] == 50
    assert after["asr"] <= 0.15, result
    assert before["acc"] - after["acc"] <= 0.08, result
    assert set(after) == {"acc", "macc", "asr", "ra"}
    # the searched cluster sits by the trigger, (0.6, 0.6, 0.6) (within two steps of the 0.3 grid),
    # and sent every cloud of the clean set's other classes to the target
    ((*centre, radius, share),) = result["history"][0]["adv_clusters"]
    assert share == 1.0 and math.dist(centre, (0.6, 0.6, 0.6)) <= 0.55, result["history"][0]
    assert main(["evaluate", "--run", str(out)]) == 0
    assert "ASR" in capsys.readouterr().out


def test_bad_specs_fail_before_training(tmp_path):
    for spec, match in [
        (AttackSpec(attack="badnets"), "unknown attack"),
        (AttackSpec(target=12, train_limit=50, holdout=10, test_limit=20), "out of range"),
        (AttackSpec(dataset="modelnet40"), "--data-root"),
        (AttackSpec(attack="pointba-i", attack_args={"size": 3}, train_limit=50, holdout=10, test_limit=20),
         "attack_args"),
    ]:
        with pytest.raises(ConfigError, match=match):
            with RunFolder(tmp_path / "x", overwrite=True) as run:
                modality.train_backdoor(modality.resolve(spec.replace(progress=False)), run)
        assert not (tmp_path / "x").exists()
