"""Label and feature drivers: repair on a poisoned digits model, feature replacement, bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastunlearn.data import load_digits_dataset
from fastunlearn.influence import (
    iterative_label_repair,
    predict,
    repair_labels,
    replace_features,
    unlearn_features,
)
from fastunlearn.influence.experiment import flip_labels
from fastunlearn.models import mlp


def _train(model, X, y, steps=400, lr=0.02, wd=1e-4):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y) + wd * sum(p.square().sum() for p in model.parameters())
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def poisoned():
    """A digits MLP trained on labels with class s flipped to 9 - s for 300 of 1437 rows."""
    split = load_digits_dataset(dtype=torch.float64, seed=0)
    X, y = split.X_train, split.y_train
    y_bad, flipped = flip_labels(y, 300, seed=0)
    assert flipped.numel() == 300 and bool((y_bad[flipped] == 9 - y[flipped]).all())
    torch.manual_seed(0)
    model = _train(mlp(64, 10, hidden=(32,)).double(), X, y_bad)
    return split, y_bad, flipped, model


def _acc(model, X, y):
    return float((predict(model, X) == y).double().mean())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_one_shot_repair_improves_test_accuracy(poisoned):
    import copy

    split, y_bad, flipped, trained = poisoned
    model = copy.deepcopy(trained)
    before = _acc(model, split.X_test, split.y_test)
    train_before = _acc(model, split.X_train, split.y_train)
    res = repair_labels(model, split.X_train, y_bad, flipped, split.y_train[flipped],
                        order=2, solver="cg", damping=100.0, tol=1e-6, maxiter=300)
    assert res.applied and not res.diverged and res.converged and res.residual <= 1e-6
    assert res.num_affected == flipped.numel() and res.num_gradients == 2 * flipped.numel()
    after = _acc(model, split.X_test, split.y_test)
    assert after > before + 0.05
    assert _acc(model, split.X_train, split.y_train) > train_before + 0.05
    assert res.loss_after < res.loss_before


def test_iterative_repair_reduces_mispredictions(poisoned):
    import copy

    split, y_bad, flipped, trained = poisoned
    model = copy.deepcopy(trained)
    before = _acc(model, split.X_test, split.y_test)
    out = iterative_label_repair(model, split.X_train, split.y_train, steps=3, batch_size=64,
                                 seed=0, solver="cg", damping=100.0, maxiter=200,
                                 evaluate=lambda m: _acc(m, split.X_test, split.y_test))
    assert len(out.steps) == 3
    assert out.steps[-1]["eval"] > before
    assert out.steps[0]["mispredicted"] > out.steps[-1]["mispredicted"]
    assert out.num_gradients == 2 * sum(s["batch"] for s in out.steps)
    assert out.update_time_s > 0


@pytest.mark.parametrize("case", ["index", "label", "nan", "param", "dup", "count"])
def test_repair_labels_bad_input(poisoned, case):
    split, y_bad, flipped, model = poisoned
    idx, new = flipped[:5], split.y_train[flipped[:5]]
    X = split.X_train
    kwargs = {}
    if case == "index":
        idx = torch.tensor([0, 1, X.shape[0]])
        new = torch.tensor([1, 2, 3])
        match = "indices.*outside"
    elif case == "label":
        new = torch.tensor([1, 2, 10, 3, 4])
        match = "classes"
    elif case == "nan":
        X = X.clone()
        X[3, 5] = float("nan")
        match = "non-finite"
    elif case == "param":
        kwargs["params"] = ["head.weight", "missing.bias"]
        match = "unknown parameter"
    elif case == "dup":
        idx = torch.tensor([4, 4])
        new = torch.tensor([1, 1])
        match = "duplicate"
    else:
        new = new[:3]
        match = "new_labels"
    state = _state(model)
    with pytest.raises((ValueError, TypeError), match=match):
        repair_labels(model, X, y_bad, idx, new, **kwargs)
    assert _same(model, state)


def test_replace_features_zero_and_values():
    X = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0], [4.0, 5.0, 0.0]], dtype=torch.float64)
    new, rows = replace_features(X, [0, 1])
    assert rows.tolist() == [0, 2]
    assert new.tolist() == [[0.0, 0.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]
    assert X[0, 0] == 1.0  # input untouched
    new, rows = replace_features(X, [2], rows=[1], values=torch.tensor([[7.0]]))
    assert rows.tolist() == [1] and new[1, 2] == 7.0 and new[0, 2] == 2.0
    with pytest.raises(ValueError, match="columns.*outside"):
        replace_features(X, [3])
    with pytest.raises(ValueError, match="values.*non-finite"):
        replace_features(X, [0], rows=[0], values=torch.tensor([[float("inf")]]))
    with pytest.raises(ValueError, match="values.*shape"):
        replace_features(X, [0], rows=[0, 1], values=torch.tensor([[1.0]]))


def test_unlearn_features_moves_towards_retraining():
    # convex model (softmax regression + L2 as damping): one Newton step ~ retraining
    split = load_digits_dataset(dtype=torch.float64, seed=0)
    X, y = split.X_train[:400], split.y_train[:400]
    lam = 1.0

    def fit(inputs):
        torch.manual_seed(0)
        m = mlp(64, 10, hidden=()).double()
        opt = torch.optim.LBFGS(m.parameters(), lr=1, max_iter=1000, tolerance_grad=1e-11,
                                tolerance_change=0, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(m(inputs), y, reduction="sum") + 0.5 * lam * sum(
                p.square().sum() for p in m.parameters())
            loss.backward()
            return loss

        opt.step(closure)
        return m

    columns = [18, 19, 20, 21, 26, 27, 28]
    model = fit(X)
    corrected, rows = replace_features(X, columns)
    assert rows.numel() > 100
    target = torch.cat([p.detach().reshape(-1) for p in fit(corrected).parameters()])

    def gap():
        return float((torch.cat([p.detach().reshape(-1) for p in model.parameters()])
                      - target).norm())

    g0 = gap()
    res = unlearn_features(model, X, y, columns, solver="cg", damping=lam, tol=1e-10)
    assert res.applied and res.num_affected == rows.numel()
    assert gap() < 0.1 * g0


def test_unlearn_features_bad_input_and_no_rows():
    split = load_digits_dataset(dtype=torch.float64, seed=0)
    X, y = split.X_train[:50], split.y_train[:50]
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=()).double()
    state = _state(model)
    with pytest.raises(ValueError, match="columns"):
        unlearn_features(model, X, y, [64])
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        unlearn_features(model, bad, y, [1])
    assert _same(model, state)
    zero_col = int(torch.nonzero((X == 0).all(dim=0))[0])
    res = unlearn_features(model, X, y, [zero_col])
    assert not res.applied and res.num_affected == 0 and "no row" in res.reason
    assert _same(model, state)


@pytest.mark.parametrize("bad", [258, 256 + 9, -253])
def test_repair_labels_range_checks_before_casting_to_uint8_labels(poisoned, bad):
    split, y_bad, flipped, model = poisoned
    labels = y_bad.to(torch.uint8)
    assert int(torch.tensor([bad]).to(torch.uint8)) in range(10)  # the cast would wrap
    state, before = _state(model), labels.clone()
    with pytest.raises(ValueError, match="new_labels.*outside the model's 10 classes"):
        repair_labels(model, split.X_train, labels, [0], [bad], order=1, tau=1e-3)
    assert _same(model, state) and torch.equal(labels, before)
    # a valid label with uint8 labels goes through
    import copy

    res = repair_labels(copy.deepcopy(model), split.X_train, labels, [0],
                        [(int(labels[0]) + 1) % 10], order=1, tau=1e-4)
    assert res.num_affected == 1


@pytest.mark.parametrize(("indices", "new_labels", "match"), [
    ([[0, 1], [2, 3]], [1, 2, 3, 4], "'indices' must be 1-D"),
    (torch.tensor([[0, 1]]), [1, 2], "'indices' must be 1-D"),
    ([0, 1], [[1], [2]], "'new_labels' must be 1-D"),
    ([0, 1], torch.tensor([[1, 2]]), "'new_labels' must be 1-D"),
    ([], [], "'indices' is empty"),
    (torch.tensor([], dtype=torch.long), [], "'indices' is empty"),
    (np.array([], dtype=np.int64), [], "'indices' is empty"),
    ([0], [], "'new_labels' is empty"),
])
def test_repair_labels_rejects_multi_dimensional_and_empty_lists(poisoned, indices,
                                                                  new_labels, match):
    split, y_bad, flipped, model = poisoned
    state = _state(model)
    with pytest.raises(ValueError, match=match):
        repair_labels(model, split.X_train, y_bad, indices, new_labels, order=1, tau=1e-3)
    assert _same(model, state)


def test_replace_features_rejects_2d_and_empty_columns():
    X = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="'columns' must be 1-D"):
        replace_features(X, [[0, 1]])
    with pytest.raises(ValueError, match="'columns' is empty"):
        replace_features(X, [])
    with pytest.raises(ValueError, match="'rows' is empty"):
        replace_features(X, [0], rows=[])


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(solver="nonsense"), ValueError, "solver"),
    (dict(order=1, tau=-5), ValueError, "tau"),
    (dict(order=7), ValueError, "order"),
    (dict(params=["nope"]), ValueError, "unknown parameter"),
    (dict(solvr="cg"), TypeError, "solvr"),
])
def test_unlearn_features_validates_options_even_without_affected_rows(kwargs, error, match):
    split = load_digits_dataset(dtype=torch.float64, seed=0)
    X, y = split.X_train[:50], split.y_train[:50]
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=()).double()
    zero_col = int(torch.nonzero((X == 0).all(dim=0))[0])
    state = _state(model)
    with pytest.raises(error, match=match):
        unlearn_features(model, X, y, [zero_col], **kwargs)
    assert _same(model, state)


def test_unlearn_features_without_affected_rows_reports_the_selected_params():
    split = load_digits_dataset(dtype=torch.float64, seed=0)
    X, y = split.X_train[:50], split.y_train[:50]
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=(8,)).double()
    zero_col = int(torch.nonzero((X == 0).all(dim=0))[0])
    names = [n for n, _ in model.named_parameters()]
    res = unlearn_features(model, X, y, [zero_col], order=1, tau=0.5, params=names[-2:])
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    assert res.param_names == names[-2:] and res.num_params == sizes[names[-2]] + 10
    assert res.step.shape == (res.num_params,) and res.order == 1 and res.tau == 0.5
    assert not res.applied and res.solver is None
    res = unlearn_features(model, X, y, [zero_col])
    assert res.param_names == names and res.num_params == sum(sizes.values())
    assert res.solver == "cg" and res.order == 2


def test_iterative_repair_validates_options_when_nothing_is_mispredicted(poisoned):
    split, y_bad, flipped, model = poisoned
    labels = predict(model, split.X_train)  # nothing mispredicted: no update runs
    with pytest.raises(ValueError, match="solver"):
        iterative_label_repair(model, split.X_train, labels, steps=1, solver="nonsense")
    out = iterative_label_repair(model, split.X_train, labels, steps=1)
    assert out.steps[0]["mispredicted"] == 0 and not out.results
    # the report's step table says why the last row has no numbers
    assert out.steps[0]["reason"] == "no mispredicted training point left: stopped"
