"""Numerics of certified removal: objective, derivatives, Newton training, norms, seeds."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fastunlearn.certified import math as cmath
from fastunlearn.certified.math import (
    cholesky_apply,
    cholesky_factor,
    curvature_weights,
    derive_seed,
    draw_perturbation,
    gram_matrices,
    lambda_max_upper,
    logistic_gradient,
    logistic_hessian,
    logistic_objective,
    loss_derivative,
    newton_fit,
    no_tf32,
    normalize_rows,
    residual_norm,
    spectral_norm_upper,
    subsample_membership,
)
from fastunlearn.data import load_digits_dataset


def _problem(n=30, d=5, K=3, seed=0, drop=0.3):
    gen = torch.Generator().manual_seed(seed)
    X = normalize_rows(torch.randn(n, d, generator=gen, dtype=torch.float64))
    Y = torch.where(torch.rand(n, K, generator=gen) < 0.4, 1.0, -1.0).double()
    A = (torch.rand(n, K, generator=gen) > drop).double()
    W = torch.randn(d, K, generator=gen, dtype=torch.float64)
    b = torch.randn(d, K, generator=gen, dtype=torch.float64)
    return X, Y, A, W, b


def test_normalize_rows_unit_norm_and_zero_rows():
    X = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-200, 0.0], [3e200, -4e200]], dtype=torch.float64)
    out = normalize_rows(X)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert torch.equal(out[1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(out[2], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out[3], torch.tensor([0.6, -0.8], dtype=torch.float64))


def test_objective_gradient_hessian_match_autograd():
    X, Y, A, W, b = _problem()
    lam = 0.05
    W_ = W.clone().requires_grad_(True)
    f = logistic_objective(X, Y, A, W_, b, lam)
    # by hand, independent of the module: sum_i A log(1 + exp(-y z)) + lam n_k/2 |w|^2 + b.w
    Z = X @ W
    manual = (
        (A * torch.log1p(torch.exp(-Y * Z))).sum(0)
        + 0.5 * lam * A.sum(0) * (W * W).sum(0)
        + (b * W).sum(0)
    )
    torch.testing.assert_close(f.detach(), manual, rtol=1e-13, atol=1e-13)
    (grad,) = torch.autograd.grad(f.sum(), W_)
    torch.testing.assert_close(logistic_gradient(X, Y, A, W, b, lam), grad, rtol=1e-12, atol=1e-12)
    H = logistic_hessian(X, A, W, lam)
    for k in range(W.shape[1]):
        cols = slice(k, k + 1)

        def objective(w, cols=cols):
            return logistic_objective(X, Y[:, cols], A[:, cols], w, b[:, cols], lam).sum()

        Hk = torch.autograd.functional.hessian(objective, W[:, cols].clone())
        Hk = Hk.reshape(X.shape[1], X.shape[1])
        torch.testing.assert_close(H[k], Hk, rtol=1e-12, atol=1e-12)


def test_loss_derivative_is_stable_for_large_margins():
    Z = torch.tensor([[40.0], [-40.0], [800.0]], dtype=torch.float64)
    Y = torch.tensor([[1.0], [1.0], [-1.0]], dtype=torch.float64)
    out = loss_derivative(Z, Y)
    assert float(out[0]) == pytest.approx(-torch.exp(torch.tensor(-40.0)).item(), rel=1e-12)
    assert float(out[0]) != 0.0  # sigma(z) - 1 would cancel to 0 here
    assert float(out[1]) == pytest.approx(-1.0)
    assert float(out[2]) == pytest.approx(1.0)
    w = curvature_weights(Z, torch.ones_like(Z))
    assert torch.isfinite(w).all() and (w >= 0).all()


@pytest.mark.parametrize("sigma", [0.0, 1.0, 50.0])
def test_newton_reaches_tolerance(sigma):
    X, Y, A, _, _ = _problem(n=60, d=6, K=3, seed=1)
    b = sigma * torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = newton_fit(X, Y, A, b, 1e-2, tol=1e-10)
    assert res.converged and res.residual <= 1e-10
    assert res.iterations < 30
    assert residual_norm(X, Y, A, res.W, b, 1e-2) == pytest.approx(res.residual, abs=1e-13)
    # the returned factors belong to a Hessian near the optimum
    H = logistic_hessian(X, A, res.W, 1e-2)
    LLt = res.cholesky @ res.cholesky.transpose(-1, -2)
    assert float((LLt - H).norm() / H.norm()) < 1e-3


def test_newton_converged_is_a_python_bool_for_a_numpy_tol():
    import numpy as np

    X, Y, A, _, _ = _problem(n=40, d=4, K=2, seed=2)
    b = torch.zeros(4, 2, dtype=torch.float64)
    res = newton_fit(X, Y, A, b, 1e-2, tol=np.float32(1e-6))
    assert res.converged is True  # not np.True_: the result compares and serialises plainly


def test_newton_matches_sklearn_without_perturbation():
    data = load_digits_dataset(binary=(3, 8))
    X = data.X_train
    y = data.y_train.numpy()
    Y = torch.from_numpy(np.where(y == 1, 1.0, -1.0)).unsqueeze(1)
    A = torch.ones_like(Y)
    lam = 1e-2
    n = X.shape[0]
    res = newton_fit(X, Y, A, torch.zeros(X.shape[1], 1, dtype=torch.float64), lam)
    # sklearn minimises sum log-loss + ||w||^2 / (2 C): C = 1 / (lam n)
    ref = LogisticRegression(C=1.0 / (lam * n), fit_intercept=False, tol=1e-12, max_iter=10000)
    ref.fit(X.numpy(), y)
    np.testing.assert_allclose(res.W[:, 0].numpy(), ref.coef_[0], rtol=1e-5, atol=1e-6)


def test_newton_warns_when_not_converged():
    from sklearn.exceptions import ConvergenceWarning

    X, Y, A, _, b = _problem(seed=2)
    with pytest.warns(ConvergenceWarning, match="tol"):
        res = newton_fit(X, Y, A, 30 * b, 1e-3, max_iter=1, tol=1e-14)
    assert not res.converged and res.iterations == 1


def test_newton_warm_start_already_optimal():
    X, Y, A, _, b = _problem(seed=4)
    res = newton_fit(X, Y, A, b, 0.1)
    again = newton_fit(X, Y, A, b, 0.1, W0=res.W, tol=1e-6)
    assert again.iterations == 0
    torch.testing.assert_close(again.W, res.W, rtol=0, atol=0)
    assert again.cholesky.shape == (3, 5, 5)


def test_cholesky_helpers():
    X, Y, A, W, _ = _problem()
    H = logistic_hessian(X, A, W, 0.1)
    B = torch.randn(5, 3, dtype=torch.float64)
    V = cholesky_apply(cholesky_factor(H), B)
    torch.testing.assert_close(torch.bmm(H, V.T.unsqueeze(-1)).squeeze(-1).T, B)
    with pytest.raises(RuntimeError, match="positive definite"):
        cholesky_factor(-H)


def test_spectral_upper_bound_is_safe_and_tight():
    gen = torch.Generator().manual_seed(5)
    for n, d in [(50, 8), (10, 20), (200, 3)]:
        X = torch.randn(n, d, generator=gen, dtype=torch.float64)
        A = (torch.rand(n, 2, generator=gen) < 0.7).double()
        gram = gram_matrices(X, A)
        trace = X.square().sum(1) @ A
        upper = spectral_norm_upper(gram, trace)
        for g in range(2):
            exact = torch.linalg.matrix_norm(X[A[:, g] > 0], ord=2)
            assert float(upper[g]) >= float(exact)
            assert float(upper[g]) <= float(exact) * (1 + 1e-6)
        torch.testing.assert_close(lambda_max_upper(gram, trace), upper.square())
    # a rank-one Gram whose eigenvalue equals the trace: the Frobenius cap takes over exactly
    x = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    assert float(spectral_norm_upper((x.T @ x).unsqueeze(0), torch.tensor([9.0]).double())) == 3.0
    empty = spectral_norm_upper(torch.zeros(2, 0, 0, dtype=torch.float64), torch.zeros(2).double())
    assert empty.shape == (2,) and float(empty.abs().sum()) == 0.0


def test_draw_perturbation_is_seeded_and_distinct():
    a = draw_perturbation(7, 0, 64, 10, 10.0)
    assert a.shape == (64, 10) and a.dtype == torch.float64
    torch.testing.assert_close(a, draw_perturbation(7, 0, 64, 10, 10.0), rtol=0, atol=0)
    assert not torch.equal(a, draw_perturbation(7, 1, 64, 10, 10.0))
    assert not torch.equal(a, draw_perturbation(8, 0, 64, 10, 10.0))
    assert float(a.std()) == pytest.approx(10.0, rel=0.1)
    assert float(draw_perturbation(7, 0, 4, 1, 0.0).abs().sum()) == 0.0
    # the global RNG is not consumed
    state = torch.get_rng_state()
    draw_perturbation(1, 2, 3, 4, 1.0)
    assert torch.equal(state, torch.get_rng_state())
    assert derive_seed(3, "perturbation", 1) == derive_seed(3, "perturbation", 1)
    assert derive_seed(3, "perturbation", 1) != derive_seed(3, "subsample", 1)


def test_subsample_membership_semantics():
    gen = torch.Generator().manual_seed(9)
    Y = torch.where(torch.rand(4000, 3, generator=gen) < 0.2, 1.0, -1.0).double()
    M = subsample_membership(Y, 0.25, seed=11)
    assert M.dtype == torch.bool and M.shape == Y.shape
    assert bool(M[Y > 0].all())  # every positive kept
    frac = float(M[Y < 0].double().mean())
    assert frac == pytest.approx(0.25, abs=0.02)
    assert torch.equal(M, subsample_membership(Y, 0.25, seed=11))
    assert not torch.equal(M, subsample_membership(Y, 0.25, seed=12))
    assert bool(subsample_membership(Y, 1.0, seed=0).all())


def test_no_tf32_restores_flags_even_on_error():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        with no_tf32():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(KeyError), no_tf32():
            raise KeyError("x")
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_module_exports():
    for name in cmath.__all__:
        assert hasattr(cmath, name)


def test_small_problem_threads_runs_small_cpu_problems_on_one_thread():
    from fastunlearn.certified.math import SINGLE_THREAD_ENTRIES, small_problem_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with small_problem_threads(torch.zeros(10, 10)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored
        big = torch.zeros(SINGLE_THREAD_ENTRIES + 1)
        with small_problem_threads(big):
            assert torch.get_num_threads() == 2  # large problems keep every thread
        with pytest.raises(RuntimeError), small_problem_threads(torch.zeros(3)):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(before)
