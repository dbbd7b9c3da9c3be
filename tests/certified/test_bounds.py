"""Bounds and budget of certified removal: reference numbers and validity of the bounds."""

import math

import numpy as np
import pytest
import torch

from fastunlearn.certified import bounds
from fastunlearn.certified.bounds import (
    GAMMA_PAPER,
    GAMMA_TIGHT,
    c_delta,
    data_dependent_bound,
    epsilon_spent,
    noise_budget,
    resolve_gamma,
    worst_case_bound,
)
from fastunlearn.certified.math import (
    logistic_gradient,
    logistic_hessian,
    normalize_rows,
    spectral_norm_upper,
)


@pytest.mark.parametrize(
    ("delta", "c", "budget"),
    [(1e-2, 3.1656, 3.159), (1e-4, 4.3854, 2.280), (1e-5, 4.8823, 2.048)],
)
def test_c_and_budget_match_reference_table(delta, c, budget):
    assert c_delta(delta) == pytest.approx(c, abs=5e-5)
    assert noise_budget(10.0, 1.0, delta) == pytest.approx(budget, abs=5e-4)


def test_budget_formula_and_epsilon_spent_invert():
    b = noise_budget(3.0, 0.5, 1e-3)
    assert b == pytest.approx(3.0 * 0.5 / math.sqrt(2 * math.log(1.5 / 1e-3)), rel=1e-15)
    assert epsilon_spent(b, 3.0, 1e-3) == pytest.approx(0.5, rel=1e-12)
    assert noise_budget(0.0, 1.0, 1e-4) == 0.0
    assert epsilon_spent(0.0, 0.0, 1e-4) == 0.0
    assert epsilon_spent(1e-9, 0.0, 1e-4) == math.inf


def test_worst_case_reference_number():
    # MNIST 3v8, lambda 1e-3, n = 11,982: 83.5 per removal
    assert worst_case_bound(1e-3, 11982) == pytest.approx(83.47, abs=0.01)
    assert worst_case_bound(1e-3, 11982) == pytest.approx(1.0 / (1e-6 * 11981), rel=1e-12)


def test_worst_case_is_infinite_where_lam_squared_underflows():
    # lam * lam is 0 in float64 below ~1e-154: +inf (the C++ kernels' value), no
    # ZeroDivisionError (it crashed `fastunlearn remove --lam 1e-300`)
    assert worst_case_bound(1e-300, 100) == math.inf
    assert worst_case_bound(1e-300, [50, 60], [1, 2]) == math.inf
    assert math.isfinite(worst_case_bound(1e-150, 100))


def test_a_vanishing_lam_is_an_error_naming_lam():
    from fastunlearn.certified import CertifiedLogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int)
    with pytest.warns(UserWarning):
        model = CertifiedLogisticRegression(lam=1e-300, max_iter=5).fit(X, y)
    coef = model.coef_.copy()
    with pytest.raises(RuntimeError, match="'lam' is too small"):
        model.remove([0])
    assert np.array_equal(model.coef_, coef) and len(model.removed_indices_) == 0


def test_worst_case_carries_the_row_norm_cubed():
    # Theorem 1 with rows up to R long: the curvature term l''(x^T w) x x^T is gamma R^3
    # Lipschitz and the logistic gradient is at most R long: 4 gamma m^2 R^2 R^3 / (lam^2 (n-m))
    R = 3.0
    got = worst_case_bound(0.5, 40, 2, GAMMA_PAPER, C=R, row_norm=R)
    assert got == pytest.approx(4 * 0.25 * 4 * R**5 / (0.25 * 38), rel=1e-12)
    assert worst_case_bound(0.5, 40, 2, C=1.0, row_norm=1.0) == worst_case_bound(0.5, 40, 2)
    with pytest.raises(ValueError, match="'row_norm'"):
        worst_case_bound(0.5, 40, 2, row_norm=0.0)


def test_estimator_reports_the_row_norm_worst_case_without_normalisation():
    """Unnormalised rows (R > 1): the reported worst case is Theorem 1 with R^5, and holds."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4)) * 2.0
    y = (X[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    lam, R = 0.5, float(np.linalg.norm(X, axis=1).max())
    assert R > 1.5
    from fastunlearn.certified import CertifiedLogisticRegression

    model = CertifiedLogisticRegression(lam=lam, sigma=1e3, normalize=False, solver="cholesky")
    model.fit(X, y)
    (record,) = model.remove([5]).records
    assert record.worst_case == pytest.approx(4 * 0.25 * R**5 / (lam**2 * 59), rel=1e-12)
    # the true gradient of the perturbed objective on the remaining rows, recomputed here,
    # is within the training residual plus the data-dependent bound (which carries one R),
    # itself below the worst case
    keep = np.setdiff1d(np.arange(60), [5])
    Xr, s = X[keep], np.where(y[keep] == 1, 1.0, -1.0)
    w = model.coef_[0]
    gradient = Xr.T @ (-s / (1.0 + np.exp(s * (Xr @ w)))) + lam * len(keep) * w + model.b_[0]
    assert np.linalg.norm(gradient) <= model.training_residual_ + record.bound + 1e-12
    assert record.bound < record.worst_case


def test_worst_case_batch_is_quadratic_and_sums_classes():
    single = worst_case_bound(1e-3, 11982, 1)
    batch = worst_case_bound(1e-3, 11982, 10)
    assert batch == pytest.approx(4 * 0.25 * 100 / (1e-6 * 11972), rel=1e-12)
    assert batch / single == pytest.approx(100 * 11981 / 11972, rel=1e-12)
    per_class = worst_case_bound(0.1, torch.tensor([100.0, 50.0, 80.0]), torch.tensor([2.0, 0, 1]))
    expected = 4 * 0.25 * (4 / (0.01 * 98) + 1 / (0.01 * 79))
    assert per_class == pytest.approx(expected, rel=1e-12)
    assert worst_case_bound(1e-2, 100, 1, gamma=GAMMA_TIGHT) == pytest.approx(
        4 * GAMMA_TIGHT / (1e-4 * 99), rel=1e-12
    )
    assert worst_case_bound(1.0, 5, 5) == math.inf
    # numpy host mirrors and tensors give the same number; mismatched lengths are refused
    assert worst_case_bound(0.1, np.array([100.0, 50.0, 80.0]), np.array([2.0, 0, 1])) == per_class
    with pytest.raises(ValueError, match="'n' and 'm'"):
        worst_case_bound(0.1, np.array([100.0, 50.0]), np.array([1.0, 1.0, 1.0]))


def test_gamma_options():
    assert resolve_gamma(0.25) == GAMMA_PAPER
    assert resolve_gamma("paper") == GAMMA_PAPER
    assert resolve_gamma("tight") == pytest.approx(0.0962250448649376, rel=1e-14)
    # the tight value is the exact Lipschitz constant of sigma': max |sigma'''| on a fine grid
    z = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    s = torch.sigmoid(z)
    third = (s * (1 - s) * (1 - 2 * s)).abs().max()
    assert float(third) == pytest.approx(GAMMA_TIGHT, rel=1e-8)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "loose"])
def test_gamma_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="'gamma'"):
        resolve_gamma(bad)


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5])
def test_delta_outside_unit_interval(delta):
    with pytest.raises(ValueError, match="'delta'"):
        c_delta(delta)
    with pytest.raises(ValueError, match="'delta'"):
        noise_budget(1.0, 1.0, delta)


def test_budget_rejects_bad_sigma_epsilon():
    with pytest.raises(ValueError, match="'sigma'"):
        noise_budget(-1.0, 1.0, 1e-4)
    with pytest.raises(ValueError, match="'epsilon'"):
        noise_budget(1.0, 0.0, 1e-4)
    with pytest.raises(ValueError, match="'epsilon'"):
        noise_budget(1.0, -2.0, 1e-4)
    with pytest.raises(ValueError, match="'lam'"):
        worst_case_bound(0.0, 10)
    with pytest.raises(TypeError, match="'delta'"):
        c_delta("0.1")


def test_data_dependent_bound_formula():
    spec = torch.tensor([2.0, 3.0], dtype=torch.float64)
    step = torch.tensor([0.5, 0.1], dtype=torch.float64)
    proj = torch.tensor([1.5, 0.2], dtype=torch.float64)
    out = data_dependent_bound(spec, step, proj, 0.25)
    torch.testing.assert_close(out, 0.25 * spec * step * proj, rtol=0, atol=0)
    # rows shorter than 1 do not loosen the bound; longer rows scale it
    torch.testing.assert_close(data_dependent_bound(spec, step, proj, 0.25, 0.5), out)
    torch.testing.assert_close(data_dependent_bound(spec, step, proj, 0.25, 3.0), 3 * out)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"gamma": -0.25}, ValueError, "gamma"),  # was a negative bound
        ({"gamma": float("nan")}, ValueError, "gamma"),  # was nan
        ({"gamma": 0.0}, ValueError, "gamma"),  # was 0: no bound at all
        ({"C": -1.0}, ValueError, "'C'"),
        ({"C": float("inf")}, ValueError, "'C'"),  # was inf
        ({"n": None}, TypeError, "'n'"),  # was nan
        ({"n": "100"}, TypeError, "'n'"),
        ({"n": True}, TypeError, "'n'"),
        ({"n": []}, TypeError, "'n'"),
        ({"n": float("nan")}, ValueError, "'n'"),  # was nan
        ({"m": -1}, ValueError, "'m'"),  # was 0: a negative removal count cost nothing
        ({"m": torch.tensor([1.0, float("nan")])}, ValueError, "'m'"),  # was 0
        ({"m": None}, TypeError, "'m'"),
    ],
)
def test_worst_case_refuses_bad_arguments_by_name(kwargs, error, name):
    args = {"lam": 0.1, "n": 100, "m": 1, **kwargs}
    with pytest.raises(error, match=name):
        worst_case_bound(**args)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: c_delta(10**400), "delta"),
        (lambda: noise_budget(10**400, 1.0, 1e-4), "sigma"),
        (lambda: noise_budget(1.0, 10**400, 1e-4), "epsilon"),
        (lambda: epsilon_spent(10**400, 1.0, 1e-4), "used"),
        (lambda: resolve_gamma(10**400), "gamma"),
        (lambda: worst_case_bound(10**400, 10), "lam"),
        (lambda: worst_case_bound(0.1, 10**400), "'n'"),
    ],
)
def test_ints_beyond_the_float_range_are_value_errors(call, name):
    with pytest.raises(ValueError, match=name):  # were OverflowErrors naming nothing
        call()


def test_worst_case_accepts_counts_of_any_numeric_kind():
    expected = worst_case_bound(0.1, 100, 2)
    for n, m in [(np.int64(100), np.float32(2)), (torch.tensor(100), torch.tensor([2])),
                 ([100], 2.0), (100.0, [2])]:
        assert worst_case_bound(0.1, n, m) == pytest.approx(expected, rel=1e-15)
    assert worst_case_bound(0.1, 10**30) == pytest.approx(4 * 0.25 / (0.01 * (1e30 - 1)))


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((1.0, 1.0, 1.0, -0.25), ValueError, "gamma"),  # was a negative bound
        ((1.0, 1.0, 1.0, float("nan")), ValueError, "gamma"),
        ((1.0, 1.0, 1.0, 0.25, float("nan")), ValueError, "row_norm_max"),  # was nan
        ((1.0, 1.0, 1.0, 0.25, -2.0), ValueError, "row_norm_max"),
        ((2.0, 1.0, 1.0, 0.25), TypeError, "spectral_norm"),
        ((1.0, [1.0], 1.0, 0.25), TypeError, "step_norm"),
    ],
)
def test_data_dependent_bound_refuses_bad_arguments_by_name(args, error, name):
    one = torch.ones(2, dtype=torch.float64)
    tensors = [one if isinstance(a, float) and a == 1.0 and i < 3 else a
               for i, a in enumerate(args)]
    with pytest.raises(error, match=name):
        data_dependent_bound(*tensors)


@pytest.mark.parametrize("gamma", [GAMMA_PAPER, GAMMA_TIGHT])
@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_taylor_remainder_is_within_the_data_dependent_bound(gamma, scale):
    """Corollary 1: ||g(w + v) - g(w) - H(w) v|| <= gamma ||X||_2 ||v|| ||X v||."""
    gen = torch.Generator().manual_seed(int(scale * 10) + int(gamma * 100))
    for _ in range(20):
        n, d = 40, 6
        X = normalize_rows(torch.randn(n, d, generator=gen, dtype=torch.float64))
        Y = torch.where(torch.rand(n, 1, generator=gen) < 0.5, 1.0, -1.0).double()
        A = torch.ones(n, 1, dtype=torch.float64)
        b = torch.zeros(d, 1, dtype=torch.float64)
        w = 2 * torch.randn(d, 1, generator=gen, dtype=torch.float64)
        v = scale * torch.randn(d, 1, generator=gen, dtype=torch.float64)
        H = logistic_hessian(X, A, w, 0.1)[0]
        remainder = (
            logistic_gradient(X, Y, A, w + v, b, 0.1)
            - logistic_gradient(X, Y, A, w, b, 0.1)
            - H @ v
        )
        spec = spectral_norm_upper((X.T @ X).unsqueeze(0), X.square().sum().reshape(1))
        bound = data_dependent_bound(spec, v.norm().reshape(1), (X @ v).norm().reshape(1), gamma)
        assert float(remainder.norm()) <= float(bound[0])


def test_module_exports():
    for name in bounds.__all__:
        assert hasattr(bounds, name)
