"""Feature-unlearning experiment and `fastunlearn unlearn-features` CLI on small data."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fastunlearn.influence import feature_cli
from fastunlearn.influence.feature_experiment import (
    FeatureConfig,
    curvature_step,
    fit_linear_model,
    load_feature_data,
    objective_gradient,
    run_feature_experiment,
    select_columns,
)


def _dense_newton_residual(model, X, y, l2):
    """||grad J|| after one exact Newton step on J(.; (X, y)), by a dense Hessian."""
    W0, b0 = model.weight.detach(), model.bias.detach()
    shapes = (W0.numel(), b0.numel())

    def J(theta):
        W = theta[: shapes[0]].reshape(W0.shape)
        b = theta[shapes[0]:]
        logits = X @ W.T + b
        return torch.nn.functional.cross_entropy(logits, y, reduction="sum") \
            + 0.5 * l2 * (theta @ theta)

    theta = torch.cat([W0.reshape(-1), b0])
    g = torch.func.grad(J)(theta)
    H = torch.func.hessian(J)(theta)
    new = theta - torch.linalg.solve(H, g)
    return float(torch.linalg.vector_norm(torch.func.grad(J)(new))), float(
        torch.linalg.vector_norm(g))


def test_tabular_second_order_is_a_newton_step_close_to_retraining():
    cfg = FeatureConfig(dataset="breast_cancer", columns=(10,), l2=10.0)
    r = run_feature_experiment(cfg)
    data = load_feature_data("breast_cancer", seed=0)
    assert r["data"]["n_train"] == data.X_train.shape[0]
    # standardised column: every row but those exactly at the mean is affected
    assert r["data"]["num_affected"] == int((data.X_train[:, 10] != 0).sum())
    before = r["original"]["residual"]
    second = r["methods"]["second_order"]
    # retraining reaches a stationary point of the corrected objective
    assert r["retrained"]["residual"] < 1e-4 < before
    # second order: residual down by > 5x, parameters > 10x closer to retraining
    assert second["update"]["applied"] and second["residual"] < 0.2 * before
    assert second["distance_retrained"] < 0.1 * r["original"]["distance_retrained"]
    assert abs(second["acc"] - r["retrained"]["acc"]) <= 0.02
    # independent: the same Newton step with a dense Hessian gives the same residual
    model, _ = fit_linear_model(data.X_train, data.y_train, 2, 10.0)
    corrected = data.X_train.clone()
    corrected[:, 10] = 0.0
    dense_after, dense_before = _dense_newton_residual(model, corrected, data.y_train, 10.0)
    assert math.isclose(dense_before, before, rel_tol=1e-6)
    assert math.isclose(dense_after, second["residual"], rel_tol=1e-3, abs_tol=1e-6)
    assert second["seconds"] > 0 and r["retrained"]["seconds"] > 0
    # first order (curvature step) also lowers the residual, less than second order
    first = r["methods"]["first_order"]
    assert second["residual"] < first["residual"] < before


def test_replace_mode_changes_only_selected_rows():
    cfg = FeatureConfig(dataset="wine", columns=(12, 9), mode="replace", n_rows=20, value=0.5)
    r = run_feature_experiment(cfg)
    assert r["data"]["num_affected"] == 20 and r["data"]["columns"] == [12, 9]
    second = r["methods"]["second_order"]
    assert second["residual"] < 0.2 * r["original"]["residual"]
    assert second["distance_retrained"] < 0.2 * r["original"]["distance_retrained"]
    assert second["update"]["num_gradients"] == 40  # 2 per affected row


def test_objective_gradient_matches_autograd():
    data = load_feature_data("wine")
    model, _ = fit_linear_model(data.X_train, data.y_train, 3, 2.0, rounds=1)
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(data.X_train), data.y_train,
                                             reduction="sum")
    loss = loss + 1.0 * sum((p * p).sum() for p in model.parameters())
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    got = objective_gradient(model, data.X_train, data.y_train, 2.0)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_curvature_step_matches_dense_hessian():
    data = load_feature_data("wine")
    model, _ = fit_linear_model(data.X_train, data.y_train, 3, 2.0, rounds=1)
    X, y = data.X_train, data.y_train
    W0, b0 = model.weight.detach(), model.bias.detach()

    def J(theta):
        W, b = theta[: W0.numel()].reshape(W0.shape), theta[W0.numel():]
        return torch.nn.functional.cross_entropy(X @ W.T + b, y, reduction="sum") \
            + theta @ theta

    theta = torch.cat([W0.reshape(-1), b0])
    g = torch.func.grad(J)(theta)
    H = torch.func.hessian(J)(theta)
    expected = float(g @ g / (g @ H @ g))
    assert math.isclose(curvature_step(model, X, y, 2.0), expected, rel_tol=1e-9)


def test_select_columns_most_non_zero():
    X = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 3.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    assert select_columns(X, 2) == [1, 3]
    assert select_columns(X, 10) == [0, 1, 2, 3]
    assert select_columns(X, np.int64(1)) == [1]


def test_select_columns_ties_broken_by_the_models_weight_norm():
    X = torch.ones(3, 3)
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, 2.0, 0.5], [0.1, 0.0, 0.5]]))
    assert select_columns(X, 1, model) == [1]
    assert select_columns(X, 2, model) == [1, 2]


# old: k = -1 returned all columns but one and k = 0 none, a 1-D X raised IndexError, an
# array X a TypeError from torch, a str k a comparison error
@pytest.mark.parametrize(("X", "k", "model", "error", "match"), [
    (torch.ones(2, 3), 0, None, ValueError, "'k' must be >= 1, got 0"),
    (torch.ones(2, 3), -1, None, ValueError, "'k' must be >= 1, got -1"),
    (torch.ones(2, 3), True, None, TypeError, "'k' must be an int, got bool"),
    (torch.ones(2, 3), 2.5, None, TypeError, "'k' must be an int, got float"),
    (torch.ones(2, 3), "2", None, TypeError, "'k' must be an int, got str"),
    (torch.ones(3), 1, None, TypeError, r"'X' must be a 2-D tensor \[N, F\], got \(3,\)"),
    (np.ones((2, 3)), 1, None, TypeError, "'X' must be a 2-D tensor .*ndarray"),
    (torch.ones(2, 0), 1, None, ValueError, "'X' has no column"),
    (torch.ones(2, 3), 1, nn.Linear(4, 2), ValueError, "'model' takes 4 features, 'X' has 3"),
    (torch.ones(2, 3), 1, nn.Conv1d(3, 2, 1), TypeError, "'model' must be an nn.Linear"),
])
def test_select_columns_refuses_bad_arguments(X, k, model, error, match):
    with pytest.raises(error, match=match):
        select_columns(X, k, model)



def _linear_problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=g, dtype=torch.float64)
    return X, torch.arange(12) % 3


# old: float32 features were a dtype RuntimeError from a matmul, labels out of range an
# IndexError, NaN features or a negative l2 silently fitted a broken model, rounds=0 and
# num_classes=1 returned an unfitted one
@pytest.mark.parametrize(("change", "error", "match"), [
    ({"X": "float32"}, TypeError, "'X' must have the parameters' dtype torch.float64"),
    ({"X": "nan"}, ValueError, "'X' contains non-finite values"),
    ({"X": "numpy"}, TypeError, "'X' must be a torch.Tensor, got ndarray"),
    ({"X": "1-D"}, ValueError, r"'X' must be 2-D \[N, F\]"),
    ({"y": "float"}, TypeError, "'y' must hold integer class labels, got torch.float64"),
    ({"y": "out"}, ValueError, r"'y' holds labels in \[5, 7\]"),
    ({"y": "short"}, ValueError, "'X' and 'y' must have the same length, got 12 and 4"),
    ({"num_classes": 1}, ValueError, "'num_classes' must be >= 2, got 1"),
    ({"l2": -1.0}, ValueError, "'l2' must be finite and > 0, got -1.0"),
    ({"l2": 0.0}, ValueError, "'l2' must be finite and > 0, got 0.0"),
    ({"tol": math.nan}, ValueError, "'tol' must be finite and > 0"),
    ({"rounds": 0}, ValueError, "'rounds' must be >= 1, got 0"),
])
def test_fit_linear_model_refuses_bad_arguments(change, error, match):
    X, y = _linear_problem()
    X = {"float32": X.float(), "nan": X * math.nan, "numpy": X.numpy(), "1-D": X[:, 0]}.get(
        change.get("X"), X)
    y = {"float": y.double(), "out": y + 5, "short": y[:4]}.get(change.get("y"), y)
    kwargs = {k: v for k, v in change.items() if k not in ("X", "y")}
    num_classes, l2 = kwargs.pop("num_classes", 3), kwargs.pop("l2", 1.0)
    with pytest.raises(error, match=match):
        fit_linear_model(X, y, num_classes, l2, **kwargs)


def test_linear_helpers_check_their_model_and_data():
    X, y = _linear_problem()
    model, _ = fit_linear_model(X, y, 3, 1.0)
    before = [p.clone() for p in model.parameters()]
    for helper in (curvature_step, objective_gradient):
        with pytest.raises(ValueError, match=r"'y' holds labels in \[5, 7\], outside the "
                                             r"model's 3 classes"):
            helper(model, X, y + 5, 1.0)
        with pytest.raises(TypeError, match="'X' must have the parameters' dtype"):
            helper(model, X.float(), y, 1.0)
        with pytest.raises(ValueError, match="'l2' must be finite and >= 0, got inf"):
            helper(model, X, y, math.inf)
    with pytest.raises(ValueError, match="'model' takes 3 features, 'X' has 2 columns"):
        curvature_step(model, X[:, :2], y, 1.0)
    with pytest.raises(TypeError, match="'model' must be an nn.Linear, got Sequential"):
        curvature_step(nn.Sequential(model), X, y, 1.0)
    with pytest.raises(TypeError, match="'model' must have parameters of one dtype, got no"):
        objective_gradient(nn.ReLU(), X, y, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # any module works for the gradient: the same as the bare linear model's
    assert torch.equal(objective_gradient(nn.Sequential(model), X, y, 1.0),
                       objective_gradient(model, X, y, 1.0))

def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    feature_cli.add_parser(sub)
    return parser.parse_args(["unlearn-features", *argv])


def test_cli_digits_writes_json_png_markdown(tmp_path, capsys):
    args = _parse(["--top-k", "2", "--out", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "second_order" in out and "sigma required" in out
    result = json.loads((tmp_path / "features_digits.json").read_text())
    assert (tmp_path / "features_digits.png").stat().st_size > 1000
    md = (tmp_path / "features_digits.md").read_text()
    assert "gradient residual" in md and "Certified linear variant" in md
    cols = result["data"]["columns"]
    assert len(cols) == 2
    # the two pixels with the most non-zero training values
    data = load_feature_data("digits")
    counts = (data.X_train != 0).sum(0)
    assert sorted(counts[cols].tolist()) == sorted(torch.topk(counts, 2).values.tolist())
    lin = result["linear"]
    for m in lin["methods"].values():
        c = math.sqrt(2 * math.log(1.5 / 0.01))
        assert math.isclose(m["sigma_required"], m["residual"] * c / 0.1, rel_tol=1e-9)
        assert m["residual"] < m["residual_before"]
    assert lin["methods"]["order2"]["distance_retrained"] < lin["distance_original"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="mnist"), "dataset"),
    (dict(dataset="wine", columns=()), "columns"),
    (dict(dataset="wine", columns=(3, 13)), "columns"),
    (dict(dataset="wine", columns=(-1,)), "columns"),
    (dict(dataset="wine", columns=(2, 2)), "columns"),
    (dict(dataset="wine", mode="drop"), "mode"),
    (dict(dataset="wine", l2=0.0), "l2"),
    (dict(dataset="wine", mode="replace", n_rows=10_000), "n_rows"),
])
def test_bad_input_raises_named_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_feature_experiment(FeatureConfig(**kwargs))


def test_cli_bad_input(tmp_path, capsys):
    args = _parse(["--dataset", "wine", "--columns", "3,99", "--out", str(tmp_path)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "columns" in err and "99" in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        _parse(["--columns", ","])
    with pytest.raises(SystemExit):
        _parse(["--dataset", "iris"])


def test_cli_prints_when_an_update_is_rejected(tmp_path, capsys):
    # a huge first-order step makes the corrected training loss grow: it is rejected
    args = _parse(["--dataset", "wine", "--columns", "3", "--tau", "1e6", "--no-linear",
                   "--out", str(tmp_path), "--no-plots"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if line.strip().startswith("first_order"))
    second = next(line for line in lines if line.strip().startswith("second_order"))
    assert "NOT APPLIED (the corrected training loss grew" in first
    assert second.endswith(" applied")
    result = json.loads((tmp_path / "features_wine.json").read_text())
    assert result["methods"]["first_order"]["update"]["applied"] is False


def test_cli_progress_shows_the_fit_and_unlearn_bars(tmp_path, capsys):
    args = _parse(["--top-k", "2", "--out", str(tmp_path), "--progress", "--no-plots"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "fit" in err and "round" in err  # L-BFGS rounds of each fit
    assert "unlearn" in err and "method" in err  # one step per unlearning method
