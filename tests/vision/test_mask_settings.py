"""Which masks and settings the NFT family trains with on vision models: the modality's for
`nft` and its ablations, the reference code's recipe for `nft-reference`."""

from torch import nn

from nft.core import Experiment, inject_masks
from nft.core.runs import defense_config
from nft.vision.modality import nft_overrides_for
from nft.vision.models import ModelSpec, build_model, default_mask_config


def _experiment(name: str) -> Experiment:
    # what VisionModality.load_experiment gives the NFT family for a model of this family
    return Experiment(model=nn.Identity(), task=None, defender_pool=[], evaluate=lambda m: {},
                      mask_config=default_mask_config(name),
                      nft_overrides=nft_overrides_for(name))


def test_preactresnet_masks_are_the_references_16_block_bns_for_every_nft_variant():
    for method in ("nft", "nft-reference", "nft-no-patterns"):
        masks = defense_config(method, _experiment("preactresnet18")).masks
        assert masks == default_mask_config("preactresnet18")
        model = build_model(ModelSpec("preactresnet18", 10, 1, 28, {"width": 4}))
        assert len(inject_masks(model, masks)) == 16


def test_a_users_mask_fields_win_and_the_others_stay_the_modalitys():
    config = defense_config("nft", _experiment("preactresnet18"), {"masks": {"targets": ["norm", "conv"]}})
    assert config.masks.targets == ("norm", "conv") and config.masks.include == (r"layer\d\..*",)


def test_the_reference_preset_ignores_a_modalitys_settings_but_not_its_masks():
    small = _experiment("small-cnn")
    assert defense_config("nft", small).clamp is False
    reference = defense_config("nft-reference", small)
    assert reference.clamp is True and reference.lr == 0.05 and reference.pattern_prob == 0  # the reference
    assert defense_config("nft-no-patterns", small).clamp is False  # ablations share nft's settings


def test_nft_on_images_stamps_searched_patches_and_gratings_and_the_reference_does_not():
    for method in ("nft", "nft-adv", "nft-no-patterns"):
        config = defense_config(method, _experiment("preactresnet18"))
        assert config.adv_patch_prob == 0.5 and config.adv_patch_clip == 1.0
        assert config.adv_wave_prob == 0.25 and config.adv_wave_ratio == 3.0
        assert config.adv_composite_prob == 0  # measured on CBA, not enough to ship (docs/vision.md)
    assert defense_config("nft-adv", _experiment("preactresnet18")).adv_prob == 0.5  # nft plus the pattern
    reference = defense_config("nft-reference", _experiment("preactresnet18"))
    assert reference.adv_patch_prob == 0 and reference.adv_wave_prob == 0
