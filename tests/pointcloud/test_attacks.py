"""The four triggers: what each does to a cloud, and that each one plants a backdoor."""

import json

import pytest
import torch

from nft.core import AttackSpec, ConfigError, RunFolder, TrainConfig, train_model
from nft.pointcloud import IRBA, PCBA, PointBAI, PointBAO, PointNet, Shapes, modality

N = 64


def _pairwise(p):
    return ((p[:, None] - p[None]) ** 2).sum(-1).sqrt()  # exact (cdist's matmul form is not)


@pytest.fixture(scope="module")
def clouds():
    return Shapes(40, num_points=N, seed=0)


def test_pointba_i_places_a_fixed_ball(clouds):
    trig = PointBAI(N, points=8, radius=0.05, center=(0.6, 0.6, 0.6))
    out = trig(clouds.points[0])
    changed = (out != clouds.points[0]).any(dim=1)
    assert out.shape == (N, 3) and int(changed.sum()) == 8
    d = (out[changed] - torch.tensor([0.6, 0.6, 0.6])).norm(dim=1)
    assert torch.allclose(d, torch.full((8,), 0.05), atol=1e-5)
    assert torch.equal(trig(clouds.points[0]), out)  # deterministic
    assert torch.equal(changed, (trig(clouds.points[1]) != clouds.points[1]).any(dim=1))  # same slots
    with pytest.raises(ConfigError, match="does not fit"):
        PointBAI(N, points=N)


def test_pointba_o_is_a_fixed_rigid_rotation(clouds):
    trig = PointBAO(N, angles=(30, 0, 0))
    p = clouds.points[3]
    out = trig(p)
    torch.testing.assert_close(_pairwise(out), _pairwise(p), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mean(0), p.mean(0), atol=1e-6, rtol=0)
    assert float((out - p).abs().max()) > 0.05
    assert PointBAO(N, clean_label=True).clean_label and not trig.clean_label


def test_irba_is_a_smooth_non_rigid_warp(clouds):
    trig = IRBA(N)
    p = clouds.points[5]
    out = trig(p)
    assert out.shape == p.shape and torch.equal(trig(p), out)
    assert torch.allclose(out.norm(dim=1).max(), torch.tensor(1.0), atol=1e-5)  # re-normalised
    shift = (out - p).norm(dim=1)
    assert 0.005 < float(shift.mean()) < 0.5  # visible to a model, small next to the object
    distortion = (_pairwise(out) - _pairwise(p)).abs().max()
    assert float(distortion) > 1e-3  # not a rigid motion


def test_pcba_search_raises_the_target_posterior():
    data = Shapes(200, num_points=N, seed=7)
    surrogate = PointNet(num_classes=10, width=8)
    train_model(surrogate, data, TrainConfig(epochs=6, batch_size=32, lr=0.05, progress=False))
    trig = PCBA(N, restarts=2, steps=80, target_posterior=0.3, convergence=30)
    trig.prepare(surrogate, data.points, data.targets, target=0, seed=0)
    assert 0.01 <= trig.radius < 0.5
    source = data.points[data.targets != 0][:40]
    with torch.no_grad():
        post = surrogate.eval()(torch.stack([trig(p) for p in source])).softmax(-1)[:, 0].mean()
        clean = surrogate(source).softmax(-1)[:, 0].mean()
    assert float(post) > 0.2 and float(post) > 5 * float(clean)  # the cluster pulls towards the target
    state = trig.state()
    other = PCBA(N)
    other.load_state(state)
    assert torch.equal(other(source[0]), trig(source[0]))


def test_pcba_trigger_does_not_depend_on_the_victim_model(tmp_path):
    """One attack seed, one PCBA trigger: the attacker's surrogate is seeded before it is built,
    so the victim initialised before it (DGCNN draws more from the global RNG than PointNet)
    cannot change it. It did: the docs' table once had PointNet's trigger centred at
    (-0.67, 0.33, -0.80) and DGCNN's at (1.51, -1.35, -1.35) from the same seed."""
    args = {"restarts": 1, "steps": 30, "target_posterior": 0.2, "convergence": 10,
            "surrogate_epochs": 1, "attacker_samples": 100}
    centres = {}
    for victim in ("pointnet", "dgcnn"):
        spec = modality.resolve(AttackSpec(
            attack="pcba", model=victim, epochs=1, train_limit=80, holdout=20, test_limit=20,
            progress=False, attack_args=args, model_args={"width": 4, "num_points": N}))
        with RunFolder(tmp_path / victim) as run:
            modality.train_backdoor(spec, run)
        centres[victim] = json.loads((tmp_path / victim / "trigger.json").read_text())["center"]
    assert centres["pointnet"] == centres["dgcnn"]


@pytest.mark.parametrize("attack", ["pointba-i", "pointba-o", "pcba", "irba"])
def test_each_attack_plants_a_backdoor(attack, tmp_path):
    args = {"pcba": {"restarts": 2, "steps": 80, "target_posterior": 0.3, "convergence": 30,
                     "surrogate_epochs": 6, "attacker_samples": 200}}.get(attack, {})
    # IRBA's smooth warp is the hardest trigger to learn (78.7% ASR at a 10% rate in the
    # docs' table): poison 20% so this small, short run takes it reliably
    rate = 0.2 if attack == "irba" else 0.1
    # 20 epochs: at 12, PointBA-O's backdoor reached 83-86 % ASR depending on the CPU and thread
    # count, at the bar; at 20, 95 % with one thread or two (IRBA keeps the 12 it was measured at)
    epochs = 12 if attack == "irba" else 20
    spec = modality.resolve(AttackSpec(
        attack=attack, model="pointnet", epochs=epochs, train_limit=500, holdout=50, test_limit=200,
        poison_rate=rate, progress=False, attack_args=args, model_args={"width": 8, "num_points": N}))
    with RunFolder(tmp_path / "run") as run:
        metrics = modality.train_backdoor(spec, run)
        run.write_json("config.json", {"kind": "attack", "modality": "pointcloud", "spec": spec.to_dict()})
    # IRBA on 450 clouds of 64 points: 72% ASR measured (63-79% over rates 0.2-0.3 and 12-20
    # epochs, accuracy 72%), far above the ~10% of clean predictions that land on the target anyway
    assert metrics["asr"] >= (0.6 if attack == "irba" else 0.85), metrics
    assert metrics["acc"] >= (0.65 if attack == "irba" else 0.8), metrics
    experiment = modality.load_experiment(tmp_path / "run")  # the run folder rebuilds the same model
    again = experiment.evaluate(experiment.model)
    assert again == pytest.approx(metrics)
