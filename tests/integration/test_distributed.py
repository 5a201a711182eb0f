"""`torchrun --nproc_per_node 2` on CPU (gloo): evaluation equals one process exactly,
purification agrees within the tolerance of different batch composition, rank 0 alone writes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nft.core.cli import main

pytestmark = pytest.mark.integration

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--module", "nft.core.cli", "--"]


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "attack"
    assert main(["attack", "--modality", "synthetic", "--out", str(out), "--train-limit", "1000",
                 "--test-limit", "301", "--holdout", "200", "--epochs", "3", "--no-progress"]) == 0
    return out


def _torchrun(*args):
    done = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_evaluation_under_torchrun_equals_one_process(attack_run, tmp_path):
    assert main(["evaluate", "--run", str(attack_run), "--out", str(tmp_path / "single.json")]) == 0
    _torchrun("evaluate", "--run", str(attack_run), "--out", str(tmp_path / "multi.json"))
    single = json.loads((tmp_path / "single.json").read_text())
    multi = json.loads((tmp_path / "multi.json").read_text())
    assert multi == single  # counts are summed over disjoint shards: exactly equal


def test_purification_under_torchrun(attack_run, tmp_path):
    args = ["--clean-per-class", "5", "--steps", "60", "--set", "batch_size=32", "--set", "rounds=2",
            "--no-progress", "--no-plots"]
    assert main(["purify", "--run", str(attack_run), "--out", str(tmp_path / "single"), *args]) == 0
    parent = tmp_path / "multi-parent"
    parent.mkdir()
    done = _torchrun("purify", "--run", str(attack_run), "--out", str(parent / "multi"), *args)
    assert done.stdout.count("wrote ") == 1  # only rank 0 reports
    assert [p.name for p in parent.iterdir()] == ["multi"]  # only rank 0 writes, nothing left behind
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    multi = json.loads((parent / "multi" / "report.json").read_text())
    assert multi["before"] == single["before"]
    assert multi["clean_samples"] == single["clean_samples"]
    for key in ("acc", "asr"):
        assert abs(multi["after"][key] - single["after"][key]) <= 0.15
    shutil.rmtree(parent)


UNION = """
from nft.core.distributed import current, init_from_env, union_over_ranks
info = init_from_env()
assert info.world_size == 2
mine = {1, 5} if info.rank == 0 else {5, 7}
assert union_over_ranks(mine, 10) == {1, 5, 7}
assert union_over_ranks(set() if info.rank == 0 else {9}, 10) == {9}
print("union ok", info.rank)
"""


def test_sets_are_pooled_over_ranks(tmp_path):
    """Text's adversary pools the words each rank has seen, so every rank excludes and holds the
    same ones."""
    script = tmp_path / "union.py"
    script.write_text(UNION)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", str(script)], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("union ok") == 2
