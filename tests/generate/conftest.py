"""Generation tests run tiny models: one thread is faster than two there (and far faster when the
cores are shared), so each test here runs single-threaded and restores the setting after."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
