"""``fastunlearn evaluate DIR [--out OUT]``: every metric from saved logits.

``DIR`` is a logits directory in the fixture layout (:mod:`.fixtures`). Writes
``evaluation.json`` (all numbers, per-example epsilons included; strict JSON, with
infinite and nan values as the strings ``"inf"`` and ``"nan"``), ``evaluation.md`` (one
table row per method) and ``epsilon_hist.png`` into ``OUT``. The top-level CLI registers it
with :func:`add_parser` and dispatches to :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic_files import write_text
from .._cli_output import add_json_flag, command_error, json_output
from ..cli_types import (
    COMMON_FLAGS,
    HelpFormatter,
    WholeFlagParser,
    add_progress_flags,
    name_flags,
    resolve_progress,
)
from ..cli_types import path as _path

__all__ = ["add_parser", "evaluation_settings", "run"]


def _delta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to ``subparsers`` (``ArgumentParser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "evaluate",
        help="epsilon-hat, competition score, accuracies and fairness from saved logits",
        description="Every metric from saved logits (a logits directory in the fixture "
        "layout): evaluation.json, evaluation.md and epsilon_hist.png in --out",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  fastunlearn evaluate fastunlearn-forget/logits   # the logits `forget` wrote\n"
        "  fastunlearn evaluate runs/logits --methods finetune,scrub --no-baseline\n",
    )
    p.add_argument("dir", type=_path,
                   help="logits directory (logits_retain.npy + <method>/logits_unlearn.npy)")
    p.add_argument("--out", type=_path, default=None,
                   help="output folder (default: ./evaluation-<name of DIR>)")
    p.add_argument("--methods", default=None,
                   help="comma-separated method folders (default: all)")
    p.add_argument("--delta", type=_delta, default=0.05, help="Seed A's delta (default 0.05)")
    p.add_argument("--competition-delta", type=_delta, default=1e-5,
                   help="the competition's delta (default 1e-5)")
    p.add_argument("--device", default=None, help="cpu (default), cuda or cuda:<i>")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the retrained-vs-retrained noise floor")
    p.add_argument("--no-plots", "--no-plot", dest="no_plot", action="store_true",
                   help="skip the PNG histogram")
    add_progress_flags(p)
    add_json_flag(p)
    p.set_defaults(func=json_output(run), flag_names=_FLAGS)  # flags in warnings too
    return p


#: The evaluate_logits_dir arguments the command's errors name, as the command's flags.
_FLAGS = {**COMMON_FLAGS, "path": "DIR", "methods": "--methods", "delta": "--delta",
          "competition_delta": "--competition-delta"}


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate``; returns the exit status (0 ok, 2 bad input)."""
    from .._device import parse_device
    from .._earlier_results import keep_earlier_run
    from .._output_folder import check_output_folder
    from .evaluate import evaluate_logits_dir
    from .report import json_ready, plot_epsilon_histogram, render_evaluation_markdown

    src = Path(args.dir)
    out = Path(args.out) if args.out else Path.cwd() / f"evaluation-{src.resolve().name}"
    methods = None
    if args.methods is not None:  # an empty list or a repeated name is a mistake, not "all"
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        repeated = sorted({m for m in methods if methods.count(m) > 1})
        if not methods or repeated:
            why = (f"names {', '.join(repeated)} twice" if repeated else "names no method")
            return command_error("evaluate", f"'--methods' {args.methods!r} {why}; leave it "
                                 "out to evaluate every method")
    try:
        if args.device is not None:
            parse_device(args.device)
        check_output_folder(out, argument="out",
                            names=["evaluation.json", "evaluation.md", "epsilon_hist.png"])
        result = evaluate_logits_dir(
            src, methods=methods, delta=args.delta, competition_delta=args.competition_delta,
            baseline=not args.no_baseline, per_example=True, device=args.device,
            progress=resolve_progress(args.progress),
        )
    except (FileNotFoundError, ValueError, TypeError) as exc:
        return command_error("evaluate", name_flags(str(exc), _FLAGS))
    try:
        out.mkdir(parents=True, exist_ok=True)
        # an earlier evaluation with other settings goes to earlier/evaluation-<n>/
        keep_earlier_run(out, "evaluation", evaluation_settings(result), (".json", ".md"),
                         extra_names=("epsilon_hist.png",), settings_of=evaluation_settings)
        write_text(out / "evaluation.json",
            json.dumps(json_ready(result), indent=1, allow_nan=False) + "\n")
        if not args.no_plot:
            plot_epsilon_histogram(result, out / "epsilon_hist.png")
        else:  # an earlier run's histogram would not match these results
            (out / "epsilon_hist.png").unlink(missing_ok=True)
        write_text(out / "evaluation.md", render_evaluation_markdown(
            result, figure=None if args.no_plot else "epsilon_hist.png"))
    except OSError as exc:  # checked before evaluating; a full disk or a race remains
        return command_error("evaluate", f"cannot write the results: {exc}", status=1)
    print(render_evaluation_markdown(result))
    print(f"wrote {out / 'evaluation.json'}, {out / 'evaluation.md'}"
          + ("" if args.no_plot else f", {out / 'epsilon_hist.png'}"))
    args.json_result = json_ready(result)
    return 0


def evaluation_settings(result: Mapping[str, Any]) -> dict[str, Any]:
    """Return the settings an ``evaluation.json`` was made with (as the file records them).

    The evaluated folder, both deltas, the methods and whether the baseline was asked for.
    """
    methods = result.get("methods")
    return {"path": result.get("path"), "delta": result.get("delta"),
            "competition_delta": result.get("competition_delta"),
            "methods": sorted(methods) if isinstance(methods, Mapping) else methods,
            "baseline": "baseline" in result or "baseline_skipped" in result}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m fastunlearn.metrics.cli DIR``)."""
    parser = WholeFlagParser(prog="fastunlearn")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=WholeFlagParser)
    add_parser(sub)
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
