"""Memory claims of the GLM curvature helpers, checked structurally (no timing).

The README and docstrings promise that the GLM Hessian is applied matrix-free, "one pass
over X" with no ``n x d`` temporaries, and that removals and damping never copy ``X``. The
peaks below are the CPU allocation events of ``bench.common.peak_memory`` (deterministic),
compared at sizes where the forbidden ``n x d`` temporary is >= 10x the allowed footprint;
the bounds are generous (1/4 or 1/16 of that temporary). Targets live in the benchmarks.
"""

from __future__ import annotations

import pytest
import torch

from bench.common import peak_memory
from fastunlearn import linalg, ops
from fastunlearn.ops import glm

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def _peak(fn) -> float:
    fn()  # warm-up
    return peak_memory(fn, CPU)


def _design(n: int, d: int, K: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, dtype=dtype, generator=g)
    S = torch.rand(n, K, dtype=dtype, generator=g)
    return X, S


def test_jacobi_inverse_diagonal_builds_no_n_by_d_square():
    # old: 32.0 MB (X.square(), all of X) vs 2.0 MB (one 2 MiB block of rows)
    X, S = _design(20000, 200, 3)  # X: 32 MB
    lam = 0.1
    peak = _peak(lambda: ops.jacobi_inverse_diagonal(X, S, lam))
    assert peak < X.numel() * X.element_size() / 4
    want = X.square().T @ S + lam
    want = torch.where(want > 0, want.reciprocal(), torch.ones_like(want))
    torch.testing.assert_close(ops.jacobi_inverse_diagonal(X, S, lam), want, rtol=1e-13, atol=0)


def test_glm_cg_jacobi_preconditioner_builds_no_n_by_d_square():
    # old: 32.0 MB vs 2.0 MB (the preconditioner; glm_cg itself allocates ~0.1 MB)
    X, S = _design(20000, 200, 3)
    B = torch.randn(200, 3, dtype=torch.float64)
    peak = _peak(lambda: ops.glm_cg(X, S, B, 0.1, precond="jacobi", maxiter=3))
    assert peak < X.numel() * X.element_size() / 4
    inv_diag = 1.0 / (X.square().T @ S + 0.1)
    got = ops.glm_cg(X, S, B, 0.1, precond="jacobi", maxiter=3)
    want = ops.glm_cg(X, S, B, 0.1, precond=inv_diag, maxiter=3)
    torch.testing.assert_close(got.solution, want.solution, rtol=1e-12, atol=0)


def test_glm_operator_diagonal_and_jacobi_cg_build_no_n_by_d_square():
    # old: 32.0 MB (diagonal and cg(precond="jacobi")) vs 2.0 MB
    X, S = _design(20000, 200, 3)
    H = linalg.GLMHessianOperator(X, S, lam=0.1)
    x_bytes = X.numel() * X.element_size()
    assert _peak(H.diagonal) < x_bytes / 4
    B = torch.randn(200, 3, dtype=torch.float64)
    assert _peak(lambda: linalg.cg(H, B, precond="jacobi", maxiter=3)) < x_bytes / 4
    torch.testing.assert_close(H.diagonal(), X.square().T @ S + 0.1, rtol=1e-13, atol=0)
    got = linalg.cg(H, B, precond="jacobi", maxiter=3).solution
    want = linalg.cg(H, B, precond=1.0 / (X.square().T @ S + 0.1), maxiter=3).solution
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_square_weighted_sums_memory_follows_the_block_budget(monkeypatch):
    # old: no block budget (32.0 MB whatever the budget) vs <= budget + the [d, K] output
    X, S = _design(20000, 200, 3)
    want = X.square().T @ S
    peaks = {}
    for budget in (256 << 10, 1 << 20):
        monkeypatch.setattr(glm, "SQUARE_CHUNK_BYTES", budget)
        peaks[budget] = _peak(lambda: glm.square_weighted_sums(X, S))
        assert peaks[budget] <= budget + (64 << 10)
        torch.testing.assert_close(glm.square_weighted_sums(X, S), want, rtol=1e-13, atol=0)
    assert peaks[256 << 10] < peaks[1 << 20]
    # a budget that holds all of X * X: the one-product formula itself, bit for bit
    monkeypatch.setattr(glm, "SQUARE_CHUNK_BYTES", X.numel() * X.element_size())
    assert torch.equal(glm.square_weighted_sums(X, S), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_glm_operator_construction_and_damping_do_not_copy_x(dtype):
    # old: 56.0 MB for a 32 MB float32 X, 88.0 MB for a 64 MB float64 X (isfinite(X): an
    # |X| copy and two masks), the same again in damped() (it rebuilt the operator) vs 0 B
    X, S = _design(40000, 200, 3, dtype)
    x_bytes = X.numel() * X.element_size()
    assert _peak(lambda: linalg.GLMHessianOperator(X, S, lam=0.1)) < x_bytes / 16
    H = linalg.GLMHessianOperator(X, S, lam=0.1)
    assert _peak(lambda: linalg.damped(H, 0.5)) < x_bytes / 16
    D = linalg.damped(H, 0.5)
    assert type(D) is linalg.GLMHessianOperator and D.lam == pytest.approx(0.6)
    assert D.X is X and D.shape == H.shape and D.num_heads == H.num_heads
    V = torch.randn(200, 3, dtype=dtype)
    assert torch.equal(D.matmat(V), ops.glm_hvp(X, S, V, 0.1 + 0.5))
    _still_refuses_bad_inputs(dtype)


def _still_refuses_bad_inputs(dtype: torch.dtype) -> None:
    """The cheaper checks refuse what ``isfinite`` refused; damped() still checks lam."""
    X, S = _design(50, 4, 2, dtype)
    for bad in (float("nan"), float("inf"), -float("inf")):
        Xb = X.clone()
        Xb[7, 2] = bad
        with pytest.raises(ValueError, match="'X' must be finite"):
            linalg.GLMHessianOperator(Xb, S)
        Sb = S.clone()
        Sb[3, 1] = bad
        with pytest.raises(ValueError, match="'S' must be finite and non-negative"):
            linalg.GLMHessianOperator(X, Sb)
    Sb = S.clone()
    Sb[0, 0] = -1e-30
    with pytest.raises(ValueError, match="'S' must be finite and non-negative"):
        linalg.GLMHessianOperator(X, Sb)
    empty = linalg.GLMHessianOperator(X[:0], S[:0], lam=1.0)  # n = 0: nothing to check
    assert empty.shape == (4, 4)
    H = linalg.GLMHessianOperator(X, S, lam=1e308)
    with pytest.raises(ValueError, match="'lam' must be finite"):
        linalg.damped(H, 1e308)  # the sum overflows: refused as before

