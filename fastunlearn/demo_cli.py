"""The ``fastunlearn demo`` command: the certified-removal walk-through on digits."""

from __future__ import annotations

import argparse

from ._cli_output import command_error
from .cli_types import name_flags, path

#: The settings the demo's errors name, as its flags (``python -m fastunlearn.demo`` too).
DEMO_FLAGS = {"device": "--device", "result_dir": "--result-dir"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command to the ``fastunlearn`` parser (``make demo`` runs it)."""
    p = subparsers.add_parser("demo", help="run the digits demo")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:<i> (default: cuda if available, else cpu)")
    p.add_argument("--result-dir", type=path, default=None,
                   help="also write JSON, PNG plots and a Markdown report of the first two "
                        "sections")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    from ._device import parse_device

    if args.device is not None:
        try:
            parse_device(args.device)
        except ValueError as exc:
            return command_error("demo", name_flags(str(exc), DEMO_FLAGS))
    if args.result_dir is not None:
        try:  # the demo writes its two reports only after it has run: refuse a bad folder first
            demo.check_result_dir(args.result_dir)
        except ValueError as exc:
            return command_error("demo", name_flags(str(exc), DEMO_FLAGS))
    argv = [] if args.device is None else ["--device", args.device]
    if args.result_dir is not None:
        argv += ["--result-dir", args.result_dir]
    return demo.main(argv)
