"""Harness settings that others make pointless warn, naming them, and change nothing.

``overrides`` the method's other settings make pointless are named with the method, even
at their default value (the user set them): ``retrain``'s ``gamma`` and ``milestones``
under the oracles' cosine schedule, SCRUB's ``lr_decay_rate`` when no decay epoch is
reached. ``data_dir`` with the bundled digits and ``plots`` without ``out_dir`` warn from
Python; ``fastunlearn forget`` shows ``--data-dir`` and ``--published-defaults`` (with a
data set other than digits) once, naming its flags.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import printed_warnings

import fastunlearn.harness as harness_pkg
from fastunlearn.cli import main
from fastunlearn.harness import HarnessConfig, load_harness_data


def _warned(**kwargs: Any) -> list[str]:
    """Return the UserWarnings of ``HarnessConfig(cache_dir=None, **kwargs)``."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        HarnessConfig(cache_dir=None, **kwargs)
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def _retrain(**overrides: Any) -> list[str]:
    return _warned(methods=("retrain",), overrides={"retrain": overrides})


# --- the method overrides --------------------------------------------------------------------

RETRAIN_COSINE = ("'overrides' for 'retrain': 'gamma' and 'milestones' have no effect with "
                  "scheduler='cosine' (for the 'multistep' scheduler)")


def test_retrain_schedule_overrides_under_the_oracle_recipe_warn() -> None:
    assert _retrain(gamma=0.5, milestones=(2,)) == [RETRAIN_COSINE]
    # at RetrainConfig's defaults: set on purpose, they still do nothing
    assert _retrain(gamma=0.1, milestones=(35, 70, 90)) == [RETRAIN_COSINE]
    # multistep given: the recipe's milestones=() leaves gamma nothing to do
    assert _retrain(scheduler="multistep", gamma=0.5) == [
        "'overrides' for 'retrain': 'gamma' has no effect with scheduler='multistep' and "
        "milestones=() (the factor applied at each milestone)"]


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_retrain_quiet_where_the_schedule_is_used(dataset: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HarnessConfig(methods=("retrain",), dataset=dataset, cache_dir=None)
        HarnessConfig(methods=("retrain",), dataset=dataset, cache_dir=None, overrides={
            "retrain": {"scheduler": "multistep", "milestones": (5,), "gamma": 0.5}})


def test_unused_schedule_fields_are_named_once() -> None:
    got = _warned(methods=("two_stage", "neggrad_plus"), overrides={
        "two_stage": {"gamma": 0.1}, "neggrad_plus": {"scheduler": "cosine"}})
    assert got == [
        "'overrides' for 'two_stage': 'gamma' has no effect (two_stage trains both stages "
        "without a schedule)",
        "'overrides' for 'neggrad_plus': 'scheduler' has no effect (neggrad_plus runs its own "
        "loop without a schedule)"]


def test_scrub_and_fisher_overrides_that_are_not_read_warn() -> None:
    got = _warned(methods=("scrub", "fisher"), overrides={
        "scrub": {"epochs": 3, "lr_decay_rate": 0.1, "max_steps": 0, "forget_batch_size": 32},
        "fisher": {"forget_class_rows": False, "class_row_var": 1e-4}})
    assert got == [
        "'overrides' for 'scrub': 'lr_decay_rate' has no effect with epochs=3 and "
        "lr_decay_epochs=(8,) (no decay epoch is reached)",
        "'overrides' for 'scrub': 'forget_batch_size' has no effect with max_steps=0 (for the "
        "max steps on the forget set)",
        "'overrides' for 'fisher': 'class_row_var' has no effect with forget_class_rows=False "
        "(the noise variance of the zeroed class rows)"]


def test_scrub_overrides_that_are_read_and_the_defaults_stay_quiet() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HarnessConfig(methods="all", cache_dir=None)
        HarnessConfig(methods="all", dataset="mnist", cache_dir=None)  # published defaults
        HarnessConfig(methods=("scrub",), cache_dir=None, overrides={"scrub": {
            "epochs": 10, "lr_decay_rate": 0.5, "max_steps": 1, "forget_batch_size": 8}})
        HarnessConfig(methods=("scrub",), cache_dir=None, overrides={"scrub": {"epochs": 3}})


# --- data_dir and plots ----------------------------------------------------------------------

DATA_DIR = ("'data_dir' has no effect with dataset='digits' (bundled; the folder is read for "
            "the vision data sets)")
PLOTS = "'plots' has no effect with out_dir=None (nothing is written)"


def test_data_dir_with_the_digits_warns(tmp_path: Path) -> None:
    assert _warned(data_dir=str(tmp_path)) == [DATA_DIR]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HarnessConfig(dataset="mnist", data_dir=str(tmp_path), cache_dir=None)
        HarnessConfig(cache_dir=None)


def test_data_dir_is_not_read_for_the_digits(tmp_path: Path) -> None:
    a = load_harness_data("digits", str(tmp_path / "missing"))
    b = load_harness_data("digits")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_plots_without_out_dir_warns(tmp_path: Path) -> None:
    assert _warned(plots=False) == [PLOTS]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HarnessConfig(plots=False, out_dir=str(tmp_path), cache_dir=None)
        HarnessConfig(cache_dir=None)  # the default: nothing to say


# --- the forget command ----------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the stubbed run: the command got as far as the run."""


def _printed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
             *argv: str) -> tuple[list[str], list[HarnessConfig]]:
    """Run ``forget`` with the run stubbed; return the warning lines shown and the configs."""
    configs: list[HarnessConfig] = []

    def fake(config: HarnessConfig, **kwargs: Any) -> dict:
        configs.append(config)
        raise _Stop

    monkeypatch.setattr(harness_pkg, "run_harness", fake)
    outcome, lines = printed_warnings(lambda: main([
        "forget", "--no-cache", "--out", str(tmp_path / "out"), "--method", "finetune",
        *argv]), _Stop)
    assert isinstance(outcome, _Stop)  # warnings, not errors: the run went on
    return lines, configs


def test_cli_data_dir_with_the_digits_is_named_once_by_its_flag(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines, configs = _printed(monkeypatch, tmp_path, "--data-dir", str(tmp_path))
    assert lines == ["fastunlearn forget: warning: '--data-dir' has no effect with '--dataset "
                     "digits' (bundled; the folder is read for the vision data sets)\n"]
    assert configs[0].data_dir == str(tmp_path)  # kept, as given


def test_cli_published_defaults_with_another_data_set_warns_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv = ("--dataset", "mnist", "--data-dir", str(tmp_path))
    lines, given = _printed(monkeypatch, tmp_path, *argv, "--published-defaults")
    assert lines == ["fastunlearn forget: warning: '--published-defaults' has no effect with "
                     "'--dataset mnist' (other data sets always get the published defaults)\n"]
    plain_lines, plain = _printed(monkeypatch, tmp_path, *argv)
    assert plain_lines == []
    assert given[0] == plain[0]  # the very same config
    assert given[0].method_settings() == plain[0].method_settings()


def test_cli_published_defaults_on_the_digits_stays_quiet(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines, configs = _printed(monkeypatch, tmp_path, "--published-defaults")
    assert lines == []
    assert configs[0].digits_defaults is False
