"""The digests behind the model caches and the epoch states (``fastunlearn._model_cache``)."""

import hashlib

import pytest
import torch
from torch import nn

from fastunlearn._model_cache import tensor_digest, weights_digest


def test_tensor_digest_is_a_sha256_of_dtype_shape_and_bytes():
    t = torch.tensor([[1.0, -2.0], [3.5, 0.25]])
    expected = hashlib.sha256(b"torch.float32:(2, 2);" + t.numpy().tobytes()).hexdigest()
    assert tensor_digest(t) == expected
    assert tensor_digest(t.t().contiguous().t()) == expected  # layout does not matter


@pytest.mark.parametrize("value", [torch.tensor(3), torch.tensor(2.5), torch.tensor(True)])
def test_zero_dimensional_tensors_are_digested_by_value(value):
    one = tensor_digest(value)
    assert one == hashlib.sha256(f"{value.dtype}:();".encode()
                                 + value.reshape(1).numpy().tobytes()).hexdigest()
    assert one != tensor_digest(value.reshape(1))  # the shape is part of it
    assert one != tensor_digest(torch.zeros_like(value))


def test_empty_tensors_have_distinct_digests_by_shape():
    assert tensor_digest(torch.zeros(0, 3)) != tensor_digest(torch.zeros(3, 0))


def test_weights_digest_covers_batchnorm_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    before = weights_digest(model)
    model.train()(torch.randn(5, 4))  # updates running stats and num_batches_tracked
    assert weights_digest(model) != before
    model[1].running_mean.zero_()
    model[1].running_var.fill_(1.0)
    assert weights_digest(model) != before  # num_batches_tracked (0-d) still differs
    model[1].num_batches_tracked.zero_()
    assert weights_digest(model) == before
