"""GLM curvature ops (glm_hvp, glm_hvp_margins, glm_hessian, glm_cg) vs the float64 reference."""

import math

import pytest
import torch
from helpers import DEVICES, DTYPES, op_error, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.ops import (
    CGResult,
    glm_cg,
    glm_hessian,
    glm_hvp,
    glm_hvp_margins,
    jacobi_inverse_diagonal,
    reference,
)

HVP = torch.ops.fastunlearn.glm_hvp.default
HVP_MARGINS = torch.ops.fastunlearn.glm_hvp_margins.default
HESSIAN = torch.ops.fastunlearn.glm_hessian.default
CG = torch.ops.fastunlearn.glm_cg.default


def problem(n, d, K, dtype=torch.float64, device="cpu"):
    """A well-conditioned random GLM problem: X, S (positive weights), V."""
    X = torch.randn(n, d, dtype=torch.float64) / math.sqrt(max(d, 1))
    S = torch.rand(n, K, dtype=torch.float64) * 0.25 + 0.05
    V = torch.randn(d, K, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (X, S, V)]


def transposed_copy(t):
    """The same values as t in a non-contiguous (column-major) layout."""
    out = torch.empty_like(t.T, memory_format=torch.contiguous_format).T.copy_(t)
    assert not out.is_contiguous() or t.numel() <= 1
    return out


# ---- glm_hvp -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d, K", [(200, 13, 1), (157, 7, 4), (3000, 31, 16)])
def test_hvp_matches_reference(device, dtype, n, d, K):
    X, S, V = problem(n, d, K, dtype, device)
    got = glm_hvp(X, S, V, 0.3)
    assert got.dtype == dtype and got.shape == (d, K)
    torch.testing.assert_close(got.double(), reference.glm_hvp(X, S, V, 0.3), **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_hvp_many_chunks(device):
    # More rows than one chunk holds (a few MB), so the chunk loop and its tail are used.
    X, S, V = problem(9001, 64, 3, torch.float64, device)
    torch.testing.assert_close(
        glm_hvp(X, S, V, 0.0), reference.glm_hvp(X, S, V, 0.0), rtol=1e-10, atol=1e-10
    )


def test_hvp_more_threads_than_chunks_of_one_row():
    # Rows longer than a CPU chunk (1 MB) give one-row chunks; with 6 threads and 9 rows the
    # last per-thread slab is empty.
    X, S, V = problem(9, 2**18 + 1, 1, torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(6)
    try:
        got = glm_hvp(X, S, V, 0.1)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got.double(), reference.glm_hvp(X, S, V, 0.1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hvp_non_contiguous(device, dtype):
    X, S, V = problem(50, 6, 3, dtype, device)
    got = glm_hvp(transposed_copy(X), transposed_copy(S), transposed_copy(V), 0.5)
    torch.testing.assert_close(got.double(), reference.glm_hvp(X, S, V, 0.5), **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 40), d=st.integers(0, 9), K=st.integers(0, 5), lam=st.floats(0.0, 3.0))
def test_hvp_hypothesis_shapes(device, n, d, K, lam):
    X, S, V = problem(n, d, K, torch.float64, device)
    got = glm_hvp(X, S, V, lam)
    assert got.shape == (d, K)
    torch.testing.assert_close(got, reference.glm_hvp(X, S, V, lam), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_hvp_empty_rows_give_lam_v(device):
    X, S, V = problem(0, 5, 3, torch.float64, device)
    torch.testing.assert_close(glm_hvp(X, S, V, 0.7), 0.7 * V)


@pytest.mark.parametrize("device", DEVICES)
def test_hvp_zero_weights_equal_dropping_rows(device):
    X, S, V = problem(60, 8, 4, torch.float64, device)
    removed = torch.zeros(60, dtype=torch.bool, device=device)
    removed[::7] = True
    S_removed = S.masked_fill(removed[:, None], 0.0)
    torch.testing.assert_close(
        glm_hvp(X, S_removed, V, 0.2), glm_hvp(X[~removed], S[~removed], V, 0.2)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_hvp_gradcheck(device):
    X, S, V = problem(9, 4, 3, torch.float64, device)
    for t in (X, S, V):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda X, S, V: glm_hvp(X, S, V, 0.4), (X, S, V))
    assert torch.autograd.gradgradcheck(lambda X, S, V: glm_hvp(X, S, V, 0.4), (X, S, V))


@pytest.mark.parametrize("device", DEVICES)
def test_hvp_gradients_of_single_inputs(device):
    # Only one input requires grad: the backward must not need the others' saved tensors.
    X, S, V = problem(9, 4, 2, torch.float64, device)
    for i in range(3):
        args = [X.clone(), S.clone(), V.clone()]
        args[i].requires_grad_(True)
        grad = torch.autograd.grad(glm_hvp(*args, 0.1).sum(), args[i])[0]
        ref_args = [X.clone(), S.clone(), V.clone()]
        ref_args[i].requires_grad_(True)
        X_, S_, V_ = ref_args
        want = torch.autograd.grad((X_.T @ (S_ * (X_ @ V_)) + 0.1 * V_).sum(), ref_args[i])[0]
        torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_hvp_opcheck(device, dtype, requires_grad):
    X, S, V = problem(11, 5, 3, dtype, device)
    for t in (X, S, V):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(HVP, (X, S, V, 0.25))


def test_hvp_compiles_without_graph_breaks():
    X, S, V = problem(20, 5, 2)
    compiled = torch.compile(
        lambda X, S, V: glm_hvp(X, S, V, 0.1) * 2, fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(X, S, V), 2 * reference.glm_hvp(X, S, V, 0.1))


# ---- glm_hvp_margins ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d, K", [(200, 13, 1), (157, 7, 4), (9001, 64, 3), (3000, 31, 16)])
def test_hvp_margins_match_reference(device, dtype, n, d, K):
    X, S, V = problem(n, d, K, dtype, device)
    out, margins = glm_hvp_margins(X, S, V, 0.3)
    assert out.dtype == margins.dtype == dtype
    assert out.shape == (d, K) and margins.shape == (n, K)
    want_out, want_margins = reference.glm_hvp_margins(X, S, V, 0.3)
    torch.testing.assert_close(out.double(), want_out, **tolerances(dtype))
    torch.testing.assert_close(margins.double(), want_margins, **tolerances(dtype))
    # the product equals glm_hvp's (the same kernel)
    torch.testing.assert_close(out, glm_hvp(X, S, V, 0.3))


def test_hvp_margins_with_one_row_chunks_and_idle_threads():
    X, S, V = problem(9, 2**18 + 1, 2, torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(6)
    try:
        out, margins = glm_hvp_margins(X, S, V, 0.1)
    finally:
        torch.set_num_threads(threads)
    want_out, want_margins = reference.glm_hvp_margins(X, S, V, 0.1)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(margins.double(), want_margins, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 40), d=st.integers(0, 9), K=st.integers(0, 5), lam=st.floats(0.0, 3.0))
def test_hvp_margins_hypothesis_shapes(device, n, d, K, lam):
    X, S, V = problem(n, d, K, torch.float64, device)
    out, margins = glm_hvp_margins(X, S, V, lam)
    assert out.shape == (d, K) and margins.shape == (n, K)
    want_out, want_margins = reference.glm_hvp_margins(X, S, V, lam)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(margins, want_margins, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hvp_margins_non_contiguous(device, dtype):
    X, S, V = problem(50, 6, 3, dtype, device)
    out, margins = glm_hvp_margins(transposed_copy(X), transposed_copy(S), transposed_copy(V), 0.5)
    want_out, want_margins = reference.glm_hvp_margins(X, S, V, 0.5)
    torch.testing.assert_close(out.double(), want_out, **tolerances(dtype))
    torch.testing.assert_close(margins.double(), want_margins, **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hvp_margins_opcheck(device, dtype):
    X, S, V = problem(11, 5, 3, dtype, device)
    torch.library.opcheck(HVP_MARGINS, (X, S, V, 0.25))


def test_hvp_margins_nan_propagates():
    X, S, V = problem(20, 4, 2)
    X[3, 1] = float("nan")
    out, margins = glm_hvp_margins(X, S, V, 0.1)
    assert torch.isnan(margins[3]).all() and torch.isfinite(margins[:3]).all()
    assert torch.isnan(out).all()


@pytest.mark.parametrize(
    "name, bad",
    [
        ("X", torch.zeros(10, 4, dtype=torch.int64)),
        ("S", torch.zeros(9, 3, dtype=torch.float64)),
        ("V", torch.zeros(5, 3, dtype=torch.float64)),
        ("V", torch.zeros(4, 3, dtype=torch.float32)),
        ("lam", -1.0),
    ],
)
def test_hvp_margins_bad_inputs_name_the_argument(name, bad):
    args = {
        "X": torch.zeros(10, 4, dtype=torch.float64),
        "S": torch.zeros(10, 3, dtype=torch.float64),
        "V": torch.zeros(4, 3, dtype=torch.float64),
        "lam": 0.1,
    }
    error = op_error(bad, torch.float64)
    args[name] = bad
    with pytest.raises(error, match=f"'{name}'"):
        HVP_MARGINS(*args.values())


# ---- the CPU kernels: fused AVX2 (few columns) and BLAS --------------------------------


@pytest.fixture(params=["auto", "blas"])
def cpu_kernel(request, monkeypatch):
    """Run a CPU test with the default kernel choice and with the BLAS path forced."""
    if request.param == "blas":
        monkeypatch.setenv("FASTUNLEARN_GLM_CPU_KERNEL", "blas")
    else:
        monkeypatch.delenv("FASTUNLEARN_GLM_CPU_KERNEL", raising=False)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(
    "n, d, K",
    # every vector count of the fused kernel (4 / 8 lanes), rows not a multiple of its row
    # blocks, more rows than one slab per thread, and past its column limit (BLAS again)
    [
        (1, 3, 1),
        (7, 5, 3),
        (523, 17, 4),
        (1031, 64, 5),
        (801, 9, 8),
        (777, 33, 9),
        (600, 20, 12),
        (1543, 7, 13),
        (900, 11, 16),
        (901, 10, 17),
        (513, 6, 24),
        (300, 5, 33),
    ],
)
def test_cpu_kernels_match_reference(cpu_kernel, dtype, threads, n, d, K):
    X, S, V = problem(n, d, K, dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, margins = glm_hvp_margins(X, S, V, 0.2)
        alone = glm_hvp(X, S, V, 0.2)
    finally:
        torch.set_num_threads(previous)
    want_out, want_margins = reference.glm_hvp_margins(X, S, V, 0.2)
    torch.testing.assert_close(out.double(), want_out, **tolerances(dtype))
    torch.testing.assert_close(margins.double(), want_margins, **tolerances(dtype))
    torch.testing.assert_close(alone, out)


def test_cpu_kernels_agree(monkeypatch):
    X, S, V = problem(1438, 64, 10, torch.float64)
    fused = glm_hvp_margins(X, S, V, 0.1)
    monkeypatch.setenv("FASTUNLEARN_GLM_CPU_KERNEL", "blas")
    blas = glm_hvp_margins(X, S, V, 0.1)
    for a, b in zip(fused, blas, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_kernels_non_contiguous_and_nan(cpu_kernel, dtype):
    X, S, V = problem(301, 12, 6, dtype)
    out, margins = glm_hvp_margins(transposed_copy(X), transposed_copy(S), V[:, :6], 0.5)
    want_out, want_margins = reference.glm_hvp_margins(X, S, V, 0.5)
    torch.testing.assert_close(out.double(), want_out, **tolerances(dtype))
    torch.testing.assert_close(margins.double(), want_margins, **tolerances(dtype))
    X[17, 4] = float("nan")
    out, margins = glm_hvp_margins(X, S, V, 0.5)
    assert torch.isnan(margins[17]).all()
    assert torch.isfinite(margins[:17]).all() and torch.isfinite(margins[18:]).all()
    assert torch.isnan(out).all()


# ---- glm_hessian -------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d, K", [(100, 6, 1), (333, 17, 5)])
def test_hessian_matches_reference(device, dtype, n, d, K):
    X, S, _ = problem(n, d, K, dtype, device)
    got = glm_hessian(X, S, 0.2)
    assert got.shape == (K, d, d) and got.dtype == dtype
    torch.testing.assert_close(got.double(), reference.glm_hessian(X, S, 0.2), **tolerances(dtype))
    assert torch.equal(got, got.transpose(1, 2))  # exactly symmetric


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_many_chunks_and_non_contiguous(device):
    X, S, _ = problem(6000, 96, 2, torch.float64, device)
    got = glm_hessian(transposed_copy(X), transposed_copy(S), 0.0)
    torch.testing.assert_close(got, reference.glm_hessian(X, S, 0.0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 30), d=st.integers(0, 7), K=st.integers(0, 4))
def test_hessian_hypothesis_shapes(device, n, d, K):
    X, S, _ = problem(n, d, K, torch.float64, device)
    got = glm_hessian(X, S, 1.5)
    assert got.shape == (K, d, d)
    if K:  # the reference cannot stack zero classes
        torch.testing.assert_close(got, reference.glm_hessian(X, S, 1.5), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_agrees_with_hvp(device):
    X, S, V = problem(80, 9, 3, torch.float64, device)
    H = glm_hessian(X, S, 0.3)
    torch.testing.assert_close(torch.einsum("kij,jk->ik", H, V), glm_hvp(X, S, V, 0.3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_nan_row_and_weight(device, dtype):
    # A NaN feature x_ij reaches row j and column j of every class's Hessian (and nothing
    # else); a NaN weight S[i, k] reaches all of H_k and no other class.
    X, S, _ = problem(150, 7, 3, dtype, device)
    X[11, 2] = float("nan")
    got = glm_hessian(X, S, 0.2)
    want = reference.glm_hessian(X, S, 0.2)
    nan_at = torch.zeros(3, 7, 7, dtype=torch.bool, device=device)
    nan_at[:, 2, :] = nan_at[:, :, 2] = True
    assert torch.equal(torch.isnan(want), nan_at)  # the oracle agrees on where NaN must be
    assert torch.equal(torch.isnan(got), nan_at)
    torch.testing.assert_close(got[~nan_at].double(), want[~nan_at], **tolerances(dtype))

    X, S, _ = problem(150, 7, 3, dtype, device)
    S[40, 1] = float("nan")
    got = glm_hessian(X, S, 0.2)
    assert torch.isnan(got[1]).all()
    assert torch.isfinite(got[[0, 2]]).all()
    torch.testing.assert_close(
        got[[0, 2]].double(), reference.glm_hessian(X, S, 0.2)[[0, 2]], **tolerances(dtype)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hessian_opcheck(device, dtype):
    X, S, _ = problem(12, 4, 2, dtype, device)
    torch.library.opcheck(HESSIAN, (X, S, 0.1))


# ---- glm_cg ------------------------------------------------------------------------------


def cg_problem(n, d, K, dtype, device, lam=0.1):
    X, S, _ = problem(n, d, K, dtype, device)
    B = torch.randn(d, K, dtype=dtype, device=device)
    return X, S, B, lam


def exact_solution(X, S, B, lam):
    return reference.glm_cg(X, S, B, lam)


def relative_error(got, want):
    return ((got.double() - want).norm(dim=0) / want.norm(dim=0)).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 16])
@pytest.mark.parametrize("precond", [None, "jacobi", "jacobi_tensor", "cholesky"])
def test_cg_converges_to_solve(device, dtype, K, precond):
    X, S, B, lam = cg_problem(300, 24, K, dtype, device)
    want = exact_solution(X, S, B, lam)
    if precond == "jacobi_tensor":
        precond = jacobi_inverse_diagonal(X, S, lam)
    elif precond == "cholesky":
        precond = torch.linalg.cholesky(glm_hessian(X, S, lam))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    result = glm_cg(X, S, B, lam, precond=precond, tol=tol)
    assert isinstance(result, CGResult)
    x, iterations, residual_norms = result
    assert x.dtype == dtype and x.shape == (24, K)
    assert iterations.dtype == torch.int64 and iterations.shape == (K,)
    assert residual_norms.dtype == dtype and residual_norms.shape == (K,)
    assert relative_error(x, want) < (1e-8 if dtype == torch.float64 else 1e-3)
    assert (iterations > 0).all() and (iterations <= 2 * 24).all()
    if isinstance(precond, torch.Tensor) and precond.dim() == 3:
        assert (iterations <= 2).all()  # exact factors: one step (two in float32 at most)
    # The returned residual norms are the true ones.
    H = reference.glm_hessian(X, S, lam)
    true_residual = (B.double() - torch.einsum("kij,jk->ik", H, x.double())).norm(dim=0)
    torch.testing.assert_close(
        residual_norms.double(),
        true_residual,
        rtol=1e-3,
        atol=1e-4 if dtype == torch.float32 else 1e-10,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_cg_jacobi_needs_fewer_iterations_on_badly_scaled_features(device):
    X, S, B, lam = cg_problem(400, 30, 3, torch.float64, device, lam=1e-3)
    X = X * torch.logspace(-1.5, 1.5, 30, dtype=torch.float64, device=device)
    plain = glm_cg(X, S, B, lam, tol=1e-10, maxiter=500)
    jacobi = glm_cg(X, S, B, lam, tol=1e-10, maxiter=500, precond="jacobi")
    want = exact_solution(X, S, B, lam)
    assert relative_error(jacobi.solution, want) < 1e-6
    assert (jacobi.iterations < plain.iterations).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cg_warm_start_reduces_iterations(device, dtype):
    X, S, B, lam = cg_problem(250, 20, 4, dtype, device)
    want = exact_solution(X, S, B, lam).to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    cold = glm_cg(X, S, B, lam, tol=tol)
    x0 = want + 1e-3 * torch.randn_like(want)
    warm = glm_cg(X, S, B, lam, x0=x0, tol=tol)
    assert (warm.iterations < cold.iterations).all()
    assert relative_error(warm.solution, want.double()) < (1e-7 if dtype == torch.float64 else 1e-3)
    # Starting at the solution needs no iteration at all.
    exact = glm_cg(X, S, B, lam, x0=exact_solution(X, S, B, lam).to(dtype), tol=1e-3)
    assert (exact.iterations == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_cg_zero_weight_rows_equal_dropping_them(device):
    X, S, B, lam = cg_problem(200, 15, 3, torch.float64, device)
    keep = torch.ones(200, dtype=torch.bool, device=device)
    keep[torch.randperm(200, device=device)[:40]] = False
    removed = glm_cg(X, S * keep[:, None], B, lam, tol=1e-12)
    dropped = glm_cg(X[keep], S[keep], B, lam, tol=1e-12)
    torch.testing.assert_close(removed.solution, dropped.solution, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(
        removed.solution, exact_solution(X[keep], S[keep], B, lam), rtol=1e-8, atol=1e-10
    )


@pytest.mark.parametrize("device", DEVICES)
def test_cg_zero_right_hand_side_takes_no_iteration(device):
    X, S, B, lam = cg_problem(50, 6, 3, torch.float64, device)
    B[:, 1] = 0
    result = glm_cg(X, S, B, lam, tol=1e-12)
    assert result.iterations[1].item() == 0
    assert torch.equal(result.solution[:, 1], torch.zeros_like(result.solution[:, 1]))
    assert result.residual_norms[1].item() == 0.0
    assert (result.iterations[[0, 2]] > 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_cg_maxiter_caps_iterations(device):
    X, S, B, lam = cg_problem(100, 20, 2, torch.float64, device, lam=1e-4)
    result = glm_cg(X, S, B, lam, tol=0.0, maxiter=3)
    assert result.iterations.tolist() == [3, 3]
    none = glm_cg(X, S, B, lam, maxiter=0)
    assert none.iterations.tolist() == [0, 0]
    assert torch.equal(none.solution, torch.zeros_like(B))
    torch.testing.assert_close(none.residual_norms, B.norm(dim=0))


@pytest.mark.parametrize("device", DEVICES)
def test_cg_non_contiguous_inputs(device):
    X, S, B, lam = cg_problem(120, 10, 3, torch.float64, device)
    x0 = torch.zeros_like(B)
    got = glm_cg(
        transposed_copy(X),
        transposed_copy(S),
        transposed_copy(B),
        lam,
        x0=transposed_copy(x0),
        precond=transposed_copy(jacobi_inverse_diagonal(X, S, lam)),
        tol=1e-12,
    )
    torch.testing.assert_close(got.solution, exact_solution(X, S, B, lam), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(0, 30),
    d=st.integers(0, 6),
    K=st.integers(0, 4),
    precond=st.sampled_from([None, "jacobi", "cholesky"]),
)
def test_cg_hypothesis_shapes(device, n, d, K, precond):
    X, S, B, lam = cg_problem(n, d, K, torch.float64, device, lam=0.5)
    if precond == "cholesky":
        precond = torch.linalg.cholesky(glm_hessian(X, S, lam))
    x, iterations, residual_norms = glm_cg(X, S, B, lam, precond=precond, tol=1e-12)
    assert x.shape == (d, K) and iterations.shape == (K,) and residual_norms.shape == (K,)
    if d and K:
        torch.testing.assert_close(x, exact_solution(X, S, B, lam), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precond", [None, "jacobi", "cholesky"])
@pytest.mark.parametrize("where", ["X", "S", "B", "x0"])
def test_cg_nan_input_is_never_reported_converged(device, dtype, precond, where):
    # NaN in X poisons every system; NaN in column k of S, B or x0 poisons system k only. A
    # poisoned system returns a NaN true residual norm, so it never passes the convergence
    # test ||r_k|| <= tol ||B[:, k]||; the other systems still converge to the exact solution.
    X, S, B, lam = cg_problem(120, 8, 3, dtype, device)
    clean = (X.clone(), S.clone(), B.clone())
    x0 = torch.zeros_like(B) if where == "x0" else None
    if precond == "cholesky":  # factors of the clean Hessians
        precond = torch.linalg.cholesky(glm_hessian(X, S, lam))
    if where == "X":
        X[17, 3] = float("nan")
    elif where == "S":
        S[17, 1] = float("nan")
    elif where == "B":
        B[3, 1] = float("nan")
    else:
        x0[3, 1] = float("nan")
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    x, iterations, residual_norms = glm_cg(X, S, B, lam, x0=x0, precond=precond, tol=tol)
    poisoned = torch.tensor([where == "X", True, where == "X"], device=device)
    assert torch.isnan(residual_norms[poisoned]).all()
    assert not (residual_norms[poisoned] <= tol * B[:, poisoned].norm(dim=0)).any()
    assert (iterations <= max(10, 2 * 8)).all()
    healthy = ~poisoned
    if healthy.any():
        assert torch.isfinite(residual_norms[healthy]).all()
        if dtype == torch.float64:  # float32's true residual may sit a little above tol
            assert (residual_norms[healthy] <= tol * B[:, healthy].norm(dim=0)).all()
        want = exact_solution(*clean, lam)[:, healthy]
        assert relative_error(x[:, healthy], want) < (1e-8 if dtype == torch.float64 else 1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_extras", [False, True])
def test_cg_opcheck(device, dtype, with_extras):
    X, S, B, lam = cg_problem(30, 5, 2, dtype, device)
    x0 = torch.zeros_like(B) if with_extras else None
    precond = jacobi_inverse_diagonal(X, S, lam) if with_extras else None
    torch.library.opcheck(CG, (X, S, B, lam, x0, precond, 1e-8, 20))


def test_jacobi_inverse_diagonal_matches_hessian_diagonal():
    X, S, _ = problem(40, 6, 3)
    X[:, 2] = 0  # zero feature with lam = 0: diagonal 0 -> entry 1
    got = jacobi_inverse_diagonal(X, S, 0.0)
    diagonal = torch.diagonal(reference.glm_hessian(X, S, 0.0), dim1=1, dim2=2).T
    want = torch.where(diagonal > 0, 1 / diagonal, torch.ones_like(diagonal))
    torch.testing.assert_close(got, want)
    assert (got[2] == 1).all()


# ---- bad inputs --------------------------------------------------------------------------


def good_args():
    X, S, B, lam = cg_problem(10, 4, 3, torch.float64, "cpu")
    return {"X": X, "S": S, "B": B, "lam": lam}


DESIGN_ERRORS = [
    ("X", torch.zeros(10, 4, dtype=torch.int64)),
    ("X", torch.zeros(10, dtype=torch.float64)),
    ("S", torch.zeros(9, 3, dtype=torch.float64)),
    ("S", torch.zeros(10, 3, dtype=torch.float32)),
    ("S", torch.zeros(10, dtype=torch.float64)),
]


@pytest.mark.parametrize(
    "name, bad",
    DESIGN_ERRORS
    + [
        ("V", torch.zeros(5, 3, dtype=torch.float64)),
        ("V", torch.zeros(4, 2, dtype=torch.float64)),
        ("V", torch.zeros(4, 3, dtype=torch.float32)),
        ("lam", -1.0),
        ("lam", float("nan")),
    ],
)
def test_hvp_bad_inputs_name_the_argument(name, bad):
    args = good_args()
    args = {"X": args["X"], "S": args["S"], "V": args["B"], "lam": args["lam"]}
    error = op_error(bad, args["X"].dtype)
    args[name] = bad
    with pytest.raises(error, match=f"'{name}'"):
        HVP(*args.values())


@pytest.mark.parametrize("name, bad", DESIGN_ERRORS + [("lam", -0.5), ("lam", float("inf"))])
def test_hessian_bad_inputs_name_the_argument(name, bad):
    args = good_args()
    args = {"X": args["X"], "S": args["S"], "lam": args["lam"]}
    error = op_error(bad, args["X"].dtype)
    args[name] = bad
    with pytest.raises(error, match=f"'{name}'"):
        HESSIAN(*args.values())


@pytest.mark.parametrize(
    "name, bad",
    DESIGN_ERRORS
    + [
        ("B", torch.zeros(5, 3, dtype=torch.float64)),
        ("B", torch.zeros(4, 3, dtype=torch.float32)),
        ("lam", -1.0),
        ("x0", torch.zeros(4, 2, dtype=torch.float64)),
        ("x0", torch.zeros(4, 3, dtype=torch.float32)),
        ("precond", torch.ones(4, 2, dtype=torch.float64)),
        ("precond", torch.ones(3, 4, 4, dtype=torch.float64)[:2]),
        ("precond", torch.ones(3, 4, 5, dtype=torch.float64)),
        ("precond", torch.ones(4, 3, dtype=torch.float32)),
        ("tol", -1e-3),
        ("tol", float("nan")),
        ("maxiter", -1),
    ],
)
def test_cg_bad_inputs_name_the_argument(name, bad):
    args = {**good_args(), "x0": None, "precond": None, "tol": 1e-6, "maxiter": 10}
    error = op_error(bad, args["X"].dtype)
    args[name] = bad
    with pytest.raises(error, match=f"'{name}'"):
        CG(*args.values())


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"lam": -1.0}, ValueError, "lam"),
        ({"lam": "1"}, TypeError, "lam"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"tol": None}, TypeError, "tol"),
        ({"maxiter": -2}, ValueError, "maxiter"),
        ({"maxiter": 2.5}, TypeError, "maxiter"),
        ({"maxiter": 2**63}, ValueError, "maxiter"),  # was the dispatcher's RuntimeError
        ({"precond": "cholesky"}, ValueError, "precond"),
        ({"precond": 3}, TypeError, "precond"),
        ({"x0": [0.0]}, TypeError, "x0"),
        ({"B": None}, TypeError, "B"),
    ],
)
def test_cg_wrapper_raises_python_errors(kwargs, error, name):
    args = {**good_args(), **kwargs}
    with pytest.raises(error, match=f"'{name}'"):
        glm_cg(args.pop("X"), args.pop("S"), args.pop("B"), args.pop("lam"), **args)


def test_wrappers_raise_python_errors():
    X, S, B, _ = good_args().values()
    with pytest.raises(TypeError, match="'X'"):
        glm_hvp(X.numpy(), S, B, 0.1)
    with pytest.raises(ValueError, match="'lam'"):
        glm_hessian(X, S, -1)
    with pytest.raises(ValueError, match="'X'"):
        jacobi_inverse_diagonal(X, S[:3], 0.1)


@pytest.mark.cuda
def test_mixed_devices_name_the_argument():
    X, S, B, lam = good_args().values()
    with pytest.raises(ValueError, match="'S'"):
        HVP(X.cuda(), S, B.cuda(), lam)
    with pytest.raises(ValueError, match="'B'"):
        CG(X.cuda(), S.cuda(), B, lam, None, None, 1e-6, 10)


# ---- ops without a gradient formula refuse inputs that require grad --------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_ops_without_gradients_refuse_inputs_that_require_grad(device):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 5, generator=gen, dtype=torch.float64).to(device)
    S = torch.rand(30, 3, generator=gen, dtype=torch.float64).to(device)
    V = torch.randn(5, 3, generator=gen, dtype=torch.float64).to(device)
    calls = {
        "glm_hvp_margins": (lambda X, S, V: glm_hvp_margins(X, S, V, 0.1), "XSV"),
        "glm_hessian": (lambda X, S, V: glm_hessian(X, S, 0.1), "XS"),
        "glm_cg": (lambda X, S, V: glm_cg(X, S, V, 0.1), "XSB"),
    }
    for op, (call, names) in calls.items():
        want = call(X, S, V)
        for i, name in enumerate(names):
            args = [X, S, V]
            args[i] = args[i].clone().requires_grad_(True)
            # outputs without a gradient would be silently wrong inside a larger graph
            with pytest.raises(ValueError, match=rf"{op}: not differentiable.*'{name}'"):
                call(*args)
            with torch.no_grad():
                got = call(*args)
            for a, b in zip(got, want, strict=True):
                assert not a.requires_grad
                torch.testing.assert_close(a, b, rtol=0, atol=0)
