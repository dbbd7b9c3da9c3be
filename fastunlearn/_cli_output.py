"""What the commands print beside their results: ``--json`` documents, warnings, errors.

``--json``: a command's result as one JSON document on stdout, for scripts and ``jq``. Every
experiment command takes the flag the same way: its result (the object it writes to
its JSON file) is printed alone on stdout, and everything it prints for people (per-step
lines, tables, "wrote ..." lines) goes to stderr instead, so that
``fastunlearn remove --json | jq .privacy.budget`` reads a clean stream. A command's runner
stores the document in ``args.json_result``; :func:`json_output` does the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .cli_types import name_flags

__all__ = ["add_json_flag", "json_output", "plain_warnings"]

Runner = Callable[[argparse.Namespace], int]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` to a command's parser."""
    parser.add_argument("--json", action="store_true",
                        help="print the result (what the JSON file holds) as one JSON "
                        "document on stdout; everything else goes to stderr")


def json_output(run: Runner) -> Runner:
    """Wrap a command's runner so that ``--json`` puts only the result on stdout.

    With ``args.json`` set, the runner's own printing goes to stderr and, if it stored a
    document in ``args.json_result`` (also when it returns a non-zero status after a
    partial success), that document is written to the real stdout as strict JSON on one
    line. Without the flag the runner runs as it is.
    """

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        if not getattr(args, "json", False):
            return run(args)
        stdout = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            status = run(args)
        document: Any = getattr(args, "json_result", None)
        if document is not None:
            stdout.write(json.dumps(document, allow_nan=False) + "\n")
            stdout.flush()
        return status

    return wrapped


@contextlib.contextmanager
def plain_warnings(prog: str, flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Show warnings as ``<prog>: warning: <message>`` lines while a command runs.

    ``flags`` maps the library's parameter names to the command's flags: a quoted name in
    a message (``'n_candidates'``) is shown as the flag (``'--candidates'``).

    Python's own format names the library file and line that warned and repeats that
    source line, which reads like a crash in a command's output. Only the format changes
    (``warnings.formatwarning``): filters, ``-W`` options and callers that record warnings
    (``warnings.catch_warnings(record=True)``, ``pytest.warns``) work as before. The
    previous format is put back on exit.
    """
    previous = warnings.formatwarning

    def format_plain(message: Warning | str, category: type[Warning], filename: str,
                     lineno: int, line: str | None = None) -> str:
        kind = "" if category is UserWarning else f" ({category.__name__})"
        text = str(message) if not flags else name_flags(str(message), flags, every=True)
        return f"{prog}: warning{kind}: {text}\n"

    warnings.formatwarning = format_plain
    try:
        yield
    finally:
        warnings.formatwarning = previous


def command_error(command: str, message: str, status: int = 2) -> int:
    """Print ``fastunlearn <command>: error: <message>`` on stderr; return ``status``.

    The form argparse uses for a bad flag, so a value refused after parsing (a folder that
    cannot be written, a data set that is missing) reads the same; status 2 is argparse's
    for bad input, 1 is for a run that failed.
    """
    print(f"fastunlearn {command}: error: {message}", file=sys.stderr)
    return status
