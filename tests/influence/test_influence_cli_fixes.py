"""Fixes of `fastunlearn repair` and `fastunlearn unlearn-features` found by an audit.

Each test runs the command in process (``fastunlearn.cli.main``) or the Python API and reads
what a user sees: the exit status, stdout/stderr, the warnings and the written files.
"""

import dataclasses
import json
import warnings

import pytest

from fastunlearn.cli import main
from fastunlearn.influence import experiment as repair_experiment
from fastunlearn.influence import feature_experiment
from fastunlearn.influence.feature_experiment import (
    FeatureConfig,
    FeatureData,
    load_feature_data,
    render_feature_report,
    run_feature_experiment,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Stop(Exception):
    """Raised by a stub so that nothing after it runs."""


def _quick_features(monkeypatch):
    """Run the real feature experiment with 3 L-BFGS rounds per fit (same code, faster)."""
    real = feature_experiment.run_feature_experiment

    def quick(config, data=None):
        return real(dataclasses.replace(config, train_rounds=3), data)

    monkeypatch.setattr(feature_experiment, "run_feature_experiment", quick)


def _no_fitting(monkeypatch):
    """Make any fit raise: a check that passes has to come before the fitting."""
    def fit(*args, **kwargs):
        raise _Stop("fitting started")

    monkeypatch.setattr(feature_experiment, "fit_linear_model", fit)


# ---- 1: a replacement value too large for the data's dtype ---------------------------------


def test_cli_refuses_a_replacement_value_whose_square_overflows(monkeypatch, tmp_path, capsys):
    _no_fitting(monkeypatch)
    out = tmp_path / "o_v"
    status = main(["unlearn-features", "--dataset", "wine", "--mode", "replace", "--value",
                   "1e308", "--no-plots", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = err.strip().splitlines()  # one line, before any fit (the stub did not run)
    assert line.startswith("fastunlearn unlearn-features: error: '--value' 1e+308 ")
    assert "float64" in line and "use |value| <= 1.896e+153" in line
    assert not out.exists()


@pytest.mark.parametrize("value", [1e308, -1e200, 2e153])
def test_api_refuses_the_same_values_before_fitting(monkeypatch, value):
    _no_fitting(monkeypatch)
    config = FeatureConfig(dataset="wine", mode="replace", value=value, linear=False)
    with pytest.raises(ValueError, match=r"^'value' .* too large for the float64 training data"):
        run_feature_experiment(config)
    # the bound is sqrt(float64 max / n_rows): n_rows 50 gives 1.896e153
    config.value = 1.8e153
    far = "times the largest absolute feature value"  # accepted, with a warning
    with pytest.warns(UserWarning, match=far), pytest.raises(_Stop):  # goes on to the fit
        run_feature_experiment(config)
    # remove mode never uses the value
    with pytest.raises(_Stop), pytest.warns(UserWarning, match="'value' has no effect"):
        run_feature_experiment(FeatureConfig(dataset="wine", value=1e308, linear=False))


def test_api_names_a_value_beyond_float32_for_float32_data(monkeypatch):
    _no_fitting(monkeypatch)
    d = load_feature_data("wine")
    data = FeatureData(d.X_train.float(), d.y_train, d.X_test.float(), d.y_test,
                       d.feature_names, d.num_classes)
    config = FeatureConfig(dataset="wine", mode="replace", n_rows=5, value=1e39, linear=False)
    with pytest.raises(ValueError, match=r"'value' 1e\+39 is not finite in the float32"):
        run_feature_experiment(config, data)
    config.value = 1e20  # finite in float32, but its square overflows
    with pytest.raises(ValueError, match=r"overflows float32; use \|value\| <= 8.25e\+18"):
        run_feature_experiment(config, data)


# ---- 2: an update that was not applied is said so -----------------------------------------


def _repair(tmp_path, *flags):
    out = tmp_path / "out"
    status = main(["repair", "--epochs", "1", "--n-train", "200", "--no-plots",
                   "--result-dir", str(out), *flags])
    return status, out


def test_repair_one_shot_says_not_applied_and_why(tmp_path, capsys):
    # damping 0 on the Gauss-Newton matrix: the step makes the corrected loss explode
    status, out = _repair(tmp_path, "--protocol", "one-shot", "--damping", "0",
                          "--cg-maxiter", "20")
    captured = capsys.readouterr()
    # a rejected update is a result, as in unlearn-features and forget: status 0
    assert status == 0, captured.err
    written = json.loads((out / "repair_digits.json").read_text())
    (step,) = written["protocols"]["one-shot"]["steps"]
    assert step["applied"] is False and step["diverged"] is True
    line = next(x for x in captured.out.splitlines() if x.strip().startswith("one-shot:"))
    assert line.endswith(f"NOT APPLIED ({step['reason']})")
    assert "the corrected training loss grew" in line
    md = (out / "repair_digits.md").read_text()
    assert "**one-shot: update NOT APPLIED (the corrected training loss grew" in md


def test_repair_iterative_counts_the_steps_not_applied(tmp_path, capsys):
    # a first-order step of 1e6 overshoots: every step is rejected
    status, out = _repair(tmp_path, "--protocol", "iterative", "--steps", "2", "--batch",
                          "16", "--order", "1", "--tau", "1e6")
    captured = capsys.readouterr()
    assert status == 0, captured.err
    steps = json.loads((out / "repair_digits.json").read_text())["protocols"]["iterative"][
        "steps"]
    assert [s["applied"] for s in steps] == [False, False]
    line = next(x for x in captured.out.splitlines() if x.strip().startswith("iterative:"))
    assert "NOT APPLIED in 2 of 2 steps (step 1: the corrected training loss grew" in line
    assert "NOT APPLIED in 2 of 2 steps" in (out / "repair_digits.md").read_text()


def test_repair_says_applied_when_it_was(tmp_path, capsys):
    status, out = _repair(tmp_path, "--protocol", "one-shot", "--order", "1")
    captured = capsys.readouterr()
    assert status == 0, captured.err
    (step,) = json.loads((out / "repair_digits.json").read_text())["protocols"]["one-shot"][
        "steps"]
    line = next(x for x in captured.out.splitlines() if x.strip().startswith("one-shot:"))
    assert step["applied"] is True and line.endswith("  applied")
    assert "NOT APPLIED" not in (out / "repair_digits.md").read_text()


# ---- 3: the stepwise steps actually made --------------------------------------------------


def test_unlearn_features_reports_the_steps_made_and_the_cap(monkeypatch, tmp_path, capsys):
    _quick_features(monkeypatch)
    out = tmp_path / "o_s"
    status = main(["unlearn-features", "--dataset", "wine", "--columns", "1,4", "--steps",
                   "100", "--no-plots", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    written = json.loads((out / "features_wine.json").read_text())
    assert written["config"]["steps"] == 100  # the request, as given
    assert written["data"]["update_steps"] == 2
    assert {m["update"]["steps"] for m in written["methods"].values()} == {2}
    text = "2 update steps (stepwise); 100 were requested, capped at one step per column " \
        "(2 columns)"
    assert text in captured.out.splitlines()[0]
    md = (out / "features_wine.md").read_text()
    assert text + "." in md and "100 update steps" not in md


def test_feature_report_of_a_result_without_update_steps_uses_the_config():
    # a result written before update_steps was recorded: its steps were not capped
    cfg = {"mode": "remove", "value": 0.0, "n_rows": 50, "l2": 10.0, "steps": 3}
    data = {"dataset": "wine", "num_params": 42, "n_train": 142, "n_features": 13,
            "num_classes": 3, "columns": [0, 1, 2], "column_names": ["a", "b", "c"],
            "num_affected": 142}
    original = {"residual": 1.0, "distance_retrained": 1.0, "acc": 0.9, "seconds": 1.0}
    retrained = {"residual": 0.0, "acc": 0.9, "seconds": 1.0}
    result = {"config": cfg, "data": data, "original": original, "retrained": retrained,
              "methods": {}}
    assert "142 affected rows; 3 update steps (stepwise).\n" in render_feature_report(result)
    data["update_steps"] = 1
    cfg["steps"] = 1
    assert "142 affected rows; one update step.\n" in render_feature_report(result)


# ---- 4: no stale plot beside a --no-plots run ----------------------------------------------


def test_repair_no_plots_removes_an_earlier_runs_plot(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "repair_digits.png").write_bytes(b"old plot")
    (out / "features_digits.png").write_bytes(b"another command's plot")
    (out / "repair_digits_mine.png").write_bytes(b"the user's")
    status, _ = _repair(tmp_path, "--protocol", "one-shot", "--order", "1")
    assert status == 0, capsys.readouterr().err
    assert not (out / "repair_digits.png").exists()
    assert (out / "features_digits.png").read_bytes() == b"another command's plot"
    assert (out / "repair_digits_mine.png").read_bytes() == b"the user's"
    assert ".png" not in (out / "repair_digits.md").read_text()


def test_unlearn_features_no_plots_removes_an_earlier_runs_plot(monkeypatch, tmp_path, capsys):
    _quick_features(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "features_wine.png").write_bytes(b"old plot")
    (out / "features_digits.png").write_bytes(b"another data set's plot")
    (out / "repair_digits.png").write_bytes(b"another command's plot")
    argv = ["unlearn-features", "--dataset", "wine", "--columns", "1", "--out", str(out)]
    assert main([*argv, "--no-plots"]) == 0, capsys.readouterr().err
    assert not (out / "features_wine.png").exists()
    assert (out / "features_digits.png").read_bytes() == b"another data set's plot"
    assert (out / "repair_digits.png").read_bytes() == b"another command's plot"
    assert ".png" not in (out / "features_wine.md").read_text()
    # with plots the figure is written and linked again
    assert main(argv) == 0
    assert (out / "features_wine.png").stat().st_size > 1000
    assert "(features_wine.png)" in (out / "features_wine.md").read_text()


# ---- 5: flags without effect in the given combination --------------------------------------


def _record(monkeypatch, module, name):
    seen = []

    def stub(config, data=None, **kwargs):
        seen.append(config)
        raise ValueError("stub: stop before any work")

    monkeypatch.setattr(module, name, stub)
    return seen


def _ours(record):
    return [str(w.message) for w in record if "no effect" in str(w.message)]


@pytest.mark.parametrize("flags, message", [
    (["--value", "3"], "'--value' has no effect with '--mode remove' (remove mode zeroes"),
    (["--rows", "5", "--mode", "remove"], "'--rows' has no effect with '--mode remove'"),
    (["--dataset", "wine", "--binary", "3,8"],
     "'--binary' has no effect with '--dataset wine' (for the certified linear "
     "variant, which runs on the digits only)"),
    (["--no-linear", "--epsilon", "1", "--delta", "0.5"],
     "'--epsilon' and '--delta' have no effect with '--no-linear'"),
    (["--columns", "3", "--top-k", "2"],
     "'--top-k' has no effect with '--columns' (it picks the columns when '--columns' is "
     "None)"),
])
def test_unlearn_features_warns_about_a_flag_without_effect(monkeypatch, tmp_path, flags,
                                                             message):
    seen = _record(monkeypatch, feature_experiment, "run_feature_experiment")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["unlearn-features", *flags, "--out", str(tmp_path)]) == 2
    assert len(seen) == 1  # a warning, not an error: the run went on
    (text,) = _ours(record)
    assert text.startswith(message)


@pytest.mark.parametrize("flags, message", [
    (["--order", "1", "--solver", "lissa"],
     "'--solver' has no effect with '--order 1' (for the second-order solve)"),
    (["--order", "1", "--cg-tol", "1e-3", "--lissa-scale", "10", "--damping", "1"],
     "'--damping', '--cg-tol' and '--lissa-scale' have no effect with '--order 1'"),
    (["--order", "1", "--tau", "0.5", "--curvature", "hessian"],
     "'--curvature' has no effect with '--order 1' and '--tau 0.5' (for the line "
     "search that picks '--tau' when it is 'auto')"),
    (["--tau", "0.5"], "'--tau' has no effect with '--order 2' (it is the first-order step size)"),
    (["--lissa-depth", "5"], "'--lissa-depth' has no effect with '--solver cg'"),
    (["--solver", "lissa", "--cg-maxiter", "5"],
     "'--cg-maxiter' has no effect with '--solver lissa' (for the CG solver)"),
    (["--solver", "lissa", "--damping", "5"], "'--damping' has no effect with '--solver lissa'"),
    (["--protocol", "one-shot", "--batch", "5"],
     "'--batch' has no effect with '--protocol one-shot'"),
])
def test_repair_warns_about_a_flag_without_effect(monkeypatch, tmp_path, flags, message):
    seen = _record(monkeypatch, repair_experiment, "run_repair_experiment")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["repair", *flags, "--result-dir", str(tmp_path)]) == 2
    assert len(seen) == 1
    (text,) = _ours(record)
    assert text.startswith(message)


@pytest.mark.parametrize("command, module, name, flags", [
    ("unlearn-features", feature_experiment, "run_feature_experiment",
     ["--mode", "replace", "--value", "3", "--rows", "5", "--binary", "1,7", "--top-k", "2"]),
    ("unlearn-features", feature_experiment, "run_feature_experiment",
     ["--dataset", "wine", "--no-linear", "--columns", "2"]),
    ("repair", repair_experiment, "run_repair_experiment",
     ["--solver", "lissa", "--lissa-scale", "2e4", "--lissa-damping", "5e-3"]),
    ("repair", repair_experiment, "run_repair_experiment",
     ["--order", "1", "--tau", "auto", "--curvature", "hessian", "--steps", "3"]),
    ("repair", repair_experiment, "run_repair_experiment",
     ["--solver", "direct", "--damping", "3", "--curvature", "hessian"]),
])
def test_flags_that_take_effect_give_no_warning(monkeypatch, tmp_path, command, module, name,
                                                flags):
    seen = _record(monkeypatch, module, name)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main([command, *flags, "--out", str(tmp_path)]) == 2
    assert len(seen) == 1 and _ours(record) == []


# ---- 6: --cg-tol must be positive, as in remove --------------------------------------------


@pytest.mark.parametrize("command", ["repair", "unlearn-features"])
@pytest.mark.parametrize("value", ["0", "0.0", "-1e-9"])
def test_cg_tol_must_be_positive(command, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, f"--cg-tol={value}", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument --cg-tol: must be positive, got {value}" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as info:  # the same words as remove's
        main(["remove", f"--cg-tol={value}"])
    assert f"argument --cg-tol: must be positive, got {value}" in capsys.readouterr().err


def test_a_positive_cg_tol_reaches_both_configs(monkeypatch, tmp_path):
    repair = _record(monkeypatch, repair_experiment, "run_repair_experiment")
    features = _record(monkeypatch, feature_experiment, "run_feature_experiment")
    assert main(["repair", "--cg-tol", "1e-12", "--out", str(tmp_path)]) == 2
    assert main(["unlearn-features", "--cg-tol", "1e-12", "--out", str(tmp_path)]) == 2
    assert [c.cg_tol for c in repair + features] == [1e-12, 1e-12]


def test_api_refuses_more_top_columns_than_features_before_fitting(monkeypatch):
    _no_fitting(monkeypatch)
    with pytest.raises(ValueError, match=r"^'top_k' must be <= 13 features, got 14$"):
        run_feature_experiment(FeatureConfig(dataset="wine", top_k=14, linear=False))
    with pytest.raises(_Stop):  # all 13 is accepted: the run goes on to the fit
        run_feature_experiment(FeatureConfig(dataset="wine", top_k=13, linear=False))
