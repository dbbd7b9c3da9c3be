"""Bad arguments of the certified estimator, its removal and its files: refused by name.

Each case failed before its fix: ``load(device=...)`` raised torch's own errors, a save that
could not be written raised ``safetensors.SafetensorError``, an index beyond int64 was "not
an integer", and a wrongly typed setting (``lam=True``, ``normalize=1``) was a ValueError.
A failed call changes nothing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.certified.persistence import load_model, save_model
from tests.helpers import assert_same_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed=0, n=40, d=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, 0] > 0).astype(int)


def _fitted():
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1).fit(X, y)
    model.remove([0])
    return model


def _state(model):
    """What a failed call must leave as it was (weights, budget, the removal ledger)."""
    return {
        "coef": model.coef_.copy(),
        "b": model.b_.copy(),
        "used": model.budget_used_,
        "removed": model.removed_indices_.copy(),
        "history": [r.indices for r in model._history],
        "W": model._W.clone(),
        "A": model._A.clone(),
        "cfg": dict(model._cfg),
        "params": model.get_params(),
    }


def _assert_same(model, before):
    assert_same_snapshot(_state(model), before)


# ---- load(device=...) ------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "error", "match"), [
    # torch's RuntimeError before
    ("tpu", ValueError, "'device' must be cpu, cuda or cuda:<index>, got 'tpu'"),
    ("", ValueError, "'device' must be cpu"),
    (3.5, TypeError, "'device' must be a device string"),  # torch's TypeError before
    (True, TypeError, "'device' must be a device string"),
    ([0], TypeError, "'device' must be a device string"),
    ("meta", ValueError, "'device' must be cpu, cuda or cuda:<index>, got 'meta'"),
    *([("cuda", ValueError, "'device' is 'cuda' but no CUDA GPU is visible")]
      if not torch.cuda.is_available() else []),
])
def test_load_refuses_a_bad_device_by_name(tmp_path, device, error, match):
    model = _fitted()
    path = tmp_path / "m.safetensors"
    model.save(path)
    data = path.read_bytes()
    with pytest.raises(error, match=match):
        CertifiedLogisticRegression.load(path, device=device)
    with pytest.raises(error, match=match):
        load_model(path, device=device)
    tensors, meta = model.get_state()
    with pytest.raises(error, match=match):
        CertifiedLogisticRegression.from_state(tensors, meta, device=device)
    assert path.read_bytes() == data
    assert CertifiedLogisticRegression.load(path, device="cpu").device == "cpu"


def test_load_checks_the_device_before_repairing_the_ledger(tmp_path):
    X, y = _data()
    path = tmp_path / "ck.safetensors"
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1, checkpoint=path).fit(X, y)
    model.remove([2])
    ledger = tmp_path / "ck.safetensors.ledger.jsonl"
    with open(ledger, "ab") as fh:
        fh.write(b'{"seq": 9, "ev')  # a torn last line: a load cuts it
    files = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    for device in ("tpu", 3.5):
        with pytest.raises((ValueError, TypeError), match="'device'"):
            CertifiedLogisticRegression.load(path, device=device)
        assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == files  # nothing written
    assert CertifiedLogisticRegression.load(path, device="cpu").removed_indices_.tolist() == [2]


def test_fit_names_a_wrongly_typed_device():
    X, y = _data()
    model = _fitted()
    before = _state(model)
    model.set_params(device=3.5)
    with pytest.raises(TypeError, match="'device' must be a device string"):  # ValueError before
        model.fit(X, y)
    model.set_params(device="cpu")
    _assert_same(model, before)


# ---- save to a path that cannot be written ---------------------------------------------------


def test_save_that_cannot_be_written_is_an_oserror_naming_the_path():
    model = _fitted()
    before = _state(model)
    target = "/proc/fastunlearn-test.safetensors"  # /proc takes no new files, even as root
    for save in (model.save, lambda p: save_model(model, p)):
        with pytest.raises(OSError, match="fastunlearn-test.safetensors") as info:
            save(target)  # safetensors.SafetensorError before
        assert info.value.__cause__ is not None  # safetensors' own error, chained
        assert not os.path.exists(target)
    # no temporary file left behind (names starting with the target's)
    assert [n for n in os.listdir("/proc") if "fastunlearn-test" in n] == []
    _assert_same(model, before)
    assert len(model.remove([1]).records) == 1  # the model goes on working


def test_failed_save_keeps_the_file_there_and_leaves_no_temporary(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from fastunlearn.certified import persistence

    model = _fitted()
    path = tmp_path / "m.safetensors"
    model.save(path)
    saved = path.read_bytes()
    model.remove([1])
    before = _state(model)

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:  # a partial file, then the failure
            fh.write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: disk full")

    monkeypatch.setattr(persistence, "save_file", failing_save)
    with pytest.raises(OSError, match="m.safetensors.*disk full") as info:
        model.save(path)
    assert isinstance(info.value.__cause__, SafetensorError)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.safetensors"]
    assert path.read_bytes() == saved
    _assert_same(model, before)


# ---- remove: an index beyond int64 -----------------------------------------------------------


@pytest.mark.parametrize("indices", [
    [2**70], [-(2**70)], [3, 2**64], np.array([2**70], dtype=object), (2**70,),
    [3, 2**63],  # numpy makes this float64: "must hold integers" before
])
def test_remove_calls_an_index_beyond_int64_unknown(indices):
    model = _fitted()
    before = _state(model)
    with pytest.raises(ValueError, match="argument 'indices' has unknown index"):
        model.remove(indices)  # "must hold integers, got dtype object" before
    _assert_same(model, before)


def test_remove_takes_an_object_array_of_small_ints():
    model = _fitted()
    assert model.remove(np.array([3, 5], dtype=object)).records[-1] is not None
    assert model.removed_indices_.tolist() == [0, 3, 5]


def test_remove_still_refuses_objects_that_are_not_ints():
    model = _fitted()
    before = _state(model)
    for bad in (np.array([3, None], dtype=object), [2**70, "x"], [3, 2**70, 1.5],
                np.array([3.0, 2.0**70])):
        with pytest.raises(TypeError, match="argument 'indices' must hold integers"):
            model.remove(bad)
    _assert_same(model, before)


# ---- settings of the wrong type --------------------------------------------------------------


@pytest.mark.parametrize(("param", "value"), [
    ("lam", True),  # ValueError before, for all of these
    ("lam", "0.1"),
    ("lam", None),
    ("sigma", np.bool_(True)),
    ("epsilon", "1"),
    ("delta", True),
    ("subsample_ratio", False),
    ("tol", "0"),
    ("cg_tol", True),
    ("normalize", 1),
    ("normalize", "yes"),
    ("normalize", None),
    ("seed", 1.0),
    ("seed", True),
    ("max_iter", 2.0),
    ("max_iter", False),
    ("retrain", 1),
    ("checkpoint", 5),
])
def test_wrongly_typed_settings_are_type_errors_naming_them(param, value):
    X, y = _data()
    model = _fitted()
    before = _state(model)
    default = model.get_params()[param]
    model.set_params(**{param: value})  # accepted: checked where it is read (scikit-learn)
    with pytest.raises(TypeError, match=f"'{param}'"):
        model.fit(X, y)
    if param in ("retrain", "checkpoint", "cg_tol"):  # read at every removal too
        with pytest.raises(TypeError, match=f"'{param}'"):
            model.remove([1])
    model.set_params(**{param: default})
    _assert_same(model, before)


@pytest.mark.parametrize(("param", "value"), [
    ("lam", 0.0), ("lam", float("nan")), ("delta", 1.0), ("seed", -1), ("max_iter", 0),
    ("device", "not-a-device"),
])
def test_out_of_range_settings_stay_value_errors(param, value):
    X, y = _data()
    model = _fitted()
    before = _state(model)
    default = model.get_params()[param]
    model.set_params(**{param: value})
    with pytest.raises(ValueError, match=f"'{param}'"):
        model.fit(X, y)
    model.set_params(**{param: default})
    _assert_same(model, before)


def test_load_calls_a_wrongly_typed_saved_setting_a_corrupt_file(tmp_path):
    # a file whose config holds lam=True is a bad file (ValueError), not a bad argument
    model = _fitted()
    tensors, meta = model.get_state()
    meta = dict(meta, config=dict(meta["config"], lam=True))
    with pytest.raises(ValueError, match="argument 'meta' config is invalid.*'lam'"):
        CertifiedLogisticRegression.from_state(tensors, meta)


@pytest.mark.parametrize("indices", [[3, True], (False, 2), [np.bool_(True), 4]])
def test_remove_refuses_a_bool_among_integer_indices(indices):
    # numpy reads [3, True] as int64 [3, 1]: row 1 was silently removed
    model = _fitted()
    before = _state(model)
    with pytest.raises(TypeError, match="argument 'indices' must hold integers, got a bool"):
        model.remove(indices)
    _assert_same(model, before)


def test_a_checkpoint_in_a_missing_folder_is_refused_before_anything_changes(tmp_path):
    # the ledger write failed after the step: the removal was applied and the call raised
    X, y = _data()
    missing = tmp_path / "no-such-folder" / "m.safetensors"
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1, checkpoint=missing)
    with pytest.raises(FileNotFoundError, match="'checkpoint'.*does not exist"):
        model.fit(X, y)
    assert not hasattr(model, "coef_")
    model = _fitted()
    before = _state(model)
    model.set_params(checkpoint=missing)
    with pytest.raises(FileNotFoundError, match="'checkpoint'.*does not exist"):
        model.remove([1])
    model.set_params(checkpoint=None)
    _assert_same(model, before)
    assert not (tmp_path / "no-such-folder").exists()
