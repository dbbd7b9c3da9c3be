"""The native-RNN-kernel switch restores the caller's flags (threads: test_process_flags.py)."""

import pytest
import torch
from torch import nn

from fastunlearn.linalg.rnn_kernels import differentiable_rnn_kernels


def _flags():
    return torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled


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
