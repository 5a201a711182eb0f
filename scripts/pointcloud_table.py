"""Measure NFT on backdoored point-cloud classifiers; print the markdown table of docs/pointcloud.md.

For each model and attack: train a backdoored model on the embedded ``shapes`` set (the same
code path as ``nft attack --modality pointcloud``), train a clean model of the same kind for
reference, then purify with NFT from ``--per-class`` clean samples per class of the defender's
pool (never poisoned, never trained on) and evaluate on the clean and triggered test sets.

Trained runs are cached in ``--work`` (one run folder per model and attack), so the purification
settings can be re-measured without retraining:

    python scripts/pointcloud_table.py --work runs/pointcloud-table
    python scripts/pointcloud_table.py --work runs/pointcloud-table --stage train --models dgcnn

Runs on CPU with one thread per process; the full table takes about an hour on a busy 2-core
machine (DGCNN dominates).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from nft.core import AttackSpec, PurifyConfig, RunFolder, TrainConfig, purify, select_clean_subset, train_model
from nft.core.io import read_json, write_json
from nft.pointcloud import POINT_MIXES, evaluate_pointcloud, modality
from nft.pointcloud.data import PointCloudDataset
from nft.pointcloud.modality import PointCloudTask, build_model

ATTACKS = ("pointba-i", "pointba-o", "pcba", "irba")
MODEL_ARGS = {"pointnet": {"width": 16}, "dgcnn": {"width": 8, "k": 8}, "pointnet2": {"width": 16}}
NFT = {"steps": 300, "rounds": 5, "batch_size": 64, "lr": 0.05, "reg_weight": 0.02}  # configs/pointcloud/nft.yaml


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


def purify_run(run_dir: Path, args) -> dict:
    key = f"{args.mix}-{args.per_class}-{args.steps}-{args.nft_batch}-{args.lr}-{args.reg}"
    path = run_dir / f"nft-{key}.json"
    if path.is_file():
        return read_json(path)
    exp = modality.load_experiment(run_dir)
    before = exp.evaluate(exp.model)
    clean = select_clean_subset(exp.defender_pool, per_class=args.per_class, labels=exp.pool_labels,
                                seed=args.seed)
    config = PurifyConfig(steps=args.steps, rounds=NFT["rounds"], batch_size=args.nft_batch, lr=args.lr,
                          reg_weight=args.reg, masks=exp.mask_config, seed=args.seed, progress=False)
    result = purify(exp.model, clean, config, task=exp.task, augmentation=POINT_MIXES[args.mix]())
    after = exp.evaluate(result.model)
    out = {"before": before, "after": after, "seconds": result.seconds, "clean": len(clean),
           "config": config.to_dict(), "mix": args.mix}
    write_json(path, out)
    logging.info("purified %s: %s -> %s", run_dir.name, before, after)
    return out


def table(args) -> str:
    lines = [
        f"| model | attack | clean model OA | backdoored OA / ASR | after NFT OA / ASR | ΔOA | NFT time |",
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
    p.add_argument("--mix", default="pointmix", choices=sorted(POINT_MIXES))
    p.add_argument("--steps", type=int, default=NFT["steps"])
    p.add_argument("--nft-batch", type=int, default=NFT["batch_size"])
    p.add_argument("--lr", type=float, default=NFT["lr"])
    p.add_argument("--reg", type=float, default=NFT["reg_weight"], help="mask regulariser weight (core default 0.001)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-clean", action="store_true", help="train only the backdoored models (parallel runs)")
    p.add_argument("--out", type=Path, help="also write the table here")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
