"""``purify()``: the one call that runs any registered defense on any model."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from .augment import Augmentation
from .config import DefenseConfig
from .defenses import Defense, DefenseContext, InputSpace, get_defense
from .errors import ConfigError, DataError, NonFiniteLossError
from .guard import check_clean_set, clean_set_score, collapsed
from .purify import PurifyResult
from .tasks import Task

__all__ = ["purify"]

log = logging.getLogger(__name__)


def purify(
    model: nn.Module,
    clean_dataset: Dataset,
    config: DefenseConfig | None = None,
    *,
    method: str | Defense = "nft",
    task: Task | None = None,
    augmentation: Augmentation | None = None,
    input_space: InputSpace | None = None,
    callbacks: Sequence[Any] = (),
    collate_fn: Callable[[list], Any] | None = None,
    inplace: bool = False,
) -> PurifyResult:
    """Remove a backdoor from ``model`` using ``clean_dataset``; NFT by default.

    Args:
        model: any ``nn.Module``; it is copied first unless ``inplace``.
        clean_dataset: a map-style dataset of ``(input, label)`` (or ``(input, target)`` for
            other tasks) — the defender's small clean set.
        config: the defense's configuration (:class:`~nft.core.PurifyConfig` for the NFT
            family); ``None`` uses the method's registered defaults.
        method: a registered defense name (``nft``, ``nft-reference``, ``ft``, …) or a
            :class:`~nft.core.defenses.Defense`.
        task / augmentation: replace classification and tensor MixUp for other modalities.
        input_space: where input-space perturbations live (needed by I-BAU, AWM, SAU).

    Returns:
        a :class:`~nft.core.PurifyResult`: ``.model`` (same class as ``model``), ``.masks``,
        ``.seconds`` and the run's history. ``.info["clean_set"]`` holds the task's score on
        the clean set before and after (when the task has ``score``); a fall of more than 20
        points raises a :class:`~nft.core.guard.PurificationWarning`. A defense that has a
        gentler setting (NFT: half the learning rate, ``collapse_retries`` times) is first run
        again from the original model when that happens or when its loss becomes NaN;
        ``.info["retries"]`` lists the collapsed attempts and ``.seconds`` includes them.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"purify needs a torch.nn.Module, got {type(model).__name__}")
    if len(clean_dataset) == 0:
        raise DataError("the clean dataset is empty; NFT needs at least one sample per class")
    defense = get_defense(method, config)
    context = DefenseContext(
        task=task or DefenseContext().task, augmentation=augmentation, input_space=input_space,
        callbacks=callbacks, collate_fn=collate_fn,
    )
    defense.check(context)
    work = model if inplace else copy.deepcopy(model)
    score_before = clean_set_score(work, clean_dataset, context.task, collate_fn=collate_fn)
    # a defense that can run again more gently after a collapse needs an untouched start for it
    spare = copy.deepcopy(work) if defense.gentler() is not None else None
    retries: list[dict] = []
    start = time.perf_counter()
    while True:
        try:
            outcome, failure = defense.run(work, clean_dataset, context), None
        except NonFiniteLossError as err:
            outcome, failure = None, err
        score_after = None if outcome is None else clean_set_score(
            outcome.model, clean_dataset, context.task, collate_fn=collate_fn)
        gentler = defense.gentler() if failure or collapsed(score_before, score_after) else None
        if gentler is None:
            break
        retries.append(_retry_record(defense, score_before, score_after, failure))
        log.warning("%s collapsed (%s); running it again from the original model with %s",
                    defense.name, retries[-1]["reason"], _settings(gentler))
        defense, work = gentler, copy.deepcopy(spare)
    if failure is not None:
        raise failure
    seconds = time.perf_counter() - start
    check = check_clean_set(score_before, score_after, method=defense.name,
                            dataset_size=len(clean_dataset))
    info = {**outcome.info, **({"clean_set": check} if check else {}), **({"retries": retries} if retries else {})}
    return PurifyResult(
        model=outcome.model, masks=outcome.masks, method=defense.name, config=defense.config,
        seconds=seconds, clean_samples=len(clean_dataset), history=outcome.history, info=info,
    )


def _settings(defense: Defense) -> str:
    """The learning rates a retry runs at, for the log."""
    config = defense.config
    return ", ".join(f"{k}={getattr(config, k):g}" for k in ("lr", "lr_min") if hasattr(config, k))


def _retry_record(defense: Defense, before: float | None, after: float | None,
                  failure: Exception | None) -> dict:
    """What ``info["retries"]`` keeps of one collapsed attempt."""
    config = defense.config
    record = {k: getattr(config, k) for k in ("lr", "lr_min") if hasattr(config, k)}
    if failure is not None:
        return {**record, "reason": "the loss became NaN"}
    return {**record, "clean_set_after": after,
            "reason": f"clean-set score {100 * before:.1f} % -> {100 * after:.1f} %"}
