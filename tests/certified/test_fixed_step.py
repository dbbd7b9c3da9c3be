"""The single-row CG removal step with fixed shapes equals the general step.

Two implementations of that step replace the general step of
``CertifiedLogisticRegression._plan`` for one row that every class holds: on a GPU, captured
CUDA graphs of tensor expressions (``fixed_step``, mode ``"eager"`` runs the same expressions
without graphs), and on the CPU one compiled call (``certified_cg_step``, mode ``"cpu"``, the
default). Both are checked here against the general step (mode ``"off"``) on the same
removal sequences: weights, bounds, CG iterations and the Woodbury buffers must agree,
including across retrains, budget errors, full Woodbury buffers and refreshes of the factors.
"""

import os

import numpy as np
import pytest
import torch

from fastunlearn.certified import BudgetExceededError, CertifiedLogisticRegression, single_row
from fastunlearn.certified import estimator as est
from fastunlearn.data import load_digits_dataset
from tests.certified.fixed_helpers import (
    assert_clean_beyond_rows,
    assert_same,
    stand_in_graphs,
)

pytestmark = pytest.mark.usefixtures("one_thread")

#: The fixed-step implementation the tests of this module compare with the general step.
FIXED_MODES = ("eager", "cpu")


_MODE = "eager"


@pytest.fixture(params=FIXED_MODES, autouse=True)
def fixed_mode(request):
    """Run every test once per implementation (``_pair`` reads it)."""
    global _MODE
    _MODE = request.param
    yield request.param
    _MODE = "eager"


def _data(seed=0, n=120, d=8, classes=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 2
    y = np.arange(n) % classes
    return centers[y] + rng.normal(size=(n, d)), y


def _pair(X, y, mode=None, **params):
    """Two identically fitted models: the general step only, and ``mode`` (the fixture's)."""
    models = []
    for m_mode in ("off", mode or _MODE):
        m = CertifiedLogisticRegression(**params).fit(X, y)
        m._fixed_step_mode = m_mode
        models.append(m)
    return models


def _only(fixed_mode, wanted, what):
    """Run a test about one implementation once, not once per fixture parameter."""
    if fixed_mode != wanted:
        pytest.skip(f"about {what}")


def _spy_compiled(monkeypatch):
    """Record the rows the compiled ops are given (the single step, and the loop's rows)."""
    calls = []
    step, steps = single_row.certified_cg_step, single_row.certified_cg_steps

    def spy_step(*args, **kwargs):
        calls.append(args[13])
        return step(*args, **kwargs)

    def spy_steps(*args, **kwargs):
        calls.extend(args[14].tolist())
        return steps(*args, **kwargs)

    monkeypatch.setattr(single_row, "certified_cg_step", spy_step)
    monkeypatch.setattr(single_row, "certified_cg_steps", spy_steps)
    return calls


def _spy_runs(monkeypatch):
    """Record how many rows each call of the removal loop of the fixture's mode removed."""
    runs = []
    name = "_remove_on_fixed_step" if _MODE == "eager" else "_remove_compiled"
    original = getattr(est.CertifiedLogisticRegression, name)

    def spy(self, *args):
        result = original(self, *args)
        runs.append(result[0])
        return result

    monkeypatch.setattr(est.CertifiedLogisticRegression, name, spy)
    return runs


def _remove_both(models, rows):
    for m in models:
        m.remove(rows)


def test_fixed_step_is_used_and_equals_the_general_step_on_digits_ovr():
    data = load_digits_dataset()
    X, y = data.X_train.numpy(), data.y_train.numpy()
    general, fixed = _pair(X, y, lam=1e-3, sigma=1.0, epsilon=1e12, solver="cg", retrain=False)
    order = np.random.default_rng(0).permutation(X.shape[0])[:25]
    # the fixed step's loop (eager) or the compiled loop (cpu) removes each row
    name = "_remove_on_fixed_step" if _MODE == "eager" else "_remove_compiled"
    calls = []
    original = getattr(est.CertifiedLogisticRegression, name)

    def spy(self, *args):
        result = original(self, *args)
        calls.append(result[0])
        return result

    setattr(est.CertifiedLogisticRegression, name, spy)
    try:
        for i in order:
            _remove_both((general, fixed), int(i))
            assert_same(general, fixed)
    finally:
        setattr(est.CertifiedLogisticRegression, name, original)
    # every removal took the fixed path on the fixed model, none on the general one
    assert calls == [1] * len(order)
    if _MODE == "eager":
        assert isinstance(fixed._fixed, single_row.FixedShapeStep)
    else:  # the compiled step keeps no state of its own
        assert getattr(fixed, "_fixed", None) is None
    assert getattr(general, "_fixed", None) is None


@pytest.mark.parametrize("params", [
    dict(),  # binary
    dict(cg_tol=1e-10),  # several CG iterations per removal
    dict(gamma="tight"),
])
def test_binary_sequences_agree(params):
    X, y = _data(classes=2)
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg", **params)
    for i in np.random.default_rng(1).permutation(X.shape[0])[:30]:
        _remove_both(models, int(i))
        assert_same(*models)


def test_retrains_batches_and_auto_refreshes_agree():
    X, y = _data(seed=3, n=150, classes=4)
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=0.3, solver="auto")
    order = np.random.default_rng(2).permutation(X.shape[0])
    _remove_both(models, order[:10].tolist())  # sequential, retrains on the way
    assert_same(*models)
    _remove_both(models, order[10:14])  # batch: the general step on both
    for m in models:
        m.remove(order[14:17], batch=True)
    assert_same(*models)
    _remove_both(models, order[17:60].tolist())
    assert_same(*models)
    assert models[1].retrains_ >= 1


def test_full_woodbury_buffers_fall_back_to_the_general_step(monkeypatch):
    monkeypatch.setattr(est, "WOODBURY_MAX_ROWS", 4)
    X, y = _data(seed=4)
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    for i in np.random.default_rng(3).permutation(X.shape[0])[:12]:
        _remove_both(models, int(i))
        assert_same(*models)
    assert models[1]._wood.rows == 4  # full: later removals preconditioned by plain factors


def test_subsampled_classes_agree():
    X, y = _data(seed=5, classes=3)
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg", subsample_ratio=0.7)
    for i in np.random.default_rng(4).permutation(X.shape[0])[:25]:
        _remove_both(models, int(i))
        assert_same(*models)


def test_budget_error_leaves_model_and_buffers_unchanged():
    X, y = _data(seed=6)
    general, fixed = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=0.2, solver="cg", retrain=False)
    order = np.random.default_rng(5).permutation(X.shape[0])
    for m in (general, fixed):
        with pytest.raises(BudgetExceededError):
            m.remove(order[:50].tolist())
    assert_same(general, fixed)
    W = fixed._W.clone()
    wood = fixed._wood
    U, C = wood.U_buf.clone(), wood.C_buf.clone()
    M_inv = None if wood.M_inv is None else wood.M_inv.clone()
    with pytest.raises(BudgetExceededError):
        fixed.remove(int(order[len(fixed._history)]))
    assert torch.equal(fixed._W, W)
    assert fixed._wood is wood
    assert torch.equal(wood.U_buf, U) and torch.equal(wood.C_buf, C)
    assert M_inv is None or torch.equal(wood.M_inv, M_inv)
    assert_clean_beyond_rows(fixed)


def test_graph_mode_without_cuda_runs_eagerly(fixed_mode):
    _only(fixed_mode, "eager", "the fixed_step module")
    X, y = _data(seed=7, classes=2)
    reference, model = _pair(X, y, mode="graph", lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    _remove_both((reference, model), 3)
    _remove_both((reference, model), 5)
    assert model._fixed.use_graphs is False and model._fixed.graphs == {}
    assert_same(reference, model)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_equals_the_general_step(fixed_mode):
    _only(fixed_mode, "eager", "the fixed_step module")
    # On CUDA the two steps round differently (the fixed step's explicit M^{-1}, other
    # kernels), which can change how many CG iterations reach cg_tol: at the default 0.01 the
    # weights then differ at the tolerance's level (5e-5 seen on an H200). A tight tolerance
    # makes both solve the same system to rounding.
    X, y = _data(seed=8, n=400, d=16, classes=5)
    models = _pair(X, y, mode="graph", lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg",
                   cg_tol=1e-10, device="cuda")
    order = np.random.default_rng(6).permutation(X.shape[0])[:40]
    for i in order[:20]:
        _remove_both(models, int(i))
    _remove_both(models, order[20:].tolist())  # one call: the pipelined loop
    general, fixed = models
    torch.testing.assert_close(fixed._W, general._W, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(fixed._margins(), general._margins(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(fixed._gram, general._gram, rtol=1e-12, atol=1e-12)
    assert torch.equal(fixed._A, general._A) and torch.equal(fixed._removed, general._removed)
    assert fixed.budget_used_ == pytest.approx(general.budget_used_, rel=1e-6)
    assert fixed._fixed.use_graphs
    assert set(fixed._fixed.graphs) == {"pipelined", "start", "start+iterate", "iterate", "commit"}


def test_copies_drop_the_fixed_step_and_continue_identically(fixed_mode):
    _only(fixed_mode, "eager", "the fixed_step module")
    import copy
    import pickle

    X, y = _data(seed=9, classes=3)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg").fit(X, y)
    model._fixed_step_mode = "eager"
    model.remove(1)
    assert model._fixed is not None
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert getattr(other, "_fixed", None) is None
        other.remove(2)
        model_copy = copy.deepcopy(model)
        model_copy.remove(2)
        torch.testing.assert_close(other._W, model_copy._W, rtol=0, atol=0)
        assert other._fixed is not None  # rebuilt on the copy's own tensors
        assert other._fixed.W is other._W and other._fixed.W is not model._W


def test_compiled_step_on_two_threads_with_row_slabs(fixed_mode):
    _only(fixed_mode, "cpu", "the compiled step")
    # n >= 2 x 4096 rows and more than 2^20 entries (below, removals run on one thread):
    # the compiled step splits its passes over X into per-thread slabs
    X, y = _data(seed=10, n=9000, d=120, classes=3)
    models = _pair(X, y, lam=1e-3, sigma=1.0, epsilon=1e9, solver="cg")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for i in np.random.default_rng(7).permutation(X.shape[0])[:8]:
            _remove_both(models, int(i))
    finally:
        torch.set_num_threads(threads)
    assert_same(*models)


def test_compiled_step_is_the_default_on_the_cpu(fixed_mode, monkeypatch):
    _only(fixed_mode, "cpu", "the compiled step")
    if os.environ.get("FASTUNLEARN_FIXED_STEP", "auto") != "auto":
        pytest.skip("FASTUNLEARN_FIXED_STEP chooses another mode in this environment")
    assert single_row.FIXED_STEP_MODE == "auto"
    X, y = _data(seed=11, classes=3)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg").fit(X, y)
    calls = _spy_compiled(monkeypatch)
    model.remove([4, 9])
    assert calls == [4, 9]


def test_many_features_take_the_general_step_without_an_inverse(fixed_mode, monkeypatch):
    _only(fixed_mode, "cpu", "the compiled step")
    monkeypatch.setattr(single_row, "COMPILED_STEP_MAX_FEATURES", 4)
    X, y = _data(seed=12, d=8, classes=3)
    general, model = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    calls = _spy_compiled(monkeypatch)
    _remove_both((general, model), [3, 7])
    assert calls == [] and model._wood.M_inv is None
    assert_same(general, model)


def test_compiled_step_with_blas_products_equals_the_general_step(fixed_mode, monkeypatch):
    _only(fixed_mode, "cpu", "the compiled step")
    # the compiled step's products without the AVX2 kernel (other CPUs, or forced)
    monkeypatch.setenv("FASTUNLEARN_GLM_CPU_KERNEL", "blas")
    X, y = _data(seed=13, classes=4)
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    for i in np.random.default_rng(8).permutation(X.shape[0])[:15]:
        _remove_both(models, int(i))
        assert_same(*models)


def test_one_call_removing_many_rows_crosses_refreshes_and_full_buffers(monkeypatch):
    # one remove() call of 60 rows: the compiled loop takes runs of rows, cut where a cached
    # spectral bound is refreshed and where the Woodbury buffers fill up (then the single
    # step takes over); the result is the general step's, row by row
    monkeypatch.setattr(est, "WOODBURY_MAX_ROWS", 16)
    X, y = _data(seed=14, n=300, classes=3)
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    runs = _spy_runs(monkeypatch)
    order = np.random.default_rng(9).permutation(X.shape[0])[:60].tolist()
    refreshed = models[1]._h_eig.copy()
    _remove_both(models, order)
    assert_same(*models)
    assert [r.indices for r in models[1]._history] == [(i,) for i in order]
    assert not np.array_equal(models[1]._h_eig, refreshed)  # spectral bounds were refreshed
    assert max(runs) > 1 and sum(runs) == 16  # runs of rows, until the buffers were full
    assert models[1]._wood.rows == 16


def test_non_contiguous_state_takes_the_single_step(fixed_mode, monkeypatch):
    _only(fixed_mode, "cpu", "the compiled step")
    X, y = _data(seed=15, classes=3)
    general, model = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    model._W = model._W.T.contiguous().T  # same values, strides the loop cannot update
    calls = _spy_compiled(monkeypatch)
    _remove_both((general, model), [3, 7, 11])
    assert calls == [3, 7, 11]  # each through the single compiled step instead
    assert_same(general, model)


def test_copies_with_pending_rows_continue_identically(fixed_mode, monkeypatch):
    _only(fixed_mode, "cpu", "the compiled step")
    monkeypatch.setattr(single_row, "FIXED_STEP_MODE", "auto")  # the CPU default, copies included
    import copy
    import pickle

    X, y = _data(seed=16, classes=3)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg").fit(X, y)
    model.remove([1, 2, 3])  # an odd count: the current inverse sits in the spare buffer
    assert model._wood.pending == 3
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other._wood.pending == 3 and other._wood.M_inv is not model._wood.M_inv
        other.remove([4, 5])
        twin = copy.deepcopy(model)
        twin.remove([4, 5])
        torch.testing.assert_close(other._W, twin._W, rtol=0, atol=0)
    model.remove([4, 5])
    torch.testing.assert_close(model._W, twin._W, rtol=0, atol=0)


def test_auto_refreshes_the_factors_mid_call_and_goes_on_compiled(monkeypatch):
    # solver "auto" is resolved before every step: in one long call, full Woodbury buffers
    # (or a CG that struggles) give a dense step, after which runs of rows continue
    monkeypatch.setattr(est, "WOODBURY_MAX_ROWS", 8)
    X, y = _data(seed=17, n=400, d=40, classes=3)  # enough features for "auto" to pick CG
    models = _pair(X, y, lam=1e-2, sigma=1.0, epsilon=1e9, solver="auto")
    runs = _spy_runs(monkeypatch)
    dense = []
    plan = est.CertifiedLogisticRegression._plan

    def spy_plan(self, rows, rows_np, solver):
        dense.append(solver == "cholesky")
        return plan(self, rows, rows_np, solver)

    monkeypatch.setattr(est.CertifiedLogisticRegression, "_plan", spy_plan)
    order = np.random.default_rng(10).permutation(X.shape[0])[:30].tolist()
    _remove_both(models, order)
    assert_same(*models)
    assert any(dense)  # dense refreshes inside the call
    if _MODE == "cpu":
        assert sum(runs) > 8  # and the compiled runs went on after them


def test_explicit_inverse_preconditioner_solves_the_same_step(fixed_mode, monkeypatch):
    """The GPU's explicit-``M^{-1}`` preconditioner (forced here on the CPU) gives the general
    step's weights, margins and bounds once CG is run tight (the preconditioner changes only
    how CG gets there)."""
    _only(fixed_mode, "eager", "the fixed_step module")
    from fastunlearn.certified import fixed_step

    monkeypatch.setattr(fixed_step, "EXPLICIT_INVERSE_DEVICES", ("cpu",))
    X, y = _data(seed=9, n=300, d=12, classes=4)
    models = _pair(X, y, mode="eager", lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg",
                   cg_tol=1e-10)
    for i in np.random.default_rng(2).permutation(X.shape[0])[:30]:
        _remove_both(models, int(i))
    general, fixed = models
    step = fixed._fixed
    assert step.M0_inv is not None and step.C_inv is not None
    torch.testing.assert_close(fixed._W, general._W, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(fixed._margins(), general._margins(), rtol=1e-8, atol=1e-10)
    assert fixed.budget_used_ == pytest.approx(general.budget_used_, rel=1e-6)
    _assert_same_woodbury(general._wood, fixed._wood)
    # the inverse kept row by row is C^{-1} of the factor it preconditions with
    C = fixed._wood.C_buf
    assert step.C_inv_rows == fixed._wood.rows
    torch.testing.assert_close(step.C_inv @ C, torch.eye(C.shape[-1], dtype=C.dtype).expand_as(C),
                               rtol=0, atol=1e-10)


def _assert_same_woodbury(a, b):
    """Two Woodbury states hold the same rows with the same terms (to rounding)."""
    assert a.rows == b.rows and a.capacity == b.capacity
    for name in ("U_buf", "G_buf", "C_buf"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-11,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("explicit", [False, True], ids=["solves", "explicit-inverse"])
def test_graph_capture_leaves_the_factor_as_the_general_step_builds_it(
    fixed_mode, monkeypatch, explicit
):
    """The graph path's bookkeeping (warm-up runs, the start run before capturing the
    iteration, snapshots restored, replays) on the CPU with stand-in graphs: the Woodbury
    terms each removal folds in equal the general step's. (A start run to capture the
    iteration once left its slot written, so the first replay extended a dirty factor.)"""
    _only(fixed_mode, "eager", "the fixed_step module")
    from fastunlearn.certified import fixed_step

    if explicit:
        monkeypatch.setattr(fixed_step, "EXPLICIT_INVERSE_DEVICES", ("cpu",))
    stand_in_graphs(monkeypatch)
    X, y = _data(seed=14, n=300, d=12, classes=4)
    models = _pair(X, y, mode="graph", lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg",
                   cg_tol=1e-10)
    for i in np.random.default_rng(3).permutation(X.shape[0])[:12]:
        _remove_both(models, int(i))
        _assert_same_woodbury(models[0]._wood, models[1]._wood)
    general, fixed = models
    assert set(fixed._fixed.graphs) == {"pipelined", "start", "start+iterate", "iterate", "commit"}
    torch.testing.assert_close(fixed._W, general._W, rtol=1e-8, atol=1e-11)
    assert fixed.budget_used_ == pytest.approx(general.budget_used_, rel=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_are_the_default_on_cuda(fixed_mode):
    _only(fixed_mode, "eager", "the fixed_step module")
    if os.environ.get("FASTUNLEARN_FIXED_STEP", "auto") != "auto":
        pytest.skip("FASTUNLEARN_FIXED_STEP chooses another mode in this environment")
    X, y = _data(seed=13, n=300, d=16, classes=4)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg",
                                        device="cuda").fit(X, y)
    model.remove([3, 8])  # one call: a pipelined run
    assert model._fixed.use_graphs and "pipelined" in model._fixed.graphs


def test_explicit_inverse_is_rebuilt_after_a_refused_removal(fixed_mode, monkeypatch):
    """A removal refused for the budget wrote its row of C^{-1} before the refusal: the step
    marks the inverse stale, and the next removal preconditions with C^{-1} of the cleaned
    factor (one row fewer), not with the refused row's."""
    _only(fixed_mode, "eager", "the fixed_step module")
    from fastunlearn.certified import fixed_step

    monkeypatch.setattr(fixed_step, "EXPLICIT_INVERSE_DEVICES", ("cpu",))
    X, y = _data(seed=6)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=0.2, solver="cg",
                                        retrain=False).fit(X, y)
    model._fixed_step_mode = "eager"
    order = np.random.default_rng(5).permutation(X.shape[0])
    with pytest.raises(BudgetExceededError):
        model.remove(order[:50].tolist())
    step = model._fixed
    assert step.C_inv_rows == -1
    rows = model._wood.rows
    step._sync_c_inverse(rows)
    C = model._wood.C_buf
    torch.testing.assert_close(step.C_inv @ C, torch.eye(C.shape[-1], dtype=C.dtype)
                               .expand_as(C), rtol=0, atol=1e-10)
    assert step.C_inv_rows == rows


def test_graph_path_with_explicit_inverses_across_factor_refreshes(fixed_mode, monkeypatch):
    """Stand-in graphs and the GPU's explicit inverses over a sequence that fills the Woodbury
    buffers several times (solver 'auto' refreshes the factors into the same buffers): the
    step's explicit inverses follow each refresh and it stays equal to the general step."""
    _only(fixed_mode, "eager", "the fixed_step module")
    from fastunlearn.certified import fixed_step

    monkeypatch.setattr(fixed_step, "EXPLICIT_INVERSE_DEVICES", ("cpu",))
    monkeypatch.setattr(est, "WOODBURY_MAX_ROWS", 6)
    stand_in_graphs(monkeypatch)
    X, y = _data(seed=15, n=600, d=40, classes=3)  # CG is the cheaper step: auto picks it
    models = _pair(X, y, mode="graph", lam=1e-2, sigma=1.0, epsilon=1e9, solver="auto",
                   cg_tol=1e-10)
    for i in np.random.default_rng(8).permutation(X.shape[0])[:30]:
        _remove_both(models, int(i))
        if models[0]._wood is not None:  # None right after a dense (refreshing) step
            _assert_same_woodbury(models[0]._wood, models[1]._wood)
    general, fixed = models
    assert fixed._factor_generation >= 4  # the factors were refreshed (in their buffers)
    step = fixed._fixed
    assert step.generation == fixed._factor_generation
    torch.testing.assert_close(step.M0_inv, torch.cholesky_inverse(fixed._wood.L))
    torch.testing.assert_close(fixed._W, general._W, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(fixed._margins(), general._margins(), rtol=1e-8, atol=1e-10)
    assert fixed.budget_used_ == pytest.approx(general.budget_used_, rel=1e-6)
