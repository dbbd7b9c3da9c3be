"""The ``fastunlearn remove`` command: a certified-removal experiment with its report."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Any

from .._cli_output import add_json_flag, command_error, json_output
from .._interrupt import INTERRUPTED_STATUS, GracefulStop
from .._no_effect import no_effect_message
from .._unused_settings import warn_unused_settings
from ..cli_types import (
    COMMON_FLAGS,
    GivenFlag,
    HelpFormatter,
    add_progress_flags,
    given_fields,
    name_flags,
    non_negative_float,
    non_negative_int,
    open_unit,
    path,
    positive_float,
    positive_int,
    ratio,
    resolve_progress,
    seed,
    warn_unused_flags,
)
from .dataset_names import DATASETS, canonical_dataset
from .unused_settings import TARGET_EPSILON_USE, removal_rules


def dataset_name(text: str) -> str:
    """Parse ``--dataset``: a name of :data:`DATASETS`, in any letter case."""
    try:
        return canonical_dataset(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(DATASETS)}, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``remove`` command to the ``fastunlearn`` parser."""
    p = subparsers.add_parser(
        "remove", help="certified-removal experiment (fit, remove, report)",
        description="Fit certified-removal logistic regression (Guo et al. 2020), remove "
        "training rows with\nNewton steps under an (epsilon, delta) budget with automatic "
        "retraining, and write JSON\nresults, PNG plots and a Markdown report. Flags follow "
        "the reference test_removal.py.",
        epilog="examples:\n"
        "  fastunlearn remove --train-mode binary --lam 0.01 --std 1 --num-removes 40\n"
        "      digits 3 vs 8; the budget runs out after about 18 removals and retraining "
        "kicks in\n"
        "  fastunlearn remove --data-dir data --dataset MNIST --extractor none "
        "--train-mode binary --std 10 --lam 1e-3 --num-removes 1000\n"
        "      the paper's MNIST 3 vs 8 setting (raw pixels)",
        formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", action=GivenFlag, type=path, default=None,
                      help="folder with the data set or extracted features (not for digits)")
    data.add_argument("--dataset", type=dataset_name, default="digits",
                      help="digits (bundled), MNIST, SVHN or CIFAR10")
    data.add_argument("--extractor", default="none",
                      help="feature-file prefix written by `fastunlearn extract`; none = pixels")
    data.add_argument("--train-mode", choices=["binary", "ovr"], default="ovr",
                      help="binary (3 vs 8 on digits/MNIST) or one-vs-rest over all classes")
    model = p.add_argument_group("model and privacy")
    model.add_argument("--lam", type=positive_float, default=1e-3,
                       help="L2 regularisation per training row (reference default 1e-6)")
    model.add_argument("--std", type=non_negative_float, default=10.0,
                       help="standard deviation sigma of the objective perturbation")
    model.add_argument("--epsilon", action=GivenFlag, type=positive_float, default=1.0,
                       help="epsilon")
    model.add_argument("--delta", action=GivenFlag, type=open_unit, default=1e-4,
                       help="delta, in (0, 1)")
    model.add_argument("--gamma", choices=["paper", "tight"], default="paper",
                       help="Lipschitz constant in the bound: paper 1/4, tight 1/(6 sqrt 3)")
    model.add_argument("--num-steps", type=positive_int, default=100,
                       help="maximum Newton iterations per (re)training")
    model.add_argument("--subsample-ratio", action=GivenFlag, type=ratio, default=1.0,
                       help="fraction of negatives kept per one-vs-rest class (ignored "
                       "in binary mode, as in the reference)")
    model.add_argument("--solver", action=GivenFlag, choices=["auto", "cholesky", "cg"],
                       default="auto",
                       help="how Newton steps are solved")
    model.add_argument("--cg-tol", action=GivenFlag, type=positive_float, default=0.01,
                       help="CG stops when its residual (added to the bound) is below this "
                       "fraction of the step's bound; 1e-10 makes cg and cholesky agree to "
                       "~1e-12")
    model.add_argument("--target-epsilon", action=GivenFlag, type=positive_float, default=None,
                       help="total epsilon of a DP extractor composed with the head: the "
                       "report gives the removals supported within it (default 2 x --epsilon)")
    run = p.add_argument_group("removals")
    run.add_argument("--num-removes", type=non_negative_int, default=100,
                     help="training rows to remove (seeded random order)")
    run.add_argument("--batch", type=non_negative_int, default=0,
                     help="rows per batch removal; 0 removes one at a time")
    run.add_argument("--no-retrain", action="store_true",
                     help="stop when the budget runs out instead of retraining")
    run.add_argument("--eval-every", action=GivenFlag, type=non_negative_int, default=0,
                     help="test accuracy every k removals (0: about 20 evaluations)")
    run.add_argument("--no-retrain-timing", action="store_true",
                     help="skip timing a full retraining at the end")
    out = p.add_argument_group("run and output")
    out.add_argument("--seed", type=seed, default=0,
                     help="seed of everything, 0 .. 2**32-1")
    out.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    out.add_argument("--result-dir", "--out", dest="result_dir", type=path, default="result",
                     help="output folder")
    out.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    out.add_argument("--verbose", action="store_true",
                     help="print training details and every evaluation (no progress bar)")
    add_progress_flags(p)
    add_json_flag(p)
    p.set_defaults(func=json_output(_cmd_remove))


def _print_summary(result: Any) -> None:
    priv, tim, fair = result.privacy, result.timings, result.fairness["after"]
    fmt = "{:.4g}".format
    supported = priv["removals_supported"]
    supported_text = "-" if supported is None else (
        f"~{supported} (projected)" if priv["removals_supported_is_estimate"] else str(supported))
    print(f"\nremoved {priv['removals']} rows, {priv['retrains']} automatic retrain(s); "
          f"test accuracy {result.training['test_accuracy']:.4f} -> "
          f"{result.final['test_accuracy']:.4f}")
    print(f"privacy: epsilon {fmt(priv['epsilon'])}, delta {fmt(priv['delta'])}, budget "
          f"{fmt(priv['budget'])}, removals supported by one budget {supported_text}")
    print(f"exactness: true gradient residual {fmt(result.final['gradient_residual'])} "
          f"(used budget {fmt(priv['budget_used'])}); distance to retraining with the same "
          f"noise <= {fmt(result.final['distance_bound'])}")
    extractor = priv.get("extractor") or {}
    if extractor.get("private"):
        composed = extractor.get("composed", {})
        total_delta = composed.get("delta", math.nan)
        # group privacy's delta grows as k exp((k-1) eps) delta: at >= 1 it promises nothing
        vacuous = " (vacuous: delta >= 1 promises nothing)" if total_delta >= 1 else ""
        print(f"feature extractor {extractor.get('name')}: DP ({fmt(extractor['epsilon'])}, "
              f"{fmt(extractor['delta'])}); with the head after {composed.get('removals')} "
              f"removals ({fmt(composed.get('epsilon', math.nan))}, "
              f"{fmt(total_delta)}){vacuous}; removals supported within total "
              f"epsilon {fmt(extractor['target_epsilon'])}: {extractor['removals_supported']}")
    elif extractor:
        print(f"feature extractor {extractor.get('name')}: {extractor.get('note')}")
    if priv["stopped_early"]:
        print(f"stopped: {priv['stop_reason']}")
    if fair["worst_class"] is not None:
        print(f"fairness: worst class {fair['worst_class']} ({fair['worst_accuracy']:.4f}), "
              f"largest gap {fair['largest_gap']:.4f}")
    if tim["removal_seconds_median"] is not None:
        line = f"time: median removal {tim['removal_seconds_median'] * 1e3:.2f} ms"
        if tim["retrain_seconds"] is not None:
            line += f", full retraining {tim['retrain_seconds'] * 1e3:.1f} ms"
        if tim["speedup"] is not None:
            line += f" ({tim['speedup']:.0f}x)"
        if priv["retrains"] and tim.get("speedup_with_retrains") is not None:
            line += (f"; mean incl. the automatic retrains "
                     f"{tim['removal_seconds_mean'] * 1e3:.2f} ms "
                     f"({tim['speedup_with_retrains']:.1f}x)")
        print(line)
    if priv.get("budget_hint"):
        print(f"hint: {priv['budget_hint']}")
    for kind, file in result.files.items():
        print(f"wrote {kind:<13} {file}")


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any fitting, a result folder that could not be written at the end."""
    from .._output_folder import check_output_folder
    from .experiment import output_names

    check_output_folder(args.result_dir, argument="result_dir", names=output_names(args.stem))


def _warn_target_epsilon_after_run(args: argparse.Namespace, result: Any) -> None:
    """Warn about ``--target-epsilon`` when the features of ``--extractor`` were not DP."""
    extractor = result.privacy.get("extractor") or {}
    warn_unused_flags(args, [
        (args.extractor != "none" and not extractor.get("private"), ("target_epsilon",),
         f"with '--extractor {args.extractor}', whose features were not trained with "
         f"differential privacy {TARGET_EPSILON_USE}"),
    ])


#: The ExperimentConfig fields the command's errors name, as the command's flags.
_FLAGS = {
    **COMMON_FLAGS, "result_dir": "--result-dir", "dataset": "--dataset",
    "extractor": "--extractor", "train_mode": "--train-mode", "lam": "--lam", "std": "--std",
    "epsilon": "--epsilon",
    "delta": "--delta", "gamma": "--gamma", "num_steps": "--num-steps",
    "subsample_ratio": "--subsample-ratio", "solver": "--solver", "cg_tol": "--cg-tol",
    "target_epsilon": "--target-epsilon", "num_removes": "--num-removes", "batch": "--batch",
    "eval_every": "--eval-every", "seed": "--seed", "retrain": "--no-retrain",
}


def _cmd_remove(args: argparse.Namespace) -> int:
    from .experiment import ExperimentConfig, run_removal_experiment

    config = ExperimentConfig(
        dataset=args.dataset, data_dir=args.data_dir, extractor=args.extractor,
        train_mode=args.train_mode, lam=args.lam, std=args.std, epsilon=args.epsilon,
        delta=args.delta, num_steps=args.num_steps, subsample_ratio=args.subsample_ratio,
        num_removes=args.num_removes, batch=args.batch, gamma=args.gamma, solver=args.solver,
        cg_tol=args.cg_tol, target_epsilon=args.target_epsilon,
        device=args.device, seed=args.seed, retrain=not args.no_retrain,
        eval_every=args.eval_every, time_retraining=not args.no_retrain_timing,
        result_dir=args.result_dir, plots=not args.no_plots, verbose=args.verbose)
    # the flags given that the other settings make pointless (the config's rule table);
    # after the run: '--target-epsilon' with an extractor that is not DP
    given = given_fields(args) | ({"retrain"} if args.no_retrain else set())  # a switch
    warn_unused_settings(config, removal_rules(config), given=given, flags=_FLAGS)
    if args.verbose and args.progress:
        warnings.warn(no_effect_message(["--progress"], "with '--verbose' (every removal is "
                                        "printed instead of a bar)"), UserWarning, stacklevel=1)
    try:
        config.validate()
        args.stem = config.stem
        _check_outputs(args)
        with GracefulStop(what="batch of removals") as stop:
            result = run_removal_experiment(
                config, echo=print, progress=resolve_progress(args.progress) and not args.verbose,
                should_stop=stop)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        return command_error("remove", name_flags(str(exc), _FLAGS))
    except (ArithmeticError, RuntimeError) as exc:  # e.g. a Cholesky failure at lam 1e-150
        # the library's advice names its parameter; the command's user sets the flag
        detail = str(exc).replace("solver='cholesky'", "--solver cholesky")
        return command_error("remove", f"the run failed numerically ({detail}); extreme --lam, "
                             "--std or --epsilon values can cause this", status=1)
    _warn_target_epsilon_after_run(args, result)
    _print_summary(result)
    args.json_result = result.to_dict()
    if result.stopped_on_request or stop.requested:  # also: Ctrl-C after the last removal
        where = f" in {config.result_dir}" if config.result_dir is not None else ""
        made = (f"the {result.privacy['removals']} removals made" if result.stopped_on_request
                else f"all {result.privacy['removals']} removals; the retraining was not timed")
        print(f"fastunlearn remove: stopped on request (Ctrl-C): the results{where} cover "
              f"{made}", file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0
