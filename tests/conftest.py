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
    """Replace the clock ``purify()`` times a defense with one that counts its readings: a test
    can then check that the defense run is timed by one span (two readings, retries included)
    without asserting anything about time."""
    import types

    from nft.core import api

    clock = types.SimpleNamespace(readings=0)

    def perf_counter() -> float:
        clock.readings += 1
        return float(clock.readings)

    monkeypatch.setattr(api, "time", types.SimpleNamespace(perf_counter=perf_counter))
    return clock
