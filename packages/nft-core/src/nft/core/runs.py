"""Attack run folders: made in one place, read back in one place.

``nft attack``, ``nft bench`` and Python users all make a backdoored model through
:func:`make_attack_run`, so every run folder has the same ``config.json`` (the resolved spec),
``report.json`` and ``report.md``; ``nft purify`` / ``nft evaluate`` / the bench read any run
(an attack run, or a purification run pointing at its source) through :func:`load_run`.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import config_to_dict
from .errors import ConfigError
from .io import RunFolder, load_model_weights, read_json
from .modality import AttackSpec, Experiment, Modality
from .registry import load_modality

__all__ = ["attack_markdown", "defense_config", "load_run", "make_attack_run"]


def attack_markdown(spec: AttackSpec, metrics: dict, seconds: float) -> str:
    primary = [k for k in metrics if k not in ("asr", "ra")]
    keys = primary + [k for k in ("asr", "ra") if k in metrics]
    return "\n".join([
        f"# Backdoored model: {spec.attack} on {spec.dataset} / {spec.model}", "",
        f"Poison rate {spec.poison_rate}, target {spec.target}, {spec.mode}, {spec.epochs} epochs, "
        f"seed {spec.seed}; training took {seconds:.0f} s.", "",
        "| " + " | ".join(f"{k.upper()} (%)" for k in keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(f"{100 * metrics[k]:.2f}" for k in keys) + " |", "",
    ])


def make_attack_run(modality: Modality, spec: AttackSpec, out: str | Path, *, overwrite: bool = False,
                    discard: bool = False) -> tuple[dict, float]:
    """Train the backdoored model ``spec`` describes into the run folder ``out`` (all or nothing).

    ``spec`` is resolved against the modality's defaults first. Returns ``(metrics, seconds)``.
    """
    spec = modality.resolve(spec)
    start = time.perf_counter()
    with RunFolder(out, overwrite=overwrite, discard=discard) as run:
        # written first: a modality may read its own spec back while training
        run.write_json("config.json", {"kind": "attack", "modality": modality.name,
                                       "spec": config_to_dict(spec)})
        metrics = modality.train_backdoor(spec, run)
        seconds = time.perf_counter() - start
        run.write_json("report.json", {**metrics, "seconds": seconds, "attack": spec.attack,
                                       "model": spec.model, "dataset": spec.dataset})
        run.write_text("report.md", attack_markdown(spec, metrics, seconds))
    return metrics, seconds


def load_run(run_dir: str | Path, *, device: str | None = None) -> tuple[Modality, Experiment, dict]:
    """The modality, experiment and attack config of a run folder.

    For a purification run the experiment is rebuilt from its source attack run and the purified
    weights are loaded into the model.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} is not a run folder made by `nft attack` or `nft purify` (no config.json)")
    config = read_json(run_dir / "config.json")
    source = run_dir
    if config.get("kind") == "purify":
        source = Path(config["source"])
        config = read_json(source / "config.json")
    if config.get("kind") != "attack":
        raise ConfigError(f"{run_dir} is not an nft run folder (config.json has no kind)")
    modality = load_modality(config["modality"])
    experiment = modality.load_experiment(source, device=device)
    if source != run_dir:  # a purified model: same architecture, its own weights
        load_model_weights(experiment.model, run_dir / "model.safetensors")
    return modality, experiment, config


def defense_config(method: str, experiment: Experiment, overrides: dict | None = None):
    """The configuration ``method`` runs with on ``experiment``.

    Layers, later winning: the defense's registered defaults; for the NFT family, the modality's
    mask targets and recommended settings (``Experiment.mask_config`` / ``nft_overrides``); the
    user's ``overrides`` (a plain dict of config fields, nested for ``masks``). ``nft-reference``
    takes the modality's mask placement but not its recommended settings: it is the reference
    code's recipe, exactly.
    """
    from .config import config_from_dict
    from .defenses import DEFENSES
    from .purify import PurifyConfig

    defaults = DEFENSES.get(method)(None).config
    values = config_to_dict(defaults)
    if isinstance(defaults, PurifyConfig):
        if experiment.mask_config is not None:
            values["masks"] = config_to_dict(experiment.mask_config)
        if method != "nft-reference":
            values.update(experiment.nft_overrides)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return config_from_dict(type(defaults), values)
