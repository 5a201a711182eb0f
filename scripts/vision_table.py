"""The vision results table: every attack on Fashion-MNIST, backdoored and after NFT.

For each row of configs/vision/table.yaml it runs the real command path, `nft attack` (skipped
when the row's attack run already exists, so the table can be regenerated quickly after NFT's
defaults change) and `nft purify` with the shipped defaults and 10 clean images per class, then
writes table.md and table.json next to the runs and prints the table.

    python scripts/vision_table.py                       # every row, runs in runs/vision-table/
    python scripts/vision_table.py --rows badnets,blend  # some rows
    python scripts/vision_table.py --retrain             # retrain the backdoored models too
    python scripts/vision_table.py --set steps=2000      # a purification option for every row

Pass criteria (issue 4): backdoored ASR ≥ 85% with ACC within 3 points of the clean model; after
NFT, ASR ≤ 10% and ACC down by at most 4 points. The learned attacks (issue 5) may cost 4 points
of clean accuracy, and the composite backdoor, which its paper reports weaker, passes at ASR ≥ 70%
before and ≤ 25% after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "vision" / "table.yaml"))
    p.add_argument("--out", default=str(ROOT / "runs" / "vision-table"))
    p.add_argument("--rows", help="comma-separated rows (default: all)")
    p.add_argument("--retrain", action="store_true", help="retrain backdoored models that exist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="purification option for every row (as `nft purify --set`)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild table.md from the run folders already in --out")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def attack_argv(row: dict, out: Path, progress: bool) -> list[str]:
    argv = ["attack", "--modality", "vision", "--out", str(out), "--overwrite"]
    flags = {"dataset", "model", "attack", "epochs", "poison_rate", "target", "mode", "seed",
             "batch_size", "lr", "holdout", "data_root", "train_limit", "test_limit", "device"}
    for key, value in row.items():
        if key in flags:
            argv += [f"--{key.replace('_', '-')}", str(value)]
        elif key == "model_args":
            for k, v in value.items():
                argv += ["--model-arg", f"{k}={v}"]
        elif key == "attack_args":
            for k, v in value.items():
                argv += ["--attack-arg", f"{k}={v}"]
        else:
            raise SystemExit(f"table config: unknown row key {key!r}")
    return argv + ([] if progress else ["--no-progress"])


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from nft.core.cli import main as nft

    config = yaml.safe_load(Path(args.config).read_text())
    common, rows = config.get("common", {}), config["rows"]
    purify_opts = config.get("purify", {})
    chosen = args.rows.split(",") if args.rows else list(rows)
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows are {list(rows)}")
    out = Path(args.out)
    results = {}
    clean_report = out / "clean" / "report.json"
    if "clean" not in chosen and clean_report.is_file():  # the reference the criteria compare against
        results["clean"] = {"attack": json.loads(clean_report.read_text())}
    for name in chosen:
        row = {**common, **rows[name]}
        run_dir, purified = out / name, out / name / "nft"
        start = time.perf_counter()
        if args.report_only:
            if (run_dir / "report.json").is_file():
                entry = {"attack": json.loads((run_dir / "report.json").read_text()), "spec": row}
                if (purified / "report.json").is_file():
                    entry["purify"] = json.loads((purified / "report.json").read_text())
                results[name] = entry
            continue
        if args.retrain or not (run_dir / "report.json").is_file():
            print(f"== {name}: nft attack", flush=True)
            if nft(attack_argv(row, run_dir, not args.no_progress)) != 0:
                return 1
        attack_report = json.loads((run_dir / "report.json").read_text())
        entry = {"attack": attack_report, "spec": row}
        if row["attack"] != "none":
            print(f"== {name}: nft purify", flush=True)
            argv = ["purify", "--run", str(run_dir), "--out", str(purified), "--overwrite",
                    "--method", str(purify_opts.get("method", "nft")),
                    "--clean-per-class", str(purify_opts.get("clean_per_class", 10))]
            for item in args.set:
                argv += ["--set", item]
            if nft(argv + ([] if not args.no_progress else ["--no-progress"])) != 0:
                return 1
            entry["purify"] = json.loads((purified / "report.json").read_text())
            entry["purify"].pop("history", None)
        entry["wall_seconds"] = time.perf_counter() - start
        results[name] = entry
        (out / "table.json").write_text(json.dumps(results, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    table = render(results)
    (out / "table.md").write_text(table + "\n")
    print("\n" + table)
    return 0


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


PATTERN_BARS = {"asr": 0.85, "acc_gap": 0.03, "asr_after": 0.10, "acc_drop": 0.04}
LEARNED = ("inputaware", "dynamic", "lira", "issba", "fba", "cba")
BARS = {**{name: {**PATTERN_BARS, "acc_gap": 0.04} for name in LEARNED},
        "cba": {**PATTERN_BARS, "acc_gap": 0.04, "asr": 0.70, "asr_after": 0.25}}


def passes(attack: str, before: dict, after: dict, clean_acc: float | None) -> tuple[bool, bool]:
    """Whether the attack took hold and whether NFT removed it, by the attack's issue's bars."""
    bar = BARS.get(attack, PATTERN_BARS)
    attack_ok = before["asr"] >= bar["asr"] and (clean_acc is None or before["acc"] >= clean_acc - bar["acc_gap"])
    nft_ok = after["asr"] <= bar["asr_after"] and after["acc"] >= before["acc"] - bar["acc_drop"]
    return attack_ok, nft_ok


def render(results: dict) -> str:
    clean_acc = results.get("clean", {}).get("attack", {}).get("acc")
    lines = [
        "| attack | backdoored ACC | ASR | RA | NFT ACC | ASR | RA | NFT s | attack passes | NFT passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if clean_acc is not None:
        lines.append(f"| none (clean model) | {_pct(clean_acc)} | – | – | – | – | – | – | – | – |")
    for name, entry in results.items():
        if name == "clean" or "purify" not in entry:
            continue
        before, after = entry["purify"]["before"], entry["purify"]["after"]
        attack_ok, nft_ok = passes(entry.get("spec", {}).get("attack", name), before, after, clean_acc)
        lines.append(
            f"| {name} | {_pct(before['acc'])} | {_pct(before['asr'])} | {_pct(before['ra'])} | "
            f"{_pct(after['acc'])} | {_pct(after['asr'])} | {_pct(after['ra'])} | "
            f"{entry['purify']['seconds']:.0f} | {'yes' if attack_ok else 'no'} | {'yes' if nft_ok else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
