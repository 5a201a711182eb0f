"""The attacks: seeded poisoning at the requested rate, triggers as specified, and backdoors that
take hold on a small real dataset (4,000 Fashion-MNIST images, a small CNN) without costing much
clean accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nft.core import AttackSpec, ConfigError, RunFolder, TrainConfig
from nft.vision import modality
from nft.vision.attacks import ATTACKS, build_attack, checkerboard, floyd_steinberg
from nft.vision.robust import l2_pgd, linf_pgd

SHAPE = (1, 28, 28)


def images(n=6, seed=0, shape=SHAPE):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def labels_for(n=2000, seed=0):
    return np.random.default_rng(seed).integers(0, 10, n)


# ---- poisoning choice -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["badnets", "blend", "trojan", "wanet", "bpp"])
def test_dirty_label_poisoning_is_seeded_and_at_rate(name):
    labels = labels_for()
    a = build_attack(name, SHAPE, 10, target=0, seed=1).poison_indices(labels, 0.1)
    b = build_attack(name, SHAPE, 10, target=0, seed=1).poison_indices(labels, 0.1)
    c = build_attack(name, SHAPE, 10, target=0, seed=2).poison_indices(labels, 0.1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == round(0.1 * int((labels != 0).sum()))
    assert (labels[a] != 0).all()  # all-to-one never poisons the target class
    both = build_attack(name, SHAPE, 10, mode="all-to-all", seed=1).poison_indices(labels, 0.1)
    assert len(both) == round(0.1 * len(labels))


@pytest.mark.parametrize("name", ["sig", "clb"])
def test_clean_label_poisoning_takes_target_class_only(name):
    labels = labels_for()
    attack = build_attack(name, SHAPE, 10, target=3, seed=0)
    chosen = attack.poison_indices(labels, 0.05)
    assert (labels[chosen] == 3).all()
    # the rate counts over the whole training set (BackdoorBench), capped at the target class
    assert len(chosen) == round(0.05 * len(labels))
    assert len(attack.poison_indices(labels, 0.5)) == int((labels == 3).sum())
    assert attack.poisoned_label(3) == 3
    with pytest.raises(ConfigError, match="all-to-all"):
        build_attack(name, SHAPE, 10, mode="all-to-all")


def test_all_to_all_targets_next_class():
    attack = build_attack("badnets", SHAPE, 10, mode="all-to-all")
    assert [attack.target_of(y) for y in (0, 4, 9)] == [1, 5, 0]


def test_unknown_options_and_names_are_config_errors():
    with pytest.raises(ConfigError, match="patch_size"):
        build_attack("badnets", SHAPE, 10, options={"size": 4})
    with pytest.raises(ConfigError, match="known attacks"):
        build_attack("nope", SHAPE, 10)
    with pytest.raises(ConfigError, match="out of range"):
        build_attack("badnets", SHAPE, 10, target=10)


# ---- triggers -------------------------------------------------------------------------------
def test_badnets_stamps_only_the_patch():
    x = images()
    out = build_attack("badnets", SHAPE, 10).apply(x)
    assert torch.equal(out[..., -3:, -3:], checkerboard(3).expand(len(x), 1, 3, 3))
    assert torch.equal(out[..., :-3, :], x[..., :-3, :]) and torch.equal(out[..., :, :-3], x[..., :, :-3])
    half = build_attack("badnets", SHAPE, 10, options={"opacity": 0.5, "patch_size": 4,
                                                      "position": "top-left"}).apply(x)
    assert torch.allclose(half[..., :4, :4], 0.5 * x[..., :4, :4] + 0.5 * checkerboard(4))
    assert torch.equal(half[..., 4:, :], x[..., 4:, :])


def test_blend_mixes_the_pattern_at_alpha():
    attack = build_attack("blend", SHAPE, 10, seed=4)
    x = images()
    assert torch.allclose(attack.apply(x), 0.8 * x + 0.2 * attack.pattern)
    assert not torch.equal(attack.pattern, build_attack("blend", SHAPE, 10, seed=5).pattern)


def test_sig_adds_a_horizontal_sinusoid():
    x = torch.full((2, *SHAPE), 0.5)
    out = build_attack("sig", SHAPE, 10).apply(x)
    diff = out - x
    assert torch.allclose(diff[0, 0, 0], diff[0, 0, 17])  # the same in every row
    cols = torch.arange(28.0)
    assert torch.allclose(diff[0, 0, 0], (40 / 255) * torch.sin(2 * math.pi * cols * 6 / 28), atol=1e-6)


def test_clb_trigger_is_four_corner_checkerboards():
    x = torch.zeros(1, *SHAPE)
    out = build_attack("clb", SHAPE, 10).apply(x)[0, 0]
    board = checkerboard(3)[0]
    for rows, cols in ((slice(0, 3), slice(0, 3)), (slice(0, 3), slice(25, 28)),
                       (slice(25, 28), slice(0, 3)), (slice(25, 28), slice(25, 28))):
        assert torch.equal(out[rows, cols], board)
    assert float(out[3:25, 3:25].abs().sum()) == 0


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_clb_poison_is_a_bounded_adversarial_perturbation(norm, eps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    attack = build_attack("clb", SHAPE, 10, options={"norm": norm, "eps": eps})
    attack.fit(model, images(), torch.zeros(6, dtype=torch.long), lambda t: t, device=torch.device("cpu"))
    x, y = images(6, seed=2), torch.full((6,), 0)
    poisoned = attack.poison(x, y)
    inner = (poisoned - x)[..., 3:25, 3:25]
    size = inner.abs().flatten(1).max(1).values if norm == "linf" else inner.flatten(1).norm(dim=1)
    assert (size <= eps + 1e-5).all() and (size > eps / 2).all()
    with torch.no_grad():  # PGD pushed the images away from their (target) class
        assert model(poisoned).log_softmax(1)[:, 0].mean() < model(x).log_softmax(1)[:, 0].mean()


@pytest.mark.parametrize("option, value", [
    ("surrogate", "madry"), ("surrogate_eps", 0), ("surrogate_eps", "8/255"), ("surrogate_steps", 0),
    ("surrogate_steps", 1.5), ("norm", "l1"), ("eps", 29.0), ("eps", -1), ("pgd_steps", 0), ("step_size", -0.1),
    ("amplitude", "high")])
def test_clb_bad_options_are_one_config_error(option, value):
    with pytest.raises(ConfigError, match=option):
        build_attack("clb", SHAPE, 10, options={option: value})


def test_pgd_stays_in_the_ball_and_the_box():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    x, y = torch.rand(8, 2, 4, 4), torch.randint(0, 3, (8,))
    eps = torch.tensor([0.1, 0.3]).view(2, 1, 1)  # per channel, as in normalised input units
    lower, upper = torch.tensor([0.0, -0.5]).view(2, 1, 1), torch.tensor([1.0, 0.5]).view(2, 1, 1)
    x = torch.max(torch.min(x, upper), lower)
    adv = linf_pgd(model, x, y, eps=eps, step=eps / 4, steps=6, lower=lower, upper=upper, random_start=True)
    assert ((adv - x).abs() <= eps + 1e-6).all()
    assert (adv >= lower - 1e-6).all() and (adv <= upper + 1e-6).all()
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(adv), y) > loss(model(x), y)
    adv = l2_pgd(model, x, y, eps=0.5, step=0.1, steps=6, lower=lower, upper=upper)
    assert ((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert (adv >= lower - 1e-6).all() and (adv <= upper + 1e-6).all()
    with torch.no_grad():
        assert loss(model(adv), y) > loss(model(x), y)


# ---- CLB's robust surrogate -----------------------------------------------------------------
ROBUST_SPEC = dict(attack="clb", dataset="fashion-mnist", model="small-cnn", model_args={"width": 8},
                   epochs=6, batch_size=64, lr=0.05, holdout=100, train_limit=1000, test_limit=300,
                   progress=False, device="cpu")


def _surrogate(surrogate: str, seed: int = 0, **small):
    spec = {**ROBUST_SPEC, **small}
    vrun = modality.prepare(AttackSpec(**spec, seed=seed, attack_args={"surrogate": surrogate}))
    config = TrainConfig(epochs=spec["epochs"], batch_size=64, lr=0.05, seed=seed + 7, device="cpu",
                         progress=False)
    model = vrun.attack.train_clean_model(modality.new_model(vrun), vrun.clean_train_set(), config,
                                          vrun.input_space())
    return vrun, model


def _pgd_accuracy(vrun, model, eps: float) -> float:
    x = vrun.data.test.batch(vrun.test_idx)
    y = torch.as_tensor(np.asarray(vrun.data.test.targets)[vrun.test_idx])
    forward = lambda a: model(vrun.data.normalise(a))  # noqa: E731
    adv = linf_pgd(forward, x, y, eps=eps, step=2.5 * eps / 10, steps=10)
    with torch.no_grad():
        return float((forward(adv).argmax(1) == y).float().mean())


def test_clb_robust_surrogate_is_seeded():
    tiny = dict(train_limit=200, epochs=1)
    _, model = _surrogate("robust", **tiny)
    _, again = _surrogate("robust", **tiny)
    _, other = _surrogate("robust", seed=1, **tiny)
    state, same, different = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(value, same[key]) for key, value in state.items())
    assert not all(torch.equal(value, different[key]) for key, value in state.items())


@pytest.mark.slow
def test_clb_robust_surrogate_resists_pgd():
    """The adversarially trained surrogate (CLB's default: FGSM from a random start at 8/255)
    keeps far more accuracy under a 10-step L∞ PGD than the plainly trained one, at the same
    budget. Measured (1,000 Fashion-MNIST images, width-8 small CNN, 6 epochs, 300 test images,
    one thread): robust / plain 75.7 / 78.3 % clean, 71.7 / 42.3 % at 8/255, 55.0 / 13.0 % at
    16/255."""
    vrun, robust = _surrogate("robust")
    _, plain = _surrogate("standard")
    for eps in (8 / 255, 16 / 255):
        robust_acc, plain_acc = _pgd_accuracy(vrun, robust, eps), _pgd_accuracy(vrun, plain, eps)
        assert robust_acc >= plain_acc + 0.2, (eps, robust_acc, plain_acc)


def test_wanet_is_a_small_deterministic_warp():
    x = images(4)
    a = build_attack("wanet", SHAPE, 10, seed=3)
    out = a.apply(x)
    assert torch.equal(out, build_attack("wanet", SHAPE, 10, seed=3).apply(x))
    assert not torch.allclose(out, build_attack("wanet", SHAPE, 10, seed=4).apply(x))
    smooth = torch.linspace(0, 1, 28).view(1, 1, 1, 28).expand(1, 1, 28, 28).contiguous()
    moved = (a.apply(smooth) - smooth).abs()
    assert 0 < float(moved.max()) < 0.05  # a smooth image moves by well under a pixel's worth
    idx = a.extra_indices(labels_for(100), np.arange(10))
    assert len(idx) == 20 and not set(idx) & set(range(10))  # cross_ratio 2, never a poisoned one
    batch = a.extra_apply(images(20, 9), idx, None)
    one = a.extra_apply(images(20, 9)[3:4], idx[3:4], None)
    assert torch.allclose(batch[3:4], one)  # per-sample noise: batched and lazy agree
    assert not torch.allclose(batch, a.apply(images(20, 9)))  # the noise mode adds random warps


def test_bpp_quantises_with_dithering():
    x = images(3)
    out = build_attack("bpp", SHAPE, 10).apply(x)
    levels = torch.unique(torch.round(out * 255))
    assert len(levels) <= 8
    assert abs(float(out.mean() - x.mean())) < 0.01  # dithering keeps the mean brightness
    plain = build_attack("bpp", SHAPE, 10, options={"dithering": False}).apply(x)
    assert not torch.equal(out, plain) and len(torch.unique(plain)) <= 8
    attack = build_attack("bpp", SHAPE, 10)
    pool = images(50, 4)
    idx = attack.extra_indices(labels_for(50), np.arange(5))
    assert len(idx) == 5 and not set(idx) & set(range(5))  # neg_ratio 0.1 of 50
    negatives = attack.extra_apply(pool[idx], idx, lambda i: pool[torch.as_tensor(i)])
    assert not torch.allclose(negatives, pool[idx])
    assert torch.allclose(negatives[1:2], attack.extra_apply(pool[idx[1:2]], idx[1:2],
                                                             lambda i: pool[torch.as_tensor(i)]))
    ramp = torch.full((1, 1, 8, 8), 0.3)
    assert torch.allclose(floyd_steinberg(ramp, 2).mean(), torch.tensor(0.3), atol=0.05)


def test_trojan_fit_changes_only_the_masked_square():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 26 * 26, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    attack = build_attack("trojan", SHAPE, 10, options={"steps": 40})
    before = attack.pattern.clone()
    attack.fit(model, images(8), torch.zeros(8, dtype=torch.long), lambda t: t, device=torch.device("cpu"))
    assert not torch.equal(before, attack.pattern)
    assert float(attack.pattern[..., :-6, :].abs().sum()) == 0  # only the 6×6 corner (28 / 5)
    feats = {}
    model[-1].register_forward_hook(lambda m, i, o: feats.__setitem__("x", i[0]))
    x = images(8)
    with torch.no_grad():
        model(x)
        clean = feats["x"].max(1).values.mean()
        model(attack.apply(x))
        stamped = feats["x"].max(1).values.mean()
    assert stamped > clean  # the trigger excites the selected neurons


@pytest.mark.parametrize("name", ["badnets", "blend", "sig", "clb", "wanet", "trojan"])
def test_state_round_trip_reproduces_the_trigger(name):
    a = build_attack(name, SHAPE, 10, seed=7)
    b = build_attack(name, SHAPE, 10, seed=8)
    b.load_state_dict(a.state_dict())
    x = images(3)
    assert torch.allclose(a.apply(x), b.apply(x))


# ---- backdoors take hold on real data -------------------------------------------------------
SMALL = dict(dataset="fashion-mnist", model="small-cnn", epochs=8, batch_size=64, lr=0.05,
             holdout=500, train_limit=4000, test_limit=1000, model_args={"width": 16},
             progress=False, device="cpu")
# Stronger settings where the paper's defaults need far more data or epochs than a test affords:
# clean-label attacks see only the target class's ~400 images, so they poison more of it (SIG all
# of it; CLB half, as the vision table: with all of it CLB cost 5.1 points, ACC 0.792, ASR 1.000).
STRONGER = {"sig": dict(poison_rate=0.1), "clb": dict(poison_rate=0.05),
            "wanet": dict(poison_rate=0.2, attack_args={"s": 1.0}),
            "bpp": dict(poison_rate=0.2, attack_args={"squeeze_num": 4}),
            "trojan": dict(attack_args={"clean_epochs": 2, "steps": 100})}
# ASR each attack must reach on this small run (measured values are in docs/vision.md).
# SIG changes every target-class training image here, which costs more clean accuracy on that
# class (measured: −2.9 points).
ACC_TOLERANCE = {"sig": 0.06}
# Measured (seed 0): clean ACC 0.830; badnets 1.000, blend 1.000, trojan 1.000, sig 0.962 (ACC 0.801),
# wanet 0.953 (ACC 0.804), bpp 0.930 (ACC 0.805); CLB with its robust surrogate and L2 perturbations
# 0.999 (ACC 0.844, against a clean model of 0.843 in the same run).
ASR_MIN = {"badnets": 0.95, "blend": 0.95, "trojan": 0.95, "sig": 0.85, "clb": 0.85, "wanet": 0.85,
           "bpp": 0.8}


def _train(tmp_path, attack: str) -> dict:
    spec = modality.resolve(AttackSpec(attack=attack, **{**SMALL, **STRONGER.get(attack, {})}))
    with RunFolder(tmp_path / attack) as run:
        return modality.train_backdoor(spec, run)


@pytest.fixture(scope="module")
def clean_acc(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("clean"), "none")["acc"]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["badnets", "blend", "trojan", "sig", "clb", "wanet", "bpp"])
def test_backdoor_takes_hold_with_little_accuracy_cost(attack, clean_acc, tmp_path):
    metrics = _train(tmp_path, attack)
    print(attack, metrics, "clean", clean_acc)
    assert clean_acc > 0.8
    assert metrics["asr"] >= ASR_MIN[attack], metrics
    # within 5 points of the clean model: 1,000 test images and one seed leave ±2 points of noise,
    # and SIG here poisons the whole target class (measured: −2.9 points)
    assert metrics["acc"] >= clean_acc - ACC_TOLERANCE.get(attack, 0.05), (metrics, clean_acc)


def test_every_registered_attack_is_tested():
    assert set(ATTACKS) - {"none"} == set(ASR_MIN)
