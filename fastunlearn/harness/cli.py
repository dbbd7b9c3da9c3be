r"""The ``fastunlearn forget`` command: compare forgetting methods against retrained oracles.

Example::

    fastunlearn forget --method finetune,neggrad,influence --dataset digits \\
        --forget class:3 --seeds 3 --oracles 4 --out runs/digits-class3

Ctrl-C during the method runs stops after the run in progress: the finished runs are
scored and written to ``--out`` (the rest marked "not run") and the exit status is 130; a
second Ctrl-C aborts at once. Ctrl-C while the original model and the oracles train aborts
at once (the models trained before it stay in the cache) and writes nothing.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import warnings
from typing import Any

from .._cli_output import add_json_flag, command_error, json_output
from .._interrupt import INTERRUPTED_STATUS, GracefulStop
from .._output_folder import check_output_folder
from .._unused_settings import UnusedRule, unused_setting_messages
from ..cli_types import (
    COMMON_FLAGS,
    WholeFlagParser,
    add_progress_flags,
    name_flags,
    resolve_progress,
)
from ..cli_types import path as _path
from ..cli_types import positive_float as _positive_float
from ..cli_types import positive_int as _positive_int
from ..cli_types import seed as _seed

__all__ = ["add_parser", "main", "parse_set", "run"]

#: ``--cache-dir`` when it is not given (and ``--no-cache`` is not either).
_DEFAULT_CACHE = ".fastunlearn-cache"


def _value(text: str) -> Any:
    """Parse a Python literal (number, bool, None, tuple), else return the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    try:  # nan and inf: the method's config then says that it needs a finite number
        return float(text)
    except ValueError:
        return text


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ``--set method.key=value`` items into ``{method: {key: value}}``.

    Raises:
        ValueError: An item without ``method.key=value``.

    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        left, eq, value = item.partition("=")
        method, dot, key = left.strip().partition(".")
        if not eq or not dot or not method or not key.strip():
            raise ValueError(f"'--set' takes method.key=value, got {item!r}")
        out.setdefault(method, {})[key.strip()] = _value(value)
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``forget`` sub-command to ``subparsers`` (``ArgumentParser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "forget",
        help="run forgetting methods over seeds vs retrained oracles; table + plots",
        description="Compare forgetting methods against retrained oracles: train the\n"
        "original model and the oracles, run each method over seeds, score every metric\n"
        "and write a table, JSON and plots.",
        epilog="example:\n  fastunlearn forget --method finetune,neggrad,influence "
        "--dataset digits --forget class:3 --seeds 3 --oracles 4 --out runs/digits-class3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", default="all",
                   help="comma-separated methods, or 'all' (default): every registered "
                        "method the forget set suits (antisamples needs one whole class, "
                        "unsir whole classes; the others are skipped with the reason)")
    p.add_argument("--dataset", default="digits",
                   help="digits (bundled, default), mnist, fashion-mnist, cifar10, cifar100, "
                        "svhn (the last five need --data-dir)")
    p.add_argument("--data-dir", type=_path, default=None,
                   help="folder of the torchvision data files")
    p.add_argument("--model", default="small_cnn", help="zoo model (default small_cnn)")
    p.add_argument("--forget", default="class:3",
                   help="forget set: class:K[,K...], random:FRACTION or file:PATH "
                        "(default class:3)")
    p.add_argument("--forget-seed", type=_seed, default=0,
                   help="seed of random: forget sets, 0 .. 2**32-1")
    p.add_argument("--seeds", type=_positive_int, default=3, help="runs per method (3)")
    p.add_argument("--oracles", type=_positive_int, default=4,
                   help="models retrained on the retain set (4)")
    p.add_argument("--epochs", type=_positive_int, default=30,
                   help="training epochs of the original model and the oracles (30)")
    p.add_argument("--lr", type=_positive_float, default=0.05,
                   help="their learning rate, > 0 (0.05)")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="their batch size (64)")
    p.add_argument("--out", type=_path, default="fastunlearn-forget",
                   help="output folder (default ./fastunlearn-forget)")
    p.add_argument("--cache-dir", type=_path, default=None,
                   help="cache of trained originals/oracles (default ./.fastunlearn-cache)")
    p.add_argument("--no-cache", action="store_true",
                   help="train everything, store nothing (not with --cache-dir)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:<i>")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="METHOD.KEY=VALUE",
                   help="override a method's config field, e.g. finetune.lr=0.02 "
                        "(repeatable; checked before training; not seed or progress, "
                        "which --seeds and --progress set)")
    p.add_argument("--published-defaults", action="store_true",
                   help="use the methods' published (CIFAR) defaults also on digits; the "
                        "digits-sized settings (DIGITS_OVERRIDES) apply only to --dataset "
                        "digits, every other data set always gets the published ones")
    p.add_argument("--no-mia", action="store_true", help="skip the SVC MIA-Efficacy")
    p.add_argument("--no-plots", action="store_true",
                   help="write results.json, results.md and the logits only (no PNG)")
    add_progress_flags(p)
    add_json_flag(p)
    # flags in warnings too, except the names a method's config shares with the training
    # flags ('epochs' in "'overrides' for 'fisher': 'epochs' has no effect" is fisher's)
    p.set_defaults(func=json_output(run), flag_names=_WARNING_FLAGS)
    return p


#: The HarnessConfig / TrainSettings arguments (and the forget-set parser's ``spec``) that
#: the command's errors name, as the command's flags.
_FLAGS = {
    **COMMON_FLAGS,
    "methods": "--method", "dataset": "--dataset", "model": "--model", "forget": "--forget",
    "spec": "--forget", "forget_seed": "--forget-seed", "seeds": "--seeds",
    "oracles": "--oracles",
    "epochs": "--epochs", "lr": "--lr", "batch_size": "--batch-size", "overrides": "--set",
}

#: :data:`_FLAGS` for the warnings: without the names every method's config has too.
_WARNING_FLAGS = {k: v for k, v in _FLAGS.items() if k not in ("epochs", "lr", "batch_size")}


#: The start of HarnessConfig's warning about ``data_dir`` with the digits (a regex), which
#: the command shows naming its flags instead (:func:`_warn_ignored_flags`).
_DATA_DIR_WARNING = re.escape("'data_dir' has no effect with dataset=")

#: The flags of :func:`_warn_ignored_flags`'s warnings.
_IGNORED_FLAGS = {"data_dir": "--data-dir", "dataset": "--dataset",
                  "published_defaults": "--published-defaults"}


def _warn_ignored_flags(args: argparse.Namespace, config: Any) -> None:
    """Warn about ``--data-dir`` with the digits and ``--published-defaults`` with others.

    ``--data-dir`` is not read for the bundled digits (the config's rule,
    :func:`~fastunlearn.harness.config._settings_rules`); ``--published-defaults`` only
    changes the digits' settings: every other data set gets the published defaults anyway.
    """
    from .config import _settings_rules

    digits = str(args.dataset).strip().lower() == "digits"
    rules = [*(r for r in _settings_rules(config) if r.fields == ("data_dir",)),
             UnusedRule(not digits, ("published_defaults",), (("dataset", args.dataset),),
                        "(other data sets always get the published defaults)")]
    given = [name for name, on in (("data_dir", args.data_dir is not None),
                                   ("published_defaults", args.published_defaults)) if on]
    for message in unused_setting_messages(rules, given, _IGNORED_FLAGS):
        warnings.warn(message, UserWarning, stacklevel=2)


def run(args: argparse.Namespace) -> int:
    """Run ``forget``; returns the exit status.

    The status is 0 (ok), 1 (some method failed), 2 (bad input) or 130
    (:data:`~fastunlearn._interrupt.INTERRUPTED_STATUS`: stopped by Ctrl-C between method
    runs; the partial results are written, and with ``--json`` printed). The run goes
    inside :class:`~fastunlearn._interrupt.GracefulStop`: the first Ctrl-C asks
    :func:`~fastunlearn.harness.run_harness` to stop after the method run in progress. A
    KeyboardInterrupt that escapes (a second Ctrl-C, or one while the original model and
    the oracles train: with the cache their finished epochs are kept, and the same command
    resumes after them) propagates to the caller.
    """
    from . import HarnessConfig, TrainSettings, run_harness

    try:
        if args.no_cache and args.cache_dir is not None:
            raise ValueError("--no-cache and --cache-dir contradict each other: give one")
        cache_dir = None if args.no_cache else (args.cache_dir or _DEFAULT_CACHE)
        # "all" is expanded by HarnessConfig, which then skips the methods the forget set
        # does not suit (instead of reporting their errors)
        methods = [m.strip() for m in str(args.method).split(",") if m.strip()]
        with warnings.catch_warnings():
            # shown below with the flags: "'--data-dir' has no effect with '--dataset digits'"
            warnings.filterwarnings("ignore", _DATA_DIR_WARNING, UserWarning)
            config = HarnessConfig(
                methods=tuple(methods), dataset=args.dataset, data_dir=args.data_dir,
                model=args.model, forget=args.forget, forget_seed=args.forget_seed,
                seeds=args.seeds, oracles=args.oracles,
                train=TrainSettings(epochs=args.epochs, lr=args.lr,
                                    batch_size=args.batch_size),
                overrides=parse_set(args.overrides),
                digits_defaults=False if args.published_defaults else None,
                cache_dir=cache_dir, out_dir=args.out, device=args.device,
                mia=not args.no_mia, progress=resolve_progress(args.progress),
                plots=not args.no_plots,
            )
        _warn_ignored_flags(args, config)
        if cache_dir is not None:  # before training: a file in the way must not cost the run
            check_output_folder(cache_dir, argument="cache_dir")
        with GracefulStop(what="method run") as stop:
            result = run_harness(config, should_stop=stop)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        return command_error("forget", name_flags(str(exc), _FLAGS))
    except OSError as exc:  # the folders are checked first; a full disk or a race remains
        return command_error("forget", str(exc), status=1)
    paths = result["paths"]
    from .._json_data import json_ready
    from .report import render_table

    args.json_result = json_ready(
        {**{k: v for k, v in result.items() if k not in ("logits", "labels")}, "paths": paths})

    print(render_table(result))
    print("wrote " + ", ".join(paths.values()))
    # "not run" (a stop on request came first) and "skipped" (unsuitable) are no errors
    failed = [n for n, e in result["methods"].items()
              if e["status"] not in ("ok", "not run", "skipped")]
    skipped = [n for n, e in result["methods"].items() if e["status"] == "skipped"]
    if skipped:
        print(f"fastunlearn forget: skipped {', '.join(skipped)}: the forget set does not suit "
              "them (the reasons are in results.md)", file=sys.stderr)
    if failed:
        print(f"fastunlearn forget: methods with errors: {', '.join(failed)}", file=sys.stderr)
    if result.get("stopped_on_request"):
        print(f"fastunlearn forget: {result.get('stop_note', 'stopped on request')}; the "
              f"partial results are in {config.out_dir}", file=sys.stderr)
        return INTERRUPTED_STATUS
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run ``forget`` as a standalone program (``python -m fastunlearn.harness.cli``)."""
    parser = WholeFlagParser(prog="fastunlearn")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=WholeFlagParser)
    add_parser(sub)
    args = parser.parse_args(["forget", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
