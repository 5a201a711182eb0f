"""Measure NFT on backdoored point-cloud classifiers; print the markdown table of docs/pointcloud.md.

For each model and attack: train a backdoored model on the embedded ``shapes`` set (the same
code path as ``nft attack --modality pointcloud``), train a clean model of the same kind for
reference, then purify with NFT from ``--per-class`` clean samples per class of the defender's
pool (never poisoned, never trained on) and evaluate on the clean and triggered test sets.
NFT runs as ``nft purify --config configs/pointcloud/nft.yaml`` runs it (the modality's
settings, then that file's); single settings can be overridden for a study.

Trained runs are cached in ``--work`` (one run folder per model and attack), and every
purification in the run folder under a hash of its settings, so settings can be re-measured
without retraining:

    python scripts/pointcloud_table.py --work runs/pointcloud-table-v2 --models pointnet \\
        --write docs/pointcloud.md
    python scripts/pointcloud_table.py --work runs/pointcloud-table-v2 --models pointnet --stage purify \\
        --mix pointmix-patterns --distill 1 --seed 1

Runs on CPU with one thread per process: on an idle core, a PointNet model trains in about 10 s
and NFT takes about 20 s; DGCNN is far slower.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml
from nft.core import AttackSpec, RunFolder, TrainConfig, purify, select_clean_subset, train_model
from nft.core.cli import parse_assignments
from nft.core.io import read_json, replace_marked_block, write_json
from nft.core.runs import defense_config
from nft.pointcloud import POINT_MIXES, RandomPointPatterns, evaluate_pointcloud, modality
from nft.pointcloud.data import PointCloudDataset
from nft.pointcloud.modality import PointCloudTask, build_model

START, END = "<!-- pointcloud-table:start -->", "<!-- pointcloud-table:end -->"
NFT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pointcloud" / "nft.yaml"
ATTACKS = ("pointba-i", "pointba-o", "pcba", "irba")
MODEL_ARGS = {"pointnet": {"width": 16}, "dgcnn": {"width": 8, "k": 8}, "pointnet2": {"width": 16}}


def spec_for(model: str, attack: str, args) -> AttackSpec:
    return modality.resolve(AttackSpec(
        model=model, attack=attack, epochs=args.epochs, train_limit=args.train, test_limit=args.test,
        holdout=args.holdout, seed=args.seed, progress=False, model_args=dict(MODEL_ARGS.get(model, {}))))


def train_attack(model: str, attack: str, args) -> Path:
    out = args.work / f"{model}-{attack}"
    if (out / "report.json").is_file():
        return out
    spec = spec_for(model, attack, args)
    start = time.perf_counter()
    with RunFolder(out, overwrite=True) as run:
        metrics = modality.train_backdoor(spec, run)
        run.write_json("config.json", {"kind": "attack", "modality": "pointcloud", "spec": spec.to_dict()})
        run.write_json("report.json", {**metrics, "seconds": time.perf_counter() - start})
    logging.info("trained %s / %s: %s", model, attack, metrics)
    return out


def train_clean(model: str, args) -> dict:
    path = args.work / f"{model}-clean.json"
    if path.is_file():
        return read_json(path)
    spec = spec_for(model, ATTACKS[0], args)
    train, test, _, train_idx = modality._data(spec)
    torch.manual_seed(spec.seed)
    net = build_model(model, len(train.classes), spec.model_args)
    train_model(net, PointCloudDataset(train.points[train_idx], train.targets[train_idx], train.classes),
                TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                            progress=False), task=PointCloudTask())
    metrics = evaluate_pointcloud(net, test)
    write_json(path, metrics)
    logging.info("trained clean %s: %s", model, metrics)
    return metrics


def nft_settings(args) -> tuple[dict, dict]:
    """NFT settings over the modality's: configs/pointcloud/nft.yaml's ``defense`` section, then
    the command line's; and the command line's options of the perturbations."""
    config = dict(yaml.safe_load(NFT_CONFIG.read_text()).get("defense") or {})
    config.update({key: getattr(args, attr) for key, attr in (
        ("steps", "steps"), ("batch_size", "nft_batch"), ("lr", "lr"), ("lr_min", "lr_min"),
        ("reg_weight", "reg"), ("distill_weight", "distill")) if getattr(args, attr) is not None})
    config.update(parse_assignments(args.set, "--set"))
    augment = {key: getattr(args, key) for key in ("cluster_prob", "rotate_prob", "warp_prob", "max_angle",
                                                   "max_warp") if getattr(args, key) is not None}
    return config, augment


def make_augmentation(exp, args, augment: dict):
    """``--mix`` by name, or the modality's own augmentation; the perturbation options apply when
    that is a ``RandomPointPatterns``."""
    chosen = POINT_MIXES[args.mix]() if args.mix else exp.augmentation
    if not augment:
        return chosen
    if not isinstance(chosen, RandomPointPatterns):
        raise SystemExit(f"{chosen!r} takes no perturbation options")
    current = {k: getattr(chosen, k) for k in ("cluster_prob", "rotate_prob", "warp_prob", "max_angle", "max_warp")}
    return RandomPointPatterns(chosen.base, **{**current, **augment})


def purify_run(run_dir: Path, args) -> dict:
    """NFT as ``nft purify`` runs it (the modality's settings), with the command line's overrides."""
    overrides, augment = nft_settings(args)
    exp = modality.load_experiment(run_dir)
    augmentation = make_augmentation(exp, args, augment)
    config = defense_config("nft", exp, {**overrides, "seed": args.seed, "progress": False})
    key = hashlib.sha1(json.dumps([config.to_dict(), repr(augmentation), args.per_class],
                                  sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = run_dir / f"nft-{key}.json"
    if path.is_file():
        return read_json(path)
    before = exp.evaluate(exp.model)
    clean = select_clean_subset(exp.defender_pool, per_class=args.per_class, labels=exp.pool_labels,
                                seed=args.seed)
    result = purify(exp.model, clean, config, task=exp.task, augmentation=augmentation,
                    input_space=exp.input_space)
    after = exp.evaluate(result.model)
    out = {"before": before, "after": after, "seconds": result.seconds, "clean": len(clean),
           "config": config.to_dict(), "augmentation": repr(augmentation), "overrides": {**overrides, **augment}}
    write_json(path, out)
    logging.info("purified %s (%s): %s -> %s in %.0f s", run_dir.name, {**overrides, **augment} or "defaults",
                 before, after, result.seconds)
    return out


def table(args) -> str:
    lines = [
        "| model | attack | clean model OA | backdoored OA / ASR | after NFT OA / ASR | ΔOA | NFT time |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        clean = train_clean(model, args) if args.stage in ("all", "train") else read_json(args.work / f"{model}-clean.json")
        for attack in args.attacks:
            run = args.work / f"{model}-{attack}"
            res = purify_run(run, args)
            b, a = res["before"], res["after"]
            lines.append(
                f"| {model} | {attack} | {100 * clean['acc']:.1f} | {100 * b['acc']:.1f} / {100 * b['asr']:.1f} | "
                f"{100 * a['acc']:.1f} / {100 * a['asr']:.1f} | {100 * (a['acc'] - b['acc']):+.1f} | "
                f"{res['seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/pointcloud-table"))
    p.add_argument("--stage", choices=("all", "train", "purify"), default="all")
    p.add_argument("--models", nargs="+", default=["pointnet", "dgcnn"])
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train", type=int, default=1000, help="training clouds (besides the defender's pool)")
    p.add_argument("--test", type=int, default=600)
    p.add_argument("--holdout", type=int, default=300, help="the defender's clean pool")
    p.add_argument("--per-class", type=int, default=5)
    p.add_argument("--mix", choices=sorted(POINT_MIXES),
                   help="a plain mixing instead of the modality's augmentation (default: the modality's)")
    nft = p.add_argument_group("NFT overrides (default: the modality's settings, as `nft purify`)")
    nft.add_argument("--steps", type=int)
    nft.add_argument("--nft-batch", type=int)
    nft.add_argument("--lr", type=float)
    nft.add_argument("--lr-min", type=float)
    nft.add_argument("--reg", type=float, help="mask regulariser weight")
    nft.add_argument("--distill", type=float, help="clean-view distillation weight (0: off)")
    nft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any other NFT setting, e.g. norm_stats=update (repeatable)")
    for name in ("cluster-prob", "rotate-prob", "warp-prob", "max-angle", "max-warp"):
        nft.add_argument(f"--{name}", type=float, help="RandomPointPatterns option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-clean", action="store_true", help="train only the backdoored models (parallel runs)")
    p.add_argument("--out", type=Path, help="also write the table here")
    p.add_argument("--write", type=Path, metavar="GUIDE",
                   help="replace the table between the pointcloud-table markers of this Markdown file "
                        "(docs/pointcloud.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "train"):
        for model in args.models:
            if not args.no_clean:
                train_clean(model, args)
            for attack in args.attacks:
                train_attack(model, attack, args)
        if args.stage == "train":
            return 0
    text = table(args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.write:
        replace_marked_block(args.write, START, END, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
