"""Bad arguments of the certified estimator and its files: refused by name, nothing changed.

Each case failed before its fix: an OverflowError naming nothing (a setting given as an int
beyond the float range), or an IsADirectoryError naming a temporary file (a folder or an
empty string as the model file or checkpoint).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.certified.persistence import load_model, read_metadata, save_model

HUGE = 10**400  # float(HUGE) raises OverflowError


def _data(seed=0, n=40, d=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, 0] > 0).astype(int)


@pytest.mark.parametrize("name", ["lam", "sigma", "epsilon", "delta", "subsample_ratio", "tol",
                                  "cg_tol"])
def test_settings_beyond_the_float_range_are_named(name):
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1).fit(X, y)
    coef = model.coef_.copy()
    model.set_params(**{name: HUGE})
    with pytest.raises(ValueError, match=f"argument '{name}'"):
        model.fit(X, y)
    np.testing.assert_array_equal(model.coef_, coef)  # the fitted model is kept


def test_finite_ints_are_still_accepted():
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1, sigma=2, epsilon=3, tol=1, cg_tol=1).fit(X, y)
    assert model.lam == 1 and model.budget_ > 0


@pytest.mark.parametrize(("checkpoint", "message"), [("", "'checkpoint' is empty"),
                                                      (".", "'checkpoint' '.' is a folder")])
def test_checkpoint_must_name_a_file(tmp_path, monkeypatch, checkpoint, message):
    monkeypatch.chdir(tmp_path)
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1, checkpoint=checkpoint)
    with pytest.raises(ValueError, match=message):  # refused before the fit
        model.fit(X, y)
    assert not hasattr(model, "coef_")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("path", "error", "message"), [
    ("", ValueError, "'path' is empty"),
    (None, TypeError, "'path' must be a str or os.PathLike"),
    (3, TypeError, "'path' must be a str or os.PathLike"),
])
def test_save_and_load_refuse_a_non_path(path, error, message):
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1).fit(X, y)
    with pytest.raises(error, match=message):
        model.save(path)
    with pytest.raises(error, match=message):
        save_model(model, path)
    with pytest.raises(error, match=message):
        CertifiedLogisticRegression.load(path)
    with pytest.raises(error, match=message):
        load_model(path)
    with pytest.raises(error, match=message):
        read_metadata(path)


def test_save_and_load_refuse_a_folder(tmp_path):
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1).fit(X, y)
    with pytest.raises(ValueError, match="is a folder, expected a file"):
        model.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    with pytest.raises(ValueError, match="is a folder, expected a file"):
        CertifiedLogisticRegression.load(tmp_path)
    # a file in that folder still round-trips
    model.save(tmp_path / "model.safetensors")
    loaded = CertifiedLogisticRegression.load(tmp_path / "model.safetensors")
    torch.testing.assert_close(torch.as_tensor(loaded.coef_), torch.as_tensor(model.coef_))
