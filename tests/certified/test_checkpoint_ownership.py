"""Who may write a checkpoint, and what a loaded checkpoint may not be trusted with.

A checkpoint path belongs to the model that last wrote it (or was loaded from it): copies made
by ``clone`` + ``fit``, ``deepcopy`` or pickling, and models whose path was set after fitting,
must not append removals to another model's ledger. A loaded checkpoint's cached Gram matrices
and spectral bounds (and the other derived tensors the bounds and updates rely on) are checked
against a recomputation from the stored data.
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.certified.ledger import RemovalLedger
from fastunlearn.certified.math import draw_perturbation
from fastunlearn.certified.persistence import ledger_path, load_model, read_metadata, save_model
from tests.certified.test_estimator_core_audit import _Tampered, blobs, files_of, same
from tests.certified.test_persistence import (
    FakeModel,
    assert_same_snapshot,
    estimator,
    make_data,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def ledger_lines(path) -> list[dict]:
    """The ledger's records, parsed line by line (independently of RemovalLedger)."""
    raw = ledger_path(path).read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode().splitlines()]


def events(path) -> list[tuple[int, str, list[int]]]:
    return [(r["seq"], r["event"], r["indices"]) for r in ledger_lines(path)]


def assert_refused(model, call, path) -> None:
    """``call(model)`` raises the ownership ValueError and changes nothing, in memory or on disk."""
    before, disk = copy.deepcopy(model.__dict__), files_of(path)
    with pytest.raises(ValueError, match=r"'checkpoint'.*(own checkpoint path|load)") as info:
        call(model)
    assert "written by another model" in str(info.value)
    same(model.__dict__, before)
    assert files_of(path) == disk


def owner(**kwargs):
    """The persistence tests' estimator with a budget that never runs out (no retrains)."""
    return estimator(sigma=50.0, lam=0.1, **kwargs)


# --------------------------------------------------------------------------- ownership
def test_clone_fit_onto_the_same_path_takes_it_over(tmp_path):
    X, y = make_data()
    path = tmp_path / "m.safetensors"
    a = owner(checkpoint=str(path)).fit(X, y)
    a.remove(5)
    b = clone(a).fit(X, y)  # a new lineage on the same path: allowed, older records kept
    assert events(path) == [(1, "fit", []), (2, "remove", [5]), (3, "fit", [])]
    assert_refused(a, lambda m: m.remove(17), path)
    assert_refused(a, lambda m: m.remove([17, 0], batch=True), path)
    assert_refused(a, lambda m: m.retrain_now(), path)
    b.remove(17)
    assert events(path)[-1] == (4, "remove", [17])
    loaded = load_model(path)
    assert loaded.removed_indices_.tolist() == [17]
    assert_same_snapshot(snapshot(loaded), snapshot(b))
    # the original is still refused after b's write, and it keeps its own removal in memory
    assert_refused(a, lambda m: m.remove(17), path)
    assert a.removed_indices_.tolist() == [5]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_first_writer_wins(tmp_path, how):
    X, y = make_data()
    path = tmp_path / "m.safetensors"
    a = owner(checkpoint=str(path)).fit(X, y)
    a.remove(5)
    dup = copy.deepcopy if how == "deepcopy" else (lambda m: pickle.loads(pickle.dumps(m)))
    b, c = dup(a), dup(a)
    b.remove(0)  # b writes first: from now on the checkpoint is b's
    assert_refused(a, lambda m: m.remove(17), path)
    assert_refused(c, lambda m: m.remove(17), path)
    assert_refused(a, lambda m: m.retrain_now(), path)
    b.remove(17)
    assert events(path) == [(1, "fit", []), (2, "remove", [5]), (3, "remove", [0]),
                            (4, "remove", [17])]
    meta = read_metadata(path)
    assert meta["ledger_seq"] == 4
    loaded = load_model(path)
    assert loaded.removed_indices_.tolist() == [0, 5, 17]
    np.testing.assert_array_equal(loaded.coef_, b.coef_)
    assert loaded.budget_used_ == b.budget_used_
    # a copy made without a checkpoint path is free to go on
    c.checkpoint = None
    c.remove(17)
    assert c.removed_indices_.tolist() == [5, 17]


def test_original_goes_on_when_it_writes_before_its_copy(tmp_path):
    X, y = make_data()
    path = tmp_path / "m.safetensors"
    a = owner(checkpoint=str(path)).fit(X, y)
    b = copy.deepcopy(a)
    a.remove(5)
    assert_refused(b, lambda m: m.remove(8), path)
    a.remove(8)
    assert events(path) == [(1, "fit", []), (2, "remove", [5]), (3, "remove", [8])]
    np.testing.assert_array_equal(load_model(path).coef_, a.coef_)


def test_loaded_model_owns_the_checkpoint(tmp_path):
    X, y = make_data()
    path = tmp_path / "m.safetensors"
    a = owner(checkpoint=str(path)).fit(X, y)
    a.remove(5)
    loaded = CertifiedLogisticRegression.load(path)
    loaded.remove(8)  # owns it: loaded from it
    assert_refused(a, lambda m: m.remove(9), path)  # a's last write is no longer the file's
    again = CertifiedLogisticRegression.load(path)
    again.retrain_now()
    assert [e[1] for e in events(path)] == ["fit", "remove", "remove", "retrain"]
    assert_refused(loaded, lambda m: m.remove(9), path)
    assert load_model(path).retrains_ == 1


def test_path_set_after_fit(tmp_path):
    X, y = make_data()
    held, empty = tmp_path / "held.safetensors", tmp_path / "empty.safetensors"
    other = owner(checkpoint=str(held)).fit(X, y)
    late = owner().fit(X, y)
    late.remove(3)
    late.checkpoint = str(held)  # another model's checkpoint: refused
    assert_refused(late, lambda m: m.remove(4), held)
    assert_refused(late, lambda m: m.retrain_now(), held)
    assert events(held) == [(1, "fit", [])]
    # an empty path is free: the first record lists the rows removed before it
    late.checkpoint = str(empty)
    late.remove(4)
    (rec,) = ledger_lines(empty)
    assert rec["indices"] == [4] and rec["removed_before"] == [3]
    assert load_model(empty).removed_indices_.tolist() == [3, 4]
    # and back to the held path: still someone else's
    late.checkpoint = str(held)
    assert_refused(late, lambda m: m.remove(6), held)
    other.remove(6)
    assert events(held) == [(1, "fit", []), (2, "remove", [6])]


def test_ledger_without_its_model_file_is_not_taken_over(tmp_path):
    X, y = make_data()
    path = tmp_path / "m.safetensors"
    owner(checkpoint=str(path)).fit(X, y).remove(2)
    for p in tmp_path.glob("m.safetensors*"):
        if not p.name.endswith(".ledger.jsonl"):
            p.unlink()
    late = owner().fit(X, y)
    late.checkpoint = str(path)
    assert_refused(late, lambda m: m.remove(4), path)


def test_sequential_grid_search_with_a_checkpoint_path(tmp_path):
    X, y = make_data()
    path = tmp_path / "m.safetensors"
    search = GridSearchCV(owner(checkpoint=str(path)), {"lam": [0.1, 0.2]}, cv=2)
    search.fit(X, y)
    recs = ledger_lines(path)
    assert [r["event"] for r in recs] == ["fit"] * 5  # 2 x 2 folds + the refit
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    best = search.best_estimator_
    best.remove([5, 17])  # the refit wrote last: it owns the path
    assert events(path)[-2:] == [(6, "remove", [5]), (7, "remove", [17])]
    np.testing.assert_array_equal(load_model(path).coef_, best.coef_)


def test_interrupted_writes_keep_ownership(tmp_path, monkeypatch):
    import fastunlearn.certified.persistence as persistence

    X, y = make_data()
    path = tmp_path / "m.safetensors"
    model = owner(checkpoint=str(path)).fit(X, y)
    real = persistence.save_model

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(persistence, "save_model", disk_full)
    with pytest.raises(OSError, match="No space"):
        model.remove(5)
    monkeypatch.setattr(persistence, "save_model", real)

    def boom(self, record):
        raise KeyboardInterrupt  # killed between the state write and the ledger append

    monkeypatch.setattr(RemovalLedger, "append", boom)
    with pytest.raises(KeyboardInterrupt):
        model.remove(8)
    monkeypatch.undo()
    model.remove(9)  # still its checkpoint: reconciles the ledger and goes on
    recs = ledger_lines(path)
    assert [(r["seq"], r["indices"]) for r in recs] == [(1, []), (2, [8]), (3, [9])]
    assert recs[1]["removed_before"] == [5]
    loaded = load_model(path)
    assert loaded.removed_indices_.tolist() == [5, 8, 9]
    np.testing.assert_array_equal(loaded.coef_, model.coef_)


def test_checkpoint_function_refuses_a_foreign_lineage(tmp_path):
    path = tmp_path / "m.safetensors"
    first = FakeModel(seed=1, checkpoint=str(path)).fit()
    FakeModel(seed=2, checkpoint=str(path)).fit()
    ledger = ledger_path(path).read_bytes()
    with pytest.raises(ValueError, match="'checkpoint'"):
        first.remove(3)
    assert ledger_path(path).read_bytes() == ledger


# --------------------------------------------------------------------------- derived tensors
def _fitted(tmp_path, **kwargs):
    X, y = blobs(n=90)
    model = CertifiedLogisticRegression(lam=0.1, sigma=1.0, solver="cholesky", **kwargs)
    model.fit(X, y)
    model.remove([3, 4, 10])
    return model


def _numpy_gram(model) -> np.ndarray:
    X = model._X.cpu().numpy()
    A = (model._member & ~model._removed.unsqueeze(1)).cpu().numpy().astype(np.float64)
    if model._shared_gram:
        A = A[:, :1]
    return np.einsum("nk,ni,nj->kij", A, X, X)


@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_loaded_gram_and_spectral_bounds_match_an_independent_computation(tmp_path, ratio):
    model = _fitted(tmp_path, subsample_ratio=ratio)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = CertifiedLogisticRegression.load(path)
    gram = _numpy_gram(loaded)
    np.testing.assert_allclose(loaded._gram.numpy(), gram, rtol=0, atol=1e-12)
    top = np.linalg.eigvalsh(gram)[:, -1]
    assert (loaded._eig.numpy() >= top).all()
    # loading keeps the cached values: the loaded model continues as the live one
    torch.testing.assert_close(loaded._eig, model._eig, rtol=0, atol=0)
    a, b = loaded.remove([20, 21]), model.remove([20, 21])
    np.testing.assert_allclose(a.bounds, b.bounds, rtol=1e-9)
    np.testing.assert_allclose(loaded.coef_, model.coef_, rtol=1e-10, atol=1e-12)


def _scale(name, factor):
    def edit(tensors, meta):
        tensors[name] = tensors[name] * factor

    return edit


def _shrunk_gram(tensors, meta):
    # a Gram matrix 100x smaller and the spectral bound that goes with it: all consistent
    gram = tensors["gram"] * 0.01
    top = torch.linalg.eigvalsh(gram)[..., -1]
    tensors["gram"], tensors["eig"] = gram, top * (1 + 1e-6)


def _other_draw(tensors, meta):
    d, K = tensors["b"].shape
    tensors["b"] = draw_perturbation(meta["config"]["seed"] + 1, 0, d, K, 1.0)


def _drop_member(tensors, meta):
    member = tensors["member"].clone()
    labels = tensors["labels"]
    removed = tensors["removed"]
    # a row kept as a negative of class 0 (not removed): drop it from the subset
    row = int(torch.nonzero(member[:, 0] & (labels != 0) & ~removed)[0])
    member[row, 0] = False
    tensors["member"] = member


@pytest.mark.parametrize(
    ("ratio", "edit", "match"),
    [
        (1.0, _scale("eig", 0.01), "'eig'"),
        (0.6, _scale("eig", 0.5), "'eig'"),
        (1.0, _shrunk_gram, "'gram'"),
        (0.6, _scale("gram", 0.9), "'gram'"),
        (1.0, _other_draw, "'b'"),
        (0.6, _drop_member, "'member'"),
    ],
    ids=["eig", "eig-ovr", "gram", "gram-ovr", "b", "member"],
)
def test_tampered_derived_tensors_are_refused(tmp_path, ratio, edit, match):
    model = _fitted(tmp_path, subsample_ratio=ratio)
    path = tmp_path / "m.safetensors"
    save_model(_Tampered(model, edit), path)  # checksums match the edited values
    with pytest.raises(ValueError, match=match):
        CertifiedLogisticRegression.load(path)
    # through a checkpoint file (data file and ledger) as well
    cp = tmp_path / "cp.safetensors"
    model.checkpoint = str(cp)
    model.remove(30)
    meta = read_metadata(cp)
    save_model(_Tampered(model, edit), cp, ledger_seq=meta["ledger_seq"],
               last_record=meta["last_record"])
    with pytest.raises(ValueError, match=match):
        load_model(cp)


def test_lowered_spectral_bound_would_loosen_the_certificate(tmp_path):
    """Why ``eig`` is checked: a lowered bound gives a smaller (invalid) removal bound."""
    model = _fitted(tmp_path)
    twin = copy.deepcopy(model)
    twin._eig = twin._eig * 0.01
    twin._build_host_mirrors()
    assert twin.remove(40).records[0].bound < model.remove(40).records[0].bound


def _nudge_gram(relative):
    """Move one symmetric off-diagonal pair of the first Gram matrix by ``relative * mass``."""

    def edit(tensors, meta):
        gram = tensors["gram"].clone()
        mass = float(torch.diagonal(gram[0]).sum())  # the remaining rows' squared mass
        gram[0, 1, 4] += relative * mass
        gram[0, 4, 1] += relative * mass
        tensors["gram"] = gram

    return edit


@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_gram_check_catches_one_small_entry_and_passes_rounding(tmp_path, ratio):
    """The probe check sees an edit of a single pair of entries far below the bounds' margins.

    1e-7 of the rows' squared mass in one pair (the spectral bound moves by at most that,
    below the bounds' 1e-6 relative margin) is refused on every one of 20 loads (fresh
    random probes each time); 1e-13, rounding level, is accepted.
    """
    model = _fitted(tmp_path, subsample_ratio=ratio)
    bad, fine = tmp_path / "bad.safetensors", tmp_path / "fine.safetensors"
    save_model(_Tampered(model, _nudge_gram(1e-7)), bad)
    save_model(_Tampered(model, _nudge_gram(1e-13)), fine)
    for _ in range(20):
        with pytest.raises(ValueError, match="'gram'"):
            CertifiedLogisticRegression.load(bad)
    loaded = CertifiedLogisticRegression.load(fine)
    assert np.allclose(loaded.coef_, model.coef_, rtol=0, atol=0)
