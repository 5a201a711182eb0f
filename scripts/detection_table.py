"""Measure NFT on backdoored detectors (canvas data) and print the markdown results table.

For each model and attack it runs exactly what a user runs —

    nft attack --modality detection --model M --attack A --out RUNS/M/A
    nft purify --run RUNS/M/A --out RUNS/M/A-nft --steps S --clean-per-class K --set batch_size=B ...

— plus one clean detector per model (same data, same training, nothing poisoned) as the mAP
reference. Beside each ASR the table gives the same detector's ASR on the same test canvases
without the trigger (its floor: a weakened detector misses objects with no trigger at all).
Finished runs are reused, so the script can be stopped and restarted, and several
copies can work on different attacks at once (``--attacks``). ``--table-only`` prints the table
from the runs that exist.

    python scripts/detection_table.py --runs runs/detection            # SSDLite, every attack
    python scripts/detection_table.py --runs runs/detection --nft-lr 0.2 --mask-conv --tag nft-conv
    python scripts/detection_table.py --runs runs/detection --models mmdet --attacks baddet-gma

The defaults are the recipe of the SSDLite table in docs/detection.md: 3,000 training canvases,
a clean detector trained 20 epochs, each backdoored detector fine-tuned from it for 15 epochs at
a 30 % poison rate (with 5 epochs at 15 % no backdoor took hold), NFT 150 steps of 16 images.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ATTACKS = ["clean-image", "baddet-oga", "baddet-rma", "baddet-gma", "baddet-oda"]
MODEL_NAMES = {"ssdlite": "SSDLite (MobileNetV3 ×0.5, 64 px)", "ssd-tiny": "SSD-tiny (4-stage CNN, 64 px)",
               "mmdet": "mmdet FCOS (ResNet-18, 64 px)"}


def _clean_path(args, model: str) -> Path:
    return Path(args.runs) / model / "clean" / "model.safetensors"


def _attack_flags(args, model: str) -> list[str]:
    # The backdoored detector is the clean detector fine-tuned on the poisoned training set
    # (detectors are trained from pretrained weights in practice; this also keeps CPU time low).
    flags = ["--modality", "detection", "--model", model, "--seed", str(args.seed),
             "--epochs", str(args.epochs), "--lr", str(args.ft_lr), "--no-progress",
             "--model-arg", f"init={_clean_path(args, model).resolve()}"]
    if args.size:
        flags += ["--model-arg", f"size={args.size}"]
    if args.train_limit:
        flags += ["--train-limit", str(args.train_limit)]
    if args.test_limit:
        flags += ["--test-limit", str(args.test_limit)]
    return flags


def run_attack(args, model: str, attack: str) -> Path:
    from nft.core.cli import main

    out = Path(args.runs) / model / attack
    if not (out / "report.json").is_file():
        logging.info("training %s / %s", model, attack)
        code = main(["attack", *_attack_flags(args, model), "--attack", attack,
                     "--poison-rate", str(args.poison_rate), "--out", str(out)])
        if code != 0:
            raise SystemExit(f"nft attack failed for {model}/{attack}")
    return out


def run_purify(args, model: str, attack: str) -> Path:
    from nft.core.cli import main

    source = Path(args.runs) / model / attack
    out = Path(args.runs) / model / f"{attack}-{args.tag}"
    if not (out / "report.json").is_file():
        logging.info("purifying %s / %s", model, attack)
        flags = ["purify", "--run", str(source), "--out", str(out), "--steps", str(args.steps),
                 "--clean-count", str(args.clean_count), "--seed", str(args.seed),
                 "--no-progress", "--no-plots", "--set", f"batch_size={args.nft_batch}",
                 "--set", f"rounds={args.rounds}", "--set", f"lr={args.nft_lr}",
                 "--set", f"norm_stats={args.norm_stats}"]
        if args.mask_conv:
            flags += ["--set", "masks.targets=[norm, conv]"]
        if main(flags) != 0:
            raise SystemExit(f"nft purify failed for {model}/{attack}")
    return out


RULES = "v2"
"""Version of the ASR rules the clean reference was scored with (re-scored when it changes)."""


def run_clean(args, model: str) -> dict:
    """The clean detector, trained from scratch on the clean training part (the defender's pool
    excluded); it is the mAP reference and the starting point of every backdoored detector."""
    from nft.core import AttackSpec, TrainConfig, load_model_weights, train_model
    from nft.core.io import save_tensors, write_json
    from nft.detection import DetectionTask, detection_collate, evaluate_detection, modality
    from nft.detection.attacks import TriggeredDetection
    from nft.detection.metrics import attack_success

    out = Path(args.runs) / model / "clean" / "metrics.json"
    if out.is_file():
        metrics = json.loads(out.read_text())
        if metrics.get("rules") == RULES:
            return metrics
    spec = AttackSpec(model=model, seed=args.seed, epochs=args.pretrain_epochs,
                      train_limit=args.train_limit, test_limit=args.test_limit, progress=False,
                      lr=args.mmdet_lr if model == "mmdet" else args.lr, poison_rate=args.poison_rate,
                      model_args={"size": args.size} if args.size else {})
    parts = modality.experiment_parts(spec)
    spec = parts["spec"]
    torch.manual_seed(spec.seed)
    detector = modality.build_model(spec, parts["num_classes"])
    seconds = None
    if _clean_path(args, model).is_file():
        load_model_weights(detector, _clean_path(args, model))
        seconds = json.loads(out.read_text()).get("seconds") if out.is_file() else None
    else:
        logging.info("training the clean %s", model)

        def report(epoch, m):
            if (epoch + 1) % 3 == 0 or epoch + 1 == spec.epochs:
                logging.info("clean %s epoch %d: %s", model, epoch + 1, evaluate_detection(m, parts["test"]))

        start = time.perf_counter()
        train_model(detector, parts["train"], TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size,
                                                          lr=spec.lr, seed=spec.seed, progress=False),
                    task=DetectionTask(), collate_fn=detection_collate, on_epoch_end=report)
        seconds = time.perf_counter() - start
        save_tensors(detector.state_dict(), _clean_path(args, model))
    metrics = {"rules": RULES, "seconds": seconds, **evaluate_detection(detector, parts["test"])}
    # the clean model's "ASR" on each attack's triggered set: how often the outcome happens anyway
    annotations = [parts["train"].dataset.annotations(int(i)) for i in parts["train"].indices]
    for attack in ATTACKS:
        a = modality.make_attack(spec.replace(attack=attack), parts["num_classes"])
        a.choose(annotations, spec.poison_rate, spec.seed)
        metrics[f"asr_{attack}"] = attack_success(detector, TriggeredDetection(parts["test"], a), a)["asr"]
    write_json(out, metrics)
    return metrics


def untriggered(run: Path, weights: Path) -> float:
    """ASR of the detector in ``weights`` on ``run``'s triggered test images *without* the
    trigger: how often the attack's outcome happens anyway. A defense that weakens the detector
    raises it (missed objects count as "disappeared"), so the trigger's own effect is the ASR
    above this floor. Cached next to the weights."""
    from nft.core import AttackSpec, load_model_weights
    from nft.detection import modality, untriggered_asr

    cache = weights.parent / "untriggered-asr.json"
    if cache.is_file() and (saved := json.loads(cache.read_text())).get("rules") == RULES:
        return saved["asr"]
    parts = modality.experiment_parts(AttackSpec.from_dict(json.loads((run / "config.json").read_text())["spec"]))
    detector = modality.build_model(parts["spec"], parts["num_classes"])
    load_model_weights(detector, weights)
    asr = untriggered_asr(detector, parts["test"], parts["attack"])
    cache.write_text(json.dumps({"rules": RULES, "asr": asr}) + "\n")
    return asr


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def table(args) -> str:
    lines = [
        "| model | attack | clean model mAP@0.5 | backdoored mAP@0.5 | backdoored mAP | backdoored ASR "
        "| ASR without trigger | NFT mAP@0.5 | NFT mAP | NFT ASR | NFT ASR without trigger | NFT time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        clean_file = Path(args.runs) / model / "clean" / "metrics.json"
        clean = json.loads(clean_file.read_text()) if clean_file.is_file() else {}
        for attack in args.attacks:
            run = Path(args.runs) / model / attack
            purified = Path(args.runs) / model / f"{attack}-{args.tag}"
            bd = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
            nft = json.loads((purified / "report.json").read_text()) if (purified / "report.json").is_file() else {}
            after = nft.get("after", {})
            if nft.get("before"):
                bd = {**bd, **nft["before"]}
            clean_cell = _pct(clean.get("map"))
            if clean.get(f"asr_{attack}") is not None:
                clean_cell += f" (ASR {_pct(clean[f'asr_{attack}'])})"
            bd_floor = untriggered(run, run / "model.safetensors") if bd else None
            cells = [MODEL_NAMES.get(model, model), attack, clean_cell, _pct(bd.get("map")),
                     _pct(bd.get("map_coco")), _pct(bd.get("asr")), _pct(bd_floor)]
            if nft:
                cells += [_pct(after.get("map")), _pct(after.get("map_coco")), _pct(after.get("asr")),
                          _pct(untriggered(run, purified / "model.safetensors")), f"{nft.get('seconds', 0):.0f}"]
            else:
                cells += ["–"] * 5
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/detection", help="folder for the run folders")
    parser.add_argument("--models", nargs="+", default=["ssdlite"], choices=sorted(MODEL_NAMES))
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="clean detector's epochs")
    parser.add_argument("--lr", type=float, default=0.05, help="clean detector's peak rate")
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs on the poisoned set")
    parser.add_argument("--ft-lr", type=float, default=0.02, help="fine-tuning peak rate")
    parser.add_argument("--size", type=int, default=None,
                        help="detector input size (canvases are 64 px; the detector resizes)")
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--poison-rate", type=float, default=0.3)
    parser.add_argument("--mmdet-lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150, help="NFT optimiser steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nft-batch", type=int, default=16)
    parser.add_argument("--nft-lr", type=float, default=0.05)
    parser.add_argument("--clean-count", type=int, default=100,
                        help="clean images the defender uses (from its held-out pool)")
    parser.add_argument("--norm-stats", default="freeze", choices=["freeze", "update"])
    parser.add_argument("--mask-conv", action="store_true", help="mask conv output channels too")
    parser.add_argument("--tag", default="nft", help="suffix of the purified run folders")
    parser.add_argument("--stage", default="all", choices=["all", "attack", "purify"])
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if not args.table_only:
        for model in args.models:
            run_clean(args, model)
            for attack in args.attacks:
                if args.stage in ("all", "attack"):
                    run_attack(args, model, attack)
                if args.stage in ("all", "purify"):
                    run_purify(args, model, attack)
    print(table(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
