"""The ``fastunlearn`` command line: one subcommand per experiment, each in its own module.

This module stays light (no torch, no NumPy): ``fastunlearn --help`` answers at once. A
command's module is imported only when that command is named, and it is light too (its
package's names load on first use, :mod:`fastunlearn._lazy_exports`), so
``fastunlearn <command> --help`` answers at once; torch and the rest load when the command
runs, inside :func:`main`, so Ctrl-C while they load is one line and status 130 instead of
a traceback.

Commands (``fastunlearn <command> --help`` for the flags):
    info              versions, compiled backends (CPU, CUDA and arch list), devices.
    demo              the certified-removal walk-through on digits (``make demo``).
    remove            a certified-removal experiment (the reference ``test_removal.py``
                      flags): JSON, PNG plots and a Markdown report.
    extract           train (or load) a feature extractor (DP, adversarial or standard)
                      and write the features that ``remove --extractor`` reads.
    repair            label-poisoning repair with influence updates.
    unlearn-features  feature unlearning with influence updates vs retraining.
    forget            forgetting methods over seeds vs retrained oracles.
    evaluate          every metric from saved logits.
    exposure          canary exposure of a small character model.
    html              self-contained HTML pages from the Markdown reports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import __version__
from ._cli_output import plain_warnings
from ._interrupt import INTERRUPTED_STATUS
from .cli_types import WholeFlagParser


class _Command(NamedTuple):
    """Where a command's parser is defined, and its line in ``fastunlearn --help``."""

    module: str  # defines ``add_parser(subparsers)``, which adds the command's parser
    help: str  # the same text the module passes to ``add_parser(help=...)`` (a test checks)


#: The commands in the order ``fastunlearn --help`` lists them.
COMMANDS: dict[str, _Command] = {
    "info": _Command("fastunlearn.info_cli", "versions, compiled backends and devices"),
    "demo": _Command("fastunlearn.demo_cli", "run the digits demo"),
    "remove": _Command("fastunlearn.certified.cli",
                       "certified-removal experiment (fit, remove, report)"),
    "extract": _Command("fastunlearn.certified.extract_cli",
                        "train a feature extractor and write features for `remove`"),
    "repair": _Command("fastunlearn.influence.cli",
                       "label-poisoning repair with influence updates (Warnecke et al.)"),
    "unlearn-features": _Command(
        "fastunlearn.influence.feature_cli",
        "feature unlearning with influence updates vs retraining (Warnecke et al.)"),
    "forget": _Command("fastunlearn.harness.cli",
                       "run forgetting methods over seeds vs retrained oracles; table + plots"),
    "evaluate": _Command("fastunlearn.metrics.cli",
                         "epsilon-hat, competition score, accuracies and fairness from saved "
                         "logits"),
    "exposure": _Command("fastunlearn.exposure.cli",
                         "canary exposure of a small character model (memorisation test)"),
    "html": _Command("fastunlearn.report.cli",
                     "self-contained HTML pages from Markdown reports (plots embedded)"),
}


class _CommandParser(WholeFlagParser):
    """The parser of one command: it reports arguments it does not know itself.

    Only whole flag names are taken (:class:`~fastunlearn.cli_types.WholeFlagParser`).

    argparse hands a subcommand's unknown arguments up to the top-level parser, whose error
    shows the top-level usage; here ``fastunlearn extract --verbose`` shows extract's usage
    and ``fastunlearn extract: error: unrecognized arguments: --verbose`` (exit status 2).
    """

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Parse like ``ArgumentParser.parse_known_args``, but exit on any unknown argument."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_command_parser(name: str, subparsers: argparse._SubParsersAction) -> None:
    """Import command ``name``'s module (a light one) and add its full parser."""
    importlib.import_module(COMMANDS[name].module).add_parser(subparsers)


def build_parser(only: str | None = "all") -> argparse.ArgumentParser:
    """Build the argument parser of the ``fastunlearn`` command.

    Args:
        only: ``"all"`` (the default) adds every command's full parser, importing every
            command module. A command's name adds only that command's full parser, and
            every other command as a name with its help line (enough for the listing of
            ``fastunlearn --help`` and for argparse to know the names). ``None`` imports
            nothing: every command as a name only, for the top-level help and errors.

    """
    parser = WholeFlagParser(
        prog="fastunlearn", description="Machine unlearning on fused C++/CUDA kernels."
    )
    parser.add_argument("--version", action="version", version=f"fastunlearn {__version__}",
                        help="print the version and exit (`fastunlearn info`: also torch, "
                        "the compiled kernels and the devices)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for name, command in COMMANDS.items():
        if only in ("all", name):
            _add_command_parser(name, sub)
        else:
            sub.add_parser(name, help=command.help)
    return parser


def _command_word(words: Sequence[str]) -> str | None:
    """Return the command named in ``words``: the first word not a flag (none at the top)."""
    return next((w for w in words if isinstance(w, str) and not w.startswith("-")), None)


def _silence_stdout() -> None:
    """Point file descriptor 1 at the null device.

    Python's flush of ``sys.stdout`` at exit would otherwise raise BrokenPipeError again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (e.g. captured): nothing to silence
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastunlearn`` command; returns the exit status.

    Only the chosen command's module is imported. Ctrl-C at any point from there to the
    end, the import of torch included, prints one line and returns 130. A reader that
    closes the output early (``fastunlearn info --json | head -1``) ends the command
    quietly with status 1, without a traceback.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    command = _command_word(words)  # the command's name for a Ctrl-C before parsing ends
    try:
        args = build_parser(command if command in COMMANDS else None).parse_args(words)
        command = args.command
        # a command's parser may name its flags for the library's parameters (flag_names)
        with plain_warnings(f"fastunlearn {args.command}",
                            flags=getattr(args, "flag_names", None)):
            status = args.func(args)
        sys.stdout.flush()  # a reader that went away (`| head`) is seen here, not at exit
        return status
    except BrokenPipeError:  # the reader closed the pipe: stop quietly, as `cat | head` does
        _silence_stdout()
        return 1
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or a stop where no step can finish
        detail = f": {exc}" if str(exc) else ""  # e.g. which trained models were kept
        prog = "fastunlearn" if command is None else f"fastunlearn {command}"
        print(f"\n{prog}: interrupted (Ctrl-C){detail}", file=sys.stderr)
        return INTERRUPTED_STATUS


if __name__ == "__main__":
    sys.exit(main())
