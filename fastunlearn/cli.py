"""The ``fastunlearn`` command line.

Commands:
    info     versions, compiled backends (CPU, CUDA and arch list) and the devices seen.
    demo     the certified-removal walk-through on digits (same as ``make demo``).
    remove   a certified-removal experiment (the reference ``test_removal.py`` flags): fit,
             remove rows one by one or in batches, write JSON, PNG plots and a Markdown
             report.
    extract  train (or load) a feature extractor (DP, adversarial or standard) and write
             the features that ``remove --extractor`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any


def _format_info(info: dict) -> str:
    lines = [
        f"fastunlearn {info['version']}",
        f"  torch        {info['torch']} (CUDA {info['torch_cuda'] or 'none'})",
        f"  python       {info['python']}",
        f"  compiled     {'yes' if info['compiled'] else 'NO: ' + str(info['load_error'])}",
        f"  CPU kernels  {'yes' if info['cpu'] else 'no'}",
        "  CUDA kernels "
        + (f"yes (arch {info['cuda_arch_list']})" if info["cuda"] else "no (not compiled in)"),
        "  ops:",
    ]
    for name, backends in info["ops"].items():
        lines.append(f"    {name:<26} {', '.join(backends) or 'missing'}")
    lines.append("  devices:")
    for dev in info["devices"]:
        if dev["type"] == "cpu":
            lines.append(f"    cpu: {dev['name']} ({dev['threads']} threads)")
        else:
            lines.append(
                f"    cuda:{dev['index']}: {dev['name']} (sm {dev['capability']}, "
                f"{dev['memory_gib']} GiB)"
            )
    if not any(dev["type"] == "cuda" for dev in info["devices"]):
        lines.append("    (no CUDA device visible)")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import backend

    info = backend()
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0 if info["compiled"] else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main([])


# ---- argument types: bad values become clean argparse errors (exit status 2) ------------


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {text}")
    return value


def _open_unit(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _ratio(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1)


def _non_negative_int(text: str) -> int:
    return _integer(text, 0)


def _dataset(text: str) -> str:
    from .certified.experiment import DATASETS

    for name in DATASETS:
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(DATASETS)}, got {text!r}")


def _error(command: str, message: str) -> int:
    print(f"fastunlearn {command}: error: {message}", file=sys.stderr)
    return 2


# ---- remove ---------------------------------------------------------------------------------


def _add_remove_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "remove", help="certified-removal experiment (fit, remove, report)",
        description="Fit certified-removal logistic regression (Guo et al. 2020), remove "
        "training rows with Newton steps under an (epsilon, delta) budget with automatic "
        "retraining, and write JSON results, PNG plots and a Markdown report. Flags follow "
        "the reference test_removal.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default=None,
                      help="folder with the data set or extracted features (not for digits)")
    data.add_argument("--dataset", type=_dataset, default="digits",
                      help="digits (bundled), MNIST, SVHN or CIFAR10")
    data.add_argument("--extractor", default="none",
                      help="feature-file prefix written by `fastunlearn extract`; none = pixels")
    data.add_argument("--train-mode", choices=["binary", "ovr"], default="ovr",
                      help="binary (3 vs 8 on digits/MNIST) or one-vs-rest over all classes")
    model = p.add_argument_group("model and privacy")
    model.add_argument("--lam", type=_positive_float, default=1e-3,
                       help="L2 regularisation per training row (reference default 1e-6)")
    model.add_argument("--std", type=_non_negative_float, default=10.0,
                       help="standard deviation sigma of the objective perturbation")
    model.add_argument("--epsilon", type=_positive_float, default=1.0, help="epsilon")
    model.add_argument("--delta", type=_open_unit, default=1e-4, help="delta, in (0, 1)")
    model.add_argument("--gamma", choices=["paper", "tight"], default="paper",
                       help="Lipschitz constant in the bound: paper 1/4, tight 1/(6 sqrt 3)")
    model.add_argument("--num-steps", type=_positive_int, default=100,
                       help="maximum Newton iterations per (re)training")
    model.add_argument("--subsample-ratio", type=_ratio, default=1.0,
                       help="fraction of negatives kept per one-vs-rest class")
    model.add_argument("--solver", choices=["auto", "cholesky", "cg"], default="auto",
                       help="how Newton steps are solved")
    run = p.add_argument_group("removals")
    run.add_argument("--num-removes", type=_non_negative_int, default=100,
                     help="training rows to remove (seeded random order)")
    run.add_argument("--batch", type=_non_negative_int, default=0,
                     help="rows per batch removal; 0 removes one at a time")
    run.add_argument("--no-retrain", action="store_true",
                     help="stop when the budget runs out instead of retraining")
    run.add_argument("--eval-every", type=_non_negative_int, default=0,
                     help="test accuracy every k removals (0: about 20 evaluations)")
    run.add_argument("--no-retrain-timing", action="store_true",
                     help="skip timing a full retraining at the end")
    out = p.add_argument_group("run and output")
    out.add_argument("--seed", type=_non_negative_int, default=0, help="seed of everything")
    out.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    out.add_argument("--result-dir", default="result", help="output folder")
    out.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    out.add_argument("--verbose", action="store_true",
                     help="print training details and every evaluation (no progress bar)")
    p.set_defaults(func=_cmd_remove)


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
        print(line)
    for kind, path in result.files.items():
        print(f"wrote {kind:<13} {path}")


def _cmd_remove(args: argparse.Namespace) -> int:
    from .certified.experiment import ExperimentConfig, run_removal_experiment

    config = ExperimentConfig(
        dataset=args.dataset, data_dir=args.data_dir, extractor=args.extractor,
        train_mode=args.train_mode, lam=args.lam, std=args.std, epsilon=args.epsilon,
        delta=args.delta, num_steps=args.num_steps, subsample_ratio=args.subsample_ratio,
        num_removes=args.num_removes, batch=args.batch, gamma=args.gamma, solver=args.solver,
        device=args.device, seed=args.seed, retrain=not args.no_retrain,
        eval_every=args.eval_every, time_retraining=not args.no_retrain_timing,
        result_dir=args.result_dir, plots=not args.no_plots, verbose=args.verbose)
    try:
        config.validate()
        result = run_removal_experiment(config, echo=print, progress=not args.verbose)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        return _error("remove", str(exc))
    _print_summary(result)
    return 0


def _add_extract_parser(sub: argparse._SubParsersAction) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``fastunlearn`` command."""
    parser = argparse.ArgumentParser(
        prog="fastunlearn", description="Machine unlearning on fused C++/CUDA kernels."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, compiled backends and devices")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="run the digits demo")
    demo.set_defaults(func=_cmd_demo)
    _add_remove_parser(sub)
    _add_extract_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastunlearn`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
