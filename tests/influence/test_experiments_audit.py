"""Audit of the label/feature drivers and experiments against independent computations.

Every expected value here comes from a hand computation, a dense torch solve (autograd
gradients and ``torch.func.hessian``) or a hand-written Newton fit, never from an output of
the code under test.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from small_nets import D64, flat_function, net_data, small_net
from torch import nn

from fastunlearn.data import load_digits_dataset
from fastunlearn.influence import experiment as exp
from fastunlearn.influence import (
    fit_logistic,
    iterative_label_repair,
    linear_influence_update,
    repair_labels,
    required_sigma,
    unlearn_features,
)
from fastunlearn.influence.experiment import RepairConfig, flip_labels, run_repair_experiment
from fastunlearn.influence.feature_experiment import (
    FeatureConfig,
    _linear_variant,
    fit_linear_model,
    load_feature_data,
    run_feature_experiment,
)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _sum_ce_grad(model, x, y):
    """Gradient of the summed cross-entropy over all parameters, by plain autograd."""
    params = list(model.parameters())
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def _functional_loss(model, X, y):
    """``theta -> summed CE(model_theta(X), y)`` over the flat vector of all parameters."""
    f, _ = flat_function(model, [n for n, _ in model.named_parameters()],
                         lambda state: F.cross_entropy(
                             torch.func.functional_call(model, state, (X,)), y, reduction="sum"))
    return f


# ---------------------------------------------------------------------------------------
# drivers: the iterative protocol, exact update formulas, bad input


def _identity_problem(n=40, k=4, seed=0):
    """Softmax regression on one-hot inputs X = I: row i's gradient lives in column i."""
    torch.manual_seed(seed)
    model = nn.Linear(n, k).double()
    X = torch.eye(n, dtype=D64)
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 1))
    return model, X, labels


def _run_identity_repair(seed, steps=3, batch=5, tau=0.3):
    model, X, labels = _identity_problem()
    snaps = [(model.weight.detach().clone(), model.bias.detach().clone())]

    def evaluate(m):
        snaps.append((m.weight.detach().clone(), m.bias.detach().clone()))
        return len(snaps)

    out = iterative_label_repair(model, X, labels, steps=steps, batch_size=batch, seed=seed,
                                 order=1, tau=tau, check_loss=False, evaluate=evaluate)
    return out, snaps, X, labels


def test_iterative_repair_samples_mispredicted_rows_with_current_predictions():
    tau, batch = 0.3, 5
    out, snaps, X, labels = _run_identity_repair(seed=0, tau=tau, batch=batch)
    k = 4
    assert len(out.steps) == 3 and len(snaps) == 4
    chosen = []
    for step, record in enumerate(out.steps):
        (W0, b0), (W1, b1) = snaps[step], snaps[step + 1]
        pred = (X @ W0.T + b0).argmax(dim=1)  # current prediction, by hand
        wrong = set(torch.nonzero(pred != labels).reshape(-1).tolist())
        assert record["mispredicted"] == len(wrong)
        dW = W1 - W0
        rows = sorted(torch.nonzero(dW.abs().sum(0) > 0).reshape(-1).tolist())
        chosen.append(rows)
        # a batch of min(batch, |wrong|) distinct mispredicted rows
        assert set(rows) <= wrong and len(rows) == min(batch, len(wrong)) == record["batch"]
        # theta - tau (grad l(x, corrected) - grad l(x, prediction)): column i of W moves
        # by tau (e_label - e_pred), the bias by the sum of those
        eye = torch.eye(k, dtype=D64)
        expected_b = torch.zeros(k, dtype=D64)
        for i in rows:
            col = tau * (eye[labels[i]] - eye[pred[i]])
            torch.testing.assert_close(dW[:, i], col, rtol=0, atol=1e-12)
            expected_b += col
        torch.testing.assert_close(b1 - b0, expected_b, rtol=0, atol=1e-12)
    assert out.num_gradients == 2 * sum(len(r) for r in chosen)
    # the seed is honoured: the same seed gives the same batches, another seed others
    again, snaps2, _, _ = _run_identity_repair(seed=0, tau=tau, batch=batch)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(snaps, snaps2, strict=True))
    other, snaps3, _, _ = _run_identity_repair(seed=1, tau=tau, batch=batch)
    rows3 = torch.nonzero((snaps3[1][0] - snaps3[0][0]).abs().sum(0) > 0).reshape(-1).tolist()
    assert sorted(rows3) != chosen[0]


@pytest.mark.parametrize(("case", "error", "match"), [
    ("float32", TypeError, "'inputs'"),
    ("width", ValueError, "'inputs'"),
    ("label_range", ValueError, "'labels'"),
    ("label_bool", TypeError, "'labels'"),
    ("seed_negative", ValueError, "'seed'"),
    ("seed_float", TypeError, "'seed'"),  # a float is not an int: TypeError (was ValueError)
    ("chunk", ValueError, "'chunk_size'"),
    ("evaluate", TypeError, "'evaluate'"),
])
def test_iterative_repair_names_bad_input_before_any_step(case, error, match):
    model = small_net()
    X, y = net_data(30)
    kwargs = dict(steps=2, batch_size=4, order=1, tau=0.1, check_loss=False)
    if case == "float32":
        X = X.float()
    elif case == "width":
        X = X[:, :3]
    elif case == "label_range":
        y = y.clone()
        y[7] = 3  # the model has 3 classes
    elif case == "label_bool":
        y = y > 0
    elif case == "seed_negative":
        kwargs["seed"] = -1
    elif case == "seed_float":
        kwargs["seed"] = 1.5
    elif case == "chunk":
        kwargs["chunk_size"] = 0
    else:
        kwargs["evaluate"] = 5  # not callable: before the fix, raised after step 1 ran
    state = _state(model)
    with pytest.raises(error, match=match):
        iterative_label_repair(model, X, y, **kwargs)
    assert _same(model, state)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_repair_labels_is_the_damped_newton_step_on_the_corrected_data(solver):
    model = small_net(seed=2)
    X, y = net_data(30, seed=4)
    indices = [1, 4, 7, 20]
    new = [(int(y[i]) + 1) % 3 for i in indices]
    corrected = y.clone()
    corrected[indices] = torch.tensor(new)
    lam = 10.0
    theta = _flat(model)
    G = _sum_ce_grad(model, X[indices], corrected[indices]) \
        - _sum_ce_grad(model, X[indices], y[indices])
    H = torch.func.hessian(_functional_loss(model, X, corrected))(theta)
    expected = theta - torch.linalg.solve(H + lam * torch.eye(theta.numel(), dtype=D64), G)
    labels_before = y.clone()
    res = repair_labels(model, X, y, indices, new, order=2, solver=solver, damping=lam,
                        curvature="hessian", tol=1e-12, check_loss=False)
    assert res.applied and res.num_affected == 4 and res.num_gradients == 8
    torch.testing.assert_close(_flat(model), expected, rtol=1e-8, atol=1e-10)
    assert torch.equal(y, labels_before)  # the labels passed in are not modified


def test_unlearn_features_replacement_first_and_second_order_by_hand():
    torch.manual_seed(3)
    X, y = net_data(25, d=6, k=3, seed=5)
    base = nn.Linear(6, 3).double()
    rows, cols = [2, 9, 17], [1, 4]
    values = torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.25, 3.0]], dtype=D64)
    Xc = X.clone()
    for r, row in enumerate(rows):
        Xc[row, cols] = values[r]
    theta = _flat(base)
    G = _sum_ce_grad(base, Xc[rows], y[rows]) - _sum_ce_grad(base, X[rows], y[rows])
    # first order with a fixed step: theta - tau G
    model = copy.deepcopy(base)
    res = unlearn_features(model, X, y, cols, rows=rows, values=values, order=1, tau=0.05,
                           check_loss=False)
    assert res.applied and res.num_affected == 3
    torch.testing.assert_close(_flat(model), theta - 0.05 * G, rtol=1e-12, atol=1e-14)
    # second order: theta - (H(D~) + lam I)^-1 G, H of the summed loss on the corrected set
    lam = 0.7
    H = torch.func.hessian(_functional_loss(base, Xc, y))(theta)
    expected = theta - torch.linalg.solve(H + lam * torch.eye(theta.numel(), dtype=D64), G)
    model = copy.deepcopy(base)
    res = unlearn_features(model, X, y, cols, rows=rows, values=values, solver="cg",
                           damping=lam, curvature="hessian", tol=1e-13, check_loss=False)
    assert res.applied
    torch.testing.assert_close(_flat(model), expected, rtol=1e-9, atol=1e-11)


def test_unlearn_features_rejects_out_of_range_labels_without_affected_rows():
    X, y = net_data(20)
    X[:, 2] = 0.0  # no row has a non-zero value in column 2: nothing to update
    model = small_net()
    state = _state(model)
    bad = y.clone()
    bad[5] = 3  # the model has 3 classes
    with pytest.raises(ValueError, match="'labels'.*outside"):
        unlearn_features(model, X, bad, [2])
    bad[5] = -1
    with pytest.raises(ValueError, match="'labels'.*outside"):
        unlearn_features(model, X, bad, [2])
    assert _same(model, state)
    res = unlearn_features(model, X, y, [2])  # valid labels: nothing to do, not an error
    assert not res.applied and res.num_affected == 0


# ---------------------------------------------------------------------------------------
# experiment: the poisoning, one split for % restored, the protocols, seeds


def test_flip_labels_flips_budget_div_10_rows_of_each_class_to_9_minus_s():
    gen = torch.Generator().manual_seed(0)
    # uneven classes (class s has 15 + 2 s rows), shuffled, int32
    true = torch.cat([torch.full((15 + 2 * s,), s) for s in range(10)])
    true = true[torch.randperm(true.numel(), generator=gen)].to(torch.int32)
    original = true.clone()
    poisoned, flipped = flip_labels(true, 109, seed=7)  # 109 // 10 = 10 per class
    assert torch.equal(true, original) and poisoned.dtype == torch.int32
    f = flipped.tolist()
    assert f == sorted(set(f)) and len(f) == 100
    changed = torch.nonzero(poisoned != true).reshape(-1).tolist()
    assert changed == f  # only the flipped rows differ (no class maps to itself)
    for i in f:
        assert int(poisoned[i]) == 9 - int(true[i])
    assert [sum(1 for i in f if int(true[i]) == s) for s in range(10)] == [10] * 10
    # the largest budget the smallest class allows, and one more per class
    assert flip_labels(true, 159, seed=0)[1].numel() == 150
    with pytest.raises(ValueError, match="budget.*class 0"):
        flip_labels(true, 160, seed=0)
    # seeds: the same seed the same rows, other seeds other rows
    assert torch.equal(flip_labels(true, 109, seed=7)[1], flipped)
    assert not torch.equal(flip_labels(true, 109, seed=8)[1], flipped)


@pytest.mark.parametrize(("budget", "seed", "error", "match"), [
    (-10, 0, ValueError, "'budget'"),  # before the fix: flipped all but one row per class
    (0, 0, ValueError, "'budget'"),
    (9, 0, ValueError, "'budget'"),  # before the fix: silently flipped nothing
    (100.0, 0, TypeError, "'budget'"),
    (True, 0, TypeError, "'budget'"),
    (100, -1, ValueError, "'seed'"),
    (100, 1.5, TypeError, "'seed'"),
    (100, 2**64, ValueError, "'seed'"),  # before: torch's unnamed "Overflow when unpacking"
])
def test_flip_labels_rejects_bad_budget_and_seed(budget, seed, error, match):
    labels = torch.arange(10).repeat_interleave(30)
    before = labels.clone()
    with pytest.raises(error, match=match):
        flip_labels(labels, budget, seed)
    assert torch.equal(labels, before)
    with pytest.raises(TypeError, match="'labels'"):
        flip_labels(labels.double(), 100, 0)


def test_repair_experiment_uses_one_split_and_the_reference_updates(monkeypatch):
    config = RepairConfig(n_train=300, budget=60, epochs=4, order=1, tau="auto", steps=2,
                          batch=1024, seed=5)
    data = exp.load_repair_data(config)
    calls = []

    def recording_accuracy(model, X, y):
        # independent accuracy; the split is identified by the storage of its tensors
        with torch.no_grad():
            value = float((model.eval()(X).argmax(dim=1) == y).double().mean())
        test_split = X.data_ptr() == data.X_test.data_ptr() and X.shape == data.X_test.shape \
            and y.data_ptr() == data.y_test.data_ptr()
        calls.append((copy.deepcopy(model), value, test_split))
        return value

    monkeypatch.setattr(exp, "accuracy", recording_accuracy)
    r = run_repair_experiment(config, data)
    # clean, poisoned, 2 iterative steps + after, one-shot step + after
    assert len(calls) == 2 + 3 + 2
    assert all(on_test for _, _, on_test in calls)  # every accuracy on the test split
    clean, before = calls[0][1], calls[1][1]
    assert r["training"]["acc_clean"] == clean and r["training"]["acc_poisoned"] == before
    assert abs(clean - before) > 0.02
    for name, after_call in (("iterative", calls[4]), ("one-shot", calls[6])):
        p = r["protocols"][name]
        assert p["acc_after"] == after_call[1]
        assert p["restored"] == pytest.approx((after_call[1] - before) / (clean - before),
                                              rel=1e-12)
    poisoned = calls[1][0]
    X, y_true = data.X_train, data.y_train
    y_poison, flipped = flip_labels(y_true, 60, 5)
    assert r["data"]["flipped"] == 60 == flipped.numel()

    def check_step(after_model, record, rows, old_labels, new_labels):
        assert record["applied"]
        G = _sum_ce_grad(poisoned, X[rows], new_labels) \
            - _sum_ce_grad(poisoned, X[rows], old_labels)
        diff = _flat(after_model) - _flat(poisoned)
        expected = -record["tau"] * G
        torch.testing.assert_close(diff, expected, rtol=1e-3,
                                   atol=1e-4 * float(expected.abs().max()))

    # one-shot: z = (x, flipped label), z~ = (x, true label) on the flipped rows
    one = r["protocols"]["one-shot"]["steps"][0]
    assert one["batch"] == 60 and one["num_affected"] == 60
    check_step(calls[5][0], one, flipped, y_poison[flipped], y_true[flipped])
    # iterative step 1: every row the poisoned model mispredicts (batch > N), with
    # z = (x, current prediction), z~ = (x, true label)
    with torch.no_grad():
        pred = poisoned(X).argmax(dim=1)
    wrong = torch.nonzero(pred != y_true).reshape(-1)
    first = r["protocols"]["iterative"]["steps"][0]
    assert first["mispredicted"] == first["batch"] == wrong.numel() > 0
    check_step(calls[2][0], first, wrong, pred[wrong], y_true[wrong])


@pytest.mark.slow
def test_repair_experiment_honours_its_seed():
    def run(seed):
        config = RepairConfig(n_train=200, budget=40, epochs=2, order=1, tau=1e-3, steps=2,
                              batch=8, seed=seed, protocols=("iterative",))
        r = run_repair_experiment(config)
        p = r["protocols"]["iterative"]
        return (r["training"]["acc_poisoned"], r["training"]["residual_poisoned"],
                p["residual"], [s["mispredicted"] for s in p["steps"]],
                [s["gradient_norm"] for s in p["steps"]])

    first = run(3)
    assert run(3) == first
    assert run(4) != first


# ---------------------------------------------------------------------------------------
# feature experiment: remove mode, stepwise updates, the certified linear variant


def _objective(X, y, W_shape, l2):
    """``J(theta) = sum CE + l2/2 ||theta||^2`` over ``theta = [W.flatten(), b]``."""
    nw = W_shape[0] * W_shape[1]

    def J(theta):
        W, b = theta[:nw].reshape(W_shape), theta[nw:]
        return F.cross_entropy(X @ W.T + b, y, reduction="sum") + 0.5 * l2 * theta @ theta

    return J


def _ce_grad(theta, X, y, W_shape):
    return torch.func.grad(_objective(X, y, W_shape, 0.0))(theta)


def test_remove_mode_zeroes_the_columns_whatever_value():
    l2 = 4.0
    cfg = FeatureConfig(dataset="wine", columns=(3,), mode="remove", value=0.5, l2=l2,
                        linear=False)
    with pytest.warns(UserWarning, match=r"^'value' has no effect with mode='remove'"):
        r = run_feature_experiment(cfg)
    data = load_feature_data("wine", seed=0)
    X, y = data.X_train, data.y_train
    Xz = X.clone()
    Xz[:, 3] = 0.0
    model, _ = fit_linear_model(X, y, 3, l2)
    theta = _flat(model)
    J = _objective(Xz, y, model.weight.shape, l2)
    g = torch.func.grad(J)(theta)
    assert r["data"]["num_affected"] == int((X[:, 3] != 0).sum())
    # residual of the original model on the corrected (zeroed) data
    assert r["original"]["residual"] == pytest.approx(float(g.norm()), rel=1e-8)
    # second order: one Newton step on J(.; zeroed data)
    new = theta - torch.linalg.solve(torch.func.hessian(J)(theta), g)
    assert r["methods"]["second_order"]["residual"] == pytest.approx(
        float(torch.func.grad(J)(new).norm()), rel=1e-4, abs=1e-9)


def test_stepwise_updates_are_a_sequence_of_dense_steps():
    l2, columns = 5.0, (1, 4, 7)
    cfg = FeatureConfig(dataset="wine", columns=columns, steps=3, l2=l2, linear=False)
    r = run_feature_experiment(cfg)
    data = load_feature_data("wine", seed=0)
    X, y = data.X_train, data.y_train
    model, _ = fit_linear_model(X, y, 3, l2)
    shape = model.weight.shape
    theta0 = _flat(model)
    assert float(torch.func.grad(_objective(X, y, shape, l2))(theta0).norm()) < 1e-6
    final = X.clone()
    final[:, list(columns)] = 0.0
    retrained, _ = fit_linear_model(final, y, 3, l2)
    theta_re = _flat(retrained)
    expected = {}
    for name in ("first_order", "second_order"):
        theta, X_cur, affected = theta0.clone(), X, 0
        for c in columns:  # one column per chunk
            X_next = X_cur.clone()
            X_next[:, c] = 0.0
            affected += int((X_cur[:, c] != 0).sum())
            G = _ce_grad(theta, X_next, y, shape) - _ce_grad(theta, X_cur, y, shape)
            J = _objective(X_next, y, shape, l2)
            H = torch.func.hessian(J)(theta)  # includes l2 I
            if name == "second_order":
                theta = theta - torch.linalg.solve(H, G)
            else:  # curvature step of J(.; D_next) along its gradient
                g = torch.func.grad(J)(theta)
                theta = theta - float(g @ g / (g @ H @ g)) * G
            X_cur = X_next
        expected[name] = theta
        m = r["methods"][name]
        resid = float(torch.func.grad(_objective(final, y, shape, l2))(theta).norm())
        assert m["residual"] == pytest.approx(resid, rel=1e-4, abs=1e-9)
        assert m["distance_retrained"] == pytest.approx(float((theta - theta_re).norm()),
                                                        rel=1e-4, abs=1e-9)
        assert m["update"]["steps"] == 3 and m["update"]["applied"]
        assert m["update"]["num_gradients"] == 2 * affected
    assert r["methods"]["second_order"]["residual"] < r["methods"]["first_order"]["residual"]


def _newton_logistic(X, y_pm, lam, iters=50):
    """Hand-written Newton fit of sum log(1+exp(-y w.x)) + lam n/2 ||w||^2."""
    n, d = X.shape
    w = torch.zeros(d, dtype=D64)
    for _ in range(iters):
        z = X @ w
        g = -X.T @ (y_pm * torch.sigmoid(-y_pm * z)) + lam * n * w
        s = torch.sigmoid(z) * torch.sigmoid(-z)
        H = X.T @ (s.unsqueeze(1) * X) + lam * n * torch.eye(d, dtype=D64)
        w = w - torch.linalg.solve(H, g)
    return w


def _logistic_grad(X, y_pm, w, lam):
    return -X.T @ (y_pm * torch.sigmoid(-y_pm * (X @ w))) + lam * X.shape[0] * w


def test_certified_linear_variant_by_hand():
    cfg = FeatureConfig(dataset="digits", columns=(20, 21, 28), linear_lam=1e-2,
                        epsilon=0.5, delta=1e-3)
    out = _linear_variant(cfg, [20, 21, 28])
    split = load_digits_dataset(binary=(3, 8), normalize=True, dtype=D64, seed=0)
    X, y = split.X_train, split.y_train
    y_pm = y.to(D64) * 2 - 1
    lam = 1e-2
    w = _newton_logistic(X, y_pm, lam)
    Xc = X.clone()
    rows = torch.nonzero((X[:, [20, 21, 28]] != 0).any(dim=1)).reshape(-1)
    Xc[:, [20, 21, 28]] = 0.0
    w_re = _newton_logistic(Xc, y_pm, lam)
    assert out["num_affected"] == rows.numel() > 0 and out["n_train"] == X.shape[0]

    def acc(weights):  # label 1 (digit 3) is the positive class
        return float(((split.X_test @ weights > 0).long() == split.y_test).double().mean())

    assert out["acc_original"] == pytest.approx(acc(w))
    assert out["acc_retrained"] == pytest.approx(acc(w_re))
    assert out["distance_original"] == pytest.approx(float((w - w_re).norm()), rel=1e-6)
    # second order: one Newton step on the corrected objective
    G = _logistic_grad(Xc, y_pm, w, lam) - _logistic_grad(X, y_pm, w, lam)
    s = torch.sigmoid(Xc @ w) * torch.sigmoid(-Xc @ w)
    H = Xc.T @ (s.unsqueeze(1) * Xc) + lam * X.shape[0] * torch.eye(X.shape[1], dtype=D64)
    w2 = w - torch.linalg.solve(H, G)
    resid2 = float(_logistic_grad(Xc, y_pm, w2, lam).norm())
    m2 = out["methods"]["order2"]
    assert m2["residual"] == pytest.approx(resid2, rel=1e-6, abs=1e-12)
    assert m2["residual_before"] == pytest.approx(float(G.norm()), rel=1e-6)
    c = math.sqrt(2 * math.log(1.5 / 1e-3))
    assert m2["sigma_required"] == pytest.approx(resid2 * c / 0.5, rel=1e-6, abs=1e-12)
    assert m2["distance_retrained"] == pytest.approx(float((w2 - w_re).norm()), rel=1e-5)
    # first order: the curvature step ||G||^2 / G^T H G of the corrected objective
    tau = float(G @ G / (G @ H @ G))
    m1 = out["methods"]["order1"]
    assert m1["tau"] == pytest.approx(tau, rel=1e-6)
    w1 = w - tau * G
    assert m1["residual"] == pytest.approx(float(_logistic_grad(Xc, y_pm, w1, lam).norm()),
                                           rel=1e-6)


# ---------------------------------------------------------------------------------------
# linear variant: first order, labels 0/1, sigma, seeds, bad numbers


@pytest.fixture(scope="module")
def binary():
    split = load_digits_dataset(binary=(1, 7), dtype=D64, seed=1)
    X, y01 = split.X_train, split.y_train
    return X, y01, y01.to(D64) * 2 - 1


def test_first_order_is_w_minus_tau_g_and_labels_01_equal_pm1(binary):
    X, y01, y_pm = binary
    lam = 1e-2
    w = _newton_logistic(X, y_pm, lam)
    rows = torch.tensor([0, 3, 8, 11])
    new_pm = -y_pm[rows]
    Xn = X.clone()
    ypn = y_pm.clone()
    ypn[rows] = new_pm
    G = _logistic_grad(X, ypn, w, lam) - _logistic_grad(X, y_pm, w, lam)
    res = linear_influence_update(X, y_pm, w, rows, new_y=new_pm, lam=lam, order=1, tau=0.02)
    torch.testing.assert_close(res.weights, w - 0.02 * G, rtol=1e-12, atol=1e-14)
    assert res.residual == pytest.approx(float(_logistic_grad(Xn, ypn, w - 0.02 * G,
                                                              lam).norm()), rel=1e-10)
    # the same change with 0/1 labels gives the same update
    res01 = linear_influence_update(X, y01, w, rows, new_y=1 - y01[rows], lam=lam, order=1,
                                    tau=0.02)
    torch.testing.assert_close(res01.weights, res.weights, rtol=0, atol=0)


def test_required_sigma_and_certificate_for_other_epsilon_delta(binary):
    X, y01, y_pm = binary
    c = math.sqrt(2 * math.log(1.5 / 1e-4))
    assert c == pytest.approx(4.3854, abs=1e-4)
    assert required_sigma(2.0, epsilon=0.5, delta=1e-4) == pytest.approx(2.0 * c / 0.5)
    lam = 1e-2
    w = _newton_logistic(X, y_pm, lam)
    rows = torch.arange(5)
    res = linear_influence_update(X, y_pm, w, rows, new_y=-y_pm[rows], lam=lam, epsilon=0.5,
                                  delta=1e-4, sigma=1.0)
    assert res.sigma_required == pytest.approx(res.residual * c / 0.5, rel=1e-12)
    assert res.certified == (res.residual <= 1.0 * 0.5 / c)
    # exactly at the required sigma the update is certified, just below it is not
    at = linear_influence_update(X, y_pm, w, rows, new_y=-y_pm[rows], lam=lam, epsilon=0.5,
                                 delta=1e-4, sigma=res.sigma_required * (1 + 1e-9))
    below = linear_influence_update(X, y_pm, w, rows, new_y=-y_pm[rows], lam=lam,
                                    epsilon=0.5, delta=1e-4, sigma=res.sigma_required * 0.99)
    assert at.certified and not below.certified
    assert at.epsilon_spent == pytest.approx(0.5, rel=1e-6)


def test_fit_logistic_honours_seed_and_minimises_the_perturbed_objective(binary):
    X, y01, y_pm = binary
    lam = 1e-2
    w3, b3 = fit_logistic(X, y01, lam, sigma=0.3, seed=3)
    w3b, b3b = fit_logistic(X, y01, lam, sigma=0.3, seed=3)
    w4, b4 = fit_logistic(X, y01, lam, sigma=0.3, seed=4)
    assert torch.equal(b3, b3b) and torch.equal(w3, w3b) and not torch.equal(b3, b4)
    assert float(b3.norm()) > 0
    assert float((_logistic_grad(X, y_pm, w3, lam) + b3).norm()) < 1e-8
    w0, b0 = fit_logistic(X, y01, lam)
    assert float(b0.abs().max()) == 0.0
    torch.testing.assert_close(w0, _newton_logistic(X, y_pm, lam), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(sigma=float("nan")), ValueError, "'sigma'"),
    (dict(sigma=float("inf")), ValueError, "'sigma'"),
    (dict(sigma=-1.0), ValueError, "'sigma'"),
    (dict(sigma=True), TypeError, "'sigma'"),
    (dict(sigma=0.1, seed=-1), ValueError, "'seed'"),
    (dict(sigma=0.1, seed=1.5), TypeError, "'seed'"),
])
def test_fit_logistic_names_bad_sigma_and_seed(binary, kwargs, error, match):
    X, y01, _ = binary
    with pytest.raises(error, match=match):
        fit_logistic(X, y01, 1e-2, **kwargs)


@pytest.mark.parametrize(("residual", "epsilon", "error", "match"), [
    (True, 0.1, TypeError, "'residual' must be a real number"),
    (1.0, True, TypeError, "'epsilon' must be a real number"),
    (float("nan"), 0.1, ValueError, "'residual' must be finite and >= 0"),
    (1.0, 0.0, ValueError, "'epsilon' must be finite and > 0"),
])
def test_required_sigma_names_bad_numbers(residual, epsilon, error, match):
    with pytest.raises(error, match=match):
        required_sigma(residual, epsilon)


def test_repair_direct_solver_over_its_size_limit_fails_before_training(monkeypatch):
    """small_cnn has 6,090 parameters, over the dense solver's 5,000: refused before the
    clean and poisoned models are trained (it used to fail after both)."""
    from fastunlearn.influence.settings import MAX_DIRECT_PARAMS

    def refuse(*args, **kwargs):
        raise AssertionError("trained although the solver cannot take the model")

    monkeypatch.setattr(exp, "train_classifier", refuse)
    config = RepairConfig(n_train=100, order=2, solver="direct")
    data = exp.load_repair_data(config)
    assert sum(p.numel() for p in small_cnn_for(data).parameters()) > MAX_DIRECT_PARAMS
    with pytest.raises(ValueError, match="'solver' direct.*'last_layers'"):
        run_repair_experiment(config, data)
    # the last two tensors (the head) fit: the run gets as far as training
    with pytest.raises(AssertionError, match="trained although"):
        run_repair_experiment(RepairConfig(n_train=100, order=2, solver="direct",
                                           last_layers=2), data)


def small_cnn_for(data):
    from fastunlearn.models import small_cnn

    return small_cnn(data.X_train.shape[1], data.num_classes, data.X_train.shape[-1])


def test_repair_report_shows_an_undefined_restored_share_as_a_dash():
    """With a learning rate of 1e-12 training changes nothing: clean and poisoned accuracy are
    equal and % restored is 0/0, which the report shows as '-' (it showed 'nan %')."""
    config = RepairConfig(n_train=100, epochs=1, lr=1e-12, order=1, tau=1e-6,
                          protocols=("one-shot",))
    result = run_repair_experiment(config)
    assert result["training"]["acc_clean"] == result["training"]["acc_poisoned"]
    assert math.isnan(result["protocols"]["one-shot"]["restored"])
    row = next(line for line in exp.render_report(result).splitlines()
               if line.startswith("| one-shot |"))
    assert row.split("|")[2].strip() == "-"
