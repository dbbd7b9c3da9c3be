"""Argument types and the help formatter for the ``fastunlearn`` commands.

Bad values become clean argparse errors.

Every command's parser (each in the module ``fastunlearn/cli.py`` names in ``COMMANDS``)
uses these, so one value is rejected with the same message everywhere (exit
status 2, the message naming the flag).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ._no_effect import no_effect_message

__all__ = [
    "COMMON_FLAGS",
    "GivenFlag",
    "HelpFormatter",
    "MAX_INT",
    "MAX_SEED",
    "add_progress_flags",
    "given_fields",
    "integer",
    "name_flags",
    "non_negative_float",
    "non_negative_int",
    "number",
    "open_unit",
    "path",
    "positive_float",
    "positive_int",
    "ratio",
    "resolve_progress",
    "seed",
    "warn_unused_flags",
]

#: Largest count any flag takes: the largest int64 (torch sizes and ``sys.maxsize``); above
#: it every consumer overflows (``islice``, tensor shapes, generator seeds).
MAX_INT = 2**63 - 1

#: Largest ``--seed``: seeds are 32-bit, so that every derived seed (``seed * 16 + class``,
#: ``seed + offset``) still fits the 64-bit torch generators.
MAX_SEED = 2**32 - 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show flags' defaults and keep the examples' line breaks (every command's help).

    A default is appended unless it is ``None``/``False`` (nothing to show) or the help
    text already gives one ("(default ...").
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "(default" in text:
            return action.help
        return super()._get_help_string(action)


def number(text: str) -> float:
    """Parse a finite real number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number > 0."""
    value = number(text)
    if value <= 0:
        rounded = " (0.0 in float64: below its smallest positive number)" if (
            value == 0 and _written_positive(text)) else ""
        raise argparse.ArgumentTypeError(f"must be positive, got {text}{rounded}")
    return value


def _written_positive(text: str) -> bool:
    """Whether ``text`` writes a number above 0 (``1e-400``), whatever float() makes of it."""
    from decimal import Decimal, InvalidOperation

    try:
        return Decimal(text.strip()) > 0
    except InvalidOperation:
        return False


def non_negative_float(text: str) -> float:
    """Parse a finite number >= 0."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {text}")
    return value


def open_unit(text: str) -> float:
    """Parse a number in (0, 1)."""
    value = number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def ratio(text: str) -> float:
    """Parse a number in (0, 1]."""
    value = number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def integer(text: str, minimum: int, maximum: int = MAX_INT) -> int:
    """Parse an integer in ``[minimum, maximum]`` (``maximum`` defaults to :data:`MAX_INT`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """Parse an integer >= 1."""
    return integer(text, 1)


def non_negative_int(text: str) -> int:
    """Parse an integer >= 0."""
    return integer(text, 0)


def seed(text: str) -> int:
    """Parse a seed: an integer in ``[0, MAX_SEED]`` (``0 .. 2**32 - 1``)."""
    return integer(text, 0, MAX_SEED)


def path(text: str) -> str:
    """Parse a file or folder path: any non-empty text (``''`` would silently mean ``.``)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (use . for the current folder)")
    return text


def add_progress_flags(parser: argparse.ArgumentParser, *aliases_off: str) -> None:
    """Add ``--progress`` / ``--no-progress`` (and ``aliases_off`` of the latter).

    Every command shows its progress bars the same way: on a terminal by default (the
    parsed ``progress`` is then None, see :func:`resolve_progress`), forced on or off by
    the flags, so that logs and pipes get no bar unless asked for.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_const", const=True,
                       help="show progress bars (default: only when stderr is a terminal)")
    group.add_argument("--no-progress", *aliases_off, dest="progress", action="store_const",
                       const=False, help="no progress bars")
    parser.set_defaults(progress=None)


def resolve_progress(flag: bool | None) -> bool:
    """Return the ``--progress`` / ``--no-progress`` choice, else whether stderr is a tty.

    The bars go to stderr: with neither flag they show only where someone watches.
    """
    if flag is not None:
        return bool(flag)
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


#: The settings every command takes from the same flags, as the library's errors name
#: them: the data and cache folders, the device and the output folder (``result_dir``,
#: ``out_dir`` or ``out`` in the library, ``--out`` on the command line; ``remove`` and
#: ``repair`` name their ``--result-dir``, the reference's flag, which ``--out`` aliases).
COMMON_FLAGS: Mapping[str, str] = {
    "data_dir": "--data-dir", "cache_dir": "--cache-dir", "device": "--device",
    "result_dir": "--out", "out_dir": "--out", "out": "--out",
}


def name_flags(message: str, flags: Mapping[str, str], *, every: bool = False) -> str:
    """Return a ``message`` of the Python API with its parameter names shown as flags.

    The library's errors start with the argument at fault, quoted (``'spec' 'class:10':
    ...``); a command that passes a flag on as that argument shows ``'--forget'
    'class:10': ...`` instead. ``flags`` maps a parameter name to its flag. By default only
    the leading name is replaced: quoted words later in an error (values, lists of a
    config's fields) are kept as they are. ``every=True`` replaces every quoted name that
    ``flags`` knows, wherever it stands (warnings name their parameters anywhere).
    """
    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"'{flags[name]}'" if name in flags else match.group(0)

    if every:
        # a setting shown as its negating flag shows the flag's values (``'linear': False ->
        # True`` is ``'--no-linear': True -> False``: the flag was given, and no longer is)
        return _NEGATED_CHANGE.sub(_negated_values, _QUOTED_NAME.sub(flag, message))
    match = _QUOTED_NAME.match(message)
    return message if match is None else flag(match) + message[match.end():]


#: A parameter name in quotes, as the library's messages name their arguments.
_QUOTED_NAME = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)'")

#: A negating flag (``--no-linear`` sets ``linear=False``) with a change of its setting's
#: value, as the warning about an earlier run's settings shows it.
_NEGATED_CHANGE = re.compile(r"'(--no-[A-Za-z0-9-]+)': (True|False) -> (True|False)")


def _negated_values(match: re.Match[str]) -> str:
    negate = {"True": "False", "False": "True"}
    return f"'{match.group(1)}': {negate[match.group(2)]} -> {negate[match.group(3)]}"


class WholeFlagParser(argparse.ArgumentParser):
    """An argument parser that takes only whole flag names (``allow_abbrev=False``).

    argparse accepts any unambiguous prefix of a flag by default, so ``fastunlearn forget
    --seed 7`` (a flag of other commands) would run ``--seeds 7``; here it is refused as an
    unrecognized argument.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Create the parser; ``allow_abbrev`` defaults to False."""
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class GivenFlag(argparse.Action):
    """Store an option's value and note its ``dest`` in ``args.given_flags`` (a set).

    Tells a flag given on the command line from its default, so that a flag which has no
    effect with the other settings can be reported (:func:`warn_unused_flags`).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        """Store ``values`` and add this option's ``dest`` to ``namespace.given_flags``."""
        setattr(namespace, self.dest, values)
        namespace.given_flags = {*getattr(namespace, "given_flags", ()), self.dest}


def given_fields(args: argparse.Namespace,
                 renamed: Mapping[str, str] | None = None) -> set[str]:
    """Return the options given on the command line, as the config fields they set.

    ``args.given_flags`` holds the ``dest`` of each option given (:class:`GivenFlag`);
    ``renamed`` maps a ``dest`` to its field where they differ (``{"rows": "n_rows"}``).
    """
    renamed = renamed or {}
    return {renamed.get(dest, dest) for dest in getattr(args, "given_flags", ())}


def _flag(dest: str) -> str:
    """``'top_k'`` -> ``'--top-k'``."""
    return "--" + dest.replace("_", "-")


def warn_unused_flags(args: argparse.Namespace,
                      rules: Sequence[tuple[bool, Sequence[str], str]]) -> None:
    """Warn once per rule about given flags that have no effect with the other settings.

    ``rules``: ``(applies, dests, why)``; when ``applies``, the flags among ``dests`` given
    on the command line are named in one line: ``'--a' and '--b' have no effect <why>``.
    The run goes on (the flags change nothing); the command line shows the warning as
    ``fastunlearn <command>: warning: ...``.
    """
    given = getattr(args, "given_flags", ())
    for applies, dests, why in rules:
        unused = [_flag(d) for d in dests if d in given]
        if applies and unused:
            warnings.warn(no_effect_message(unused, why), UserWarning, stacklevel=2)
