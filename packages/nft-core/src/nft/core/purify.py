"""The NFT purification loop: train per-channel masks on a small clean set, then fold them in.

One step (the reference code's ``NFT_Train``, generalised to any task):

1. draw a batch from the clean subset, with replacement;
2. mix it (:class:`~nft.core.augment.MixUp` by default);
3. loss = ``Σ w · task.loss(model(x̃), target)`` + :class:`~nft.core.objective.L1ToOne`;
4. an SGD step on the masks only, then :class:`~nft.core.objective.DepthDecayClamp`.

Everything random in step ``s`` is drawn from generators seeded by ``(seed, s)``, so a run is
bitwise reproducible on CPU and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .adversary import CompositeAdversary, GratingAdversary, PatchAdversary, UniversalAdversary
from .augment import Augmentation, CutMix, Mixed, MixUp, NoAugmentation, RandomPatterns, mixed_loss
from .config import DefenseConfig
from .data import SeededBatches, dataset_labels
from .distributed import average_gradients, rank_device, share_from_first_rank
from .errors import ConfigError, DataError, NonFiniteLossError
from .masking import MaskConfig, MaskedModel, inject_masks, iter_norm_modules
from .objective import CleanViewDistillation, DepthDecayClamp, L1ToOne, NoClamp
from .precision import PRECISIONS, autocast, grad_scaler, to_memory_format
from .tasks import ClassificationTask, Task

if TYPE_CHECKING:
    from .defenses.base import InputSpace

__all__ = [
    "Callback",
    "PurifyConfig",
    "PurifyResult",
    "Purifier",
    "resolve_device",
]

log = logging.getLogger(__name__)

NORM_STATS = ("update", "freeze")
SCHEDULES = ("round-cosine", "cosine", "constant")


@dataclass(frozen=True)
class PurifyConfig(DefenseConfig):
    """Every knob of the NFT loop. The defaults are the shipped ``nft`` method.

    The reference code's exact settings are the preset ``PurifyConfig.preset("nft-reference")``.
    """

    steps: int = 500
    """Total optimiser steps (the reference code's ``--nb-epochs``, 1000 there). 500 removed as
    much and kept 1–2 points more accuracy on converged Fashion-MNIST models (BadNets and Blend,
    benchmarks/results/ablation.md), in half the time."""
    rounds: int = 5
    """Outer rounds; the round-cosine schedule lowers the rate once per round, callbacks run
    after each round (the reference: 1000 steps = 5 rounds of 200)."""
    batch_size: int = 128
    """Clean samples per step, drawn with replacement."""
    lr: float = 0.1
    """Mask learning rate (the reference code's 0.05, kept by ``nft-reference``). With the
    distillation term holding clean accuracy, 0.1 → 0.05 removed more of a TrojanNN backdoor
    (26 % → 8 % ASR) at no cost in accuracy (benchmarks/results/ablation.md)."""
    momentum: float = 0.95
    weight_decay: float = 0.0
    lr_min: float = 0.05
    """Final rate of the cosine schedules (the reference's ``eta_min``, 0.02 there)."""
    schedule: str = "round-cosine"
    """``round-cosine`` (one cosine value per round, the reference), ``cosine`` (per step) or
    ``constant``."""
    mixup_alpha: float = 1.0
    """MixUp's λ ~ Beta(α, α); 0 turns mixing off (the ``nft-no-mixup`` ablation)."""
    cutmix_prob: float = 0.0
    """Probability, per step, that the batch is composited (CutMix boxes and strips, labels
    weighted by area; :class:`~nft.core.augment.CutMix`) instead of mixed by MixUp. Off by
    default: against the composite backdoor (CBA) it took ASR from 93.7 % only to 75.5 % at 3
    more points of accuracy (``benchmarks/results/ablation.md``)."""
    pattern_prob: float = 0.5
    """Probability, per sample and step, of a random noise box and (independently) of a random
    noise blend after mixing (:class:`~nft.core.augment.RandomPatterns`); 0 gives the paper's
    MixUp alone. Applies to inputs with two spatial dimensions (images, clips)."""
    pattern_max_patch: float = 0.3
    """Largest noise box side, as a fraction of the shorter spatial side."""
    pattern_max_alpha: float = 0.3
    """Largest blend ratio of the noise pattern."""
    adv_prob: float = 0.0
    """Share of each batch's samples that carry the universal adversarial pattern
    (:class:`~nft.core.adversary.UniversalAdversary`): one perturbation, moved up the loss's
    gradient at every step while the masks move down it, so the masks learn to ignore the
    change that most easily flips the model (a trigger, if the model has one). 0 turns it off
    (the default); ``nft-adv`` sets 0.5, with ``adv_eps=0.04`` and ``distill_weight=2``. It needs the modality's input space, or an
    augmentation that mixes inside the model and offers ``with_adversary(prob=, step=)``, which
    then takes its place (text: adversarial real words, ``nft.nlp.AdversarialToken``). On converged
    Fashion-MNIST models ``nft-adv`` removed backdoors NFT misses (SIG on half the target class
    27.4 → 3.0 % ASR, SIG 11.2 → 2.5 %, CLB 14.1 → 5.4 %, the demo's BadNets 8.0 → 2.0 %) at 2
    to 9 points of clean accuracy (benchmarks/results/ablation.md), so it is not the default."""
    adv_eps: float = 0.05
    """The pattern's size: root-mean-square change per input element, in raw units (pixels in
    [0, 1]); its L2 norm is at most ``adv_eps · √d`` for a d-element sample. 0.03 did not find
    a SIG trigger (amplitude 20/255, an RMS change of about 0.055); 0.1 cost 11 points of
    accuracy."""
    adv_step: float = 0.2
    """The pattern's step per optimiser step, as a share of its largest norm."""
    adv_stop: float = 1.0
    """Share of the steps, from the first, whose batches carry the pattern, the patches (or the
    text token); the rest let the masks win back clean accuracy without it."""
    adv_patch_prob: float = 0.0
    """Share of each batch's samples stamped with one of the adversarial patches
    (:class:`~nft.core.adversary.PatchAdversary`): before the first step, a search over box
    positions on one clean batch keeps the ``adv_patch_count`` small patches (side
    ``adv_patch_size`` of the shorter spatial side) that most raise the loss, where a patch
    trigger, if the model has one, sits; the masks then learn to answer those samples with their
    own labels. 0 turns it off (the core's default). The vision and video modalities set 0.5
    (their ``nft_overrides``): this took the demo's BadNets model from 8.0 to 1.7 % ASR,
    TrojanNN from 7.9 to 2.2 % and a video BadNets model from 85.5 to 0.9 % (docs/vision.md,
    docs/video.md). Needs the modality's input space and samples whose last two dimensions are
    spatial (images, clips)."""
    adv_patch_size: float = 0.1
    """Side of the searched patches, as a fraction of the shorter spatial side (at least 2 px):
    3 px on a 28 × 28 image, the size of the BadNets trigger there."""
    adv_patch_count: int = 4
    """How many of the searched patches are kept at most (the highest-loss boxes)."""
    adv_patch_ratio: float = 4.0
    """A box is kept only if its loss is at least this multiple of the median box's: a patch
    trigger stands far out (on the vision table's BadNets and TrojanNN models the best box's
    loss was 14–36 times the median), while on every other model of that table no box reached
    4 times, and stamping natural patches there only cost removal (WaNet, ISSBA, CLB). When no
    box is kept, nothing is stamped and nothing is clipped."""
    adv_patch_clip: float = 1.0
    """Largest L2 norm of the masks' gradient while searched patches, gratings or composites are
    stamped (0: not clipped). The backdoored model answers a stamped sample with a loss near 10 in
    the first steps; unclipped, that cost 6–12 points of accuracy on the vision table's models
    (``max_grad_norm`` clips every step of every run instead)."""
    adv_wave_prob: float = 0.0
    """Share of each batch's samples that get one of the searched gratings added
    (:class:`~nft.core.adversary.GratingAdversary`): before the first step, every full-image
    sinusoidal grating of a grid (orientation, frequency, phase) is added to one clean batch, and
    the few that send at least ``adv_wave_share`` of the batch's other-class samples to one class
    are kept, where a smooth global trigger (SIG's sinusoid), if the model has one, answers. 0
    turns it off (the core's default); the vision modality sets 0.25, which took SIG on half the
    target class from 27.4 to 4.0 % ASR (docs/vision.md). Needs the modality's input space and
    class labels."""
    adv_wave_amplitude: float = 0.1
    """Amplitude of the searched gratings, as a share of the input range (0.1: ±25 grey levels)."""
    adv_wave_share: float = 0.9
    """A grating is kept only if it sends at least this share of the clean batch's samples of
    other classes to one class (SIG's stripes sent 96–98 %; natural gratings of the demo's BadNets
    model 81 %)."""
    adv_wave_ratio: float = 3.0
    """... and at least this multiple of the median grating's share: a model that answers faint
    stripes in general (WaNet's, ISSBA's) has no grating trigger (benchmarks/results/ablation.md)."""
    adv_composite_prob: float = 0.0
    """Share of each batch's samples that get half of an image of a searched class pair pasted in
    place of their own half (:class:`~nft.core.adversary.CompositeAdversary`): before the first
    step, the half-and-half composites of every pair of classes of one clean batch, in four
    placements, are scored by the share sent to one third class, and the pairs that stand out (a
    composite backdoor's trigger pair) are kept. 0 turns it off (the default: on the composite backdoor
    CBA it took ASR from 93.7 to 66.1 % at 4.4 points of accuracy, short of the bars;
    benchmarks/results/ablation.md). Needs the modality's input space, class labels and 8 clean
    samples of each of two classes or more in the first batch."""
    adv_composite_share: float = 0.8
    """A class pair is kept only if at least this share of its composites go to one third class."""
    adv_composite_ratio: float = 3.0
    """... and at least this multiple of the median pair's share."""
    adv_search_prob: float = 0.0
    """Share of each batch's samples stamped by the searches the modality's input space brings
    (``InputSpace.searches``): before the first step each scans one clean batch for a pattern of
    its modality's kind that sends the samples of other classes to one class, and the few that
    stand out are stamped on this share of the samples, which keep their labels. 0 turns them off
    (the core's default); the point-cloud modality sets 0.5 for its searched point clusters
    (``nft.pointcloud.ClusterAdversary``; docs/pointcloud.md). Needs an input space that has
    searches."""
    reg_weight: float = 0.001
    """Weight of Σ|1 − m|; divided by the clean samples per class when ``reg_per_class``."""
    reg_per_class: bool = True
    clamp_alpha: float = 0.8
    """Depth-decay floor α·e^(−β·l) of the l-th masked layer (used when ``clamp`` is on)."""
    clamp_beta: float = 0.5
    clamp: bool = True
    """The reference code's depth-decay clamp. Its floors fall fast with depth (0.49, 0.29,
    0.18, …), so on deep networks only the first layers are held, which protects clean accuracy
    (without it PointNet loses most of it); on a network with only a few normalisation layers
    every layer is held and a backdoor can survive, and such a modality turns it off through
    ``Experiment.nft_overrides`` (the synthetic CNN and the vision ``small-cnn`` do)."""
    max_grad_norm: float = 0.0
    """When > 0, the masks' gradient is rescaled to at most this L2 norm before each step. Off
    by default (no image result used it). With masks on every convolution, distillation and
    rate 0.2, a model that answers the random patterns confidently starts with a loss several
    times the usual one, and the first steps drove half of the masks to their floor, after which
    the network's output was constant (a clean-label video model ended at chance accuracy); a
    bounded step keeps those first updates small."""
    collapse_retries: int = 1
    """How many times NFT runs again, from the original model at half the learning rate (``lr``
    and ``lr_min``), when a run collapsed: its score on the defender's own clean set fell by more
    than 20 points (``purify()``'s check, :mod:`nft.core.guard`) or its loss became NaN. The
    run's ``info["retries"]`` records each collapsed attempt; the reported time includes them.
    0 turns it off (the reference preset). The shipped rates collapsed a width-4 image model
    (clean accuracy 90.5 → 68.7 %), a video model (to chance) and a LIRA model of the test suite;
    rerunning a diverged optimisation at a smaller step is what a user would do by hand, and the
    clean set is all it looks at."""
    calibrate_bias: bool = True
    """After folding, re-fit the output layer's bias (one number per class) on the clean set
    (:func:`~nft.core.calibrate.calibrate_output_bias`): masking lowers some classes' scores
    across the board, and a bias cannot hold a trigger. Classification only; off in the
    reference preset."""
    distill_weight: float = 1.0
    """Weight of the clean-view distillation term
    (:class:`~nft.core.objective.CleanViewDistillation`): the masked model on each patterned view
    is pulled towards the original model on the same view without patterns. 0 gives the paper's
    loss (the ``nft-no-distill`` ablation). Classification only, and only where the augmentation
    gives an input-space clean view (``Mixed.clean_inputs``); otherwise NFT trains without it and
    logs why. On converged Fashion-MNIST models it kept 1–3 points more clean accuracy at equal or
    lower ASR (benchmarks/results/ablation.md)."""
    distill_temperature: float = 2.0
    """Softmax temperature of the distillation term (1 and 4 measured no better)."""
    norm_stats: str = "freeze"
    """``update``: normalisation layers use batch statistics and update their running
    statistics (``model.train()``, the reference code); ``freeze``: they keep the backdoored
    model's statistics (eval mode) while every other module stays in training mode."""
    masks: MaskConfig = field(default_factory=MaskConfig)
    """Which layers get masks (default: every normalisation layer's γ)."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 adds loss scaling) — for GPU users."""
    channels_last: bool = False
    """Store image activations NHWC (faster convolutions on recent GPUs)."""

    def __post_init__(self) -> None:
        if isinstance(self.masks, dict):
            object.__setattr__(self, "masks", MaskConfig.from_dict(self.masks))
        checks = [
            (self.steps >= 1, f"steps must be ≥ 1, got {self.steps}"),
            (1 <= self.rounds <= self.steps, f"rounds must be in [1, steps], got {self.rounds}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (0 <= self.lr_min <= self.lr, f"lr_min must be in [0, lr], got {self.lr_min}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.schedule in SCHEDULES, f"schedule {self.schedule!r} is unknown; use one of {SCHEDULES}"),
            (self.norm_stats in NORM_STATS,
             f"norm_stats {self.norm_stats!r} is unknown; use one of {NORM_STATS}"),
            (self.mixup_alpha >= 0, f"mixup_alpha must be ≥ 0, got {self.mixup_alpha}"),
            (0 <= self.pattern_prob <= 1, f"pattern_prob must be in [0, 1], got {self.pattern_prob}"),
            (0 <= self.cutmix_prob <= 1, f"cutmix_prob must be in [0, 1], got {self.cutmix_prob}"),
            (0 <= self.adv_prob <= 1, f"adv_prob must be in [0, 1], got {self.adv_prob}"),
            (self.adv_eps > 0, f"adv_eps must be > 0, got {self.adv_eps}"),
            (self.adv_step > 0, f"adv_step must be > 0, got {self.adv_step}"),
            (0 <= self.adv_stop <= 1, f"adv_stop must be in [0, 1], got {self.adv_stop}"),
            (0 <= self.adv_patch_prob <= 1, f"adv_patch_prob must be in [0, 1], got {self.adv_patch_prob}"),
            (0 < self.adv_patch_size < 1, f"adv_patch_size must be in (0, 1), got {self.adv_patch_size}"),
            (self.adv_patch_count >= 1, f"adv_patch_count must be ≥ 1, got {self.adv_patch_count}"),
            (self.adv_patch_ratio >= 1, f"adv_patch_ratio must be ≥ 1, got {self.adv_patch_ratio}"),
            (self.adv_patch_clip >= 0, f"adv_patch_clip must be ≥ 0, got {self.adv_patch_clip}"),
            (0 <= self.adv_wave_prob <= 1, f"adv_wave_prob must be in [0, 1], got {self.adv_wave_prob}"),
            (0 < self.adv_wave_amplitude <= 1,
             f"adv_wave_amplitude must be in (0, 1], got {self.adv_wave_amplitude}"),
            (0 < self.adv_wave_share <= 1, f"adv_wave_share must be in (0, 1], got {self.adv_wave_share}"),
            (self.adv_wave_ratio >= 1, f"adv_wave_ratio must be ≥ 1, got {self.adv_wave_ratio}"),
            (0 <= self.adv_composite_prob <= 1,
             f"adv_composite_prob must be in [0, 1], got {self.adv_composite_prob}"),
            (0 < self.adv_composite_share <= 1,
             f"adv_composite_share must be in (0, 1], got {self.adv_composite_share}"),
            (self.adv_composite_ratio >= 1,
             f"adv_composite_ratio must be ≥ 1, got {self.adv_composite_ratio}"),
            (0 <= self.adv_search_prob <= 1,
             f"adv_search_prob must be in [0, 1], got {self.adv_search_prob}"),
            (0 < self.pattern_max_patch <= 1,
             f"pattern_max_patch must be in (0, 1], got {self.pattern_max_patch}"),
            (0 < self.pattern_max_alpha <= 1,
             f"pattern_max_alpha must be in (0, 1], got {self.pattern_max_alpha}"),
            (self.reg_weight >= 0, f"reg_weight must be ≥ 0, got {self.reg_weight}"),
            (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm),
             f"max_grad_norm must be a finite number ≥ 0 (0: no clipping), got {self.max_grad_norm}"),
            (self.collapse_retries >= 0,
             f"collapse_retries must be ≥ 0 (0: never rerun), got {self.collapse_retries}"),
            (self.distill_weight >= 0 and math.isfinite(self.distill_weight),
             f"distill_weight must be a finite number ≥ 0, got {self.distill_weight}"),
            (self.distill_temperature > 0,
             f"distill_temperature must be > 0, got {self.distill_temperature}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r} is unknown; use one of {PRECISIONS}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    # ---- presets -------------------------------------------------------------------------
    @staticmethod
    def preset(name: str, **overrides: Any) -> PurifyConfig:
        """A named configuration: ``nft``, ``nft-reference``, an ablation of ``nft``
        (``nft-no-mixup``, ``nft-no-reg``, ``nft-no-patterns``, ``nft-no-distill``) or ``nft-adv``
        (``nft`` plus the universal adversarial pattern on half of each batch)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown NFT preset {name!r}; known: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    # ---- derived pieces ------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            progress = step / self.steps
        else:
            per_round = math.ceil(self.steps / self.rounds)
            progress = (step // per_round) / self.rounds
        return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * progress)) / 2

    def round_ends(self) -> list[int]:
        """The step counts after which a round ends (callbacks run there)."""
        per_round = math.ceil(self.steps / self.rounds)
        return sorted({min(self.steps, per_round * (r + 1)) for r in range(self.rounds)})

    def augmentation(self) -> Augmentation:
        """MixUp (or nothing, when ``mixup_alpha`` is 0) or, for a ``cutmix_prob`` share of the
        steps, CutMix composites; then random patterns when enabled."""
        base = MixUp(self.mixup_alpha) if self.mixup_alpha > 0 else NoAugmentation()
        if self.cutmix_prob > 0:
            base = CutMix(base, prob=self.cutmix_prob, alpha=self.mixup_alpha or 1.0)
        if self.pattern_prob == 0:
            return base
        return RandomPatterns(base, patch_prob=self.pattern_prob, max_patch=self.pattern_max_patch,
                              blend_prob=self.pattern_prob, max_alpha=self.pattern_max_alpha)

    def constraint(self):
        return DepthDecayClamp(self.clamp_alpha, self.clamp_beta) if self.clamp else NoClamp()


# The reference code's exact settings (nazmul-karim170/NFT, src/Remove_Backdoor.py): BN in
# train mode, round-cosine 0.05 -> 0.02 over 5 rounds of 200 steps, batch 128, stem BN left plain,
# cross-entropy on MixUp plus the regulariser and nothing else.
_REFERENCE = PurifyConfig(steps=1000, lr=0.05, lr_min=0.02, norm_stats="update", pattern_prob=0.0,
                          distill_weight=0.0, calibrate_bias=False, collapse_retries=0,
                          masks=MaskConfig(skip_first_norm=True))

WITHOUT_DISTILLATION: dict[str, float] = {"distill_weight": 0.0, "lr": 0.05, "lr_min": 0.02}
"""``nft`` without the distillation term: no teacher copy is made, and the reference code's mask
learning rates, which the shipped 0.1 → 0.05 replaced only together with the distillation term.
For modalities whose augmentation gives no clean view (detection batches) or where the term
was measured to hurt or not help (point sets: it kept every backdoor, ``docs/pointcloud.md``;
text: it held the BadNL backdoor, ``docs/nlp.md``). Such modalities put these in their ``nft_overrides``; their results
were measured with them."""

PRESETS: dict[str, PurifyConfig] = {
    "nft": PurifyConfig(),
    "nft-reference": _REFERENCE,
    "nft-no-mixup": PurifyConfig(mixup_alpha=0.0),
    "nft-no-reg": PurifyConfig(reg_weight=0.0),
    "nft-no-patterns": PurifyConfig(pattern_prob=0.0),
    "nft-no-distill": PurifyConfig(distill_weight=0.0),
    # the pattern on half of each batch, a budget just large enough for a SIG trigger, and the
    # teacher's pull doubled, which kept the all-to-one TrojanNN backdoor from coming back
    # (16.5 % at weight 1, 7.7 % at 2; benchmarks/results/ablation.md)
    "nft-adv": PurifyConfig(adv_prob=0.5, adv_eps=0.04, distill_weight=2.0),
}


@dataclass
class PurifyResult:
    """What a purification returns: the cleaned model and how it got there."""

    model: nn.Module
    """The purified model: masks folded in, same class and state_dict keys as the input."""
    masks: dict[str, torch.Tensor]
    """Layer name -> final mask values (empty for defenses that do not use masks)."""
    method: str
    config: Any
    seconds: float
    """Wall time of the purification itself (no evaluation)."""
    clean_samples: int
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Callback:
    """Hooks into the loop; subclass and override what you need."""

    def on_step_end(self, purifier: Purifier, step: int, loss: float) -> None: ...

    def on_round_end(self, purifier: Purifier, step: int) -> None: ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not valid ({err}); use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available; use cpu")
    return resolved


class Purifier:
    """Runs NFT on one model. ``purify()`` is the one-call form; use this for control.

    The model is masked in place: pass a copy if you need the original (``purify()`` does).
    """

    def __init__(
        self,
        model: nn.Module,
        clean_dataset: Dataset,
        config: PurifyConfig | None = None,
        *,
        task: Task | None = None,
        augmentation: Augmentation | None = None,
        callbacks: Sequence[Callback] = (),
        samples_per_class: float | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        input_space: InputSpace | None = None,
    ) -> None:
        self.config = config or PurifyConfig()
        if len(clean_dataset) == 0:
            raise DataError("the clean dataset is empty; NFT needs at least one sample per class")
        self.dataset = clean_dataset
        self.task = task or ClassificationTask()
        self.augmentation = augmentation if augmentation is not None else self.config.augmentation()
        self.callbacks = list(callbacks)
        self.device = rank_device(resolve_device(self.config.device))
        self.batches = SeededBatches(
            clean_dataset, self.config.batch_size, self.config.seed, self.device, collate_fn
        )
        self.samples_per_class = samples_per_class or self._samples_per_class()
        self.distillation = self._distillation(model)
        self.adversary = self._adversary(input_space)
        self.patches = self._patches(input_space)
        self.gratings = self._gratings(input_space)
        self.composites = self._composites(input_space)
        self.space_searches = self._space_searches(input_space)
        # the searched patterns of this purification, in stamping order: the core's, then the modality's
        self._searches = [search for search in (self.patches, self.gratings, self.composites)
                          if search is not None] + self.space_searches
        self.masked: MaskedModel = to_memory_format(
            inject_masks(model, self.config.masks).to(self.device), self.config.channels_last)
        self.scaler = grad_scaler(self.device, self.config.precision)
        params = self.masked.mask_parameters()
        self.optimizer = torch.optim.SGD(
            params, lr=self.config.lr, momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        reg = self.config.reg_weight / (self.samples_per_class if self.config.reg_per_class else 1.0)
        self.regularizer = L1ToOne(reg)
        self.constraint = self.config.constraint()
        self.step_index = 0
        self.history: list[dict] = []
        self._checked = False
        self._train_mode()

    # ---- setup ---------------------------------------------------------------------------
    def _samples_per_class(self) -> float:
        try:
            labels = dataset_labels(self.dataset)
        except (DataError, TypeError, ValueError):
            log.info("clean set has no class labels; the regulariser is not divided per class")
            return 1.0
        return len(labels) / max(1, len(np.unique(labels)))

    def _clip_gradients(self, stamped: bool) -> None:
        limits = [self.config.max_grad_norm]
        if stamped:
            limits.append(self.config.adv_patch_clip)
        limits = [limit for limit in limits if limit > 0]
        if limits:
            torch.nn.utils.clip_grad_norm_(self.masked.mask_parameters(), min(limits))

    def _distillation(self, model: nn.Module) -> CleanViewDistillation | None:
        """A frozen copy of the model as it came in, for the distillation term (tasks whose
        outputs are class logits along dimension 1: per sample, or per pixel)."""
        if self.config.distill_weight == 0:
            return None
        if not getattr(self.task, "distillable", False):
            log.info("clean-view distillation needs class logits (a task with distillable = True); "
                     "%s trains without it", type(self.task).__name__)
            return None
        teacher = to_memory_format(copy.deepcopy(model).to(self.device), self.config.channels_last)
        return CleanViewDistillation(teacher, self.config.distill_weight,
                                     self.config.distill_temperature, forward=self.task.forward)

    def _require_input_space(self, input_space: InputSpace | None, option: str, what: str) -> None:
        if input_space is None:
            raise ConfigError(
                f"{option}={getattr(self.config, option)} {what}, which needs the modality's input "
                "space (its shape, bounds and pixel scale), and none was given; pass input_space= to "
                f"purify(), or set {option}=0")

    def _adversary(self, input_space: InputSpace | None) -> UniversalAdversary | None:
        if self.config.adv_prob == 0:
            return None
        if hasattr(self.augmentation, "with_adversary"):
            # mixing inside the model (text embeddings): the augmentation carries its own
            # adversarial input (text: real words), which takes the place of a pattern added in
            # the input space
            self.augmentation = self.augmentation.with_adversary(
                prob=self.config.adv_prob, step=self.config.adv_step)
            return None
        self._require_input_space(input_space, "adv_prob", "adds a universal adversarial pattern to the inputs")
        return UniversalAdversary(input_space, prob=self.config.adv_prob, eps=self.config.adv_eps,
                                  step=self.config.adv_step, device=self.device)

    def _patches(self, input_space: InputSpace | None) -> PatchAdversary | None:
        if self.config.adv_patch_prob == 0:
            return None
        self._require_input_space(input_space, "adv_patch_prob", "stamps searched patches on the inputs")
        return PatchAdversary(input_space, prob=self.config.adv_patch_prob, size=self.config.adv_patch_size,
                              count=self.config.adv_patch_count, ratio=self.config.adv_patch_ratio)

    def _gratings(self, input_space: InputSpace | None) -> GratingAdversary | None:
        if self.config.adv_wave_prob == 0:
            return None
        self._require_input_space(input_space, "adv_wave_prob", "adds searched gratings to the inputs")
        return GratingAdversary(input_space, prob=self.config.adv_wave_prob,
                                amplitude=self.config.adv_wave_amplitude, share=self.config.adv_wave_share,
                                ratio=self.config.adv_wave_ratio)

    def _composites(self, input_space: InputSpace | None) -> CompositeAdversary | None:
        if self.config.adv_composite_prob == 0:
            return None
        self._require_input_space(input_space, "adv_composite_prob", "pastes halves of searched class pairs")
        return CompositeAdversary(input_space, prob=self.config.adv_composite_prob,
                                  share=self.config.adv_composite_share,
                                  ratio=self.config.adv_composite_ratio)

    def _space_searches(self, input_space: InputSpace | None) -> list:
        if self.config.adv_search_prob == 0:
            return []
        self._require_input_space(input_space, "adv_search_prob",
                                  "stamps the patterns the modality's own searches find")
        if not input_space.searches:
            raise ConfigError(
                f"adv_search_prob={self.config.adv_search_prob} stamps the patterns the modality's own "
                f"searches find, and this input space (samples of shape {tuple(input_space.shape)}) has "
                "none; set adv_search_prob=0")
        return [make(input_space, self.config.adv_search_prob) for make in input_space.searches]

    def _search(self, inputs: Any, targets: Any) -> None:
        """The searches (patches, gratings, composites, the modality's own), on the first batch,
        with the masks still at 1 (the model as it came in) and in eval mode, each drawing from its
        own generator so that the loop's random stream (mixing, patterns) is the same with or
        without them; on several ranks, rank 0's findings are used by all."""
        self.masked.eval()
        try:
            with autocast(self.device, self.config.precision):
                for search in self._searches:
                    if not search.searched:
                        search.search(self.masked, self.task, inputs, targets,
                                      torch.Generator().manual_seed(self.config.seed))
        finally:
            self._train_mode()
        for search in self._searches:
            share_from_first_rank(search)
            log.info("searched %s: %s", type(search).__name__, search.summary())

    def _distill(self, outputs: torch.Tensor, mixed: Mixed) -> torch.Tensor | None:
        if mixed.clean_inputs is None:
            # the augmentation is a modality's own that gives no clean view (detection): there
            # is nothing pattern-free to show the teacher, so the term is dropped
            log.info("%r gives no clean view of its batches; NFT trains without distillation",
                     self.augmentation)
            self.distillation = None
            return None
        return self.distillation(
            outputs, to_memory_format(mixed.clean_inputs, self.config.channels_last))

    def _train_mode(self) -> None:
        self.masked.train()
        if self.config.norm_stats == "freeze":
            for module in iter_norm_modules(self.masked):
                module.eval()

    @contextmanager
    def evaluation(self):
        """Eval mode for a callback's evaluation; the training mode is restored after."""
        self.masked.eval()
        try:
            with torch.no_grad():
                yield self.masked
        finally:
            self._train_mode()

    def _check_first(self, inputs: Any) -> None:
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and not torch.isfinite(inputs).all():
            raise DataError("the clean inputs contain NaN or inf values; clean the data first")

    # ---- the loop ------------------------------------------------------------------------
    def step(self) -> float:
        """One optimisation step; returns the loss."""
        s = self.step_index
        inputs, targets, rng, generator = self.batches.get(s)
        if not self._checked:
            self._check_first(inputs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(s)
        adversarial = s < self.config.adv_stop * self.config.steps
        if (carried := getattr(self.augmentation, "adversary", None)) is not None:
            carried.enabled = adversarial  # an augmentation's own adversary (text): placed or not
        if not all(search.searched for search in self._searches):
            self._search(inputs, targets)
        mixed = self.augmentation(inputs, targets, rng=rng, generator=generator)
        student_inputs = mixed.inputs
        stamped = False
        if adversarial:
            for search in self._searches:
                if search.active:
                    student_inputs = search.perturb(student_inputs, generator)
                    stamped = True
        if self.adversary is not None and adversarial:
            student_inputs = self.adversary.perturb(student_inputs, generator)
        with autocast(self.device, self.config.precision):
            try:
                outputs = self.task.forward(
                    self.masked, to_memory_format(student_inputs, self.config.channels_last))
            except (RuntimeError, TypeError, ValueError) as err:
                if self._checked:
                    raise
                raise DataError.model_cannot_run(inputs, err) from None
            self._checked = True
            loss = mixed_loss(self.task, outputs, mixed)
            if self.distillation is not None and (term := self._distill(outputs, mixed)) is not None:
                loss = loss + term
        loss = loss.float() + self.regularizer(self.masked.mask_parameters())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the purification loss became {float(loss.detach())} at step {s}; nothing was written. "
                "Lower the learning rate, or check the model and clean data for NaN"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            average_gradients(self.masked.mask_parameters())  # masks are all that ranks synchronise
            self._clip_gradients(stamped)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            average_gradients(self.masked.mask_parameters())
            self._clip_gradients(stamped)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self._ascend_adversaries()
        self.constraint(self.masked.mask_parameters())
        self.step_index += 1
        return float(loss.detach())

    def _ascend_adversaries(self) -> None:
        """After the backward pass: every adversarial input of this purification (the input-space
        pattern, and an augmentation's own, such as the text token) takes its step up the loss,
        with its gradient averaged over ranks first so that every rank keeps the same δ."""
        for adversary in (self.adversary, getattr(self.augmentation, "adversary", None)):
            if adversary is not None and adversary.delta is not None:
                average_gradients([adversary.delta])
                adversary.ascend()

    def run(self) -> MaskedModel:
        """Run the remaining steps; returns the masked model (masks not yet folded in)."""
        from tqdm.auto import tqdm

        round_ends = set(self.config.round_ends())
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._augmentation_hooks():
            self._train_mode()
            bar = tqdm(
                total=self.config.steps, initial=self.step_index, desc="purify", unit="step",
                disable=not self.config.progress, leave=False,
            )
            with bar:
                while self.step_index < self.config.steps:
                    loss = self.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step_index, loss)
                    if self.step_index in round_ends:
                        entry = {"step": self.step_index, "loss": loss,
                                 "lr": self.config.lr_at(self.step_index - 1)}
                        for adversary in (self.adversary, *self._searches):
                            if adversary is not None:
                                entry.update(adversary.summary())
                        self.history.append(entry)
                        for cb in self.callbacks:
                            cb.on_round_end(self, self.step_index)
        self.masked.eval()
        return self.masked

    @contextmanager
    def _augmentation_hooks(self):
        hooks = getattr(self.augmentation, "hooks", None)
        if hooks is None:
            yield
            return
        with hooks(self.masked):
            yield

    # ---- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step_index,
            "masks": self.masked.mask_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "seed": self.config.seed,
            "steps": self.config.steps,
            **({"adversary": self.adversary.state_dict()} if self.adversary is not None else {}),
            **({"patches": self.patches.state_dict()} if self.patches is not None else {}),
            **({"gratings": self.gratings.state_dict()} if self.gratings is not None else {}),
            **({"composites": self.composites.state_dict()} if self.composites is not None else {}),
            **({"space_searches": [search.state_dict() for search in self.space_searches]}
               if self.space_searches else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.config.seed or state.get("steps") != self.config.steps:
            raise ConfigError(
                f"the saved loop state was made with seed {state.get('seed')} and "
                f"{state.get('steps')} steps, not {self.config.seed} / {self.config.steps}; "
                "resume with the same config"
            )
        self.masked.load_mask_state_dict(state["masks"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.adversary is not None and "adversary" in state:
            self.adversary.load_state_dict(state["adversary"])
        if self.patches is not None and "patches" in state:
            self.patches.load_state_dict(state["patches"])
        if self.gratings is not None and "gratings" in state:
            self.gratings.load_state_dict(state["gratings"])
        if self.composites is not None and "composites" in state:
            self.composites.load_state_dict(state["composites"])
        for search, saved in zip(self.space_searches, state.get("space_searches", [])):
            search.load_state_dict(saved)
        self.step_index = int(state["step"])

    def save_state(self, path: str | Path) -> None:
        import io as _io

        from .io import atomic_write_bytes

        buffer = _io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_state(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no saved loop state at {path}")
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

