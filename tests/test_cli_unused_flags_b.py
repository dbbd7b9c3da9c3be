"""Flags that have no effect with the other settings warn; contradicting ones are refused.

``extract``: the DP flags without ``--extractor dp``, the attack flags without ``--extractor
adversarial``, ``--pgd-steps`` with ``--attack fgsm``; ``--svhn-extra`` with another data set
is an error. ``remove``: ``--cg-tol`` with ``--solver cholesky``, ``--data-dir`` for the
bundled digits, ``--target-epsilon`` without a DP extractor. ``unlearn-features`` says
which steps its certified linear variant makes (``--tau`` and ``--steps`` set the others).
The expensive parts are stubbed out: each test takes well under a second.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest

from fastunlearn.certified import cli as remove_cli
from fastunlearn.certified import experiment as removal_experiment
from fastunlearn.certified import extract_cli
from fastunlearn.cli import main
from fastunlearn.influence import feature_experiment


def _no_effect_warnings(record) -> list[str]:
    return [str(w.message) for w in record
            if issubclass(w.category, UserWarning) and "no effect" in str(w.message)]


# ---- extract ----------------------------------------------------------------------------------


@pytest.fixture
def extract_stub(monkeypatch):
    """Replace the loading, training and writing of ``extract``; record its calls."""
    calls = []

    def fake_extract(args, device):
        calls.append(args)
        return 0

    monkeypatch.setattr(extract_cli, "_extract", fake_extract)
    return calls


def _extract(tmp_path, *flags):
    return main(["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--quiet",
                 *flags])


@pytest.mark.parametrize(("flags", "message"), [
    (["--extractor", "standard", "--std", "3", "--clip", "2", "--delta", "1e-6"],
     "'--std', '--clip' and '--delta' have no effect with '--extractor standard' (for the DP "
     "extractor)"),
    (["--extractor", "adversarial", "--std", "3"],
     "'--std' has no effect with '--extractor adversarial' (for the DP extractor)"),
    (["--attack", "pgd", "--attack-epsilon", "0.1", "--pgd-steps", "3"],
     "'--attack', '--attack-epsilon' and '--pgd-steps' have no effect with '--extractor dp' "
     "(for the adversarial extractor)"),
    (["--extractor", "standard", "--attack-epsilon", "0.1"],
     "'--attack-epsilon' has no effect with '--extractor standard' (for the adversarial "
     "extractor)"),
    (["--extractor", "adversarial", "--pgd-steps", "3"],
     "'--pgd-steps' has no effect with '--attack fgsm' (for the PGD attack)"),
    (["--extractor", "adversarial", "--attack", "fgsm", "--pgd-steps", "3"],
     "'--pgd-steps' has no effect with '--attack fgsm' (for the PGD attack)"),
])
def test_extract_warns_about_flags_its_extractor_does_not_use(flags, message, tmp_path,
                                                              extract_stub):
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        assert _extract(tmp_path, *flags) == 0
    assert _no_effect_warnings(record) == [message]
    assert len(extract_stub) == 1  # a warning, not an error: the run goes on


@pytest.mark.parametrize("flags", [
    ["--std", "3", "--clip", "2", "--delta", "1e-6"],
    ["--extractor", "adversarial", "--attack", "pgd", "--attack-epsilon", "0.1",
     "--pgd-steps", "3"],
    ["--extractor", "adversarial", "--attack-epsilon", "0.1"],
    ["--extractor", "standard"],
    [],
])
def test_extract_is_quiet_about_flags_that_act(flags, tmp_path, extract_stub):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert _extract(tmp_path, *flags) == 0
    assert _no_effect_warnings(record) == []


@pytest.mark.parametrize("dataset", ["digits", "MNIST", "CIFAR10", "mnist"])
def test_extract_refuses_svhn_extra_without_svhn_before_any_work(dataset, tmp_path, capsys,
                                                                 monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("extract went on after refusing --svhn-extra")

    monkeypatch.setattr(extract_cli, "_extract", must_not_run)
    monkeypatch.setattr(extract_cli, "_train_extractor", must_not_run)
    status = main(["extract", "--data-dir", str(tmp_path), "--dataset", dataset,
                   "--svhn-extra"])
    captured = capsys.readouterr()
    assert status == 2
    shown = {"mnist": "MNIST"}.get(dataset, dataset)  # the canonical spelling
    assert captured.err == ("fastunlearn extract: error: '--svhn-extra' applies to SVHN "
                            f"only, got '--dataset {shown}'\n")
    assert captured.out == ""
    assert not list(tmp_path.iterdir())


def test_extract_takes_svhn_extra_with_svhn(tmp_path, extract_stub):
    assert main(["extract", "--data-dir", str(tmp_path), "--dataset", "svhn",
                 "--svhn-extra"]) == 0
    assert extract_stub[0].svhn_extra is True


def test_extract_prints_the_warning_as_a_plain_line(tmp_path):
    # a folder that does not exist stops the run right after the flags are checked
    run = subprocess.run(
        [sys.executable, "-m", "fastunlearn", "extract", "--data-dir",
         str(tmp_path / "missing"), "--dataset", "digits", "--extractor", "standard",
         "--std", "3"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines()[0] == (
        "fastunlearn extract: warning: '--std' has no effect with '--extractor standard' "
        "(for the DP extractor)")
    assert "does not exist" in run.stderr and "Traceback" not in run.stderr


# ---- remove -----------------------------------------------------------------------------------


def _fake_result(extractor):
    return SimpleNamespace(privacy={"extractor": extractor, "removals": 0},
                           to_dict=dict, stopped_on_request=False, files={})


@pytest.fixture
def removal_stub(monkeypatch):
    """Replace the fit and the removals of ``remove``; the result's extractor is settable."""
    state = {"extractor": None, "configs": []}

    def fake_run(config, **kwargs):
        state["configs"].append(config)
        return _fake_result(state["extractor"])

    monkeypatch.setattr(removal_experiment, "run_removal_experiment", fake_run)
    monkeypatch.setattr(remove_cli, "_print_summary", lambda result: None)
    return state


def _remove(tmp_path, *flags):
    return main(["remove", "--out", str(tmp_path / "out"), "--no-plots", *flags])


@pytest.mark.parametrize(("flags", "message"), [
    (["--solver", "cholesky", "--cg-tol", "1e-8"],
     "'--cg-tol' has no effect with '--solver cholesky' (for the CG solver)"),
    (["--data-dir", "{tmp}/nowhere"],
     "'--data-dir' has no effect with '--dataset digits' and '--extractor none' (the digits "
     "are bundled; the folder is read for other data sets and for extracted features)"),
    (["--target-epsilon", "3"],
     "'--target-epsilon' has no effect with '--extractor none' (it is the total epsilon of a "
     "DP feature extractor composed with the head)"),
    (["--dataset", "MNIST", "--data-dir", "{tmp}", "--target-epsilon", "3"],
     "'--target-epsilon' has no effect with '--extractor none' (it is the total epsilon of a "
     "DP feature extractor composed with the head)"),
])
def test_remove_warns_about_flags_the_run_does_not_use(flags, message, tmp_path, removal_stub):
    flags = [f.format(tmp=tmp_path) for f in flags]
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        assert _remove(tmp_path, *flags) == 0
    assert _no_effect_warnings(record) == [message]
    assert len(removal_stub["configs"]) == 1  # the run went on


@pytest.mark.parametrize("extractor", [
    {"name": "std1", "private": False, "note": "not private"},
    None,  # a feature file without a record of its training
])
def test_remove_warns_about_target_epsilon_when_the_features_are_not_private(
        extractor, tmp_path, removal_stub):
    removal_stub["extractor"] = extractor
    message = ("'--target-epsilon' has no effect with '--extractor std1', whose features were "
               "not trained with differential privacy (it is the total epsilon of a DP "
               "feature extractor composed with the head)")
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        assert _remove(tmp_path, "--data-dir", str(tmp_path), "--extractor", "std1",
                       "--target-epsilon", "3") == 0
    assert _no_effect_warnings(record) == [message]


@pytest.mark.parametrize(("flags", "extractor"), [
    (["--solver", "auto", "--cg-tol", "1e-8"], None),  # auto picks CG for most steps
    (["--solver", "cg", "--cg-tol", "1e-8"], None),
    (["--solver", "cholesky"], None),
    (["--dataset", "MNIST", "--data-dir", "{tmp}"], None),
    (["--data-dir", "{tmp}", "--extractor", "dp1"], {"name": "dp1", "private": False}),
    (["--data-dir", "{tmp}", "--extractor", "dp1", "--target-epsilon", "3"],
     {"name": "dp1", "private": True}),
    (["--data-dir", "{tmp}", "--extractor", "std1"], {"name": "std1", "private": False}),
])
def test_remove_is_quiet_about_flags_that_act(flags, extractor, tmp_path, removal_stub):
    removal_stub["extractor"] = extractor
    flags = [f.format(tmp=tmp_path) for f in flags]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert _remove(tmp_path, *flags) == 0
    assert _no_effect_warnings(record) == []


# ---- unlearn-features -------------------------------------------------------------------------


def _update(order, tau):
    return {"order": order, "tau": tau, "num_gradients": 10, "num_hvps": 0 if order == 1 else 5,
            "solver_iterations": 0 if order == 1 else 3, "applied": True, "reason": None}


def _method(order, tau):
    return {"acc": 0.9, "residual": 1.0, "distance_retrained": 0.5, "seconds": 0.01,
            "speedup_vs_retrain": 100.0, "update": _update(order, tau)}


def _linear_method(order, tau):
    return {"order": order, "residual": 0.1, "residual_before": 2.0, "bound": 1.0,
            "sigma_required": 3.0, "distance_retrained": 0.02, "acc": 0.95, "time_s": 0.001,
            "tau": tau}


def _feature_result(*, linear=True, linear_tau=0.0271):
    """A small result of the shape :func:`run_feature_experiment` returns (made up)."""
    result = {
        "config": {"dataset": "digits", "mode": "remove", "value": 0.0, "n_rows": 50,
                   "l2": 10.0, "steps": 2, "tau": 0.5, "linear": linear},
        "data": {"dataset": "digits", "n_train": 100, "n_test": 20, "n_features": 64,
                 "num_classes": 10, "columns": [3, 4], "column_names": ["p3", "p4"],
                 "num_affected": 80, "num_params": 650, "update_steps": 2},
        "original": {"acc": 0.93, "residual": 300.0, "distance_retrained": 1.8,
                     "seconds": 1.0},
        "retrained": {"acc": 0.92, "residual": 1e-6, "seconds": 2.0},
        "methods": {"first_order": _method(1, 0.5), "second_order": _method(2, None)},
    }
    if linear:
        result["linear"] = {
            "binary": [3, 8], "lam": 0.01, "n_train": 285, "num_affected": 285,
            "epsilon": 0.1, "delta": 0.01, "acc_original": 0.97, "acc_retrained": 0.98,
            "distance_original": 1.0,
            "methods": {"order1": _linear_method(1, linear_tau),
                        "order2": _linear_method(2, None)}}
    return result


LINEAR_STEPS = ("one update per order for all the columns at once: first order one step "
                "with its own curvature step size (tau 0.0271), second order one Newton step")


def test_unlearn_features_says_which_steps_the_certified_variant_makes(tmp_path, capsys,
                                                                      monkeypatch):
    seen = []

    def fake_run(config):
        seen.append(config)
        return _feature_result()

    monkeypatch.setattr(feature_experiment, "run_feature_experiment", fake_run)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main(["unlearn-features", "--no-plots", "--out", str(tmp_path), "--tau", "0.5",
                     "--steps", "2"]) == 0
    assert _no_effect_warnings(record) == []  # --tau and --steps act on the other updates
    assert (seen[0].tau, seen[0].steps) == (0.5, 2)
    out = capsys.readouterr().out
    assert (f"certified linear: {LINEAR_STEPS} (--tau and --steps apply to the other "
            "updates)\n") in out
    # before the variant's per-order lines
    assert out.index("certified linear: one update") < out.index("certified linear order1")
    md = (tmp_path / "features_digits.md").read_text()
    assert (f"The certified variant makes {LINEAR_STEPS} (tau and steps apply to the other "
            "updates).") in md


def test_the_report_states_the_linear_step_only_where_the_variant_ran():
    md = feature_experiment.render_feature_report(_feature_result(linear=False))
    assert "certified variant makes" not in md
    # a result without the first-order step size (written before it was recorded)
    md = feature_experiment.render_feature_report(_feature_result(linear_tau=None))
    assert ("The certified variant makes one update per order for all the columns at once: "
            "first order one step with its own curvature step size, second order one Newton "
            "step (tau and steps apply to the other updates).") in md
