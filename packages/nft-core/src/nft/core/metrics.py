"""ACC, ASR, RA and DER, and the classification evaluator.

* ACC: accuracy on the clean test set.
* ASR: share of triggered test inputs (true label ≠ target) predicted as the attack's target.
* RA (robust accuracy): share of those triggered inputs still given their true label.
* DER (defense effectiveness rating, BackdoorBench):
  ``(max(0, ASR_before − ASR_after) − max(0, ACC_before − ACC_after) + 1) / 2``.

All metrics are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import collate, move_to
from .tasks import ClassificationTask, Task

__all__ = ["defense_effectiveness_rating", "evaluate_classification", "report_markdown"]


def defense_effectiveness_rating(before: dict, after: dict, acc_key: str = "acc") -> float:
    drop_asr = max(0.0, before["asr"] - after["asr"])
    drop_acc = max(0.0, before[acc_key] - after[acc_key])
    return (drop_asr - drop_acc + 1.0) / 2.0


def _loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """This rank's disjoint share of ``dataset`` (all of it in a single process), in order."""
    from torch.utils.data import Subset

    from .distributed import current, shard

    if current().distributed:
        dataset = Subset(dataset, shard(len(dataset)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate)


@torch.no_grad()
def evaluate_classification(
    model: nn.Module,
    clean: Dataset,
    triggered: Dataset | None = None,
    *,
    task: Task | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """``{"acc", "asr", "ra"}`` of a classifier (``asr`` / ``ra`` only with a triggered set).

    ``triggered`` yields ``(input, true label, target label)`` (a
    :class:`~nft.core.attacks.TriggeredDataset`). The model is evaluated in eval mode and its
    mode is restored afterwards. Under ``torchrun`` each rank scores a disjoint share and the
    counts are summed, so every rank returns exactly the single-process numbers.
    """
    from tqdm.auto import tqdm

    from .distributed import all_reduce_sum, rank_device
    from .purify import resolve_device

    task = task or ClassificationTask()
    device = rank_device(resolve_device(device) if not isinstance(device, torch.device) else device)
    was_training = model.training
    model.eval()
    original_device = next(iter(model.parameters()), torch.empty(0)).device
    model.to(device)
    try:
        out: dict[str, float] = {}
        correct = total = 0
        for inputs, labels in tqdm(_loader(clean, batch_size, num_workers), desc="eval clean",
                                   disable=not progress, leave=False):
            pred = task.predict(task.forward(model, move_to(inputs, device))).cpu()
            correct += int((pred == labels).sum())
            total += len(labels)
        correct, total = all_reduce_sum([correct, total], device)
        out["acc"] = correct / max(1, total)
        if triggered is not None:
            hits = robust = total = 0
            for inputs, labels, targets in tqdm(_loader(triggered, batch_size, num_workers),
                                                desc="eval triggered", disable=not progress,
                                                leave=False):
                pred = task.predict(task.forward(model, move_to(inputs, device))).cpu()
                hits += int((pred == targets).sum())
                robust += int((pred == labels).sum())
                total += len(labels)
            hits, robust, total = all_reduce_sum([hits, robust, total], device)
            out["asr"] = hits / max(1, total)
            out["ra"] = robust / max(1, total)
        return out
    finally:
        model.to(original_device)
        model.train(was_training)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{100 * value:.2f}"
    return str(value)


def report_markdown(report: dict, *, title: str = "Purification report",
                    metric_names: Callable[[str], str] | None = None) -> str:
    """A Markdown rendering of a purification ``report.json``."""
    name = metric_names or (lambda k: k.upper())
    before, after = report.get("before", {}), report.get("after", {})
    keys = [k for k in before if k in after]
    lines = [f"# {title}", "", f"Method: `{report.get('method')}`  ",
             f"Clean samples: {report.get('clean_samples')}  ",
             f"Purification time: {report.get('seconds', 0):.1f} s", "",
             "| | " + " | ".join(f"{name(k)} (%)" for k in keys) + " |",
             "|---|" + "---|" * len(keys),
             "| before | " + " | ".join(_fmt(before[k]) for k in keys) + " |",
             "| after | " + " | ".join(_fmt(after[k]) for k in keys) + " |"]
    if "der" in report:
        lines += ["", f"DER: {100 * report['der']:.2f}%"]
    if report.get("clean_set"):  # nft.core.guard: the defender's own data, no attack data
        check = report["clean_set"]
        lines += [f"Clean-set score ({check['samples']} samples): {_fmt(check['before'])} % before, "
                  f"{_fmt(check['after'])} % after"]
    lines += _searches_markdown(report.get("history") or [])
    return "\n".join(lines) + "\n"


def _searches_markdown(history: list[dict]) -> list[str]:
    """What NFT's trigger-agnostic searches kept, from the last history entry: each search logs
    its kept items as a list (``adv_patches``, ``adv_waves``, …) and the median candidate's score
    under the same stem ending in ``_typical`` (``adv_patch_typical``; :mod:`nft.core.adversary`).
    A kept patch, grating, composite or cluster is where the backdoored model answered a small
    change far more strongly than usual, so it tells a user where a trigger may be; an empty list
    means nothing stood out."""
    last = history[-1] if history else {}
    lines = []
    for typical_key in (k for k in last if k.startswith("adv_") and k.endswith("_typical")):
        stem = typical_key[: -len("_typical")]
        kept_key = next((k for k in last if k.startswith(stem) and isinstance(last[k], list)), None)
        if kept_key is None:
            continue
        kept = last[kept_key]
        found = ", ".join(str(item) for item in kept) if kept else "none stood out"
        lines.append(f"- `{kept_key}` ({len(kept)} kept; median candidate {last[typical_key]}): {found}")
    if lines:
        lines = ["", "Searched on the first clean batch (each item ends with its score; "
                     "the search's `summary()` names the fields):", ""] + lines
    return lines
