"""Degenerate extents and layouts of the kernels (CPU), and fake kernels that match them.

* Every functional op's fake kernel gives the real kernel's shape, dtype and strides also
  for empty extents (n, d, K, B, T, in, out, m, k = 0), where a fake kernel written for the
  nominal case most easily drifts from what the kernel returns.
* The certified step's in-place kernels agree with the float64 oracle on empty extents and
  on non-contiguous (transposed or expanded) read-only inputs.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.ops import reference

F32, F64 = torch.float32, torch.float64
OPS = torch.ops.fastunlearn


def _assert_fake_matches_real(op, args) -> None:
    real = op(*args)
    mode = FakeTensorMode()
    fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode:
        fake = op(*fake_args)
    real = (real,) if isinstance(real, torch.Tensor) else tuple(real)
    fake = (fake,) if isinstance(fake, torch.Tensor) else tuple(fake)
    assert len(real) == len(fake)
    for r, f in zip(real, fake, strict=True):
        assert (tuple(f.shape), f.dtype, f.stride()) == (tuple(r.shape), r.dtype, r.stride())


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n,d,K", [(5, 3, 2), (0, 3, 2), (5, 0, 2), (5, 3, 0), (0, 0, 0)])
def test_glm_fakes_match_the_kernels_on_empty_extents(dtype, n, d, K):
    X = torch.randn(n, d, dtype=dtype)
    S = torch.rand(n, K, dtype=dtype)
    V = torch.randn(d, K, dtype=dtype)
    _assert_fake_matches_real(OPS.glm_hvp.default, (X, S, V, 0.1))
    _assert_fake_matches_real(OPS.glm_hvp_margins.default, (X, S, V, 0.1))
    _assert_fake_matches_real(OPS.glm_hessian.default, (X, S, 0.1))
    _assert_fake_matches_real(OPS.glm_cg.default, (X, S, V, 0.1, None, None, 1e-6, 5))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(
    "B,T,n_in,n_out", [(3, 2, 4, 5), (0, 2, 4, 5), (3, 0, 4, 5), (3, 2, 0, 5), (3, 2, 4, 0)]
)
def test_per_sample_fakes_match_the_kernels_on_empty_extents(dtype, B, T, n_in, n_out):
    A = torch.randn(B, T, n_in, dtype=dtype)
    G = torch.randn(B, T, n_out, dtype=dtype)
    W = torch.randn(n_out, n_in, dtype=dtype)
    b = torch.randn(n_out, dtype=dtype)
    _assert_fake_matches_real(OPS.per_sample_grad.default, (A, G))
    _assert_fake_matches_real(OPS.per_sample_sq_norm.default, (A, G, True))
    _assert_fake_matches_real(OPS.per_sample_dot.default, (A, G, W, b))
    _assert_fake_matches_real(
        OPS.per_sample_weighted_sum.default, (A, G, torch.randn(B, dtype=dtype))
    )


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(
    "m,n,d,k", [(4, 6, 3, 2), (0, 6, 3, 2), (4, 6, 0, 2), (4, 6, 3, 0), (4, 0, 3, 0)]
)
def test_knn_fake_matches_the_kernel_on_empty_extents(dtype, m, n, d, k):
    Q, P = torch.randn(m, d, dtype=dtype), torch.randn(n, d, dtype=dtype)
    for largest in (True, False):
        _assert_fake_matches_real(OPS.knn_extreme.default, (Q, P, k, largest))


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (transposed storage, or a stride-0 axis)."""
    if t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t.unsqueeze(-1).expand(*t.shape, 2)[..., 0]


@pytest.mark.parametrize("d,n,K", [(3, 5, 2), (0, 5, 2), (3, 0, 2), (3, 5, 0), (40, 300, 7)])
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_cg_tail_matches_the_oracle_on_empty_extents_and_strides(d, n, K, first, layout):
    V, HV, R, P, HP, Delta = (torch.randn(d, K, dtype=F64) for _ in range(6))
    XV, XP = torch.randn(n, K, dtype=F64), torch.randn(n, K, dtype=F64)
    A = torch.rand(n, K, dtype=F64)
    rz, spectral = torch.rand(K, dtype=F64), torch.rand(K, dtype=F64)
    written = [V, XV, HV, R, torch.zeros(5, dtype=F64)]
    got, want = [t.clone() for t in written], [t.clone() for t in written]
    read = [P, XP, HP, rz, torch.tensor([True]), A, Delta, spectral]
    strided = [_noncontiguous(t) if layout == "strided" and t.numel() > 1 else t for t in read]
    OPS.certified_cg_tail_(*got, *strided, 0.7, first)
    reference.certified_cg_tail_(*want, *read, 0.7, first)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,d,K", [(5, 3, 2), (5, 0, 2), (5, 3, 0), (1, 3, 2), (300, 40, 7)])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_start_matches_the_oracle_on_empty_extents_and_strides(n, d, K, layout):
    X = torch.randn(n, d, dtype=F64)
    Y = torch.randn(n, K, dtype=F64).sign()
    Z, A = torch.randn(n, K, dtype=F64), torch.rand(n, K, dtype=F64)
    W = torch.randn(d, K, dtype=F64)
    read = [X, Y, Z, A, W, torch.tensor(n - 1), torch.rand(K, dtype=F64) + n,
            torch.rand(1, dtype=F64) * 5, torch.rand(n, dtype=F64)]  # fmt: skip
    shapes = [(K,), (d, K), (n, K), (n, K), (K,), (K,)]
    got = [torch.full(s, 7.0, dtype=F64) for s in shapes]
    want = [t.clone() for t in got]
    strided = [_noncontiguous(t) if layout == "strided" and t.numel() > 1 else t for t in read]
    OPS.certified_start_(*got, *strided, 0.3)
    reference.certified_start_(*want, *read, 0.3)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("K,d,T,slot", [(2, 3, 4, 1), (0, 3, 4, 1), (2, 0, 4, 0), (3, 10, 70, 69)])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_woodbury_matches_the_oracle_on_empty_extents_and_strides(K, d, T, slot, layout):
    written = [torch.randn(K, d, T, dtype=F64), torch.randn(K, d, T, dtype=F64),
               torch.randn(K, T, T, dtype=F64), torch.randn(K, T, T, dtype=F64),
               torch.zeros(5, dtype=F64)]  # fmt: skip
    got, want = [t.clone() for t in written], [t.clone() for t in written]
    read = [torch.randn(K, d, 1, dtype=F64) * 0.1, torch.randn(K, d, 1, dtype=F64) * 0.1,
            torch.randn(K, T, 1, dtype=F64) * 0.1]  # fmt: skip
    strided = [_noncontiguous(t) if layout == "strided" else t for t in read]
    OPS.certified_woodbury_row_(*got, *strided, torch.tensor(slot))
    reference.certified_woodbury_row_(*want, *read, torch.tensor(slot))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("K", [1, 3])
def test_cg_update_with_no_rows_deactivates_every_column_like_the_oracle(dtype, K):
    # d = 0: p.Ap = 0 is a breakdown for every column (the CUDA kernel, which launches one
    # row block for d = 0, takes the same branch)
    empty = [torch.empty(0, K, dtype=dtype) for _ in range(4)]
    vectors = [torch.ones(K, dtype=dtype), torch.ones(K, dtype=dtype),
               torch.ones(K, dtype=torch.bool), torch.zeros(K, dtype=torch.int64)]  # fmt: skip
    got = [t.clone() for t in vectors]
    want = [t.clone() for t in vectors]
    threshold = torch.zeros(K, dtype=dtype)
    OPS.cg_update_(*[t.clone() for t in empty[:3]], empty[3], None, *got, threshold)
    reference.cg_update_(*[t.clone() for t in empty[:3]], empty[3], None, *want, threshold)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert not got[2].any()
