"""influence_update against independent computations: hand-written Hessians, dense solves,
autograd gradients and retraining."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from small_nets import flat_function, net_data, small_net
from torch import nn

from fastunlearn.influence import (
    LissaSettings,
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


def _shift_labels(y, rows, shift=1, k=3):
    """Copy of ``y`` with the labels of ``rows`` moved ``shift`` classes on (mod ``k``)."""
    y_new = y.clone()
    y_new[rows] = (y[rows] + shift) % k
    return y_new


def _dense_hessian_of(model, loss_fn, X, y, names=None):
    """Independent dense Hessian: torch.autograd.functional.hessian of a flat function."""
    names = names or [n for n, _ in model.named_parameters()]
    f, theta = flat_function(
        model, names, lambda s: loss_fn(torch.func.functional_call(model, s, (X,)), y))
    return torch.autograd.functional.hessian(f, theta)


def _autograd_G(model, x_old, y_old, x_new, y_new, names=None, loss_fn=None):
    """Independent G: torch.autograd.grad of (summed loss on the corrected points - summed
    loss on the old points) w.r.t. the named parameters (all by default), flattened in
    registration order."""
    loss_fn = loss_fn or ce_sum
    named = dict(model.named_parameters())
    chosen = [p for n, p in named.items() if names is None or n in names]
    diff = loss_fn(model(x_new), y_new) - loss_fn(model(x_old), y_old)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(diff, chosen)])


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
    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(5)
    y_new = _shift_labels(y, rows)
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    lam = float(-torch.linalg.eigvalsh(H)[0].clamp(max=0)) + 0.5  # positive definite
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows])
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


@pytest.mark.parametrize("restarts", [0, 3])
def test_cg_restarts_from_its_solution_when_the_true_residual_misses_tol(monkeypatch, restarts):
    from fastunlearn.influence import update as update_module

    real_cg = update_module.cg
    calls = []

    def loose_first_cg(A, B, *, x0=None, tol, maxiter, **kwargs):
        """The real CG; the first call stops at tol=1e-2 and reports converged=False."""
        first = not calls
        out = real_cg(A, B, x0=x0, tol=1e-2 if first else tol, maxiter=maxiter, **kwargs)
        if first:
            out = dataclasses.replace(out, converged=torch.zeros_like(out.converged))
        calls.append(dict(x0=None if x0 is None else x0.clone(), maxiter=maxiter, out=out))
        return out

    monkeypatch.setattr(update_module, "cg", loose_first_cg)
    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(5)
    y_new = _shift_labels(y, rows)
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    lam = float(-torch.linalg.eigvalsh(H)[0].clamp(max=0)) + 0.5  # positive definite
    A = H + lam * torch.eye(H.shape[0], dtype=D64)
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows])
    before = _flat(model)
    tol = 1e-10
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=2, solver="cg", damping=lam, tol=tol,
                           restarts=restarts, check_loss=False)
    step = before - _flat(model)
    first = calls[0]["out"]
    first_rel = float(torch.linalg.vector_norm(A @ first.solution - G) / G.norm())
    assert tol < first_rel <= 1e-2  # the first solve really is loose
    assert calls[0]["x0"] is None and calls[0]["maxiter"] == 10 * G.numel()
    assert res.applied
    if restarts == 0:  # no second try: the loose solution is the step, not converged
        assert len(calls) == 1
        assert res.converged is False
        assert res.residual == pytest.approx(first_rel, rel=1e-6)
        torch.testing.assert_close(step, first.solution, rtol=0, atol=1e-14)
        assert res.solver_iterations == int(first.iterations.max())
        return
    assert len(calls) == 2
    second = calls[1]["out"]
    assert torch.equal(calls[1]["x0"], first.solution)  # restarted from the first solution
    iters = [int(c["out"].iterations.max()) for c in calls]
    assert calls[1]["maxiter"] == 10 * G.numel() - iters[0]  # the budget is shared
    assert res.solver_iterations == sum(iters) and iters[1] > 0
    assert res.num_hvps == (first.num_matvecs + second.num_matvecs) * X.shape[0]
    assert res.converged is True and res.residual <= tol
    true_rel = float(torch.linalg.vector_norm(A @ step - G) / G.norm())
    assert true_rel <= tol
    torch.testing.assert_close(step, torch.linalg.solve(A, G), rtol=1e-7, atol=1e-9)


def test_direct_matches_dense_solve_on_parameter_subset():
    model = small_net()
    X, y = net_data(40)
    rows = torch.tensor([3, 7, 11])
    y_new = _shift_labels(y, rows, 2)
    names = last_parameters(model, 2)  # the last Linear: weight and bias
    assert names == ["2.weight", "2.bias"]
    H = _dense_hessian_of(model, ce_sum, X, y_new, names)
    lam = 0.3
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows], names)
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
    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(4)
    y_new = _shift_labels(y, rows)
    H = _dense_hessian_of(model, ce_sum, X, y_new)
    evals = torch.linalg.eigvalsh(H)
    scale = 1.2 * float(evals[-1])
    lam_eff = float(-evals[0].clamp(max=0)) + 0.5 * float(evals[-1])
    settings = LissaSettings(batch_size=X.shape[0], damping=lam_eff / scale, scale=scale,
                             depth=400, repetitions=1)
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows])
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
    model = small_net()
    X, y = net_data(40)
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
    model = small_net()
    X, y = net_data(40)
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


def _one_weight_logreg(w0):
    """Logistic regression with a single weight ``w`` (no bias), set to ``w0``."""
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(w0)
    return model


def _auto_tau_problem(case):
    """``(model, inputs, targets, new_targets, train_data, loss_fn)`` for the line search."""
    if case in ("quadratic_step", "halving"):
        model = small_net()
        X, y = net_data(40)
        rows = torch.arange(8 if case == "quadratic_step" else 20)
        y_new = _shift_labels(y, rows)
        return model, X[rows], y[rows], y_new[rows], (X, y_new), ce_sum
    if case == "negative_curvature":  # near a minimum: G^T H G < 0, t0 = 1 / ||G||
        model, X, y = _trained_net()
        rows = torch.arange(1)
        y_new = _shift_labels(y, rows)
        return model, X[rows], y[rows], y_new[rows], (X, y_new), ce_sum
    # doubling: one weight w = 0; the flipped point x = 1 (label 1 -> 0) gives G = 1, and
    # the corrected loss softplus(w) + softplus(-w / 1000) is lowest near w = -7.6, about
    # twice as far as the quadratic model's step 1 / f''(0) ~ 4
    one = torch.ones(1, 1, dtype=D64)
    train = (torch.tensor([[1.0], [1e-3]], dtype=D64), torch.tensor([0.0, 1.0], dtype=D64))
    return (_one_weight_logreg(0.0), one, torch.ones(1, dtype=D64), torch.zeros(1, dtype=D64),
            train, bce_sum)


def _loss_along(model, loss_fn, X, y, G):
    """Independent ``f(t)``: the summed loss at ``theta - t G`` (all parameters)."""
    named = dict(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])
    sizes = [p.numel() for p in named.values()]

    def f(t):
        parts = (theta - t * G).split(sizes)
        state = {n: c.view(p.shape) for (n, p), c in zip(named.items(), parts, strict=True)}
        with torch.no_grad():
            return float(loss_fn(torch.func.functional_call(model, state, (X,)), y))

    return f


@pytest.mark.parametrize("case", ["quadratic_step", "halving", "doubling",
                                  "negative_curvature"])
def test_first_order_auto_tau_follows_the_documented_line_search(case):
    # documented rule: start at t0 = ||G||^2 / G^T H G (1 / ||G|| if G^T H G <= 0), halve
    # until the corrected training loss decreases, double while it keeps decreasing
    model, inputs, targets, new_targets, (X, y), loss_fn = _auto_tau_problem(case)
    n = X.shape[0]
    H = _dense_hessian_of(model, loss_fn, X, y)
    G = _autograd_G(model, inputs, targets, inputs, new_targets, loss_fn=loss_fn)
    gHg = float(G @ H @ G)
    assert (gHg > 0) == (case != "negative_curvature")
    t0 = float(G @ G) / gHg if gHg > 0 else 1.0 / float(G.norm())
    f = _loss_along(model, loss_fn, X, y, G)
    f0 = f(0.0)
    before = _flat(model)
    res = influence_update(model, inputs, targets, new_targets=new_targets, train_data=(X, y),
                           loss_fn=loss_fn, order=1, tau="auto")
    assert res.applied and not res.diverged and res.reason is None
    # tau = t0 * 2^k for an integer k
    exponent = math.log2(res.tau / t0)
    k = round(exponent)
    assert abs(exponent - k) < 1e-9 and -40 <= k <= 20
    assert {"quadratic_step": k == 0, "halving": k < 0, "doubling": k > 0,
            "negative_curvature": True}[case]
    ft = f(res.tau)
    assert ft < f0
    if k < 0:  # every longer trial step failed to lower the loss, the first halving did
        assert all(not f(t0 * 2.0**j) < f0 for j in range(k + 1, 1))
        evals = 2 + (-k)
    else:  # no halving; the loss fell at every doubling taken, and not at the next one
        assert all(f(t0 * 2.0**(j + 1)) < f(t0 * 2.0**j) for j in range(k))
        assert k == 20 or not f(2.0 * res.tau) < ft
        evals = 2 + min(k + 1, 20)
    # loss evaluations: the line search's, then the divergence check at the chosen tau
    assert res.num_loss_evals == (evals + 1) * n and res.num_hvps == n
    assert res.loss_before == pytest.approx(f0, rel=1e-12)
    assert res.loss_after == pytest.approx(ft, rel=1e-10, abs=1e-14)
    torch.testing.assert_close(_flat(model), before - res.tau * G, rtol=0, atol=1e-12)
    with torch.no_grad():
        after = float(loss_fn(model(X), y))
    assert after < res.loss_before and after == pytest.approx(res.loss_after, rel=1e-10)


def test_first_order_auto_tau_without_a_descending_step_is_not_applied():
    # one weight w = 0.5, one point x = 1 flipped from label 1 to 0: G = x (s - 0) - x (s - 1)
    # = 1, but the "corrected" training set keeps the old label, so its loss softplus(-w)
    # grows along -G for every t > 0 and no halving of t0 helps
    model = _one_weight_logreg(0.5)
    one = torch.ones(1, 1, dtype=D64)
    targets, new_targets = torch.ones(1, dtype=D64), torch.zeros(1, dtype=D64)
    G = _autograd_G(model, one, targets, one, new_targets, loss_fn=bce_sum)
    torch.testing.assert_close(G, torch.ones(1, dtype=D64), rtol=0, atol=1e-15)
    f = _loss_along(model, bce_sum, one, targets, G)
    assert f(1e-3) > f(0.0)  # an ascent direction
    state = _state(model)
    res = influence_update(model, one, targets, new_targets=new_targets,
                           train_data=(one, targets), loss_fn=bce_sum, order=1, tau="auto")
    assert not res.applied and not res.diverged and res.tau is None
    assert res.reason == "line search found no step that lowers the corrected training loss"
    assert res.step_norm == 0.0 and res.loss_after is None
    assert res.loss_before == pytest.approx(f(0.0), rel=1e-12)
    # f(0), f(t0) and 40 halvings, each over the one training row; one HVP for t0
    assert res.num_loss_evals == 42 and res.num_hvps == 1
    assert _same_state(model, state)


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
    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(5)
    y_new = _shift_labels(y, rows)
    state = _state(model)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), order=1, tau=50.0)
    assert res.diverged and not res.applied and "grew" in res.reason
    assert res.loss_after > res.loss_before
    assert _same_state(model, state)


def test_non_finite_step_is_divergence():
    model = small_net()
    X, y = net_data(40)
    state = _state(model)
    res = influence_update(model, X[:3], y[:3], new_targets=(y[:3] + 1) % 3, order=1,
                           tau=1e308)
    assert res.diverged and not res.applied and "non-finite" in res.reason
    assert _same_state(model, state)


@pytest.mark.parametrize("case", ["label", "param", "nan_new", "nan_train", "shape", "mean",
                                  "order", "solver", "missing_train", "dtype"])
def test_bad_input_raises_and_leaves_model_unchanged(case):
    model = small_net()
    X, y = net_data(40)
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
    X, y = net_data(40)
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

    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(6)
    y_new = _shift_labels(y, rows)
    GGN = _dense_ggn(model, X, y_new)
    op = GGNOperator(model, ce_sum, X, y_new, batch_size=9)
    torch.testing.assert_close(op.to_dense(), GGN, rtol=1e-10, atol=1e-10)
    assert float(torch.linalg.eigvalsh(GGN)[0]) > -1e-10  # positive semidefinite
    lam = 0.05  # small damping is enough: CG cannot break down on a PSD matrix
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows])
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
    model = small_net()
    X, y = net_data(60)
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
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows])
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
    X, y = net_data(40)
    rows = torch.arange(4)
    y_new = _shift_labels(y, rows)
    steps = []
    # (more rows than the training set has are refused: test_input_checks_more.py)
    for subsample in (None, X.shape[0]):
        model = small_net()
        before = _flat(model)
        influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                         train_data=(X, y_new), curvature="ggn", damping=0.1, tol=1e-12,
                         curvature_subsample=subsample, check_loss=False)
        steps.append(before - _flat(model))
    torch.testing.assert_close(steps[1], steps[0], rtol=0, atol=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(curvature_subsample=0), "curvature_subsample"),
    (dict(curvature_subsample=2.5), "curvature_subsample"),
    (dict(curvature_subsample=8, solver="lissa"), "curvature_subsample.*LiSSA"),
    (dict(curvature_subsample=8, subsample_seed=-1), "subsample_seed"),
])
def test_curvature_subsample_bad_input(kwargs, match):
    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(4)
    state = _state(model)
    with pytest.raises((ValueError, TypeError), match=match):
        influence_update(model, X[rows], y[rows], new_targets=(y[rows] + 1) % 3,
                         train_data=(X, y), damping=1.0, **kwargs)
    assert _same_state(model, state)


def test_ggn_forward_cache_is_exact_and_follows_parameter_changes():
    from fastunlearn.influence import GGNOperator

    model = small_net()
    X, y = net_data(40)
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
    G = _autograd_G(model, X[rows], y[rows], X[rows], y_new[rows])
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


@pytest.mark.parametrize(("order", "tau"), [(1, 0.5), (1, "auto"), (2, "auto")])
def test_zero_gradient_difference_is_not_applied(order, tau):
    model = small_net()
    X, y = net_data(40)
    rows = torch.arange(4)
    state = _state(model)
    # the corrected points equal the old ones: G = grad l(z) - grad l(z) = 0
    res = influence_update(model, X[rows], y[rows], new_inputs=X[rows].clone(),
                           new_targets=y[rows].clone(), train_data=(X, y), order=order,
                           tau=tau, damping=1.0)
    assert res.gradient_norm == 0.0 and res.step_norm == 0.0
    assert torch.equal(res.step, torch.zeros(res.num_params, dtype=D64))
    assert not res.applied and not res.diverged
    assert res.reason == "G is zero: nothing to update"
    assert res.tau == (tau if order == 1 and tau != "auto" else None)
    # nothing beyond the gradient was evaluated
    assert res.num_gradients == 2 * len(rows)
    assert res.num_hvps == res.num_loss_evals == res.solver_iterations == 0
    assert res.loss_before is None and res.loss_after is None and res.residual is None
    # the zero step solves (H + lambda I) x = 0 exactly; first order has no solver
    assert res.converged is (True if order == 2 else None)
    assert _same_state(model, state)


def test_zero_first_order_step_is_not_applied():
    model = small_net()
    X, y = net_data(40)
    state = _state(model)
    res = influence_update(model, X[:3], y[:3], new_targets=(y[:3] + 1) % 3, order=1,
                           tau=1e-320, check_loss=False)  # tau * G underflows to 0
    assert res.step_norm == 0.0 and not res.applied and "zero" in res.reason
    assert _same_state(model, state)


@pytest.mark.parametrize("as_object", [False, True])
def test_explicitly_selected_frozen_parameter_raises(as_object):
    model = small_net()
    X, y = net_data(40)
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
    model = small_net()
    X, y = net_data(40)
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
    model = small_net()
    X, y = net_data(40)
    state = _state(model)
    with pytest.raises(TypeError, match="'order'"):
        influence_update(model, X[:4], y[:4], new_targets=(y[:4] + 1) % 3, train_data=(X, y),
                         order=order, damping=1.0)
    assert _same_state(model, state)


def test_check_update_options_rejects_bad_and_unknown_options():
    from fastunlearn.influence.update import check_update_options

    model = small_net()
    opts = check_update_options(model, order=1, tau=0.5, params=["2.weight"])
    assert opts.names == ["2.weight"] and opts.num_params == 18 and opts.tau == 0.5
    for kwargs, match in ((dict(solver="nonsense"), "solver"), (dict(order=7), "order"),
                          (dict(order=1, tau=-5), "tau"), (dict(solvr="cg"), "solvr")):
        with pytest.raises((TypeError, ValueError), match=match):
            check_update_options(model, **kwargs)
