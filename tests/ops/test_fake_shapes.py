"""The fake kernels' shape check of the certified step's in-place ops names the argument."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastunlearn.ops._fake_shapes import check_fake_shapes


def test_a_mismatched_shape_fails_at_trace_time_naming_the_argument():
    with FakeTensorMode():
        a, b = torch.empty(3, 2), torch.empty(4)
        check_fake_shapes("op_", [("a", a, (3, 2)), ("b", b, torch.Size([4]))])
        with pytest.raises(ValueError, match=r"op_: argument 'b' has shape \(4,\)"):
            check_fake_shapes("op_", [("a", a, (3, 2)), ("b", b, (5,))])
