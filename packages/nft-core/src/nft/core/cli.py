"""The ``nft`` command: ``list``, ``attack``, ``purify``, ``evaluate`` (and ``bench`` when installed).

Options come from three layers, later ones winning: the dataclass defaults, a YAML file
(``--config``), and flags. The resolved configuration is written into every run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .config import config_from_dict, config_to_dict
from .errors import ConfigError, NFTError
from .io import RunFolder, to_jsonable
from .modality import AttackSpec
from .registry import available_modalities, load_modality
from .runs import defense_config, load_run

log = logging.getLogger("nft")

EPILOG = "Every option has a default that runs on the modality's embedded data."


# ---- option helpers -------------------------------------------------------------------------
def _say(*parts: Any, **kwargs: Any) -> None:
    """Print on rank 0 only (every rank runs the same command under torchrun)."""
    from .distributed import is_main

    if is_main():
        print(*parts, **kwargs)


def _json_entries(info: dict) -> dict:
    """The entries of ``info`` that JSON can hold (a defense may keep objects in its info)."""
    kept = {}
    for key, value in info.items():
        value = to_jsonable(value)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept


def _run_folder(out: str | Path, overwrite: bool) -> RunFolder:
    """The output run folder; only rank 0 keeps what it writes."""
    from .distributed import is_main

    return RunFolder(out, overwrite=overwrite, discard=not is_main())



def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "masks.targets=[norm, conv]"]`` -> ``{"a": 1, "masks": {"targets": [...]}}``."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            problem = str(getattr(err, "problem", None) or err).strip()
            raise ConfigError(
                f"{flag} {item!r}: the value is not valid YAML ({problem}); quote it in single quotes, "
                "e.g. masks.include=['layer[34]\\..*'] (inside double quotes a backslash starts an escape)"
            ) from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _load_yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of options, not {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags the user actually gave (argparse defaults are None)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _table(rows: list[tuple[str, dict]], keys: Sequence[str], extra: dict[str, str] | None = None) -> str:
    # each column as wide as its name, so long metric names (VIDEO_ASR, MAP50_ASR) stay apart
    widths = [max(9, len(k) + 1) for k in keys]
    head = f"{'':<10}" + "".join(f"{k.upper():>{w}}" for k, w in zip(keys, widths))
    lines = [head]
    for name, metrics in rows:
        lines.append(f"{name:<10}" + "".join(
            f"{100 * metrics[k]:>{w - 1}.2f}%" if k in metrics else f"{'-':>{w}}"
            for k, w in zip(keys, widths)))
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def _metric_keys(metrics: dict) -> list[str]:
    primary = [k for k in metrics if k not in ("asr", "ra")]
    return primary + [k for k in ("asr", "ra") if k in metrics]


# ---- commands -------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from .defenses import DEFENSES

    names = [args.modality] if args.modality else available_modalities()
    print("defenses: " + ", ".join(DEFENSES.names()))
    for name in names:
        try:
            modality = load_modality(name)
        except Exception as err:  # noqa: BLE001 - one broken package must not hide the others
            if args.modality:
                raise
            print(f"\n{name}: could not be loaded ({type(err).__name__}: {err})")
            continue
        print(f"\n{name}: {modality.description}")
        for kind, entries in modality.listing().items():
            print(f"  {kind:<14}{', '.join(entries) or '-'}")
        defaults = ", ".join(f"{k}={v}" for k, v in modality.defaults.items())
        print(f"  {'defaults':<14}{defaults}")
    return 0


ATTACK_FLAGS = ("dataset", "model", "attack", "epochs", "poison_rate", "target", "mode", "seed",
                "batch_size", "lr", "holdout", "data_root", "train_limit", "test_limit", "device",
                "precision", "channels_last")


def cmd_attack(args: argparse.Namespace) -> int:
    from .attacks import MODES

    file_cfg = _load_yaml(args.config)
    modality_name = args.modality or file_cfg.pop("modality", None) or "vision"
    file_cfg.pop("modality", None)
    out = args.out or file_cfg.pop("out", None)
    file_cfg.pop("out", None)
    if not out:
        raise ConfigError("nft attack needs --out RUN (the run folder to create)")
    modality = load_modality(modality_name)
    values = _merge(file_cfg, _flags(args, ATTACK_FLAGS))
    values["attack_args"] = _merge(values.get("attack_args", {}),
                                   parse_assignments(args.attack_arg, "--attack-arg"))
    values["model_args"] = _merge(values.get("model_args", {}),
                                  parse_assignments(args.model_arg, "--model-arg"))
    values["progress"] = not args.no_progress
    spec = modality.resolve(config_from_dict(AttackSpec, values))  # resolved here to validate early
    if spec.mode not in MODES:
        raise ConfigError(f"--mode {spec.mode!r} is unknown; use one of {MODES}")
    from .distributed import is_main
    from .runs import make_attack_run

    metrics, seconds = make_attack_run(modality, spec, out, overwrite=args.overwrite, discard=not is_main())
    _say(_table([("backdoored", metrics)], _metric_keys(metrics)))
    _say(f"wrote {out} ({seconds:.0f} s)")
    return 0


PURIFY_FLAGS = ("method", "clean_per_class", "clean_fraction", "clean_count", "seed", "device", "augmentation")
CLEAN_BUDGETS = ("clean_per_class", "clean_fraction", "clean_count")


def cmd_purify(args: argparse.Namespace) -> int:
    from .api import purify
    from .data import select_clean_subset
    from .defenses import DEFENSES
    from .metrics import defense_effectiveness_rating, report_markdown

    file_cfg = _load_yaml(args.config)
    run_dir = Path(args.run or file_cfg.pop("run", "") or "")
    file_cfg.pop("run", None)
    out = args.out or file_cfg.pop("out", None)
    file_cfg.pop("out", None)
    if not str(run_dir) or not (run_dir / "config.json").is_file():
        raise ConfigError(f"--run {run_dir} is not a run folder made by `nft attack`")
    if not out:
        raise ConfigError("nft purify needs --out OUT (the run folder to create)")
    defense_overrides = file_cfg.pop("defense", {}) or {}
    flags = _flags(args, PURIFY_FLAGS)
    if any(k in flags for k in CLEAN_BUDGETS):  # a budget given on the command line replaces the file's
        for key in CLEAN_BUDGETS:
            file_cfg.pop(key, None)
    options = _merge(file_cfg, flags)
    unknown = sorted(set(options) - set(PURIFY_FLAGS))
    if unknown:
        raise ConfigError(f"unknown purify options {unknown}; known: {list(PURIFY_FLAGS)} and `defense`")
    method = options.get("method", "nft")
    defaults = DEFENSES.get(method)(None).config
    budgets = [k for k in CLEAN_BUDGETS if options.get(k) is not None]
    if len(budgets) > 1:
        raise ConfigError(f"choose one clean budget, not {budgets}")
    if not budgets:
        options["clean_per_class"] = 10
    seed = int(options.get("seed", 0))

    overrides = _merge(defense_overrides, parse_assignments(args.set, "--set"))
    if args.steps is not None:
        overrides["steps"] = args.steps
    overrides.update(seed=seed, progress=not args.no_progress)
    if options.get("device"):
        overrides["device"] = options["device"]
    config_from_dict(type(defaults), _merge(config_to_dict(defaults), overrides))  # bad values fail before the slow load

    _run_folder(out, args.overwrite)  # fail early if OUT exists
    modality, experiment, attack_config = load_run(run_dir, device=options.get("device"))
    config = defense_config(method, experiment, overrides)
    augmentation = experiment.augmentation
    if options.get("augmentation"):
        augmentation = modality.augmentations.get(options["augmentation"])()
    clean = select_clean_subset(
        experiment.defender_pool, per_class=options.get("clean_per_class"),
        fraction=options.get("clean_fraction"), count=options.get("clean_count"), seed=seed,
        labels=experiment.pool_labels,
    )
    _say(f"purifying with {method} on {len(clean)} clean samples …", file=sys.stderr)
    before = experiment.evaluate(experiment.model)
    result = purify(
        experiment.model, clean, config, method=method, task=experiment.task,
        augmentation=augmentation, input_space=experiment.input_space,
        collate_fn=experiment.collate_fn,
    )
    after = experiment.evaluate(result.model)
    report = {
        "method": method, "before": before, "after": after, "seconds": result.seconds,
        "clean_samples": len(clean),
        "der": defense_effectiveness_rating(before, after, experiment.primary_metric),
        "clean_set": result.info.get("clean_set"),  # the task's score on the clean set, before / after
        # what the defense reports of itself (NFT: masked layers, mask summary, bias refit)
        "defense_info": _json_entries({k: v for k, v in result.info.items() if k != "clean_set"}),
        "history": result.history,
    }
    with _run_folder(out, args.overwrite) as run:
        run.write_json("config.json", {
            "kind": "purify", "modality": attack_config["modality"], "source": str(run_dir.resolve()),
            # the settings of the run that was kept (a collapsed NFT run is rerun more gently)
            "method": method, "defense": config_to_dict(result.config),
            "augmentation": options.get("augmentation") or (repr(augmentation) if augmentation else "the defense's own"),
            "clean": {k: options.get(k) for k in ("clean_per_class", "clean_fraction", "clean_count")},
            "seed": seed,
        })
        run.save_model(result.model)
        if result.masks:
            run.save_tensors("masks.safetensors", result.masks)
        run.write_json("report.json", report)
        run.write_text("report.md", report_markdown(report, title=f"{method} on {run_dir.name}"))
        if not args.no_plots:
            from .plots import save_report_plots

            save_report_plots(run.root, report, result.masks)
    keys = _metric_keys(before)
    _say(_table([("before", before), ("after", after)], keys,
                {"seconds": f"{result.seconds:.1f}", "clean samples": str(len(clean)),
                 "DER": f"{100 * report['der']:.2f}%",
                 **({"collapsed and rerun": "; ".join(r["reason"] for r in result.info["retries"])}
                    if result.info.get("retries") else {})}))
    _say(f"wrote {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import write_json

    run_dir = Path(args.run)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"--run {run_dir} is not a run folder (no config.json)")
    _, experiment, _ = load_run(run_dir, device=args.device)
    metrics = experiment.evaluate(experiment.model)
    _say(_table([(run_dir.name[:10], metrics)], _metric_keys(metrics)))
    if args.out:
        from .distributed import is_main

        if is_main():
            write_json(args.out, metrics)
    else:
        _say(json.dumps(metrics))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import load_bench_config, run_bench, summarise

    config = load_bench_config(args.config)
    out = Path(args.out or Path("runs") / "bench" / config.name)
    records = run_bench(config, out, progress=not args.no_progress, executor=args.executor,
                        address=args.address, limit=args.limit)
    print((out / "table.md").read_text() if (out / "table.md").is_file() else "no rows yet")
    print(f"{len(records)} rows in {out} ({len(summarise(records, config))} cells)")
    return 0


# ---- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nft", description="Neural mask Fine-Tuning: remove backdoors from trained models.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="installed modalities, their models / attacks / datasets, and defenses")
    p.add_argument("--modality", help="only this modality")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("attack", help="train a backdoored model into a run folder", epilog=EPILOG)
    p.add_argument("--modality", help="vision (default), detection, video, pointcloud, nlp, …")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--config", help="YAML file with any of these options")
    p.add_argument("--dataset", help="dataset name (default: the modality's embedded data)")
    p.add_argument("--model", help="model name (see `nft list`)")
    p.add_argument("--attack", help="attack name (see `nft list`)")
    p.add_argument("--epochs", type=int, help="training epochs (default: enough to converge)")
    p.add_argument("--poison-rate", type=float, help="fraction of samples poisoned (default 0.1)")
    p.add_argument("--target", type=int, help="target class (default 0)")
    p.add_argument("--mode", help="all-to-one (default) or all-to-all")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--holdout", type=int, help="training samples kept as the defender's clean pool")
    p.add_argument("--data-root", help="where a real dataset lives")
    p.add_argument("--train-limit", type=int, help="use only this many training samples")
    p.add_argument("--test-limit", type=int, help="use only this many test samples")
    p.add_argument("--attack-arg", action="append", metavar="KEY=VALUE", help="attack option (repeatable)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="model option (repeatable)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast precision (GPU users)")
    p.add_argument("--channels-last", action="store_const", const=True, help="NHWC activations (GPU users)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("purify", help="purify a backdoored run's model (NFT by default)", epilog=EPILOG)
    p.add_argument("--run", help="run folder made by `nft attack`")
    p.add_argument("--out", help="run folder to create for the purified model")
    p.add_argument("--config", help="YAML file: these options, plus a `defense:` mapping")
    p.add_argument("--method", help="defense name (default nft; see `nft list`)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--clean-per-class", type=int, help="k clean samples per class (default 10)")
    budget.add_argument("--clean-fraction", type=float, help="fraction of the defender's pool")
    budget.add_argument("--clean-count", type=int, help="number of clean samples")
    p.add_argument("--steps", type=int, help="optimiser steps of the defense")
    p.add_argument("--augmentation", help="the modality's mixing augmentation by name (see `nft list`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="defense option, e.g. lr=0.1 or masks.targets=[norm,conv] (repeatable)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_purify)

    p = sub.add_parser("evaluate", help="clean and triggered metrics of a run's model")
    p.add_argument("--run", required=True, help="run folder (attack or purify)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--device", help="cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="run a grid of attacks × defenses × clean budgets × seeds")
    p.add_argument("--config", required=True, help="grid YAML (see configs/)")
    p.add_argument("--out", help="results folder (default runs/bench/<name>); reruns resume it")
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local processes (default) or a Ray cluster")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--limit", type=int, help="stop after this many new rows")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_bench)

    for entry in _extra_commands():
        entry(sub)
    return parser


def _extra_commands():
    """Sub-commands other packages contribute (group ``nft.commands``), e.g. ``bench``."""
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group="nft.commands"):
        try:
            out.append(ep.load())
        except Exception as err:  # noqa: BLE001 - a broken plug-in must not break the CLI
            log.warning("command plug-in %s could not load: %s", ep.name, err)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun … -m nft.core.cli -- purify --run …` keeps --run from torchrun
        argv = argv[1:]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .distributed import init_from_env

    try:
        init_from_env()  # joins the process group when started by torchrun
        return args.func(args)
    except NFTError as err:
        print(f"nft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
