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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._cli_output import add_json_flag, json_output, plain_warnings
from ._interrupt import INTERRUPTED_STATUS, GracefulStop
from .cli_types import HelpFormatter, add_progress_flags, resolve_progress
from .cli_types import non_negative_float as _non_negative_float
from .cli_types import non_negative_int as _non_negative_int
from .cli_types import open_unit as _open_unit
from .cli_types import path as _path
from .cli_types import positive_float as _positive_float
from .cli_types import positive_int as _positive_int
from .cli_types import ratio as _ratio
from .cli_types import seed as _seed


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
    from ._device import parse_device

    if args.device is not None:
        try:
            parse_device(args.device)
        except ValueError as exc:
            return _error("demo", str(exc))
    if args.result_dir is not None:
        try:  # the demo writes its two reports only after it has run: refuse a bad folder first
            demo.check_result_dir(args.result_dir)
        except ValueError as exc:
            return _error("demo", str(exc))
    argv = [] if args.device is None else ["--device", args.device]
    if args.result_dir is not None:
        argv += ["--result-dir", args.result_dir]
    return demo.main(argv)


# ---- argument types: bad values become clean argparse errors (exit status 2) ------------


def _dataset(text: str) -> str:
    from .certified.experiment import DATASETS

    for name in DATASETS:
        if text.lower() == name.lower():
            return name
    raise argparse.ArgumentTypeError(f"must be one of {', '.join(DATASETS)}, got {text!r}")


def _error(command: str, message: str, status: int = 2) -> int:
    print(f"fastunlearn {command}: error: {message}", file=sys.stderr)
    return status


def _plain_name(text: str) -> str:
    """Parse a file-name prefix: non-empty, no path separators, not ``.`` or ``..``."""
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"must be a plain name without path separators, got {text!r}")
    return text


# ---- remove ---------------------------------------------------------------------------------


def _add_remove_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
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
    data.add_argument("--data-dir", type=_path, default=None,
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
                       help="fraction of negatives kept per one-vs-rest class (ignored "
                       "in binary mode, as in the reference)")
    model.add_argument("--solver", choices=["auto", "cholesky", "cg"], default="auto",
                       help="how Newton steps are solved")
    model.add_argument("--cg-tol", type=_positive_float, default=0.01,
                       help="CG stops when its residual (added to the bound) is below this "
                       "fraction of the step's bound; 1e-10 makes cg and cholesky agree to "
                       "~1e-12")
    model.add_argument("--target-epsilon", type=_positive_float, default=None,
                       help="total epsilon of a DP extractor composed with the head: the "
                       "report gives the removals supported within it (default 2 x --epsilon)")
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
    out.add_argument("--seed", type=_seed, default=0,
                     help="seed of everything, 0 .. 2**32-1")
    out.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    out.add_argument("--result-dir", "--out", dest="result_dir", type=_path, default="result",
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
    for kind, path in result.files.items():
        print(f"wrote {kind:<13} {path}")


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any fitting, a result folder that could not be written at the end."""
    from ._output_folder import check_output_folder
    from .certified.experiment import output_names

    check_output_folder(args.result_dir, argument="result_dir", names=output_names(args.stem))


def _cmd_remove(args: argparse.Namespace) -> int:
    from .certified.experiment import ExperimentConfig, run_removal_experiment

    config = ExperimentConfig(
        dataset=args.dataset, data_dir=args.data_dir, extractor=args.extractor,
        train_mode=args.train_mode, lam=args.lam, std=args.std, epsilon=args.epsilon,
        delta=args.delta, num_steps=args.num_steps, subsample_ratio=args.subsample_ratio,
        num_removes=args.num_removes, batch=args.batch, gamma=args.gamma, solver=args.solver,
        cg_tol=args.cg_tol, target_epsilon=args.target_epsilon,
        device=args.device, seed=args.seed, retrain=not args.no_retrain,
        eval_every=args.eval_every, time_retraining=not args.no_retrain_timing,
        result_dir=args.result_dir, plots=not args.no_plots, verbose=args.verbose)
    try:
        config.validate()
        args.stem = config.stem
        _check_outputs(args)
        with GracefulStop(what="batch of removals") as stop:
            result = run_removal_experiment(
                config, echo=print, progress=resolve_progress(args.progress) and not args.verbose,
                should_stop=stop)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        return _error("remove", str(exc))
    except (ArithmeticError, RuntimeError) as exc:  # e.g. a Cholesky failure at lam 1e-150
        return _error("remove", f"the fit failed numerically ({exc}); extreme --lam, --std "
                      "or --epsilon values can cause this", status=1)
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


# ---- extract --------------------------------------------------------------------------------

#: Default model of ``extract`` per data set: the reference's DP extractor for colour images,
#: a small CNN for the digit images.
_DEFAULT_MODEL = {"digits": "small_cnn", "MNIST": "small_cnn", "SVHN": "svhn_dp",
                  "CIFAR10": "svhn_dp"}


class _ScaledImages(torch.utils.data.Dataset):
    """Images kept in their stored dtype (uint8 for the vision sets) and scaled per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, scale: float) -> None:
        self.images, self.labels, self.scale = images, labels, scale

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].to(torch.float32) / self.scale, self.labels[i]


def _load_images(dataset: str, data_dir: str, svhn_extra: bool) -> dict[str, _ScaledImages]:
    """Train and test images in [0, 1], in the row order the removal experiment uses."""
    if dataset == "digits":
        from .data import load_digits_dataset

        # the same split (and row order) as `remove --dataset digits`; pixels 0..16
        split = load_digits_dataset(normalize=False, dtype=torch.float32)
        return {name: _ScaledImages(X.reshape(-1, 1, 8, 8), y, 16.0) for name, X, y in (
            ("train", split.X_train, split.y_train), ("test", split.X_test, split.y_test))}
    from .data import vision_tensors

    out = {}
    for name, train in (("train", True), ("test", False)):
        images, labels = vision_tensors(dataset, data_dir, train=train,
                                        svhn_extra=svhn_extra and train)
        out[name] = _ScaledImages(images, labels, 255.0)
    return out


def _build_extractor_model(name: str, sample: torch.Tensor, num_classes: int,
                           private: bool) -> Any:
    from .models import build_model

    channels, side = int(sample.shape[0]), int(sample.shape[-1])
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name in ("svhn_dp", "small_cnn", "cifar_cnn"):
        kwargs.update(in_channels=channels, side=side)
    elif name.startswith("resnet") or name in ("allcnn", "mobilenet_v2"):
        kwargs.update(in_channels=channels, norm="group" if private else "batch")
    elif name == "mlp":
        kwargs.update(in_features=int(sample.numel()))
    model = build_model(name, **kwargs)
    # a model that cannot take the images fails here, not deep inside the training loop
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.stack([sample, sample]))
    except RuntimeError as exc:
        raise ValueError(f"'model' {name} cannot take images of shape "
                         f"{tuple(sample.shape)}: {exc}") from None
    finally:
        model.train(was_training)
    return model


def _extractor_name(args: argparse.Namespace, model: str) -> str:
    if args.name:
        return args.name
    if args.extractor == "dp":  # the reference's naming, e.g. dp_delta_1.00e-05_std_6.00
        return f"dp_delta_{args.delta:.2e}_std_{args.std:.2f}"
    if args.extractor == "adversarial":
        return f"adv_{args.attack}_{model}"
    return f"standard_{model}"


def _add_extract_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="train a feature extractor and write features for `remove`",
        description="Train (or load) a feature extractor with DP-SGD, adversarial training "
        "(FGSM/PGD) or plain training on --dataset, then write its features of the train and "
        "test images to <data-dir>/<name>_<dataset>_extracted.safetensors, where `fastunlearn "
        "remove --extractor <name>` finds them. Only a DP extractor keeps a guarantee for "
        "the features; its (epsilon, delta) is stored with them.",
        formatter_class=HelpFormatter)
    p.add_argument("--data-dir", type=_path, required=True,
                   help="folder with the images (and where the features are written)")
    p.add_argument("--dataset", type=_dataset, default="SVHN",
                   help="digits (bundled), MNIST, SVHN or CIFAR10")
    p.add_argument("--extractor", choices=["dp", "adversarial", "standard"], default="dp",
                   help="how the extractor is trained")
    p.add_argument("--model", default=None,
                   help="svhn_dp, small_cnn, mlp, resnet18 or resnet34 (default: svhn_dp for "
                   "SVHN/CIFAR10, small_cnn for digits/MNIST)")
    p.add_argument("--learning-rate", type=_positive_float, default=1e-3, help="Adam lr")
    p.add_argument("--batch-size", type=_positive_int, default=500,
                   help="batch size (DP: expected Poisson batch size)")
    p.add_argument("--epochs", type=_positive_int, default=20, help="passes over the data")
    p.add_argument("--std", type=_positive_float, default=6.0,
                   help="DP-SGD noise multiplier (noise std / clipping norm)")
    p.add_argument("--delta", type=_open_unit, default=1e-5, help="DP delta")
    p.add_argument("--clip", type=_positive_float, default=4.0,
                   help="DP-SGD per-example clipping norm")
    p.add_argument("--attack", choices=["fgsm", "pgd"], default="fgsm",
                   help="adversarial training attack")
    p.add_argument("--attack-epsilon", type=_positive_float, default=8 / 255,
                   help="L-inf radius of the attack (inputs in [0, 1])")
    p.add_argument("--pgd-steps", type=_positive_int, default=10, help="PGD steps")
    p.add_argument("--svhn-extra", action="store_true",
                   help="SVHN: train and extract on train + extra (as the reference)")
    p.add_argument("--name", type=_plain_name, default=None,
                   help="feature-file prefix (default from the settings, e.g. "
                   "dp_delta_1.00e-05_std_6.00 as in the reference)")
    p.add_argument("--checkpoint", type=_path, default=None,
                   help="extractor weights (safetensors): loaded if the file exists (refused "
                   "if it was trained with other settings), else written after training "
                   "(default <data-dir>/<name>_<dataset>_model.safetensors); an existing "
                   "file that is not a safetensors file is never overwritten")
    p.add_argument("--force", action="store_true", help="train even if the checkpoint exists")
    p.add_argument("--no-resume", action="store_true",
                   help="start training from the first epoch even if an interrupted run of "
                   "the same settings left its finished epochs in <checkpoint stem>"
                   ".epoch-state.pt (by default the training resumes after them)")
    p.add_argument("--seed", type=_seed, default=1, help="seed, 0 .. 2**32-1 (reference: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    add_progress_flags(p, "--quiet")
    p.set_defaults(func=_cmd_extract)


def _train_extractor(args: argparse.Namespace, model: Any, train: Any,
                     device: torch.device, epoch_state: Any) -> dict[str, Any]:
    """Train ``model`` as ``args.extractor`` says; return the metadata to store.

    ``epoch_state`` is the file that keeps the finished epochs (training resumes there).
    """
    from .certified import extractors

    progress = resolve_progress(args.progress)
    meta: dict[str, Any] = {"epochs": args.epochs, "lr": args.learning_rate,
                            "batch_size": args.batch_size, "seed": args.seed}
    if args.extractor == "dp":
        loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size)
        _, epsilon = extractors.train_dp_extractor(
            model, loader, epochs=args.epochs, lr=args.learning_rate, noise_multiplier=args.std,
            max_grad_norm=args.clip, delta=args.delta, device=device, progress=progress,
            epoch_checkpoint=epoch_state)
        meta.update(epsilon=epsilon, delta=args.delta, noise_multiplier=args.std,
                    max_grad_norm=args.clip, accountant="opacus rdp, poisson sampling")
        return meta
    gen = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True,
                                         generator=gen)
    if args.extractor == "adversarial":
        extractors.train_adversarial_extractor(
            model, loader, attack=args.attack, epsilon=args.attack_epsilon,
            steps=args.pgd_steps, epochs=args.epochs, lr=args.learning_rate, device=device,
            progress=progress, epoch_checkpoint=epoch_state)
        meta.update(attack=args.attack, attack_epsilon=args.attack_epsilon)
        if args.attack == "pgd":
            meta["pgd_steps"] = args.pgd_steps
    else:
        extractors.train_standard_extractor(model, loader, epochs=args.epochs,
                                            lr=args.learning_rate, device=device,
                                            progress=progress, epoch_checkpoint=epoch_state)
    return meta


def _cmd_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._device import parse_device
    from ._output_folder import check_output_folder

    try:
        device = parse_device(args.device)
        if not Path(args.data_dir).exists():
            raise FileNotFoundError(f"'data_dir' {args.data_dir!r} does not exist")
        if not Path(args.data_dir).is_dir():
            raise FileNotFoundError(f"'data_dir' {args.data_dir!r} is not a folder")
        check_output_folder(args.data_dir, argument="data_dir")  # the features go there
        return _extract(args, device)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        return _error("extract", str(exc))
    except ArithmeticError as exc:  # e.g. the DP accountant at --std 1e-300
        return _error("extract", f"a computation failed numerically ({exc}); extreme "
                      "--std, --delta or --learning-rate values can cause this", status=1)


def _check_checkpoint(checkpoint: Any) -> bool:
    """Return whether ``checkpoint`` holds weights to load.

    Raises ValueError for a path that cannot be a checkpoint (a folder, a file that is not
    safetensors, an unwritable place). Checked before any training, so that a bad
    ``--checkpoint`` costs no run and a user's file that is not a checkpoint is never
    overwritten (not even with ``--force``).
    """
    from safetensors import SafetensorError, safe_open

    from ._output_folder import check_output_folder

    if checkpoint.is_dir():
        raise ValueError(f"'checkpoint' {str(checkpoint)!r} is a folder, not a file")
    if not checkpoint.exists():
        check_output_folder(checkpoint.parent, argument="checkpoint")
        return False
    try:
        with safe_open(str(checkpoint), framework="pt") as f:
            f.metadata()
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"'checkpoint' {str(checkpoint)!r} exists and is not a safetensors "
                         f"file ({exc}); refusing to load or overwrite it") from None
    return True


def _epochs(first: int, last: int) -> str:
    """``"epoch 3"`` or ``"epochs 2-5"``."""
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _train_with_epoch_state(args: argparse.Namespace, model: Any, train: Any,
                            device: torch.device, checkpoint: Any) -> dict[str, Any]:
    """Train, keeping each finished epoch beside ``checkpoint``; resume from there."""
    from .epoch_state import saved_epochs

    epoch_state = checkpoint.with_suffix(".epoch-state.pt")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)  # the epochs are kept beside it
    if args.no_resume and epoch_state.is_file():
        epoch_state.unlink()
        print(f"--no-resume: removed the finished epochs of an earlier run ({epoch_state})")
    done = saved_epochs(epoch_state)
    if done and done > args.epochs:  # refused before a "resuming after epoch 23 of 20"
        raise ValueError(f"'epochs' {args.epochs} is fewer than the {done} finished epochs "
                         f"an earlier run left in {epoch_state}: pass --epochs {done} or more "
                         "to resume, or --no-resume to start over")
    if done:
        print(f"resuming after epoch {done} of {args.epochs}: an interrupted run of these "
              f"settings left them in {epoch_state} (--no-resume starts over)")
    try:
        meta = _train_extractor(args, model, train, device, epoch_state)
    except ValueError as exc:
        if "'epoch_checkpoint'" not in str(exc) or not epoch_state.is_file():
            raise
        raise ValueError(f"{exc} (--no-resume removes it)") from None
    except KeyboardInterrupt:
        kept = saved_epochs(epoch_state)
        if kept:
            raise KeyboardInterrupt(f"{kept} of {args.epochs} epochs are kept in {epoch_state}; "
                                    "the same command resumes after them") from None
        raise
    if done:
        meta["resumed_after_epoch"] = done  # train_seconds counts this run's epochs only
    return meta


def _training_settings(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """Return the flags that determine an extractor's weights and privacy, keyed by flag.

    They are stored with the checkpoint (its ``settings`` metadata) and compared by
    :func:`_check_checkpoint_settings` before the checkpoint is reused.
    """
    settings: dict[str, Any] = {
        "--extractor": args.extractor, "--model": model, "--dataset": args.dataset,
        "--epochs": args.epochs, "--batch-size": args.batch_size,
        "--learning-rate": args.learning_rate, "--seed": args.seed}
    if args.dataset == "SVHN":
        settings["--svhn-extra"] = args.svhn_extra
    if args.extractor == "dp":
        settings.update({"--std": args.std, "--clip": args.clip, "--delta": args.delta})
    elif args.extractor == "adversarial":
        settings.update({"--attack": args.attack, "--attack-epsilon": args.attack_epsilon})
        if args.attack == "pgd":
            settings["--pgd-steps"] = args.pgd_steps
    return json.loads(json.dumps(settings))  # as they read back from the file


def _check_checkpoint_settings(checkpoint: Any, saved: str | None,
                               settings: dict[str, Any]) -> None:
    """Refuse to reuse ``checkpoint`` when its stored training ``saved`` differ from ``settings``.

    A checkpoint of an older version, without stored settings, is loaded with a warning
    line that its settings cannot be checked.

    Raises:
        ValueError: the settings differ (each flag named with its saved and new value), or
            the stored settings are unreadable.

    """
    if saved is None:
        print(f"fastunlearn extract: warning: {checkpoint} was written by an older fastunlearn "
              "that did not record its training settings, so they cannot be checked against "
              "these flags (--force retrains it)", file=sys.stderr)
        return
    try:
        old = json.loads(saved)
    except ValueError:
        old = None
    if not isinstance(old, dict):
        raise ValueError(f"'checkpoint' {str(checkpoint)!r} holds unreadable training "
                         "settings: pass --force to train a new one, or --name / --checkpoint "
                         "to keep it")
    changed = sorted(k for k in old.keys() | settings.keys() if old.get(k) != settings.get(k))
    if changed:
        shown = "; ".join(f"{k}: saved {old.get(k, 'unset')!r}, now {settings.get(k, 'unset')!r}"
                          for k in changed)
        raise ValueError(f"'checkpoint' {str(checkpoint)!r} was trained with other settings "
                         f"({shown}): pass --force to retrain it, or another --name or "
                         "--checkpoint to keep both")


def _extract(args: argparse.Namespace, device: torch.device) -> int:
    import time
    from pathlib import Path

    from safetensors import safe_open
    from safetensors.torch import load_model, save_model

    from ._atomic_files import replace_atomically
    from .certified.extractors import extract_features
    from .data import extracted_features_path, save_features

    parts = _load_images(args.dataset, args.data_dir, args.svhn_extra)
    train, test = parts["train"], parts["test"]
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    model_name = args.model or _DEFAULT_MODEL[args.dataset]
    name = _extractor_name(args, model_name)
    torch.manual_seed(args.seed)
    model = _build_extractor_model(model_name, train[0][0], num_classes,
                                   private=args.extractor == "dp")
    checkpoint = Path(args.checkpoint or Path(args.data_dir) / f"{name}_{args.dataset}_model"
                      ".safetensors")
    has_checkpoint = _check_checkpoint(checkpoint)
    settings = _training_settings(args, model_name)
    features_path = extracted_features_path(args.data_dir, name, args.dataset)
    if features_path.is_dir():
        raise ValueError(f"'data_dir' {args.data_dir!r}: the features file "
                         f"{features_path.name!r} in it is a folder")
    print(f"extract: {args.extractor} extractor {model_name} ({model.feature_dim} features) on "
          f"{args.dataset}: {len(train)} train / {len(test)} test images")
    if has_checkpoint and not args.force:
        with safe_open(str(checkpoint), framework="pt") as f:
            stored = f.metadata() or {}
        meta = json.loads(stored.get("meta", "{}"))
        for key, wanted in (("model", model_name), ("extractor", args.extractor)):
            if meta.get(key, wanted) != wanted:
                raise ValueError(
                    f"'checkpoint' {str(checkpoint)!r} holds a {meta[key]} {key}, not the "
                    f"{wanted} asked for: pass --force to train a new one, or --name / "
                    "--checkpoint to keep both")
        _check_checkpoint_settings(checkpoint, stored.get("settings"), settings)
        try:
            load_model(model, str(checkpoint), device="cpu")
        except RuntimeError as exc:
            raise ValueError(f"'checkpoint' {str(checkpoint)!r} does not fit model "
                             f"{model_name}: {exc}") from None
        print(f"loaded the trained extractor from {checkpoint} (--force trains a new one)")
    else:
        start = time.perf_counter()
        meta = _train_with_epoch_state(args, model, train, device, checkpoint)
        meta["train_seconds"] = time.perf_counter() - start
        meta.update(extractor=args.extractor, model=model_name, name=name,
                    dataset=args.dataset)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        # whole or not at all (a Ctrl-C here must not leave a truncated checkpoint that the
        # next run would load), with the usual file mode (save_model creates it 0600)
        replace_atomically(checkpoint, lambda tmp: save_model(
            model.cpu(), str(tmp),
            metadata={"meta": json.dumps(meta), "settings": json.dumps(settings)}))
        done, seconds = meta.get("resumed_after_epoch"), meta["train_seconds"]
        span = (f"{_epochs(done + 1, args.epochs)} in {seconds:.1f} s ({_epochs(1, done)} in "
                "an earlier run)" if done else f"in {seconds:.1f} s")
        print(f"trained {span}; wrote {checkpoint}")
    if "epsilon" in meta:
        print(f"privacy of the extractor: ({meta['epsilon']:.4g}, {meta['delta']:.2g})-DP")
    else:
        print("the extractor is not private: a certificate of the head will not cover it")
    features, labels = {}, {}
    for split, images in (("train", train), ("test", test)):
        loader = torch.utils.data.DataLoader(images, batch_size=args.batch_size)
        features[split], labels[split] = extract_features(model, loader, device,
                                                          progress=resolve_progress(args.progress))
    path = save_features(features_path, features, labels, meta=meta)
    print(f"wrote {path} ({features['train'].shape[0]} + {features['test'].shape[0]} rows, "
          f"{features['train'].shape[1]} features)")
    print(f"next: fastunlearn remove --data-dir {args.data_dir} --dataset {args.dataset} "
          f"--extractor {name}")
    return 0


class _CommandParser(argparse.ArgumentParser):
    """The parser of one command: it reports arguments it does not know itself.

    argparse hands a subcommand's unknown arguments up to the top-level parser, whose error
    shows the top-level usage; here ``fastunlearn extract --verbose`` shows extract's usage
    and ``fastunlearn extract: error: unrecognized arguments: --verbose`` (exit status 2).
    """

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Parse like ``ArgumentParser.parse_known_args``, but exit on any unknown argument."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``fastunlearn`` command."""
    parser = argparse.ArgumentParser(
        prog="fastunlearn", description="Machine unlearning on fused C++/CUDA kernels."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    info = sub.add_parser("info", help="versions, compiled backends and devices")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="run the digits demo")
    demo.add_argument("--device", default=None,
                      help="cpu, cuda or cuda:<i> (default: cuda if available, else cpu)")
    demo.add_argument("--result-dir", type=_path, default=None,
                      help="also write JSON, PNG plots and a Markdown report of the first two "
                           "sections")
    demo.set_defaults(func=_cmd_demo)
    _add_remove_parser(sub)
    _add_extract_parser(sub)
    for add_parser in _command_modules():
        add_parser(sub)
    return parser


def _command_modules() -> list[Callable[[argparse._SubParsersAction], Any]]:
    """Return the ``add_parser`` functions of the commands kept beside their packages."""
    from .exposure.cli import add_parser as exposure
    from .harness.cli import add_parser as forget
    from .influence.cli import add_parser as repair
    from .influence.feature_cli import add_parser as unlearn_features
    from .metrics.cli import add_parser as evaluate
    from .report.cli import add_parser as html

    return [repair, unlearn_features, forget, evaluate, exposure, html]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastunlearn`` command; returns the exit status.

    Ctrl-C, from the parsing of the flags (which imports the commands' modules) to the end,
    prints one line and returns 130; it cannot reach here while ``import fastunlearn``
    itself runs (before this function exists).
    """
    words = sys.argv[1:] if argv is None else list(argv)
    # the command's name for a Ctrl-C before the flags are parsed
    command = next((w for w in words if isinstance(w, str) and not w.startswith("-")), None)
    try:
        args = build_parser().parse_args(words)
        command = args.command
        with plain_warnings(f"fastunlearn {args.command}"):
            return args.func(args)
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or a stop where no step can finish
        detail = f": {exc}" if str(exc) else ""  # e.g. which trained models were kept
        prog = "fastunlearn" if command is None else f"fastunlearn {command}"
        print(f"\n{prog}: interrupted (Ctrl-C){detail}", file=sys.stderr)
        return INTERRUPTED_STATUS


if __name__ == "__main__":
    sys.exit(main())
