"""Every command shows progress bars the same way: on a terminal by default, or as told.

``--progress`` forces the bars on (a log file someone tails), ``--no-progress`` off
(``extract`` keeps ``--quiet`` for it); with neither, the bars show only when stderr is a
terminal. Before, ``forget`` and ``extract`` always drew them (into logs too) while
``repair``, ``unlearn-features``, ``evaluate`` and ``exposure`` never did unless asked,
so a CIFAR ``repair`` trained for minutes without a sign of life.
"""

from __future__ import annotations

import io
import sys

import pytest
from helpers import COMMAND_ARGS as COMMANDS

from fastunlearn.certified.experiment import ExperimentConfig, run_removal_experiment
from fastunlearn.cli import build_parser, main
from fastunlearn.cli_types import resolve_progress

TINY_EXPOSURE = ["exposure", "--steps", "3", "--n-sentences", "30", "--secret-length", "1",
                 "--insertions", "2", "--hidden", "4", "--embed-dim", "4", "--seq-len", "8",
                 "--batch-size", "2"]


class _Terminal(io.StringIO):
    """A captured stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_takes_both_flags_and_defaults_to_the_terminal(command):
    parser = build_parser()
    args = COMMANDS[command]
    assert parser.parse_args([command, *args]).progress is None
    assert parser.parse_args([command, *args, "--progress"]).progress is True
    assert parser.parse_args([command, *args, "--no-progress"]).progress is False


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_both_flags_at_once_are_a_clean_error(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, *COMMANDS[command], "--progress",
                                   "--no-progress"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_extract_keeps_quiet_as_no_progress():
    args = build_parser().parse_args(["extract", "--data-dir", "data", "--quiet"])
    assert args.progress is False


def test_resolve_progress_follows_the_flag_then_stderr(monkeypatch):
    assert resolve_progress(True) is True and resolve_progress(False) is False
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert resolve_progress(None) is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert resolve_progress(None) is False
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, a detached process
    assert resolve_progress(None) is False
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)  # isatty on a closed stream: ValueError
    assert resolve_progress(None) is False


@pytest.mark.parametrize(("flags", "terminal", "bar"), [
    ([], True, True),                 # someone watches: a bar
    ([], False, False),               # a log or a pipe: none
    (["--progress"], False, True),    # asked for
    (["--no-progress"], True, False),
])
def test_exposure_draws_its_training_bar_as_the_flags_say(flags, terminal, bar, tmp_path,
                                                          monkeypatch, capsys):
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main([*TINY_EXPOSURE, *flags, "--out", str(tmp_path)]) == 0
    assert ("train:" in err.getvalue() and "/3 [" in err.getvalue()) is bar, err.getvalue()


def test_removal_experiment_draws_the_bar_it_is_asked_for_off_a_terminal(monkeypatch):
    """A notebook's stderr is no terminal: ``progress=True`` still means a bar."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    config = ExperimentConfig(train_mode="binary", lam=1e-2, std=1.0, num_removes=3,
                              result_dir=None)
    run_removal_experiment(config, echo=None, progress=True)
    assert "removal" in err.getvalue()
    err.seek(0)
    err.truncate()
    run_removal_experiment(config, echo=None, progress=False)
    assert err.getvalue() == ""
