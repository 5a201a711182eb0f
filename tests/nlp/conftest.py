"""nlp tests: one intra-op thread (the models are tiny, so a second thread only adds
synchronisation), restored afterwards for the other test folders."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
