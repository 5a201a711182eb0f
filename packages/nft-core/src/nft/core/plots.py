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

__all__ = ["save_report_plots"]

log = logging.getLogger(__name__)


def save_report_plots(directory: Path, report: dict, masks: dict[str, torch.Tensor]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plots drawn (pip install nft-core[plots])")
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
