"""The purification loop's searched patterns (patches, gratings, composites, a modality's own) share one life:
searched once on the first batch, recorded every round, kept fixed, saved with the loop state
and resumed from it; without the modality's input space the option is refused with its fix."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from nft.core import PurifyConfig
from nft.core.defenses.base import InputSpace
from nft.core.errors import ConfigError
from nft.core.metrics import report_markdown
from nft.core.purify import Purifier

from .toy_models import CNNBatchNorm

# settings under which an untrained network keeps something: every rule at its loosest
SEARCHES = {
    "patches": ("adv_patch_prob", "adv_patches",
                dict(adv_patch_size=0.25, adv_patch_count=2, adv_patch_ratio=1.0)),
    "gratings": ("adv_wave_prob", "adv_waves",
                 dict(adv_wave_amplitude=0.5, adv_wave_share=0.01, adv_wave_ratio=1.0)),
    "composites": ("adv_composite_prob", "adv_composites",
                   dict(adv_composite_share=0.01, adv_composite_ratio=1.0)),
}


def _same_state(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(first[k], second[k]) if isinstance(first[k], torch.Tensor) else first[k] == second[k]
        for k in first)


@pytest.mark.parametrize("name", list(SEARCHES))
def test_the_purifier_searches_once_records_the_findings_and_resumes_with_them(name, tmp_path):
    option, key, loosest = SEARCHES[name]
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(40, 3, 8, 8), torch.arange(40) % 4)  # 10 per class: composites need 8
    space = InputSpace(shape=(3, 8, 8), lower=0.0, upper=1.0)
    config = PurifyConfig(steps=6, rounds=2, batch_size=40, distill_weight=0.0, device="cpu",
                          **{option: 0.5, **loosest})
    purifier = Purifier(CNNBatchNorm(), data, config, input_space=space)
    assert [search for search in (purifier.patches, purifier.gratings, purifier.composites)
            if search is not None] == [getattr(purifier, name)]  # only the one asked for
    purifier.step()
    search = getattr(purifier, name)
    assert search.searched and search.active
    found = search.state_dict()
    kept = len(search.summary()[key])
    purifier.save_state(tmp_path / "state.pt")
    purifier.run()
    assert _same_state(search.state_dict(), found)  # searched once, then fixed
    assert [len(entry[key]) for entry in purifier.history] == [kept] * 2
    report = report_markdown({"method": "nft", "before": {"acc": 0.5}, "after": {"acc": 0.5},
                              "history": purifier.history})
    items = ", ".join(str(item) for item in search.summary()[key]) or "none stood out"
    assert f"- `{key}` ({kept} kept; median candidate " in report and report.rstrip().endswith(items)
    resumed = Purifier(CNNBatchNorm(), data, config, input_space=space)
    resumed.load_state(tmp_path / "state.pt")
    assert getattr(resumed, name).searched and _same_state(getattr(resumed, name).state_dict(), found)
    with pytest.raises(ConfigError, match=f"needs the modality's input space.*{option}=0"):
        Purifier(CNNBatchNorm(), data, config)
    assert getattr(Purifier(CNNBatchNorm(), data, PurifyConfig(steps=2, rounds=1)), name) is None


class _ShiftSearch:
    """A modality's own search, as ``InputSpace.searches`` brings one: it "finds" the clean
    batch's mean and adds it to the stamped samples; it counts its calls."""

    def __init__(self, space: InputSpace, prob: float) -> None:
        self.space, self.prob, self.shift, self.calls = space, prob, None, {"search": 0, "perturb": 0}

    searched = property(lambda self: self.shift is not None)
    active = property(lambda self: self.searched)

    def search(self, model, task, inputs, targets, generator) -> None:
        self.calls["search"] += 1
        self.shift = inputs.mean().reshape(1)

    def perturb(self, inputs, generator):
        self.calls["perturb"] += 1
        chosen = (torch.rand(inputs.shape[0], generator=generator) < self.prob).view(-1, 1, 1, 1)
        return torch.where(chosen, inputs + self.shift, inputs)

    def summary(self) -> dict:
        return {"shift": float(self.shift)}

    def state_dict(self) -> dict:
        return {"shift": self.shift.clone()} if self.searched else {}

    def load_state_dict(self, state: dict) -> None:
        self.shift = state["shift"].clone() if state else None


def test_the_input_spaces_own_searches_run_like_the_cores(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(16, 3, 8, 8), torch.arange(16) % 4)
    space = InputSpace(shape=(3, 8, 8), searches=(_ShiftSearch,))
    config = PurifyConfig(steps=4, rounds=2, batch_size=16, distill_weight=0.0, device="cpu", adv_search_prob=0.5)
    purifier = Purifier(CNNBatchNorm(), data, config, input_space=space)
    (search,) = purifier.space_searches
    assert isinstance(search, _ShiftSearch) and search.prob == 0.5
    purifier.step()
    found = search.state_dict()
    purifier.save_state(tmp_path / "state.pt")
    purifier.run()
    assert search.calls == {"search": 1, "perturb": 4}  # searched once, stamped at every step
    assert [entry["shift"] for entry in purifier.history] == [float(found["shift"])] * 2
    resumed = Purifier(CNNBatchNorm(), data, config, input_space=space)
    resumed.load_state(tmp_path / "state.pt")
    assert torch.equal(resumed.space_searches[0].state_dict()["shift"], found["shift"])
    with pytest.raises(ConfigError, match=r"this input space .* has none; set adv_search_prob=0"):
        Purifier(CNNBatchNorm(), data, config, input_space=InputSpace(shape=(3, 8, 8)))
    with pytest.raises(ConfigError, match="needs the modality's input space.*adv_search_prob=0"):
        Purifier(CNNBatchNorm(), data, config)
    assert Purifier(CNNBatchNorm(), data, PurifyConfig(steps=2, rounds=1), input_space=space).space_searches == []


def test_a_report_names_the_searches_only_when_some_ran():
    plain = report_markdown({"method": "nft", "before": {"acc": 0.9}, "after": {"acc": 0.8},
                             "history": [{"step": 5, "loss": 1.0}]})
    assert "Searched" not in plain
    found = report_markdown({"method": "nft", "before": {"acc": 0.9}, "after": {"acc": 0.8}, "history": [
        {"step": 5, "adv_patches": [[25, 0, 13.2]], "adv_patch_typical": 0.35,
         "adv_waves": [], "adv_wave_typical": 0.24}]})
    assert "- `adv_patches` (1 kept; median candidate 0.35): [25, 0, 13.2]" in found
    assert "- `adv_waves` (0 kept; median candidate 0.24): none stood out" in found
