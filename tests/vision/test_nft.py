"""NFT removes a BadNets backdoor from a small converged PreActResNet-18 on Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch

from nft.core import AttackSpec, PurifyConfig, RunFolder, purify, select_clean_subset
from nft.vision import modality


@pytest.mark.slow
def test_nft_removes_badnets(tmp_path):
    spec = modality.resolve(AttackSpec(
        dataset="fashion-mnist", model="preactresnet18", model_args={"width": 8}, attack="badnets",
        epochs=10, batch_size=64, lr=0.05, holdout=1000, train_limit=5000, test_limit=1000,
        progress=False, device="cpu"))
    with RunFolder(tmp_path / "run") as run:
        backdoored = modality.train_backdoor(spec, run)
    assert backdoored["asr"] > 0.9 and backdoored["acc"] > 0.82

    experiment = modality.load_experiment(tmp_path / "run", device="cpu")
    clean = select_clean_subset(experiment.defender_pool, per_class=10, seed=0,
                                labels=experiment.pool_labels)
    # The shipped NFT recipe (MixUp, regulariser, depth clamp, frozen BN statistics) with the
    # modality's masks; fewer steps than the default to stay within the test budget.
    config = PurifyConfig(steps=300, progress=False, device="cpu", masks=experiment.mask_config)
    torch.manual_seed(0)
    result = purify(experiment.model, clean, config, task=experiment.task,
                    input_space=experiment.input_space)
    after = experiment.evaluate(result.model)
    print("before", backdoored, "after", after)
    assert len(result.masks) == 16
    # Measured: ACC 0.829 -> 0.769, ASR 0.948 -> 0.362 (docs/vision.md). A model this small and
    # briefly trained is purified less cleanly than a converged one, and 300 steps is under a third
    # of the default; the test checks that the backdoor is more than halved at a bounded cost.
    assert after["asr"] <= 0.5 * backdoored["asr"], (backdoored, after)
    assert after["acc"] >= backdoored["acc"] - 0.10, (backdoored, after)
