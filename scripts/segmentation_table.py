"""The segmentation results table: clean model, backdoored models, NFT-purified models.

    python scripts/segmentation_table.py                       # runs/segmentation-table, prints the table
    python scripts/segmentation_table.py --write docs/segmentation.md

Every run goes through the `nft` command with the YAML files of ``configs/segmentation``:
``clean.yaml`` (the same training without poison: the reference mIoU), one attack file per row
(``hidden-seg.yaml``, ``badnets-seg.yaml``) and ``nft.yaml`` (the purification). Finished run
folders are reused, so a killed run resumes; a purified folder made with other NFT settings (the
modality's ``nft_overrides``, ``nft.yaml``) is redone; ``--fresh`` retrains everything. ``--write``
replaces the block between the table markers of the given Markdown file.

The table checks the issue's targets: backdoor ASR ≥ 85 % with clean mIoU within 5 points of the
clean model, and after NFT ASR ≤ 10 % with mIoU down by at most 5 points. Its "no-trigger ASR"
columns score the same victim pixels on the same test images without the trigger: the share a
model predicts as the target class anyway (its floor), so the part of an ASR that is the
backdoor is the difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "segmentation"
ATTACKS = ("hidden-seg", "badnets-seg")
START, END = "<!-- segmentation-table:start -->", "<!-- segmentation-table:end -->"

log = logging.getLogger("segmentation_table")


def _nft(*args: str) -> None:
    from nft.core.cli import main

    code = main(list(args))
    if code != 0:
        raise SystemExit(f"nft {' '.join(args)} failed with code {code}")


def _attack(name: str, out: Path, fresh: bool) -> dict:
    if fresh and out.exists():
        shutil.rmtree(out)
    if not (out / "report.json").is_file():
        log.info("training %s -> %s", name, out)
        _nft("attack", "--config", str(CONFIGS / f"{name}.yaml"), "--out", str(out), "--no-progress",
             "--overwrite")
    return json.loads((out / "report.json").read_text())


def _stale(run: Path, out: Path) -> bool:
    """Whether the purified folder ``out`` was made with other settings than the current ones:
    the modality's ``nft_overrides``, ``nft.yaml``'s ``defense`` mapping and its clean budget."""
    from nft.core import load_modality

    done = json.loads((out / "config.json").read_text())
    purify = yaml.safe_load((CONFIGS / "nft.yaml").read_text())
    wanted = {**load_modality("segmentation").load_experiment(run, device="cpu").nft_overrides,
              **(purify.get("defense") or {})}
    budget = {k: purify.get(k) for k in ("clean_per_class", "clean_fraction", "clean_count")}
    wanted = json.loads(json.dumps(wanted))  # tuples as the saved config's lists
    for key, value in wanted.items():
        have = done["defense"].get(key)
        if isinstance(value, dict) and isinstance(have, dict):
            if any(have.get(k) != v for k, v in value.items()):
                return True
        elif have != value:
            return True
    return done.get("clean") != budget


def _purify(run: Path, out: Path, fresh: bool) -> dict:
    if (fresh or ((out / "report.json").is_file() and _stale(run, out))) and out.exists():
        shutil.rmtree(out)
    if not (out / "report.json").is_file():
        log.info("purifying %s -> %s", run, out)
        _nft("purify", "--config", str(CONFIGS / "nft.yaml"), "--run", str(run), "--out", str(out),
             "--no-progress", "--overwrite")
    return json.loads((out / "report.json").read_text())


def _untriggered_asr(run: Path, weights: Path | None = None) -> float:
    """ASR of the run's model (or of ``weights``) on its victim test images without the trigger."""
    from nft.core import load_modality, load_model_weights

    srun, model = load_modality("segmentation").load_run(run)
    if weights is not None:
        load_model_weights(model, weights)
    return srun.untriggered_asr(model.eval(), device="cpu")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(clean: dict, rows: list[tuple[str, dict, dict]], settings: dict) -> str:
    lines = [
        "| model | mIoU (%) | ASR (%) | no-trigger ASR (%) | RA (%) | mIoU vs clean | "
        "backdoor target met | mIoU after NFT (%) | ASR after NFT (%) | no-trigger ASR after NFT (%) "
        "| mIoU drop | NFT target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| clean (no poison) | {_pct(clean['miou'])} | {_pct(clean['asr'])} | {_pct(clean['floor'])} "
        f"| {_pct(clean['ra'])} | – | – | – | – | – | – | – |",
    ]
    for name, attack, purified in rows:
        gap = clean["miou"] - attack["miou"]
        after = purified["after"]
        drop = purified["before"]["miou"] - after["miou"]
        lines.append(
            f"| {name} | {_pct(attack['miou'])} | {_pct(attack['asr'])} | {_pct(attack['floor'])} "
            f"| {_pct(attack['ra'])} | {-100 * gap:+.1f} | {_mark(attack['asr'] >= 0.85 and gap <= 0.05)} "
            f"| {_pct(after['miou'])} | {_pct(after['asr'])} | {_pct(purified['floor'])} | {100 * drop:.1f} "
            f"| {_mark(after['asr'] <= 0.10 and drop <= 0.05)} |")
    lines += ["", settings["note"]]
    return "\n".join(lines) + "\n"


def _settings() -> dict:
    spec = yaml.safe_load((CONFIGS / "hidden-seg.yaml").read_text())
    purify = yaml.safe_load((CONFIGS / "nft.yaml").read_text())
    budget = {k: v for k, v in purify.items() if k.startswith("clean_")}
    note = (f"Canvas-seg, {spec.get('model')} (width {spec.get('model_args', {}).get('width', 16)}), "
            f"{spec.get('train_limit')} training canvases, {spec.get('epochs')} epochs, poison rate "
            f"{spec.get('poison_rate')}, victim class {spec.get('attack_args', {}).get('victim', 2)} → "
            f"target {spec.get('target', 0)}, seed {spec.get('seed', 0)}. NFT: "
            f"{', '.join(f'{k}={v}' for k, v in budget.items())}, defense "
            f"{json.dumps(purify.get('defense', {}), sort_keys=True)}. Configs: configs/segmentation/; "
            "command: `python scripts/segmentation_table.py`.")
    return {"note": note}


def write_block(path: Path, block: str) -> None:
    """Replace the table block of the Markdown file ``path``."""
    from nft.core.io import replace_marked_block

    replace_marked_block(path, START, END, block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "segmentation-table")
    parser.add_argument("--write", type=Path, help="Markdown file whose table block is replaced")
    parser.add_argument("--fresh", action="store_true", help="retrain and re-purify everything")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clean = _attack("clean", args.out / "clean", args.fresh)
    clean["floor"] = _untriggered_asr(args.out / "clean")
    rows = []
    for name in ATTACKS:
        attack = _attack(name, args.out / name, args.fresh)
        attack["floor"] = _untriggered_asr(args.out / name)
        purified = _purify(args.out / name, args.out / f"{name}-nft", args.fresh)
        purified["floor"] = _untriggered_asr(args.out / name, args.out / f"{name}-nft" / "model.safetensors")
        rows.append((name, attack, purified))
    block = table(clean, rows, _settings())
    sys.stdout.write(block)
    if args.write:
        write_block(args.write, block)
    log.info("done in %.0f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
