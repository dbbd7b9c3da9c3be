"""CertifiedLogisticRegression: sklearn compatibility, bounds, solvers, retraining, errors."""

import sys
import types
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastunlearn.certified import (
    BudgetExceededError,
    CertifiedLogisticRegression,
    RemovalRecord,
    RemovalReport,
    noise_budget,
    woodbury,
    worst_case_bound,
)
from fastunlearn.certified.estimator import (
    CG_REFRESH_ITERATIONS,
    SPECTRAL_REFRESH_FRACTION,
    WOODBURY_MAX_ROWS,
)
from fastunlearn.certified.math import draw_perturbation, newton_fit, normalize_rows
from fastunlearn.data import load_digits_dataset
from tests.certified.fixed_helpers import perturbed_gradient
from tests.helpers import assert_same_snapshot

LAM = 1e-2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def binary():
    data = load_digits_dataset(binary=(3, 8))
    return data.X_train.numpy(), data.y_train.numpy(), data.X_test.numpy(), data.y_test.numpy()


@pytest.fixture(scope="module")
def tenclass():
    data = load_digits_dataset()
    return data.X_train.numpy(), data.y_train.numpy(), data.X_test.numpy(), data.y_test.numpy()


def tiny(seed=0, n=40, d=5, classes=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 2
    y = np.arange(n) % classes
    X = centers[y] + rng.normal(size=(n, d))
    return X, y


def true_gradient(model, X, y):
    """||grad L_b(W; D_rem)|| recomputed in numpy (:func:`perturbed_gradient`)."""
    G, member, _, _ = perturbed_gradient(model, X, y)
    return np.linalg.norm(G), G, member


def snapshot(model):
    return {
        "coef": model.coef_.copy(),
        "b": model.b_.copy(),
        "budget": model.budget_,
        "used": model.budget_used_,
        "left": model.budget_left_,
        "removed": model.removed_indices_.copy(),
        "retrains": model.retrains_,
        "n_removed": model.n_removed_,
        "W": model._W.clone(),
        "A": model._A.clone(),
        "gram": model._gram.clone(),
        "history": len(model._history),
        "n_features_in": model.n_features_in_,
        "classes": model.classes_.copy(),
        "cfg": dict(model._cfg),
        "X": model._X.clone(),
        "member": model._member.clone(),
    }


def assert_unchanged(model, before):
    assert_same_snapshot(snapshot(model), before)


# ---- scikit-learn compatibility ------------------------------------------------------------


@parametrize_with_checks(
    [
        CertifiedLogisticRegression(),
        CertifiedLogisticRegression(
            train_mode="ovr", subsample_ratio=0.5, solver="cg", gamma="tight", sigma=0.1
        ),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    # Every applicable check runs. Skipped by scikit-learn itself here: sample-weight checks
    # (fit takes no sample_weight: per-row weights would change the certified objective),
    # pandas checks (pandas is not installed) and array-API checks (not supported).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


def test_clone_get_set_params_and_pipeline(binary):
    X, y, Xt, yt = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0, seed=3)
    params = model.get_params()
    assert params["lam"] == LAM and params["sigma"] == 1.0 and params["checkpoint"] is None
    copy = clone(model)
    assert copy.get_params() == params and copy is not model
    model.set_params(epsilon=0.5, gamma="tight")
    assert model.epsilon == 0.5 and model.gamma == "tight"
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 3.0), clone(copy)).fit(X, y)
    direct = clone(copy).fit(X, y)
    # rows are normalised, so scaling the features first changes nothing
    np.testing.assert_allclose(pipe[-1].coef_, direct.coef_, rtol=1e-9, atol=1e-12)
    assert pipe.score(Xt, yt) == direct.score(Xt, yt) > 0.9
    # clone of a fitted model is unfitted
    with pytest.raises(NotFittedError):
        clone(direct).remove(0)


def test_predictions_shapes_and_probabilities(binary, tenclass):
    X, y, Xt, yt = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0).fit(X, y)
    assert model.coef_.shape == (1, 64) and model.b_.shape == (1, 64)
    z = model.decision_function(Xt)
    assert z.shape == (Xt.shape[0],)
    P = model.predict_proba(Xt)
    np.testing.assert_allclose(P.sum(1), 1.0)
    np.testing.assert_array_equal(model.predict(Xt), model.classes_[(z > 0).astype(int)])
    assert model.score(Xt, yt) > 0.95
    X, y, Xt, yt = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0).fit(X, y)
    assert model.coef_.shape == (10, 64)
    Z = model.decision_function(Xt)
    assert Z.shape == (Xt.shape[0], 10)
    np.testing.assert_allclose(model.predict_proba(Xt).sum(1), 1.0)
    np.testing.assert_array_equal(model.predict(Xt), Z.argmax(1))
    assert model.score(Xt, yt) > 0.8
    ovr2 = CertifiedLogisticRegression(lam=LAM, sigma=1.0, train_mode="ovr").fit(*binary[:2])
    assert ovr2.coef_.shape == (2, 64)


def test_training_reaches_exact_minimiser(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    residual, _, _ = true_gradient(model, X, y)
    assert model.training_residual_ <= 1e-10
    assert residual <= 1e-10
    assert model.budget_used_ == model.training_residual_
    assert model.budget_ == pytest.approx(2.2803, abs=1e-4)
    assert model.budget_left_ == model.budget_ - model.budget_used_
    assert model.n_removed_ == 0 and model.retrains_ == 0 and model.removed_indices_.size == 0
    np.testing.assert_array_equal(model.b_, draw_perturbation(0, 0, 64, 1, 10.0).T.numpy())


# ---- bounds hold along removal sequences ---------------------------------------------------


def _check_sequence(model, X, y, order, batch=False, tol=1e-10):
    """Remove ``order``; after every step the true residual is within the bounds."""
    groups = [order] if batch else [[i] for i in order]
    worst_ratio = 0.0
    for rows in groups:
        before, G_before, member_before = true_gradient(model, X, y)
        used_before = model.budget_used_
        report = model.remove(rows, batch=batch)
        (record,) = report.records
        after, G_after, _ = true_gradient(model, X, y)
        if record.retrained:
            assert after <= model.budget_used_ + tol
            continue
        assert record.bound >= 0.0
        # per step: grad L'(w') = grad L(w) + Taylor remainder + solve residual
        assert np.linalg.norm(G_after - G_before) <= record.bound + tol
        # cumulative: the true residual never exceeds the used budget
        assert after <= model.budget_used_ + tol
        assert model.budget_used_ == pytest.approx(used_before + record.bound, rel=1e-12)
        assert record.cumulative == model.budget_used_
        assert record.budget_left == pytest.approx(model.budget_ - model.budget_used_)
        assert record.indices == tuple(rows)
        assert record.seconds > 0
        worst_ratio = max(worst_ratio, np.linalg.norm(G_after - G_before) / record.bound)
    return worst_ratio


def independent_step(model, X, y, rows, W_before, removed_before):
    """The Newton step and the data-dependent bound of removing ``rows``, in dense numpy.

    For each class k whose training subset holds a removed row: the Hessian of the perturbed
    objective at ``W_before[k]`` on the rows of S_k left after the removal,
    ``H_k = X_rem^T diag(sigma(z) sigma(-z)) X_rem + lam n_k I``, and
    ``Delta_k = lam m_k w_k + sum over the removed rows of l'(x_i.w_k, y_ik) x_i``; then
    ``v_k = H_k^{-1} Delta_k`` by a dense solve and the bound (Corollary 1, rows up to R long)
    ``gamma max(1, R) ||X_rem||_2 ||v_k|| ||X_rem v_k||`` with the EXACT spectral norm.
    Returns (sum of the per-class bounds, per-class bounds [K], steps V [K, d]).
    """
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True) if model.normalize else X
    member = model._member.cpu().numpy()  # S_k (all rows when subsample_ratio == 1)
    keep = np.ones(X.shape[0], dtype=bool)
    keep[removed_before] = False
    keep[rows] = False
    if W_before.shape[0] == 1:
        Y = np.where(y == model.classes_[1], 1.0, -1.0)[:, None]
    else:
        Y = np.where(y[:, None] == model.classes_[None, :], 1.0, -1.0)
    gamma = 1.0 / (6.0 * np.sqrt(3.0)) if model.gamma == "tight" else float(model.gamma)
    R = max(1.0, float(np.linalg.norm(Xn, axis=1).max()))
    per_class = np.zeros(W_before.shape[0])
    V = np.zeros_like(W_before)
    for k in range(W_before.shape[0]):
        gone = [i for i in rows if member[i, k]]
        if not gone:
            continue
        rem = member[:, k] & keep
        Xr, w = Xn[rem], W_before[k]
        z = Xn @ w
        dl = -Y[:, k] / (1.0 + np.exp(Y[:, k] * z))  # l'(z, y) = -y sigma(-y z)
        Delta = model.lam * len(gone) * w + Xn[gone].T @ dl[gone]
        s = 1.0 / ((1.0 + np.exp(-z[rem])) * (1.0 + np.exp(z[rem])))  # sigma(z) sigma(-z)
        H = Xr.T @ (s[:, None] * Xr) + model.lam * rem.sum() * np.eye(Xn.shape[1])
        V[k] = np.linalg.solve(H, Delta)
        per_class[k] = (
            gamma * R * np.linalg.norm(Xr, 2) * np.linalg.norm(V[k]) * np.linalg.norm(Xr @ V[k])
        )
    return per_class.sum(), per_class, V


def _check_bound_values(model, X, y, groups, batch=False):
    """Remove ``groups`` (solver="cholesky"); each step and bound equal the dense computation.

    The library's spectral norm is a cached safe upper bound of ``||X_rem||_2`` that is at most
    SPECTRAL_REFRESH_FRACTION above the exact one, and its bound adds the (tiny) solve
    residual, so the ratio to the exact-norm bound lies in [1, 1 + SPECTRAL_REFRESH_FRACTION].
    Returns the per-class bounds of every step.
    """
    assert model.solver == "cholesky"
    steps = []
    for rows in groups:
        W_before, removed_before = model.coef_.copy(), model.removed_indices_.copy()
        used_before = model.budget_used_
        (record,) = model.remove(rows, batch=batch).records
        assert not record.retrained
        total, per_class, V = independent_step(model, X, y, rows, W_before, removed_before)
        assert total > 0
        ratio = record.bound / total
        assert 1.0 - 1e-9 <= ratio <= 1.0 + SPECTRAL_REFRESH_FRACTION + 1e-9, ratio
        # the committed step is the dense Newton step; classes not holding a row stay as is
        scale = np.abs(V).max()
        np.testing.assert_allclose(model.coef_, W_before + V, rtol=0, atol=1e-9 * scale)
        untouched = per_class == 0
        np.testing.assert_array_equal(model.coef_[untouched], W_before[untouched])
        # the used budget grows by exactly the record's bound
        assert model.budget_used_ == used_before + record.bound
        steps.append(per_class)
    return steps


def test_binary_bound_values_match_a_dense_computation(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, solver="cholesky", seed=1)
    model.fit(X, y)
    order = np.random.default_rng(11).permutation(X.shape[0])[:4].tolist()
    _check_bound_values(model, X, y, [[i] for i in order])
    # and a batch step (Delta = m lam w + the sum of the removed rows' gradients)
    batch = CertifiedLogisticRegression(
        lam=0.1, sigma=100.0, solver="cholesky", gamma="tight"
    ).fit(X, y)
    rest = np.setdiff1d(np.arange(X.shape[0]), order)
    more = np.random.default_rng(12).permutation(rest)[:8].tolist()
    _check_bound_values(batch, X, y, [order, more], batch=True)


@pytest.mark.parametrize("ratio", [1.0, 0.3])
def test_ovr_bound_values_and_joint_budget_match_a_dense_computation(tenclass, ratio):
    X, y, _, _ = tenclass
    sigma, epsilon, delta = 10.0, 0.5, 1e-5
    model = CertifiedLogisticRegression(
        lam=LAM, sigma=sigma, epsilon=epsilon, delta=delta, solver="cholesky",
        subsample_ratio=ratio, seed=2,
    ).fit(X, y)
    # ONE joint budget sigma epsilon / c(delta) for the joint b [K, d], not K times it
    c = np.sqrt(2.0 * np.log(1.5 / delta))
    assert model.budget_ == pytest.approx(sigma * epsilon / c, rel=1e-12)
    assert model.budget_ == noise_budget(sigma, epsilon, delta)
    order = np.random.default_rng(13).permutation(X.shape[0])[:5].tolist()
    used = model.budget_used_
    steps = _check_bound_values(model, X, y, [[i] for i in order[:3]])
    steps += _check_bound_values(model, X, y, [order[3:]], batch=True)
    records = model.report().records
    # the record's bound is the SUM of the per-class bounds (within the cached spectral norm's
    # margin), and the used budget is the training residual plus the records' bounds
    for record, per_class in zip(records, steps, strict=True):
        if ratio == 1.0:  # every class holds every row
            assert (per_class > 0).all()
        assert per_class.sum() <= record.bound <= per_class.sum() * (
            1 + SPECTRAL_REFRESH_FRACTION + 1e-9)
    assert model.budget_used_ == pytest.approx(
        used + sum(r.bound for r in records), rel=1e-12)
    if ratio < 1.0:  # a row updates only the classes whose subset holds it
        member = model._member.cpu().numpy()
        groups = [[i] for i in order[:3]] + [order[3:]]
        for rows, per_class in zip(groups, steps, strict=True):
            np.testing.assert_array_equal(per_class > 0, member[rows].any(0))


def test_subsampled_ovr_retrain_reaches_the_minimiser_of_the_subsets(tenclass):
    X, y, _, _ = tenclass
    sigma = 1.0  # budget ~0.23: a few removals, then a retrain
    model = CertifiedLogisticRegression(lam=LAM, sigma=sigma, subsample_ratio=0.3, seed=4)
    model.fit(X, y)
    member = model._member.clone()
    order = np.random.default_rng(4).permutation(X.shape[0])[:12].tolist()
    retrained = 0
    for i in order:
        b_before = model.b_.copy()
        (record,) = model.remove(i).records
        if not record.retrained:
            np.testing.assert_array_equal(model.b_, b_before)
            continue
        retrained += 1
        # the retrain minimised the perturbed objective on the rows left in each S_k
        residual, _, _ = true_gradient(model, X, y)
        assert residual <= model.tol + 1e-12
        assert residual == pytest.approx(model.training_residual_, abs=1e-12)
        assert model.budget_used_ == model.training_residual_ == record.cumulative
        assert model.retrains_ == retrained and i in model.removed_indices_
        # the subsets are kept (the reference draws them once), the perturbation is fresh
        assert torch.equal(model._member, member)
        assert not np.array_equal(model.b_, b_before)
        np.testing.assert_array_equal(
            model.b_, draw_perturbation(4, retrained, 64, 10, sigma).T.numpy()
        )
    assert retrained >= 1 and retrained < len(order)  # removals and retrains both happened
    assert model.n_removed_ == len(order)


@pytest.mark.parametrize("seed", range(5))
def test_binary_bounds_hold_random_sequences(binary, seed):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, seed=seed).fit(X, y)
    order = np.random.default_rng(seed).permutation(X.shape[0])[:12].tolist()
    ratio = _check_sequence(model, X, y, order)
    assert 0.0 < ratio < 1.0
    assert model.retrains_ == 0 and model.n_removed_ == 12
    np.testing.assert_array_equal(model.removed_indices_, np.sort(order))


@pytest.mark.slow
def test_long_binary_sequence_through_every_refresh(tenclass):
    """300 single removals on 1438 rows: past the spectral bound's refresh (5 % of the rows),
    past a full Woodbury buffer (256 rows folded into the CG factors) and through the
    solver's own refreshes, every step checked against the numpy gradient."""
    X, y, _, _ = tenclass
    y = (y >= 5).astype(int)  # a two-class problem on all ten digits
    model = CertifiedLogisticRegression(lam=LAM, sigma=100.0, seed=4).fit(X, y)
    order = np.random.default_rng(4).permutation(X.shape[0])[:300].tolist()
    assert 300 > WOODBURY_MAX_ROWS and 300 > SPECTRAL_REFRESH_FRACTION * X.shape[0]
    assert 0.0 < _check_sequence(model, X, y, order) < 1.0
    assert model.n_removed_ == 300
    np.testing.assert_array_equal(model.removed_indices_, np.sort(order))


@pytest.mark.parametrize(
    "params",
    [
        {"seed": 0},
        {"seed": 1, "gamma": "tight"},
        {"seed": 2, "subsample_ratio": 0.3},
        {"seed": 3, "subsample_ratio": 0.5, "solver": "cg"},
    ],
)
def test_ovr_bounds_hold_random_sequences(tenclass, params):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, **params).fit(X, y)
    order = np.random.default_rng(params["seed"]).permutation(X.shape[0])[:6].tolist()
    assert _check_sequence(model, X, y, order) < 1.0


@pytest.mark.parametrize("seed", range(4))
def test_tiny_random_data_bounds_hold(seed):
    X, y = tiny(seed)
    for params in ({"train_mode": "ovr"}, {"normalize": False, "lam": 0.5}):
        model = CertifiedLogisticRegression(sigma=1.0, lam=0.05, seed=seed)
        model.set_params(**params).fit(X, y)
        order = np.random.default_rng(seed + 10).permutation(X.shape[0])[:10].tolist()
        _check_sequence(model, X, y, order)


@pytest.mark.parametrize("data", ["binary", "tenclass"])
def test_batch_removal_bound_holds(request, data):
    X, y, _, _ = request.getfixturevalue(data)
    # the batch bound grows quadratically with the batch: a larger lam keeps it in budget
    model = CertifiedLogisticRegression(lam=0.1, sigma=100.0).fit(X, y)
    order = np.random.default_rng(7).permutation(X.shape[0])[:8].tolist()
    _check_sequence(model, X, y, order, batch=True)
    (record,) = model.report().records
    assert record.indices == tuple(order) and not record.retrained
    n = X.shape[0]
    if data == "binary":
        assert record.worst_case == pytest.approx(worst_case_bound(0.1, n, 8), rel=1e-12)
        assert record.worst_case > record.bound
    # a second batch continues from the first
    more = np.random.default_rng(8).permutation(np.setdiff1d(np.arange(n), order))[:5]
    _check_sequence(model, X, y, more.tolist(), batch=True)
    assert model.n_removed_ == 13


def test_worst_case_reported_per_removal(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    report = model.remove([4, 9])
    n = X.shape[0]
    assert report.records[0].worst_case == pytest.approx(worst_case_bound(LAM, n), rel=1e-12)
    assert report.records[1].worst_case == pytest.approx(worst_case_bound(LAM, n - 1), rel=1e-12)
    assert all(r.worst_case > r.bound for r in report.records)


# ---- solvers, retraining, accuracy of the updates ----------------------------------------


@pytest.mark.parametrize("params", [{}, {"subsample_ratio": 0.4}])
def test_cholesky_and_cg_agree(tenclass, params):
    X, y, _, _ = tenclass
    order = [5, 77, 300, 1000, 12]
    models = {}
    for solver in ("cholesky", "cg"):
        model = CertifiedLogisticRegression(
            lam=LAM, sigma=10.0, solver=solver, cg_tol=1e-10, **params
        )
        model.fit(X, y).remove(order[:3])
        model.remove(order[3:], batch=True)
        models[solver] = model
    a, b = models["cholesky"], models["cg"]
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.report().bounds, a.report().bounds, rtol=1e-7, atol=1e-12)
    assert b.budget_used_ == pytest.approx(a.budget_used_, rel=1e-7)


def test_removal_is_close_to_retraining_with_same_b(binary, capsys):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, seed=4).fit(X, y)
    full = model.coef_.copy()
    order = np.random.default_rng(4).permutation(X.shape[0])[:10]
    model.remove(order)
    keep = np.setdiff1d(np.arange(X.shape[0]), order)
    Xn = normalize_rows(torch.from_numpy(X[keep]))
    Y = torch.from_numpy(np.where(y[keep] == model.classes_[1], 1.0, -1.0)).unsqueeze(1)
    b = torch.from_numpy(model.b_.T.copy())
    exact = newton_fit(Xn, Y, torch.ones_like(Y), b, LAM).W.T.numpy()
    distance = np.linalg.norm(model.coef_ - exact)
    moved = np.linalg.norm(full - exact)
    residual, _, _ = true_gradient(model, X, y)
    print(f"removal vs retrain distance {distance:.3e} (retrain moved {moved:.3e})")
    # strong convexity (mu = lam n_rem): ||w - w*|| <= ||grad L_b(w)|| / mu <= used / mu
    assert distance <= residual / (LAM * keep.size) * (1 + 1e-9)
    assert distance <= model.budget_used_ / (LAM * keep.size)
    assert distance < 1e-2 * moved


def test_retrain_matches_fresh_fit_with_new_perturbation(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=0.1, seed=5).fit(X, y)
    order = np.random.default_rng(5).permutation(X.shape[0])[:12]
    report = model.remove(order)
    assert report.retrains >= 1 and model.retrains_ == report.retrains
    assert sum(r.retrained for r in report.records) == report.retrains
    last = max(j for j, r in enumerate(report.records) if r.retrained)
    # the retrain used draw number retrains_ of the seeded perturbation
    np.testing.assert_array_equal(
        model.b_, draw_perturbation(5, model.retrains_, 64, 1, 0.1).T.numpy()
    )
    # replay: a fresh fit on the rows left at the last retrain, with the same b
    keep = np.setdiff1d(np.arange(X.shape[0]), order[: last + 1])
    Xn = normalize_rows(torch.from_numpy(X[keep]))
    Y = torch.from_numpy(np.where(y[keep] == model.classes_[1], 1.0, -1.0)).unsqueeze(1)
    b = draw_perturbation(5, model.retrains_, 64, 1, 0.1)
    fresh = newton_fit(Xn, Y, torch.ones_like(Y), b, LAM)
    replay = CertifiedLogisticRegression(lam=LAM, sigma=0.1, seed=5).fit(X, y)
    replay.remove(order[: last + 1])
    np.testing.assert_allclose(replay.coef_, fresh.W.T.numpy(), rtol=0, atol=1e-12)
    assert (
        replay.budget_used_ == replay.training_residual_ == pytest.approx(fresh.residual, abs=1e-12)
    )
    # no retrain ever lets the budget be exceeded
    assert all(r.cumulative <= model.budget_ for r in report.records)
    assert all(
        r.retrained or r.cumulative == pytest.approx(p.cumulative + r.bound)
        for p, r in zip(report.records, report.records[1:], strict=False)
    )


def test_explicit_retrain_resets_budget(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    model.remove([1, 2, 3])
    assert model.budget_used_ > model.training_residual_
    record = model.retrain_now()
    assert isinstance(record, RemovalRecord) and record.retrained and record.indices == ()
    assert model.retrains_ == 1 and model.budget_used_ == model.training_residual_ <= 1e-10
    assert model.n_removed_ == 3
    residual, _, _ = true_gradient(model, X, y)
    assert residual <= 1e-10
    np.testing.assert_array_equal(model.b_, draw_perturbation(0, 1, 64, 1, 10.0).T.numpy())


def test_budget_exceeded_without_retrain_leaves_model_unchanged(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=0.1, retrain=False).fit(X, y)
    order = np.random.default_rng(5).permutation(X.shape[0])[:12].tolist()
    done = []
    with pytest.raises(BudgetExceededError) as info:
        for i in order:
            before = snapshot(model)
            model.remove(i)
            done.append(i)
    assert_unchanged(model, before)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.indices == (order[len(done)],) and err.bound > err.budget_left
    assert err.budget_left == pytest.approx(model.budget_left_)
    np.testing.assert_array_equal(model.removed_indices_, np.sort(done))
    # a list call commits the steps before the failing one and reports them
    model2 = CertifiedLogisticRegression(lam=LAM, sigma=0.1, retrain=False).fit(X, y)
    with pytest.raises(BudgetExceededError, match="retrain=False") as info:
        model2.remove(order)
    assert len(info.value.report.records) == len(done)
    np.testing.assert_allclose(model2.coef_, model.coef_, rtol=0, atol=0)
    # a batch is all or nothing
    model3 = CertifiedLogisticRegression(lam=LAM, sigma=0.1, retrain=False).fit(X, y)
    before = snapshot(model3)
    with pytest.raises(BudgetExceededError):
        model3.remove(order, batch=True)
    assert_unchanged(model3, before)
    # switching retrain on at remove time retrains instead
    model3.set_params(retrain=True)
    assert model3.remove(order, batch=True).retrains == 1


def test_zero_sigma_warns_and_every_removal_retrains(binary):
    X, y, _, _ = binary
    with pytest.warns(UserWarning, match="budget"):
        model = CertifiedLogisticRegression(lam=LAM, sigma=0.0).fit(X, y)
    assert model.budget_ == 0.0
    report = model.remove([0, 1])
    assert report.retrains == 2


# ---- subsampling semantics -----------------------------------------------------------------


def test_subsample_updates_only_classes_holding_the_row(tenclass):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, subsample_ratio=0.2, seed=1)
    model.fit(X, y)
    member = model._member.cpu().numpy()
    assert member[np.arange(X.shape[0]), y].all()  # positives always in S_k
    assert 0.15 < member[y[:, None] != np.arange(10)].mean() < 0.25
    n_k = member.sum(0)
    i = int(np.flatnonzero(member.sum(1) == 1)[0])  # in its own class's subset only
    before = model.coef_.copy()
    model.remove(i)
    changed = np.flatnonzero(np.abs(model.coef_ - before).sum(1) > 0)
    np.testing.assert_array_equal(changed, [y[i]])
    np.testing.assert_array_equal(model._n_rem.cpu().numpy(), n_k - member[i])
    # binary training uses every row: subsampling is one-vs-rest only (as in the reference)
    Xb, yb = X[(y == 3) | (y == 8)], (y[(y == 3) | (y == 8)] == 8).astype(int)
    bin_model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, subsample_ratio=0.3)
    with pytest.raises(ValueError, match="'subsample_ratio'.*one-vs-rest"):
        bin_model.fit(Xb, yb)
    assert not hasattr(bin_model, "coef_")


# ---- bad input -----------------------------------------------------------------------------


def test_remove_before_fit():
    with pytest.raises(NotFittedError):
        CertifiedLogisticRegression().remove([0])
    with pytest.raises(NotFittedError):
        CertifiedLogisticRegression().predict(np.zeros((1, 3)))


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        ([10_000], "unknown index"),
        ([-1], "unknown index"),
        ([3, 5, 3], "duplicate"),
        ([2], "already removed"),
        ([[1, 4]], "1-D"),
    ],
)
def test_bad_indices_leave_model_unchanged(binary, indices, match):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    model.remove(2)
    before = snapshot(model)
    for batch in (False, True):
        with pytest.raises(ValueError, match=f"'indices'.*{match}|{match}.*'indices'"):
            model.remove(indices, batch=batch)
        assert_unchanged(model, before)
    with pytest.raises(TypeError, match="'indices'"):
        model.remove([1.5])
    with pytest.raises(TypeError, match="'indices'"):
        model.remove(True)
    assert_unchanged(model, before)
    assert model.remove([]).records == []


def test_removing_a_whole_class_is_refused(tenclass):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X[:200], y[:200])
    rows = np.flatnonzero(y[:200] == 4)
    before = snapshot(model)
    with pytest.raises(ValueError, match="'indices'.*every remaining row of class 4"):
        model.remove(rows, batch=True)
    assert_unchanged(model, before)
    model.remove(rows[:-1], batch=True)
    with pytest.raises(ValueError, match="class 4"):
        model.remove(rows[-1:])
    with pytest.raises(ValueError, match="'indices'.*every remaining row of class 4"):
        model.remove(int(rows[-1]))  # one integer: the same check on its own path
    assert model.n_removed_ == rows.shape[0] - 1


@pytest.mark.parametrize(
    ("index", "match"),
    [(10_000, "unknown index 10000"), (-1, "unknown index -1"), (2, "already removed index 2")],
)
def test_one_integer_index_is_checked_like_a_list(binary, index, match):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    model.remove(np.int64(2))
    assert model.removed_indices_.tolist() == [2]
    before = snapshot(model)
    for value in (index, np.int32(index)):
        with pytest.raises(ValueError, match=f"'indices'.*{match}"):
            model.remove(value)
        assert_unchanged(model, before)


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("lam", 0.0),
        ("lam", -1e-3),
        ("lam", float("nan")),
        ("sigma", -0.5),
        ("sigma", float("inf")),
        ("epsilon", 0.0),
        ("epsilon", -1.0),
        ("epsilon", float("inf")),
        ("delta", 0.0),
        ("delta", 1.0),
        ("delta", 2.0),
        ("delta", float("nan")),
        ("gamma", 0.0),
        ("gamma", "huge"),
        ("train_mode", "multinomial"),
        ("subsample_ratio", 0.0),
        ("subsample_ratio", 1.5),
        ("solver", "lu"),
        ("seed", -1),
        ("max_iter", 0),
        ("device", "not-a-device"),
        *([("device", "cuda")] if not torch.cuda.is_available() else []),
    ],
)
def test_bad_parameters_raise_and_leave_model_unchanged(binary, param, value):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    model.remove([0])
    before = snapshot(model)
    predicted = model.predict(X)
    model.set_params(**{param: value})
    with pytest.raises(ValueError, match=f"'{param}'"):
        model.fit(X, y)
    assert_unchanged(model, before)
    np.testing.assert_array_equal(model.predict(X), predicted)
    assert getattr(model, param) == value or value != value  # the parameter itself stays set


def test_bad_data_raises_and_leaves_model_unchanged(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    model.remove([0, 1])
    before = snapshot(model)
    predicted = model.predict(X)
    for bad in (np.nan, np.inf, -np.inf):
        Xbad = X.copy()
        Xbad[3, 5] = bad
        with pytest.raises(ValueError, match="X"):
            model.fit(Xbad, y)
        with pytest.raises(ValueError, match="X"):
            model.predict(Xbad)
    with pytest.raises(ValueError, match="X has 63 features"):
        model.predict(X[:, :63])
    with pytest.raises(ValueError, match="X has 63 features"):
        model.decision_function(X[:, :63])
    with pytest.raises(ValueError, match="'y'.*1 class"):
        model.fit(X, np.zeros_like(y))
    with pytest.raises(ValueError, match="'train_mode'"):
        model.set_params(train_mode="binary").fit(*tiny()[:2])
    model.set_params(train_mode="auto")
    assert_unchanged(model, before)
    np.testing.assert_array_equal(model.predict(X), predicted)
    with pytest.raises(TypeError, match="'batch'"):
        model.remove([5], batch="yes")
    with pytest.raises(ValueError, match="'solver'"):
        model.set_params(solver="qr").remove([5])
    with pytest.raises(TypeError, match="'retrain'"):  # a string is not a flag
        model.set_params(solver="auto", retrain="no").remove([5])
    model.set_params(retrain=True)
    assert_unchanged(model, before)
    np.testing.assert_array_equal(model.predict(X), predicted)


@pytest.mark.parametrize(
    ("param", "value", "error"),
    [
        ("cg_tol", 0.0, ValueError),
        ("cg_tol", -1e-3, ValueError),
        ("cg_tol", float("nan"), ValueError),
        ("cg_tol", float("inf"), ValueError),
        ("cg_tol", "0.01", TypeError),  # the wrong type
        ("checkpoint", 123, TypeError),
        ("checkpoint", ["model.safetensors"], TypeError),
    ],
)
def test_live_parameters_are_checked_at_every_remove(binary, param, value, error):
    # solver, cg_tol, retrain and checkpoint are read at every remove(): a bad value set after
    # fit raises there (and in retrain_now) before anything changes
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, solver="cg").fit(X, y)
    model.remove([0])
    good = getattr(model, param)
    before = snapshot(model)
    predicted = model.predict(X)
    model.set_params(**{param: value})
    for call in (lambda: model.remove([5]), lambda: model.remove([5, 6], batch=True),
                 lambda: model.remove(5), model.retrain_now):
        with pytest.raises(error, match=f"'{param}'"):
            call()
        assert_unchanged(model, before)
    np.testing.assert_array_equal(model.predict(X), predicted)
    # back to a good value, removals go on
    model.set_params(**{param: good})
    assert model.remove([5]).records[0].indices == (5,)
    assert model.n_removed_ == 2


# ---- state, persistence hooks, reports -----------------------------------------------------


def test_state_roundtrip_continues_identically(tenclass):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0, subsample_ratio=0.5, seed=2)
    model.fit(X, y).remove([3, 14, 15])
    model.remove([92, 65], batch=True)
    tensors, meta = model.get_state()
    assert all(t.device.type == "cpu" for t in tensors.values())
    assert tensors["X"].dtype == torch.float64 and tensors["member"].dtype == torch.bool
    import json

    json.dumps(meta)  # plain JSON
    restored = CertifiedLogisticRegression.from_state(tensors, meta)
    np.testing.assert_array_equal(restored.coef_, model.coef_)
    np.testing.assert_array_equal(restored.b_, model.b_)
    np.testing.assert_array_equal(restored.removed_indices_, model.removed_indices_)
    np.testing.assert_array_equal(restored.classes_, model.classes_)
    assert restored.get_params() == model.get_params()
    assert restored.report().to_dict()["records"] == model.report().to_dict()["records"]
    for m in (model, restored):
        m.remove([35, 89])
    np.testing.assert_array_equal(restored.coef_, model.coef_)
    assert restored.budget_used_ == model.budget_used_
    on_cpu = CertifiedLogisticRegression.from_state(tensors, meta, device=torch.device("cpu"))
    assert on_cpu.device == "cpu" and on_cpu._W.device.type == "cpu"
    with pytest.raises(ValueError, match="'meta'"):
        CertifiedLogisticRegression.from_state(tensors, {**meta, "version": 99})
    with pytest.raises(ValueError, match="'tensors'"):
        CertifiedLogisticRegression.from_state({"X": tensors["X"]}, meta)


def test_state_roundtrip_string_labels():
    X, y = tiny(3)
    labels = np.array(["cat", "dog", "eel"])[y]
    model = CertifiedLogisticRegression(lam=0.05, sigma=1.0).fit(X, labels)
    restored = CertifiedLogisticRegression.from_state(*model.get_state())
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))
    assert restored.classes_.dtype == model.classes_.dtype


@pytest.fixture
def fake_persistence(monkeypatch):
    calls = []
    module = types.ModuleType("fastunlearn.certified.persistence")
    module.checkpoint = lambda model, record: calls.append(("checkpoint", model, dict(record)))
    module.save_model = lambda model, path: calls.append(("save", model, path))
    module.load_model = lambda path, cls=None, **kw: calls.append(("load", cls, path, kw)) or (
        "loaded")
    monkeypatch.setitem(sys.modules, "fastunlearn.certified.persistence", module)
    return calls


def test_checkpoint_called_after_fit_removal_and_retrain(binary, fake_persistence, tmp_path):
    X, y, _, _ = binary
    path = tmp_path / "model.safetensors"
    model = CertifiedLogisticRegression(lam=LAM, sigma=0.1, checkpoint=path).fit(X, y)
    model.remove([0, 1, 2, 3, 4, 5])
    model.retrain_now()
    events = [c[2]["event"] for c in fake_persistence]
    assert events[0] == "fit" and events[-1] == "retrain"
    assert len(events) == 1 + 6 + 1 and "remove" in events and events.count("retrain") >= 2
    first_remove = next(c[2] for c in fake_persistence if c[2]["event"] == "remove")
    for key in ("indices", "bound", "cumulative", "budget_left", "seed", "retrains"):
        assert key in first_remove
    assert all(c[1] is model for c in fake_persistence)
    removed = [i for c in fake_persistence for i in c[2]["indices"]]
    assert removed == [0, 1, 2, 3, 4, 5]
    model.save(path)
    assert fake_persistence[-1] == ("save", model, path)
    assert CertifiedLogisticRegression.load(path) == "loaded"
    assert fake_persistence[-1] == (
        "load", CertifiedLogisticRegression, path, {"device": None, "allow_rollback": False})


def test_reports(binary):
    X, y, Xt, yt = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    first = model.remove([0, 1])
    second = model.remove([2, 3], batch=True)
    assert isinstance(first, RemovalReport) and len(first.records) == 2
    assert first.seconds >= sum(r.seconds for r in first.records) * 0.999
    full = model.report()
    assert full.records == first.records + second.records and full.retrains == 0
    as_dict = full.to_dict()
    assert as_dict["records"][2]["indices"] == [2, 3]
    assert set(as_dict["records"][0]) >= {
        "indices",
        "bound",
        "cumulative",
        "budget_left",
        "retrained",
        "seconds",
        "worst_case",
    }
    privacy = model.privacy_report()
    assert privacy["budget"] == pytest.approx(noise_budget(10.0, 1.0, 1e-4))
    assert privacy["used"] == model.budget_used_ and privacy["removals"] == 4
    assert privacy["retrains"] == 0 and privacy["c"] == pytest.approx(4.3854, abs=1e-4)
    assert privacy["epsilon_spent"] == pytest.approx(privacy["c"] * privacy["used"] / 10.0)
    assert 0 < privacy["epsilon_spent"] <= privacy["epsilon"]
    fair = model.fairness_report(Xt, yt)
    pred = model.predict(Xt)
    assert fair["accuracy"] == pytest.approx((pred == yt).mean())
    assert set(fair["per_class_accuracy"]) == {0, 1}
    for label, acc in fair["per_class_accuracy"].items():
        assert acc == pytest.approx((pred[yt == label] == label).mean())
    assert fair["worst_class_accuracy"] == min(fair["per_class_accuracy"].values())
    assert fair["largest_gap"] == pytest.approx(
        max(fair["per_class_accuracy"].values()) - fair["worst_class_accuracy"]
    )
    with pytest.raises(ValueError, match="'y'"):
        model.fairness_report(Xt, yt[:-1])


def test_removal_never_copies_x_and_tf32_flag_is_restored(binary):
    X, y, _, _ = binary
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
        ptr = model._X.data_ptr()
        model.remove([0, 1])
        model.remove([2, 3], batch=True)
        assert model._X.data_ptr() == ptr
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.cuda
def test_cuda_matches_cpu(tenclass):
    X, y, _, _ = tenclass
    order = [1, 2, 30, 400]
    cpu = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    gpu = CertifiedLogisticRegression(lam=LAM, sigma=10.0, device="cuda").fit(X, y)
    for m in (cpu, gpu):
        m.remove(order[:2])
        m.remove(order[2:], batch=True)
    np.testing.assert_allclose(gpu.coef_, cpu.coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gpu.report().bounds, cpu.report().bounds, rtol=1e-8)


def test_cached_spectral_bound_stays_safe_and_tight(tenclass):
    X, y, _, _ = tenclass
    for ratio in (1.0, 0.5):
        model = CertifiedLogisticRegression(lam=0.1, sigma=100.0, subsample_ratio=ratio)
        model.fit(X, y)
        order = np.random.default_rng(1).permutation(X.shape[0])[:60]
        model.remove(order[:40], batch=True)
        model.remove(order[40:])
        member = model._member.cpu().numpy()
        keep = np.ones(X.shape[0], dtype=bool)
        keep[model.removed_indices_] = False
        Xn = model._X.cpu().numpy()
        groups = [np.ones(X.shape[0], dtype=bool)] if ratio == 1.0 else member.T
        eig = model._eig.cpu().numpy()
        for g, rows in enumerate(groups):
            exact = np.linalg.norm(Xn[rows & keep], ord=2) ** 2
            # never below the exact value, never more than the refresh fraction above it
            assert exact <= eig[g] <= exact * (1 + SPECTRAL_REFRESH_FRACTION + 1e-6) + 1e-9
        # the downdated Gram matrices equal the Gram matrices of the remaining rows
        for g, rows in enumerate(groups):
            np.testing.assert_allclose(
                model._gram[g].cpu().numpy(), Xn[rows & keep].T @ Xn[rows & keep], atol=1e-10
            )


def test_auto_solver_choice():
    X, y = tiny(0, n=60, d=4)
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(X, y)
    assert model._solver("auto") == "cholesky"  # four features: dense is cheaper
    assert model._solver("cg") == "cg"
    data = load_digits_dataset()
    model = CertifiedLogisticRegression(lam=1e-3, sigma=1.0, epsilon=1e9, retrain=False)
    model.fit(data.X_train, data.y_train)
    assert model._solver("auto") == "cg"  # 64 features, 1437 rows
    model.remove([0, 1])
    assert model._wood.folded == 2  # both removed rows folded into the starting factors
    model._cg_last = CG_REFRESH_ITERATIONS + 1  # CG struggles: refresh the factors
    assert model._solver("auto") == "cholesky"
    model.remove([2])
    assert model._cg_base == model._cg_last == 0 and model._wood is None
    assert model._solver("auto") == "cg"
    model.remove([3])
    assert model._wood.folded == 1
    model.remove(list(range(4, 4 + WOODBURY_MAX_ROWS - 1)), batch=True)
    assert model._wood.rows == WOODBURY_MAX_ROWS  # full: the next step refreshes
    assert model._solver("auto") == "cholesky"


def test_cg_starting_factors_with_removed_rows_match_a_dense_solve(tenclass, monkeypatch):
    monkeypatch.setattr("fastunlearn.certified.single_row.FIXED_STEP_MODE", "auto")  # CPU default
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0, solver="cg").fit(X, y)
    model.remove([3, 50, 700])
    # the compiled CPU step leaves its rows pending (in U and M_inv); settle folds them into
    # G and C
    assert model._wood.folded == 3
    wood = woodbury.settle(model._wood)
    assert wood.rows == 3 and wood.pending == 0
    # the terms describe M - U U^T: the factors' matrix without the removed rows
    M = wood.L @ wood.L.mT
    M_down = M - wood.U @ wood.U.mT
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(M.shape[-1], M.shape[0], dtype=torch.float64, generator=gen)
    dense = torch.linalg.solve(M_down, B.T.unsqueeze(-1)).squeeze(-1).T
    torch.testing.assert_close(woodbury.solve(wood, B), dense, rtol=1e-9, atol=1e-12)
    classes = torch.tensor([1, 4])
    torch.testing.assert_close(
        woodbury.solve(wood, B[:, classes], classes), dense[:, classes], rtol=1e-9, atol=1e-12
    )
    # and the removed rows' columns are sqrt(weight) x_i for every class
    rows = torch.tensor([3, 50, 700])
    expected = model._X[rows].T.unsqueeze(0) * wood.weights[rows].sqrt().T.unsqueeze(1)
    torch.testing.assert_close(wood.U, expected)
    # on the CPU the factors carry M'^{-1} for the compiled step (updated per row by
    # Sherman-Morrison), equal to the Woodbury terms' explicit inverse; a restart reuses its
    # buffer
    torch.testing.assert_close(wood.M_inv, torch.linalg.inv(M_down), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(woodbury.inverse(wood), torch.linalg.inv(M_down), rtol=1e-9,
                               atol=1e-12)
    buffer = wood.M_inv
    again = woodbury.start(wood.L, wood.weights, wood.capacity, wood, inverse=True)
    assert again.M_inv is buffer and again.rows == 0
    torch.testing.assert_close(again.M_inv, torch.linalg.inv(M), rtol=1e-9, atol=1e-12)
    assert woodbury.start(wood.L, wood.weights, wood.capacity).M_inv is None


def test_indices_accept_ints_arrays_and_tensors(binary):
    X, y, _, _ = binary
    model = CertifiedLogisticRegression(lam=LAM, sigma=10.0).fit(X, y)
    model.remove(3)
    model.remove(np.array([7, 5], dtype=np.int32))
    model.remove(torch.tensor([11]), batch=True)
    model.remove(np.uint64(20))
    np.testing.assert_array_equal(model.removed_indices_, [3, 5, 7, 11, 20])
    assert [r.indices for r in model.report().records] == [(3,), (7,), (5,), (11,), (20,)]


# ---- a saved state is validated as it loads --------------------------------------------------


def _edited_state(model, edit):
    import copy

    tensors, meta = model.get_state()
    meta = copy.deepcopy(meta)
    edit(tensors, meta)
    return tensors, meta


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t, m: m["config"].update(lam=-1.0), "'lam'"),
        (lambda t, m: m["config"].update(delta=1.5), "'delta'"),
        (lambda t, m: m["config"].update(train_mode="auto"), "train_mode"),
        (lambda t, m: m["config"].update(subsample_ratio=0.5, train_mode="binary"),
         "subsamples a binary model|'train_mode'|classes"),
        (lambda t, m: m["config"].update(sigma=1000.0), "budget"),
        (lambda t, m: m.update(budget=m["budget"] * 1.01), "budget"),
        (lambda t, m: m.update(budget_used=float("nan")), "'budget_used'"),
        (lambda t, m: m.update(retrains=-1), "'retrains'"),
        (lambda t, m: m.update(classes=m["classes"] + [99]), "classes"),
        (lambda t, m: m.update(n_features_in=m["n_features_in"] + 1), "n_features_in"),
        (lambda t, m: m["params"].update(unknown=1), "unknown or missing parameters"),
        (lambda t, m: t.update(gram=t["gram"][:, :-1]), "'gram'"),
        (lambda t, m: t.update(eig=t["eig"][:-1]), "'eig'"),
    ],
)
def test_from_state_refuses_inconsistent_states(tenclass, edit, match):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0).fit(X[:200], y[:200])
    model.remove([3])
    tensors, meta = _edited_state(model, edit)
    with pytest.raises(ValueError, match=match):
        CertifiedLogisticRegression.from_state(tensors, meta)
    # the untouched state still loads
    CertifiedLogisticRegression.from_state(*model.get_state())


def test_load_takes_a_device(tenclass, tmp_path):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0).fit(X[:200], y[:200])
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = CertifiedLogisticRegression.load(path, device="cpu")
    assert loaded.device == "cpu" and loaded._X.device.type == "cpu"
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    if not torch.cuda.is_available():
        tensors, meta = model.get_state()
        meta["params"]["device"] = meta["config"]["device"] = "cuda"
        with pytest.raises(ValueError, match="device='cpu'"):
            CertifiedLogisticRegression.from_state(tensors, meta)
        assert CertifiedLogisticRegression.from_state(tensors, meta, device="cpu").device == "cpu"


def test_unseen_labels_are_refused_by_score_and_fairness_report(tenclass):
    X, y, _, _ = tenclass
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0).fit(X[:300], y[:300])
    labels = y[:5].copy()
    labels[2] = 99
    for method in (model.score, model.fairness_report):
        with pytest.raises(ValueError, match=r"not fitted on: \[99\]"):
            method(X[:5], labels)
    assert model.score(X[:5], y[:5]) == pytest.approx(np.mean(model.predict(X[:5]) == y[:5]))


# ---- gradient_residual: the measured distance from retraining -------------------------------


def numpy_minimiser(X, Y, member, lam, b, iters=30):
    """The exact minimiser of each class's perturbed objective on its rows, by numpy Newton."""
    W = np.zeros((Y.shape[1], X.shape[1]))
    for k in range(Y.shape[1]):
        Xk, yk = X[member[:, k]], Y[member[:, k], k]
        n_k, w = Xk.shape[0], W[k]
        for _ in range(iters):
            s = 1.0 / (1.0 + np.exp(yk * (Xk @ w)))              # sigma(-y z)
            g = Xk.T @ (-yk * s) + lam * n_k * w + b[k]
            H = (Xk * (s * (1 - s))[:, None]).T @ Xk + lam * n_k * np.eye(X.shape[1])
            w = w - np.linalg.solve(H, g)
        W[k] = w
    return W


@pytest.mark.parametrize("case", ["binary", "ovr_subsampled"])
def test_gradient_residual_is_the_true_gradient_and_bounds_the_distance(case, binary, tenclass):
    if case == "binary":
        X, y, _, _ = binary
        model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1.0, delta=1e-4, seed=0)
    else:
        X, y, _, _ = tenclass
        model = CertifiedLogisticRegression(lam=1e-3, sigma=10.0, epsilon=1.0, delta=1e-4,
                                            seed=0, subsample_ratio=0.5)
    model.fit(X, y)
    model.remove(range(0, 40, 3))
    out = model.gradient_residual()
    norm, _, member = true_gradient(model, X, y)
    assert out["norm"] == pytest.approx(norm, rel=1e-9)
    assert 0 < out["norm"] <= out["budget_used"] == model.budget_used_
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    if model.coef_.shape[0] == 1:
        Y = np.where(y == model.classes_[1], 1.0, -1.0)[:, None]
    else:
        Y = np.where(y[:, None] == model.classes_[None, :], 1.0, -1.0)
    W_star = numpy_minimiser(Xn, Y, member, model.lam, model.b_)
    distance = np.linalg.norm(model.coef_ - W_star)
    assert 0 < distance <= out["distance_bound"]
