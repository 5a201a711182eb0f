"""Shared test settings: small thread count, deterministic algorithms where cheap."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace the clock ``purify()`` times a defense with, by one that advances 2.5 s per
    reading: a test can then check that ``seconds`` is the time around the defense run (two
    readings) without asserting anything about wall-clock time."""
    import types

    from nft.core import api

    readings = iter(range(1000))
    monkeypatch.setattr(api, "time", types.SimpleNamespace(perf_counter=lambda: 2.5 * next(readings)))
    return 2.5
