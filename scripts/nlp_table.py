"""The nlp modality's results table: backdoor, clean reference and NFT, on the embedded datasets.

For each row it runs, through the `nft` command (in process):

1. `nft attack` with `--poison-rate 0`: the clean reference model (its ACC / BLEU is the bar);
2. `nft attack`: the backdoored model;
3. `nft purify` with each configuration in `configs/nlp/` named below.

Every step writes a run folder under `--work` and is skipped when that folder already exists, so
the script resumes after an interruption. It prints the Markdown table (and writes it to
`--out` when given). Everything runs on the CPU with one thread per process.

    python scripts/nlp_table.py --work runs/nlp-table --out runs/nlp-table/table.md
    python scripts/nlp_table.py --write docs/nlp.md README.md   # replace their table blocks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "nlp"

ROWS = {
    "cls-badnl": ["--config", str(CONFIGS / "attack-classification.yaml")],
    # AddSent at 3 %: at the config's 10 % it cost 10.9 points of accuracy (docs/nlp.md)
    "cls-addsent": ["--config", str(CONFIGS / "attack-classification.yaml"), "--attack", "addsent",
                    "--poison-rate", "0.03"],
    "gen-trigger": ["--config", str(CONFIGS / "attack-translation.yaml")],
}
# The defender's clean set of each row, replacing the configs' 10 per class: the translation
# pool is stratified by source length (generation has no classes) and the 300-pair pool of the
# default dictionary task has only five two-word pairs.
BUDGET = {"gen-trigger": ["--clean-per-class", "5"]}
# nft-words.yaml is text's default `nft` spelled out (nft.nlp.modality.word_nft_settings)
DEFENSES = {
    "nft-layernorm": CONFIGS / "nft-layernorm.yaml",
    "nft-all-channels": CONFIGS / "nft-all-channels.yaml",
    "nft-adv": CONFIGS / "nft-adv.yaml",
    "nft-words": CONFIGS / "nft-words.yaml",
    "ft-mixup": CONFIGS / "ft-mixup.yaml",
}


def _run(argv: list[str]) -> None:
    from nft.core.cli import main

    print("$ nft " + " ".join(argv), file=sys.stderr, flush=True)
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"nft {argv[0]} failed with exit code {code}")
    print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)


def _report(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


def run_row(name: str, work: Path, defenses: list[str], quiet: bool, seed: int) -> dict:
    flags = ["--no-progress"] if quiet else []
    attack_args = ROWS[name] + ["--seed", str(seed)]
    clean_dir, attack_dir = work / f"{name}-clean", work / name
    if not (clean_dir / "report.json").is_file():
        _run(["attack", *attack_args, "--poison-rate", "0", "--out", str(clean_dir), "--overwrite", *flags])
    if not (attack_dir / "report.json").is_file():
        _run(["attack", *attack_args, "--out", str(attack_dir), "--overwrite", *flags])
    row = {"name": name, "clean": _report(clean_dir), "attack": _report(attack_dir),
           "spec": json.loads((attack_dir / "config.json").read_text())["spec"], "defenses": {}}
    for defense in defenses:
        out = work / f"{name}-{defense}"
        if not (out / "report.json").is_file():
            _run(["purify", "--run", str(attack_dir), "--out", str(out), "--config", str(DEFENSES[defense]),
                  *BUDGET.get(name, []), "--seed", str(seed), "--overwrite", "--no-plots", *flags])
        row["defenses"][defense] = _report(out)
    return row


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


# The bars: the backdoor must reach ASR >= 85 % within TOLERANCE of the clean model's
# metric, and a defense must bring ASR <= 10 % losing at most TOLERANCE (BLEU points or accuracy).
TOLERANCE = {"bleu": 0.02, "acc": 0.04}
START, END = "<!-- nlp-table:start -->", "<!-- nlp-table:end -->"


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| task | model | attack | metric | clean model | backdoored | ASR | backdoor target met | defense "
        "| after | ASR after | Δ metric | seconds | defense target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        spec = row["spec"]
        metric = "bleu" if "bleu" in row["attack"] else "acc"
        task = "translation" if metric == "bleu" else "classification"
        tol = TOLERANCE[metric]
        attack_ok = row["attack"]["asr"] >= 0.85 and row["clean"][metric] - row["attack"][metric] <= tol
        first = True
        for defense, report in row["defenses"].items():
            before, after = report["before"], report["after"]
            head = (f"| {task} ({spec['dataset']}) | {spec['model']} | {spec['attack']} | {metric.upper()} | "
                    f"{_pct(row['clean'][metric])} | {_pct(before[metric])} | {_pct(before['asr'])} | "
                    f"{_mark(attack_ok)} |") if first else "| | | | | | | | |"
            defense_ok = after["asr"] <= 0.10 and before[metric] - after[metric] <= tol
            label = "nft-words (the default `nft`)" if defense == "nft-words" else defense
            lines.append(f"{head} {label} | {_pct(after[metric])} | {_pct(after['asr'])} | "
                         f"{100 * (after[metric] - before[metric]):+.1f} | {report.get('seconds', 0):.0f} | "
                         f"{_mark(defense_ok)} |")
            first = False
    lines += ["", "Targets: backdoor ASR ≥ 85 % with the metric within 2 BLEU points (translation) or 4 "
                  "accuracy points (classification) of the clean model; after the defense ASR ≤ 10 % with "
                  "the metric down by at most as much. Command: `python scripts/nlp_table.py --write "
                  "docs/nlp.md README.md`; configs in `configs/nlp/`; one thread per process; seed 0."]
    return "\n".join(lines) + "\n"


def write_block(path: Path, block: str) -> None:
    """Replace the table block of the Markdown file ``path``."""
    from nft.core.io import replace_marked_block

    replace_marked_block(path, START, END, block)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/nlp-table", help="folder for the run folders (resumable)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows out of {list(ROWS)}")
    parser.add_argument("--defenses", default=",".join(DEFENSES), help=f"out of {list(DEFENSES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--write", type=Path, nargs="+", default=[],
                        help="Markdown files whose nlp-table block is replaced")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [run_row(name, work, args.defenses.split(","), not args.progress, args.seed)
            for name in args.rows.split(",")]
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    for path in args.write:
        write_block(path, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
