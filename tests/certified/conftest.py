"""Fixtures shared by the certified-removal tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one thread: its problems are tiny, so one thread is fastest, and the
    2-core test machine is shared (OpenMP workers fighting over it make small kernels 10-40x
    slower); forked children (crash tests) inherit it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
