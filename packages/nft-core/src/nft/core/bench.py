"""``nft bench``: a grid of (attack, seed) × (defense, clean budget), run and tabulated.

A grid config (YAML) names one modality, the attack runs to make, the defenses and clean
budgets to try and the seeds::

    name: fmnist-small
    modality: vision
    seeds: [0, 1, 2]
    attack_defaults: {dataset: fashion-mnist, model: preactresnet18, epochs: 10, model_args: {width: 16}}
    attacks: [badnets, blend, {attack: trojan, mode: all-to-all}]
    defenses: [nft, anp, {method: ft, defense: {lr: 0.005}}]
    clean_budgets: [{per_class: 10}, {fraction: 0.05}]

Backdoored models are cached by a hash of their resolved spec, so a grid never trains the same
model twice (and grids sharing an output folder share models). Every finished row is appended to
``rows.jsonl`` at once, so a killed grid resumes where it stopped; the tables and plots are
rebuilt from that file after every row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import config_from_dict, config_to_dict
from .errors import ConfigError
from .io import atomic_write_text, write_json
from .modality import AttackSpec

__all__ = ["BenchConfig", "BenchRow", "grid_records", "load_bench_config", "run_bench", "summarise"]

log = logging.getLogger(__name__)

BUDGET_KEYS = ("per_class", "fraction", "count")


@dataclass(frozen=True)
class BenchRow:
    """One cell of the grid: which model to purify, with what, from how much clean data."""

    attack: dict
    """The attack's resolved :class:`AttackSpec` fields (without progress / device)."""
    seed: int
    method: str
    defense: dict
    budget: dict
    label: str = ""
    """How the attack is named in tables (its ``label:`` in the grid, else name and mode)."""

    @property
    def key(self) -> str:
        return _hash({"attack": self.attack, "method": self.method, "defense": self.defense,
                      "budget": self.budget, "seed": self.seed})

    @property
    def model_key(self) -> str:
        return _hash(self.attack)


@dataclass(frozen=True)
class BenchConfig:
    name: str
    modality: str
    attacks: tuple[dict, ...]
    defenses: tuple[dict, ...]
    clean_budgets: tuple[dict, ...] = ({"per_class": 10},)
    seeds: tuple[int, ...] = (0,)
    attack_defaults: dict = field(default_factory=dict)
    device: str | None = None

    def rows(self, resolve: Callable[[AttackSpec], AttackSpec]) -> list[BenchRow]:
        rows = []
        for attack in self.attacks:
            fields = {k: v for k, v in attack.items() if k != "label"}
            for seed in self.seeds:
                values = {**self.attack_defaults, **fields, "seed": seed}
                spec = resolve(config_from_dict(AttackSpec, values))
                frozen = {k: v for k, v in config_to_dict(spec).items() if k not in ("progress", "device")}
                label = attack.get("label") or spec.attack + ("-all" if spec.mode == "all-to-all" else "")
                for defense in self.defenses:
                    for budget in self.clean_budgets:
                        rows.append(BenchRow(frozen, seed, defense["method"],
                                             dict(defense.get("defense", {})), dict(budget), label))
        return rows


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _normalise_entries(entries: Iterable, key: str, what: str) -> tuple[dict, ...]:
    out = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {key: entry}
        if not isinstance(entry, dict) or key not in entry:
            raise ConfigError(f"each {what} entry must be a name or a mapping with {key!r}: {entry!r}")
        out.append(dict(entry))
    if not out:
        raise ConfigError(f"the grid has no {what}s")
    return tuple(out)


def load_bench_config(path: str | Path) -> BenchConfig:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"bench config {p} does not exist; see configs/ for examples")
    data = yaml.safe_load(p.read_text()) or {}
    return bench_config_from_dict(data, default_name=p.stem)


def bench_config_from_dict(data: dict, default_name: str = "bench") -> BenchConfig:
    from .defenses import DEFENSES

    known = {"name", "modality", "attacks", "defenses", "clean_budgets", "seeds", "attack_defaults", "device"}
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(f"unknown bench config keys {extra}; known: {sorted(known)}")
    if "modality" not in data:
        raise ConfigError("the bench config needs `modality:` (e.g. vision)")
    defenses = _normalise_entries(data.get("defenses", ["nft"]), "method", "defense")
    for d in defenses:
        DEFENSES.canonical(d["method"])
        unknown = sorted(set(d) - {"method", "defense", "label"})
        if unknown:
            raise ConfigError(f"defense entry {d} has unknown keys {unknown}; use method, defense, label")
    budgets = tuple(dict(b) for b in data.get("clean_budgets", [{"per_class": 10}]))
    for b in budgets:
        if len(b) != 1 or next(iter(b)) not in BUDGET_KEYS:
            raise ConfigError(f"clean budget {b} must have exactly one of {BUDGET_KEYS}")
    seeds = tuple(int(s) for s in data.get("seeds", [0]))
    if not seeds:
        raise ConfigError("the grid has no seeds")
    return BenchConfig(
        name=str(data.get("name", default_name)), modality=str(data["modality"]),
        attacks=_normalise_entries(data.get("attacks", []), "attack", "attack"), defenses=defenses,
        clean_budgets=budgets, seeds=seeds, attack_defaults=dict(data.get("attack_defaults", {})),
        device=data.get("device"),
    )


# ---- running ---------------------------------------------------------------------------------
def ensure_model(modality, row: BenchRow, models_dir: Path, *, device: str | None,
                 progress: bool) -> Path:
    """The attack run folder of ``row``, trained now unless a previous grid already made it."""
    from .runs import make_attack_run

    run_dir = models_dir / f"{row.attack.get('attack')}-{row.model_key}"
    if (run_dir / "report.json").is_file():
        return run_dir
    spec = config_from_dict(AttackSpec, {**row.attack, "device": device, "progress": progress})
    make_attack_run(modality, spec, run_dir, overwrite=True)
    return run_dir


def run_row(modality, row: BenchRow, run_dir: Path, *, device: str | None, progress: bool,
            experiment=None) -> dict:
    """Purify one model with one defense; returns the row's record."""
    from .api import purify
    from .data import select_clean_subset
    from .io import read_json
    from .runs import defense_config
    from .metrics import defense_effectiveness_rating

    experiment = experiment or modality.load_experiment(run_dir, device=device)
    overrides = {**row.defense, "seed": row.seed, "progress": progress}
    if device:
        overrides["device"] = device
    config = defense_config(row.method, experiment, overrides)
    budget_key, budget = next(iter(row.budget.items()))
    clean = select_clean_subset(experiment.defender_pool, seed=row.seed, labels=experiment.pool_labels,
                                **{budget_key: budget})
    before = read_json(run_dir / "before.json") if (run_dir / "before.json").is_file() else None
    if before is None:
        before = experiment.evaluate(experiment.model)
        write_json(run_dir / "before.json", before)
    result = purify(experiment.model, clean, config, method=row.method, task=experiment.task,
                    augmentation=experiment.augmentation, input_space=experiment.input_space,
                    collate_fn=experiment.collate_fn)
    after = experiment.evaluate(result.model)
    return {
        "key": row.key, "attack": row.attack.get("attack"), "mode": row.attack.get("mode"),
        "label": row.label,
        "dataset": row.attack.get("dataset"), "model": row.attack.get("model"), "seed": row.seed,
        "method": row.method, "defense": row.defense, "budget": f"{budget_key}={budget}",
        "clean_samples": len(clean), "before": before, "after": after, "seconds": result.seconds,
        "der": defense_effectiveness_rating(before, after, experiment.primary_metric),
        "primary_metric": experiment.primary_metric, "model_run": run_dir.name,
        # the defender's clean-set score before / after, and any collapsed attempts rerun
        "clean_set": result.info.get("clean_set"), "retries": result.info.get("retries", []),
    }


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: that row is redone
                log.warning("skipping an incomplete line of %s", path)
    return rows


def grid_records(out: Path, keys: set[str]) -> list[dict]:
    """The finished rows of ``out`` that belong to the grid whose row keys are ``keys``.

    Rows a changed config no longer asks for (another recipe, a dropped defense) stay in
    ``rows.jsonl``, so changing the config back finds them again, but they are left out of the
    tables: a table shows the config it was made from, nothing else.
    """
    return [r for r in read_rows(out / "rows.jsonl") if r.get("key") in keys]


def append_row(path: Path, record: dict) -> None:
    """Append one JSON line; the whole file is rewritten atomically so a kill never cuts it."""
    existing = path.read_text() if path.is_file() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    atomic_write_text(path, existing + json.dumps(record, sort_keys=True) + "\n")


def run_bench(config: BenchConfig, out: Path, *, progress: bool = True, executor: str = "local",
              address: str | None = None, limit: int | None = None) -> list[dict]:
    """Run every unfinished row of the grid into ``out`` and rebuild its tables.

    ``limit`` stops after that many newly finished rows (used to test resuming).
    """
    from tqdm.auto import tqdm

    from .registry import load_modality

    modality = load_modality(config.modality)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "grid.json", config)
    rows = config.rows(modality.resolve)
    keys = {r.key for r in rows}
    stored = read_rows(out / "rows.jsonl")
    done = {r["key"] for r in stored}
    todo = [r for r in rows if r.key not in done]
    if limit is not None:
        todo = todo[:limit]
    finished = sum(r.key in done for r in rows)
    log.info("%d of %d rows already done; running %d now", finished, len(rows), len(todo))
    stale = sum(r.get("key") not in keys for r in stored)
    if stale:
        log.info("%d rows in %s belong to another version of this grid; kept, left out of the tables",
                 stale, out / "rows.jsonl")
    if executor == "ray":
        from .bench_ray import run_rows_on_ray

        run_rows_on_ray(config, todo, out, address=address, progress=progress, keys=keys)
    elif executor == "local":
        bar = tqdm(total=len(rows), initial=finished,
                   desc=f"bench {config.name}", unit="row", disable=not progress)
        by_model: dict[str, list[BenchRow]] = {}
        for row in todo:
            by_model.setdefault(row.model_key, []).append(row)
        with bar:
            for group in by_model.values():
                run_dir = ensure_model(modality, group[0], out / "models", device=config.device,
                                       progress=progress)
                experiment = modality.load_experiment(run_dir, device=config.device)
                for row in group:
                    # purify() copies the model, so one loaded experiment serves the whole group
                    record = run_row(modality, row, run_dir, device=config.device, progress=False,
                                     experiment=experiment)
                    append_row(out / "rows.jsonl", record)
                    write_results(out, grid_records(out, keys), config)
                    bar.update(1)
    else:
        raise ConfigError(f"executor {executor!r} is unknown; use local or ray")
    records = grid_records(out, keys)
    write_results(out, records, config)
    return records


# ---- results ---------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _defense_label(entry: dict) -> str:
    """A grid defense entry's name in tables: its ``label:``, else the method and its settings."""
    return entry.get("label", entry["method"] if not entry.get("defense") else
                     f"{entry['method']}({','.join(f'{k}={v}' for k, v in entry['defense'].items())})")


def _label(record: dict, config: BenchConfig | None) -> str:
    if config is not None:
        for d in config.defenses:
            if d["method"] == record["method"] and dict(d.get("defense", {})) == record["defense"]:
                return _defense_label(d)
    return record["method"]


def _attack_label(record: dict) -> str:
    return record.get("label") or record["attack"]


def summarise(records: list[dict], config: BenchConfig | None = None) -> dict:
    """Mean ± std over seeds of every (attack, budget, defense) cell, plus per-defense summaries."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        metric = r.get("primary_metric", "acc")
        key = (_attack_label(r), r["budget"], _label(r, config))
        cell = cells.setdefault(key, {"asr": [], "acc": [], "asr_before": [], "acc_before": [],
                                      "der": [], "seconds": [], "ra": []})
        cell["asr"].append(r["after"]["asr"])
        cell["acc"].append(r["after"][metric])
        cell["ra"].append(r["after"].get("ra", math.nan))
        cell["asr_before"].append(r["before"]["asr"])
        cell["acc_before"].append(r["before"][metric])
        cell["der"].append(r["der"])
        cell["seconds"].append(r["seconds"])
    return {key: {k: _mean_std(v) for k, v in cell.items()} for key, cell in cells.items()}


def _pct(ms: tuple[float, float], digits: int = 2) -> str:
    mean, std = ms
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.{digits}f}" + (f"±{100 * std:.{digits - 1}f}" if std > 0 else "")


def table_markdown(records: list[dict], config: BenchConfig | None = None) -> str:
    """Tables shaped like the paper's Table 1: ASR / ACC per attack (rows) and defense (columns)."""
    summary = summarise(records, config)
    metric = (records[0].get("primary_metric", "acc") if records else "acc").upper()
    budgets = sorted({k[1] for k in summary})
    defenses = list(dict.fromkeys(k[2] for k in summary))
    if config is not None:  # the config's order, even when some rows were rerun later
        order = [_defense_label(d) for d in config.defenses]
        defenses.sort(key=lambda name: order.index(name) if name in order else len(order))
    attacks = list(dict.fromkeys(k[0] for k in summary))
    seeds = sorted({r["seed"] for r in records})
    out = []
    for budget in budgets:
        out += [f"### Clean budget {budget} (mean ± std over seeds {seeds}; cells are ASR / {metric} in %)", "",
                "| Attack | No defense | " + " | ".join(defenses) + " |",
                "|---|---|" + "---|" * len(defenses)]
        drops: dict[str, tuple[list, list]] = {d: ([], []) for d in defenses}
        for attack in attacks:
            base = next((summary[k] for k in summary if k[0] == attack and k[1] == budget), None)
            if base is None:
                continue
            cells = []
            for d in defenses:
                s = summary.get((attack, budget, d))
                if s is None:
                    cells.append("–")
                    continue
                cells.append(f"{_pct(s['asr'])} / {_pct(s['acc'])}")
                drops[d][0].append(s["asr_before"][0] - s["asr"][0])
                drops[d][1].append(s["acc_before"][0] - s["acc"][0])
            out.append(f"| {attack} | {_pct(base['asr_before'])} / {_pct(base['acc_before'])} | "
                       + " | ".join(cells) + " |")
        out.append("| **Avg. drop** | – | " + " | ".join(
            f"{100 * statistics.fmean(a):.2f}↓ / {100 * statistics.fmean(c):.2f}↓" if a else "–"
            for a, c in drops.values()) + " |")
        out.append("")
        out += ["| Defense | mean DER (%) | mean RA (%) | mean seconds |", "|---|---|---|---|"]
        for d in defenses:
            ss = [summary[k] for k in summary if k[1] == budget and k[2] == d]
            if ss:
                out.append(f"| {d} | {100 * statistics.fmean(s['der'][0] for s in ss):.2f} | "
                           f"{100 * statistics.fmean(s['ra'][0] for s in ss):.2f} | "
                           f"{statistics.fmean(s['seconds'][0] for s in ss):.1f} |")
        out.append("")
    return "\n".join(out)


def write_results(out: Path, records: list[dict], config: BenchConfig | None = None) -> None:
    if not records:
        return
    write_json(out / "rows.json", records)
    columns = ["attack", "mode", "dataset", "model", "seed", "method", "budget", "clean_samples",
               "acc_before", "asr_before", "ra_before", "acc_after", "asr_after", "ra_after", "der", "seconds"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for r in records:
        metric = r.get("primary_metric", "acc")
        flat = {k: r.get(k) for k in columns}
        for side in ("before", "after"):
            flat[f"acc_{side}"] = r[side][metric]
            flat[f"asr_{side}"] = r[side].get("asr")
            flat[f"ra_{side}"] = r[side].get("ra")
        writer.writerow(flat)
    atomic_write_text(out / "rows.csv", buffer.getvalue())
    name = config.name if config else out.name
    atomic_write_text(out / "table.md", f"# Bench `{name}`\n\n" + table_markdown(records, config))
    from .plots import save_bench_plots

    save_bench_plots(out, records, [_label(r, config) for r in records])
