"""The core's training recipe: the one-cycle SGD step every training loop goes through."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nft.core import NonFiniteLossError, OneCycleSGD, TrainConfig, train_model
from nft.core.training import one_cycle


def test_one_cycle_warms_up_then_decays_to_zero():
    rates = [one_cycle(step, 100, 0.1) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert rates[-1] < 0.01


def test_extra_optimisers_follow_the_classifiers_schedule_from_their_own_rate():
    model, generator = nn.Linear(3, 2), nn.Linear(3, 3)
    extra = torch.optim.Adam(generator.parameters(), lr=0.01)
    config = TrainConfig(epochs=1, lr=0.5, warmup=0.25, progress=False)
    sgd = OneCycleSGD(model.parameters(), config, total=8, extras=[extra])
    x = torch.randn(4, 3)
    seen = []
    for _ in range(8):
        sgd.update(model(generator(x)).pow(2).mean())
        seen.append((sgd.optimizer.param_groups[0]["lr"], extra.param_groups[0]["lr"]))
    for step, (lr, extra_lr) in enumerate(seen):
        factor = one_cycle(step, 8, 0.25)
        assert lr == pytest.approx(0.5 * factor) and extra_lr == pytest.approx(0.01 * factor)
    assert sgd.count == 8


def test_a_non_finite_loss_stops_before_any_weight_changes():
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    sgd = OneCycleSGD(model.parameters(), TrainConfig(lr=0.1, progress=False), total=4, desc="attack")
    loss = model(torch.randn(2, 3)).sum() * float("nan")
    with pytest.raises(NonFiniteLossError, match=r"attack loss became nan at step 0; lower the learning rate"):
        sgd.update(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_train_model_fits_a_separable_problem_and_reports_divergence():
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(2, 2)
    train_model(model, TensorDataset(x, y), TrainConfig(epochs=5, batch_size=32, lr=0.1, progress=False))
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    with pytest.raises(NonFiniteLossError, match="training loss became"):
        train_model(nn.Linear(2, 2), TensorDataset(x * 1e30, y),
                    TrainConfig(epochs=1, batch_size=32, lr=1e30, progress=False))
