"""`nft bench`: a small grid on the synthetic modality, its tables, and resuming a killed grid."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nft.core.bench import load_bench_config, read_rows, run_bench, table_markdown

pytestmark = pytest.mark.integration

GRID = """
name: tiny
modality: synthetic
seeds: [0, 1]
attack_defaults: {epochs: 3, train_limit: 1000, test_limit: 300, holdout: 200}
attacks: [badnets, {attack: badnets, label: badnets-4x4, attack_args: {patch_size: 4}}]
defenses:
  - {method: nft, defense: {steps: 20, batch_size: 16, rounds: 2}}
  - {method: ft, defense: {steps: 10, batch_size: 16}}
clean_budgets: [{per_class: 3}]
"""


def _write(tmp_path, text=GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_grid_runs_caches_models_and_tabulates(tmp_path):
    config = load_bench_config(_write(tmp_path))
    out = tmp_path / "out"
    records = run_bench(config, out, progress=False)
    assert len(records) == 2 * 2 * 2  # attacks × seeds × defenses
    assert len(list((out / "models").iterdir())) == 4  # one model per (attack, seed), trained once
    assert {p.name for p in out.iterdir()} >= {"rows.jsonl", "rows.json", "rows.csv", "table.md",
                                               "asr_vs_acc.png", "runtime.png", "grid.json"}
    table = (out / "table.md").read_text()
    assert "| badnets |" in table and "| badnets-4x4 |" in table and "Avg. drop" in table
    assert "nft(steps=20,batch_size=16,rounds=2)" in table
    for r in records:
        assert r["before"]["asr"] > 0.8 and 0 <= r["der"] <= 1 and r["clean_samples"] == 30
        # the defender's own clean-set check travels with the row; nothing collapsed here
        assert r["clean_set"]["samples"] == 30 and r["retries"] == []
    # columns follow the config's order of defenses, whatever order the rows were run in
    header = table_markdown(list(reversed(records)), config).split("| Attack |")[1].splitlines()[0]
    assert header.index("nft(steps=20") < header.index("ft(steps=10")
    mtimes = {p: p.stat().st_mtime for p in (out / "models").rglob("model.safetensors")}
    again = run_bench(config, out, progress=False)  # nothing left: no retraining, same rows
    assert again == records
    assert {p: p.stat().st_mtime for p in (out / "models").rglob("model.safetensors")} == mtimes
    # the config changes (FT dropped): its rows stay on disk but leave the tables
    narrowed = load_bench_config(_write(tmp_path, GRID.replace(
        "  - {method: ft, defense: {steps: 10, batch_size: 16}}\n", "")))
    kept = run_bench(narrowed, out, progress=False)
    assert sorted(r["key"] for r in kept) == sorted(r["key"] for r in records if r["method"] == "nft")
    assert len(read_rows(out / "rows.jsonl")) == 8
    assert "ft(steps=10" not in (out / "table.md").read_text()
    assert len(json.loads((out / "rows.json").read_text())) == 4


def test_killed_grid_resumes_without_redoing_rows(tmp_path):
    path = _write(tmp_path)
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("nft")), "bench", "--config", str(path), "--out", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(read_rows(out / "rows.jsonl")) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_rows(out / "rows.jsonl")
    assert 2 <= len(first) < 8, "the grid should have been killed part-way"
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = read_rows(out / "rows.jsonl")
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert rows[: len(first)] == first  # finished rows were kept, not redone
    assert json.loads((out / "rows.json").read_text()) == rows


def test_bad_grid_configs(tmp_path):
    from nft.core import ConfigError

    with pytest.raises(ConfigError, match="unknown defense"):
        load_bench_config(_write(tmp_path, "modality: synthetic\nattacks: [badnets]\ndefenses: [magic]\n"))
    with pytest.raises(ConfigError, match="exactly one of"):
        load_bench_config(_write(tmp_path, "modality: synthetic\nattacks: [badnets]\n"
                                           "clean_budgets: [{per_class: 1, count: 3}]\n"))
    with pytest.raises(ConfigError, match="needs `modality:`"):
        load_bench_config(_write(tmp_path, "attacks: [badnets]\n"))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "bench").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_grid_configs_resolve(path):
    from nft.core.registry import load_modality

    config = load_bench_config(path)
    modality = load_modality(config.modality)
    rows = config.rows(modality.resolve)
    assert len(rows) == len(config.attacks) * len(config.seeds) * len(config.defenses) * len(config.clean_budgets)
    for row in rows:
        modality.attacks.canonical(row.attack["attack"])
        modality.datasets.canonical(row.attack["dataset"])
        modality.models.canonical(row.attack["model"])
