"""Scaling sweep: work that grew with the data size faster than it should (structure only)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from fastunlearn.forget._common_b import checked_tensors, dataset_tensors

pytestmark = pytest.mark.usefixtures("one_thread")


def _stacked(ds):
    """The old formulation: every item read through ``__getitem__`` and stacked."""
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([torch.as_tensor(item[0]) for item in items])
    y = torch.stack([torch.as_tensor(item[1]) for item in items])
    return x, y


class _CountingTensorDataset(TensorDataset):
    calls = 0

    def __getitem__(self, index):
        type(self).calls += 1
        return super().__getitem__(index)


# old: dataset_tensors(Subset of a TensorDataset) 0.46 s at 45k rows, 1.63 s at 180k (one
# __getitem__ per row); new: 0.010 s, 0.040 s (one index_select)
def test_dataset_tensors_of_subset_reads_no_item():
    x, y = torch.randn(500, 3), torch.randint(0, 4, (500,))
    calls = {"n": 0}
    get = Subset.__getitem__

    def counting(self, index):
        calls["n"] += 1
        return get(self, index)

    sub = Subset(Subset(TensorDataset(x, y), list(range(499, -1, -1))), list(range(0, 500, 3)))
    expected = _stacked(sub)
    calls["n"] = 0
    Subset.__getitem__ = counting
    try:
        got = dataset_tensors(sub)
    finally:
        Subset.__getitem__ = get
    assert calls["n"] == 0
    for a, b in zip(expected, got, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# old/new: as above (the slice replaces the item loop); results checked against it
@pytest.mark.parametrize("trial", range(40))
def test_dataset_tensors_of_subsets_matches_item_loop(trial):
    g = torch.Generator().manual_seed(trial)
    n = int(torch.randint(1, 25, (1,), generator=g))
    shape = [(n, 3), (n,), (n, 2, 2)][trial % 3]
    x = torch.randn(*shape, generator=g, dtype=[torch.float32, torch.float64][trial % 2])
    if trial % 7 == 0 and x.dim() == 2:
        x = torch.randn(3, n, generator=g).T  # not contiguous
    dtype = [torch.int64, torch.int32, torch.uint8][trial % 3]
    y = torch.randint(0, 5, (n,), generator=g).to(dtype)
    ds = TensorDataset(x, y)
    for _ in range(1 + trial % 3):  # nested, unsorted, duplicate and negative indices
        m = len(ds)
        idx = torch.randint(-m, m, (int(torch.randint(1, 2 * m + 1, (1,), generator=g)),),
                            generator=g)
        ds = Subset(ds, [idx.tolist(), idx, idx.numpy(), range(0, m, 2)][trial % 4])
    x_old, y_old = _stacked(ds)
    for a, b in zip((x_old, y_old.long()), dataset_tensors(ds), strict=True):  # labels int64
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        assert b.is_contiguous()


# old/new: bad input keeps the item loop's errors
def test_dataset_tensors_of_subset_keeps_errors():
    base = TensorDataset(torch.randn(4, 2), torch.arange(4))
    with pytest.raises(IndexError, match="index 4 is out of bounds for dimension 0 with size 4"):
        dataset_tensors(Subset(base, [0, 4]))
    with pytest.raises(IndexError):
        dataset_tensors(Subset(base, [-5]))
    floats = Subset(TensorDataset(torch.randn(4, 2), torch.arange(4.0)), [1, 2])
    with pytest.raises(TypeError, match=r"retain: labels must be a 1-D integer tensor, got "
                                        r"torch.float32 of shape \(2,\)"):
        checked_tensors(floats, 4, "retain")
    with pytest.raises(RuntimeError):  # an empty set: the stack of no items, as before
        dataset_tensors(Subset(base, []))


# old/new: a TensorDataset subclass (own __getitem__) still reads its items
def test_dataset_tensors_subclass_reads_items():
    _CountingTensorDataset.calls = 0
    ds = Subset(_CountingTensorDataset(torch.randn(6, 2), torch.arange(6)), [5, 0, 2])
    x, y = dataset_tensors(ds)
    assert _CountingTensorDataset.calls == 3
    assert y.tolist() == [5, 0, 2]


def _digests_row_by_row(inputs, labels):
    """The duplicate check's digests as first written: one tensor row at a time."""
    import hashlib

    def raw(t):
        t = t.detach().reshape(t.shape[0], -1).cpu().contiguous()
        return t.view(torch.uint8) if t.dtype == torch.bfloat16 else t

    integer = not (labels.is_floating_point() or labels.dtype == torch.bool)
    flat, lab = raw(inputs), raw(labels.long() if integer else labels)  # int labels as int64
    out = []
    for i in range(flat.shape[0]):
        h = hashlib.blake2b(flat[i].numpy().tobytes(), digest_size=16)
        h.update(lab[i].numpy().tobytes())
        out.append(h.digest())
    return out


@pytest.mark.parametrize("case", ["float32", "bfloat16", "uint8_images", "non_contiguous",
                                  "no_features", "two_d_labels", "float64"])
def test_row_digests_equal_the_row_by_row_bytes(case):
    # old: a tensor index and a numpy conversion per row (0.92 s at 200k x 64 rows; now
    # 0.2 s, slicing one byte view per tensor); the digests must be the same bytes' digests
    from torch.utils.data import TensorDataset

    from fastunlearn.forget.checks import _row_digests

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 3, 4, generator=gen)
    y = torch.randint(0, 5, (9,), generator=gen)
    if case == "bfloat16":
        x = x.to(torch.bfloat16)
    elif case == "uint8_images":
        x = (x * 50).clamp(0, 255).to(torch.uint8)
    elif case == "non_contiguous":
        x = x.transpose(1, 2)
    elif case == "no_features":
        x = x[:, :0]
    elif case == "two_d_labels":
        y = torch.stack([y, y + 1], dim=1).to(torch.int32)
    elif case == "float64":
        x = x.double()
    assert _row_digests(TensorDataset(x, y)) == _digests_row_by_row(x, y)
    dup = TensorDataset(torch.cat([x, x[2:3]]), torch.cat([y, y[2:3]]))
    digests = _row_digests(dup)
    assert digests[2] == digests[-1] and len(set(digests)) == len(digests) - 1 \
        or case == "no_features"
