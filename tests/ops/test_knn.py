"""knn_extreme (k farthest / nearest rows) against the float64 reference."""

import numpy as np
import pytest
import torch
from helpers import DEVICES, DTYPES, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st

from fastunlearn.ops import farthest_k, knn_extreme, nearest_k, reference

OP = torch.ops.fastunlearn.knn_extreme.default
# Tiles: query blocks of min(m, 512) rows and chunks of 2**20 // block rows of P on the CPU,
# min(m, 2048) and 2**22 // block on CUDA. (600, 7500) gives CPU blocks 512 + 88 and chunks
# 3 x 2048 + 1356, CUDA chunks 6990 + 510; (2100, 2100) gives CPU blocks 4 x 512 + 52, CUDA
# blocks 2048 + 52 and chunks 2048 + 52. k = 3 runs the CUDA warp kernel, k = 70 the topk path.
TILED_M, TILED_N = 600, 7500


def _data(m, n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(m, d, generator=g, dtype=torch.float64)
    P = torch.randn(n, d, generator=g, dtype=torch.float64)
    return Q.to(dtype=dtype, device=device), P.to(dtype=dtype, device=device)


def _check_against_reference(Q, P, k, largest, dist, idx):
    """Distances to tolerance; indices equal except where the reference has near-ties."""
    ref_dist, ref_idx = reference.knn_extreme(Q, P, k, largest)
    m = Q.shape[0]
    assert dist.shape == (m, k) and idx.shape == (m, k)
    assert dist.dtype == Q.dtype and idx.dtype == torch.int64
    assert dist.device == Q.device and idx.device == Q.device
    dist, idx = dist.cpu(), idx.cpu()
    ref_dist, ref_idx = ref_dist.cpu(), ref_idx.cpu()
    tol = tolerances(Q.dtype)
    torch.testing.assert_close(dist.double(), ref_dist, **tol)
    # The returned distances are those of the returned points.
    exact = ((Q.double().cpu()[:, None, :] - P.double().cpu()[idx]) ** 2).sum(-1)
    torch.testing.assert_close(dist.double(), exact, **tol)
    # Sorted best first.
    if k > 1:
        step = dist[:, :-1] - dist[:, 1:]
        assert bool((step >= 0).all() if largest else (step <= 0).all())
    # Index identity wherever the reference gap to the neighbours is clear of rounding.
    full = torch.cdist(Q.double().cpu(), P.double().cpu()).pow(2)
    key = full if largest else -full
    sorted_key = torch.sort(key, dim=1, descending=True).values
    gap = (1e-9 if Q.dtype == torch.float64 else 1e-5) * (1 + sorted_key.abs().max().item())
    pad = torch.full((m, 1), float("inf"), dtype=torch.float64)
    padded = torch.cat([pad, sorted_key, -pad], dim=1)
    clear = ((padded[:, :k] - padded[:, 1 : k + 1]) > gap) & (
        (padded[:, 1 : k + 1] - padded[:, 2 : k + 2]) > gap
    )
    assert bool((idx[clear] == ref_idx[clear]).all())
    assert bool(clear.float().mean() > 0.5) or k == 0 or m == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [1, 5, 40, 64, 65, 100])
def test_matches_reference(device, dtype, largest, k):
    Q, P = _data(37, 300, 6, dtype, device)
    dist, idx = knn_extreme(Q, P, k, largest=largest)
    _check_against_reference(Q, P, k, largest, dist, idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [3, 70])
def test_spans_several_tiles(device, dtype, largest, k):
    Q, P = _data(TILED_M, TILED_N, 3, dtype, device, seed=1)
    dist, idx = knn_extreme(Q, P, k, largest=largest)
    _check_against_reference(Q, P, k, largest, dist, idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_query_block_on_cuda_tiles(device, dtype):
    # More than one CUDA query block (2048 rows) with a remainder, small d to stay fast.
    Q, P = _data(2100, 2100, 2, dtype, device, seed=2)
    dist, idx = knn_extreme(Q, P, 2, largest=True)
    _check_against_reference(Q, P, 2, True, dist, idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("largest", [True, False])
def test_k_equals_n_is_a_full_sort(device, dtype, largest):
    Q, P = _data(9, 50, 4, dtype, device)
    dist, idx = knn_extreme(Q, P, 50, largest=largest)
    _check_against_reference(Q, P, 50, largest, dist, idx)
    assert bool((idx.sort(dim=1).values.cpu() == torch.arange(50)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "k"), [(0, 5, 3), (4, 5, 0), (4, 0, 0), (0, 0, 0)])
def test_empty(device, dtype, m, n, k):
    Q, P = _data(m, n, 3, dtype, device)
    dist, idx = knn_extreme(Q, P, k)
    assert dist.shape == (m, k) and idx.shape == (m, k)
    assert dist.dtype == dtype and idx.dtype == torch.int64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_features(device, dtype):
    # d = 0: every distance is 0, so the tie rule alone orders the result.
    Q = torch.empty(3, 0, dtype=dtype, device=device)
    P = torch.empty(5, 0, dtype=dtype, device=device)
    dist, idx = knn_extreme(Q, P, 4)
    assert bool((dist == 0).all())
    assert bool((idx.cpu() == torch.arange(4)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [2, 7, 40])
def test_duplicates_break_ties_by_smaller_index(device, dtype, largest, k):
    # Four copies of every base point, spread over the pool (and over CPU tiles): the output
    # must list copies smallest index first, and boundary copies must be the smaller indices.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(700, 3, generator=g, dtype=torch.float64)
    P = base.repeat(4, 1).to(dtype=dtype, device=device)  # copy c of row r is row c*700 + r
    Q = torch.randn(11, 3, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    dist, idx = knn_extreme(Q, P, k, largest=largest)
    # Direct differences give bit-identical distances to the copies (torch.cdist, used by the
    # reference, does not), so a stable sort on them is the exact tie rule.
    full = ((Q.double().cpu()[:, None, :] - P.double().cpu()[None]) ** 2).sum(-1)
    order = torch.sort(-full if largest else full, dim=1, stable=True).indices[:, :k]
    assert bool((idx.cpu() == order).all())
    torch.testing.assert_close(dist.double().cpu(), full.gather(1, order), **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_query_in_pool_has_distance_zero(device):
    # The expansion cancels for identical points; the returned distances are exact.
    Q, P = _data(20, 200, 16, torch.float32, device)
    Q = Q * 1000 + 5000
    P = torch.cat([P * 1000 + 5000, Q])
    dist, idx = nearest_k(Q, P, 1)
    assert bool((dist == 0).all())
    assert bool((idx.cpu().squeeze(1) == torch.arange(200, 220)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(device, dtype):
    Q, P = _data(30, 400, 8, dtype, device)
    Qt = torch.empty(8, 30, dtype=dtype, device=device).copy_(Q.T).T  # column-major
    Ps = torch.empty(400, 16, dtype=dtype, device=device)[:, ::2]
    Ps.copy_(P)
    assert not Qt.is_contiguous() and not Ps.is_contiguous()
    for largest in (True, False):
        dist, idx = knn_extreme(Qt, Ps, 9, largest=largest)
        _check_against_reference(Q, P, 9, largest, dist, idx)


@pytest.mark.parametrize("device", DEVICES)
def test_convenience_wrappers(device):
    Q, P = _data(10, 60, 5, torch.float64, device)
    dist, idx = knn_extreme(Q, P, np.int64(4))  # integer scalars are accepted for k
    assert idx.shape == (10, 4)
    for fn, largest in ((farthest_k, True), (nearest_k, False)):
        dist, idx = fn(Q, P, 4)
        ref_dist, ref_idx = knn_extreme(Q, P, 4, largest=largest)
        assert torch.equal(dist, ref_dist) and torch.equal(idx, ref_idx)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 9),
    n=st.integers(0, 40),
    d=st.integers(1, 5),
    frac=st.floats(0, 1),
    largest=st.booleans(),
    double=st.booleans(),
)
def test_hypothesis_shapes(m, n, d, frac, largest, double):
    dtype = torch.float64 if double else torch.float32
    k = round(frac * n)
    Q, P = _data(m, n, d, dtype, "cpu", seed=m * 1000 + n)
    dist, idx = knn_extreme(Q, P, k, largest=largest)
    ref_dist, _ = reference.knn_extreme(Q, P, k, largest)
    assert dist.shape == (m, k) and idx.shape == (m, k)
    torch.testing.assert_close(dist.double(), ref_dist, **tolerances(dtype))
    if m and k:
        assert bool((idx >= 0).all() and (idx < n).all())
        assert bool((idx.sort(dim=1).values.diff(dim=1) > 0).all())  # distinct per row


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(device, dtype):
    Q, P = _data(7, 25, 4, dtype, device)
    torch.library.opcheck(OP, (Q, P, 3, True))
    torch.library.opcheck(OP, (Q, P, 0, False))
    torch.library.opcheck(OP, (Q.requires_grad_(), P, 3, False))


def test_outputs_are_not_differentiable():
    Q, P = _data(4, 10, 3, torch.float64, "cpu")
    dist, idx = knn_extreme(Q.requires_grad_(), P.requires_grad_(), 2)
    assert not dist.requires_grad and not idx.requires_grad


def test_torch_compile_fullgraph():
    Q, P = _data(6, 20, 3, torch.float32, "cpu")
    compiled = torch.compile(lambda a, b: knn_extreme(a, b, 3, largest=False), fullgraph=True)
    dist, idx = compiled(Q, P)
    ref_dist, ref_idx = knn_extreme(Q, P, 3, largest=False)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_naming_the_argument(device):
    Q, P = _data(4, 6, 3, torch.float32, device)
    with pytest.raises(ValueError, match="'Q'"):
        OP(Q[0], P, 1, True)
    with pytest.raises(ValueError, match="'P'"):
        OP(Q, P[None], 1, True)
    with pytest.raises(ValueError, match="'P'"):
        OP(Q, P[:, :2], 1, True)
    with pytest.raises(TypeError, match="'Q'.*'P'"):
        OP(Q, P.double(), 1, True)
    with pytest.raises(TypeError, match="'Q'"):
        OP(Q.int(), P.int(), 1, True)
    with pytest.raises(ValueError, match="'k'"):
        OP(Q, P, 7, True)
    with pytest.raises(ValueError, match="'k'"):
        OP(Q, P, -1, True)
    bad = Q.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="'Q'"):
        OP(bad, P, 2, True)
    bad = P.clone()
    bad[5, 0] = float("inf")
    with pytest.raises(ValueError, match="'P'"):
        OP(Q, bad, 2, False)
    bad = P.clone()
    bad[0, 0] = 1e30  # finite, but its square overflows float32
    with pytest.raises(ValueError, match="'P'"):
        OP(Q, bad, 2, False)


@pytest.mark.cuda
def test_mixed_devices_raise():
    Q, P = _data(4, 6, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="'Q'.*'P'"):
        OP(Q, P.cuda(), 1, True)


def test_wrapper_bad_python_arguments():
    Q, P = _data(4, 6, 3, torch.float32, "cpu")
    with pytest.raises(TypeError, match="'Q'"):
        knn_extreme(Q.numpy(), P, 1)
    with pytest.raises(TypeError, match="'P'"):
        knn_extreme(Q, [[1.0, 2.0, 3.0]], 1)
    with pytest.raises(TypeError, match="'k'"):
        knn_extreme(Q, P, 1.0)
    with pytest.raises(TypeError, match="'k'"):
        knn_extreme(Q, P, True)
    with pytest.raises(ValueError, match="'k'"):
        knn_extreme(Q, P, -1)
    with pytest.raises(ValueError, match="'k'"):
        knn_extreme(Q, P, 7)
    for flag in (None, 0, "nearest", torch.tensor(False)):  # None used to mean nearest
        with pytest.raises(TypeError, match="'largest' must be a bool"):
            knn_extreme(Q, P, 1, largest=flag)
