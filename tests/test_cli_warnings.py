"""Warnings in a command's output read as ``fastunlearn <command>: warning: ...`` lines."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from fastunlearn._cli_output import plain_warnings
from fastunlearn.cli import main


def test_main_puts_the_format_back(tmp_path):
    """In process (pytest records the warning); the printed line is checked below."""
    with pytest.warns(UserWarning, match="'--subsample-ratio' has no effect"):
        status = main(["remove", "--train-mode", "binary", "--subsample-ratio", "0.5",
                       "--num-removes", "1", "--out", str(tmp_path / "out"), "--no-plots"])
    assert status == 0
    assert warnings.formatwarning is warnings._formatwarning_orig  # type: ignore[attr-defined]


def test_the_format_is_restored_and_recording_still_works():
    before = warnings.formatwarning
    with pytest.warns(RuntimeWarning, match="kept"), plain_warnings("fastunlearn x"):
        warnings.warn("kept", RuntimeWarning, stacklevel=1)
        assert warnings.formatwarning("m", RuntimeWarning, "f.py", 3) == \
            "fastunlearn x: warning (RuntimeWarning): m\n"
        assert warnings.formatwarning("m", UserWarning, "f.py", 3) == \
            "fastunlearn x: warning: m\n"
    assert warnings.formatwarning is before
    with pytest.raises(ValueError), plain_warnings("p"):
        raise ValueError
    assert warnings.formatwarning is before


def test_quoted_parameter_names_become_the_commands_flags():
    flags = {"n_candidates": "--candidates", "value": "--value"}
    with plain_warnings("fastunlearn x", flags=flags):
        line = warnings.formatwarning(
            "'value' 1e10 is far; use 'n_candidates' >= 1000, not 'other'; its value is odd",
            UserWarning, "f.py", 3)
    # quoted names only: the word value in prose and unknown names stay as they are
    assert line == ("fastunlearn x: warning: '--value' 1e10 is far; use '--candidates' >= "
                    "1000, not 'other'; its value is odd\n")


@pytest.mark.parametrize(("argv", "parameter", "flag"), [
    (["exposure"], "n_candidates", "--candidates"),
    (["unlearn-features"], "value", "--value"),
    (["forget"], "seeds", "--seeds"),
])
def test_commands_give_their_flag_names_to_the_warnings(argv, parameter, flag):
    from fastunlearn.cli import build_parser

    args = build_parser(argv[0]).parse_args(argv)
    assert args.flag_names[parameter] == flag


def test_python_m_fastunlearn_prints_plain_warnings(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "fastunlearn", "remove", "--train-mode", "binary",
         "--subsample-ratio", "0.5", "--num-removes", "1", "--out", str(tmp_path / "o"),
         "--no-plots"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if "subsample-ratio" in line]
    assert lines == ["fastunlearn remove: warning: '--subsample-ratio' has no effect with "
                     "'--train-mode binary' (as in the reference, where it subsamples the "
                     "negatives of each one-vs-rest class)"]
    assert "UserWarning" not in run.stderr and ".py:" not in run.stderr
