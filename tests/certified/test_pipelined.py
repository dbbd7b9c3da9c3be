"""Pipelined runs of single-row removals (``_remove_pipelined``): the CUDA path's default loop.

The host queues rows without reading each one's numbers; the device commits a row only where
the host's tests pass and stops committing at the first row that fails them. Here the step's
functions run on the CPU (stand-in graphs or eagerly) and every run is compared with the
general step and, bit for bit, with the row-by-row loop it replaces; the rows the device
refuses (a second CG iteration, a factor that is not positive definite, the budget) and an
exception in the middle of a run are checked to leave the host's and the device's state
equal.
"""

import numpy as np
import pytest
import torch

from fastunlearn.certified import (
    BudgetExceededError,
    CertifiedLogisticRegression,
    fixed_step,
    pipelined,
)
from fastunlearn.data import load_digits_dataset
from tests.certified.fixed_helpers import assert_clean_beyond_rows, assert_same, stand_in_graphs

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _digits():
    data = load_digits_dataset()
    return data.X_train.numpy(), data.y_train.numpy()


def _model(X, y, mode, pipelined_runs=True, **params):
    params = dict(dict(lam=1e-3, sigma=1.0, epsilon=1e12, solver="cg"), **params)
    model = CertifiedLogisticRegression(**params).fit(X, y)
    model._fixed_step_mode = mode
    model._pipeline_removals = pipelined_runs
    return model


def _order(n, count, seed=0):
    return np.random.default_rng(seed).permutation(n)[:count].tolist()


def _spy_fetches(monkeypatch):
    """Record the ``(first, count)`` of every window a run copies back."""
    seen = []
    fetch = fixed_step.FixedShapeStep.fetch

    def spy(self, first, count):
        seen.append((first, count))
        return fetch(self, first, count)

    monkeypatch.setattr(fixed_step.FixedShapeStep, "fetch", spy)
    return seen


def _spy_op(monkeypatch, name, pick):
    """Record ``pick(args)`` for every call the fixed-shape step makes to its op ``name``."""
    seen = []
    op = getattr(fixed_step, name)

    def spy(*args):
        seen.append(pick(args))
        return op(*args)

    monkeypatch.setattr(fixed_step, name, spy)
    return seen


def _assert_identical(a, b):
    """Same tensors, mirrors and records, to the bit (the same operators in the same order)."""
    for name in ("_W", "_gram", "_A", "_n_rem", "_removed", "_eig"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a._margins(), b._margins())
    for name in ("_h_A", "_h_n_rem", "_h_removed", "_h_eig", "_h_eig_slack"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.budget_used_ == b.budget_used_ and a.retrains_ == b.retrains_
    assert [(r.indices, r.bound, r.cumulative, r.worst_case) for r in a._history] == [
        (r.indices, r.bound, r.cumulative, r.worst_case) for r in b._history
    ]
    wa, wb = a._wood, b._wood
    assert (wa is None) == (wb is None)
    if wa is not None:
        assert wa.rows == wb.rows
        for name in ("U_buf", "G_buf", "C_buf"):
            assert torch.equal(getattr(wa, name), getattr(wb, name)), name


def _assert_mirrors_match_tensors(model):
    """The host's mirrors say what the device's tensors hold: no row lost between them."""
    np.testing.assert_array_equal(model._h_A, model._A.cpu().numpy())
    np.testing.assert_array_equal(model._h_removed, model._removed.cpu().numpy())
    np.testing.assert_allclose(model._h_n_rem, model._n_rem.cpu().numpy(), rtol=0, atol=1e-9)
    assert len(model._history) == int(model._removed.sum())


def test_one_call_equals_the_row_by_row_loop_bit_for_bit(monkeypatch):
    """One call removing 120 digits rows in pipelined runs (stand-in graphs): the same
    removals, to the bit, as the row-by-row loop; equal to the general step; windows of
    4, 8, 16 rows (the cap, patched), restarting with each run; the device's budget copy
    equals the host's."""
    stand_in_graphs(monkeypatch)
    monkeypatch.setattr(pipelined, "MAX_WINDOW", 16)
    X, y = _digits()
    general = _model(X, y, "off")
    rowwise, piped = _model(X, y, "graph", False), _model(X, y, "graph")
    piped._fused_commit = False  # the row-by-row loop's commit is unfused (Gram rounding)
    fetches = _spy_fetches(monkeypatch)
    order = _order(X.shape[0], 120)
    for m in (general, rowwise, piped):
        m.remove(order)
    _assert_identical(rowwise, piped)
    assert_same(general, piped)
    assert [r.indices for r in piped._history] == [(i,) for i in order]
    assert all(r.seconds > 0 for r in piped._history)
    assert "pipelined" in piped._fixed.graphs
    sizes = [count for _, count in fetches]
    assert sizes[:3] == [4, 8, 16] and max(sizes) == 16  # capped (patched below)
    assert sum(sizes) == len(order)  # no row queued twice
    runs = [i for i, (first, _) in enumerate(fetches) if first == 0]
    assert len(runs) > 1  # runs end where a cached spectral bound goes stale
    assert float(piped._fixed.budget_used) == piped.budget_used_
    _assert_mirrors_match_tensors(piped)
    assert_clean_beyond_rows(piped)


def test_rows_needing_more_iterations_go_row_by_row(monkeypatch):
    """With a tolerance no start and chained iteration reach, the device commits no row: the
    row-by-row loop takes the row that stopped the run and the next ROWWISE_AFTER_STOP - 1,
    then a pipelined run starts again; the removals are still the row-by-row loop's own."""
    X, y = _digits()
    rowwise = _model(X, y, "eager", False, cg_tol=1e-13)
    piped = _model(X, y, "eager", cg_tol=1e-13)
    calls, runs = [], []
    remove_fixed = CertifiedLogisticRegression._remove_fixed
    remove_pipelined = CertifiedLogisticRegression._remove_pipelined

    def spy(self, arr, lo, report, refresh_after=-1, limit=None):
        calls.append(limit)
        return remove_fixed(self, arr, lo, report, refresh_after, limit)

    def spy_runs(self, arr, lo, report, refresh_after=-1):
        runs.append(lo)
        return remove_pipelined(self, arr, lo, report, refresh_after)

    monkeypatch.setattr(CertifiedLogisticRegression, "_remove_fixed", spy)
    monkeypatch.setattr(CertifiedLogisticRegression, "_remove_pipelined", spy_runs)
    order = _order(X.shape[0], pipelined.ROWWISE_AFTER_STOP + 8, seed=1)
    piped.remove(order)
    assert calls == [pipelined.ROWWISE_AFTER_STOP] * 2
    assert runs == [0, pipelined.ROWWISE_AFTER_STOP]  # pipelined again after the row-by-row rows
    calls.clear()
    rowwise.remove(order)
    assert calls and all(limit is None for limit in calls)
    _assert_identical(rowwise, piped)
    assert float(piped._fixed.budget_used) == piped.budget_used_
    assert all(r.indices == (i,) for r, i in zip(piped._history, order, strict=True))
    assert max(piped._cg_last, 0) >= 1
    assert_clean_beyond_rows(piped)


def test_a_row_whose_factor_fails_goes_to_the_single_step(monkeypatch):
    """A row whose extended Woodbury factor is reported not positive definite (forced here)
    is refused by the device mid-run; the rows queued after it are cleaned and the caller's
    single step takes it with the general step; the removals equal the general step's."""
    X, y = _digits()
    general, piped = _model(X, y, "off"), _model(X, y, "eager")
    order = _order(X.shape[0], 40, seed=2)
    bad = order[10]
    start = fixed_step.FixedShapeStep._start

    def failing_start(self):
        start(self)
        if int(self.row) == bad:
            self.out[2] = 0.0

    monkeypatch.setattr(fixed_step.FixedShapeStep, "_start", failing_start)
    for m in (general, piped):
        m.remove(order)
    assert_same(general, piped)
    _assert_mirrors_match_tensors(piped)
    assert_clean_beyond_rows(piped)


@pytest.mark.parametrize("fused_commit", [False, True], ids=["commit", "fused-commit"])
@pytest.mark.parametrize("retrain", [True, False])
def test_budget_stops_the_run_at_the_row_that_would_exceed_it(retrain, fused_commit):
    """A budget reached mid-run: the device refuses the row that would exceed it and every
    row after it; the single step then retrains (or raises with the model unchanged by that
    row), as the general step does; the rows before stay committed with their records. The
    same with the guard and commit as one op (``_fused_commit``)."""
    X, y = _digits()
    params = dict(lam=1e-2, sigma=1.0, epsilon=0.2, retrain=retrain)
    general, piped = _model(X, y, "off", **params), _model(X, y, "eager", **params)
    piped._fused_commit = fused_commit
    order = _order(X.shape[0], 60, seed=3)
    for m in (general, piped):
        if retrain:
            m.remove(order)
        else:
            with pytest.raises(BudgetExceededError):
                m.remove(order)
    assert_same(general, piped)
    if retrain:
        assert piped.retrains_ >= 1
    else:
        assert 0 < len(piped._history) < len(order)
    _assert_mirrors_match_tensors(piped)
    assert_clean_beyond_rows(piped)
    if piped._fixed is not None and piped._fixed.matches(piped, piped._removal_factor()):
        assert piped._fixed.C_inv_rows in (-1, piped._wood.rows)


def test_an_exception_mid_run_loses_no_committed_row(monkeypatch):
    """An exception while the host waits for a window (a KeyboardInterrupt, say): the rows the
    device committed are still accounted on the host before it propagates, the slots of the
    rows queued after them are cleaned, and later removals equal the general step's."""
    X, y = _digits()
    general, piped = _model(X, y, "off"), _model(X, y, "eager")
    wait = fixed_step.RunResults.wait
    calls = {"n": 0}

    def interrupted_wait(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return wait(self)

    monkeypatch.setattr(fixed_step.RunResults, "wait", interrupted_wait)
    order = _order(X.shape[0], 40, seed=4)
    with pytest.raises(KeyboardInterrupt):
        piped.remove(order)
    done = len(piped._history)
    assert done > 4  # the interrupted window's rows were committed on the device: accounted
    _assert_mirrors_match_tensors(piped)
    assert_clean_beyond_rows(piped)
    assert piped.removed_indices_.tolist() == sorted(order[:done])
    monkeypatch.setattr(fixed_step.RunResults, "wait", wait)
    general.remove(order[:done])
    assert_same(general, piped)
    for m in (general, piped):
        m.remove(order[done:])
    assert_same(general, piped)


def test_pipelining_switches():
    """Off when asked (``_pipeline_removals`` / ``_chain_iterations`` False) and where a row
    needing one iteration must end the run (``refresh_after == 0``)."""
    model = CertifiedLogisticRegression()
    assert model._pipeline_applies(-1) and model._pipeline_applies(8)
    assert not model._pipeline_applies(0)
    model._pipeline_removals = False
    assert not model._pipeline_applies(-1)
    model._pipeline_removals, model._chain_iterations = True, False
    assert not model._pipeline_applies(-1)


@pytest.mark.parametrize(
    "device", [pytest.param(d, marks=[pytest.mark.cuda] if d == "cuda" else []) for d in DEVICES]
)
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused-ops"])
def test_pipelined_graphs_equal_the_general_step(device, fused):
    """On CUDA the run replays the captured graph (on the CPU: eagerly); 100 removals in one
    call equal the general step's and leave host and device in agreement, with and without
    the fused ops (start, CG tail, commit)."""
    X, y = _digits()
    mode = "graph" if device == "cuda" else "eager"
    general = _model(X, y, "off", device=device)
    piped = _model(X, y, mode, device=device)
    piped._fused_start = piped._fused_cg_tail = piped._fused_commit = fused
    order = _order(X.shape[0], 100, seed=5)
    for m in (general, piped):
        m.remove(order)
    assert_same(general, piped, rtol=1e-8)
    _assert_mirrors_match_tensors(piped)
    if device == "cuda":
        assert "pipelined" in piped._fixed.graphs
        torch.testing.assert_close(
            piped._fixed.budget_used.item(), piped.budget_used_, rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("pipelined_runs", [True, False], ids=["pipelined", "row-by-row"])
def test_fused_cg_tail_gives_the_general_steps_removals(monkeypatch, pipelined_runs):
    """``_fused_cg_tail``: the end of each CG step as one op (certified_cg_tail_) in the
    graphs (stand-ins here); the removals equal the general step's, and switching the flag
    rebuilds the step."""
    stand_in_graphs(monkeypatch)
    X, y = _digits()
    general = _model(X, y, "off")
    fused = _model(X, y, "graph", pipelined_runs)
    fused._fused_cg_tail = True
    calls = _spy_op(monkeypatch, "certified_cg_tail_", lambda args: args[-1])  # first
    order = _order(X.shape[0], 80, seed=6)
    for m in (general, fused):
        m.remove(order[:60])
    assert_same(general, fused)
    assert fused._fixed.fused_tail and True in calls and False in calls
    step = fused._fixed
    fused._fused_cg_tail = False
    for m in (general, fused):
        m.remove(order[60:])
    assert fused._fixed is not step and not fused._fixed.fused_tail
    assert_same(general, fused)
    _assert_mirrors_match_tensors(fused)


@pytest.mark.parametrize("subsample_ratio", [1.0, 0.9], ids=["shared-gram", "per-class-gram"])
def test_fused_commit_gives_the_unfused_removals(monkeypatch, subsample_ratio):
    """``_fused_commit``: the pipelined step's guard, commit and bookkeeping as one op
    (certified_commit_) in the graph (stand-ins here): the same removals as the unfused
    pipelined step (to rounding in the Gram downdate) and the general step's, with the
    shared and the per-class Gram matrices; switching the flag rebuilds the step."""
    stand_in_graphs(monkeypatch)
    X, y = _digits()
    if subsample_ratio < 1.0:  # three classes: most rows stay in every class's share
        X, y = X[y < 3], y[y < 3]
    params = dict(subsample_ratio=subsample_ratio)
    general = _model(X, y, "off", **params)
    plain, fused = _model(X, y, "graph", **params), _model(X, y, "graph", **params)
    fused._fused_commit = True
    calls = _spy_op(monkeypatch, "certified_commit_", lambda args: args[-1])  # shared_gram
    order = _order(X.shape[0], 90, seed=7)
    for m in (general, plain, fused):
        m.remove(order[:70])
    assert fused._fixed.fused_commit and calls == [subsample_ratio >= 1.0] * len(calls)
    assert len(calls) >= 30  # one per pipelined row (rows in every class's share)
    for name in ("_W", "_A", "_n_rem", "_removed", "_eig"):
        assert torch.equal(getattr(plain, name), getattr(fused, name)), name
    torch.testing.assert_close(plain._gram, fused._gram, rtol=1e-13, atol=1e-13)
    assert plain.budget_used_ == fused.budget_used_
    assert [r.bound for r in plain._history] == [r.bound for r in fused._history]
    assert_same(general, fused)
    _assert_mirrors_match_tensors(fused)
    assert float(fused._fixed.budget_used) == fused.budget_used_
    step = fused._fixed
    fused._fused_commit = False
    for m in (general, fused):
        m.remove(order[70:])
    assert fused._fixed is not step and not fused._fixed.fused_commit
    assert_same(general, fused)


@pytest.mark.parametrize("pipelined_runs", [True, False], ids=["pipelined", "row-by-row"])
def test_every_fused_op_together_gives_the_general_steps_removals(monkeypatch, pipelined_runs):
    """``_fused_start``, ``_fused_woodbury``, ``_fused_cg_tail`` and ``_fused_commit``
    together (the benchmark's ``graph-fused`` variant) in the graphs (stand-ins here), with
    the GPU's explicit inverses: the row's quantities, its Woodbury column, the end of each
    CG step and the pipelined commit each one op; the removals equal the general step's, and
    the start's and the column's ops run once per planned row."""
    stand_in_graphs(monkeypatch)
    monkeypatch.setattr(fixed_step, "EXPLICIT_INVERSE_DEVICES", ("cpu",))
    X, y = _digits()
    general = _model(X, y, "off")
    fused = _model(X, y, "graph", pipelined_runs)
    for switch in ("_fused_start", "_fused_woodbury", "_fused_cg_tail", "_fused_commit"):
        setattr(fused, switch, True)
    starts = _spy_op(monkeypatch, "certified_start_", lambda args: int(args[11]))  # row
    columns = _spy_op(monkeypatch, "certified_woodbury_row_", lambda args: int(args[8]))  # slot
    order = _order(X.shape[0], 80, seed=8)
    for m in (general, fused):
        m.remove(order)
    assert fused._fixed.fused_start and set(order[1:]) <= set(starts)
    assert fused._fixed.fused_woodbury and len(columns) == len(starts)
    assert_same(general, fused)
    _assert_mirrors_match_tensors(fused)
    assert_clean_beyond_rows(fused)


def test_fused_ops_default_from_the_environment(monkeypatch):
    """``FASTUNLEARN_CERTIFIED_FUSED`` sets whether a model uses the fused ops unless it
    says itself; another value than 0 / 1 is refused when the estimator's module is
    imported, naming the variable."""
    import subprocess
    import sys

    model = CertifiedLogisticRegression()
    monkeypatch.setattr(fixed_step, "FUSED_OPS_DEFAULT", "1")
    assert fixed_step._uses(model, "_fused_start") and fixed_step._uses(model, "_fused_commit")
    model._fused_commit = False
    assert not fixed_step._uses(model, "_fused_commit")
    monkeypatch.setattr(fixed_step, "FUSED_OPS_DEFAULT", "0")
    assert not fixed_step._uses(model, "_fused_cg_tail")
    env = dict(__import__("os").environ, FASTUNLEARN_CERTIFIED_FUSED="yes")
    done = subprocess.run(
        [sys.executable, "-c", "from fastunlearn.certified import CertifiedLogisticRegression"],
        env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "FASTUNLEARN_CERTIFIED_FUSED must be '0' or '1', got 'yes'" in done.stderr
