"""The zoo's interface: registry names, official defaults, clear errors, model anatomy, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from nft.core import DEFENSES, ConfigError, DefenseConfig, InputSpace, defense_effectiveness_rating, purify
from nft.core.cli import main as nft_main
from nft.core.defenses import (
    ANPConfig, AWMConfig, FSTConfig, FTSAMConfig, IBAUConfig, NADConfig, RNPConfig, SAUConfig,
)
from nft.core.defenses._common import feature_taps, find_head
from nft.core.synthetic import SmallCNN
from nft.core.tasks import ClassificationTask

ZOO = {"anp": ANPConfig, "i-bau": IBAUConfig, "awm": AWMConfig, "ft-sam": FTSAMConfig,
       "rnp": RNPConfig, "fst": FSTConfig, "nad": NADConfig, "sau": SAUConfig}
QUIET = dict(progress=False, device="cpu")


def _images(n=20, shape=(1, 16, 16), classes=10):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, *shape, generator=g), torch.arange(n) % classes)


def test_every_defense_of_the_issue_is_registered():
    expected = {"nft", "nft-reference", "ft", "anp", "i-bau", "awm", "ft-sam", "rnp", "fst", "nad",
                "sau", "nft-no-mixup", "nft-no-reg", "nft-no-patterns", "nft-no-distill", "nft-adv", "ft-mixup"}
    assert expected <= set(DEFENSES.names())


@pytest.mark.parametrize("name", list(ZOO))
def test_configs_are_frozen_documented_and_round_trip(name):
    defense = DEFENSES.get(name)(None)
    config = defense.config
    assert type(config) is ZOO[name] and isinstance(config, DefenseConfig)
    with pytest.raises(Exception):
        config.seed = 3  # frozen
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="fields"):
        config.replace(no_such_option=1)


def test_defaults_are_the_official_codes():
    anp = ANPConfig()
    assert (anp.steps, anp.batch_size, anp.lr, anp.eps, anp.noise_steps, anp.alpha) == (2000, 128, 0.2, 0.4, 1, 0.2)
    ibau = IBAUConfig()
    assert (ibau.rounds, ibau.fixed_point_steps, ibau.batch_size, ibau.lr) == (5, 5, 100, 0.001)
    awm = AWMConfig()
    assert (awm.rounds, awm.alpha, awm.gamma, awm.lr, awm.batch_size) == (20, 0.9, 1e-8, 0.01, 128)
    assert awm.trigger_norm * 3 * 32 * 32 == pytest.approx(1000)
    sam = FTSAMConfig()
    assert (sam.rho, sam.adaptive, sam.lr, sam.batch_size, sam.label_smoothing) == (2.0, True, 0.01, 256, 0.1)
    rnp = RNPConfig()
    assert (rnp.unlearn_lr, rnp.recover_lr, rnp.clean_threshold, rnp.alpha) == (0.01, 0.2, 0.2, 0.2)
    assert (rnp.unlearn_epochs, rnp.recover_epochs, rnp.unlearn_milestones) == (20, 20, (10, 20))
    fst = FSTConfig()
    assert (fst.lr, fst.steps, fst.alpha, fst.weight_decay) == (0.01, 80, 0.1, 0.0)
    nad = NADConfig()
    assert (nad.betas, nad.p, nad.lr, nad.batch_size, nad.weight_decay) == ((500.0, 1000.0, 1000.0), 2.0, 0.1, 64, 1e-4)
    sau = SAUConfig()
    assert (sau.bound, sau.pgd_lr, sau.pgd_steps, sau.beta1, sau.beta2) == (0.2, 0.2, 5, 0.01, 1.0)
    assert (sau.lambda1, sau.lambda2, sau.lambda3, sau.lr, sau.batch_size) == (1.0, 0.0, 1.0, 1e-4, 256)


@pytest.mark.parametrize("bad", [
    (ANPConfig, {"alpha": 2.0}, "alpha"), (IBAUConfig, {"portion": 0.0}, "portion"),
    (AWMConfig, {"rounds": 0}, "rounds"), (FTSAMConfig, {"rho": -1.0}, "rho"),
    (RNPConfig, {"threshold": 1.5}, "threshold"), (FSTConfig, {"alpha": -0.1}, "alpha"),
    (NADConfig, {"feature_layers": ("a",)}, "feature_layers"), (SAUConfig, {"pgd_steps": 0}, "pgd_steps"),
])
def test_bad_values_are_rejected_with_the_field_named(bad):
    cls, values, field = bad
    with pytest.raises(ConfigError, match=field):
        cls(**values)


@pytest.mark.parametrize("name", ["i-bau", "awm", "sau"])
def test_input_space_defenses_say_so_when_the_modality_has_none(name):
    with pytest.raises(ConfigError, match="input space"):
        purify(SmallCNN(width=4).eval(), _images(), method=name)


@pytest.mark.parametrize("name", ["i-bau", "awm", "sau"])
def test_input_space_shape_must_match_the_data(name):
    config = ZOO[name](**QUIET)
    with pytest.raises(ConfigError, match="shape"):
        purify(SmallCNN(width=4).eval(), _images(), config, method=name,
               input_space=InputSpace(shape=(3, 16, 16)))


class NoLinear(nn.Module):
    """A fully convolutional classifier: no nn.Linear head."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        return self.net(x)


def test_fst_needs_a_final_linear_layer():
    with pytest.raises(ConfigError, match="no nn.Linear"):
        purify(NoLinear().eval(), _images(), FSTConfig(steps=1, **QUIET), method="fst")
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        purify(SmallCNN(width=4).eval(), _images(), FSTConfig(steps=1, head="features.0", **QUIET),
               method="fst")


@pytest.mark.parametrize("name", ["anp", "rnp"])
def test_pruning_defenses_need_normalisation_layers(name):
    with pytest.raises(ConfigError, match="no normalisation layer"):
        purify(NoNorm().eval(), _images(), ZOO[name](**QUIET), method=name)


def test_nad_needs_feature_maps():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(256, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ConfigError, match="feature maps"):
        purify(mlp.eval(), _images(), NADConfig(steps=1, teacher_steps=1, **QUIET), method="nad")


def test_head_and_feature_maps_are_found_generically():
    task = ClassificationTask()
    x = torch.rand(2, 1, 16, 16)
    assert find_head(SmallCNN(width=4).eval(), task, x)[0] == "head"
    resnet = torchvision.models.resnet18(num_classes=5).eval()
    x3 = torch.rand(2, 3, 32, 32)
    assert find_head(resnet, task, x3)[0] == "fc"
    assert [n for n, _ in feature_taps(SmallCNN(width=4), task, x, 3)] == ["features.4", "features.7", "features.10"]
    taps = [n for n, _ in feature_taps(resnet, task, x3, 3)]
    assert taps[-1] == "layer4.1.bn2" and len(set(taps)) == 3  # depth-spread, the last BN last
    assert [a for _, a in feature_taps(NoLinear(), task, x, 1)] == [1]


def test_cli_purify_runs_a_zoo_defense_and_records_its_options(tmp_path, capsys, fake_clock):
    run = tmp_path / "attack"
    assert nft_main(["attack", "--modality", "synthetic", "--out", str(run), "--train-limit", "600",
                     "--test-limit", "200", "--holdout", "200", "--epochs", "2", "--no-progress"]) == 0
    out = tmp_path / "fst"
    assert nft_main(["purify", "--run", str(run), "--out", str(out), "--method", "fst", "--steps", "4",
                     "--set", "alpha=0.3", "--clean-per-class", "5", "--no-progress", "--no-plots"]) == 0
    config = json.loads((out / "config.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert config["method"] == "fst" and config["defense"]["alpha"] == 0.3 and config["defense"]["steps"] == 4
    assert report["clean_samples"] == 50 and fake_clock.readings == 2  # one clock span around the run
    assert report["der"] == pytest.approx(defense_effectiveness_rating(report["before"], report["after"]))
    assert nft_main(["purify", "--run", str(run), "--out", str(tmp_path / "x"), "--method", "awm",
                     "--set", "no_such=1", "--no-progress"]) == 2
    assert "unknown AWMConfig fields" in capsys.readouterr().err
