"""Video results table: clean model, backdoored models and NFT on the embedded ``motion`` set.

For each model: train a clean model; train one backdoored model per attack (run folders in the
``nft attack`` format, so ``nft purify --run`` works on them too); purify each with NFT from
``--clean-per-class`` clean clips per class of the defender's pool; print a Markdown table.
Finished stages are reused, so the script can be stopped and rerun.

    python scripts/video_table.py --work runs/video-table --models r3d-18 \
        --attacks badnets blend clean-label --epochs 20 --train-limit 800

NFT options: ``--set key=value`` sets any ``PurifyConfig`` field (``steps=200``,
``batch_size=32``, ``lr=0.05`` …) over the modality's recommended settings; the modality's
augmentation and mask configuration are used as ``nft purify`` would.
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

from nft.core import AttackSpec, RunFolder, load_model_weights, purify, select_clean_subset
from nft.core.cli import parse_assignments
from nft.core.config import config_to_dict
from nft.core.io import write_json
from nft.core.runs import defense_config
from nft.video import evaluate_video, modality

log = logging.getLogger("video_table")


def spec_for(args, model: str, attack: str) -> AttackSpec:
    attack_args = {}
    poison_rate = args.poison_rate
    if attack == "clean-label":
        poison_rate = args.clean_label_rate
        attack_args = parse_assignments(args.clean_label_arg, "--clean-label-arg")
    return modality.resolve(AttackSpec(
        model=model, attack=attack, epochs=args.epochs, seed=args.seed, poison_rate=poison_rate,
        train_limit=args.train_limit, holdout=args.holdout, attack_args=attack_args,
        model_args=parse_assignments(args.model_arg, "--model-arg"), progress=not args.no_progress))


def clean_stage(args, model: str) -> tuple[torch.nn.Module, dict]:
    folder = args.work / model / "clean"
    spec = spec_for(args, model, "badnets")
    setup = modality.setup(spec)
    if (folder / "metrics.json").is_file():
        net = load_model_weights(setup.build_model(model), folder / "model.safetensors")
        return net, json.loads((folder / "metrics.json").read_text())
    start = time.perf_counter()
    net = modality.train_clean(spec, setup)
    seconds = time.perf_counter() - start
    metrics = {**evaluate_video(net, setup.test, clips_per_video=setup.geometry["clips_per_video"]),
               "seconds": seconds}
    with RunFolder(folder, overwrite=True) as run:
        run.save_model(net)
        run.write_json("metrics.json", metrics)
        run.write_json("spec.json", spec.to_dict())
    log.info("%s clean: %s", model, metrics)
    return net, metrics


def attack_stage(args, model: str, attack: str, clean_net) -> dict:
    folder = args.work / model / attack
    if (folder / "report.json").is_file():
        return json.loads((folder / "report.json").read_text())
    spec = spec_for(args, model, attack)
    start = time.perf_counter()
    with RunFolder(folder, overwrite=True) as run:
        metrics = modality.train_backdoor(spec, run, clean_model=clean_net)
        seconds = time.perf_counter() - start
        run.write_json("config.json", {"kind": "attack", "modality": "video", "spec": config_to_dict(spec)})
        report = {**metrics, "seconds": seconds, "attack": attack, "model": model, "dataset": spec.dataset}
        run.write_json("report.json", report)
    log.info("%s %s: %s", model, attack, report)
    return report


def purify_stage(args, model: str, attack: str, overrides: dict) -> dict:
    folder = args.work / model / attack
    experiment = modality.load_experiment(folder)
    # the modality's mask placement and recommended settings, then --set: as `nft purify` runs
    config = defense_config("nft", experiment, {**overrides, "seed": args.seed,
                                                "progress": not args.no_progress})
    settings = {k: v for k, v in config_to_dict(config).items() if k != "progress"}
    key = [settings, args.clean_per_class, args.core_augmentation]
    tag = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    result_file = folder / f"nft-{tag}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    clean = select_clean_subset(experiment.defender_pool, per_class=args.clean_per_class,
                                seed=args.seed, labels=experiment.pool_labels)
    augmentation = None if args.core_augmentation else experiment.augmentation  # None: the core's
    result = purify(experiment.model, clean, config, method="nft", task=experiment.task,
                    augmentation=augmentation, input_space=experiment.input_space)
    after = experiment.evaluate(result.model)
    out = {"after": after, "seconds": result.seconds, "clean_samples": len(clean),
           "config": config_to_dict(config), "overrides": overrides}
    write_json(result_file, out)
    log.info("%s %s NFT: %s", model, attack, out["after"])
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/video-table"), help="run folders go here")
    p.add_argument("--models", nargs="+", default=["r3d-18"])
    p.add_argument("--attacks", nargs="+", default=["badnets", "blend", "clean-label"])
    p.add_argument("--stage", choices=["attack", "purify", "all"], default="all")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=200)
    p.add_argument("--train-limit", type=int, default=800)
    p.add_argument("--poison-rate", type=float, default=0.1)
    p.add_argument("--clean-label-rate", type=float, default=0.5,
                   help="share of the target class poisoned by clean-label")
    p.add_argument("--clean-label-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE")
    p.add_argument("--clean-per-class", type=int, default=5)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="PurifyConfig field")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--core-augmentation", action="store_true",
                   help="the core's MixUp + random patterns (pattern_prob) instead of the modality's")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = parse_assignments(args.set, "--set")

    lines = ["| model | attack | clean model ACC | backdoor ACC | backdoor ASR | NFT ACC | NFT ASR | "
             "ACC drop (NFT) | ACC gap to clean (backdoor) | NFT time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        need_clean = args.stage != "attack" or "clean-label" in args.attacks
        clean_net, clean = clean_stage(args, model) if need_clean else (None, None)
        for attack in args.attacks:
            backdoor = attack_stage(args, model, attack, clean_net)
            if args.stage == "attack":
                continue
            nft = purify_stage(args, model, attack, overrides)
            after = nft["after"]
            lines.append(
                f"| {model} | {attack} | {pct(clean['acc'])} | {pct(backdoor['acc'])} | "
                f"{pct(backdoor['asr'])} | {pct(after['acc'])} | {pct(after['asr'])} | "
                f"{100 * (backdoor['acc'] - after['acc']):+.1f} | "
                f"{100 * (clean['acc'] - backdoor['acc']):+.1f} | {nft['seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    if args.stage != "attack":
        print(table)
        if args.out:
            args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
