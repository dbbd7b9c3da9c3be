"""knn_extreme on data whose squares overflow or underflow the dtype, against float64 numpy.

The op's GEMM expansion ``||q||^2 + ||p||^2 - 2 q.p`` squares the data in the input dtype.
Before the wrapper's power-of-two rescaling, float32 rows of norm ~1e19 and above were refused
as "not finite" (or, when only the cross terms overflowed, ranked by ``inf`` and the wrong
rows returned), and rows of norm ~1e-23 and below squared to 0, so every distance tied and the
smallest indices came back. The expected values here come from a brute force in float64
numpy on the very same (float32 or float64) data; for float64 data out of float64's own range
the brute force runs on ``numpy.ldexp``-scaled copies, exact powers of two.
"""

import math

import numpy as np
import pytest
import torch
from helpers import DEVICES

from fastunlearn.ops import farthest_k, knn, knn_extreme, nearest_k

OP = torch.ops.fastunlearn.knn_extreme.default


def _data(m, n, d, scale, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(m, d, generator=g, dtype=torch.float64) * scale
    P = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return Q.to(dtype=dtype, device=device), P.to(dtype=dtype, device=device)


def _brute(Q, P, shift=0):
    """Squared distances of ``2^shift Q`` and ``2^shift P`` in float64 numpy, ``[m, n]``."""
    q = np.ldexp(Q.detach().cpu().double().numpy(), shift)
    p = np.ldexp(P.detach().cpu().double().numpy(), shift)
    return ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)


def _shift_for(Q, P):
    """A power of two bringing float64 data near 1 for the brute force (0 for float32)."""
    if Q.dtype != torch.float64:
        return 0
    amax = max(float(Q.abs().max()), float(P.abs().max()))
    return -math.frexp(amax)[1]


def _check(Q, P, k, largest, dist, idx, *, rel_gap=1e-4):
    """Indices equal to the brute force's wherever its gaps are clear; distances its rounding."""
    shift = _shift_for(Q, P)
    D = _brute(Q, P, shift)
    m, n = D.shape
    assert dist.shape == (m, k) and idx.shape == (m, k)
    assert dist.dtype == Q.dtype and idx.dtype == torch.int64
    dist, idx = dist.cpu(), idx.cpu().numpy()
    key = -D if largest else D
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    # clear: separated from both neighbours in the sorted order by more than rounding
    skey = np.take_along_axis(key, np.argsort(key, axis=1, kind="stable"), 1)
    # the expansion's rounding error is relative to the squared norms, not to the distances
    q = np.ldexp(Q.detach().cpu().double().numpy(), shift)
    p = np.ldexp(P.detach().cpu().double().numpy(), shift)
    norms = max((q**2).sum(-1).max(initial=0.0), (p**2).sum(-1).max(initial=0.0))
    gap = rel_gap * max(norms, np.finfo(np.float64).tiny)
    pad = np.full((m, 1), np.inf)
    padded = np.concatenate([-pad, skey, pad], axis=1)
    clear = ((padded[:, 1 : k + 1] - padded[:, :k]) > gap) & (
        (padded[:, 2 : k + 2] - padded[:, 1 : k + 1]) > gap
    )
    assert clear.mean() > 0.5 or k == 0
    np.testing.assert_array_equal(idx[clear], order[clear])
    # the returned distances are those of the returned rows, rounded to the dtype (inf when
    # the true value overflows it); float64 data: scaled back from the brute force's scale
    exact = np.take_along_axis(D, idx, 1)
    with np.errstate(over="ignore"):  # a true distance beyond the dtype: inf
        expected = np.ldexp(exact, -2 * shift).astype(
            np.float32 if Q.dtype == torch.float32 else np.float64
        )
    got = dist.numpy()
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isinf(got), ~finite)
    tiny = np.finfo(got.dtype).smallest_subnormal
    np.testing.assert_allclose(got[finite], expected[finite], rtol=4 * np.finfo(got.dtype).eps,
                               atol=tiny)
    # sorted best first (non-strictly: several may round to inf or 0)
    if k > 1:
        with np.errstate(invalid="ignore"):  # inf - inf
            step = got[:, :-1] - got[:, 1:]
            ok = (step >= 0) if largest else (step <= 0)
        assert (ok | np.isnan(step)).all()


F32_SCALES = [1e19, 3e19, 1e25, 1e30, 1e37, 1e-20, 1e-23, 1e-30, 1e-40]
F64_SCALES = [1e160, 1e200, 1e300, 1e-160, 1e-200, 1e-300, 1e-310]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 4, 60])
@pytest.mark.parametrize("scale", F32_SCALES)
def test_float32_extreme_scales_match_float64_brute_force(device, largest, k, scale):
    Q, P = _data(9, 60, 5, scale, torch.float32, device, seed=int(abs(math.log10(scale))))
    dist, idx = knn_extreme(Q, P, k, largest=largest)
    _check(Q, P, k, largest, dist, idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("scale", F64_SCALES)
def test_float64_extreme_scales_match_scaled_brute_force(device, largest, scale):
    Q, P = _data(7, 50, 4, scale, torch.float64, device, seed=3)
    dist, idx = knn_extreme(Q, P, 6, largest=largest)
    _check(Q, P, 6, largest, dist, idx, rel_gap=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_terms_overflow_although_squared_norms_do_not(device):
    # d = 1, |x| <= 1.2e19: every square fits float32 but ||q||^2 + ||p||^2 does not, so the
    # unscaled expansion gives inf for the farthest rows and selects them by index
    g = torch.Generator().manual_seed(0)
    Q = ((torch.rand(6, 1, generator=g, dtype=torch.float64) * 2 - 1) * 1.2e19).float()
    P = ((torch.rand(50, 1, generator=g, dtype=torch.float64) * 2 - 1) * 1.2e19).float()
    Q, P = Q.to(device), P.to(device)
    for largest in (True, False):
        dist, idx = knn_extreme(Q, P, 4, largest=largest)
        _check(Q, P, 4, largest, dist, idx)
    # the true farthest distances overflow float32: inf, at the right rows
    dist, _ = farthest_k(Q, P, 1)
    assert bool(torch.isinf(dist).any())


@pytest.mark.parametrize("device", DEVICES)
def test_huge_rows_with_representable_nearest_distances(device):
    # rows of norm ~1e20 (squares 1e40 overflow float32) whose nearest neighbours lie ~3e18
    # away: finite nearest distances ~1e37, inf farthest ones
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(5, 3, generator=g, dtype=torch.float64) * 1e20
    Q = centres.float()
    offsets = torch.randn(5, 8, 3, generator=g, dtype=torch.float64) * 3e18
    P = (centres[:, None, :] + offsets).reshape(40, 3).float()
    Q, P = Q.to(device), P.to(device)
    dist, idx = nearest_k(Q, P, 3)
    _check(Q, P, 3, False, dist, idx, rel_gap=2e-6)  # ~16 float32 eps of the squared norms
    assert bool(torch.isfinite(dist).all()) and bool((dist > 0).all())
    # each query's neighbours are its own cluster's rows
    assert bool((idx.cpu() // 8 == torch.arange(5)[:, None]).all())
    dist, idx = farthest_k(Q, P, 3)
    _check(Q, P, 3, True, dist, idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("largest", [True, False])
def test_selection_is_invariant_under_powers_of_two(device, dtype, largest):
    # an exact power-of-two rescaling of in-range data gives bit-identical indices and
    # exactly rescaled distances, in and out of the dtype's safe range
    Q, P = _data(8, 70, 6, 1.0, dtype, device, seed=5)
    base_d, base_i = knn_extreme(Q, P, 5, largest=largest)
    top = 100 if dtype == torch.float32 else 900
    for shift in (-top, -70, -40, 40, 70, top):
        if dtype == torch.float32 and abs(shift) > 100:
            continue
        dist, idx = knn_extreme(Q * 2.0**shift, P * 2.0**shift, 5, largest=largest)
        assert torch.equal(idx, base_i), shift
        with np.errstate(over="ignore"):  # distances beyond the dtype: inf
            expected = np.ldexp(base_d.cpu().double().numpy(), 2 * shift)
            expected = expected.astype(np.float32 if dtype == torch.float32 else np.float64)
        np.testing.assert_array_equal(dist.cpu().numpy(), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_a_value_error_naming_the_argument(device, dtype, bad):
    Q, P = _data(4, 6, 3, 1.0, dtype, device)
    q = Q.clone()
    q[2, 1] = bad
    with pytest.raises(ValueError, match="'Q' must be finite"):
        knn_extreme(q, P, 2)
    p = P.clone()
    p[5, 0] = bad
    with pytest.raises(ValueError, match="'P' must be finite"):
        nearest_k(Q, p, 2)
    with pytest.raises(ValueError, match="'P' must be finite"):
        farthest_k(Q[:0], p, 2)  # no queries: still refused
    # finite but huge is not an error any more (the raw op still refuses it)
    big = P.clone()
    big[0, 0] = torch.finfo(dtype).max
    dist, idx = knn_extreme(Q, big, 2)
    assert int(idx[0, 0]) == 0 and math.isinf(float(dist[0, 0]))
    with pytest.raises(ValueError, match="'P'"):
        OP(Q, big, 2, True)


def test_in_range_data_goes_to_the_op_without_a_copy(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("in-range data was rescaled")

    monkeypatch.setattr(knn, "_times_pow2", refuse)
    for dtype in (torch.float32, torch.float64):
        lo, hi = knn._safe_range(dtype, 4)
        for scale in (1.0, 1e-3, 1e6, hi / 8, lo * 8):
            Q, P = _data(5, 20, 4, scale, dtype, "cpu")
            assert knn._range_exponent(Q, P) == 0
            knn_extreme(Q, P, 3)
        Q, P = _data(5, 20, 4, 0.0, dtype, "cpu")  # all zero: nothing to scale either
        assert knn._range_exponent(Q, P) == 0


def test_extreme_inputs_requiring_grad_and_non_contiguous():
    Q, P = _data(6, 40, 3, 1e25, torch.float32, "cpu", seed=7)
    Qt = torch.empty(3, 6).copy_(Q.T).T.requires_grad_()
    Ps = torch.empty(40, 6)[:, ::2]
    Ps.copy_(P)
    dist, idx = nearest_k(Qt, Ps, 4)
    assert not dist.requires_grad and not idx.requires_grad
    _check(Q, P, 4, False, dist, idx)


def test_empty_and_featureless_extreme_inputs():
    Q, P = _data(0, 10, 3, 1e30, torch.float32, "cpu")
    dist, idx = knn_extreme(Q, P, 2)
    assert dist.shape == (0, 2) and idx.shape == (0, 2)
    Q, P = _data(3, 10, 3, 1e30, torch.float32, "cpu")
    dist, idx = knn_extreme(Q, P, 0)
    assert dist.shape == (3, 0)
    dist, idx = knn_extreme(torch.empty(2, 0), torch.empty(4, 0), 3)
    assert bool((dist == 0).all()) and bool((idx == torch.arange(3)).all())


def test_torch_compile_fullgraph_rescales_too():
    compiled = torch.compile(lambda a, b: knn_extreme(a, b, 3, largest=False), fullgraph=True)
    for scale in (1.0, 1e25, 1e-25):
        Q, P = _data(6, 30, 3, scale, torch.float32, "cpu", seed=8)
        dist, idx = compiled(Q, P)
        _check(Q, P, 3, False, dist, idx)
        eager_d, eager_i = knn_extreme(Q, P, 3, largest=False)
        assert torch.equal(idx, eager_i)
        torch.testing.assert_close(dist, eager_d, rtol=0, atol=0)
