"""``fastunlearn unlearn-features``: the feature-unlearning experiment from the command line.

``add_parser(sub)`` adds the command (``fastunlearn/cli.py`` lists it in ``COMMANDS``); the
parser sets ``func=run``.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._cli_output import command_error
from .._output_folder import check_output_folder
from .._unused_settings import warn_unused_settings
from ..cli_types import (
    COMMON_FLAGS,
    GivenFlag,
    HelpFormatter,
    given_fields,
    name_flags,
    resolve_progress,
)
from ..cli_types import number as _number
from ..cli_types import open_unit as _open_unit
from ..cli_types import path as _path
from ..cli_types import seed as _seed
from .cli import (
    _add_run_options,
    _finish,
    _positive,
    _positive_int,
    _tau,
)
from .unused_settings import feature_rules

__all__ = ["add_parser", "run"]


#: The config's fields -> the flags that set them, named in errors and warnings instead.
_FLAGS = {
    **COMMON_FLAGS,
    "dataset": "--dataset", "columns": "--columns", "top_k": "--top-k", "mode": "--mode",
    "n_rows": "--rows", "value": "--value", "l2": "--l2", "steps": "--steps", "tau": "--tau",
    "cg_tol": "--cg-tol", "cg_maxiter": "--cg-maxiter", "seed": "--seed",
    "binary": "--binary", "linear_lam": "--linear-lam", "epsilon": "--epsilon",
    "delta": "--delta", "linear": "--no-linear",
}


def _columns(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("'--columns' must name at least one column")
    out = []
    for p in parts:
        try:
            out.append(int(p))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer column index: {p!r}") from None
        if out[-1] < 0:
            raise argparse.ArgumentTypeError(f"column indices must be >= 0, got {p!r}")
    return tuple(out)


def _pair(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        pair = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two digits 'a,b', got {text!r}") from None
    if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= d <= 9 for d in pair):
        raise argparse.ArgumentTypeError(
            f"expected two distinct digits 0..9 'a,b', got {text!r}")
    return pair


def _num(value: Any, spec: str = ".4g") -> str:
    """Format a result number as the Markdown report does (None or NaN: ``-``, inf: ``inf``)."""
    from ..report import format_value

    return format_value(value, spec)


def _update_status(update: dict[str, Any]) -> str:
    """Return ``applied`` or ``NOT APPLIED (reason)`` (a rejected update changes nothing)."""
    if update.get("applied"):
        return "applied"
    return f"NOT APPLIED ({update.get('reason') or 'no reason given'})"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``unlearn-features`` command to an ``argparse`` subparsers object.

    Args:
        subparsers: What ``parser.add_subparsers()`` returned.

    Returns:
        The new sub-parser (its ``func`` default is :func:`run`).

    """
    p = subparsers.add_parser(
        "unlearn-features",
        help="feature unlearning with influence updates vs retraining (Warnecke et al.)",
        description="Fit an L2-regularised logistic regression, unlearn feature columns "
        "(zero them wherever non-zero, or replace them in random rows) with first- and "
        "second-order influence updates, and compare with retraining: gradient residual, "
        "distance to the retrained parameters, test accuracy, time (JSON, PNG, Markdown). "
        "On the digits, also the certified linear variant and its required noise sigma.",
        epilog="examples:\n"
        "  fastunlearn unlearn-features                          # digits, 4 most used pixels\n"
        "  fastunlearn unlearn-features --dataset breast_cancer --columns 10,21\n"
        "  fastunlearn unlearn-features --dataset wine --mode replace --rows 20 --columns 12",
        formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=["digits", "breast_cancer", "wine"], default="digits",
                   help="digits pixels or a scikit-learn table")
    p.add_argument("--columns", type=_columns, default=None,
                   help="comma-separated feature indices (default: the --top-k most used)")
    p.add_argument("--top-k", action=GivenFlag, type=_positive_int, default=4,
                   help="columns chosen when --columns is not given")
    p.add_argument("--mode", choices=["remove", "replace"], default="remove",
                   help="zero the columns, or replace values at random rows")
    p.add_argument("--rows", action=GivenFlag, type=_positive_int, default=50,
                   help="random rows changed in replace mode")
    p.add_argument("--value", action=GivenFlag, type=_number, default=0.0,
                   help="new value in replace mode (finite; its square summed over the --rows "
                   "rows must not overflow the data's float64; more than 1000 times the "
                   "data's largest absolute value draws a warning)")
    p.add_argument("--l2", type=_positive, default=10.0,
                   help="L2 regularisation of the summed objective")
    p.add_argument("--steps", type=_positive_int, default=1,
                   help="stepwise variant: split the columns into this many updates")
    p.add_argument("--tau", type=_tau, default="auto",
                   help="first-order step size, or 'auto' (curvature step of the objective)")
    p.add_argument("--cg-tol", type=_positive, default=1e-10,
                   help="CG stops at this relative true residual (> 0)")
    p.add_argument("--cg-maxiter", type=_positive_int, default=500, help="CG iteration cap")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the split and the replace-mode rows, 0 .. 2**32-1")
    p.add_argument("--no-linear", action="store_true",
                   help="skip the certified linear variant (digits)")
    p.add_argument("--binary", action=GivenFlag, type=_pair, default=(3, 8),
                   help="digit pair of the certified variant (default 3,8)")
    p.add_argument("--linear-lam", action=GivenFlag, type=_positive, default=1e-2,
                   help="L2 regularisation of the certified linear variant")
    p.add_argument("--epsilon", action=GivenFlag, type=_positive, default=0.1,
                   help="epsilon of the certified linear variant")
    p.add_argument("--delta", action=GivenFlag, type=_open_unit, default=0.01,
                   help="delta of the certified linear variant, in (0, 1)")
    p.add_argument("--out", type=_path, default="results", help="where JSON/PNG/Markdown go")
    _add_run_options(p, run)
    p.set_defaults(flag_names=_FLAGS)  # in warnings
    return p


def run(args: argparse.Namespace) -> int:
    """Run the experiment described by ``args``; return the exit status (0 ok, 2 bad input)."""
    from .feature_experiment import (
        FeatureConfig,
        _linear_steps_text,
        _steps_text,
        run_feature_experiment,
        write_feature_outputs,
    )

    config = FeatureConfig(
        dataset=args.dataset, columns=args.columns, top_k=args.top_k, mode=args.mode,
        n_rows=args.rows, value=args.value, l2=args.l2, steps=args.steps, tau=args.tau,
        cg_tol=args.cg_tol, cg_maxiter=args.cg_maxiter, seed=args.seed,
        linear=not args.no_linear, binary=args.binary, linear_lam=args.linear_lam,
        epsilon=args.epsilon, delta=args.delta, progress=resolve_progress(args.progress))
    # the flags given that the other settings make pointless (the config's rule table)
    warn_unused_settings(config, feature_rules(config), flags=_FLAGS,
                         given=given_fields(args, {"rows": "n_rows", "no_linear": "linear"}))
    try:
        stem = f"features_{args.dataset}"
        check_output_folder(args.out, argument="out",
                            names=[f"{stem}.json", f"{stem}.md", f"{stem}.png"])
        result = run_feature_experiment(config)
    except (ValueError, TypeError) as exc:
        # the config names its fields; the command names its flags
        return command_error("unlearn-features", name_flags(str(exc), _FLAGS))
    try:
        files = write_feature_outputs(result, args.out, plots=not args.no_plots)
    except OSError as exc:  # checked before fitting; a full disk or a race remains
        return command_error("unlearn-features", f"cannot write the results: {exc}",
                             status=1)
    d, o, r = result["data"], result["original"], result["retrained"]
    print(f"{d['dataset']}: columns {d['columns']}, {d['num_affected']} affected rows; "
          f"{_steps_text(result['config'], d)}")
    print(f"{'original':>12}: residual {_num(o['residual'])}  distance "
          f"{_num(o['distance_retrained'])}  acc {_num(o['acc'], '.4f')}")
    for name, m in result["methods"].items():
        print(f"{name:>12}: residual {_num(m['residual'])}  distance "
              f"{_num(m['distance_retrained'])}  acc {_num(m['acc'], '.4f')}  "
              f"{_num(m['seconds'], '.3f')} s  {_update_status(m['update'])}")
    print(f"{'retrained':>12}: residual {_num(r['residual'])}  acc {_num(r['acc'], '.4f')}  "
          f"{_num(r['seconds'], '.3f')} s")
    lin = result.get("linear")
    if lin and "methods" in lin:
        print(f"certified linear: {_linear_steps_text(lin)} (--tau and --steps apply to the "
              "other updates)")
        for name, m in lin["methods"].items():
            print(f"certified linear {name}: residual {_num(m['residual'])}  sigma required "
                  f"{_num(m['sigma_required'])}")
    return _finish(files, result, args)
