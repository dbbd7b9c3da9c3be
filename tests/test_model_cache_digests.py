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


def _harness_data(dtype: torch.dtype):
    from fastunlearn.harness.data import HarnessData

    g = torch.Generator().manual_seed(0)
    return HarnessData(torch.rand(6, 1, 2, 2, generator=g).to(dtype), torch.arange(6) % 3,
                       torch.rand(3, 1, 2, 2, generator=g).to(dtype), torch.arange(3),
                       num_classes=3)


def test_harness_data_digest_keeps_existing_cache_keys():
    # the bytes numpy gives: caches written before the byte view still hit
    data = _harness_data(torch.float32)
    expected = hashlib.sha256()
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        expected.update(str((t.dtype, tuple(t.shape))).encode())
        expected.update(t.numpy().tobytes())
    assert data.digest() == expected.hexdigest()
    # a non-contiguous view of the same values digests the same
    data.x_train = data.x_train.transpose(2, 3).contiguous().transpose(2, 3)
    assert data.digest() == expected.hexdigest()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_harness_data_digest_takes_every_float_dtype(dtype):
    # old: numpy's "Got unsupported ScalarType BFloat16" from every run_harness with bf16 data
    data = _harness_data(dtype)
    assert data.digest() != _harness_data(torch.float32).digest()
    changed = _harness_data(dtype)
    changed.x_test[0, 0, 0, 0] += 1
    assert changed.digest() != data.digest()
