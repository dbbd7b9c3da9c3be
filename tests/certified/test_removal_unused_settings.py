"""Settings of a certified removal experiment that the others make pointless.

``ExperimentConfig.validate()`` names the fields (set to a value other than their default),
``fastunlearn remove`` the flags given; one rule table
(:func:`fastunlearn.certified.unused_settings.removal_rules`), each warning once though the
command's run validates the config again.
"""

from __future__ import annotations

import warnings

import pytest

from fastunlearn.certified.experiment import ExperimentConfig
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
    ({"train_mode": "binary", "subsample_ratio": 0.5},
     ["'subsample_ratio' has no effect with train_mode='binary' (as in the reference, where "
      "it subsamples the negatives of each one-vs-rest class)"]),
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
