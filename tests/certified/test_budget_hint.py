"""The removal experiment says when the budget forces a retrain every few removals.

On the bundled digits in one-vs-rest mode with the reference's noise (sigma 10, lam 1e-3) a
budget covers one or two removals: the median removal then looks ~200x faster than
retraining while a removal, retrains included, is only a few times faster. The report and
the console name both speed-ups and say which setting lets one budget cover more.
"""

import math

import pytest

from fastunlearn.certified.experiment import (
    FEW_REMOVALS_PER_BUDGET,
    ExperimentConfig,
    budget_hint,
    run_removal_experiment,
)
from fastunlearn.cli import main
from fastunlearn.report.markdown import render_markdown

pytestmark = pytest.mark.usefixtures("one_thread")

#: the CLI's defaults on digits: OvR, sigma 10, lam 1e-3 (the reference's flags)
FREQUENT_RETRAINS = {"train_mode": "ovr", "lam": 1e-3, "std": 10.0, "epsilon": 1.0,
                     "delta": 1e-4}


def _privacy(**changes):
    privacy = {"retrains": 3, "removals": 10, "removals_supported": 2,
               "removals_supported_is_estimate": False}
    privacy.update(changes)
    return privacy


def test_hint_names_the_counts_and_the_settings_that_help():
    text = budget_hint(_privacy())
    assert "only 2 removal(s)" in text and "3 retrain(s) in 10 removals" in text
    assert "--lam" in text and "--epsilon" in text
    # a larger sigma raises the bounds with the budget (noisier weights): not suggested
    assert "--std" not in text


@pytest.mark.parametrize("changes", [
    {"retrains": 0},                                           # the budget never ran out
    {"removals_supported_is_estimate": True},                  # projected, not seen
    {"removals_supported": None},
    {"removals_supported": FEW_REMOVALS_PER_BUDGET + 1},       # a budget covers enough
])
def test_no_hint_where_the_budget_is_not_the_problem(changes):
    assert budget_hint(_privacy(**changes)) is None


def test_with_std_0_the_hint_names_the_noise_not_lam_or_epsilon():
    text = budget_hint(_privacy(sigma=0.0, removals_supported=0))
    assert text.startswith("with --std 0 the budget is 0 and every removal retrains (3 "
                           "retrain(s) in 10 removals)")
    assert "a positive --std" in text and "--lam" not in text and "--epsilon" not in text
    assert "--std" not in budget_hint(_privacy(sigma=10.0))


def test_hint_at_the_threshold():
    assert budget_hint(_privacy(removals_supported=FEW_REMOVALS_PER_BUDGET)) is not None
    assert budget_hint(_privacy(removals_supported=0)) is not None


@pytest.fixture(scope="module")
def frequent_retrains():
    config = ExperimentConfig(**FREQUENT_RETRAINS, num_removes=12, result_dir=None)
    return run_removal_experiment(config, echo=lambda line: None)


def test_frequent_retrains_get_the_hint_and_the_amortised_speedup(frequent_retrains):
    result = frequent_retrains
    privacy, timings = result.privacy, result.timings
    assert privacy["retrains"] >= 3
    assert privacy["removals_supported"] <= FEW_REMOVALS_PER_BUDGET
    assert privacy["budget_hint"] == budget_hint(privacy)
    # the amortised speed-up is retraining over the mean removal, retrains included ...
    assert math.isclose(timings["speedup_with_retrains"],
                        timings["retrain_seconds"] / timings["removal_seconds_mean"],
                        rel_tol=1e-12)
    # ... whose mean holds every automatic retrain (exact: the total includes them) ...
    retrains = timings["automatic_retrain_seconds"]
    assert len(retrains) == privacy["retrains"]
    assert timings["removal_seconds_mean"] * len(result.records) >= sum(retrains)
    # ... and so lies below the median removal's (a retrain costs about a retraining; no
    # wall-clock ratio beyond that: the eager step under load was once within 5x)
    assert timings["speedup_with_retrains"] < timings["speedup"]
    text = render_markdown(result.to_dict())
    assert "| hint | one budget covered only" in text
    assert "mean removal incl. automatic retrains |" in text


def test_a_larger_lam_covers_the_removals_without_a_hint():
    settings = dict(FREQUENT_RETRAINS, lam=1e-2)
    config = ExperimentConfig(**settings, num_removes=12, result_dir=None)
    result = run_removal_experiment(config, echo=lambda line: None)
    assert result.privacy["retrains"] == 0
    assert result.privacy["budget_hint"] is None


def test_console_summary_prints_the_hint_and_both_speedups(tmp_path, capsys):
    assert main(["remove", "--num-removes", "12", "--no-plots", "--result-dir",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    time_line = next(line for line in out.splitlines() if line.startswith("time:"))
    assert "median removal" in time_line and "mean incl. the automatic retrains" in time_line
    hint = next(line for line in out.splitlines() if line.startswith("hint:"))
    assert "--lam" in hint and "--epsilon" in hint
