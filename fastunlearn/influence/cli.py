"""``fastunlearn repair``: the label-poisoning repair experiment from the command line.

``add_parser(sub)`` adds the command (``fastunlearn/cli.py`` lists it in ``COMMANDS``); the
parser sets ``func=run``.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from typing import Any

from .._cli_output import add_json_flag, command_error, json_output
from .._interrupt import INTERRUPTED_STATUS, GracefulStop
from .._output_folder import check_output_folder
from .._unused_settings import warn_unused_settings
from ..cli_types import (
    COMMON_FLAGS,
    GivenFlag,
    HelpFormatter,
    add_progress_flags,
    given_fields,
    name_flags,
    resolve_progress,
)
from ..cli_types import non_negative_float as _non_negative
from ..cli_types import non_negative_int as _non_negative_int
from ..cli_types import path as _path
from ..cli_types import positive_float as _positive
from ..cli_types import positive_int as _positive_int
from ..cli_types import seed as _seed
from .unused_settings import repair_rules

__all__ = ["add_parser", "run"]


def _tau(text: str) -> float | str:
    return "auto" if text == "auto" else _positive(text)


def _add_run_options(
    p: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]
) -> None:
    """Add the options every experiment command ends with and set ``func`` as its runner.

    ``--no-plots``, ``--progress`` and ``--json`` (the result JSON alone on stdout).
    """
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_progress_flags(p)
    add_json_flag(p)
    p.set_defaults(func=json_output(func))


def _finish(files: dict[str, str], result: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the written files of an experiment, keep its ``--json`` document; return 0.

    The ``--json`` document is the object written to the JSON file (strict JSON: non-finite
    numbers are the strings ``"inf"``, ``"-inf"``, ``"nan"``, the written files included).
    """
    from .._json_data import json_ready

    for kind, path in files.items():
        print(f"wrote {kind}: {path}")
    args.json_result = json_ready({**result, "files": files})
    return 0


#: The RepairConfig fields the command's errors and warnings name, as the command's flags.
_FLAGS = {
    **COMMON_FLAGS, "result_dir": "--result-dir", "dataset": "--dataset", "model": "--model",
    "budget": "--budget",
    "seed": "--seed", "epochs": "--epochs", "lr": "--lr", "train_batch": "--train-batch",
    "protocols": "--protocol", "order": "--order", "solver": "--solver",
    "curvature": "--curvature", "damping": "--damping", "tau": "--tau", "steps": "--steps",
    "batch": "--batch", "last_layers": "--last-layers", "hvp_batch_size": "--hvp-batch-size",
    "cg_tol": "--cg-tol", "cg_maxiter": "--cg-maxiter", "lissa_batch": "--lissa-batch",
    "lissa_damping": "--lissa-damping", "lissa_scale": "--lissa-scale",
    "lissa_depth": "--lissa-depth", "lissa_hessian": "--lissa-hessian", "n_train": "--n-train",
}

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``repair`` command to an ``argparse`` subparsers object.

    Args:
        subparsers: What ``parser.add_subparsers()`` returned.

    Returns:
        The new sub-parser (its ``func`` default is :func:`run`).

    """
    p = subparsers.add_parser(
        "repair", help="label-poisoning repair with influence updates (Warnecke et al.)",
        description="Flip class s to 9 - s for a budget of training labels, train a clean "
        "and a poisoned model, repair the poisoned one with first/second-order influence "
        "updates (iterative reference protocol and/or one shot on the known flipped rows) "
        "and report clean, poisoned and repaired accuracy, % restored, the gradient "
        "residual, counts and times (JSON, PNG, Markdown).",
        epilog="examples:\n"
        "  fastunlearn repair                       # embedded digits, small_cnn\n"
        "  fastunlearn repair --solver lissa --lissa-scale 2e5 --lissa-damping 1e-4\n"
        "  fastunlearn repair --dataset cifar10 --data-dir data --model cifar_cnn "
        "--last-layers 6 --device cuda",
        formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=["digits", "cifar10"], default="digits",
                   help="data set (cifar10 from --data-dir)")
    p.add_argument("--data-dir", action=GivenFlag, type=_path, default=None,
                   help="folder with CIFAR-10 (torchvision files)")
    p.add_argument("--model", default=None,
                   help="model zoo name (default small_cnn for digits, cifar_cnn for CIFAR)")
    p.add_argument("--budget", type=_positive_int, default=None,
                   help="labels flipped: budget // 10 per class, 10 * (budget // 10) in all "
                   "(default 20%% of the data)")
    p.add_argument("--seed", type=_seed, default=42,
                   help="seed of the flips and the training, 0 .. 2**32-1")
    p.add_argument("--epochs", type=_positive_int, default=100,
                   help="training epochs of the clean and poisoned models")
    p.add_argument("--lr", type=_positive, default=3e-3, help="training learning rate (Adam)")
    p.add_argument("--train-batch", type=_positive_int, default=64, help="training batch size")
    p.add_argument("--protocol", choices=["iterative", "one-shot", "both"], default="both",
                   help="iterative reference protocol, one shot on the flipped rows, or both")
    p.add_argument("--order", type=int, choices=[1, 2], default=2,
                   help="first- or second-order update")
    p.add_argument("--solver", action=GivenFlag, choices=["cg", "lissa", "direct"], default="cg",
                   help="second-order solver")
    p.add_argument("--curvature", action=GivenFlag, choices=["ggn", "hessian"], default="ggn",
                   help="curvature of the second-order solve (cg, direct and lissa): "
                   "Gauss-Newton or the Hessian")
    p.add_argument("--damping", action=GivenFlag, type=_non_negative, default=100.0,
                   help="Tikhonov damping of cg/direct (summed loss)")
    p.add_argument("--tau", action=GivenFlag, type=_tau, default="auto",
                   help="first-order step size, or 'auto' (line search)")
    p.add_argument("--steps", action=GivenFlag, type=_positive_int, default=10,
                   help="iterative protocol steps")
    p.add_argument("--batch", action=GivenFlag, type=_positive_int, default=1024,
                   help="mispredicted points per iterative step")
    p.add_argument("--last-layers", type=_non_negative_int, default=0,
                   help="update only the last k trainable parameter tensors, at most the "
                   "model's number of them (0: all)")
    p.add_argument("--hvp-batch-size", action=GivenFlag, type=_positive_int, default=4096,
                   help="training rows per HVP batch")
    p.add_argument("--cg-tol", action=GivenFlag, type=_positive, default=1e-4,
                   help="CG stops at this relative true residual (> 0)")
    p.add_argument("--cg-maxiter", action=GivenFlag, type=_positive_int, default=100,
                   help="CG iteration cap")
    p.add_argument("--lissa-batch", action=GivenFlag, type=_positive_int, default=1024,
                   help="LiSSA batch B (rows per stochastic Hessian)")
    p.add_argument("--lissa-damping", action=GivenFlag, type=_non_negative, default=1e-4,
                   help="LiSSA d: d*s damps the Hessian LiSSA uses; with --lissa-hessian "
                   "batch (summed batch Hessians) the damping relative to the full-data "
                   "Hessian is ceil(N/B)*d*s and the step ceil(N/B) times that Newton step")
    p.add_argument("--lissa-scale", action=GivenFlag, type=_positive, default=2e5, help="LiSSA s")
    p.add_argument("--lissa-depth", action=GivenFlag, type=_positive_int, default=100,
                   help="LiSSA recursion steps")
    p.add_argument("--lissa-hessian", action=GivenFlag, choices=["batch", "full"],
                   default="batch",
                   help="batch: summed batch Hessian (reference); full: scaled by N/B to "
                   "estimate the full-data Hessian (damping d*s relative to it)")
    p.add_argument("--n-train", type=_non_negative_int, default=0,
                   help="use only the first n training rows, at most their number (0: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    p.add_argument("--cache-dir", type=_path, default=None,
                   help="keep the trained clean and poisoned models here and load them in "
                   "later runs of the same data, model, training settings, seed and device "
                   "type (e.g. .fastunlearn-cache, forget's cache; default: always train)")
    p.add_argument("--result-dir", "--out", dest="result_dir", type=_path, default="results",
                   help="where JSON/PNG/Markdown go")
    _add_run_options(p, run)
    p.set_defaults(flag_names=_FLAGS)  # flags in warnings too
    return p


def run(args: argparse.Namespace) -> int:
    """Run the experiment described by ``args``; return the exit status.

    The first Ctrl-C asks the run to stop after the repair step in progress (a second one
    aborts at once): the finished work is reported and written as usual, a line on stderr
    says where, and the status is 130. While the clean and poisoned models train there is
    nothing to keep: Ctrl-C aborts at once and the KeyboardInterrupt propagates.

    Returns:
        0 when done (also when an update step was not applied: a rejected update is a
        result, and the summary line and the report say NOT APPLIED and why), 2 on bad
        input, 1 when the results cannot be written, 130
        (:data:`~fastunlearn._interrupt.INTERRUPTED_STATUS`) when stopped on request
        (the partial results are written, and printed with ``--json``).

    """
    from .._device import parse_device
    from .experiment import (
        PROTOCOLS,
        RepairConfig,
        _protocol_status,
        lissa_damping_text,
        run_repair_experiment,
        write_outputs,
    )

    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    config = RepairConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, budget=args.budget,
        seed=args.seed, epochs=args.epochs, lr=args.lr, train_batch=args.train_batch,
        protocols=protocols, order=args.order, solver=args.solver, curvature=args.curvature,
        damping=args.damping, tau=args.tau, steps=args.steps, batch=args.batch,
        last_layers=args.last_layers, hvp_batch_size=args.hvp_batch_size,
        cg_tol=args.cg_tol, cg_maxiter=args.cg_maxiter, lissa_batch=args.lissa_batch,
        lissa_damping=args.lissa_damping, lissa_scale=args.lissa_scale,
        lissa_depth=args.lissa_depth, lissa_hessian=args.lissa_hessian,
        n_train=args.n_train, device=args.device,
        progress=resolve_progress(args.progress), cache_dir=args.cache_dir)
    # the flags given that the other settings make pointless (the config's rule table)
    warn_unused_settings(config, repair_rules(config), flags=_FLAGS,
                         given=given_fields(args, {"protocol": "protocols"}))
    stem = f"repair_{args.dataset}"
    try:
        config.validate()
        check_output_folder(args.result_dir, argument="result_dir",
                            names=[f"{stem}.json", f"{stem}.md", f"{stem}.png"])
        parse_device(config.device)
        with GracefulStop(what="repair step") as stop:
            result = run_repair_experiment(config, should_stop=stop)
    except ValueError as exc:  # the config names its fields; the command names its flags
        return command_error("repair", name_flags(str(exc), _FLAGS))
    except (OSError, ImportError) as exc:
        return command_error("repair", name_flags(str(exc), _FLAGS))
    except (EOFError, pickle.UnpicklingError) as exc:  # a truncated or corrupt data file
        return command_error("repair", f"cannot read the data in {args.data_dir!r} "
                             f"({type(exc).__name__}: {exc})")
    try:
        files = write_outputs(result, args.result_dir, plots=not args.no_plots)
    except OSError as exc:  # checked before training; a full disk or a race remains
        return command_error("repair", f"cannot write the results: {exc}", status=1)
    tr = result["training"]
    cached = [name for name in ("clean", "poisoned") if tr.get(f"{name}_cached")]
    print(f"clean {tr['acc_clean']:.4f}  poisoned {tr['acc_poisoned']:.4f}  "
          f"(retraining {tr['retrain_seconds']:.2f} s)"
          + (f"; {' and '.join(cached)} model{'s' if len(cached) > 1 else ''} loaded from "
             f"{config.cache_dir}" if cached else ""))
    for name, done in (tr.get("resumed_after_epoch") or {}).items():
        print(f"the {name} model's training resumed after epoch {done} of {config.epochs} "
              "(kept by an interrupted run; its time includes that run's epochs)")
    if result.get("lissa"):
        print(lissa_damping_text(result["lissa"]))
    for name, p in result["protocols"].items():
        restored = p["restored"]
        pct = "-" if restored is None or restored != restored else f"{100 * restored:.1f} %"
        print(f"{name:>9}: repaired {p['acc_after']:.4f}  restored {pct}  residual "
              f"{p['residual']:.4g}  {p['seconds']:.2f} s  gradients {p['num_gradients']}  "
              f"HVPs {p['num_hvps']}  {_protocol_status(p)}")
    status = _finish(files, result, args)
    if result.get("stopped_on_request"):
        print(f"fastunlearn repair: {result.get('stop_note') or 'stopped on request.'} "
              f"Partial results in {files.get('json')}"
              + (f" (and {', '.join(v for k, v in files.items() if k != 'json')})"
                 if len(files) > 1 else ""), file=sys.stderr)
        return INTERRUPTED_STATUS
    return status
