"""The compiled certified removal step (``certified_cg_step``): its contract as an op.

Its arithmetic is compared with the general Python step on whole removal sequences in
``tests/certified/test_fixed_step.py``; here: the result for one row against a direct dense
computation, argument checks, strides, and ``opcheck``.
"""

import numpy as np
import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.ops.certified import certified_cg_step, certified_cg_steps

OP = torch.ops.fastunlearn.certified_cg_step.default


def _model(seed=0, n=90, d=6, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(classes, d))[y] * 2 + rng.normal(size=(n, d))
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, epsilon=1e9, solver="cg")
    model.fit(X, y)
    model.remove([0, 1])  # Woodbury columns in use
    return model


def _args(model, row=5):
    base = model._removal_factor(settled=False)
    return [model._X, model._Y, model._A, model._margins(), model._W, model._n_rem, model._eig,
            model._row_sq, base.M_inv.clone(), torch.zeros_like(base.M_inv), base.weights,
            base.U_buf.clone(), base.folded, row, model._cfg["lam"], model._cfg["gamma"],
            model._row_norm_max, 1e-12, 200]


def _call(args):
    *tensors, slot, row, lam, gamma, norm, tol, it = args
    return certified_cg_step(*tensors, slot, row, lam=lam, gamma=gamma, row_norm_max=norm,
                             cg_tol=tol, max_iter=it)


def test_step_solves_the_newton_system_of_the_remaining_rows():
    model = _model()
    args = _args(model, row=5)
    step = _call(args)
    assert step.factor_ok and step.converged
    # dense check: H_k v_k = Delta_k with H_k the Hessian of the rows left (tol 1e-12)
    X, Y, A, Z, W = (t.clone() for t in args[:5])
    A[5] = 0.0
    lam = model._cfg["lam"]
    n_after = model._n_rem - model._A[5]
    for k in range(W.shape[1]):
        s = A[:, k] * torch.sigmoid(Z[:, k]) * torch.sigmoid(-Z[:, k])
        H = X.T @ (s[:, None] * X) + lam * n_after[k] * torch.eye(X.shape[1], dtype=X.dtype)
        g = -Y[5, k] * torch.sigmoid(-Y[5, k] * Z[5, k])
        delta = lam * W[:, k] + X[5] * g
        torch.testing.assert_close(step.V[:, k], torch.linalg.solve(H, delta), rtol=1e-8,
                                   atol=1e-10)
    torch.testing.assert_close(step.XV, X @ step.V, rtol=1e-12, atol=1e-12)
    assert step.residual <= 1e-12 * step.bound or step.iterations == 200


def test_step_folds_the_row_into_the_inverse_and_writes_its_column():
    model = _model(seed=6)
    args = _args(model, row=7)
    M_inv, M_out, U_buf, slot = args[8], args[9], args[11], args[12]
    before_inv, before_U = M_inv.clone(), U_buf.clone()
    assert _call(args).factor_ok
    u = model._X[7].unsqueeze(0) * args[10][7].sqrt().unsqueeze(1)  # [K, d]
    # Sherman-Morrison against a dense inverse of (M_inv^{-1} - u u^T)
    M_down = torch.linalg.inv(before_inv) - u.unsqueeze(-1) * u.unsqueeze(1)
    torch.testing.assert_close(M_out, torch.linalg.inv(M_down), rtol=1e-10, atol=1e-12)
    assert torch.equal(M_inv, before_inv)  # the current inverse is kept
    torch.testing.assert_close(U_buf[..., slot], u, rtol=0, atol=0)
    others = torch.arange(U_buf.shape[-1]) != slot
    assert torch.equal(U_buf[..., others], before_U[..., others])


def test_a_downdate_that_is_not_positive_definite_writes_nothing():
    model = _model(seed=7)
    args = _args(model)
    args[8] = torch.eye(args[8].shape[-1], dtype=torch.float64).expand_as(args[8]) * 1e9
    U_before, M_out_before = args[11].clone(), args[9].clone()
    step = _call(args)
    assert not step.factor_ok
    assert torch.equal(args[11], U_before) and torch.equal(args[9], M_out_before)


def test_non_contiguous_inputs_give_the_same_step():
    model = _model(seed=1)
    args = _args(model)
    buffers = [args[i].clone() for i in (9, 11)]
    want = _call(args)
    args[9], args[11] = buffers  # the same clean buffers for the second call
    for i in (0, 2, 3, 4, 8):
        args[i] = args[i].T.contiguous().T if args[i].dim() == 2 else args[i].mT.contiguous().mT
    got = _call(args)
    torch.testing.assert_close(got.V, want.V, rtol=0, atol=0)
    assert got.bound == want.bound and got.iterations == want.iterations


def test_max_iter_zero_reports_not_converged():
    model = _model(seed=2)
    args = _args(model)
    args[17], args[18] = 0.0, 0  # a target no residual meets, no iteration allowed
    step = _call(args)
    assert step.factor_ok and not step.converged and step.iterations == 0


@pytest.mark.parametrize(
    "index, bad, message",
    [
        (0, lambda t: t.float(), "'X' must be float64"),  # TypeError (the only dtype case)
        (2, lambda t: t[:-1], "'A' must have shape"),
        (4, lambda t: t[:-1], "'W' must have shape"),
        (6, lambda t: torch.cat([t, t]), "'eig' must be"),
        (8, lambda t: t[:, :-1], "'M_inv' must be"),
        (9, lambda t: t[:, :-1].contiguous(), "'M_out' must be"),
        (9, lambda t: t.mT, "'M_out' must be contiguous"),
        (10, lambda t: t[:-1], "'weights' must have shape"),
        (11, lambda t: t.mT.contiguous().mT, "'U_buf' must be contiguous"),
        (12, lambda t: 10**6, "'slot' must be in"),
        (13, lambda t: -1, "'row' must be in"),
        (14, lambda t: float("nan"), "lam"),
        (18, lambda t: -1, "'max_iter' must be >= 0"),
    ],
)
def test_bad_arguments_are_named(index, bad, message):
    args = _args(_model(seed=3))
    args[index] = bad(args[index])
    error = TypeError if message == "'X' must be float64" else ValueError
    with pytest.raises(error, match=message):
        OP(*args)


def test_m_out_must_not_be_m_inv():
    args = _args(_model(seed=8))
    args[9] = args[8]
    with pytest.raises(ValueError, match="'M_out' must not be 'M_inv'"):
        OP(*args)


def test_a_non_tensor_is_a_type_error():
    args = _args(_model(seed=4))
    args[1] = args[1].numpy()
    with pytest.raises(TypeError, match="argument 'Y'"):
        _call(args)


def test_opcheck():
    args = _args(_model(seed=5))
    torch.library.opcheck(OP, tuple(args), test_utils=("test_schema", "test_faketensor"))


# ---- certified_cg_steps: the same step for several rows, committed in place -------------

STEPS = torch.ops.fastunlearn.certified_cg_steps.default


def _steps_args(model, rows, budget=float("inf")):
    base = model._compiled_base()
    return [model._X, model._Y, model._A, model._margins(), model._W, model._n_rem, model._eig,
            model._row_sq, model._gram, model._removed, base.M_inv, base.M_spare, base.weights,
            base.U_buf, torch.tensor(rows, dtype=torch.int64), base.folded,
            model._cfg["lam"], model._cfg["gamma"], model._row_norm_max, 1e-12, 200,
            model.budget_used_, budget]


def _call_steps(args):
    refresh_after = args[23] if len(args) > 23 else -1
    *tensors, slot, lam, gamma, norm, tol, it, used, budget = args[:23]
    return certified_cg_steps(*tensors, slot, lam=lam, gamma=gamma, row_norm_max=norm,
                              cg_tol=tol, max_iter=it, budget_used=used, budget=budget,
                              refresh_after=refresh_after)


def test_steps_commit_each_row_like_the_single_step():
    model, twin = _model(seed=9), _model(seed=9)
    rows = [5, 11, 20]
    args = _steps_args(model, rows)
    M_spare, slot = args[11], args[15]
    result = _call_steps(args)
    assert result.done == 3
    # the twin: the single step for each row, committed by hand
    for t, row in enumerate(rows):
        single = _args(twin, row)
        single[12] = slot + t
        single[17] = 1e-12
        step = _call(single)
        assert step.factor_ok and step.converged
        assert result.bounds[t] == pytest.approx(step.residual + step.bound, rel=1e-12)
        assert result.iterations[t] == step.iterations
        twin._W += step.V
        twin._Z += step.XV
        twin._n_rem -= twin._A[row]
        twin._A[row] = 0.0
        twin._gram[0] -= torch.outer(twin._X[row], twin._X[row])
        twin._wood = twin._wood._replace(M_inv=single[9], pending=twin._wood.pending + 1)
    torch.testing.assert_close(model._W, twin._W, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model._margins(), twin._margins(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model._A, twin._A, rtol=0, atol=0)
    torch.testing.assert_close(model._gram, twin._gram, rtol=1e-12, atol=1e-12)
    assert model._removed[rows].all() and int(model._removed.sum()) == 2 + 3
    # three rows: the current inverse alternated into M_spare; it matches the twin's
    torch.testing.assert_close(M_spare, twin._wood.M_inv, rtol=1e-12, atol=1e-14)
    assert all(w > 0 for w in result.worst_case) and all(s >= 0 for s in result.seconds)


def test_steps_stop_at_the_first_row_over_budget_without_touching_it():
    model = _model(seed=10)
    first = _call_steps(_steps_args(_model(seed=10), [5, 11, 20]))
    budget = model.budget_used_ + first.bounds[0] + 0.5 * first.bounds[1]  # row 11 won't fit
    args = _steps_args(model, [5, 11, 20], budget)
    W_before = model._W.clone()
    result = _call_steps(args)
    assert result.done == 1
    slot = args[15]
    assert torch.count_nonzero(args[13][..., slot + 1:]) == 0  # the refused row's column
    assert not model._removed[11] and (model._A[11] > 0).all()
    assert not torch.equal(model._W, W_before)  # row 5 was committed
    assert result.bounds[0] == pytest.approx(first.bounds[0], rel=1e-12)


@pytest.mark.parametrize(
    "index, bad, message",
    [
        (2, lambda t: t.T.contiguous().T, "'A' must be contiguous"),
        (8, lambda t: t[:, :-1], "certified_cg_steps: argument 'gram' must be"),
        (9, lambda t: t.float(), "'removed' must be a bool tensor"),
        (14, lambda t: torch.tensor([10**6]), "'rows' holds"),
        (14, lambda t: t.float(), "'rows' must be an int64 tensor"),
        (14, lambda t: t[None], "'rows' must be 1-D"),
        (15, lambda t: 10**6, "'slot' must be in"),
        (21, lambda t: float("nan"), "budget_used"),
    ],
)
def test_steps_bad_arguments_are_named(index, bad, message):
    args = _steps_args(_model(seed=11), [5, 11])
    args[index] = bad(args[index])
    error = TypeError if message.endswith("tensor") else ValueError  # dtypes: TypeError
    with pytest.raises(error, match=message):
        STEPS(*args)


def test_steps_refuse_more_rows_than_free_columns():
    model = _model(seed=12)
    args = _steps_args(model, [5, 11])
    args[15] = args[13].shape[-1] - 1  # one free column
    with pytest.raises(ValueError, match="free columns"):
        STEPS(*args)


def test_steps_opcheck():
    args = _steps_args(_model(seed=13), [5, 11])
    torch.library.opcheck(STEPS, tuple(args), test_utils=("test_schema", "test_faketensor"))


def test_steps_a_non_tensor_is_a_type_error():
    args = _steps_args(_model(seed=14), [5])
    args[14] = [5]
    with pytest.raises(TypeError, match="certified_cg_steps: argument 'rows'"):
        _call_steps(args)


def test_steps_stop_after_a_row_that_needed_more_iterations_than_allowed():
    args = _steps_args(_model(seed=15), [5, 11, 20])  # cg_tol 1e-12: every row iterates
    everything = _call_steps([t.clone() if isinstance(t, torch.Tensor) else t for t in args])
    assert everything.done == 3 and min(everything.iterations) >= 1
    result = _call_steps(args + [0])  # refresh_after = 0
    assert result.done == 1 and result.iterations[0] >= 1


# ---- rows the steps cannot take, and aliased in-place arguments: refused, nothing written --


def _snapshot(args):
    return [a.clone() for a in args if isinstance(a, torch.Tensor)]


def _unchanged(args, before):
    now = [a for a in args if isinstance(a, torch.Tensor)]
    return all(torch.equal(a, b) for a, b in zip(now, before, strict=True))


@pytest.mark.parametrize(
    "rows, message",
    [
        ([5, 5], "holds row 5 twice"),
        ([5, 0], "holds row 0, which is removed already"),  # _model removed rows 0 and 1
        ([7, 5], "row 7 is not held by class 1"),
    ],
)
def test_steps_refuse_rows_they_cannot_remove_before_writing(rows, message):
    model = _model(seed=13)
    model._A[7, 1] = 0.0  # as if row 7 were outside class 1's subset
    args = _steps_args(model, rows)
    before = _snapshot(args)
    with pytest.raises(ValueError, match=message):
        STEPS(*args)
    assert _unchanged(args, before)


def test_single_step_refuses_a_row_not_held_by_every_class():
    model = _model(seed=14)
    args = _args(model, row=0)  # removed already: A[0] = 0
    before = _snapshot(args)
    with pytest.raises(ValueError, match="'row' 0 is not held by class 0"):
        OP(*args)
    assert _unchanged(args, before)


def test_written_arguments_must_not_share_memory_with_others():
    model = _model(seed=15)
    args = _steps_args(model, [5])
    args[3] = args[2]  # Z given as A
    with pytest.raises(ValueError, match="'A' \\(written in place\\) shares memory with "
                                           "argument 'Z'"):
        STEPS(*args)
    args = _args(_model(seed=16))
    args[9] = args[11].view(-1)[: args[9].numel()].view(args[9].shape)  # M_out inside U_buf
    with pytest.raises(ValueError, match="shares memory"):
        OP(*args)


def test_steps_refuse_a_nan_budget():
    args = _steps_args(_model(seed=17), [5], budget=float("nan"))
    with pytest.raises(ValueError, match="'budget' must not be NaN"):
        STEPS(*args)


def test_no_class_or_feature_is_named_before_the_alias_check():
    args = _args(_model(seed=18))
    for i in (1, 2, 3, 4, 5, 6, 10):  # K = 0: every [n, K] / [d, K] / [K] argument empty
        args[i] = args[i][..., :0]
    args[8] = args[8][:0]
    args[9] = args[9][:0]
    args[11] = args[11][:0]
    with pytest.raises(ValueError, match="needs at least one class and one feature"):
        OP(*args)
