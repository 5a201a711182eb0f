"""Clean-subset selection, metrics, safe file loading and run folders."""

import io
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from nft.core import (
    ConfigError, DataError, RunFolder, TriggeredDataset, UnsafeFileError, attack_target,
    choose_poison_indices, dataset_labels, defense_effectiveness_rating, evaluate_classification,
    load_model_weights, load_tensors, save_tensors, select_clean_subset,
)


def _labelled(n=100, classes=5):
    return TensorDataset(torch.rand(n, 2), torch.arange(n) % classes)


def test_per_class_selection_is_balanced_and_seeded():
    data = _labelled()
    a = select_clean_subset(data, per_class=3, seed=1)
    b = select_clean_subset(data, per_class=3, seed=1)
    c = select_clean_subset(data, per_class=3, seed=2)
    assert a.indices == b.indices != c.indices
    assert np.bincount(dataset_labels(a)).tolist() == [3] * 5
    one_shot = select_clean_subset(data, per_class=1)
    assert sorted(dataset_labels(one_shot).tolist()) == [0, 1, 2, 3, 4]


def test_fraction_and_count_selection():
    data = _labelled()
    assert len(select_clean_subset(data, fraction=0.05)) == 5
    assert len(select_clean_subset(data, count=17)) == 17


def test_selection_errors():
    data = _labelled(12, classes=5)  # classes 0, 1 have 3 samples; others 2
    with pytest.raises(DataError, match="class 2 has only 2 samples"):
        select_clean_subset(data, per_class=3)
    with pytest.raises(DataError, match="exactly one"):
        select_clean_subset(data, per_class=1, count=3)
    with pytest.raises(DataError, match="empty"):
        select_clean_subset(Subset(data, []), count=1)
    with pytest.raises(DataError, match="fraction"):
        select_clean_subset(data, fraction=1.5)


def test_labels_come_from_attributes_or_iteration():
    class NoAttr(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1), 3 - i

    assert dataset_labels(NoAttr()).tolist() == [3, 2, 1, 0]
    assert dataset_labels(Subset(NoAttr(), [1, 3])).tolist() == [2, 0]


def test_poison_indices_and_targets():
    labels = np.arange(100) % 10
    idx = choose_poison_indices(labels, rate=0.1, seed=0, mode="all-to-one", target=0)
    assert len(idx) == 9 and (labels[idx] != 0).all()
    assert np.array_equal(idx, choose_poison_indices(labels, rate=0.1, seed=0, mode="all-to-one", target=0))
    clean_label = choose_poison_indices(labels, rate=0.5, seed=0, mode="all-to-one", target=3, clean_label=True)
    assert (labels[clean_label] == 3).all() and len(clean_label) == 5
    assert attack_target(9, mode="all-to-all", target=0, num_classes=10) == 0
    assert attack_target(4, mode="all-to-one", target=2, num_classes=10) == 2
    with pytest.raises(ConfigError, match="mode"):
        attack_target(1, mode="one-to-one", target=0, num_classes=10)


class _Echo(nn.Module):
    """Predicts the class written in the input's first feature."""

    def __init__(self, classes=3):
        super().__init__()
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0].long(), self.classes).float() + 0 * self.dummy


def test_acc_asr_ra_on_a_known_model():
    clean = TensorDataset(torch.tensor([[0.0], [1.0], [2.0], [2.0]]), torch.tensor([0, 1, 2, 1]))
    base = TensorDataset(torch.tensor([[1.0], [2.0], [0.0], [1.0]]), torch.tensor([1, 2, 0, 1]))
    # the "trigger" sends class 2 inputs to 0 and leaves others alone; target is 0
    trig = TriggeredDataset(base, np.array([1, 2, 0, 1]),
                            lambda x, i: torch.zeros_like(x) if i == 1 else x, lambda y: 0)
    assert len(trig) == 3  # the target-class sample is excluded
    out = evaluate_classification(_Echo(), clean, trig, device="cpu")
    assert out == {"acc": 0.75, "asr": pytest.approx(1 / 3), "ra": pytest.approx(2 / 3)}


def test_der():
    assert defense_effectiveness_rating({"acc": 0.9, "asr": 1.0}, {"acc": 0.88, "asr": 0.0}) == pytest.approx(0.99)
    assert defense_effectiveness_rating({"acc": 0.9, "asr": 0.1}, {"acc": 0.95, "asr": 0.2}) == pytest.approx(0.5)


def test_tensor_files_round_trip_and_refuse_code(tmp_path):
    model = nn.Linear(3, 2)
    save_tensors(model.state_dict(), tmp_path / "m.safetensors")
    other = load_model_weights(nn.Linear(3, 2), tmp_path / "m.safetensors")
    assert torch.equal(other.weight, model.weight)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert torch.equal(load_tensors(tmp_path / "m.pt")["weight"], model.weight)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"weight": Evil()}))
    with pytest.raises(UnsafeFileError, match="never unpickles code"):
        load_tensors(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(UnsafeFileError, match="not a valid safetensors"):
        load_tensors(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        load_tensors(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="does not fit"):
        load_model_weights(nn.Linear(4, 2), tmp_path / "m.safetensors")
    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(1), "note": "text"}, buffer)
    (tmp_path / "mixed.pt").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeFileError, match="state_dict of tensors"):
        load_tensors(tmp_path / "mixed.pt")


def test_run_folder_is_all_or_nothing(tmp_path):
    with RunFolder(tmp_path / "ok") as run:
        run.write_json("report.json", {"acc": 1.0})
        assert not (tmp_path / "ok").exists()
    assert (tmp_path / "ok" / "report.json").is_file()
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path / "failed") as run:
            run.write_json("report.json", {})
            raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ok"]
    with pytest.raises(ConfigError, match="already exists"):
        RunFolder(tmp_path / "ok")


def test_replace_marked_block_keeps_the_prose_around_the_table(tmp_path):
    from nft.core.errors import ConfigError
    from nft.core.io import replace_marked_block

    guide = tmp_path / "guide.md"
    guide.write_text("intro\n<!-- t:start -->\nold\n<!-- t:end -->\noutro\n")
    replace_marked_block(guide, "<!-- t:start -->", "<!-- t:end -->", "| new |\n")
    assert guide.read_text() == "intro\n<!-- t:start -->\n| new |\n<!-- t:end -->\noutro\n"
    fresh = tmp_path / "fresh.md"
    replace_marked_block(fresh, "<a>", "<b>", "x\n")
    assert fresh.read_text() == "<a>\nx\n<b>\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    with pytest.raises(ConfigError, match="no <a> … <b> block"):
        replace_marked_block(plain, "<a>", "<b>", "x\n")
    assert plain.read_text() == "no markers\n"
