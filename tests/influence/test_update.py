"""influence_update against independent computations: hand-written Hessians, dense solves,
autograd gradients and retraining."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastunlearn.influence import (
    LissaSettings,
    gradient_difference,
    influence_update,
    last_parameters,
)

D64 = torch.float64


def bce_sum(out, t):
    return F.binary_cross_entropy_with_logits(out.squeeze(-1), t, reduction="sum")


def ce_sum(out, t):
    return F.cross_entropy(out, t, reduction="sum")


def _logreg_problem(n=60, d=5, flips=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=D64)
    w_true = torch.randn(d, generator=gen, dtype=D64)
    y = (X @ w_true + 0.5 * torch.randn(n, generator=gen, dtype=D64) > 0).to(D64)
    rows = torch.arange(flips)
    y_new = y.clone()
    y_new[rows] = 1.0 - y[rows]
    torch.manual_seed(seed)
    model = nn.Linear(d, 1).double()
    return model, X, y, y_new, rows


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _small_net(seed=0, d=4, h=6, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k)).double()


def _net_data(n=40, d=4, k=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=D64)
    y = torch.randint(0, k, (n,), generator=gen)
    return X, y


def _shift_labels(y, rows, shift=1, k=3):
    """Copy of ``y`` with the labels of ``rows`` moved ``shift`` classes on (mod ``k``)."""
    y_new = y.clone()
    y_new[rows] = (y[rows] + shift) % k
    return y_new


def _dense_hessian_of(model, loss_fn, X, y, names=None):
    """Independent dense Hessian: torch.autograd.functional.hessian of a flat function."""
    named = dict(model.named_parameters())
    names = names or list(named)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]

    def f(flat):
        parts = [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        state = {n: p.detach() for n, p in named.items()}
        state.update(zip(names, parts, strict=True))
        return loss_fn(torch.func.functional_call(model, state, (X,)), y)

    theta = torch.cat([named[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(f, theta)


# ---- second order -------------------------------------------------------------------------


def test_cg_equals_dense_newton_step_on_logistic_regression():
    model, X, y, y_new, rows = _logreg_problem()
    lam = 0.1
    theta = _flat(model)
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=D64)], dim=1)  # [w, b] order
    # hand-derived: G = sum_r x_r (y_r - y~_r); H = sum_i s_i (1 - s_i) x_i x_i^T
    G = Xa[rows].T @ (y[rows] - y_new[rows])
    s = torch.sigmoid(Xa @ theta)
    H = Xa.T @ ((s * (1 - s)).unsqueeze(1) * Xa)
    expected = theta - torch.linalg.solve(H + lam * torch.eye(H.shape[0], dtype=D64), G)

    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), loss_fn=bce_sum, order=2, solver="cg",
                           damping=lam, tol=1e-13, check_loss=False)
    assert res.applied and not res.diverged and res.converged
    torch.testing.assert_close(_flat(model), expected, rtol=0, atol=1e-12)
    assert res.residual <= 1e-13
    assert res.num_gradients == 2 * len(rows)
    assert res.num_hvps % X.shape[0] == 0 and res.num_hvps >= res.solver_iterations * X.shape[0]
    assert res.damping == lam and res.order == 2 and res.solver == "cg"


def test_cg_solution_satisfies_damped_system_on_small_network():
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(5)
    y_new = _shift_labels(y, rows)
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    lam = float(-torch.linalg.eigvalsh(H)[0].clamp(max=0)) + 0.5  # positive definite
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows])
    before = _flat(model)
    tol = 1e-9
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=2, solver="cg", damping=lam, tol=tol,
                           check_loss=False, hvp_batch_size=7)
    x = before - _flat(model)
    A = H + lam * torch.eye(H.shape[0], dtype=D64)
    true_rel = float(torch.linalg.vector_norm(A @ x - G) / torch.linalg.vector_norm(G))
    assert true_rel <= tol
    assert res.converged and res.residual == pytest.approx(true_rel, rel=1e-3, abs=1e-14)
    torch.testing.assert_close(x, torch.linalg.solve(A, G), rtol=1e-7, atol=1e-9)


def test_direct_matches_dense_solve_on_parameter_subset():
    model = _small_net()
    X, y = _net_data()
    rows = torch.tensor([3, 7, 11])
    y_new = _shift_labels(y, rows, 2)
    names = last_parameters(model, 2)  # the last Linear: weight and bias
    assert names == ["2.weight", "2.bias"]
    H = _dense_hessian_of(model, ce_sum, X, y_new, names)
    lam = 0.3
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows], params=names)
    first = model[0].weight.detach().clone()
    head_before = torch.cat([model[2].weight.detach().reshape(-1), model[2].bias.detach()])
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=2, solver="direct", damping=lam,
                           params=names, check_loss=False, hvp_batch_size=16)
    head_after = torch.cat([model[2].weight.detach().reshape(-1), model[2].bias.detach()])
    expected = torch.linalg.solve(H + lam * torch.eye(H.shape[0], dtype=D64), G)
    torch.testing.assert_close(head_before - head_after, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(model[0].weight, first)  # unselected parameters untouched
    assert res.num_params == 6 * 3 + 3 and res.residual < 1e-10
    assert res.num_hvps == X.shape[0] * res.num_params


def test_lissa_converges_to_the_damped_solve():
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(4)
    y_new = _shift_labels(y, rows)
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    evals = torch.linalg.eigvalsh(H)
    scale = 1.2 * float(evals[-1])
    lam_eff = float(-evals[0].clamp(max=0)) + 0.5 * float(evals[-1])
    settings = LissaSettings(batch_size=X.shape[0], damping=lam_eff / scale, scale=scale,
                             depth=400, repetitions=1)
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows])
    before = _flat(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=2, solver="lissa", lissa=settings,
                           check_loss=False)
    expected = torch.linalg.solve(H + lam_eff * torch.eye(H.shape[0], dtype=D64), G)
    torch.testing.assert_close(before - _flat(model), expected, rtol=1e-8, atol=1e-10)
    assert res.damping == pytest.approx(lam_eff)
    assert res.residual < 1e-8
    # 400 steps on full batches of 40 rows, plus one full-data product for the residual
    assert res.num_hvps == 400 * X.shape[0] + X.shape[0]


def test_lissa_divergence_is_reported_and_model_untouched():
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(4)
    y_new = (y + 1) % 3
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    scale = 0.2 * float(torch.linalg.eigvalsh(H)[-1])  # far too small: diverges
    state = _state(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=2, solver="lissa",
                           lissa=LissaSettings(batch_size=40, damping=1e-3, scale=scale,
                                               depth=500))
    assert res.diverged and not res.applied and "diverged" in res.reason
    assert _same_state(model, state)


# ---- first order ----------------------------------------------------------------------------


def test_first_order_tiny_tau_moves_along_minus_G():
    model = _small_net()
    X, y = _net_data()
    rows = torch.tensor([0, 5, 9])
    x_new = X[rows] + 0.3
    # independent G: plain autograd on the summed loss difference
    m2 = copy.deepcopy(model)
    diff = ce_sum(m2(x_new), y[rows]) - ce_sum(m2(X[rows]), y[rows])
    G = torch.cat([g.reshape(-1) for g in torch.autograd.grad(diff, list(m2.parameters()))])
    tau = 1e-6
    before = _flat(model)
    res = influence_update(model, X[rows], y[rows], new_inputs=x_new, order=1, tau=tau)
    torch.testing.assert_close(_flat(model), before - tau * G, rtol=0, atol=1e-15)
    assert res.tau == tau and res.num_gradients == 6 and res.num_hvps == 0
    assert res.gradient_norm == pytest.approx(float(G.norm()), rel=1e-12)


def test_first_order_auto_tau_lowers_the_corrected_loss():
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(8)
    y_new = _shift_labels(y, rows)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=1, tau="auto")
    assert res.applied and res.tau > 0
    with torch.no_grad():
        after = float(ce_sum(model(X), y_new))
    assert after < res.loss_before and after == pytest.approx(res.loss_after, rel=1e-10)


def test_second_order_matches_retraining_on_regularised_logistic_regression():
    # Newton on the corrected L2-regularised objective from the old optimum ~ retraining
    model, X, y, y_new, rows = _logreg_problem(n=400, d=4, flips=4)
    lam = 1.0

    def fit(labels):
        m = copy.deepcopy(model)
        opt = torch.optim.LBFGS(m.parameters(), lr=1, max_iter=500, tolerance_grad=1e-13,
                                tolerance_change=0, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = bce_sum(m(X), labels) + 0.5 * lam * sum(p.square().sum()
                                                           for p in m.parameters())
            loss.backward()
            return loss

        opt.step(closure)
        return m

    trained = fit(y)
    retrained = _flat(fit(y_new))
    gap_before = float((_flat(trained) - retrained).norm())
    res = influence_update(trained, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), loss_fn=bce_sum, solver="cg", damping=lam,
                           tol=1e-12, check_loss=False)  # loss_fn lacks the L2 term
    gap_after = float((_flat(trained) - retrained).norm())
    assert res.applied
    assert gap_after < 0.1 * gap_before


# ---- divergence and bad input ----------------------------------------------------------------


def test_growing_loss_is_divergence_and_model_untouched():
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(5)
    y_new = _shift_labels(y, rows)
    state = _state(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=1, tau=50.0)
    assert res.diverged and not res.applied and "grew" in res.reason
    assert res.loss_after > res.loss_before
    assert _same_state(model, state)


def test_non_finite_step_is_divergence():
    model = _small_net()
    X, y = _net_data()
    state = _state(model)
    res = influence_update(model, X[:3], y[:3], new_targets=(y[:3] + 1) % 3, order=1,
                           tau=1e308)
    assert res.diverged and not res.applied and "non-finite" in res.reason
    assert _same_state(model, state)


@pytest.mark.parametrize("case", ["label", "param", "nan_new", "nan_train", "shape", "mean",
                                  "order", "solver", "missing_train", "dtype"])
def test_bad_input_raises_and_leaves_model_unchanged(case):
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(4)
    kwargs = dict(new_targets=(y[rows] + 1) % 3, train_data=(X, y), order=2, damping=1.0)
    if case == "label":
        kwargs["new_targets"] = torch.tensor([0, 1, 3, 2])
        match = "new_targets.*classes"
    elif case == "param":
        kwargs["params"] = ["nope.weight"]
        match = "unknown parameter"
    elif case == "nan_new":
        bad = X[rows].clone()
        bad[1, 2] = float("nan")
        kwargs["new_inputs"] = bad
        match = "new_inputs.*non-finite"
    elif case == "nan_train":
        bad = X.clone()
        bad[10, 0] = float("inf")
        kwargs["train_data"] = (bad, y)
        match = r"train_data\[0\].*non-finite"
    elif case == "shape":
        kwargs["new_targets"] = y[:3]
        match = "new_targets"
    elif case == "mean":
        kwargs["loss_fn"] = lambda o, t: F.cross_entropy(o, t)
        match = "reduction='sum'"
    elif case == "order":
        kwargs["order"] = 3
        match = "order"
    elif case == "solver":
        kwargs["solver"] = "newton"
        match = "solver"
    elif case == "missing_train":
        kwargs["train_data"] = None
        match = "train_data"
    else:
        kwargs["new_inputs"] = X[rows].float()
        match = "new_inputs.*dtype"
    state = _state(model)
    with pytest.raises((ValueError, TypeError), match=match):
        influence_update(model, X[rows], y[rows], **kwargs)
    assert _same_state(model, state)


def test_batchnorm_statistics_and_mode_are_preserved():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    X, y = _net_data()
    model.train()
    model(X)  # non-trivial running statistics
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    res = influence_update(model, X[:4], y[:4], new_targets=(y[:4] + 1) % 3, train_data=(X, y),
                           damping=5.0, check_loss=False)
    assert res.applied and model.training
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())


def _dense_ggn(model, X, y):
    """Independent GGN of summed cross-entropy: sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i."""
    named = dict(model.named_parameters())
    names = list(named)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]

    def outputs(flat):
        parts = [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        return torch.func.functional_call(model, dict(zip(names, parts, strict=True)), (X,))

    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])
    J = torch.autograd.functional.jacobian(outputs, theta)  # [n, C, P]
    p = torch.softmax(outputs(theta), dim=1)
    Hout = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # [n, C, C]
    return torch.einsum("ncp,ncd,ndq->pq", J, Hout, J)


def test_ggn_cg_equals_dense_ggn_solve_on_small_network():
    from fastunlearn.influence import GGNOperator

    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(6)
    y_new = _shift_labels(y, rows)
    GGN = _dense_ggn(model, X, y_new)
    op = GGNOperator(model, ce_sum, X, y_new, batch_size=9)
    torch.testing.assert_close(op.to_dense(), GGN, rtol=1e-10, atol=1e-10)
    assert float(torch.linalg.eigvalsh(GGN)[0]) > -1e-10  # positive semidefinite
    lam = 0.05  # small damping is enough: CG cannot break down on a PSD matrix
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows])
    before = _flat(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), curvature="ggn", damping=lam, tol=1e-10,
                           check_loss=False)
    expected = torch.linalg.solve(GGN + lam * torch.eye(GGN.shape[0], dtype=D64), G)
    torch.testing.assert_close(before - _flat(model), expected, rtol=1e-7, atol=1e-9)
    assert res.converged and res.reason is None


def test_ggn_equals_hessian_for_linear_model():
    from fastunlearn.influence import GGNOperator

    model, X, y, _, _ = _logreg_problem()
    H = _dense_hessian_of(model, bce_sum, X, y)
    torch.testing.assert_close(GGNOperator(model, bce_sum, X, y).to_dense(), H, rtol=1e-10,
                               atol=1e-10)


# ---- curvature subsampling ----------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cg", "direct"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_curvature_subsample_solves_the_reweighted_subset_system(solver, curvature):
    model = _small_net()
    X, y = _net_data(n=60)
    rows = torch.arange(5)
    y_new = _shift_labels(y, rows)
    m, seed = 17, 3
    # the rows the option documents: a seeded draw without replacement, weighted n / m
    idx = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:m]
    if curvature == "ggn":
        C = _dense_ggn(model, X[idx], y_new[idx])
    else:
        C = _dense_hessian_of(model, ce_sum, X[idx], y_new[idx])
    C = C * (X.shape[0] / m)
    lam = float(-torch.linalg.eigvalsh(C)[0].clamp(max=0)) + 0.5
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows])
    before = _flat(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), solver=solver, curvature=curvature,
                           damping=lam, tol=1e-11, curvature_subsample=m,
                           subsample_seed=seed, check_loss=False)
    expected = torch.linalg.solve(C + lam * torch.eye(C.shape[0], dtype=D64), G)
    torch.testing.assert_close(before - _flat(model), expected, rtol=1e-7, atol=1e-9)
    # products are counted on the m rows only
    if solver == "direct":
        assert res.num_hvps == m * res.num_params
    else:
        assert res.num_hvps % m == 0 and res.num_hvps >= m * res.solver_iterations


def test_curvature_subsample_of_every_row_equals_the_full_solve():
    X, y = _net_data()
    rows = torch.arange(4)
    y_new = _shift_labels(y, rows)
    steps = []
    for subsample in (None, X.shape[0], 10 * X.shape[0]):
        model = _small_net()
        before = _flat(model)
        influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                         train_data=(X, y_new), curvature="ggn", damping=0.1, tol=1e-12,
                         curvature_subsample=subsample, check_loss=False)
        steps.append(before - _flat(model))
    torch.testing.assert_close(steps[1], steps[0], rtol=0, atol=0)
    torch.testing.assert_close(steps[2], steps[0], rtol=0, atol=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(curvature_subsample=0), "curvature_subsample"),
    (dict(curvature_subsample=2.5), "curvature_subsample"),
    (dict(curvature_subsample=8, solver="lissa"), "curvature_subsample.*LiSSA"),
    (dict(curvature_subsample=8, subsample_seed=-1), "subsample_seed"),
])
def test_curvature_subsample_bad_input(kwargs, match):
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(4)
    state = _state(model)
    with pytest.raises((ValueError, TypeError), match=match):
        influence_update(model, X[rows], y[rows], new_targets=(y[rows] + 1) % 3,
                         train_data=(X, y), damping=1.0, **kwargs)
    assert _same_state(model, state)


def test_ggn_forward_cache_is_exact_and_follows_parameter_changes():
    from fastunlearn.influence import GGNOperator

    model = _small_net()
    X, y = _net_data()
    V = torch.randn(sum(p.numel() for p in model.parameters()), 3, dtype=D64,
                    generator=torch.Generator().manual_seed(0))
    op = GGNOperator(model, ce_sum, X, y)  # one batch: the forward pass is kept
    first = op.matmat(V)
    torch.testing.assert_close(first, _dense_ggn(model, X, y) @ V, rtol=1e-10, atol=1e-10)
    assert op._vjp_cache is not None
    torch.testing.assert_close(op.matmat(V), first, rtol=0, atol=0)
    with torch.no_grad():  # an in-place change of a parameter invalidates the kept pass
        model[0].weight.mul_(1.5)
    moved = op.matmat(V)
    torch.testing.assert_close(moved, _dense_ggn(model, X, y) @ V, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(moved, first)
    # several batches, or other data: nothing kept
    batched = GGNOperator(model, ce_sum, X, y, batch_size=7)
    torch.testing.assert_close(batched.matmat(V), moved, rtol=1e-10, atol=1e-10)
    assert batched._vjp_cache is None
    op.matmat_on(V, X[:5], y[:5])
    assert op._vjp_cache is None


# ---- LiSSA with batches smaller than the training set -------------------------------------


def _softmax_problem():
    """Convex softmax regression (float64), N = 40 rows of norm 2, labels of 4 rows shifted."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 4, generator=gen, dtype=D64)
    X = 2.0 * X / X.norm(dim=1, keepdim=True)
    y = torch.randint(0, 3, (40,), generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    rows = torch.arange(4)
    y_new = _shift_labels(y, rows)
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows])
    return model, X, y, y_new, rows, H, G


def _damped_solve(H, G, lam):
    return torch.linalg.solve(H + lam * torch.eye(H.shape[0], dtype=D64), G)


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _lissa_step(model, X, y, y_new, rows, settings):
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), solver="lissa", lissa=settings,
                           check_loss=False, apply=False)
    assert not res.diverged and not res.applied
    return res


def test_lissa_settings_step_scale_and_full_data_damping():
    ref = LissaSettings()  # the reference's CIFAR settings: B = 1024, d s = 20
    assert ref.hessian == "batch" and ref.effective_damping == pytest.approx(20.0)
    assert ref.step_scale(50_000) == 49  # ceil(50000 / 1024)
    assert ref.full_data_damping(50_000) == pytest.approx(980.0)
    assert ref.step_scale(1024) == ref.step_scale(10) == 1
    assert ref.step_scale(1025) == 2
    full = LissaSettings(hessian="full")
    assert full.step_scale(50_000) == 1 and full.full_data_damping(50_000) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="hessian"):
        LissaSettings(hessian="nonsense").step_scale(10)
    with pytest.raises(ValueError, match="n_rows"):
        ref.step_scale(-1)


def test_lissa_summed_batch_hessian_targets_k_times_the_k_damped_step():
    model, X, y, y_new, rows, H, G = _softmax_problem()
    lam, k = 1.0, 4  # d s = 1; 40 rows in batches of 10
    scale = 2.4 * float(torch.linalg.eigvalsh(H)[-1])  # a batch Hessian is below H
    settings = LissaSettings(batch_size=10, damping=lam / scale, scale=scale, depth=300)
    res = _lissa_step(model, X, y, y_new, rows, settings)
    target = k * _damped_solve(H, G, k * lam)
    assert _rel(res.step, target) < 0.05
    assert _rel(res.step, _damped_solve(H, G, lam)) > 0.5  # not the (H + d s I) step
    assert res.damping == pytest.approx(k * lam) and res.step_scale == k
    # the residual is that of the targeted system (H + k d s I) (step / k) = G, and small
    A = H + k * lam * torch.eye(H.shape[0], dtype=D64)
    expected = _rel(A @ (res.step / k), G)
    assert res.residual == pytest.approx(expected, rel=1e-6) and res.residual < 0.05
    assert res.to_dict()["step_scale"] == k


def test_lissa_full_hessian_targets_the_d_s_damped_step():
    model, X, y, y_new, rows, H, G = _softmax_problem()
    lam, k = 2.0, 4
    scale = 4.8 * float(torch.linalg.eigvalsh(H)[-1])  # scaled batch products ~ H
    settings = LissaSettings(batch_size=10, damping=lam / scale, scale=scale, depth=300,
                             hessian="full")
    res = _lissa_step(model, X, y, y_new, rows, settings)
    target = _damped_solve(H, G, lam)
    other = k * _damped_solve(H, G, k * lam)
    assert _rel(other, target) > 1.0  # the two targets are far apart
    assert _rel(res.step, target) < 0.1
    assert _rel(res.step, other) > 0.4
    assert res.damping == pytest.approx(lam) and res.step_scale == 1
    A = H + lam * torch.eye(H.shape[0], dtype=D64)
    assert res.residual == pytest.approx(_rel(A @ res.step, G), rel=1e-6)
    assert res.residual < 0.1


@pytest.mark.parametrize("hessian", ["batch", "full"])
@pytest.mark.parametrize("batch_size", [40, 64])
def test_lissa_one_batch_per_pass_is_the_damped_solve_in_both_modes(hessian, batch_size):
    model, X, y, y_new, rows, H, G = _softmax_problem()
    top = float(torch.linalg.eigvalsh(H)[-1])
    scale, lam = 1.2 * top, 0.5 * top
    settings = LissaSettings(batch_size=batch_size, damping=lam / scale, scale=scale,
                             depth=60, hessian=hessian)
    res = _lissa_step(model, X, y, y_new, rows, settings)
    torch.testing.assert_close(res.step, _damped_solve(H, G, lam), rtol=1e-8, atol=1e-10)
    assert res.damping == pytest.approx(lam) and res.step_scale == 1
    assert res.residual < 1e-8


def test_lissa_unknown_hessian_mode_raises_and_leaves_model_unchanged():
    model, X, y, y_new, rows, _, _ = _softmax_problem()
    state = _state(model)
    with pytest.raises(ValueError, match="'lissa.hessian'.*nonsense"):
        influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                         train_data=(X, y_new), solver="lissa",
                         lissa=LissaSettings(batch_size=10, hessian="nonsense"))
    assert _same_state(model, state)


# ---- zero steps, frozen parameters, validation order -----------------------------------------


def _trained_net():
    """A small tanh network trained to near a minimum, where the Hessian is indefinite."""
    torch.manual_seed(0)
    X = torch.randn(40, 5, dtype=D64)
    y = torch.randint(0, 3, (40,))
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    return model, X, y


def test_cg_breakdown_at_the_first_iteration_is_not_applied():
    model, X, y = _trained_net()
    rows = torch.arange(4)
    y_new = _shift_labels(y, rows)
    state = _state(model)
    # defaults: curvature="hessian", damping=0
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new))
    assert res.solver_iterations == 0 and res.step_norm == 0.0  # broke down at once
    assert not res.applied and not res.diverged
    assert "breakdown" in res.reason and "damping" in res.reason and "ggn" in res.reason
    assert _same_state(model, state)


def test_zero_first_order_step_is_not_applied():
    model = _small_net()
    X, y = _net_data()
    state = _state(model)
    res = influence_update(model, X[:3], y[:3], new_targets=(y[:3] + 1) % 3, order=1,
                           tau=1e-320, check_loss=False)  # tau * G underflows to 0
    assert res.step_norm == 0.0 and not res.applied and "zero" in res.reason
    assert _same_state(model, state)


@pytest.mark.parametrize("as_object", [False, True])
def test_explicitly_selected_frozen_parameter_raises(as_object):
    model = _small_net()
    X, y = _net_data()
    model[0].weight.requires_grad_(False)
    state = _state(model)
    params = [model[0].weight] if as_object else ["0.weight", "2.bias"]
    with pytest.raises(ValueError, match="'params'.*'0.weight'.*requires_grad=False"):
        influence_update(model, X[:4], y[:4], new_targets=(y[:4] + 1) % 3, order=1,
                         tau=1e-3, params=params)
    assert _same_state(model, state)
    # params=None skips it, as does last_parameters
    res = influence_update(model, X[:4], y[:4], new_targets=(y[:4] + 1) % 3, order=1,
                           tau=1e-3)
    assert "0.weight" not in res.param_names and torch.equal(model[0].weight,
                                                             state["0.weight"])


@pytest.mark.parametrize("case", ["float32", "int", "meta", "float_targets",
                                  "float_new_targets", "float_train_targets"])
def test_dtype_and_device_are_checked_before_the_model_runs(case):
    model = _small_net()
    X, y = _net_data()
    rows = torch.arange(4)
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    kwargs = dict(new_targets=(y[rows] + 1) % 3, train_data=(X, y), order=1, tau=1e-3)
    inputs, targets = X[rows], y[rows]
    if case == "float32":
        inputs, error, match = inputs.float(), TypeError, "'inputs'.*dtype"
    elif case == "int":
        inputs, error, match = inputs.long(), ValueError, "'inputs'.*do not fit the model"
    elif case == "meta":
        inputs, error, match = inputs.to("meta"), ValueError, "'inputs'.*device"
    elif case == "float_targets":
        targets, error, match = targets.double(), TypeError, "'targets'.*integer class labels"
        kwargs["new_targets"] = kwargs["new_targets"].double()
    elif case == "float_new_targets":
        kwargs["new_targets"] = kwargs["new_targets"].double()
        error, match = TypeError, "'new_targets'.*integer class labels"
    else:
        kwargs["train_data"] = (X, y.double())
        error, match = TypeError, r"'train_data\[1\]'.*integer class labels"
    state = _state(model)
    with pytest.raises(error, match=match):
        influence_update(model, inputs, targets, **kwargs)
    assert _same_state(model, state)
    # only the int inputs reach the model (one guarded row); the others never run it
    assert len(calls) == (1 if case == "int" else 0)


def test_float_targets_are_fine_with_a_custom_loss():
    model, X, y, y_new, rows = _logreg_problem()
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), loss_fn=bce_sum, order=1, tau=1e-3)
    assert res.applied


@pytest.mark.parametrize("order", [2.0, True, "2"])
def test_order_must_be_an_int(order):
    model = _small_net()
    X, y = _net_data()
    state = _state(model)
    with pytest.raises(TypeError, match="'order'"):
        influence_update(model, X[:4], y[:4], new_targets=(y[:4] + 1) % 3, train_data=(X, y),
                         order=order, damping=1.0)
    assert _same_state(model, state)


def test_check_update_options_rejects_bad_and_unknown_options():
    from fastunlearn.influence.update import check_update_options

    model = _small_net()
    opts = check_update_options(model, order=1, tau=0.5, params=["2.weight"])
    assert opts.names == ["2.weight"] and opts.num_params == 18 and opts.tau == 0.5
    for kwargs, match in ((dict(solver="nonsense"), "solver"), (dict(order=7), "order"),
                          (dict(order=1, tau=-5), "tau"), (dict(solvr="cg"), "solvr")):
        with pytest.raises((TypeError, ValueError), match=match):
            check_update_options(model, **kwargs)
