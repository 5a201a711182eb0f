"""NFT and its ablations as registered defenses."""

from __future__ import annotations

import dataclasses

from torch import nn
from torch.utils.data import Dataset

from ..calibrate import calibrate_output_bias
from ..errors import ConfigError
from ..purify import PRESETS, Purifier, PurifyConfig
from .base import DEFENSES, Defense, DefenseContext, DefenseOutcome

__all__ = ["NFTDefense"]


class NFTDefense(Defense):
    """Neural mask Fine-Tuning: masks only, mixing, regulariser, clamp; masks folded in at the end,
    then the output bias re-fitted (``calibrate_bias``)."""

    config_class = PurifyConfig

    def __init__(self, name: str = "nft", config: PurifyConfig | None = None) -> None:
        self._preset = name if name in PRESETS else "nft"
        super().__init__(name, config)

    def default_config(self) -> PurifyConfig:
        return PurifyConfig.preset(self._preset)

    def check(self, context: DefenseContext) -> None:
        """The adversarial pattern (``adv_prob`` > 0, the ``nft-adv`` preset) lives in input space,
        or in the hidden space of an augmentation that offers ``with_adversary``."""
        super().check(context)
        if (self.config.adv_prob > 0 and context.input_space is None
                and not hasattr(context.augmentation, "with_adversary")):
            raise ConfigError(
                f"{self.name} with adv_prob={self.config.adv_prob} adds a universal adversarial "
                "pattern to the inputs, and this modality gives no input space; "
                "set adv_prob=0 or choose nft")

    def gentler(self) -> NFTDefense | None:
        """NFT at half the mask learning rate, while ``collapse_retries`` allows."""
        config = self.config
        if config.collapse_retries <= 0:
            return None
        return NFTDefense(self.name, dataclasses.replace(
            config, lr=config.lr / 2, lr_min=config.lr_min / 2, collapse_retries=config.collapse_retries - 1))

    def run(self, model: nn.Module, clean: Dataset, context: DefenseContext) -> DefenseOutcome:
        config = self.config
        augmentation = context.augmentation
        if augmentation is not None and config.mixup_alpha == 0:
            augmentation = None  # the no-mixup ablation overrides the modality's mixing
        purifier = Purifier(
            model, clean, config, task=context.task,
            augmentation=augmentation if augmentation is not None else config.augmentation(),
            callbacks=context.callbacks, samples_per_class=context.samples_per_class,
            collate_fn=context.collate_fn, input_space=context.input_space,
        )
        masked = purifier.run()
        masks = masked.mask_state_dict()
        info = {"masked_layers": len(masks), "mask_summary": masked.summary()}
        purified = masked.merge_and_unload()
        if config.calibrate_bias:
            info["bias_calibration"] = calibrate_output_bias(
                purified, clean, context.task, device=purifier.device, seed=config.seed,
                batch_size=config.batch_size, collate_fn=context.collate_fn)
        return DefenseOutcome(model=purified, masks=masks, history=purifier.history, info=info)


def _factory(name: str):
    return lambda config=None: NFTDefense(name, config)


for _name in PRESETS:
    DEFENSES.add(_name, _factory(_name), family="nft")
