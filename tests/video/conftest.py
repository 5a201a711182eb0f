"""Fixtures of the video tests: a small motion set generated once per session into a temp cache."""

from __future__ import annotations

import os

import pytest

from nft.video.motion import MotionConfig

SMALL = {"motion_train_per_class": 40, "motion_test_per_class": 15, "motion_classes": 4}
"""Model options that make ``nft attack`` use a small motion set: the first four motions
(right, left, down, up), 160 training and 60 test videos."""


@pytest.fixture(scope="session")
def video_cache(tmp_path_factory):
    """Point the generated-data cache at a session temp folder (nothing outside it is written)."""
    folder = tmp_path_factory.mktemp("nft-cache")
    old = os.environ.get("NFT_CACHE_DIR")
    os.environ["NFT_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("NFT_CACHE_DIR", None)
    else:
        os.environ["NFT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def small_motion(video_cache):
    return MotionConfig(train_per_class=SMALL["motion_train_per_class"],
                        test_per_class=SMALL["motion_test_per_class"], classes=SMALL["motion_classes"])


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread for the video tests: on a shared 2-core machine, OpenMP threads that
    wait for a busy core make small 3D convolutions and grid sampling many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
