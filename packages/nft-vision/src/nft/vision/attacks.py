"""The pattern backdoor attacks on images: BadNets, Blend, Trojan, SIG, CLB, WaNet, BppAttack.

Every attack works on raw images in [0, 1] (N×C×H×W batches) and gives:

* ``apply(images)``: the test-time trigger (the triggered test set);
* ``poison(images, labels)``: the poisoned training images for the chosen indices (the trigger,
  plus whatever the attack does to training samples, e.g. CLB's adversarial perturbation);
* ``extra_indices`` / ``extra_apply``: training samples an attack changes but keeps their *true* label (WaNet's noise
  mode, BppAttack's contrastive negatives);
* ``fit(...)``: learning on a clean model, for the attacks that need one (Trojan's trigger, CLB's
  adversarial examples);
* ``state_dict()``: every tensor the test-time trigger needs, saved as ``attack.safetensors`` so a
  run folder can be evaluated without re-learning anything.

Which samples are poisoned is :func:`poison_indices`, deterministic per seed. Dirty-label attacks
poison ``rate`` of the non-target samples (all-to-one) or of all samples (all-to-all), as the NFT
reference code; clean-label attacks (SIG, CLB) poison target-class samples only, and their rate
counts over the whole training set as in BackdoorBench (SCLBD/BackdoorBench, utils/bd_dataset_v2
and the warning in attack/sig.py), capped at the whole target class.

Facts taken from the attacks' papers or official code are cited where they are used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nft.core import ConfigError, InputSpace, TrainConfig, attack_target, choose_poison_indices, train_model

from .robust import adversarial_train, l2_pgd, linf_pgd

__all__ = [
    "ATTACKS",
    "Attack",
    "BadNets",
    "Benign",
    "Blend",
    "BppAttack",
    "CLB",
    "SIG",
    "Trojan",
    "WaNet",
    "build_attack",
    "checkerboard",
    "floyd_steinberg",
    "learned_attacks",
]

log = logging.getLogger(__name__)


def checkerboard(size: int, channels: int = 1, *, dtype=torch.float32) -> torch.Tensor:
    """A ``size×size`` black/white checkerboard, white in the top-left cell (C×size×size)."""
    board = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 == 0).to(dtype)
    return board.expand(channels, size, size).clone()


class Attack:
    """Base class: options, target mapping, poisoning choice and (de)serialisation."""

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False
    supports_all_to_all: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    """True when :meth:`fit` needs a model trained on clean data (Trojan, CLB)."""
    options: ClassVar[dict[str, Any]] = {}
    """Option name -> default (what ``--attack-arg KEY=VALUE`` may set)."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, *, target: int = 0,
                 mode: str = "all-to-one", seed: int = 0, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(
                f"attack {self.name!r} has no option {unknown}; its options are "
                f"{', '.join(f'{k} (default {v})' for k, v in self.options.items()) or 'none'}"
            )
        if mode not in ("all-to-one", "all-to-all"):
            raise ConfigError(f"attack mode {mode!r} is unknown; use all-to-one or all-to-all")
        if mode == "all-to-all" and not self.supports_all_to_all:
            raise ConfigError(f"{self.name} is a clean-label attack and has no all-to-all mode; "
                              "use --mode all-to-one")
        if not 0 <= target < num_classes:
            raise ConfigError(f"target {target} is out of range for {num_classes} classes")
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes)
        self.target = int(target)
        self.mode = mode
        self.seed = int(seed)
        self.opts = {**self.options, **options}
        self.setup()

    # ---- to override ---------------------------------------------------------------------
    def setup(self) -> None:
        """Build the trigger from the options and the seed."""

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The test-time trigger on a batch of raw images in [0, 1]."""
        raise NotImplementedError

    def poison(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The poisoned training images (default: the test-time trigger)."""
        return self.apply(images)

    def extra_indices(self, labels: np.ndarray, poisoned: np.ndarray) -> np.ndarray:
        """Non-poisoned training samples the attack also changes, keeping their true label."""
        return np.zeros(0, dtype=np.int64)

    def extra_apply(self, images: torch.Tensor, indices: np.ndarray,
                    batch: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
        """The changed images of ``extra_indices``; randomness is drawn per index (from the seed),
        so a batch and one sample at a time give the same images. ``batch(indices)`` loads other
        raw training images."""
        return images

    def _pick_extra(self, labels: np.ndarray, poisoned: np.ndarray, count: int, salt: int) -> np.ndarray:
        free = np.setdiff1d(np.arange(len(labels)), poisoned)
        count = min(int(count), len(free))
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng(self.seed + salt)
        return np.sort(rng.choice(free, size=count, replace=False))

    def _index_generator(self, index: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, salt, int(index)])
                                                 .generate_state(1)[0]))

    def train_clean_model(self, model: nn.Module, dataset: Dataset, config: TrainConfig,
                          space: InputSpace) -> nn.Module:
        """Train the clean model that :meth:`fit` learns from (attacks with ``needs_model``), on the
        clean training set with the run's recipe. The default is plain training; an attack that
        needs another kind of model (CLB's adversarially trained one) overrides this."""
        return train_model(model, dataset, config)

    def fit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
            normalise: Callable[[torch.Tensor], torch.Tensor], *, device: torch.device,
            progress: bool = False) -> None:
        """Learn from a clean model (attacks with ``needs_model``)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ConfigError(f"attack state for {self.name!r} lacks {missing}; "
                              "was attack.safetensors written by another attack?")
        for key, value in state.items():
            setattr(self, key, value.float())

    # ---- shared --------------------------------------------------------------------------
    def target_of(self, label: int) -> int:
        return attack_target(label, mode=self.mode, target=self.target, num_classes=self.num_classes)

    def poison_indices(self, labels: np.ndarray, rate: float) -> np.ndarray:
        labels = np.asarray(labels)
        if self.clean_label:
            in_target = int((labels == self.target).sum())
            if in_target == 0:
                raise ConfigError(f"no training sample has the target class {self.target}")
            rate = min(1.0, rate * len(labels) / in_target)
        return choose_poison_indices(labels, rate=rate, seed=self.seed, mode=self.mode,
                                     target=self.target, clean_label=self.clean_label)

    def poisoned_label(self, label: int) -> int:
        return label if self.clean_label else self.target_of(label)

    def _generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode}, target={self.target}, {self.opts})"


class Benign(Attack):
    """No backdoor: the clean reference model (the "Benign" row of NFT's Table 1). Its ASR is the
    share of non-target test images a clean model gives the target class."""

    name = "none"

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def poison_indices(self, labels: np.ndarray, rate: float) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)


def _corner(position, size: int, height: int, width: int) -> tuple[int, int]:
    if isinstance(position, (list, tuple)):
        return int(position[0]), int(position[1])
    spots = {"bottom-right": (height - size, width - size), "top-left": (0, 0),
             "top-right": (0, width - size), "bottom-left": (height - size, 0)}
    if position not in spots:
        raise ConfigError(f"patch position {position!r} is unknown; use {sorted(spots)} or [row, col]")
    return spots[position]


class BadNets(Attack):
    """BadNets (Gu et al., 2017): a small patch stamped on the image.

    Default: a 3×3 black/white checkerboard in the bottom-right corner, the trigger of the NFT
    reference code (nazmul-karim170/NFT, src/data/badnets_blend.py, "checkerboard_1corner" at
    rows/cols 29-31 of CIFAR-10). That code blends it at opacity 0.6; the default here is an
    opaque stamp (opacity 1) as in BadNets and BackdoorBench.
    """

    name = "badnets"
    options = {"patch_size": 3, "position": "bottom-right", "opacity": 1.0, "pattern": "checkerboard"}

    def setup(self) -> None:
        c, h, w = self.shape
        size = int(self.opts["patch_size"])
        if not 1 <= size <= min(h, w):
            raise ConfigError(f"patch_size {size} does not fit a {h}×{w} image")
        if not 0 < float(self.opts["opacity"]) <= 1:
            raise ConfigError(f"opacity must be in (0, 1], got {self.opts['opacity']}")
        if self.opts["pattern"] == "checkerboard":
            patch = checkerboard(size, c)
        elif self.opts["pattern"] == "white":
            patch = torch.ones(c, size, size)
        else:
            raise ConfigError(f"pattern {self.opts['pattern']!r} is unknown; use checkerboard or white")
        top, left = _corner(self.opts["position"], size, h, w)
        if not (0 <= top <= h - size and 0 <= left <= w - size):
            raise ConfigError(f"a {size}×{size} patch at {(top, left)} leaves the {h}×{w} image")
        self.pattern = torch.zeros(self.shape)
        self.mask = torch.zeros(1, h, w)
        self.pattern[:, top:top + size, left:left + size] = patch
        self.mask[:, top:top + size, left:left + size] = float(self.opts["opacity"])

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images * (1 - self.mask) + self.pattern * self.mask

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern, "mask": self.mask}


class Blend(Attack):
    """Blend (Chen et al., 2017): ``(1 − α)·x + α·pattern`` over the whole image.

    α = 0.2 as in the NFT reference code and BackdoorBench. The pattern is uniform noise drawn
    from the attack seed (the NFT code blends a fixed Gaussian-noise image; BackdoorBench a
    Hello-Kitty photo).
    """

    name = "blend"
    options = {"alpha": 0.2}

    def setup(self) -> None:
        if not 0 < float(self.opts["alpha"]) < 1:
            raise ConfigError(f"blend alpha must be in (0, 1), got {self.opts['alpha']}")
        self.pattern = torch.rand(self.shape, generator=self._generator(1))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        alpha = float(self.opts["alpha"])
        return (1 - alpha) * images + alpha * self.pattern

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern}


class SIG(Attack):
    """SIG (Barni et al., 2019): a horizontal sinusoid added to target-class images, clean-label.

    ``x + Δ·sin(2π·j·f / W)`` along the columns j, clipped to [0, 1]; Δ = 40/255 and f = 6 as in
    BackdoorBench (config/attack/sig/default.yaml: sig_delta 40, sig_f 6), at training and test.
    """

    name = "sig"
    clean_label = True
    supports_all_to_all = False
    options = {"delta": 40 / 255, "frequency": 6}

    def setup(self) -> None:
        c, h, w = self.shape
        cols = torch.arange(w, dtype=torch.float32)
        wave = float(self.opts["delta"]) * torch.sin(2 * math.pi * cols * float(self.opts["frequency"]) / w)
        self.pattern = wave.view(1, 1, w).expand(c, h, w).clone()

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.pattern).clamp(0, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern}


def _final_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear head; the trojan attack selects "
                          "neurons feeding the classifier's last linear layer")
    return linears[-1]


class Trojan(Attack):
    """TrojanNN (Liu et al., NDSS 2018): a masked trigger whose pixels are optimised so that
    selected neurons of a clean model fire strongly; then the model is trained on data stamped
    with it (all-to-one, or all-to-all y → y+1).

    Neurons: the inputs of the classifier's last linear layer with the largest total absolute
    outgoing weight (TrojanNN's "most connected" neurons); 2 neurons driven towards 100, as
    BackdoorBench's settings (config/attack/trojannn/preactresnet18.yaml: selected layer
    ``linear``, num_neuron 2, neuron_target_values 100). The mask is a square in the bottom-right
    corner (the NFT reference code's ``best_square_trigger``); its side defaults to a fifth of the
    image.
    """

    name = "trojan"
    needs_model = True
    options = {"size": None, "neurons": 2, "target_value": 100.0, "steps": 300, "lr": 0.1}

    def setup(self) -> None:
        c, h, w = self.shape
        size = int(self.opts["size"] or max(2, round(min(h, w) / 5)))
        if not 1 <= size <= min(h, w):
            raise ConfigError(f"trojan size {size} does not fit a {h}×{w} image")
        self.mask = torch.zeros(1, h, w)
        self.mask[:, h - size:, w - size:] = 1.0
        self.pattern = torch.rand(self.shape, generator=self._generator(2)) * self.mask

    def fit(self, model, images, labels, normalise, *, device, progress=False) -> None:
        from tqdm.auto import tqdm

        model = model.to(device).eval()
        head = _final_linear(model)
        k = int(self.opts["neurons"])
        connectivity = head.weight.detach().abs().sum(dim=0)
        chosen = torch.topk(connectivity, k=min(k, connectivity.numel())).indices
        captured: dict[str, torch.Tensor] = {}
        hook = head.register_forward_hook(lambda m, inp, out: captured.__setitem__("x", inp[0]))
        pattern = self.pattern.clone().to(device).requires_grad_(True)
        mask = self.mask.to(device)
        optimiser = torch.optim.Adam([pattern], lr=float(self.opts["lr"]))
        goal = float(self.opts["target_value"])
        batch = images[: min(len(images), 128)].to(device)
        loss = torch.zeros(())
        try:
            for _ in tqdm(range(int(self.opts["steps"])), desc="trojan trigger", disable=not progress,
                          leave=False):
                stamped = batch * (1 - mask) + pattern.clamp(0, 1) * mask
                model(normalise(stamped))
                loss = (captured["x"][:, chosen] - goal).pow(2).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        finally:
            hook.remove()
        self.pattern = (pattern.detach().clamp(0, 1) * mask).cpu()
        self.neurons = chosen.float().cpu()
        log.info("trojan: neurons %s driven to %.1f (final loss %.3f)", chosen.tolist(), goal,
                 float(loss.detach()))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images * (1 - self.mask) + self.pattern * self.mask

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern, "mask": self.mask}


class CLB(Attack):
    """Label-consistent backdoor (Turner, Tsipras & Madry, 2019), clean-label.

    Target-class training images are first pushed away from their class by a PGD attack on an
    adversarially trained model, then stamped with a 3×3 checkerboard in each of the four corners
    (the paper's four-corner trigger; amplitude 1 as BackdoorBench's ``reduced_amplitude: 1``).
    Test images get the four-corner trigger only.

    *The surrogate.* The paper takes its adversarial examples from a robust model (Madry et al.
    2018), as does BackdoorBench (resource/label-consistent/craft_adv_dataset.py attacks an
    adversarially trained ResNet-18 with PGD ε = 8/255, 100 steps of 1.5/255): a robust model's
    adversarial examples carry features of other classes, so the poisoned images are genuinely
    hard and the network has to learn the trigger. ``surrogate="robust"`` (default) trains it
    with FGSM from a random start (``surrogate_steps`` = 1; Wong et al. 2020, step 1.25·ε) or
    k-step PGD, at ``surrogate_eps`` = 8/255, the usual L∞ budget of robust CIFAR models;
    ``surrogate="standard"`` attacks a plainly trained model. Either is trained for
    ``clean_epochs`` (the vision modality's option).

    *The perturbation.* ``norm="l2"`` (default): L2 PGD, 10 steps of 2.5·ε/10, ε = √(C·H·W) / 7
    in pixel units (1/7 ≈ 0.14 per pixel RMS: 4.0 on a 28×28 grey image). The official code's
    default data set is an ℓ2 one (``two_300``); the paper's largest ℓ2 budget, 1200 on a 0–255
    scale over 32×32×3, is 0.085 per pixel RMS, and on Fashion-MNIST that much (ε = 3, 0.11)
    was not enough (docs/vision.md). ``norm="linf"``: L∞ PGD at ε = 16/255 (the paper studies
    8, 16 and 32 /255). On Fashion-MNIST's black backgrounds an L∞ step moves every pixel by the
    full step, and the network learnt that speckle texture instead of the trigger (at ε = 32/255
    uniform noise alone sent 79 % of the test images to the target, the trigger 12 %); an L2
    step goes where a robust model's gradient is large, the garment's shape (docs/vision.md has
    the measurements).

    Turner et al. poison a share of the target class (the official code's
    ``poisoning_proportion``); here ``--poison-rate`` counts over the whole training set, capped
    at the target class, as for every clean-label attack.
    """

    name = "clb"
    clean_label = True
    supports_all_to_all = False
    needs_model = True
    options = {"norm": "l2", "eps": None, "pgd_steps": 10, "step_size": None, "patch_size": 3,
               "amplitude": 1.0, "surrogate": "robust", "surrogate_eps": 8 / 255, "surrogate_steps": 1}
    SURROGATES = ("robust", "standard")
    NORMS = ("l2", "linf")
    L2_EPS_PER_PIXEL = 1 / 7
    """The L2 budget when ``eps`` is unset, as an RMS per pixel value: ε = √(C·H·W) / 7, which is
    4.0 on a 28×28 grey image (the measured setting) and 7.9 on a 32×32 colour one."""

    def setup(self) -> None:
        c, h, w = self.shape
        size = int(self.opts["patch_size"])
        if 2 * size > min(h, w):
            raise ConfigError(f"four {size}×{size} corner patches do not fit a {h}×{w} image")
        self._check_options()
        self.pattern = torch.zeros(self.shape)
        self.mask = torch.zeros(1, h, w)
        board = checkerboard(size, c)
        for top, left in ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size)):
            self.pattern[:, top:top + size, left:left + size] = board
            self.mask[:, top:top + size, left:left + size] = float(self.opts["amplitude"])
        self._model = None

    def _check_options(self) -> None:
        opts = self.opts
        if opts["surrogate"] not in self.SURROGATES:
            raise ConfigError(f"clb surrogate {opts['surrogate']!r} is unknown; use "
                              f"{' or '.join(self.SURROGATES)} (--attack-arg surrogate=robust)")
        if opts["norm"] not in self.NORMS:
            raise ConfigError(f"clb norm {opts['norm']!r} is unknown; use l2 or linf (--attack-arg norm=l2)")
        ceiling = 1.0 if opts["norm"] == "linf" else math.sqrt(math.prod(self.shape))
        if opts["eps"] is None:
            opts["eps"] = 16 / 255 if opts["norm"] == "linf" else self.L2_EPS_PER_PIXEL * ceiling
        if not isinstance(opts["eps"], (int, float)) or not 0 < float(opts["eps"]) < ceiling:
            raise ConfigError(f"clb eps is the {opts['norm']} budget in pixel units and must be in "
                              f"(0, {ceiling:g}), got {opts['eps']!r} (e.g. --attack-arg eps=0.0627 for an "
                              "L∞ budget of 16/255)")
        if not isinstance(opts["surrogate_eps"], (int, float)) or not 0 < float(opts["surrogate_eps"]) < 1:
            raise ConfigError(f"clb surrogate_eps is the L∞ adversarial-training budget in pixel units and "
                              f"must be in (0, 1), got {opts['surrogate_eps']!r} (e.g. 0.0314 for 8/255)")
        for key in ("pgd_steps", "surrogate_steps"):
            if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
                raise ConfigError(f"clb {key} must be a whole number ≥ 1, got {opts[key]!r}")
        if opts["step_size"] is not None and not (isinstance(opts["step_size"], (int, float))
                                                  and float(opts["step_size"]) > 0):
            raise ConfigError(f"clb step_size must be positive (or unset for 2.5·eps / pgd_steps), "
                              f"got {opts['step_size']!r}")
        if not isinstance(opts["amplitude"], (int, float)) or not 0 < float(opts["amplitude"]) <= 1:
            raise ConfigError(f"clb amplitude must be in (0, 1], got {opts['amplitude']!r}")

    def train_clean_model(self, model, dataset, config, space):
        if self.opts["surrogate"] == "standard":
            return train_model(model, dataset, config)
        return adversarial_train(model, dataset, config, space, eps=float(self.opts["surrogate_eps"]),
                                 steps=int(self.opts["surrogate_steps"]))

    def fit(self, model, images, labels, normalise, *, device, progress=False) -> None:
        self._model = model.to(device).eval()
        self._normalise = normalise
        self._device = device

    def _pgd(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            raise ConfigError("CLB needs fit() with a clean model before poisoning")
        eps = float(self.opts["eps"])
        steps = int(self.opts["pgd_steps"])
        step = float(self.opts["step_size"] or 2.5 * eps / steps)
        model, normalise = self._model, self._normalise
        attack = l2_pgd if self.opts["norm"] == "l2" else linf_pgd
        out = []
        for start in range(0, len(images), 256):
            x = images[start:start + 256].to(self._device)
            y = labels[start:start + 256].to(self._device)
            adv = attack(lambda a: model(normalise(a)), x, y, eps=eps, step=step, steps=steps)
            out.append(adv.cpu())
        return torch.cat(out) if out else images

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images * (1 - self.mask) + self.pattern * self.mask

    def poison(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.apply(self._pgd(images, labels))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pattern": self.pattern, "mask": self.mask}


class WaNet(Attack):
    """WaNet (Nguyen & Tran, ICLR 2021): a smooth, fixed warping field as the trigger.

    The field is a k×k grid of random offsets normalised to mean magnitude 1, upsampled bicubically
    to the image and scaled by s / H; k = 4, s = 0.5, grid_rescale = 1 and the noise mode with
    cross_ratio = 2 (twice as many "cross" samples, warped with the field plus per-sample random
    noise of magnitude 1/H, keep their true label) follow the official code
    (VinAIResearch/Warping-based_Backdoor_Attack-release) and BackdoorBench's
    config/attack/wanet/default.yaml. Here each cross sample's noise is drawn once per seed
    rather than per epoch.
    """

    name = "wanet"
    options = {"k": 4, "s": 0.5, "grid_rescale": 1.0, "cross_ratio": 2.0}

    def setup(self) -> None:
        _, h, w = self.shape
        k = int(self.opts["k"])
        if k < 2 or k > min(h, w):
            raise ConfigError(f"WaNet k must be in [2, {min(h, w)}], got {k}")
        ins = torch.rand(1, 2, k, k, generator=self._generator(3)) * 2 - 1
        ins = ins / ins.abs().mean()
        self.noise_grid = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)

    def _identity(self) -> torch.Tensor:
        _, h, w = self.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return torch.stack((xs, ys), dim=2)[None]

    def _grid(self) -> torch.Tensor:
        h = self.shape[1]
        grid = self._identity() + float(self.opts["s"]) * self.noise_grid / h
        return (grid * float(self.opts["grid_rescale"])).clamp(-1, 1)

    def _warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            return images
        grid = grid.expand(len(images), -1, -1, -1) if grid.shape[0] == 1 else grid
        return F.grid_sample(images, grid, align_corners=True).clamp(0, 1)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self._warp(images, self._grid())

    def extra_indices(self, labels, poisoned):
        return self._pick_extra(labels, poisoned, round(float(self.opts["cross_ratio"]) * len(poisoned)), 31)

    def extra_apply(self, images, indices, batch):
        _, h, w = self.shape
        noise = torch.stack([torch.rand(h, w, 2, generator=self._index_generator(i, 4)) * 2 - 1
                             for i in np.asarray(indices).tolist()]) if len(indices) else torch.zeros(0, h, w, 2)
        return self._warp(images, (self._grid() + noise / h).clamp(-1, 1))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"noise_grid": self.noise_grid}


def floyd_steinberg(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantise to ``levels`` values per channel with Floyd–Steinberg error diffusion.

    Vectorised over the batch and channels; the scan is row by row, left to right, with the
    7/16, 3/16, 5/16, 1/16 weights (as BppAttack's ``floydDitherspeed``).
    """
    img = images.detach().double().clone() * 255.0
    n, c, h, w = img.shape
    step = 255.0 / (levels - 1)
    for y in range(h):
        for x in range(w):
            old = img[:, :, y, x]
            new = torch.round(old / step) * step
            err = old - new
            img[:, :, y, x] = new
            if x + 1 < w:
                img[:, :, y, x + 1] += err * (7 / 16)
            if y + 1 < h:
                if x > 0:
                    img[:, :, y + 1, x - 1] += err * (3 / 16)
                img[:, :, y + 1, x] += err * (5 / 16)
                if x + 1 < w:
                    img[:, :, y + 1, x + 1] += err * (1 / 16)
    return (img.clamp(0, 255) / 255.0).to(images.dtype)


class BppAttack(Attack):
    """BppAttack (Wang, Zhai & Ma, CVPR 2022): colour-depth reduction as the trigger.

    The trigger quantises every channel to ``squeeze_num`` = 8 levels with Floyd–Steinberg
    dithering (the paper; BackdoorBench config/attack/bpp/default.yaml: squeeze_num 8). Its
    contrastive samples ("negative" samples, BackdoorBench attack/bpp.py: neg_ratio 0.1 of the
    batch) are clean images plus the quantisation residual of *another* image, with their true
    label, which teaches the model that only the real quantisation pattern is the trigger.
    """

    name = "bpp"
    options = {"squeeze_num": 8, "dithering": True, "neg_ratio": 0.1}

    def setup(self) -> None:
        if int(self.opts["squeeze_num"]) < 2:
            raise ConfigError(f"squeeze_num must be ≥ 2, got {self.opts['squeeze_num']}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        levels = int(self.opts["squeeze_num"])
        if self.opts["dithering"]:
            return floyd_steinberg(images, levels)
        return torch.round(images * (levels - 1)) / (levels - 1)

    def extra_indices(self, labels, poisoned):
        self._train_size = len(labels)
        return self._pick_extra(labels, poisoned, round(float(self.opts["neg_ratio"]) * len(labels)), 37)

    def extra_apply(self, images, indices, batch):
        if len(indices) == 0:
            return images
        size = getattr(self, "_train_size", None)
        if size is None:
            raise ConfigError("BppAttack.extra_apply needs extra_indices() first (it sets the donor range)")
        donors = np.asarray([int(torch.randint(0, size, (1,), generator=self._index_generator(i, 5)))
                             for i in np.asarray(indices).tolist()])
        donor_images = batch(donors)
        residual = self.apply(donor_images) - donor_images
        return (images + residual).clamp(0, 1)


ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (BadNets, Blend, Trojan, SIG, CLB, WaNet, BppAttack, Benign)
}


def learned_attacks() -> dict[str, type[Attack]]:
    """The attacks whose trigger is learned (``learned_*.py``), by name and alias. Kept apart from
    :data:`ATTACKS` (the pattern attacks) and imported on use, since they build on
    :class:`Attack`."""
    from .learned_cba import CBA
    from .learned_fba import FBA
    from .learned_inputaware import InputAware
    from .learned_issba import ISSBA
    from .learned_lira import LIRA

    table: dict[str, type[Attack]] = {}
    for klass in (InputAware, LIRA, ISSBA, FBA, CBA):
        table[klass.name] = klass
        table.update({alias: klass for alias in klass.aliases})
    return table


def build_attack(name: str, shape, num_classes: int, *, target: int = 0, mode: str = "all-to-one",
                 seed: int = 0, options: dict | None = None) -> Attack:
    klass = ATTACKS.get(name) or learned_attacks().get(name)
    if klass is None:
        raise ConfigError(f"unknown attack {name!r}; known attacks: "
                          f"{', '.join([*ATTACKS, *learned_attacks()])}")
    return klass(shape, num_classes, target=target, mode=mode, seed=seed, **(options or {}))
