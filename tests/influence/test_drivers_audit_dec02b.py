"""Audit of the influence experiment drivers and their commands (``repair``, ``unlearn-features``).

Regression tests of the defects found, and checks of the results against independent
computations (dense Newton steps on a small table, an L-BFGS-free refit).
"""

import argparse
import math

import pytest
import torch

from fastunlearn.influence import cli
from fastunlearn.influence import experiment as exp
from fastunlearn.influence.experiment import RepairConfig, run_repair_experiment
from fastunlearn.influence.feature_experiment import (
    FeatureConfig,
    load_feature_data,
    run_feature_experiment,
)


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    return parser.parse_args(["repair", *argv])


def _small_repair_args(model: str, tmp_path):
    """``repair --model MODEL`` for one epoch on 100 rows into ``tmp_path / "out"``."""
    return _parse(["--model", model, "--epochs", "1", "--n-train", "100", "--result-dir",
                   str(tmp_path / "out")])


# --- % restored when the poisoned model is not worse than the clean one ---------------


def test_restored_share_is_undefined_when_the_poisoning_did_no_damage():
    """(after - before) / (clean - before) with clean < before showed an improvement of the
    poisoned model as a negative share (-275 % on a 2-epoch digits run) and a loss as a
    positive one; there is no damage to restore, so it is NaN ('-' in the reports)."""
    assert exp._restored(0.9, 0.8, 1.0) == pytest.approx(0.5)
    assert exp._restored(0.8, 0.8, 1.0) == 0.0
    assert math.isnan(exp._restored(0.35, 0.32, 0.31))  # was -3.0
    assert math.isnan(exp._restored(0.30, 0.32, 0.31))  # was +2.0: a loss as a gain
    assert math.isnan(exp._restored(0.5, 0.4, 0.4))


def test_repair_run_reports_no_restored_share_when_the_poisoned_model_is_better(
    monkeypatch, tmp_path, capsys
):
    values = iter([0.50, 0.60, 0.70, 0.70])  # clean, poisoned, the one-shot step, after

    def fake_accuracy(model, X, y):
        return next(values)

    monkeypatch.setattr(exp, "accuracy", fake_accuracy)
    config = RepairConfig(n_train=100, epochs=1, order=1, tau=1e-6, protocols=("one-shot",))
    result = run_repair_experiment(config)
    p = result["protocols"]["one-shot"]
    assert (result["training"]["acc_clean"], result["training"]["acc_poisoned"]) == (0.5, 0.6)
    assert p["acc_after"] == 0.7
    assert math.isnan(p["restored"])  # was (0.7 - 0.6) / (0.5 - 0.6) = -1.0
    row = next(
        line for line in exp.render_report(result).splitlines() if line.startswith("| one-shot |")
    )
    assert row.split("|")[2].strip() == "-"
    assert "not worse than the clean one" in exp.render_report(result)


# --- the model name is checked with the other settings, and named as the flag ---------


@pytest.mark.parametrize("name", ["nosuch", ""])
def test_repair_config_refuses_an_unknown_or_empty_model_name(name):
    """An unknown name was refused only after the data was loaded, as "'name' must be one
    of ..." (the zoo's argument, not the command's '--model'); "" quietly became small_cnn."""
    with pytest.raises(ValueError, match=r"^'model' must be a model zoo name.*small_cnn"):
        RepairConfig(model=name).validate()


def test_repair_command_names_the_model_flag(tmp_path, capsys):
    args = _small_repair_args("nosuch", tmp_path)
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "fastunlearn repair: error: '--model' must be a model zoo name" in err
    assert "'name'" not in err and "'nosuch'" in err
    assert not (tmp_path / "out").exists()


def test_repair_model_that_cannot_be_built_for_the_data_says_which(tmp_path, capsys):
    """svhn_dp on 8x8 digits: the builder's "'side' 8 is too small ..." (a Python argument
    the user never set) now comes with the model and the data set."""
    args = _small_repair_args("svhn_dp", tmp_path)
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "error: model 'svhn_dp' cannot be built for digits: 'side' 8" in err


# --- independent checks of the feature experiment -------------------------------------


def _dense_fit(J, dim, X):
    theta = torch.zeros(dim, dtype=torch.float64)
    for _ in range(30):  # Newton's method on the strictly convex objective
        g = torch.func.grad(J)(theta, X)
        H = torch.func.hessian(J)(theta, X)
        theta = theta - torch.linalg.solve(H, g)
    return theta


def test_feature_experiment_matches_dense_newton_steps_and_refit():
    """wine, columns 1 and 5 zeroed: retraining, the first-order curvature step and the
    second-order Newton step against dense computations on the 42 parameters."""
    config = FeatureConfig(dataset="wine", columns=(1, 5), linear=False)
    r = run_feature_experiment(config)
    data = load_feature_data("wine", seed=0)
    X, y = data.X_train, data.y_train
    n_classes, n_features = data.num_classes, X.shape[1]

    def J(theta, X):
        W = theta[: n_classes * n_features].reshape(n_classes, n_features)
        b = theta[n_classes * n_features :]
        loss = torch.nn.functional.cross_entropy(X @ W.T + b, y, reduction="sum")
        return loss + 0.5 * config.l2 * (theta @ theta)

    corrected = X.clone()
    corrected[:, [1, 5]] = 0.0
    dim = n_classes * n_features + n_classes
    theta0, theta_re = _dense_fit(J, dim, X), _dense_fit(J, dim, corrected)
    assert r["data"]["num_affected"] == int((X[:, [1, 5]] != 0).any(1).sum())
    assert r["original"]["distance_retrained"] == pytest.approx(
        float((theta0 - theta_re).norm()), rel=1e-6
    )
    assert r["retrained"]["residual"] < 1e-4
    g = torch.func.grad(J)(theta0, corrected)
    H = torch.func.hessian(J)(theta0, corrected)
    newton = theta0 - torch.linalg.solve(H, g)
    second = r["methods"]["second_order"]
    assert second["distance_retrained"] == pytest.approx(
        float((newton - theta_re).norm()), rel=1e-5
    )
    assert second["residual"] == pytest.approx(
        float(torch.func.grad(J)(newton, corrected).norm()), rel=1e-5
    )
    tau = float(g @ g / (g @ H @ g))
    first = r["methods"]["first_order"]
    assert first["update"]["tau"] == pytest.approx(tau, rel=1e-6)
    assert first["distance_retrained"] == pytest.approx(
        float((theta0 - tau * g - theta_re).norm()), rel=1e-5
    )


# --- too few rows for the default budget: the flag at fault, not one never given -------


def test_repair_default_budget_on_too_few_rows_names_n_train(tmp_path, capsys):
    """--n-train 12 keeps no row of class 9: the error said "'--budget' 10 needs 1 rows of
    class 9" although no --budget was given (the default is 20 % of the rows, at least 10)."""
    args = _parse(["--n-train", "12", "--epochs", "1", "--result-dir", str(tmp_path / "o")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "error: '--n-train' 12 is too few training rows for the default budget 10" in err
    assert "class 9 has no rows" in err and "'--budget'" not in err
    # a budget given on the command line keeps its own message
    args = _parse(
        ["--n-train", "12", "--budget", "10", "--epochs", "1", "--result-dir", str(tmp_path / "o")]
    )
    assert args.func(args) == 2
    assert "'--budget' 10 needs 1 rows of class 9" in capsys.readouterr().err
