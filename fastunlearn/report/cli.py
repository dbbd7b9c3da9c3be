"""``fastunlearn html REPORT.md [REPORT.md ...] [--out FILE]``: reports as one HTML file each.

Each Markdown report becomes a self-contained ``<stem>.html`` beside it (its PNG plots
embedded, see :func:`~fastunlearn.report.html.write_html_report`); ``--out`` names the file
when there is one report. The top-level CLI registers it with :func:`add_parser` and
dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._cli_output import command_error
from .._output_folder import check_output_folder
from ..cli_types import HelpFormatter, WholeFlagParser
from ..cli_types import path as _path

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``html`` sub-command to ``subparsers`` (``ArgumentParser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "html", help="self-contained HTML pages from Markdown reports (plots embedded)",
        description="Convert Markdown reports written by the other commands into one "
        "self-contained HTML\nfile each (PNG plots embedded, nothing loaded from elsewhere), "
        "to mail or archive.",
        epilog="examples:\n"
        "  fastunlearn html result/exposure.md\n"
        "      writes result/exposure.html\n"
        "  fastunlearn html out/results.md evaluation/evaluation.md\n"
        "      one HTML file beside each report\n"
        "  fastunlearn html result/repair_digits.md --out repair.html",
        formatter_class=HelpFormatter)
    p.add_argument("reports", nargs="+", type=_path, metavar="REPORT.md",
                   help="Markdown report(s) written by fastunlearn")
    p.add_argument("--out", type=_path, default=None,
                   help="HTML file to write (only with one report; default: <report "
                   "stem>.html beside it)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``html``; returns the exit status (0 ok, 2 bad input, 1 a failed write)."""
    from .html import write_html_report

    reports = [Path(r) for r in args.reports]
    if args.out is not None and len(reports) > 1:
        return command_error("html", f"'--out' takes one report, got {len(reports)}; leave "
                             "it out to write each page beside its report")
    written_by: dict[Path, Path] = {}  # page -> the report converted into it
    for report in reports:  # all checked before anything is written
        if not report.exists():
            return command_error("html", f"'REPORT.md' {str(report)!r} does not exist")
        if not report.is_file():
            return command_error("html", f"'REPORT.md' {str(report)!r} is not a file")
        target = Path(args.out) if args.out is not None else report.with_suffix(".html")
        # a.md and a.markdown both become a.html: the second page overwrote the first
        first = written_by.setdefault(target.resolve(), report.resolve())
        if first != report.resolve():
            return command_error("html", f"'REPORT.md' {str(report)!r} and {str(first)!r} "
                                 f"would both be written to {str(target)!r}; convert one of "
                                 "them with '--out'")
        try:  # a read-only folder: a clean error naming the argument, not a temporary file
            check_output_folder(target.parent, argument="out" if args.out else "REPORT.md")
        except (ValueError, TypeError) as exc:
            return command_error("html", str(exc))
    for report in reports:
        try:
            written = write_html_report(report, args.out)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            return command_error("html", str(exc))
        except OSError as exc:
            return command_error("html", f"cannot convert {str(report)!r}: {exc}", status=1)
        print(f"wrote {written}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m fastunlearn.report.cli REPORT.md``)."""
    parser = WholeFlagParser(prog="fastunlearn")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=WholeFlagParser)
    add_parser(sub)
    args = parser.parse_args(["html", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
