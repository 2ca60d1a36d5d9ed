"""Fixtures every test folder may use."""

import pytest


@pytest.fixture
def one_torch_thread():
    """The test machine's cores are shared; one thread is the fastest there for a few slices."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
