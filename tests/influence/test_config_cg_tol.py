"""``RepairConfig`` and ``FeatureConfig`` refuse ``cg_tol <= 0``, as ``--cg-tol`` does.

Before, both configs took 0: every CG solve then ran to ``cg_maxiter`` (500 instead of 46
iterations for the default ``unlearn-features``, 100 instead of 9 for a one-shot
``repair``), was reported as not converged ("relative residual 1.46e-15 > tol=0") and was
applied anyway, at many times the cost, while the commands refused ``--cg-tol 0``.
"""

import math

import numpy as np
import pytest

from fastunlearn.influence import experiment as repair_experiment
from fastunlearn.influence import feature_experiment
from fastunlearn.influence.experiment import RepairConfig, run_repair_experiment
from fastunlearn.influence.feature_experiment import FeatureConfig, run_feature_experiment

CONFIGS = [RepairConfig, FeatureConfig]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("value", [0, 0.0, -0.0, np.float64(0.0), -1e-9])
def test_a_tolerance_not_above_zero_is_refused(config, value):
    with pytest.raises(ValueError, match=r"'cg_tol' must be positive \(finite and > 0\)") as info:
        config(cg_tol=value).validate()
    message = str(info.value)
    # says why 0 is no use and what to give instead
    assert "'cg_maxiter'" in message and "not converged" in message
    assert "small positive tolerance such as 1e-10" in message


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_tolerance_that_is_not_finite_is_still_refused(config, value):
    with pytest.raises(ValueError, match="'cg_tol'"):
        config(cg_tol=value).validate()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("value", [1e-300, 1e-10, 1e-4, np.float32(0.01), 1])
def test_a_positive_tolerance_is_kept(config, value):
    assert config(cg_tol=value).validate().cg_tol == value


@pytest.mark.parametrize("config", CONFIGS)
def test_a_tolerance_set_after_construction_is_checked(config):
    cfg = config()
    cfg.cg_tol = 0.0
    with pytest.raises(ValueError, match="'cg_tol' must be positive"):
        cfg.validate()


def _no_data(*args, **kwargs):
    raise AssertionError("the data were loaded before the settings were checked")


def test_the_experiments_refuse_it_before_loading_data(monkeypatch):
    monkeypatch.setattr(repair_experiment, "load_repair_data", _no_data)
    monkeypatch.setattr(feature_experiment, "load_feature_data", _no_data)
    with pytest.raises(ValueError, match="'cg_tol' must be positive"):
        run_repair_experiment(RepairConfig(cg_tol=0.0))
    with pytest.raises(ValueError, match="'cg_tol' must be positive"):
        run_feature_experiment(FeatureConfig(cg_tol=0.0))


@pytest.mark.parametrize("command", ["repair", "unlearn-features"])
def test_the_commands_word_it_the_same_way(command, capsys, tmp_path):
    from fastunlearn.cli import main

    with pytest.raises(SystemExit):
        main([command, "--cg-tol", "0", "--out", str(tmp_path / "o")])
    assert "argument --cg-tol: must be positive, got 0" in capsys.readouterr().err
