"""The ``fastunlearn exposure`` command: run the canary experiment and print its report."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from .._atomic_files import write_text
from .._cli_output import add_json_flag, command_error, json_output
from .._earlier_results import keep_earlier_run
from .._no_effect import no_effect_message
from .._output_folder import check_output_folder
from .._unused_settings import warn_unused_settings
from ..cli_types import (
    COMMON_FLAGS,
    GivenFlag,
    add_progress_flags,
    given_fields,
    name_flags,
    resolve_progress,
)
from ..cli_types import integer as _integer
from ..cli_types import non_negative_float as _non_negative_float
from ..cli_types import non_negative_int as _non_negative_int
from ..cli_types import path as _path
from ..cli_types import positive_float as _positive_float
from ..cli_types import positive_int as _positive_int
from ..cli_types import seed as _seed

__all__ = ["add_parser", "run"]

#: What ``--out`` receives.
_OUTPUTS = ("exposure.json", "exposure.md", "exposure.png")


#: Digits of a random secret when ``--secret-length`` is not given.
_SECRET_LENGTH = 4


def _candidates(text: str) -> int:
    return _integer(text, 3)  # the secret must be ranked among at least 3 others


def _out(text: str) -> Path:
    return Path(_path(text))


def _digits(text: str) -> str:
    if not text or not text.isdigit() or not text.isascii():
        raise argparse.ArgumentTypeError(f"must be a string of digits, got {text!r}")
    return text


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``exposure`` on the CLI's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "exposure",
        help="canary exposure of a small character model (memorisation test)",
        description="Insert a canary 'my telephone number is <digits>.' into generated text, "
        "train a character LSTM/GRU briefly and measure the exposure of the secret (rank "
        "among all secrets, and the skew-normal extrapolation) next to a never-inserted "
        "control secret.",
        epilog="example:\n  fastunlearn exposure --secret-length 4 --insertions 12 --steps 400 "
        "--out runs/exposure",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--secret", type=_digits, default=None, help="the secret (default: random)")
    p.add_argument(
        "--secret-length",
        type=_positive_int,
        default=None,
        help=f"digits of a random secret (the space has 10^L secrets; default "
        f"{_SECRET_LENGTH}); with --secret, its length",
    )
    p.add_argument(
        "--insertions", type=_non_negative_int, default=12, help="copies of the canary in the text"
    )
    p.add_argument("--n-sentences", type=_positive_int, default=600, help="generated sentences")
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="recurrent cell")
    p.add_argument("--embed-dim", type=_positive_int, default=32, help="embedding width")
    p.add_argument("--hidden", type=_positive_int, default=128, help="recurrent units")
    p.add_argument("--layers", type=_positive_int, default=1, help="recurrent layers")
    # GivenFlag: a flag given that the other settings make pointless is warned about
    p.add_argument("--steps", type=_non_negative_int, default=400, action=GivenFlag,
                   help="training steps")
    p.add_argument("--seq-len", type=_positive_int, default=48, help="training window")
    p.add_argument("--batch-size", type=_positive_int, default=32, action=GivenFlag,
                   help="windows per step")
    p.add_argument("--lr", type=_positive_float, default=3e-3, action=GivenFlag,
                   help="Adam learning rate")
    p.add_argument("--weight-decay", type=_non_negative_float, default=0.0, action=GivenFlag,
                   help="L2 penalty")
    p.add_argument(
        "--candidates",
        type=_candidates,
        action=GivenFlag,
        default=None,
        help="score this many random secrets (drawn with replacement; at least 3) instead of "
        "the whole space; a value >= the space size (10^L) scores every secret exactly; "
        "fewer than 100 draw a warning (the skew-normal fit is unreliable; use 1000 or more)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of everything, 0 .. 2**32-1")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    add_progress_flags(p)
    p.add_argument(
        "--out", type=_out, default=None,
        help="folder for exposure.json, exposure.md and exposure.png"
    )
    p.add_argument("--no-plots", action="store_true",
                   help="write exposure.json and exposure.md only (no PNG)")
    add_json_flag(p)
    p.set_defaults(func=json_output(run), flag_names=_FLAGS)  # flags in warnings too
    return p


#: The CanaryConfig fields the command's errors name, as the command's flags.
_FLAGS = {
    **COMMON_FLAGS,
    "n_sentences": "--n-sentences", "secret": "--secret", "secret_length": "--secret-length",
    "insertions": "--insertions", "cell": "--cell", "embed_dim": "--embed-dim",
    "hidden": "--hidden", "layers": "--layers", "steps": "--steps", "seq_len": "--seq-len",
    "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
    "n_candidates": "--candidates", "seed": "--seed",
}

#: The options whose ``dest`` is not the CanaryConfig field they set.
_RENAMED = {"candidates": "n_candidates"}


def run(args: argparse.Namespace) -> int:
    """Run the experiment from parsed arguments; print the report; return the exit status."""
    from .experiment import CanaryConfig, format_report, run_canary_experiment
    from .plot import plot_exposure
    from .unused_settings import canary_rules

    length = args.secret_length
    if args.secret is not None and length is not None and length != len(args.secret):
        return command_error("exposure", f"--secret-length {length} contradicts --secret "
                             f"{args.secret!r} ({len(args.secret)} digits): give one")
    if length is None:
        length = len(args.secret) if args.secret is not None else _SECRET_LENGTH
    if args.no_plots and args.out is None:  # the run writes no file at all
        warnings.warn(no_effect_message(["--no-plots"], "without '--out' (nothing is written)"),
                      UserWarning, stacklevel=2)
    try:
        config = CanaryConfig(
            n_sentences=args.n_sentences,
            secret=args.secret,
            secret_length=length,
            insertions=args.insertions,
            cell=args.cell,
            embed_dim=args.embed_dim,
            hidden=args.hidden,
            layers=args.layers,
            steps=args.steps,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            n_candidates=args.candidates,
            seed=args.seed,
            device=args.device,
            progress=resolve_progress(args.progress),
        )
        # the flags given that the other settings make pointless, named once: the run's
        # own warning (run_canary_experiment) then neither repeats them nor names fields
        warn_unused_settings(config, canary_rules(config),
                             given=given_fields(args, _RENAMED), flags=_FLAGS)
        outputs = list(_OUTPUTS[:2] if args.no_plots else _OUTPUTS)
        if args.out is not None:
            check_output_folder(args.out, argument="out", names=outputs)
        result = run_canary_experiment(config)
    except (ValueError, TypeError) as exc:
        return command_error("exposure", name_flags(str(exc), _FLAGS))
    report = format_report(result)
    print(report)
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            payload = json.dumps(result.to_dict(), indent=2, allow_nan=False)
            # an earlier run's files of other settings go to earlier/exposure-<n>/
            keep_earlier_run(args.out, "exposure", json.loads(payload)["config"])
            write_text(args.out / "exposure.json", payload + "\n")
            write_text(args.out / "exposure.md",
                       report + ("" if args.no_plots else "\n![exposure](exposure.png)") + "\n")
            if args.no_plots:  # a plot of an earlier run would not match these results
                (args.out / "exposure.png").unlink(missing_ok=True)
            else:
                plot_exposure([m for m in (result.canary, result.control) if m is not None],
                              args.out / "exposure.png")
        except OSError as exc:  # checked before training; a full disk or a race remains
            return command_error("exposure", f"cannot write the results: {exc}", status=1)
        print("wrote " + ", ".join(str(args.out / name) for name in outputs))
    args.json_result = result.to_dict()
    return 0
