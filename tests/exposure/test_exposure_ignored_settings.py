"""Settings of the canary experiment that the others make pointless are warned about.

From Python (:func:`run_canary_experiment`, fields set to a value other than their
default) and from ``fastunlearn exposure`` (the flags given, even at their default), each
warning once per run: ``lr``, ``weight_decay`` and ``batch_size`` with ``steps=0``,
``enumerate_limit`` with ``n_candidates`` set, and ``--no-plots`` without ``--out``.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from helpers import printed_warnings

from fastunlearn.cli import main
from fastunlearn.exposure import experiment
from fastunlearn.exposure.experiment import CanaryConfig, run_canary_experiment

#: A run of a second or so (a space of 10 secrets).
TINY = {"n_sentences": 30, "secret_length": 1, "insertions": 2, "hidden": 4, "embed_dim": 4,
        "seq_len": 8}
TINY_ARGV = ["exposure", "--n-sentences", "30", "--secret-length", "1", "--insertions", "2",
             "--hidden", "4", "--embed-dim", "4", "--seq-len", "8", "--no-progress"]

TRAINING = "have no effect with steps=0 (for the training)"
ENUMERATE = ("'enumerate_limit' has no effect with 'n_candidates' set (for the default, "
             "n_candidates=None)")
NO_PLOTS = "fastunlearn exposure: warning: '--no-plots' has no effect without '--out' " \
           "(nothing is written)\n"


class _Stop(Exception):
    """Raised by a stub so that nothing after it runs."""


def _stop_before_the_text(monkeypatch) -> None:
    """Make a run stop right after its own warnings (before any text or training)."""
    def no_text(*args, **kwargs):
        raise _Stop("text generation started")

    monkeypatch.setattr(experiment, "generate_corpus", no_text)


def _messages(config: CanaryConfig, monkeypatch) -> list[str]:
    """Start a run of ``config`` (stopped early); return the 'no effect' warnings it gave."""
    _stop_before_the_text(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(_Stop):
            run_canary_experiment(config)
    return [str(w.message) for w in record if "no effect" in str(w.message)]


@pytest.mark.parametrize("settings, expected", [
    ({"steps": 0, "lr": 0.1, "weight_decay": 1e-4, "batch_size": 8},
     [f"'lr', 'weight_decay' and 'batch_size' {TRAINING}"]),
    ({"steps": 0, "batch_size": 8}, ["'batch_size' has no effect with steps=0 (for the "
                                     "training)"]),
    ({"n_candidates": 50, "enumerate_limit": 10}, [ENUMERATE]),
    ({"steps": 0, "weight_decay": 0.5, "n_candidates": 1000, "enumerate_limit": 10},
     ["'weight_decay' has no effect with steps=0 (for the training)", ENUMERATE]),
])
def test_the_fields_that_have_no_effect_are_named(settings, expected, monkeypatch):
    assert _messages(CanaryConfig(**settings), monkeypatch) == expected


@pytest.mark.parametrize("settings", [
    {},
    {"steps": 3, "lr": 0.1, "weight_decay": 1e-4, "batch_size": 8},  # trained with them
    {"steps": 0},
    {"steps": 0, "lr": 3e-3, "batch_size": 32},  # at their defaults: not set by the user
    # seq_len is checked against the text and gives canary unlearning its windows
    {"steps": 0, "seq_len": 16},
    {"n_candidates": 50},
    {"enumerate_limit": 10},  # used: the space is enumerated up to it
])
def test_quiet_when_every_setting_is_used(settings, monkeypatch):
    assert _messages(CanaryConfig(**settings), monkeypatch) == []


def test_a_config_warns_once_however_often_it_is_run(monkeypatch):
    config = CanaryConfig(steps=0, lr=0.1)
    assert len(_messages(config, monkeypatch)) == 1
    assert _messages(config, monkeypatch) == []  # run again: already said
    # the warning points at the caller of run_canary_experiment, not at the library
    with pytest.warns(UserWarning, match="'lr' has no effect with steps=0") as record:
        with pytest.raises(_Stop):
            run_canary_experiment(CanaryConfig(steps=0, lr=0.1))
    assert record[0].filename == __file__


def test_without_steps_the_training_settings_change_nothing():
    """``steps=0``: the learning rate, L2 penalty and windows per step are never read."""
    def outcome(**settings):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warnings are checked above
            res = run_canary_experiment(CanaryConfig(**TINY, steps=0, **settings))
        return res

    a = outcome()
    b = outcome(lr=0.5, weight_decay=0.1, batch_size=3)
    assert a.canary.to_dict() == b.canary.to_dict()
    assert a.control is not None and b.control is not None
    assert a.control.to_dict() == b.control.to_dict()
    assert a.completion == b.completion
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def _untimed(report: str) -> str:
    """``report`` without its wall times (``(0.3 s)``)."""
    return re.sub(r"\(\d+\.\d s\)", "(s)", report)


def test_with_a_sample_size_the_enumeration_limit_changes_nothing():
    """``n_candidates`` set: the space is enumerated only when the sample is not smaller."""
    for n_candidates in (5, 50):  # a sample of 5 (drawn), and one of 50 >= |R| = 10 (exact)
        runs = []
        for limit in (1, 10**6):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runs.append(run_canary_experiment(CanaryConfig(
                    **TINY, steps=1, n_candidates=n_candidates, enumerate_limit=limit)))
        a, b = runs
        assert a.canary.to_dict() == b.canary.to_dict()
        assert a.canary.exhaustive == (n_candidates >= 10)
        # the report too (but for the timings)
        assert _untimed(experiment.format_report(a)) == _untimed(experiment.format_report(b))


def _printed(argv: list[str], monkeypatch) -> list[str]:
    """Run ``main(argv)`` stopped after the run's own warnings; return the 'no effect'
    lines a user sees."""
    _stop_before_the_text(monkeypatch)
    outcome, lines = printed_warnings(lambda: main(argv), _Stop)
    assert isinstance(outcome, _Stop)  # warnings, not an error: the run went on
    return [line for line in lines if "no effect" in line]


def test_the_command_names_each_flag_once_though_the_run_warns_again(monkeypatch):
    lines = _printed(["exposure", "--steps", "0", "--lr", "0.003", "--weight-decay", "0.1",
                      "--batch-size", "8", "--candidates", "50", "--no-plots"], monkeypatch)
    assert lines == [
        NO_PLOTS,
        # '--lr' given at its default value: the command still says it
        "fastunlearn exposure: warning: '--lr', '--weight-decay' and '--batch-size' have no "
        "effect with '--steps 0' (for the training)\n",
    ]  # no flag sets enumerate_limit: nothing said about it with --candidates


@pytest.mark.parametrize("argv", [
    ["exposure", "--steps", "5", "--lr", "0.1", "--batch-size", "8"],
    ["exposure", "--steps", "0", "--seq-len", "16", "--candidates", "50"],
    ["exposure", "--steps", "0", "--no-plots", "--out", "somewhere"],
])
def test_the_command_is_quiet_when_every_flag_is_used(argv, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _printed(argv, monkeypatch) == []


def test_a_whole_run_of_the_command_warns_once_each_and_writes_nothing(monkeypatch, tmp_path,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    outcome, lines = printed_warnings(lambda: main(
        [*TINY_ARGV, "--steps", "0", "--batch-size", "2", "--candidates", "50", "--no-plots"]))
    assert outcome == 0
    assert [line for line in lines if "no effect" in line] == [
        NO_PLOTS,
        "fastunlearn exposure: warning: '--batch-size' has no effect with '--steps 0' (for "
        "the training)\n",
    ]
    assert list(tmp_path.iterdir()) == []  # --no-plots without --out: no file at all
    assert "wrote " not in capsys.readouterr().out
