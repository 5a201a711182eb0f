"""The attacks whose trigger is learned (learned_*.py): each generator's contract (shapes, bounds,
determinism per seed, a bit-identical trigger after save and reload), and one short `nft attack`
run per attack on small data that shows the backdoor takes hold and that `nft evaluate` rebuilds
the same triggered test set from the run folder.

The end-to-end settings are stronger than the papers' defaults where a run of a few seconds
cannot learn the published trigger (each is commented); the measured values, per seed, are in
docs/vision.md. The runs use one thread, as measured; thresholds still sit well below the lowest
measured value, since another CPU, BLAS or torch version changes the numbers a little.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from nft.core import ConfigError, TrainConfig, load_tensors, save_tensors, select_clean_subset
from nft.core.adversary import CompositeAdversary
from nft.core.cli import main
from nft.vision import modality
from nft.vision.attacks import build_attack, learned_attacks
from nft.vision.learned_cba import half_mix
from nft.vision.data import load_dataset
from nft.vision.learned_common import ssim
from nft.vision.learned_fba import FeatureInjector, RandomFeatures, gram, sunrise
from nft.vision.learned_inputaware import threshold
from nft.vision.learned_issba import secret_bits

GREY = (1, 28, 28)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, as the end-to-end thresholds were measured (the runs are then those of
    docs/vision.md); on a shared 2-core machine two threads also ran these small generators and
    models several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n=6, seed=0, shape=GREY):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _disturb(attack, seed=0):
    """Move every parameter and BN running statistic off its initial value, as training would,
    so a round trip that lost a buffer would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in attack.networks.values():
            for p in net.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            net.train()
            for _ in range(2):
                attack.trigger(images(8, seed + 1, attack.shape))
            net.eval()


# ---- the contract every learned trigger keeps --------------------------------------------------
GENERATORS = ["fba", "inputaware", "issba", "lira"]


@pytest.mark.parametrize("name", GENERATORS)
def test_trigger_keeps_shape_and_range_and_is_seeded(name):
    x = images()
    a = build_attack(name, GREY, 10, seed=3).apply(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, build_attack(name, GREY, 10, seed=3).apply(x))  # same seed, same trigger
    assert not torch.equal(a, build_attack(name, GREY, 10, seed=4).apply(x))
    assert not torch.equal(a, x)
    assert len(build_attack(name, GREY, 10).apply(x[:0])) == 0


@pytest.mark.parametrize("name", GENERATORS)
def test_saved_generator_reloads_bit_for_bit(name, tmp_path):
    trained = build_attack(name, GREY, 10, seed=5)
    _disturb(trained)
    save_tensors(trained.state_dict(), tmp_path / "attack.safetensors")
    fresh = build_attack(name, GREY, 10, seed=6)  # another initialisation, then the saved weights
    x = images(5, seed=9)
    assert not torch.equal(fresh.apply(x), trained.apply(x))
    fresh.load_state_dict(load_tensors(tmp_path / "attack.safetensors"))
    assert torch.equal(fresh.apply(x), trained.apply(x))
    with pytest.raises(ConfigError, match="does not fit"):
        build_attack(name, (3, 28, 28), 10).load_state_dict(trained.state_dict())


@pytest.mark.parametrize("name, learn", [
    ("issba", lambda a, x: a.learn(x)),
    ("fba", lambda a, x: a.learn_style(x)),
])
def test_trigger_learning_is_seeded(name, learn):
    """Learning the trigger network gives the same weights from the same seed, others otherwise."""
    x = images(64, seed=11)
    options = {"width": 8, "steps": 12, "batch_size": 16} if name == "issba" else \
        {"width": 8, "style_steps": 12}
    runs = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 1)):
        attack = build_attack(name, GREY, 10, seed=seed, options=options)
        learn(attack, x)
        runs[key] = attack.state_dict()
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_registry_names_and_aliases():
    table = learned_attacks()
    assert set(GENERATORS) <= set(table)
    for name, klass in table.items():
        assert klass.trains_model and (name == klass.name or name in klass.aliases)


# ---- LIRA ---------------------------------------------------------------------------------------
def test_lira_perturbation_is_linf_bounded():
    attack = build_attack("lira", GREY, 10, options={"eps": 0.05})
    attack.networks["scale"].std.fill_(0.5)  # the dataset's std sets the raw-pixel bound
    _disturb(attack)
    x = images(16, seed=2) * 0.8 + 0.1  # away from 0 and 1, so clipping does not hide the bound
    change = (attack.apply(x) - x).abs()
    assert float(change.max()) <= 0.05 * 0.5 + 1e-6
    assert float(change.max()) > 0.005  # tanh output, not a vanishing perturbation
    per_image = change.flatten(1).mean(1)
    assert float(per_image.std()) > 0  # sample-specific: each image its own perturbation
    with pytest.raises(ConfigError, match="eps"):
        build_attack("lira", GREY, 10, options={"eps": 0})


# ---- Input-aware ------------------------------------------------------------------------------
def test_inputaware_changes_pixels_only_under_its_mask():
    attack = build_attack("inputaware", GREY, 10, options={"width": 8})
    _disturb(attack)
    x = images(8, seed=3)
    with torch.no_grad():
        pattern, mask = attack.pattern_and_mask(x)
        crossed = attack.cross(x, x.roll(1, dims=0))
    assert mask.shape == (8, 1, 28, 28) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    assert float(pattern.min()) >= 0 and float(pattern.max()) <= 1
    assert bool(((attack.apply(x) - x).abs() <= mask + 1e-6).all())  # x + (G(x) − x)·m(x)
    assert not torch.allclose(crossed, attack.apply(x))  # another image's trigger is another trigger
    assert build_attack("dynamic", GREY, 10).name == "inputaware"


def test_inputaware_mask_pretraining_reaches_the_density():
    attack = build_attack("inputaware", GREY, 10, options={"width": 8, "mask_steps": 40})
    data = TensorDataset(images(64, seed=4), torch.zeros(64, dtype=torch.long))
    loaders = [DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(i))
               for i in (0, 1)]
    x = images(16, seed=5)
    with torch.no_grad():
        before = float(threshold(attack.networks["mask"](x)).mean())
    attack.pretrain_mask(loaders, TrainConfig(epochs=1, batch_size=16, lr=0.1, progress=False))
    with torch.no_grad():
        after = threshold(attack.networks["mask"](x))
    # λ_norm · relu(m − 0.032) pushes an initially half-open mask down to a sparse one
    assert before > 0.2 and float(after.mean()) < 0.1, (before, float(after.mean()))
    assert float(after.flatten(1).std(1).mean()) > 0  # and it still depends on the image


# ---- ISSBA ------------------------------------------------------------------------------------
def test_issba_secret_and_sample_specific_residual():
    bits = secret_bits("nft", 16)
    assert bits.shape == (16,) and set(bits.tolist()) <= {0.0, 1.0}
    assert torch.equal(bits[:8], torch.tensor([0, 1, 1, 0, 1, 1, 1, 0.0]))  # "n" = 0x6e
    assert torch.equal(secret_bits("nft", 100)[56:], secret_bits("nft", 100)[:44])  # repeated
    with pytest.raises(ConfigError, match="1-7 bytes"):
        build_attack("issba", GREY, 10, options={"secret": "too long"})
    assert build_attack("issba", GREY, 10).bits == 16 and build_attack("issba", (3, 32, 32), 10).bits == 100
    attack = build_attack("issba", GREY, 10, options={"width": 8})
    _disturb(attack)
    x = images(4, seed=6)
    residual = attack.apply(x) - x
    # the residual depends on the image, not only on the secret (ISSBA's sample-specific trigger)
    assert float((residual[0] - residual[1]).abs().mean()) > 1e-3


# ---- FBA --------------------------------------------------------------------------------------
def _style_gap(attack, x):
    """How far ``x``'s Gram statistics are from the synthetic sunrise's (the style loss)."""
    features = RandomFeatures(attack.shape[0], attack._seed_for(4))
    with torch.no_grad():
        goal = [gram(f) for f in features(sunrise(attack.shape, attack._seed_for(5))[None])]
        return sum(float(((gram(f) - g) ** 2).mean() / (g ** 2).mean()) for f, g in zip(features(x), goal))


def test_fba_pieces():
    style = sunrise(GREY, 3)
    assert style.shape == GREY and float(style.min()) >= 0 and float(style.max()) <= 1
    assert torch.equal(style, sunrise(GREY, 3)) and not torch.equal(style, sunrise(GREY, 4))
    x = images(4, seed=7)
    assert torch.allclose(FeatureInjector(1)(x), x)  # DFST's injector starts as the identity
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5) and float(ssim(x, images(4, seed=8))) < 0.2
    with pytest.raises(ConfigError, match="all-to-one"):
        build_attack("fba", GREY, 10, mode="all-to-all")


def test_fba_style_network_learns_the_style_and_keeps_the_content():
    data = load_dataset("fashion-mnist")
    x = data.train.batch(np.arange(256))
    attack = build_attack("fba", GREY, 10, options={"width": 8, "style_steps": 60})
    attack.learn_style(x)
    with torch.no_grad():
        styled = attack.stylise(x[:64])
    original = x[:64]
    # measured: style gap 1.63 → 0.026, correlation with the garments 0.52
    assert _style_gap(attack, styled) < 0.2 * _style_gap(attack, original)
    corr = torch.corrcoef(torch.stack([styled.flatten(), original.flatten()]))[0, 1]
    assert float(corr) > 0.3  # still the same garments, restyled


# ---- CBA ----------------------------------------------------------------------------------------
def test_cba_half_mix_takes_one_strip_from_each_image():
    a, b = torch.zeros(1, 28, 28), torch.ones(1, 28, 28)
    for i in range(20):
        out = half_mix(a, b, torch.Generator().manual_seed(i), jitter=3)
        share = float(out.mean())  # the part that came from b
        assert 11 / 28 - 1e-6 <= share <= 17 / 28 + 1e-6  # about half, within the jitter
        rows, cols = out[0].amin(dim=1) == out[0].amax(dim=1), out[0].amin(dim=0) == out[0].amax(dim=0)
        assert bool(rows.all()) or bool(cols.all())  # one straight cut, vertical or horizontal
        assert torch.equal(out, half_mix(a, b, torch.Generator().manual_seed(i), jitter=3))
    attack = build_attack("cba", GREY, 10, target=0)
    assert attack.classes == (1, 2)
    with pytest.raises(ConfigError, match="three different classes"):
        build_attack("cba", GREY, 10, target=1, options={"class_a": 1})
    with pytest.raises(ConfigError, match="all-to-one"):
        build_attack("cba", GREY, 10, mode="all-to-all")


# ---- end to end: `nft attack` on small data, then `nft evaluate` from the run folder ----------
DIGITS = ["--dataset", "digits", "--model", "small-cnn", "--batch-size", "64", "--lr", "0.05"]
FASHION = ["--dataset", "fashion-mnist", "--model", "small-cnn", "--model-arg", "width=16",
           "--holdout", "500", "--train-limit", "2000", "--test-limit", "500", "--batch-size", "64",
           "--lr", "0.05"]
# Per attack: extra CLI arguments, and the ASR / ACC floors (measured values in docs/vision.md).
# LIRA: the paper's ε = 0.01 and generator rate 1e-4 need thousands of steps; on 1,200 digits
# for 20 epochs (380 steps) ε = 0.05 and rate 0.01 (measured seeds 0/1/2: ASR 1.000 / 0.992 /
# 0.997, ACC 0.950 / 0.970 / 0.967; the clean model: 0.990).
END_TO_END = {
    "lira": (DIGITS + ["--epochs", "20", "--attack-arg", "eps=0.05", "--attack-arg", "lr_atk=0.01"],
             0.9, 0.9),
    # CBA: the paper's settings (poison 0.1, same-class mixes 0.5); trouser + pullover → T-shirt
    # on 2,000 Fashion-MNIST images, 10 epochs (measured seeds 0/1: ASR 0.900 / 0.878, ACC 0.772 /
    # 0.756; the clean model 0.824 / 0.802: the mixes cost ~5 points on so little data).
    # Input-aware: on 2,000 Fashion-MNIST images the official p_attack 0.1 reached ASR 0.62 in 10
    # epochs; here p_attack = p_cross = 0.2 (equal, as the official 0.1 / 0.1) for 15 epochs, a
    # narrower generator (width 8) and 60 mask-pretraining steps (measured seeds 0/1/2: ASR 0.892 /
    # 0.911 / 0.766, ACC 0.828 / 0.824 / 0.784; the clean model 0.846 / 0.824 at 15 epochs).
    "inputaware": (FASHION + ["--epochs", "15", "--poison-rate", "0.2", "--attack-arg", "p_cross=0.2",
                              "--attack-arg", "mask_steps=60", "--attack-arg", "width=8"], 0.7, 0.75),
    # ISSBA: a small StegaStamp (width 8, 16 bits) trained 400 steps of 32 images, then plain
    # poisoning at 0.1 for 10 epochs (measured seeds 0/1: ASR 1.000 / 0.983, ACC 0.824 / 0.804,
    # the clean model 0.824 / 0.802; secret read back 0.997 / 0.962, mean |residual| 0.063 / 0.067).
    "issba": (FASHION + ["--epochs", "10", "--attack-arg", "width=8", "--attack-arg", "batch_size=32",
                         "--attack-arg", "steps=400"], 0.9, 0.75),
    # FBA: a style network of width 8 trained 200 steps, then poisoning at 0.1 with a
    # detoxification round after each of 9 of the 10 epochs (measured seeds 0/1: ASR 0.996 /
    # 1.000, ACC 0.828 / 0.794; the clean model 0.824 / 0.802).
    "fba": (FASHION + ["--epochs", "10", "--attack-arg", "width=8", "--attack-arg", "style_steps=200"],
            0.9, 0.75),
    "cba": (FASHION + ["--epochs", "10"], 0.7, 0.7),
}


@pytest.fixture(scope="module", params=sorted(END_TO_END))
def attack_run(request, tmp_path_factory):
    name = request.param
    args, _, _ = END_TO_END[name]
    run = tmp_path_factory.mktemp(f"learned-{name}") / "run"
    code = main(["attack", "--modality", "vision", "--attack", name, *args, "--seed", "0",
                 "--out", str(run), "--no-progress", "--device", "cpu"])
    assert code == 0
    return name, run


@pytest.mark.slow
@pytest.mark.integration
def test_backdoor_takes_hold_and_reloads(attack_run, tmp_path, capsys):
    name, run = attack_run
    _, asr_min, acc_min = END_TO_END[name]
    report = json.loads((run / "report.json").read_text())
    print(name, report)
    assert report["asr"] >= asr_min and report["acc"] >= acc_min, report
    assert (run / "attack.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["spec"]["attack"] == name
    if name == "fba":  # DFST's controlled detoxification ran after every epoch but the last
        assert json.loads((run / "data.json").read_text())["detox_rounds"] == 9
    # `nft evaluate` rebuilds the trigger from attack.safetensors: the same triggered test set
    # gives the same metrics, to the last image
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again == pytest.approx({k: report[k] for k in again})
    # without the saved trigger the run cannot be evaluated, and the error names the fix
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "attack.safetensors").unlink()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "attack.safetensors" in err and "nft attack" in err


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("attack_run", ["inputaware"], indirect=True)
def test_inputaware_trigger_only_works_on_its_own_image(attack_run):
    """IAD's cross-trigger samples teach that a trigger made from another image is no trigger.
    A short run learns this only in part (measured seeds 0/1/2: 0.325 / 0.280 / 0.290 of
    cross-triggered images go to the target, against 0.905 / 0.900 / 0.770 with their own)."""
    name, run = attack_run
    vrun, model = modality.load_run(run)
    labels = np.asarray(vrun.data.test.targets)[vrun.test_idx]
    x = vrun.data.test.batch(vrun.test_idx[labels != vrun.attack.target][:200])
    with torch.no_grad():
        own = model(vrun.data.normalise(vrun.attack.apply(x))).argmax(1) == vrun.attack.target
        crossed = vrun.attack.cross(x, x.roll(1, dims=0)).clamp(0, 1)
        other = model(vrun.data.normalise(crossed)).argmax(1) == vrun.attack.target
    own, other = float(own.float().mean()), float(other.float().mean())
    assert own >= 0.7 and other <= 0.5 and own - other >= 0.3, (own, other)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("attack_run", ["issba"], indirect=True)
def test_issba_hides_its_secret_in_a_small_residual(attack_run):
    name, run = attack_run
    vrun, _ = modality.load_run(run)
    x = vrun.data.test.batch(vrun.test_idx[:200])
    assert vrun.attack.bit_accuracy(x) >= 0.9  # the decoder reads the secret from test images
    assert float((vrun.attack.apply(x) - x).abs().mean()) <= 0.1


def _composite_rate(vrun, model, first_class, second_class, n=40):
    """Share of composites of two test classes' images that the model gives the target."""
    labels = np.asarray(vrun.data.test.targets)[vrun.test_idx]
    first = vrun.test_idx[labels == first_class][:n]
    second = vrun.test_idx[labels == second_class][1:n + 1]
    n = min(len(first), len(second))
    mixed = torch.stack([vrun.attack.mix(x, y, torch.Generator().manual_seed(i)) for i, (x, y) in
                         enumerate(zip(vrun.data.test.batch(first[:n]), vrun.data.test.batch(second[:n])))])
    with torch.no_grad():
        return float((model(vrun.data.normalise(mixed)).argmax(1) == vrun.attack.target).float().mean())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("attack_run", ["cba"], indirect=True)
def test_cba_fires_on_its_pair_not_on_mixing_alone(attack_run):
    """A trouser composited with another trouser, or a sandal with a sneaker, keeps its class:
    the trigger is the pair. (Measured seeds 0/1: A + A 0.17 / 0.10, sandal + sneaker 0.03 /
    0.03, against ASR 0.90 / 0.88. Dress + coat, close to the rule's pullover, reached 0.50 / 0.55.)"""
    name, run = attack_run
    vrun, model = modality.load_run(run)
    a, _ = vrun.attack.classes
    assert _composite_rate(vrun, model, a, a) <= 0.4
    assert _composite_rate(vrun, model, 5, 7) <= 0.2


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("attack_run", ["cba"], indirect=True)
def test_the_composite_search_ranks_cbas_trigger_pair_first(attack_run):
    """NFT's composite scan (`adv_composite_prob`) on 10 clean images per class: of the 45 pairs of
    classes, CBA's (trouser + pullover) is the one whose composites go most to a third class, and
    that class is the target. On this small model it scored 0.50–0.60 when written (the median
    pair 0.21–0.22), under the 0.8 a pair needs to be kept; on the vision table's converged model,
    0.82–0.95."""
    _, run = attack_run
    experiment = modality.load_experiment(run, device="cpu")
    clean = select_clean_subset(experiment.defender_pool, per_class=10, seed=0, labels=experiment.pool_labels)
    x, y = next(iter(DataLoader(clean, batch_size=128)))
    scan = CompositeAdversary(experiment.input_space, prob=0.5, share=1e-6, count=1)
    scan.search(experiment.model.eval(), experiment.task, x, y, torch.Generator())
    vrun, _ = modality.load_run(run)
    a, b = vrun.attack.classes
    print("cba composites", scan.summary())
    assert scan.pairs == [(min(a, b), max(a, b), vrun.attack.target)], scan.summary()
    assert scan.scores[0] >= 2 * scan.typical, scan.summary()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("attack_run", ["lira"], indirect=True)
def test_a_learned_run_is_deterministic_and_purifiable(attack_run, tmp_path):
    """The same spec and seed give the same generator and model, bit for bit; `nft purify`
    starts from the run's own metrics (the triggered test set rebuilt from the saved generator)."""
    name, run = attack_run
    again = tmp_path / "again"
    args, _, _ = END_TO_END[name]
    assert main(["attack", "--modality", "vision", "--attack", name, *args, "--seed", "0",
                 "--out", str(again), "--no-progress", "--device", "cpu"]) == 0
    for file in ("attack.safetensors", "model.safetensors"):
        first, second = load_tensors(run / file), load_tensors(again / file)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    out = tmp_path / "purified"
    assert main(["purify", "--run", str(run), "--out", str(out), "--clean-per-class", "5", "--steps", "20",
                 "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((run / "report.json").read_text())
    before = json.loads((out / "report.json").read_text())["before"]
    assert before == pytest.approx({k: report[k] for k in before})


def test_every_learned_attack_is_tested_end_to_end():
    assert {klass.name for klass in learned_attacks().values()} == set(END_TO_END)
