"""Audit of the certified-removal core: bad input changes nothing, bounds on adversarial
removal sequences against independent float64 computations, torch inputs, persistence.

Every "unchanged" check compares the model's whole ``__dict__`` (tensors, arrays, host
mirrors, caches, history) and the checkpoint files byte for byte.
"""

import copy
import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import expit

from fastunlearn.certified import (
    BudgetExceededError,
    CertifiedLogisticRegression,
    RemovalRecord,
    noise_budget,
    persistence,
)
from fastunlearn.certified.ledger import RemovalLedger
from fastunlearn.certified.math import draw_perturbation
from fastunlearn.certified.persistence import ledger_path, load_model, save_model
from tests.certified.fixed_helpers import perturbed_gradient

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(seed=0, n=60, d=5, classes=3, scale=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 2.5
    y = np.arange(n) % classes
    return (centers[y] + rng.normal(size=(n, d))) * scale, y


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN equal to NaN (scratch buffers may hold any bits, NaN included)."""
    if torch.equal(a, b):
        return True
    if not (a.is_floating_point() or a.is_complex()):
        return False
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def same(a, b, path="model", timing=True):
    """Deep equality of model attributes: tensors and arrays by value, records by value.

    ``_Z`` (the cached margins ``X W``) may be computed on one side only: it is a cache;
    ``_fixed`` (the fast path's step object) is compared by the fast-path audit.
    ``timing=False`` ignores the wall times of records (copies that redo the same work).
    """
    if isinstance(a, RemovalRecord) and not timing:
        a, b = dataclasses.replace(a, seconds=0.0), dataclasses.replace(b, seconds=0.0)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert _same_values(a, b), path
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            if key == "_Z" and (a[key] is None or b[key] is None):
                continue
            if key == "_fixed":  # the fixed-shape step's device buffers (a copy has its own);
                continue  # tests/certified/test_fast_path_audit.py checks its state
            same(a[key], b[key], f"{path}.{key}", timing)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            same(u, v, f"{path}[{i}]", timing)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, (path, a, b)


def files_of(path):
    """Bytes of every file next to a checkpoint (state, data file, ledger)."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir())}


true_gradient = perturbed_gradient  # (G, member, Xn, Y), dense numpy float64


def scipy_minimiser(Xn, Y, member, b, lam):
    """Per-class exact minimiser of the perturbed objective by scipy L-BFGS-B (float64)."""
    W = []
    for k in range(Y.shape[1]):
        rows = member[:, k]
        Xk, yk, n_k = Xn[rows], Y[rows, k], rows.sum()

        def f(w, Xk=Xk, yk=yk, n_k=n_k, bk=b[k]):
            z = yk * (Xk @ w)
            loss = np.logaddexp(0.0, -z).sum() + 0.5 * lam * n_k * w @ w + bk @ w
            grad = Xk.T @ (-yk * expit(-z)) + lam * n_k * w + bk
            return loss, grad

        res = minimize(
            f,
            np.zeros(Xn.shape[1]),
            jac=True,
            method="L-BFGS-B",
            options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000},
        )
        W.append(res.x)
    return np.array(W)


# ---- set_params --------------------------------------------------------------------------


def test_set_params_with_an_unknown_name_changes_nothing():
    X, y = blobs()
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(X, y)
    before = copy.deepcopy(model.__dict__)
    with pytest.raises(ValueError, match="'bogus'"):
        model.set_params(sigma=5.0, solver="cholesky", bogus=1)
    same(model.__dict__, before)
    with pytest.raises(ValueError, match="'nope__x'"):
        model.set_params(lam=3.0, nope__x=1)
    assert model.lam == 0.1
    # a valid call still sets values (checked later, as scikit-learn wants)
    assert model.set_params(sigma=-1.0, solver="cg") is model
    assert model.sigma == -1.0 and model.solver == "cg"
    with pytest.raises(ValueError, match="'sigma'"):
        model.fit(X, y)


# ---- bad removal input: nothing changes, not even the ledger --------------------------------


BAD_INDICES = [
    ([1.0], TypeError, "'indices'"),
    (2.0, TypeError, "'indices'"),
    (np.float64(3), TypeError, "'indices'"),
    (True, TypeError, "'indices'"),
    ([True, False], TypeError, "'indices'"),
    (np.array([True]), TypeError, "'indices'"),
    (torch.tensor([True]), TypeError, "'indices'"),
    (torch.tensor([4.0]), TypeError, "'indices'"),
    ("5", TypeError, "'indices'"),
    (None, TypeError, "'indices'"),
    ([[1], [2, 3]], TypeError, "'indices'"),
    (np.array([1, None], dtype=object), TypeError, "'indices'"),
    (np.int8(-1), ValueError, "unknown index -1"),
    ([7, -3], ValueError, "unknown index -3"),
    ([60], ValueError, "unknown index 60"),
    (np.array([2**63], dtype=np.uint64), ValueError, "unknown index"),
    (2**70, ValueError, "unknown index"),
    ([8, np.int64(9), 8], ValueError, "duplicate index 8"),
    (torch.tensor([10, 10]), ValueError, "duplicate"),
    ([11, 0], ValueError, "already removed index 0"),
    (np.int32(0), ValueError, "already removed"),
    ([[12, 13]], ValueError, "1-D"),
    # every row of class 0 but the ones already removed: would empty the class
    (list(range(3, 60, 3)), ValueError, "every remaining row of class 0"),
]


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
@pytest.mark.parametrize("batch", [False, True])
def test_bad_indices_change_no_attribute_and_no_file(tmp_path, solver, batch):
    X, y = blobs()
    path = tmp_path / "m.safetensors"
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0, solver=solver, checkpoint=path)
    model.fit(X, y).remove([0, 1], batch=batch)
    before, disk = copy.deepcopy(model.__dict__), files_of(path)
    for indices, kind, match in BAD_INDICES:
        with pytest.raises(kind, match=match):
            model.remove(indices, batch=batch)
        same(model.__dict__, before, f"after {indices!r}")
        assert files_of(path) == disk, indices
    with pytest.raises(TypeError, match="'batch'"):
        model.remove([5], batch=1)
    same(model.__dict__, before)
    # empty lists of any dtype remove nothing and write nothing
    for empty in ([], np.array([], dtype=np.float64), torch.tensor([], dtype=torch.int64)):
        assert model.remove(empty, batch=batch).records == []
    same(model.__dict__, before)
    assert files_of(path) == disk
    # and the model goes on exactly like an untouched copy
    twin = CertifiedLogisticRegression(lam=0.1, sigma=1.0, solver=solver)
    twin.fit(X, y).remove([0, 1], batch=batch)
    for m in (model, twin):
        m.remove([5, 4, 2], batch=batch)
    np.testing.assert_array_equal(model.coef_, twin.coef_)
    assert model.budget_used_ == twin.budget_used_


def test_batch_over_budget_changes_no_attribute_and_no_file(tmp_path):
    X, y = blobs(n=90)
    path = tmp_path / "m.safetensors"
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0, retrain=False, checkpoint=path)
    model.fit(X, y).remove([0])
    before, disk = copy.deepcopy(model.__dict__), files_of(path)
    with pytest.raises(BudgetExceededError) as info:
        model.remove(list(range(1, 80)), batch=True)
    assert info.value.bound > info.value.budget_left and info.value.report is None
    same(model.__dict__, before)
    assert files_of(path) == disk


@pytest.mark.parametrize(
    ("change", "data", "kind", "match"),
    [
        ({}, "nan", ValueError, "NaN"),
        ({}, "inf", ValueError, "infinity"),
        ({}, "one_class", ValueError, "'y'"),
        ({}, "short_y", ValueError, "inconsistent numbers"),
        ({"lam": 0.0}, None, ValueError, "'lam'"),
        ({"lam": float("nan")}, None, ValueError, "'lam'"),
        ({"sigma": -1.0}, None, ValueError, "'sigma'"),
        ({"sigma": float("inf")}, None, ValueError, "'sigma'"),
        ({"epsilon": 0.0}, None, ValueError, "'epsilon'"),
        ({"delta": 1.0}, None, ValueError, "'delta'"),
        ({"delta": float("nan")}, None, ValueError, "'delta'"),
        ({"gamma": np.float32(0.0)}, None, ValueError, "'gamma'"),
        ({"seed": True}, None, TypeError, "'seed'"),  # a bool is not a seed
        ({"max_iter": 2.0}, None, TypeError, "'max_iter'"),  # a float is not a count
        ({"device": "meta"}, None, ValueError, "'device'"),
        ({"normalize": False}, "overflow", ValueError, "'X'"),
    ],
)
def test_failed_fit_changes_no_attribute_and_no_file(tmp_path, change, data, kind, match):
    X, y = blobs()
    path = tmp_path / "m.safetensors"
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0, checkpoint=path).fit(X, y)
    model.remove([3, 4])
    X2, y2 = X.copy(), y.copy()
    if data == "nan":
        X2[5, 1] = np.nan
    elif data == "inf":
        X2[5, 1] = np.inf
    elif data == "one_class":
        y2[:] = 1
    elif data == "short_y":
        y2 = y2[:-1]
    elif data == "overflow":  # finite entries whose squared row norm overflows
        X2 = X2 * 1e160
    model.set_params(**change)
    before, disk = copy.deepcopy(model.__dict__), files_of(path)
    with pytest.raises(kind, match=match):
        model.fit(X2, y2)
    same(model.__dict__, before)
    assert files_of(path) == disk


def test_numpy_scalar_parameters_are_accepted():
    X, y = blobs(classes=2)
    plain = CertifiedLogisticRegression(lam=0.1, sigma=1.0, gamma=0.25, delta=1e-4).fit(X, y)
    scalars = CertifiedLogisticRegression(
        lam=np.float32(0.1), sigma=np.float64(1.0), gamma=np.float32(0.25), delta=np.float64(1e-4)
    ).fit(X, y)
    assert scalars._cfg["gamma"] == 0.25 and scalars.privacy_report()["gamma"] == 0.25
    for m in (plain, scalars):
        m.remove([1, 2])
    # float32(0.1) != 0.1, so only the bound arithmetic is compared, through gamma
    ref = CertifiedLogisticRegression(lam=float(np.float32(0.1)), sigma=1.0).fit(X, y)
    ref.remove([1, 2])
    assert ref.budget_used_ == scalars.budget_used_
    assert CertifiedLogisticRegression(gamma=np.int64(1)).fit(X, y)._cfg["gamma"] == 1.0


# ---- inputs: torch tensors, dtypes, layouts ------------------------------------------------------


def test_torch_and_numpy_inputs_give_identical_models():
    X, y = blobs()
    ref = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(X, y)
    variants = [
        torch.tensor(X, requires_grad=True),  # features straight from a network
        torch.tensor(X).T.contiguous().T,  # non-contiguous tensor
        np.asfortranarray(X),
        np.repeat(X, 2, axis=1)[:, ::2],  # non-contiguous view
        X.tolist(),
    ]
    for Xv in variants:
        m = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(Xv, torch.tensor(y))
        np.testing.assert_array_equal(m.coef_, ref.coef_)
        np.testing.assert_array_equal(m.predict(Xv), ref.predict(X))
        np.testing.assert_array_equal(m.decision_function(Xv), ref.decision_function(X))
        assert m.score(Xv, torch.tensor(y)) == ref.score(X, y)
    # low precision: the same model as the values widened by numpy
    for dtype, np_dtype in ((torch.float32, np.float32), (torch.bfloat16, None)):
        Xt = torch.tensor(X, dtype=dtype, requires_grad=True)
        widened = Xt.detach().to(torch.float64).numpy()
        m = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(Xt, y)
        want = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(widened, y)
        np.testing.assert_array_equal(m.coef_, want.coef_)
        np.testing.assert_array_equal(m.predict_proba(Xt), want.predict_proba(widened))
        if np_dtype is not None:
            np.testing.assert_array_equal(m.predict(X.astype(np_dtype)), want.predict(widened))
    report = ref.fairness_report(torch.tensor(X, requires_grad=True), torch.tensor(y))
    assert report["accuracy"] == ref.score(X, y)
    # integer features are features
    Xi = np.rint(X * 10).astype(np.int32)
    m = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(Xi, y)
    want = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(Xi.astype(np.float64), y)
    np.testing.assert_array_equal(m.coef_, want.coef_)


def test_predict_refuses_bad_features_by_name():
    X, y = blobs()
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(X, y)
    before = copy.deepcopy(model.__dict__)
    for bad, match in [
        (X[:, :4], "features"),
        (np.where(X > 2, np.nan, X), "NaN"),
        (np.where(X > 2, np.inf, X), "infinity"),
        (X[0], "2D"),
        (torch.tensor(X[:, :3]), "features"),
    ]:
        for method in (model.predict, model.predict_proba, model.decision_function):
            with pytest.raises(ValueError, match=match):
                method(bad)
    same(model.__dict__, before)


# ---- the certificate: true residual <= used budget, on adversarial sequences ---------------------


@pytest.mark.parametrize(
    ("params", "classes", "scale"),
    [
        ({"solver": "cholesky"}, 3, 1.0),
        ({"solver": "cg", "subsample_ratio": 0.5}, 3, 1.0),
        ({"solver": "auto", "gamma": "tight"}, 2, 1.0),
        ({"solver": "cholesky", "normalize": False}, 3, 4.0),  # rows up to ~10 long
        ({"solver": "cg", "normalize": False, "gamma": "tight"}, 2, 3.0),
    ],
)
def test_bound_covers_the_true_residual_when_classes_are_nearly_emptied(params, classes, scale):
    X, y = blobs(seed=4, n=36, d=4, classes=classes, scale=scale)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=5.0, epsilon=1e5, seed=3, **params)
    model.fit(X, y)
    # every row of class 0 but one, then of class 1 but one: the classes nearly vanish
    order = [i for i in range(36) if y[i] == 0][:-1] + [i for i in range(36) if y[i] == 1][:-1]
    for i in order:
        model.remove(i)
        G, member, Xn, Y = true_gradient(model, X, y)
        # plus the rounding of the dense gradient
        assert np.linalg.norm(G) <= model.budget_used_ + 1e-12 * np.linalg.norm(model.b_)
    assert np.bincount(y[member.any(1)], minlength=classes)[:2].tolist() == [1, 1]
    if model.normalize:  # Newton steps all along (unnormalised long rows retrain often)
        assert model.retrains_ == 0
    # each class objective is lam n_k strongly convex: the weights are within
    # ||g_k|| / (lam n_k) of the exact minimiser, computed here by scipy
    W_star = scipy_minimiser(Xn, Y, member, model.b_, model.lam)
    n_k = member.sum(0)
    slack = np.linalg.norm(G, axis=1) / (model.lam * n_k)
    dist = np.linalg.norm(model.coef_ - W_star, axis=1)
    assert np.all(dist <= slack * (1 + 1e-6) + 1e-6 * np.linalg.norm(W_star, axis=1)), (
        dist,
        slack,
    )


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_batch_bound_covers_removing_most_of_one_class(ratio):
    X, y = blobs(seed=6, n=45, d=4, classes=3)
    model = CertifiedLogisticRegression(
        lam=1e-2, sigma=5.0, epsilon=1e5, subsample_ratio=ratio, solver="cholesky"
    ).fit(X, y)
    class0 = np.flatnonzero(y == 0)
    for chunk in (class0[:7], class0[7:14], np.flatnonzero(y == 2)[:10]):
        record = model.remove(chunk, batch=True).records[0]
        G = true_gradient(model, X, y)[0]
        assert not record.retrained
        assert np.linalg.norm(G) <= model.budget_used_ + 1e-12 * np.linalg.norm(model.b_)


def test_down_to_two_rows_and_retrain_uses_the_next_draw():
    X, y = blobs(seed=2, n=12, d=3, classes=2)
    model = CertifiedLogisticRegression(lam=0.1, sigma=0.5, seed=9, solver="cholesky").fit(X, y)
    model.remove(list(range(2, 12)))
    assert model.n_removed_ == 10 and model.retrains_ > 0
    G, member, Xn, Y = true_gradient(model, X, y)
    assert np.linalg.norm(G) <= model.budget_used_ + 1e-12
    # the current b is draw number `retrains_` of the seed, drawn independently here
    want_b = draw_perturbation(9, model.retrains_, 3, 1, 0.5).numpy().T
    np.testing.assert_array_equal(model.b_, want_b)
    with pytest.raises(ValueError, match="every remaining row of class 0"):
        model.remove(0)


def test_a_nan_bound_never_commits(monkeypatch):
    X, y = blobs(classes=2)
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0, solver="cholesky").fit(X, y)
    plan = type(model)._plan

    def nan_plan(self, *args, **kwargs):
        return plan(self, *args, **kwargs)._replace(bound=float("nan"))

    monkeypatch.setattr(type(model), "_plan", nan_plan)
    record = model.remove([4]).records[0]
    assert record.retrained and model.retrains_ == 1
    assert math.isfinite(model.budget_used_) and model.budget_used_ <= model.budget_
    model.set_params(retrain=False)
    before = copy.deepcopy(model.__dict__)
    with pytest.raises(BudgetExceededError):
        model.remove([5])
    same(model.__dict__, before)


# ---- copies and persistence --------------------------------------------------------------------


def test_pickle_and_deepcopy_continue_like_the_original_through_retrains():
    X, y = blobs(n=80)
    model = CertifiedLogisticRegression(lam=0.05, sigma=0.05, solver="cholesky").fit(X, y)
    model.remove([1, 2, 3])
    assert model.retrains_ > 0
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    for m in [model, *copies]:
        m.remove([10, 11, 12, 13])
        m.remove([20, 21], batch=True)
    for m in copies:
        same(m.__dict__, model.__dict__, timing=False)


def test_failed_checkpoint_write_is_listed_by_the_next_record(tmp_path, monkeypatch):
    X, y = blobs(classes=2)
    path = tmp_path / "m.safetensors"
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0, checkpoint=path).fit(X, y)
    model.remove(3)
    real = persistence.save_model

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(persistence, "save_model", disk_full)
    with pytest.raises(OSError, match="No space"):
        model.remove(5)  # applied in memory, not on disk
    monkeypatch.setattr(persistence, "save_model", real)
    model.remove(7)
    last = RemovalLedger(ledger_path(path)).records()[-1]
    assert last["indices"] == [7] and last["removed_before"] == [3, 5]
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.removed_indices_, [3, 5, 7])
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    assert loaded.budget_used_ == model.budget_used_


def test_torn_ledger_line_loads_the_state_after_the_removal(tmp_path):
    X, y = blobs(classes=2)
    path = tmp_path / "m.safetensors"
    model = CertifiedLogisticRegression(lam=0.1, sigma=0.2, checkpoint=path).fit(X, y)
    model.remove([3, 8])
    ledger = ledger_path(path)
    intact = ledger.read_bytes()
    lines = intact.split(b"\n")
    last = lines[-2]
    # the process died halfway through appending the last record
    ledger.write_bytes(b"\n".join(lines[:-2]) + b"\n" + last[: len(last) // 2])
    loaded = load_model(path)
    assert ledger.read_bytes() == intact  # the cut line is replaced by the full record
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    np.testing.assert_array_equal(loaded.removed_indices_, [3, 8])
    # and the loaded model goes on (through retrains) exactly like the live one
    twin = copy.deepcopy(model)
    twin.checkpoint = None
    loaded.remove([11, 12, 14, 20])
    twin.remove([11, 12, 14, 20])
    assert twin.retrains_ > 0
    np.testing.assert_array_equal(loaded.coef_, twin.coef_)
    np.testing.assert_array_equal(loaded.b_, twin.b_)
    assert loaded.budget_used_ == twin.budget_used_


def test_absurdly_nested_json_is_corruption_not_a_crash(tmp_path):
    book = RemovalLedger(tmp_path / "l.jsonl")
    book.append({"seq": 1, "event": "fit"})
    deep = b"[" * 200_000 + b"]" * 200_000
    good = book.path.read_bytes()
    book.path.write_bytes(good + deep + b"\n")  # as the last line: a torn write
    assert [r["seq"] for r in book.records()] == [1]
    book.path.write_bytes(good + deep + b"\n" + b'{"seq": 2}\n')
    with pytest.raises(ValueError, match="corrupt at line 2"):
        book.records()


class _Tampered:
    """Writes a (consistently checksummed) state edited after ``get_state``."""

    def __init__(self, model, edit):
        self.model, self.edit = model, edit

    def get_state(self):
        tensors, meta = self.model.get_state()
        meta = copy.deepcopy(meta)
        tensors = dict(tensors)
        self.edit(tensors, meta)
        return tensors, meta


def _set(t, name, index, value):
    t[name] = t[name].clone()
    t[name][index] = value


TAMPERING = [
    (lambda t, m: t.update(Y=t["Y"][:, 0]), "'Y' must be 2-D"),
    (lambda t, m: t.update(X=t["X"][:, 0]), "'X' must be 2-D"),
    (lambda t, m: _set(t, "labels", 0, 7), "'labels'"),
    (lambda t, m: _set(t, "W", (0, 0), float("nan")), "'W' must hold finite"),
    (lambda t, m: _set(t, "b", (1, 0), float("inf")), "'b' must hold finite"),
    (lambda t, m: t.update(W=t["W"].to(torch.int64)), "'W' must hold finite floats"),
    (lambda t, m: t.update(eig=-t["eig"] - 1), "'eig'"),
    (lambda t, m: t.update(member=t["member"].to(torch.int64) * 2), "'member'"),
    (lambda t, m: _set(t, "member", 0, False), "'member' leaves out a positive"),
    (lambda t, m: _set(t, "Y", (0, 0), -t["Y"][0, 0]), "'Y' does not match"),
    (lambda t, m: _set(t, "removed", 30, True), "removal history"),
    (lambda t, m: _set(t, "removed", 3, False), "removal history"),
    (lambda t, m: t.pop("history_bound"), "partial removal history"),
    (lambda t, m: t.update(history_offsets=t["history_offsets"] * 3), "inconsistent removal"),
    (lambda t, m: m.pop("row_norm_max"), "'row_norm_max'"),
    (lambda t, m: m.update(row_norm_max=0.5), "'row_norm_max'"),
    (lambda t, m: m.pop("shared_gram"), "'shared_gram'"),
    (lambda t, m: m.update(classes_dtype="zz"), "classes"),
    (lambda t, m: m.update(classes=[0, 0, 1]), "distinct"),
    (lambda t, m: m.update(cg_iterations="ab"), "'cg_iterations'"),
    (lambda t, m: m.update(cg_iterations=[-1, 0]), "'cg_iterations'"),
]


@pytest.mark.parametrize(("edit", "match"), TAMPERING)
def test_tampered_file_is_refused_with_a_clear_error(tmp_path, edit, match):
    X, y = blobs()
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0).fit(X, y)
    model.remove([3, 4])
    model.remove([6, 7], batch=True)
    path = tmp_path / "m.safetensors"
    save_model(_Tampered(model, edit), path)  # checksums match the edited values
    with pytest.raises(ValueError, match=match):
        CertifiedLogisticRegression.load(path)
    # the unedited state loads and equals the model
    save_model(model, path)
    loaded = CertifiedLogisticRegression.load(path)
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    assert json.dumps(loaded.report().to_dict()) == json.dumps(model.report().to_dict())


def test_budget_of_a_loaded_model_follows_its_parameters(tmp_path):
    X, y = blobs()
    model = CertifiedLogisticRegression(lam=0.1, sigma=2.0, epsilon=0.5, delta=1e-5).fit(X, y)
    model.save(tmp_path / "m.safetensors")
    loaded = CertifiedLogisticRegression.load(tmp_path / "m.safetensors")
    assert loaded.budget_ == noise_budget(2.0, 0.5, 1e-5)
    assert loaded.budget_ == pytest.approx(2.0 * 0.5 / math.sqrt(2 * math.log(1.5 / 1e-5)))
