"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # Every model in the suite is tiny: a second intra-op thread only adds contention, and on a
    # busy 2-core machine two threads per process measured 8-20x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
