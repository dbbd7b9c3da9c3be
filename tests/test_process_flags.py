"""Overrides (TF32 off, one thread, native RNN kernels) under overlapping blocks.

A per-block save/restore let one thread's exit switch TF32 back on while another thread's
certified arithmetic still ran, and left the setting changed for good afterwards.
"""

import threading

import pytest
import torch

from fastunlearn._process_flags import ProcessWideOverride
from fastunlearn.certified.math import SINGLE_THREAD_ENTRIES, no_tf32, small_problem_threads
from fastunlearn.linalg.rnn_kernels import differentiable_rnn_kernels


def _interleave(block, read):
    """A enters, B enters, A leaves, B reads, B leaves: return B's reading and the final one."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with block():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second():
        a_in.wait(5)
        with block():
            b_in.set()
            a_out.wait(5)
            seen["inside"] = read()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return seen["inside"], read()


def _tf32():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_on():
    before = _tf32()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_stays_off_while_another_thread_is_inside(tf32_on):
    inside, after = _interleave(no_tf32, _tf32)
    assert inside == (False, False)
    assert after == (True, True)


def test_one_thread_per_thread_and_each_thread_gets_its_count_back(one_thread):
    # old: one process-wide count restored by the last block to leave - in that thread only
    # (torch's count belongs to each thread), so the thread that left first kept one
    # thread for good
    torch.set_num_threads(2)
    small = torch.zeros(2, 2)
    assert small.numel() <= SINGLE_THREAD_ENTRIES
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        torch.set_num_threads(3)
        with small_problem_threads(small):
            seen["a inside"] = torch.get_num_threads()
            a_in.set()
            b_in.wait(5)
            seen["a inside after b entered"] = torch.get_num_threads()
        a_out.set()
        seen["a after"] = torch.get_num_threads()

    def second():
        a_in.wait(5)
        torch.set_num_threads(2)
        with small_problem_threads(small):
            b_in.set()
            a_out.wait(5)
            seen["b inside after a left"] = torch.get_num_threads()
        seen["b after"] = torch.get_num_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"a inside": 1, "a inside after b entered": 1, "a after": 3,
                    "b inside after a left": 1, "b after": 2}
    assert torch.get_num_threads() == 2  # the caller's thread untouched


def test_native_rnn_kernels_while_another_thread_is_inside():
    lstm = torch.nn.LSTM(2, 3)
    inside, after = _interleave(lambda: differentiable_rnn_kernels(lstm),
                                lambda: (torch.backends.mkldnn.enabled,
                                         torch.backends.cudnn.enabled))
    assert inside == (False, False)
    assert after == (True, True)


def test_override_nested_and_on_error_restores_the_callers_value():
    setting = {"v": "caller"}
    override = ProcessWideOverride(lambda: setting["v"], lambda v: setting.update(v=v), "held")
    with pytest.raises(RuntimeError, match="boom"):
        with override.active():
            with override.active():
                assert setting["v"] == "held" and override.active_blocks == 2
            assert setting["v"] == "held" and override.active_blocks == 1
            raise RuntimeError("boom")
    assert setting["v"] == "caller" and override.active_blocks == 0
    # a value changed by the caller between blocks is what the next block restores
    setting["v"] = "changed"
    with override.active():
        assert setting["v"] == "held"
    assert setting["v"] == "changed"
