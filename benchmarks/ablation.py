"""The ablation that chose the shipped ``nft`` defaults: NFT variants on the same backdoored runs.

Each variant is a list of changes to the ``nft`` preset joined by ``+``, for example
``preset=nft-no-patterns``, ``clamp=true``, ``reg_weight=0.01``, ``pattern_prob=0``,
``masks=norm,conv``. Every variant purifies every run from the same clean subset (10 images
per class by default, seed 0), and each row is appended to ``--out`` as one JSON line as soon as
it is measured, so an interrupted ablation keeps what it finished. ``--table`` turns such a file
into the Markdown table of ``benchmarks/results/ablation.md``.

    python benchmarks/ablation.py --runs RUN [RUN ...] --variants nft preset=nft-reference \\
        preset=nft-no-patterns clamp=true --out benchmarks/results/ablation.jsonl
    python benchmarks/ablation.py --table benchmarks/results/ablation.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from nft.core import MaskConfig, PurifyConfig, purify, select_clean_subset
from nft.core.config import config_from_dict
from nft.core.errors import ConfigError
from nft.core.runs import load_run


def variant_config(name: str, **common) -> PurifyConfig:
    """``nft`` changed by the ``key=value`` items of ``name`` (``nft`` alone: the preset)."""
    changes = [item for item in name.split("+") if item and item != "nft"]
    preset = "nft"
    fields = {f.name: f for f in dataclasses.fields(PurifyConfig)}
    values: dict = {}
    for item in changes:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"variant item {item!r} is not key=value")
        if key == "preset":
            preset = raw
        elif key == "masks":
            values["masks"] = MaskConfig(targets=tuple(raw.split(",")))
        elif key in fields:
            default = getattr(PurifyConfig(), key)
            boolean = isinstance(default, bool)
            values[key] = raw.lower() in ("1", "true", "yes") if boolean else type(default)(raw)
        else:
            raise ConfigError(f"variant item {item!r}: {key!r} is not a PurifyConfig field")
    return PurifyConfig.preset(preset, **{**common, **values})


def measure(runs: list[str], variants: list[str], out: Path, per_class: int, steps: int | None) -> None:
    for run in runs:
        _, experiment, config = load_run(run)
        spec = config["spec"]
        clean = select_clean_subset(experiment.defender_pool, per_class=per_class, seed=0,
                                    labels=experiment.pool_labels)
        before = experiment.evaluate(experiment.model)
        for variant in variants:
            # the modality's masks and recommended settings first, as `nft purify` does
            # (the reference preset takes the modality's mask placement but not its settings)
            overrides = {} if "preset=nft-reference" in variant else experiment.nft_overrides
            common = {"progress": False, **overrides, **({"steps": steps} if steps else {})}
            if isinstance(common.get("masks"), dict):  # a modality's recommended placement
                common["masks"] = config_from_dict(MaskConfig, common["masks"])
            if experiment.mask_config is not None and "masks" not in common:
                common["masks"] = experiment.mask_config
            purify_config = variant_config(variant, **common)
            result = purify(experiment.model, clean, purify_config, task=experiment.task,
                            augmentation=experiment.augmentation, input_space=experiment.input_space,
                            collate_fn=experiment.collate_fn)
            after = experiment.evaluate(result.model)
            row = {"attack": spec.get("attack"), "model": spec.get("model"), "dataset": spec.get("dataset"),
                   "variant": variant, "per_class": per_class, "steps": purify_config.steps,
                   "before": before, "after": after, "seconds": round(result.seconds, 1)}
            print(json.dumps(row), flush=True)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # the primary metric: ACC for classifiers, mIoU / mAP / BLEU for the other modalities
    metric = next((k for k in rows[0]["before"] if k not in ("asr", "ra")), "acc") if rows else "acc"
    lines = [f"| attack | model | variant | steps | {metric.upper()} before → after | ASR before → after |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['attack']} | {r['model']} | `{r['variant']}` | {r['steps']} | "
                     f"{b[metric]:.1%} → {a[metric]:.1%} | {b['asr']:.1%} → {a['asr']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="*", default=[], help="run folders made by `nft attack`")
    p.add_argument("--variants", nargs="*", default=["nft"])
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--steps", type=int, default=None, help="override every variant's steps")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation.jsonl"))
    p.add_argument("--table", type=Path, default=None, help="print the Markdown table of a results file")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table), end="")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    measure(args.runs, args.variants, args.out, args.per_class, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
