"""Audit of the influence core: the GGN operator's kept graph and mode checks, argument
checks of the chunked gradients, and what influence_update reports for unconverged or
impossible solves, each against independent float64 computations."""

import pytest
import torch
import torch.nn.functional as F
from small_nets import ce_sum, flat_function, net_data, small_net
from small_nets import same_state as _same_state
from small_nets import state_of as _state
from torch import nn

from fastunlearn.influence import (
    GGNOperator,
    gradient_difference,
    influence_update,
    loss_gradient,
    loss_value,
)

D64 = torch.float64
HEAD = ["2.weight", "2.bias"]


def _dense_ggn(model, X, names):
    """Independent GGN of summed cross-entropy: ``sum_i J_i^T (diag p_i - p_i p_i^T) J_i``."""
    f, theta = flat_function(model, names,
                             lambda s: torch.func.functional_call(model, s, (X,)))
    J = torch.autograd.functional.jacobian(f, theta)  # [n, C, P]
    p = torch.softmax(f(theta), dim=1)
    Hout = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return torch.einsum("ncp,ncd,ndq->pq", J, Hout, J)


def _per_sample_grads(model, X, y, names):
    """Independent per-sample gradients: a hand-written loop of autograd, one row at a time."""
    named = dict(model.named_parameters())
    rows = []
    for i in range(X.shape[0]):
        loss = ce_sum(model(X[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, [named[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


# ---- GGNOperator: the kept graph follows everything it depends on --------------------------


def test_ggn_kept_graph_follows_unselected_parameters_and_the_data():
    model = small_net()
    X, y = net_data(20)
    op = GGNOperator(model, ce_sum, X, y, params=HEAD)  # one batch: the graph is kept
    torch.testing.assert_close(op.to_dense(), _dense_ggn(model, X, HEAD), rtol=1e-10,
                               atol=1e-10)
    assert op._vjp_cache is not None
    # an unselected parameter shapes the head's inputs, hence its GGN
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    moved = op.to_dense()
    torch.testing.assert_close(moved, _dense_ggn(model, X, HEAD), rtol=1e-10, atol=1e-10)
    # the stored data changed in place
    X.mul_(3.0)
    torch.testing.assert_close(op.to_dense(), _dense_ggn(model, X, HEAD), rtol=1e-10,
                               atol=1e-10)
    assert not torch.allclose(op.to_dense(), moved)


def test_ggn_refuses_training_mode_dropout_and_batchnorm_and_leaves_buffers():
    X, y = net_data(20)
    torch.manual_seed(0)
    dropout = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    with pytest.raises(ValueError, match="'2'.*Dropout.*training mode"):
        GGNOperator(dropout, ce_sum, X, y).to_dense()
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    bn(X)  # non-trivial running statistics
    buffers = {k: v.clone() for k, v in bn.named_buffers()}
    for batch_size in (None, 7):
        with pytest.raises(ValueError, match="'1'.*BatchNorm1d.*training mode"):
            GGNOperator(bn, ce_sum, X, y, batch_size=batch_size).to_dense()
    assert all(torch.equal(v, buffers[k]) for k, v in bn.named_buffers())
    # in eval mode: the GGN of the eval-mode network (running statistics, no dropout)
    names = [n for n, _ in bn.named_parameters()]
    bn.eval()
    torch.testing.assert_close(GGNOperator(bn, ce_sum, X, y, batch_size=7).to_dense(),
                               _dense_ggn(bn, X, names), rtol=1e-10, atol=1e-10)
    # p = 0 dropout in training mode is deterministic: accepted
    dropout[2].p = 0.0
    GGNOperator(dropout, ce_sum, X, y).to_dense()


def test_ggn_update_on_a_training_mode_batchnorm_net_uses_eval_mode_and_restores_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3),
                          nn.Linear(6, 3)).double()
    X, y = net_data(30)
    model(X)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rows = torch.arange(4)
    y_new = y.clone()
    y_new[rows] = (y[rows] + 1) % 3
    names = [n for n, _ in model.named_parameters()]
    model.eval()
    GGN = _dense_ggn(model, X, names)
    named = dict(model.named_parameters())
    diff = ce_sum(model(X[rows]), y_new[rows]) - ce_sum(model(X[rows]), y[rows])
    G = torch.cat([g.reshape(-1) for g in torch.autograd.grad(diff, [named[n] for n in names])])
    model.train()
    lam = 0.2
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), curvature="ggn", damping=lam, tol=1e-11,
                           check_loss=False, apply=False)
    expected = torch.linalg.solve(GGN + lam * torch.eye(GGN.shape[0], dtype=D64), G)
    torch.testing.assert_close(res.step, expected, rtol=1e-7, atol=1e-9)
    assert res.converged and model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(damping=float("nan")), ValueError, "'damping'"),
    (dict(damping=float("inf")), ValueError, "'damping'"),
    (dict(damping=-1.0), ValueError, "'damping'"),
    (dict(batch_size=0), ValueError, "'batch_size'"),
    (dict(batch_size=-3), ValueError, "'batch_size'"),
    (dict(batch_size=2.5), TypeError, "'batch_size'"),
    (dict(targets=slice(0, 5)), ValueError, "same length"),
    (dict(loss_fn="sum"), TypeError, "'loss_fn'"),
    (dict(params=["nope"]), ValueError, "unknown parameter"),
])
def test_ggn_rejects_bad_arguments(kwargs, error, match):
    model = small_net()
    X, y = net_data(20)
    args = dict(loss_fn=ce_sum, targets=y)
    if "targets" in kwargs:
        kwargs = dict(targets=y[kwargs["targets"]])
    args.update(kwargs)
    loss_fn, targets = args.pop("loss_fn"), args.pop("targets")
    with pytest.raises(error, match=match):
        GGNOperator(model, loss_fn, X, targets, **args)


def test_ggn_matmat_on_rejects_mismatched_data():
    model = small_net()
    X, y = net_data(20)
    op = GGNOperator(model, ce_sum, X, y)
    V = torch.ones(op.shape[0], 1, dtype=D64)
    with pytest.raises(ValueError, match="same length"):
        op.matmat_on(V, X[:6], y[:4])


# ---- chunked gradients: argument checks and chunk invariance --------------------------------


@pytest.mark.parametrize("chunk_size", [1, 4, 11, None])
def test_gradient_sums_equal_a_loop_of_per_sample_gradients_for_every_chunk_size(chunk_size):
    model = small_net()
    X, y = net_data(11)
    gen = torch.Generator().manual_seed(4)
    X_new = X + 0.2 * torch.randn(X.shape, generator=gen, dtype=D64)
    y_new = (y + 1) % 3
    names = ["0.bias", "2.weight"]
    old = _per_sample_grads(model, X, y, names)
    new = _per_sample_grads(model, X_new, y_new, names)
    G = gradient_difference(model, ce_sum, X, y, X_new, y_new, params=names,
                            chunk_size=chunk_size)
    torch.testing.assert_close(G, new.sum(0) - old.sum(0), rtol=1e-12, atol=1e-12)
    g = loss_gradient(model, ce_sum, X, y, params=names, chunk_size=chunk_size)
    torch.testing.assert_close(g, old.sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("chunk_size", "error"), [(0, ValueError), (-1, ValueError),
                                                   (2.5, TypeError), (True, TypeError)])
def test_bad_chunk_sizes_are_named_instead_of_a_zero_gradient(chunk_size, error):
    model = small_net()
    X, y = net_data(11)
    with pytest.raises(error, match="'chunk_size'"):
        loss_gradient(model, ce_sum, X, y, chunk_size=chunk_size)
    with pytest.raises(error, match="'chunk_size'"):
        gradient_difference(model, ce_sum, X, y, X, (y + 1) % 3, chunk_size=chunk_size)
    with pytest.raises(error, match="'chunk_size'"):
        loss_value(model, ce_sum, X, y, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_gradient_difference_rejects_corrected_points_of_another_length(chunk_size):
    model = small_net()
    X, y = net_data(11)
    with pytest.raises(ValueError, match="'new_inputs'.*11.*5"):
        gradient_difference(model, ce_sum, X, y, X[:5], y[:5], chunk_size=chunk_size)
    with pytest.raises(ValueError, match="'new_targets'.*11.*5"):
        gradient_difference(model, ce_sum, X, y, X, y[:5], chunk_size=chunk_size)
    with pytest.raises(ValueError, match="'targets'.*11.*5"):
        loss_gradient(model, ce_sum, X, y[:5], chunk_size=chunk_size)


def test_loss_value_rejects_replacements_that_are_not_parameters():
    model = small_net()
    X, y = net_data(11)
    w = torch.zeros(3, 6, dtype=D64)
    with pytest.raises(ValueError, match="'names'.*'zzz'"):
        loss_value(model, ce_sum, X, y, names=["zzz"], values=[w])
    with pytest.raises(ValueError, match=r"'values'.*'2.weight'.*\[3, 6\]"):
        loss_value(model, ce_sum, X, y, names=["2.weight"], values=[torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="'values'.*one tensor per name"):
        loss_value(model, ce_sum, X, y, names=["2.weight", "2.bias"], values=[w])
    # the accepted form: a zero head gives uniform outputs, n log 3
    got = loss_value(model, ce_sum, X, y, names=HEAD, values=[w, torch.zeros(3, dtype=D64)])
    assert got == pytest.approx(11 * torch.log(torch.tensor(3.0, dtype=D64)).item(), rel=1e-13)


# ---- influence_update: unconverged, empty and singular ---------------------------------------


def _problem(n=40, m=5):
    model = small_net()
    X, y = net_data(n)
    rows = torch.arange(m)
    y_new = y.clone()
    y_new[rows] = (y[rows] + 1) % 3
    return model, X, y, y_new, rows


def test_unconverged_cg_is_reported_with_its_true_residual_and_counts():
    model, X, y, y_new, rows = _problem()
    names = [n for n, _ in model.named_parameters()]
    lam = 0.1
    A = _dense_ggn(model, X, names) + lam * torch.eye(51, dtype=D64)
    named = dict(model.named_parameters())
    diff = ce_sum(model(X[rows]), y_new[rows]) - ce_sum(model(X[rows]), y[rows])
    G = torch.cat([g.reshape(-1) for g in torch.autograd.grad(diff, list(named.values()))])
    state = _state(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), curvature="ggn", damping=lam, maxiter=2,
                           restarts=0, check_loss=False)
    true_rel = float(torch.linalg.vector_norm(A @ res.step - G) / G.norm())
    assert true_rel > 1e-3  # two CG steps cannot solve a 51-dimensional system
    assert res.converged is False and res.residual == pytest.approx(true_rel, rel=1e-8)
    assert res.reason is not None and "did not converge" in res.reason
    assert "maxiter=2" in res.reason
    # two iterations plus the final true residual, each a full-data product of 40 rows
    assert res.solver_iterations == 2 and res.num_hvps == 3 * X.shape[0]
    assert res.applied and not _same_state(model, state)  # reported, then applied as asked
    # with the loss check (this inexact step raises the corrected training loss, an
    # untrained net) the remark survives the divergence verdict; the model is untouched
    model2, *_ = _problem()
    state2 = _state(model2)
    res2 = influence_update(model2, X[rows], y[rows], new_targets=y_new[rows],
                            train_data=(X, y_new), curvature="ggn", damping=lam, maxiter=2,
                            restarts=0)
    torch.testing.assert_close(res2.step, res.step, rtol=0, atol=0)
    assert res2.loss_after > res2.loss_before
    assert res2.diverged and not res2.applied and _same_state(model2, state2)
    assert "grew" in res2.reason and "did not converge" in res2.reason


def test_converged_cg_has_no_remark():
    model, X, y, y_new, rows = _problem()
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), curvature="ggn", damping=0.1, tol=1e-10,
                           check_loss=False, apply=False)
    assert res.converged and res.reason is None and res.residual <= 1e-10


@pytest.mark.parametrize("kwargs", [dict(solver="cg", damping=1.0), dict(solver="lissa"),
                                    dict(solver="direct", damping=1.0),
                                    dict(order=1, tau="auto"), dict(order=1, tau=0.1)])
def test_empty_training_set_is_rejected(kwargs):
    model, X, y, y_new, rows = _problem()
    state = _state(model)
    # before: a second-order step G / damping was applied (no curvature, no loss to check)
    with pytest.raises(ValueError, match="'train_data'.*at least one row"):
        influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                         train_data=(X[:0], y_new[:0]), **kwargs)
    assert _same_state(model, state)


def test_training_targets_shaped_unlike_the_targets_are_rejected():
    model = small_net()
    X, _ = net_data(40)
    T = torch.randn(40, 3, dtype=D64, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(4)
    state = _state(model)

    def mse(o, t):
        return F.mse_loss(o, t, reduction="sum")

    # a [40, 1] target would be broadcast against [40, 3] outputs by the loss
    with pytest.raises(ValueError, match=r"'train_data' targets.*\[3\].*\[1\]"):
        influence_update(model, X[rows], T[rows], new_targets=T[rows] + 1,
                         train_data=(X, T[:, :1]), loss_fn=mse, damping=1.0)
    assert _same_state(model, state)


def test_direct_solve_of_a_singular_system_is_reported_not_raised():
    # the last input feature is zero in every row: its weights have zero curvature
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X, y = net_data(30)
    X[:, 3] = 0.0
    rows = torch.arange(3)
    y_new = y.clone()
    y_new[rows] = (y[rows] + 1) % 3
    state = _state(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), solver="direct", damping=0.0)
    assert not res.applied and not res.diverged and res.converged is False
    assert "singular" in res.reason and "damping" in res.reason
    assert res.step_norm == 0.0 and _same_state(model, state)
    # with damping the same system has the dense damped Newton step
    f, theta = flat_function(model, ["weight", "bias"], lambda s: ce_sum(
        torch.func.functional_call(model, s, (X,)), y_new))
    H = torch.autograd.functional.hessian(f, theta)
    named = dict(model.named_parameters())
    diff = ce_sum(model(X[rows]), y_new[rows]) - ce_sum(model(X[rows]), y[rows])
    G = torch.cat([g.reshape(-1) for g in torch.autograd.grad(diff, list(named.values()))])
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), solver="direct", damping=0.5, apply=False,
                           check_loss=False)
    torch.testing.assert_close(res.step, torch.linalg.solve(H + 0.5 * torch.eye(15, dtype=D64),
                                                            G), rtol=1e-10, atol=1e-12)
    assert res.converged and res.reason is None


def test_a_loss_without_reduction_is_named():
    model, X, y, y_new, rows = _problem()
    state = _state(model)
    with pytest.raises(ValueError, match="'loss_fn' must return one number"):
        influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                         train_data=(X, y_new), damping=1.0,
                         loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"))
    assert _same_state(model, state)
