"""Plots of a purification run: metrics before / after, and the learned mask values per layer.

matplotlib is optional (``pip install nft-core[plots]``); without it no plot is drawn and a
log line says so.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch

from .io import atomic_write_bytes

__all__ = ["save_bench_plots", "save_report_plots"]

log = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plots drawn (pip install nft-core[plots])")
        return None
    return plt


def save_bench_plots(directory: Path, records: list[dict], labels: list[str]) -> list[Path]:
    """ASR vs clean metric after each defense (one colour per defense), and runtime per defense."""
    plt = _pyplot()
    if plt is None or not records:
        return []
    metric = records[0].get("primary_metric", "acc")
    order = list(dict.fromkeys(labels))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in order:
        rs = [r for r, lab in zip(records, labels) if lab == name]
        ax.scatter([100 * r["after"][metric] for r in rs], [100 * r["after"]["asr"] for r in rs],
                   label=name, s=18, alpha=0.8)
    ax.set_xlabel(f"{metric.upper()} after (%)")
    ax.set_ylabel("ASR after (%)")
    ax.set_title("each row: one (attack, seed, budget)")
    ax.legend(fontsize=7, ncol=2)
    written = [_save(fig, directory / "asr_vs_acc.png")]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(order)), 3.2))
    means = [sum(r["seconds"] for r, lab in zip(records, labels) if lab == name)
             / max(1, sum(lab == name for lab in labels)) for name in order]
    ax.bar(range(len(order)), means)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_ylabel("mean purification time (s)")
    written.append(_save(fig, directory / "runtime.png"))
    plt.close(fig)
    return written


def save_report_plots(directory: Path, report: dict, masks: dict[str, torch.Tensor]) -> list[Path]:
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    before, after = report["before"], report["after"]
    keys = [k for k in before if k in after]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [100 * before[k] for k in keys], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [100 * after[k] for k in keys], 0.4, label="after")
    ax.set_xticks(list(xs), [k.upper() for k in keys])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(f"{report.get('method')}: {report.get('seconds', 0):.0f} s")
    ax.legend()
    written.append(_save(fig, directory / "metrics.png"))
    plt.close(fig)
    if masks:
        names = list(masks)
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names)), 3.5))
        values = [masks[n].detach().float().flatten().cpu().numpy() for n in names]
        ax.boxplot(values, showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(names) + 1), [str(i) for i in range(1, len(names) + 1)])
        ax.set_xlabel("masked layer (depth order)")
        ax.set_ylabel("mask value")
        ax.set_title("learned masks per layer")
        written.append(_save(fig, directory / "masks.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return path
