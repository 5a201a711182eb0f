"""``nft bench --executor ray``: the grid's rows as Ray tasks.

Each backdoored model is one task (trained unless the cache has it); each row is one task that
waits for its model. Rows are written to the same ``rows.jsonl`` as the local executor, by the
driver, as soon as each finishes — so a killed grid resumes the same way. The results folder
must be on a filesystem every node sees (a local cluster, or a shared mount).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from .bench import BenchConfig, BenchRow, append_row, grid_records, write_results
from .errors import ConfigError

__all__ = ["run_rows_on_ray"]

log = logging.getLogger(__name__)


def _model_task(modality_name: str, row: dict, models_dir: str, device: str | None) -> str:
    from .bench import ensure_model
    from .registry import load_modality

    modality = load_modality(modality_name)
    return str(ensure_model(modality, BenchRow(**row), Path(models_dir), device=device, progress=False))


def _row_task(modality_name: str, row: dict, run_dir: str, device: str | None) -> dict:
    from .bench import run_row
    from .registry import load_modality

    modality = load_modality(modality_name)
    return run_row(modality, BenchRow(**row), Path(run_dir), device=device, progress=False)


def run_rows_on_ray(config: BenchConfig, rows: list[BenchRow], out: Path, *, address: str | None,
                    progress: bool, keys: set[str], gpus_per_task: float | None = None) -> None:
    """Run ``rows`` as Ray tasks; the tables are rebuilt from the finished rows whose key is in ``keys``
    (the whole grid's) after each one."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'nft-core[ray]'") from None
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    if gpus_per_task is None:
        gpus_per_task = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    model_task = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(_model_task)
    row_task = ray.remote(num_cpus=1, num_gpus=gpus_per_task)(_row_task)
    models: dict[str, object] = {}
    pending = {}
    for row in rows:
        if row.model_key not in models:
            models[row.model_key] = model_task.remote(config.modality, asdict(row), str(out / "models"),
                                                      config.device)
        ref = row_task.remote(config.modality, asdict(row), models[row.model_key], config.device)
        pending[ref] = row
    with tqdm(total=len(pending), desc=f"bench {config.name} (ray)", unit="row", disable=not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                append_row(out / "rows.jsonl", ray.get(ref))
                write_results(out, grid_records(out, keys), config)
                bar.update(1)
