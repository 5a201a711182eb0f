"""`nft bench` runs the segmentation modality through the same two methods as any other."""

import json

import pytest

from nft.core.bench import bench_config_from_dict, run_bench

pytestmark = pytest.mark.integration


def test_a_segmentation_grid_runs_and_tabulates_miou(tmp_path):
    config = bench_config_from_dict({
        "name": "seg-tiny", "modality": "segmentation", "seeds": [0],
        "attack_defaults": {"epochs": 2, "train_limit": 300, "test_limit": 60, "holdout": 100,
                            "model_args": {"width": 4}, "poison_rate": 0.1},
        "attacks": ["hidden-seg", "badnets-seg"],
        "defenses": [{"method": "nft", "defense": {"steps": 6, "batch_size": 8, "rounds": 2}},
                     {"method": "ft", "defense": {"steps": 4, "batch_size": 8}}],
        "clean_budgets": [{"count": 20}],
    })
    records = run_bench(config, tmp_path / "out", progress=False)
    assert len(records) == 2 * 2
    assert {r["primary_metric"] for r in records} == {"miou"}
    assert {r["attack"] for r in records} == {"hidden-seg", "badnets-seg"}
    for r in records:
        assert set(r["before"]) == set(r["after"]) == {"miou", "asr", "ra"} and r["clean_samples"] == 20
    assert "MIOU" in (tmp_path / "out" / "table.md").read_text()
    models = sorted((tmp_path / "out" / "models").iterdir())
    assert len(models) == 2
    assert json.loads((models[0] / "config.json").read_text())["modality"] == "segmentation"
