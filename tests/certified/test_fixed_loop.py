"""The row-by-row removal loop of the fixed-shape step (``_remove_fixed``) on the CUDA path.

(Runs of rows are pipelined by default, tests/certified/test_pipelined.py; the models here
pin the row-by-row loop, which the pipelined loop falls back to.) On a GPU a run of
single-row removals replays captured graphs: the start (with one CG
iteration chained into it while the last removal needed one, decided on the device), rarely
a further iteration, and the commit of the step. Here the same functions run eagerly on the
CPU (mode ``"eager"``), with stand-in graphs where the graph bookkeeping is under test, and
are compared with the general step and with the unchained step on the same rows.
"""

import numpy as np
import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression, fixed_step, single_row
from fastunlearn.data import load_digits_dataset
from tests.certified.fixed_helpers import assert_clean_beyond_rows, assert_same, stand_in_graphs

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _digits():
    data = load_digits_dataset()
    return data.X_train.numpy(), data.y_train.numpy()


def _model(X, y, mode, **params):
    params = dict(dict(lam=1e-3, sigma=1.0, epsilon=1e12, solver="cg"), **params)
    model = CertifiedLogisticRegression(**params).fit(X, y)
    model._fixed_step_mode = mode
    model._pipeline_removals = False  # the row-by-row loop
    return model


def _spy_results(monkeypatch):
    """Record ``(chained, iterations taken by the chain)`` of every planned row."""
    seen = []
    result = fixed_step.FixedShapeStep.result

    def spy(self):
        out = result(self)
        seen.append((self.chained, out[3]))
        return out

    monkeypatch.setattr(fixed_step.FixedShapeStep, "result", spy)
    return seen


@pytest.mark.parametrize(
    "device", [pytest.param(d, marks=[pytest.mark.cuda] if d == "cuda" else []) for d in DEVICES]
)
@pytest.mark.parametrize("explicit", [False, True], ids=["solves", "explicit-inverse"])
@pytest.mark.parametrize("cg_tol", [1.0, 1e-12], ids=["not-needed", "needed"])
def test_chained_iteration_equals_the_start_then_one_host_iteration(
    device, explicit, cg_tol, monkeypatch
):
    """The start with a chained iteration leaves the step, residual and bound the host loop
    gets from the start and (where its residual asks for one) one iteration."""
    monkeypatch.setattr(fixed_step, "EXPLICIT_INVERSE_DEVICES", ("cpu", "cuda") if explicit else ())
    X, y = _digits()
    model = _model(X, y, "graph" if device == "cuda" else "eager", cg_tol=cg_tol, device=device)
    model.remove([5, 17])  # some rows in the Woodbury terms
    base = model._removal_factor()
    step = model._fixed_step_for(base)
    saved = step._snapshot(step._state_buffers())
    c_inverse_rows = step.C_inv_rows  # restored with the buffers: no rebuild of C^-1 between
    row = 40

    step.begin(row, base.rows, chain=False)
    residual, bound, ok, iterations = step.result()
    assert ok and iterations == 0
    if not residual <= cg_tol * bound:
        residual, bound = step.iterate()
        iterations = 1
    assert iterations == (cg_tol < 1)
    plain = [t.clone() for t in (step.V, step.XV, step.HV)]
    step._restore(step._state_buffers(), saved)
    step.C_inv_rows = c_inverse_rows

    step.begin(row, base.rows, chain=True)
    chained = step.result()
    assert chained[2] and chained[3] == iterations
    exact = device == "cpu"  # the same operators in the same order
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-12, atol=1e-15)
    assert chained[0] == pytest.approx(residual, **({"abs": 0} if exact else {"rel": 1e-9}))
    assert chained[1] == pytest.approx(bound, **({"abs": 0} if exact else {"rel": 1e-12}))
    for a, b in zip((step.V, step.XV, step.HV), plain, strict=True):
        torch.testing.assert_close(a, b, **tol)
    step._restore(step._state_buffers(), saved)


def test_one_call_equals_the_general_step_with_chained_and_skipped_iterations(monkeypatch):
    """One call removing 60 digits rows with stand-in graphs: each row's step, bound and
    bookkeeping equal the general step's, while the chained iteration was both taken and
    found unneeded (the default cg_tol needs 0 or 1 iterations here)."""
    stand_in_graphs(monkeypatch)
    X, y = _digits()
    general, fixed = _model(X, y, "off"), _model(X, y, "graph")
    seen = _spy_results(monkeypatch)
    order = np.random.default_rng(0).permutation(X.shape[0])[:60].tolist()
    for m in (general, fixed):
        m.remove(order)
    assert_same(general, fixed)
    assert [r.indices for r in fixed._history] == [(i,) for i in order]
    assert all(r.seconds > 0 for r in fixed._history)
    assert (True, 1) in seen and (True, 0) in seen and (False, 0) in seen
    assert len(seen) == len(order)  # one planning per row: no row was planned twice
    assert {"start", "start+iterate", "commit"} <= set(fixed._fixed.graphs)
    torch.testing.assert_close(fixed._gram, general._gram, rtol=0, atol=1e-12)
    assert torch.equal(fixed._A, general._A) and torch.equal(fixed._removed, general._removed)
    assert torch.equal(fixed._n_rem, general._n_rem)
    np.testing.assert_array_equal(fixed._h_A, general._h_A)
    np.testing.assert_array_equal(fixed._h_n_rem, general._h_n_rem)
    np.testing.assert_array_equal(fixed._h_eig_slack, general._h_eig_slack)


def test_error_mid_call_keeps_the_committed_rows_and_cleans_the_slot(monkeypatch):
    """CG giving up on a row in the middle of a call: the rows before it stay removed (with
    their records), the row's Woodbury slot is cleaned, and removals go on as the general
    step's."""
    X, y = _digits()
    general, fixed = _model(X, y, "off"), _model(X, y, "eager")
    order = np.random.default_rng(0).permutation(X.shape[0])[:30].tolist()
    monkeypatch.setattr(single_row, "CG_MAX_ITERATIONS", 0)  # the first row needing CG fails
    for m in (general, fixed):
        with pytest.raises(RuntimeError, match="CG did not reach"):
            m.remove(order)
    committed = len(fixed._history)
    assert 0 < committed < len(order)
    assert [r.indices for r in fixed._history] == [(i,) for i in order[:committed]]
    assert_same(general, fixed)
    assert_clean_beyond_rows(fixed)
    assert fixed._fixed.C_inv_rows == -1
    assert fixed._h_removed.sum() == committed == int(fixed._removed.sum())
    monkeypatch.setattr(single_row, "CG_MAX_ITERATIONS", 200)
    for m in (general, fixed):
        m.remove(order[committed:])
    assert_same(general, fixed)


def test_changed_cg_tol_rebuilds_the_step():
    """The step's chained iteration compares with cg_tol on the device: a new cg_tol (set
    after fit) gives a new step, and the removals follow the new tolerance."""
    X, y = _digits()
    general, fixed = _model(X, y, "off"), _model(X, y, "eager")
    order = np.random.default_rng(1).permutation(X.shape[0])[:20].tolist()
    for m in (general, fixed):
        m.remove(order[:10])
    step = fixed._fixed
    for m in (general, fixed):
        m.set_params(cg_tol=1e-6)
        m.remove(order[10:])
    assert fixed._fixed is not step and fixed._fixed.cg_tol == 1e-6
    assert_same(general, fixed)


def test_unchained_loop_never_chains_and_gives_the_same_removals(monkeypatch):
    """``_chain_iterations = False`` (the benchmark's comparison) plans every row with the
    start alone; the removals are the chained loop's."""
    X, y = _digits()
    chained, unchained = _model(X, y, "eager"), _model(X, y, "eager")
    unchained._chain_iterations = False
    seen = _spy_results(monkeypatch)
    order = np.random.default_rng(2).permutation(X.shape[0])[:30].tolist()
    chained.remove(order)
    assert any(c for c, _ in seen)
    seen.clear()
    unchained.remove(order)
    assert len(seen) == len(order) and not any(c for c, _ in seen)
    assert_same(chained, unchained)
