"""The defense table: every registered defense on every given attack run, at two clean budgets.

Given attack run folders made by `nft attack` (any modality), this script purifies each run's
backdoored model with each defense, from k clean samples per class and from a fraction of the
training set, and writes the table attack × defense (ACC, ASR, RA, DER, seconds) as Markdown and
JSON. It goes through the same path as `nft purify` (the modality's experiment, `purify()`, the
modality's evaluator) and keeps one JSON file per cell, so an interrupted run resumes where it
stopped and a finished cell is never recomputed.

    python scripts/defense_table.py RUN [RUN ...] --out runs/defense-table
    python scripts/defense_table.py RUN ... --defenses anp,rnp,nft --budgets per-class=10
    python scripts/defense_table.py RUN ... --scale 0.25        # every step count × 0.25
    python scripts/defense_table.py RUN ... --set anp.steps=500 --set sau.batch_size=64
    python scripts/defense_table.py RUN ... --table-only               # the table of the cells so far

Budgets: `per-class=K` (K clean samples of every class) and `fraction=F` (F times the number of
*training* images of the run, `train_limit` of its spec, or `--train-size`), drawn from the
run's defender pool. DER is BackdoorBench's (ΔASR − ΔACC + 1) / 2 against the undefended model.
`--scale` shrinks every defense's step counts (the fields listed in STEP_FIELDS) for a machine
that cannot afford the official ones; the table records the scale it was made with.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The step-count fields of each defense's config that --scale multiplies (rounded, at least 1).
STEP_FIELDS = {
    "ft": ("steps",), "ft-mixup": ("steps",),
    "nft": ("steps",), "nft-reference": ("steps",), "nft-no-mixup": ("steps",), "nft-no-reg": ("steps",),
    "nft-no-patterns": ("steps",), "nft-no-distill": ("steps",),
    "anp": ("steps",), "i-bau": ("steps_per_round",), "awm": ("steps_per_round",),
    "ft-sam": ("steps",), "rnp": (), "fst": ("steps",), "nad": ("steps", "warm_steps", "teacher_steps"),
    "sau": ("steps",),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="attack run folders made by `nft attack`")
    p.add_argument("--out", default=str(ROOT / "runs" / "defense-table"))
    p.add_argument("--defenses", help="comma-separated defense names (default: every registered one)")
    p.add_argument("--budgets", default="per-class=10,fraction=0.05",
                   help="comma-separated budgets: per-class=K and/or fraction=F (of the training set)")
    p.add_argument("--train-size", type=int, help="training-set size for fraction budgets "
                   "(default: the run's train_limit)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every defense's step counts")
    p.add_argument("--set", action="append", default=[], metavar="DEFENSE.KEY=VALUE",
                   help="a defense option, e.g. anp.steps=500 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, … (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--recompute", action="store_true", help="recompute cells that exist")
    p.add_argument("--table-only", action="store_true",
                   help="write the table from the cells that exist; compute nothing new (missing: not run)")
    p.add_argument("--progress", action="store_true", help="show the defenses' progress bars")
    p.add_argument("--title", default="Defense table")
    return p.parse_args(argv)


def parse_budgets(text: str) -> list[tuple[str, float]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, _, value = item.partition("=")
        if kind not in ("per-class", "fraction") or not value:
            raise SystemExit(f"budget {item!r}: use per-class=K or fraction=F")
        out.append((kind, float(value)))
    return out


def budget_label(kind: str, value: float) -> str:
    return f"{int(value)}/class" if kind == "per-class" else f"{100 * value:g}% of train"


def overrides_by_defense(items: list[str]) -> dict[str, dict]:
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: use DEFENSE.KEY=VALUE")
        out.setdefault(name, {})[field] = yaml.safe_load(raw)
    return out


def defense_config(name: str, experiment, scale: float, extra: dict, seed: int, device, progress: bool):
    """The configuration ``nft purify`` would run ``name`` with on ``experiment`` (the defense's
    defaults, the modality's masks and NFT settings, then ``extra``), its step counts × ``scale``."""
    from nft.core.config import config_to_dict
    from nft.core.runs import defense_config as purify_config

    config = purify_config(name, experiment, extra)
    values = config_to_dict(config)
    changes = {}
    for field in STEP_FIELDS.get(name, ("steps",) if "steps" in values else ()):
        if scale != 1.0 and field in values and field not in extra:  # an explicit value is kept
            changes[field] = max(1, int(round(values[field] * scale)))
    if "rounds" in values and "steps" in values and name.startswith("nft"):
        changes["rounds"] = min(values["rounds"], changes.get("steps", values["steps"]))
    changes.update(seed=seed, progress=progress)
    if device:
        changes["device"] = device
    return config.replace(**changes)


def select(experiment, spec: dict, kind: str, value: float, seed: int, train_size: int | None):
    from nft.core import select_clean_subset

    pool = experiment.defender_pool
    if kind == "per-class":
        return select_clean_subset(pool, per_class=int(value), seed=seed, labels=experiment.pool_labels)
    n_train = train_size or spec.get("train_limit")
    if not n_train:
        raise SystemExit("a fraction budget needs the training-set size: the run's spec has no "
                         "train_limit, pass --train-size")
    count = min(len(pool), max(1, int(round(value * n_train))))
    if count < round(value * n_train):
        logging.warning("the defender pool has only %d samples; the %g budget is capped", len(pool), value)
    return select_clean_subset(pool, count=count, seed=seed)


def run_cell(run: Path, experiment, spec: dict, name: str, config, clean, before: dict) -> dict:
    import copy

    from nft.core import defense_effectiveness_rating, purify

    start = time.perf_counter()
    try:
        result = purify(copy.deepcopy(experiment.model), clean, config, method=name, task=experiment.task,
                        augmentation=experiment.augmentation, input_space=experiment.input_space,
                        collate_fn=experiment.collate_fn)
    except Exception as err:  # noqa: BLE001 - a failing defense is a table entry, not a crash
        logging.exception("%s on %s failed", name, run.name)
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - start}
    after = experiment.evaluate(result.model)
    info = {k: v for k, v in result.info.items() if k != "threshold_sweep"}
    return {"after": after, "seconds": result.seconds, "clean_samples": result.clean_samples,
            "der": defense_effectiveness_rating(before, after, experiment.primary_metric),
            "info": info, "config": config.to_dict()}


def fmt(value, pct=True) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if pct else f"{value:.0f}"


def markdown(table: dict, attacks: list[str], defenses: list[str], budgets: list[str], metric: str) -> str:
    lines = [f"# {table['title']}", "",
             f"Step scale {table['scale']:g} (1 = the official defaults); seed {table['seed']}. "
             f"Cells: {metric.upper()} / ASR / RA / DER in %, purification seconds.", ""]
    for attack in attacks:
        b = table["before"][attack]
        lines += [f"## {attack}", "",
                  f"Undefended: {metric.upper()} {fmt(b.get(metric))}, ASR {fmt(b.get('asr'))}, "
                  f"RA {fmt(b.get('ra'))}.", ""]
        head = "| defense | " + " | ".join(
            f"{budget}: {metric.upper()} / ASR / RA / DER / s" for budget in budgets) + " |"
        lines += [head, "|---|" + "---|" * len(budgets)]
        for name in defenses:
            cells = []
            for budget in budgets:
                cell = table["cells"].get(f"{attack}|{budget}|{name}")
                if cell is None:
                    cells.append("not run")
                elif "error" in cell:
                    cells.append("error: " + cell["error"].split(":")[0])
                else:
                    a = cell["after"]
                    cells.append(f"{fmt(a.get(metric))} / {fmt(a.get('asr'))} / {fmt(a.get('ra'))} / "
                                 f"{fmt(cell['der'])} / {fmt(cell['seconds'], pct=False)}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nft.core import DEFENSES, load_modality
    from nft.core.io import read_json, write_json

    defenses = args.defenses.split(",") if args.defenses else DEFENSES.names()
    for name in defenses:
        DEFENSES.canonical(name)
    budgets = parse_budgets(args.budgets)
    extra = overrides_by_defense(args.set)
    out = Path(args.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    table = {"title": args.title, "scale": args.scale, "seed": args.seed, "before": {}, "cells": {},
             "runs": {}, "budgets": [budget_label(k, v) for k, v in budgets], "defenses": defenses}
    attacks, metric = [], "acc"
    for run_arg in args.runs:
        run = Path(run_arg)
        config = read_json(run / "config.json")
        if config.get("kind") != "attack":
            raise SystemExit(f"{run} is not an attack run folder (config.json kind={config.get('kind')})")
        spec = config["spec"]
        attack = spec.get("attack") or run.name
        if attack in attacks:
            attack = run.name
        attacks.append(attack)
        modality = load_modality(config["modality"])
        experiment = modality.load_experiment(run, device=args.device)
        metric = experiment.primary_metric
        before_file = out / "cells" / f"{attack}__before.json"
        if before_file.is_file() and not args.recompute:
            before = read_json(before_file)
        else:
            before = experiment.evaluate(experiment.model)
            write_json(before_file, before)
        table["before"][attack] = before
        table["runs"][attack] = str(run.resolve())
        logging.info("%s: undefended %s", attack, before)
        for kind, value in budgets:
            label = budget_label(kind, value)
            clean = select(experiment, spec, kind, value, args.seed, args.train_size)
            for name in defenses:
                key = f"{attack}|{label}|{name}"
                cell_file = out / "cells" / f"{attack}__{kind}-{value:g}__{name}.json"
                if cell_file.is_file() and not args.recompute:
                    table["cells"][key] = read_json(cell_file)
                    continue
                if args.table_only:
                    continue
                cfg = defense_config(name, experiment, args.scale, extra.get(name, {}), args.seed, args.device,
                                     args.progress)
                logging.info("%s | %s | %s: %d clean samples", attack, label, name, len(clean))
                cell = run_cell(run, experiment, spec, name, cfg, clean, before)
                cell.update(attack=attack, budget=label, defense=name, scale=args.scale)
                write_json(cell_file, cell)
                table["cells"][key] = cell
                logging.info("%s | %s | %s: %s", attack, label, name,
                             cell.get("error") or {**cell["after"], "seconds": round(cell["seconds"], 1)})
                write_json(out / "table.json", table)
                (out / "table.md").write_text(markdown(table, attacks, defenses, table["budgets"], metric))
    write_json(out / "table.json", table)
    text = markdown(table, attacks, defenses, table["budgets"], metric)
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
