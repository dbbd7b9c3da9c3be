"""The native-RNN-kernel switch restores the caller's process-wide flags, also when uses overlap."""

import threading

import pytest
import torch
from torch import nn

from fastunlearn.linalg.rnn_kernels import differentiable_rnn_kernels


def _flags():
    return torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled


def test_interleaved_uses_in_two_threads_restore_the_flags():
    lstm = nn.LSTM(2, 3)
    before = _flags()
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with differentiable_rnn_kernels(lstm):
            a_inside.set()
            b_inside.wait(5)
        a_left.set()

    def second():
        a_inside.wait(5)
        with differentiable_rnn_kernels(lstm):
            b_inside.set()
            a_left.wait(5)
            seen["after first left"] = _flags()  # the other use is still active
        seen["after both"] = _flags()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["after first left"] == (False, False)
    assert seen["after both"] == before == _flags()


def test_caller_flags_kept_nested_and_on_error():
    lstm = nn.GRU(2, 3)
    with torch.backends.mkldnn.flags(enabled=False):
        with pytest.raises(RuntimeError, match="inner"):
            with differentiable_rnn_kernels(lstm):
                with differentiable_rnn_kernels(lstm):
                    assert _flags() == (False, False)
                raise RuntimeError("inner")
        assert _flags() == (False, True)
    # a model without recurrent layers does not touch them
    with differentiable_rnn_kernels(nn.Linear(2, 3)):
        assert _flags() == (True, True)
    assert _flags() == (True, True)
