"""`nft bench --executor ray`: a small grid through a local Ray instance, killed part-way and resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nft.core.bench import read_rows

pytestmark = pytest.mark.integration

GRID = """
name: tiny-ray
modality: synthetic
seeds: [0]
attack_defaults: {epochs: 3, train_limit: 1000, test_limit: 300, holdout: 200}
attacks: [badnets, {attack: badnets, label: badnets-4x4, attack_args: {patch_size: 4}}]
defenses:
  - {method: nft, defense: {steps: 20, batch_size: 16, rounds: 2}}
  - {method: ft, defense: {steps: 10, batch_size: 16}}
clean_budgets: [{per_class: 3}]
"""


def test_ray_grid_is_killed_and_resumes(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    out = tmp_path / "out"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("nft")), "bench", "--config", str(grid), "--out", str(out),
           "--executor", "ray", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and len(read_rows(out / "rows.jsonl")) < 1 and proc.poll() is None:
        time.sleep(0.2)
    still_running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_rows(out / "rows.jsonl")
    assert still_running, "the grid ended before it could be killed part-way"
    assert first, "no row was written within 900 s"
    assert len(first) < 4, f"the kill came after the last of the 4 rows ({len(first)} written)"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out / "rows.jsonl")
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    assert rows[: len(first)] == first
    assert all(r["before"]["asr"] > 0.8 for r in rows)
    assert (out / "table.md").is_file() and "badnets-4x4" in (out / "table.md").read_text()
