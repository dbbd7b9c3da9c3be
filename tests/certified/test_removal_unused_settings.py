"""Settings of a certified removal experiment that the others make pointless.

``ExperimentConfig.validate()`` names the fields (set to a value other than their default),
``fastunlearn remove`` the flags given; one rule table
(:func:`fastunlearn.certified.unused_settings.removal_rules`), each warning once though the
command's run validates the config again.
"""

from __future__ import annotations

import warnings

import pytest

from fastunlearn.certified.experiment import ExperimentConfig, run_removal_experiment
from fastunlearn.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _messages(config: ExperimentConfig) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        config.validate()
    return [str(w.message) for w in record if "no effect" in str(w.message)]


@pytest.mark.parametrize("settings, expected", [
    ({"solver": "cholesky", "cg_tol": 1e-3},
     ["'cg_tol' has no effect with solver='cholesky' (for the CG solver)"]),
    ({"data_dir": "somewhere"},
     ["'data_dir' has no effect with dataset='digits' and extractor='none' (the digits are "
      "bundled; the folder is read for other data sets and for extracted features)"]),
    ({"target_epsilon": 2.0},
     ["'target_epsilon' has no effect with extractor='none' (it is the total epsilon of a DP "
      "feature extractor composed with the head)"]),
    ({"std": 0.0, "epsilon": 2.0, "delta": 1e-3},
     ["'epsilon' and 'delta' have no effect with std=0 (the budget sigma * epsilon / c is 0: "
      "every removal retrains)"]),
    ({"result_dir": None, "plots": False},
     ["'plots' has no effect with result_dir=None (nothing is written)"]),
    ({"train_mode": "binary", "subsample_ratio": 0.5},
     ["'subsample_ratio' has no effect with train_mode='binary' (as in the reference, where "
      "it subsamples the negatives of each one-vs-rest class)"]),
    ({"num_removes": 0, "retrain": False, "eval_every": 5, "solver": "cg"},
     ["'retrain', 'eval_every' and 'solver' have no effect with num_removes=0 (no row is "
      "removed)"]),
])
def test_the_config_names_the_fields_that_have_no_effect(settings, expected):
    assert _messages(ExperimentConfig(**settings)) == expected


@pytest.mark.parametrize("settings", [
    {},
    {"solver": "cg", "cg_tol": 1e-3},
    {"solver": "auto", "cg_tol": 1e-3},  # auto may pick CG for any step
    {"solver": "cholesky", "cg_tol": 0.01},  # at its default: not set by the user
    {"train_mode": "ovr", "subsample_ratio": 0.5},
    {"dataset": "MNIST", "data_dir": "somewhere"},
    {"std": 1e-3, "epsilon": 2.0},
    {"result_dir": "out", "plots": False},
    {"num_removes": 1, "retrain": False, "eval_every": 5, "solver": "cg"},
])
def test_the_config_is_quiet_when_every_setting_is_used(settings):
    assert _messages(ExperimentConfig(**settings)) == []


def test_said_once_per_config():
    config = ExperimentConfig(solver="cholesky", cg_tol=1e-3)
    assert len(_messages(config)) == 1
    assert _messages(config) == []
    config.target_epsilon = 2.0
    assert _messages(config) == [
        "'target_epsilon' has no effect with extractor='none' (it is the total epsilon of a DP "
        "feature extractor composed with the head)"]


def test_the_command_names_each_flag_once(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["remove", "--train-mode", "binary", "--subsample-ratio", "1",
                     "--solver", "cholesky", "--cg-tol", "0.01", "--num-removes", "1",
                     "--no-plots", "--no-retrain-timing", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert [str(w.message) for w in record if "no effect" in str(w.message)] == [
        # given at their default values: the command still says so, and the run (which
        # validates the config again) does not repeat them with the fields' names
        "'--cg-tol' has no effect with '--solver cholesky' (for the CG solver)",
        "'--subsample-ratio' has no effect with '--train-mode binary' (as in the reference, "
        "where it subsamples the negatives of each one-vs-rest class)",
    ]


def test_with_std_0_epsilon_changes_nothing_but_its_echo():
    """The rule's claim: with sigma 0 the budget is 0 and every removal retrains."""
    runs = []
    for epsilon in (0.5, 5.0):
        config = ExperimentConfig(train_mode="binary", std=0.0, epsilon=epsilon,
                                  num_removes=3, result_dir=None, time_retraining=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(run_removal_experiment(config))
    (a, b) = runs
    assert a.privacy["retrains"] == b.privacy["retrains"] == 3
    assert a.final == b.final
    assert [r["bound"] for r in a.records] == [r["bound"] for r in b.records]
    assert a.privacy["budget_hint"].startswith("with --std 0 the budget is 0")


def test_the_residual_warning_is_not_repeated_by_the_retraining_timings():
    config = ExperimentConfig(train_mode="binary", std=0.0, num_removes=1, result_dir=None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run_removal_experiment(config)
    said = [w for w in record if "already exceeds the budget" in str(w.message)]
    assert len(said) == 1  # the experiment's fit; not its (up to three) timing fits


def test_progress_with_verbose_is_said_to_have_no_effect(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["remove", "--train-mode", "binary", "--num-removes", "1", "--verbose",
                     "--progress", "--no-plots", "--no-retrain-timing",
                     "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err  # no bar: every removal is printed
    assert [str(w.message) for w in record if "no effect" in str(w.message)] == [
        "'--progress' has no effect with '--verbose' (every removal is printed instead of a "
        "bar)"]


def test_without_removals_the_removal_flags_are_said_to_have_no_effect(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["remove", "--train-mode", "binary", "--num-removes", "0", "--no-retrain",
                     "--eval-every", "5", "--solver", "cg", "--no-plots",
                     "--no-retrain-timing", "--out", str(tmp_path)]) == 0
    assert "removed 0 rows" in capsys.readouterr().out
    assert [str(w.message) for w in record if "no effect" in str(w.message)] == [
        "'--no-retrain', '--eval-every' and '--solver' have no effect with '--num-removes 0' "
        "(no row is removed)"]


def test_without_removals_retrain_and_solver_change_nothing():
    """The rule's claim: with no removal the run is the same whatever they are."""
    runs = []
    for retrain, solver in ((True, "auto"), (False, "cg")):
        config = ExperimentConfig(train_mode="binary", num_removes=0, retrain=retrain,
                                  solver=solver, result_dir=None, time_retraining=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(run_removal_experiment(config))
    (a, b) = runs
    assert a.records == b.records == []
    assert a.final == b.final
    assert a.privacy["retrains"] == b.privacy["retrains"] == 0
