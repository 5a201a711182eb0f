"""The `nft` command end to end on the core's built-in synthetic modality."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nft.core.cli import main

pytestmark = pytest.mark.integration

QUICK = ["--train-limit", "1500", "--test-limit", "400", "--holdout", "300", "--epochs", "3", "--no-progress"]


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "attack"
    assert main(["attack", "--modality", "synthetic", "--out", str(out), *QUICK]) == 0
    return out


def test_attack_writes_the_run_folder(attack_run):
    assert {p.name for p in attack_run.iterdir()} >= {"config.json", "model.safetensors", "report.json", "report.md"}
    report = json.loads((attack_run / "report.json").read_text())
    assert report["asr"] >= 0.9 and report["acc"] >= 0.9
    config = json.loads((attack_run / "config.json").read_text())
    assert config["kind"] == "attack" and config["spec"]["epochs"] == 3 and config["modality"] == "synthetic"


def test_purify_writes_report_and_evaluate_reads_it(attack_run, tmp_path, capsys, fake_clock):
    out = tmp_path / "purified"
    code = main(["purify", "--run", str(attack_run), "--out", str(out), "--clean-per-class", "5",
                 "--steps", "40", "--set", "batch_size=32", "--set", "rounds=2", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "ASR" in printed
    files = {p.name for p in out.iterdir()}
    assert files >= {"config.json", "model.safetensors", "masks.safetensors", "report.json", "report.md",
                     "metrics.png", "masks.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "nft" and report["clean_samples"] == 50
    for side in ("before", "after"):
        assert set(report[side]) == {"acc", "asr", "ra"}
        assert all(0 <= v <= 1 for v in report[side].values())
    # the report's time is purify()'s own span, read from the fake clock (two readings, 1.0 apart),
    # so nothing here depends on how fast the machine is
    span = report["seconds"]
    assert fake_clock.readings == 2 and span == 1.0 and 0 <= report["der"] <= 1
    check = report["clean_set"]  # the defender's own clean set, scored before and after
    assert check["samples"] == 50 and check["before"] >= 0.9 and check["before"] - check["after"] <= 0.2
    assert f"Clean-set score (50 samples): {100 * check['before']:.2f} % before" in (out / "report.md").read_text()
    info = report["defense_info"]  # what NFT reports of itself, kept with the run
    assert info["masked_layers"] == len(load_file(out / "masks.safetensors")) > 0
    config = json.loads((out / "config.json").read_text())
    assert config["defense"]["steps"] == 40 and config["defense"]["batch_size"] == 32
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated == pytest.approx(report["after"])


def test_yaml_config_and_flag_override(attack_run, tmp_path):
    cfg = tmp_path / "purify.yaml"
    cfg.write_text("method: ft\nclean_count: 60\ndefense:\n  steps: 5\n  lr: 0.001\n")
    out = tmp_path / "ft"
    assert main(["purify", "--run", str(attack_run), "--out", str(out), "--config", str(cfg),
                 "--set", "steps=7", "--no-progress", "--no-plots"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "ft" and config["defense"]["steps"] == 7 and config["defense"]["lr"] == 0.001
    assert json.loads((out / "report.json").read_text())["clean_samples"] == 60
    assert not (out / "masks.safetensors").exists()


def test_a_clean_budget_flag_replaces_the_config_files_budget(attack_run, tmp_path):
    cfg = tmp_path / "purify.yaml"
    cfg.write_text("method: ft\nclean_per_class: 10\ndefense:\n  steps: 3\n")
    out = tmp_path / "ft"
    assert main(["purify", "--run", str(attack_run), "--out", str(out), "--config", str(cfg),
                 "--clean-count", "40", "--no-progress", "--no-plots"]) == 0
    assert json.loads((out / "report.json").read_text())["clean_samples"] == 40


def test_errors_are_one_line_and_write_nothing(attack_run, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["purify", "--run", str(attack_run), "--out", str(out), "--method", "magic"]) == 2
    assert "unknown defense 'magic'" in capsys.readouterr().err
    assert main(["purify", "--run", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["purify", "--run", str(attack_run), "--out", str(out), "--set", "lr=-1"]) == 2
    assert "lr must be a positive number" in capsys.readouterr().err
    assert main(["purify", "--run", str(attack_run), "--out", str(out), "--clean-per-class", "100000"]) == 2
    assert "fewer than the 100000 per class" in capsys.readouterr().err
    assert main(["attack", "--modality", "nosuch", "--out", str(out)]) == 2
    assert "no modality 'nosuch'" in capsys.readouterr().err
    assert main(["purify", "--run", str(attack_run), "--out", str(attack_run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["purify", "--run", str(attack_run), "--out", str(out), "--set", 'masks.include=["a\\.b"]']) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not out.exists()


def test_set_takes_a_regex_list_in_single_quotes():
    from nft.core.cli import parse_assignments

    assert parse_assignments(["masks.include=['layer[34]\\..*', head]"], "--set") == {
        "masks": {"include": ["layer[34]\\..*", "head"]}}


def test_console_script_help_and_list():
    exe = Path(sys.executable).with_name("nft")
    for args in (["--help"], ["purify", "--help"], ["attack", "--help"], ["evaluate", "--help"]):
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)
        assert "usage: nft" in done.stdout
    listing = subprocess.run([str(exe), "list"], capture_output=True, text=True, check=True).stdout
    assert "synthetic:" in listing and "small-cnn" in listing and "nft-reference" in listing


def test_defense_table_runs_defenses_as_nft_purify_does_and_resumes(attack_run, tmp_path):
    """scripts/defense_table.py: the modality's NFT settings apply (synthetic turns the clamp off and
    runs 1000 steps), --scale multiplies them, an explicit --set wins, and a second invocation reuses
    every finished cell instead of recomputing it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import defense_table
    finally:
        sys.path.pop(0)
    out = tmp_path / "table"
    argv = [str(attack_run), "--out", str(out), "--defenses", "nft,ft", "--budgets", "per-class=5",
            "--scale", "0.04", "--set", "ft.steps=7", "--set", "nft.batch_size=32"]
    assert defense_table.main(argv) == 0
    cells = {p.name.split("__")[-1]: p for p in (out / "cells").iterdir()}
    assert sorted(cells) == ["before.json", "ft.json", "nft.json"]  # before: the undefended metrics
    nft, ft = (json.loads(cells[f"{name}.json"].read_text()) for name in ("nft", "ft"))
    assert nft["config"]["clamp"] is False and nft["config"]["steps"] == 40  # 1000 × 0.04
    assert nft["config"]["batch_size"] == 32 and ft["config"]["steps"] == 7
    assert nft["clean_samples"] == 50 and 0 <= nft["after"]["asr"] <= 1
    stamps = {name: p.stat().st_mtime_ns for name, p in cells.items()}
    assert defense_table.main(argv) == 0
    assert {p.name.split("__")[-1]: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    table = (out / "table.md").read_text()
    assert "| nft |" in table and "| ft |" in table and "not run" not in table
    # --table-only adds a defense to the table without running it, and writes no cell
    assert defense_table.main([*argv, "--defenses", "nft,ft,rnp", "--table-only"]) == 0
    assert {p.name.split("__")[-1]: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
    assert "| rnp | not run |" in (out / "table.md").read_text()


def test_the_printed_table_keeps_long_metric_names_apart():
    """Video and detection print metric names longer than the default column (VIDEO_ASR):
    every header and every cell must stay a separate word under its own column."""
    from nft.core.cli import _table

    keys = ["acc", "video_acc", "video_asr", "asr"]
    head, row, missing = _table([("backdoored", {"acc": 0.5, "video_acc": 0.55, "video_asr": 1.0,
                                                 "asr": 0.9}), ("nft", {"acc": 0.25})], keys).splitlines()
    assert head.split() == [k.upper() for k in keys]
    assert row.split() == ["backdoored", "50.00%", "55.00%", "100.00%", "90.00%"]
    assert missing.split() == ["nft", "25.00%", "-", "-", "-"]
    # the cells end where their headers end
    ends = [m.end() for m in re.finditer(r"\S+", head)]
    assert ends == [m.end() for m in re.finditer(r"\S+", row)][1:]
