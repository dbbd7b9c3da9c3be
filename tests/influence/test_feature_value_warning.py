"""A replace-mode value far outside the data's range is warned about, not silently run.

Before, ``fastunlearn unlearn-features --mode replace --value 1e10`` on the digits (pixels
in [0, 1]) ran to the end without a word: retraining did not converge, both updates were
refused and the retrained model scored chance. Above 1,000 times the training data's
largest absolute value the experiment now warns, before any fitting.
"""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from fastunlearn.influence import feature_experiment
from fastunlearn.influence.feature_experiment import (
    FeatureConfig,
    FeatureData,
    load_feature_data,
    run_feature_experiment,
)

FAR = "times the largest absolute feature value of the training data"


class _Stop(Exception):
    """Raised instead of fitting: the warning comes before it."""


def _stop(*args, **kwargs):
    raise _Stop


@pytest.fixture
def no_fitting(monkeypatch):
    monkeypatch.setattr(feature_experiment, "fit_linear_model", _stop)


@pytest.fixture(scope="module")
def digits():
    return load_feature_data("digits")


def _run(data, **kwargs):
    with pytest.raises(_Stop):
        run_feature_experiment(FeatureConfig(linear=False, **kwargs), data=data)


@pytest.mark.parametrize("value", [1001.0, -2e3, 1e10, 1e150])
def test_a_value_far_outside_the_data_warns_at_the_caller(no_fitting, digits, value):
    with pytest.warns(UserWarning, match=FAR) as record:
        _run(digits, mode="replace", value=value)
    ours = [w for w in record if FAR in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__
    message = str(ours[0].message)
    ratio = abs(value) / float(digits.X_train.abs().max())  # the digits: 1.0
    assert message.startswith(f"'value' {value:g} is {ratio:.3g} times the largest absolute "
                              "feature value of the training data (1; warned above 1000 "
                              "times): the corrected rows then dominate the loss")
    assert "use a value in the data's range, such as 0 or the column mean" in message


def _silent_run(data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(data, **kwargs)


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 16.0, 1000.0, -1000.0])
def test_a_value_in_or_near_the_range_is_silent(no_fitting, digits, value):
    _silent_run(digits, mode="replace", value=value)


def test_the_column_mean_is_silent(no_fitting, digits):
    for column in (3, 4, 11, 12):  # the default setting's 4 most used pixels
        mean = float(digits.X_train[:, column].mean())
        _silent_run(digits, mode="replace", value=mean, columns=(column,))


def test_remove_mode_ignores_the_value(no_fitting, digits):
    # not the range warning: only that the value has no effect in remove mode
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _run(digits, mode="remove", value=1e10)
    assert [str(w.message) for w in record] == [
        "'value' has no effect with mode='remove' (remove mode zeroes the columns wherever "
        "non-zero)"]


def test_the_reference_is_the_whole_training_data(no_fitting):
    # column 0 is 0 everywhere: 1000x its own range would flag any value; the data's is 4
    X = torch.zeros(40, 3, dtype=torch.float64)
    X[:, 1] = torch.linspace(-4.0, 2.0, 40)
    y = (X[:, 1] > 0).to(torch.int64)
    data = FeatureData(X, y, X[:8].clone(), y[:8].clone(), ["a", "b", "c"], 2)
    _silent_run(data, mode="replace", value=3999.0, columns=(0,), n_rows=5)
    with pytest.warns(UserWarning, match=r"'value' 4001 is 1e\+03 times .* \(4; warned"):
        _run(data, mode="replace", value=4001.0, columns=(0,), n_rows=5)


def test_an_overflowing_value_is_still_an_error_not_a_warning(no_fitting, digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="'value' 1e\\+300 is too large"):
            run_feature_experiment(FeatureConfig(mode="replace", value=1e300), data=digits)


def test_the_command_prints_it_once(tmp_path):
    # the real command up to the first fit, which is stopped (the full run takes a minute)
    script = textwrap.dedent(f"""
        import sys
        from fastunlearn.influence import feature_experiment
        def stop(*args, **kwargs):
            raise ValueError("stopped before fitting")
        feature_experiment.fit_linear_model = stop
        from fastunlearn.cli import main
        sys.exit(main(["unlearn-features", "--mode", "replace", "--value", "1e10",
                       "--no-plots", "--out", {str(tmp_path / "o")!r}]))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if FAR in line]
    assert lines == [
        "fastunlearn unlearn-features: warning: '--value' 1e+10 is 1e+10 times the largest "
        "absolute feature value of the training data (1; warned above 1000 times): the "
        "corrected rows then dominate the loss, so retraining stops converging, the updates "
        "are refused and the results say little (on the digits the retrained accuracy starts "
        "to fall at 3e5 times, to chance at 1e7); use a value in the data's range, such as 0 "
        "or the column mean"]
    assert "UserWarning" not in run.stderr and ".py:" not in run.stderr
    assert "error: stopped before fitting" in run.stderr
