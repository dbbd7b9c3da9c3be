"""Regression tests of the December 2 audit of ``fastunlearn.certified``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression


def _small_model(**kwargs) -> CertifiedLogisticRegression:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = np.arange(30) % 3
    return CertifiedLogisticRegression(lam=1e-2, sigma=1.0, **kwargs).fit(X, y)


def test_ovr_probabilities_follow_the_margins_when_all_are_very_negative():
    # at small lam (the reference's default 1e-6) margins of thousands occur: sigma(z_k)
    # underflowed to 0 for every class, the row came out uniform, and a RuntimeWarning
    model = _small_model()
    model._W = torch.tensor([[-800.0, -750.0, -900.0]] * 3, dtype=torch.float64)
    X = np.ones((2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning
        P = model.predict_proba(X)
    Z = model.decision_function(X)
    np.testing.assert_array_equal(P.argmax(1), Z.argmax(1))
    np.testing.assert_array_equal(model.classes_[P.argmax(1)], model.predict(X))
    np.testing.assert_allclose(P.sum(1), 1.0)
    # normalised sigma(z_k) in log space: here the softmax of the margins
    want = np.exp(Z - Z.max(1, keepdims=True))
    np.testing.assert_allclose(P, want / want.sum(1, keepdims=True), rtol=1e-12, atol=1e-300)


def test_ovr_probabilities_unchanged_in_the_ordinary_range():
    model = _small_model()
    X = np.random.default_rng(1).normal(size=(10, 3))
    Z = model.decision_function(X)
    P = 1.0 / (1.0 + np.exp(-Z))
    np.testing.assert_allclose(model.predict_proba(X), P / P.sum(1, keepdims=True), rtol=1e-13)


def test_binary_probabilities_of_very_negative_margins_warn_nothing():
    rng = np.random.default_rng(0)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0).fit(
        rng.normal(size=(20, 2)), np.arange(20) % 2)
    model._W = torch.tensor([[-1000.0], [0.0]], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P = model.predict_proba(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(P, [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("checkpointed", [False, True])
def test_feature_names_survive_save_and_load(tmp_path, checkpointed):
    # scikit-learn sets feature_names_in_ when fit gets a DataFrame; a loaded model lost it,
    # so predict no longer checked the column names (nor warned about a plain array)
    path = tmp_path / "m.safetensors"
    model = _small_model(checkpoint=str(path) if checkpointed else None)
    names = np.asarray(["a", "b", "c"], dtype=object)
    model.feature_names_in_ = names  # what validate_data stores for a DataFrame
    model.remove([3, 4])
    if not checkpointed:
        model.save(path)
    loaded = CertifiedLogisticRegression.load(path)
    assert isinstance(loaded.feature_names_in_, np.ndarray)
    assert loaded.feature_names_in_.dtype == object
    np.testing.assert_array_equal(loaded.feature_names_in_, names)
    with pytest.warns(UserWarning, match="fitted with feature names"):
        loaded.predict(np.zeros((1, 3)))


def test_model_without_feature_names_loads_without_them(tmp_path):
    model = _small_model()
    model.save(tmp_path / "m.safetensors")
    loaded = CertifiedLogisticRegression.load(tmp_path / "m.safetensors")
    assert not hasattr(loaded, "feature_names_in_")


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", 3], "abc"])
def test_from_state_refuses_bad_feature_names(names):
    model = _small_model()
    tensors, meta = model.get_state()
    meta["feature_names_in"] = names
    with pytest.raises(ValueError, match="'feature_names_in'"):
        CertifiedLogisticRegression.from_state(tensors, meta)


def test_experiment_with_no_test_rows_reports_nan_accuracy():
    # _accuracy meant an empty test set to give NaN, but predict refused the empty array
    from fastunlearn.certified.experiment import (
        ExperimentConfig,
        ExperimentData,
        run_removal_experiment,
    )

    rng = np.random.default_rng(0)
    data = ExperimentData(rng.normal(size=(40, 5)), np.arange(40) % 2, np.zeros((0, 5)),
                          np.zeros(0, dtype=np.int64), ("0", "1"), "synthetic")
    config = ExperimentConfig(train_mode="binary", num_removes=4, result_dir=None,
                              time_retraining=False, std=1.0, lam=1e-2)
    result = run_removal_experiment(config, data=data)
    assert result.privacy["removals"] == 4
    assert np.isnan(result.training["test_accuracy"])
    assert np.isnan(result.final["test_accuracy"])
    assert result.fairness["after"]["worst_class"] is None
