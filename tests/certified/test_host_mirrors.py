"""The host (numpy) copies of the removal bookkeeping stay equal to the tensors.

``CertifiedLogisticRegression`` decides which classes a removal touches, validates indices,
computes the worst-case bound and schedules spectral refreshes from host mirrors, so that a
GPU removal does not wait on device reads. These tests drive removals, batch removals,
retrains, a budget error and a save/load round trip, and compare every mirror with the
tensor it copies after each call.
"""

import numpy as np
import pytest
import torch

from fastunlearn.certified import BudgetExceededError, CertifiedLogisticRegression
from fastunlearn.certified.math import lambda_max_upper


def _data(seed=0, n=90, d=6, classes=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 2
    y = np.arange(n) % classes
    return centers[y] + rng.normal(size=(n, d)), y


def assert_mirrors_match(model):
    np.testing.assert_array_equal(model._h_A, model._A.cpu().numpy())
    np.testing.assert_array_equal(model._h_removed, model._removed.cpu().numpy())
    np.testing.assert_array_equal(model._h_labels, model._labels.cpu().numpy())
    np.testing.assert_allclose(model._h_n_rem, model._n_rem.cpu().numpy(), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(model._h_row_sq, model._row_sq.cpu().numpy())
    np.testing.assert_array_equal(model._h_eig, model._eig.cpu().numpy())
    # the public attributes are refreshed once per call
    np.testing.assert_array_equal(model.removed_indices_, np.flatnonzero(model._h_removed))
    np.testing.assert_array_equal(model.coef_, model._W.T.cpu().numpy())
    # the slack accounts for exactly the rows removed since the last refresh: the cached
    # lambda_max bound is still an upper bound of the remaining Gram matrices
    gram = model._gram
    exact = torch.linalg.eigvalsh(gram)[..., -1].cpu().numpy()
    assert np.all(model._h_eig >= exact - 1e-9)
    assert np.all(model._h_eig_slack >= 0)


@pytest.mark.parametrize("params", [dict(), dict(subsample_ratio=0.6), dict(solver="cholesky")])
def test_mirrors_follow_removals_batches_and_retrains(params):
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=0.5, **params).fit(X, y)
    assert_mirrors_match(model)
    order = np.random.default_rng(1).permutation(X.shape[0])
    model.remove(order[:12])
    assert_mirrors_match(model)
    model.remove(order[12:18], batch=True)
    assert_mirrors_match(model)
    model.retrain_now()
    assert_mirrors_match(model)
    retrains_before = model.retrains_
    report = model.remove(order[18:60])
    assert_mirrors_match(model)
    assert model.n_removed_ == 60
    # the small budget forced retrains inside this call, and they were all counted
    assert report.retrains >= 1 and model.retrains_ == retrains_before + report.retrains


def test_mirrors_after_budget_error_and_reload(tmp_path):
    X, y = _data(seed=2)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=0.05, retrain=False)
    model.fit(X, y)
    order = np.random.default_rng(3).permutation(X.shape[0])
    with pytest.raises(BudgetExceededError) as info:
        model.remove(order[:40])
    done = len(info.value.report.records) if info.value.report else 0
    assert done < 40
    assert_mirrors_match(model)
    assert model.n_removed_ == done
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = CertifiedLogisticRegression.load(path)
    assert_mirrors_match(loaded)
    np.testing.assert_array_equal(loaded._h_eig_slack, model._h_eig_slack)


def test_spectral_refresh_is_scheduled_from_the_host_slack():
    X, y = _data(seed=4, n=120)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1e9).fit(X, y)
    eig0 = model._h_eig.copy()
    refreshed = False
    for i in np.random.default_rng(5).permutation(X.shape[0])[:30]:
        before = model._h_eig.copy()
        model.remove(int(i))
        assert_mirrors_match(model)
        if not np.array_equal(model._h_eig, before):
            refreshed = True
            # a refresh recomputes the bound of the downdated Gram matrix and zeroes its slack
            fresh = lambda_max_upper(model._gram, model._gram_traces()).cpu().numpy()
            np.testing.assert_allclose(model._h_eig, fresh, rtol=1e-12)
            assert np.all(model._h_eig_slack == 0)
    assert refreshed and np.all(model._h_eig <= eig0)
