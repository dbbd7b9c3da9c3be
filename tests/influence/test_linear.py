"""Certified linear variant against an independent float64 Newton step and autograd gradients."""

import math

import pytest
import torch

from fastunlearn.data import load_digits_dataset
from fastunlearn.influence import fit_logistic, linear_influence_update, required_sigma

D64 = torch.float64


def _objective_grad(X, y, w, b, lam):
    """Independent gradient of sum log(1+exp(-y w.x)) + lam n/2 |w|^2 + b.w by autograd."""
    w = w.clone().requires_grad_(True)
    loss = torch.nn.functional.softplus(-y * (X @ w)).sum() + 0.5 * lam * X.shape[0] * w.square(
    ).sum() + b @ w
    return torch.autograd.grad(loss, w)[0]


#: Lipschitz constant of sigma'(z) = sigma(z) (1 - sigma(z)): max |sigma''| = 1 / (6 sqrt 3).
GAMMA = 1.0 / (6.0 * math.sqrt(3.0))


def _closed_form_bound(X_new, w, w_new, gamma=GAMMA):
    """Guo et al. Cor. 1 as documented: gamma max(1, max_i ||x~_i||) ||X~||_2 ||v|| ||X~ v||.

    ``v = w - w_new`` is the Newton step.
    """
    v = w - w_new
    row_max = float(torch.linalg.vector_norm(X_new, dim=1).max())
    spectral = float(torch.linalg.matrix_norm(X_new, 2))
    return gamma * max(1.0, row_max) * spectral * float(v.norm()) * float((X_new @ v).norm())


@pytest.fixture(scope="module")
def problem():
    split = load_digits_dataset(binary=(3, 8), dtype=D64, seed=0)
    X = split.X_train
    y = split.y_train.to(D64) * 2 - 1
    lam = 1e-3
    w, b = fit_logistic(X, y, lam, sigma=0.5, seed=3)
    return X, y, w, b, lam


def test_fit_reaches_the_minimiser(problem):
    X, y, w, b, lam = problem
    assert float(_objective_grad(X, y, w, b, lam).norm()) < 1e-8


def test_newton_step_equals_dense_newton_and_residual_is_exact(problem):
    X, y, w, b, lam = problem
    rows = torch.arange(0, 40)
    columns = torch.tensor([5, 6, 13, 14])
    new_X = X[rows].clone()
    new_X[:, columns] = 0.0
    res = linear_influence_update(X, y, w, rows, new_X=new_X, lam=lam, b=b, sigma=0.5)
    # independent: G from autograd of the loss difference, H of the corrected objective
    Xc = X.clone()
    Xc[rows] = new_X
    G = _objective_grad(Xc, y, w, b, lam) - _objective_grad(X, y, w, b, lam)
    s = torch.sigmoid(Xc @ w)
    H = Xc.T @ ((s * (1 - s)).unsqueeze(1) * Xc) + lam * X.shape[0] * torch.eye(X.shape[1],
                                                                                dtype=D64)
    expected = w - torch.linalg.solve(H, G)
    torch.testing.assert_close(res.weights, expected, rtol=1e-9, atol=1e-11)
    residual = float(_objective_grad(Xc, y, res.weights, b, lam).norm())
    assert res.residual == pytest.approx(residual, rel=1e-8, abs=1e-14)
    assert res.residual_before == pytest.approx(float(G.norm()), rel=1e-6)
    assert res.residual < 0.05 * res.residual_before
    assert res.bound >= res.residual - 1e-8  # the data-dependent bound holds
    # its value (the spectral norm is a safe upper bound, inflated by a 1e-6 margin)
    assert res.bound == pytest.approx(_closed_form_bound(Xc, w, res.weights), rel=1e-5)
    c = math.sqrt(2 * math.log(1.5 / 0.01))
    assert res.sigma_required == pytest.approx(residual * c / 0.1, rel=1e-8)
    assert res.certified == (res.residual <= 0.5 * 0.1 / c)
    assert res.epsilon_spent == pytest.approx(c * res.residual / 0.5)


def test_feature_removal_second_order_beats_first_order(problem):
    # the reference's setting: zero sensitive features in every row where they are non-zero
    X, y, w, b, lam = problem
    columns = torch.tensor([5, 6, 13, 14])
    rows = torch.nonzero((X[:, columns] != 0).any(dim=1)).reshape(-1)
    new_X = X[rows].clone()
    new_X[:, columns] = 0.0
    second = linear_influence_update(X, y, w, rows, new_X=new_X, lam=lam, b=b)
    first = linear_influence_update(X, y, w, rows, new_X=new_X, lam=lam, b=b, order=1,
                                    tau=1e-3)
    assert second.residual < 0.1 * first.residual
    assert first.residual < first.residual_before
    assert second.certified is None and second.bound is not None and first.bound is None
    assert second.num_gradients == 2 * rows.numel()


def test_label_change_reduces_residual(problem):
    X, y, _, _, _ = problem
    lam = 1e-2  # flipping confident labels is a large change: needs a better-conditioned loss
    w, b = fit_logistic(X, y, lam, sigma=0.5, seed=3)
    rows = torch.arange(10, 30)
    res = linear_influence_update(X, y, w, rows, new_y=-y[rows], lam=lam, b=b)
    assert res.residual < 0.1 * res.residual_before
    assert res.bound >= res.residual - 1e-8
    # a label change leaves X~ = X
    assert res.bound == pytest.approx(_closed_form_bound(X, w, res.weights), rel=1e-5)


def test_bound_scales_with_long_rows_and_gamma(problem):
    # rows of norm up to 2: the bound carries the factor max(1, max_i ||x~_i||) = 2
    X, y, _, _, _ = problem
    X2 = 2.0 * X
    assert float(torch.linalg.vector_norm(X2, dim=1).max()) == pytest.approx(2.0)
    lam = 1e-2
    w, b = fit_logistic(X2, y, lam, sigma=0.5, seed=3)
    rows = torch.arange(5, 25)
    res = linear_influence_update(X2, y, w, rows, new_y=-y[rows], lam=lam, b=b, gamma=0.25)
    expected = _closed_form_bound(X2, w, res.weights, gamma=0.25)
    assert res.bound == pytest.approx(expected, rel=1e-5)
    assert res.bound >= res.residual
    tight = linear_influence_update(X2, y, w, rows, new_y=-y[rows], lam=lam, b=b)
    torch.testing.assert_close(tight.weights, res.weights, rtol=0, atol=0)
    assert tight.bound == pytest.approx(expected * GAMMA / 0.25, rel=1e-5)


def test_required_sigma_reference_constant():
    # reference: epsilon 0.1, delta 0.01, c = 3.166
    assert required_sigma(1.0) == pytest.approx(31.66, abs=0.01)
    with pytest.raises(ValueError, match="residual"):
        required_sigma(-1.0)


@pytest.mark.parametrize("case", ["rows", "labels", "nan", "shape", "tau"])
def test_bad_input(problem, case):
    X, y, w, b, lam = problem
    kwargs = dict(lam=lam, b=b)
    rows = torch.arange(3)
    if case == "rows":
        rows = torch.tensor([0, X.shape[0]])
        match = "rows.*outside"
    elif case == "labels":
        kwargs["new_y"] = torch.tensor([2.0, 1.0, -1.0], dtype=D64)
        match = "new_y.*binary"
    elif case == "nan":
        bad = X[rows].clone()
        bad[0, 0] = float("nan")
        kwargs["new_X"] = bad
        match = "new_X.*non-finite"
    elif case == "shape":
        kwargs["new_X"] = X[:2]
        match = "new_X.*shape"
    else:
        kwargs.update(order=1, tau=None)
        match = "tau"
    w0 = w.clone()
    with pytest.raises(ValueError, match=match):
        linear_influence_update(X, y, w, rows, **kwargs)
    assert torch.equal(w, w0)


def _nan_at_0(t):
    t = t.clone()
    t[0] = float("nan")
    return t


@pytest.mark.parametrize(("case", "error", "match"), [
    ("tau_inf", ValueError, "'tau' must be finite and > 0"),
    ("tau_nan", ValueError, "'tau' must be finite and > 0"),
    ("tau_true", TypeError, "'tau' must be a real number"),
    ("tau_huge", ValueError, "not finite.*'tau' = 1e.308 too large"),
    ("b_nan", ValueError, "'b' contains non-finite"),
    ("b_list", TypeError, "'b' must be a torch.Tensor"),
    ("w_nan", ValueError, "'w' contains non-finite"),
    ("w_shape", ValueError, "'w' must have shape"),
    ("order_float", TypeError, "'order'"),
    ("gamma_negative", ValueError, "'gamma'"),
])
def test_bad_numbers_are_named(problem, case, error, match):
    X, y, w, b, lam = problem
    kwargs = dict(lam=lam, b=b)
    weights = w
    if case.startswith("tau"):
        tau = {"tau_inf": float("inf"), "tau_nan": float("nan"), "tau_true": True,
               "tau_huge": 1e308}[case]
        kwargs.update(order=1, tau=tau, new_y=-y[:2])
    elif case == "b_nan":
        kwargs["b"] = _nan_at_0(b)
    elif case == "b_list":
        kwargs["b"] = b.tolist()
    elif case == "w_nan":
        weights = _nan_at_0(w)
    elif case == "w_shape":
        weights = w[:-1]
    elif case == "order_float":
        kwargs["order"] = 2.0
    else:
        kwargs["gamma"] = -1.0
    w0, b0 = w.clone(), b.clone()
    with pytest.raises(error, match=match):
        linear_influence_update(X, y, weights, [0, 1], **kwargs)
    assert torch.equal(w, w0) and torch.equal(b, b0)


def test_empty_and_2d_rows_are_named(problem):
    X, y, w, b, lam = problem
    with pytest.raises(ValueError, match="'rows' is empty"):
        linear_influence_update(X, y, w, [], lam=lam)
    with pytest.raises(ValueError, match="'rows' must be 1-D"):
        linear_influence_update(X, y, w, [[0, 1]], lam=lam)
