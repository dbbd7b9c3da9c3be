"""A user's journey through certified removal: sklearn workflow, inputs, budget edge, checks.

The removal results are checked against an independent float64 scipy fit of the documented
objective (same L2, same perturbation ``b_``, remaining rows) through the strong-convexity
distance bound that ``gradient_residual`` reports.
"""

from __future__ import annotations

import copy
import inspect
import re

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fastunlearn.certified import (
    BudgetExceededError,
    CertifiedLogisticRegression,
    RemovalRecord,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X[:400], y[:400]


def _exact_weights(model: CertifiedLogisticRegression, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minimiser of the documented per-class objective on the remaining rows (scipy, float64)."""
    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-300)
    keep = np.ones(X.shape[0], dtype=bool)
    keep[model.removed_indices_] = False
    lam = model.lam
    K = model.coef_.shape[0]
    out = []
    for k in range(K):
        positive = model.classes_[1] if K == 1 else model.classes_[k]
        yk = np.where(y == positive, 1.0, -1.0)[keep]
        Xr, b, n = Xn[keep], model.b_[k], int(keep.sum())

        def f(w: np.ndarray, Xr=Xr, yk=yk, b=b, n=n) -> float:
            return float(-log_expit(yk * (Xr @ w)).sum() + lam * n / 2 * w @ w + b @ w)

        def g(w: np.ndarray, Xr=Xr, yk=yk, b=b, n=n) -> np.ndarray:
            return Xr.T @ (-yk * expit(-yk * (Xr @ w))) + lam * n * w + b

        def h(w: np.ndarray, Xr=Xr, n=n) -> np.ndarray:
            z = Xr @ w
            return (Xr.T * (expit(z) * expit(-z))) @ Xr + lam * n * np.eye(w.shape[0])

        res = minimize(
            f, np.zeros(X.shape[1]), jac=g, hess=h, method="trust-exact", options={"gtol": 1e-11}
        )
        w = res.x
        for _ in range(5):  # numpy Newton polish: scipy's trust region stalls near 1e-7
            w = w - np.linalg.solve(h(w), g(w))
        assert np.linalg.norm(g(w)) < 1e-9
        out.append(w)
    return np.array(out)


@pytest.mark.parametrize("binary", [True, False])
def test_removals_match_independent_retrain_within_the_certified_distance(digits, binary):
    X, y = digits
    if binary:
        keep = np.isin(y, [3, 8])
        X, y = X[keep], y[keep]
    model = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(X, y)
    model.remove([0, 3, 7, 11])
    model.remove([20, 21, 22], batch=True)
    W_star = _exact_weights(model, X, y)
    residual = model.gradient_residual()
    assert residual["norm"] <= model.budget_used_ * (1 + 1e-9)
    distance = np.linalg.norm(model.coef_ - W_star)
    assert distance <= residual["distance_bound"] * (1 + 1e-6) + 1e-10
    # the removal moved the weights towards the retrained ones (not a no-op)
    fresh = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(X, y)
    assert distance < np.linalg.norm(fresh.coef_ - W_star)


def test_retrain_on_budget_reaches_the_exact_minimiser(digits):
    X, y = digits
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1e-3).fit(X, y)
    report = model.remove([5])
    assert report.records[0].retrained and model.retrains_ == 1
    W_star = _exact_weights(model, X, y)
    np.testing.assert_allclose(model.coef_, W_star, atol=1e-7)


@pytest.mark.parametrize("solver", ["auto", "cholesky", "cg"])
def test_removal_exactly_at_the_budget_commits_and_a_refusal_loses_nothing(digits, solver):
    X, y = digits
    model = CertifiedLogisticRegression(lam=1e-2, sigma=5.0, retrain=False, solver=solver)
    model.fit(X, y)
    probe = copy.deepcopy(model)
    bound = probe.remove(10).records[0].bound
    full = model.budget_
    model.budget_ = model.budget_used_ + bound  # the next removal lands exactly on it
    model.remove(10)
    assert model.budget_ - model.budget_used_ == 0.0 and model.n_removed_ == 1
    snapshot = copy.deepcopy(model)
    with pytest.raises(BudgetExceededError) as info:
        model.remove([11, 12])
    assert info.value.indices == (11,) and info.value.report is None
    assert np.array_equal(model.coef_, snapshot.coef_)
    assert model.budget_used_ == snapshot.budget_used_
    assert model.removed_indices_.tolist() == [10]
    assert len(model.report().records) == 1
    # with the budget back, the refused rows go as if the refusal had never happened
    model.budget_ = snapshot.budget_ = full
    model.remove([11, 12])
    snapshot.remove([11, 12])
    np.testing.assert_array_equal(model.coef_, snapshot.coef_)
    assert model.budget_used_ == snapshot.budget_used_


def test_bad_indices_are_refused_and_change_nothing(digits):
    X, y = digits
    model = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(X, y)
    model.remove(3)
    coef = model.coef_.copy()
    for bad, kind, text in [
        (3, ValueError, "already removed index 3"),
        (-1, ValueError, "unknown index -1"),
        (len(y), ValueError, f"unknown index {len(y)}"),
        ([4, 4], ValueError, "duplicate index 4"),
        (np.flatnonzero(y == 0), ValueError, "every remaining row of class 0"),
        ([1.0], TypeError, "must hold integers"),
    ]:
        with pytest.raises(kind, match=re.escape(text)):
            model.remove(bad)
    np.testing.assert_array_equal(model.coef_, coef)
    assert model.removed_indices_.tolist() == [3]


def test_sklearn_workflow_string_labels_and_float32(digits):
    X, y = digits
    labels = np.array([f"digit{v}" for v in y])
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0)
    pipe = make_pipeline(StandardScaler(), model).fit(X.astype(np.float32), labels)
    assert pipe.score(X, labels) > 0.8
    assert set(pipe.predict(X[:20])) <= set(labels)
    np.testing.assert_allclose(pipe.predict_proba(X[:5]).sum(1), 1.0)
    fitted = pipe[-1]
    assert not hasattr(clone(fitted), "coef_")
    assert clone(fitted).get_params() == fitted.get_params()
    coef64 = (
        CertifiedLogisticRegression(lam=1e-2, sigma=1.0)
        .fit(StandardScaler().fit_transform(X), labels)
        .coef_
    )
    np.testing.assert_allclose(fitted.coef_, coef64, atol=1e-5)


def test_pandas_inputs(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    ys = pd.Series([f"c{v}" for v in y])
    model = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(df, ys)
    assert list(model.feature_names_in_[:2]) == ["f0", "f1"]
    assert model.score(df, ys) == CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(
        X, np.asarray(ys)
    ).score(X, np.asarray(ys))
    model.remove(pd.Series([1, 2]))
    assert model.removed_indices_.tolist() == [1, 2]


def test_sparse_inputs_are_refused_clearly(digits):
    X, y = digits
    with pytest.raises(TypeError, match="[Ss]parse"):
        CertifiedLogisticRegression(sigma=1.0).fit(sp.csr_matrix(X), y)
    model = CertifiedLogisticRegression(sigma=1.0).fit(X, y)
    with pytest.raises(TypeError, match="[Ss]parse"):
        model.predict(sp.csr_matrix(X))


def test_record_doc_names_the_explicit_retrain_method(digits):
    # RemovalRecord's doc pointed at ``CertifiedLogisticRegression.retrain``, which is the
    # constructor flag (a bool), not a method; the explicit retrain is ``retrain_now``
    doc = inspect.getdoc(RemovalRecord) or ""
    named = re.findall(r":meth:`CertifiedLogisticRegression\.(\w+)`", doc)
    assert named
    X, y = digits
    model = CertifiedLogisticRegression(lam=1e-2, sigma=5.0).fit(X, y)
    for name in named:
        assert callable(getattr(model, name)), name
    record = model.retrain_now()
    assert record.indices == () and record.retrained
