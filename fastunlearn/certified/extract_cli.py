"""The ``fastunlearn extract`` command: train (or load) a feature extractor, write features.

The features go where ``fastunlearn remove --extractor <name>`` reads them. Finished
epochs are kept beside the checkpoint, so an interrupted training resumes after them.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import TYPE_CHECKING, Any

from .._cli_output import command_error
from .._no_effect import no_effect_message
from ..cli_types import (
    COMMON_FLAGS,
    GivenFlag,
    HelpFormatter,
    add_progress_flags,
    name_flags,
    open_unit,
    path,
    positive_float,
    positive_int,
    resolve_progress,
    seed,
    warn_unused_flags,
)
from .cli import dataset_name

if TYPE_CHECKING:
    import torch


def _plain_name(text: str) -> str:
    """Parse a file-name prefix: non-empty, no path separators, not ``.`` or ``..``."""
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"must be a plain name without path separators, got {text!r}")
    return text


#: The settings the command's errors name, as its flags.
_FLAGS = {**COMMON_FLAGS, "dataset": "--dataset", "model": "--model", "epochs": "--epochs",
          "attack": "--attack", "checkpoint": "--checkpoint", "seed": "--seed"}

#: Default model of ``extract`` per data set: the reference's DP extractor for colour images,
#: a small CNN for the digit images.
_DEFAULT_MODEL = {"digits": "small_cnn", "MNIST": "small_cnn", "SVHN": "svhn_dp",
                  "CIFAR10": "svhn_dp"}


def _build_extractor_model(name: str, sample: torch.Tensor, num_classes: int,
                           private: bool) -> Any:
    import torch

    from ..models import build_model

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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``extract`` command to the ``fastunlearn`` parser."""
    p = subparsers.add_parser(
        "extract", help="train a feature extractor and write features for `remove`",
        description="Train (or load) a feature extractor with DP-SGD, adversarial training "
        "(FGSM/PGD) or plain training on --dataset, then write its features of the train and "
        "test images to <data-dir>/<name>_<dataset>_extracted.safetensors, where `fastunlearn "
        "remove --extractor <name>` finds them. Only a DP extractor keeps a guarantee for "
        "the features; its (epsilon, delta) is stored with them.",
        formatter_class=HelpFormatter)
    p.add_argument("--data-dir", type=path, required=True,
                   help="folder with the images (and where the features are written)")
    p.add_argument("--dataset", type=dataset_name, default="SVHN",
                   help="digits (bundled), MNIST, SVHN or CIFAR10")
    p.add_argument("--extractor", choices=["dp", "adversarial", "standard"], default="dp",
                   help="how the extractor is trained")
    p.add_argument("--model", default=None,
                   help="svhn_dp, small_cnn, mlp, resnet18 or resnet34 (default: svhn_dp for "
                   "SVHN/CIFAR10, small_cnn for digits/MNIST)")
    p.add_argument("--learning-rate", type=positive_float, default=1e-3, help="Adam lr")
    p.add_argument("--batch-size", type=positive_int, default=500,
                   help="batch size (DP: expected Poisson batch size)")
    p.add_argument("--epochs", type=positive_int, default=20, help="passes over the data")
    p.add_argument("--std", action=GivenFlag, type=positive_float, default=6.0,
                   help="DP-SGD noise multiplier (noise std / clipping norm); --extractor dp")
    p.add_argument("--delta", action=GivenFlag, type=open_unit, default=1e-5,
                   help="DP delta; --extractor dp")
    p.add_argument("--clip", action=GivenFlag, type=positive_float, default=4.0,
                   help="DP-SGD per-example clipping norm; --extractor dp")
    p.add_argument("--attack", action=GivenFlag, choices=["fgsm", "pgd"], default="fgsm",
                   help="adversarial training attack; --extractor adversarial")
    p.add_argument("--attack-epsilon", action=GivenFlag, type=positive_float, default=8 / 255,
                   help="L-inf radius of the attack (inputs in [0, 1]); --extractor adversarial")
    p.add_argument("--pgd-steps", action=GivenFlag, type=positive_int, default=10,
                   help="PGD steps; --extractor adversarial --attack pgd")
    p.add_argument("--svhn-extra", action="store_true",
                   help="SVHN only: train and extract on train + extra (as the reference)")
    p.add_argument("--name", type=_plain_name, default=None,
                   help="feature-file prefix (default from the settings, e.g. "
                   "dp_delta_1.00e-05_std_6.00 as in the reference)")
    p.add_argument("--checkpoint", type=path, default=None,
                   help="extractor weights (safetensors): loaded if the file exists (refused "
                   "if it was trained with other settings), else written after training "
                   "(default <data-dir>/<name>_<dataset>_model.safetensors); an existing "
                   "file that is not a safetensors file is never overwritten")
    p.add_argument("--force", action="store_true", help="train even if the checkpoint exists")
    p.add_argument("--no-resume", action="store_true",
                   help="start training from the first epoch even if an interrupted run of "
                   "the same settings left its finished epochs in <checkpoint stem>"
                   ".epoch-state.pt (by default the training resumes after them)")
    p.add_argument("--seed", type=seed, default=1, help="seed, 0 .. 2**32-1 (reference: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    add_progress_flags(p, "--quiet")
    p.set_defaults(func=_cmd_extract)


def _warn_unused_extract_flags(args: argparse.Namespace) -> None:
    """Warn about ``extract`` flags given on the command line that the training ignores."""
    extractor = args.extractor
    warn_unused_flags(args, [
        (extractor != "dp", ("std", "clip", "delta"),
         f"with '--extractor {extractor}' (for the DP extractor)"),
        (extractor != "adversarial", ("attack", "attack_epsilon", "pgd_steps"),
         f"with '--extractor {extractor}' (for the adversarial extractor)"),
        (extractor == "adversarial" and args.attack == "fgsm", ("pgd_steps",),
         "with '--attack fgsm' (for the PGD attack)"),
    ])


def _train_extractor(args: argparse.Namespace, model: Any, train: Any,
                     device: torch.device, epoch_state: Any) -> dict[str, Any]:
    """Train ``model`` as ``args.extractor`` says; return the metadata to store.

    ``epoch_state`` is the file that keeps the finished epochs (training resumes there).
    """
    import torch

    from . import extractors

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

    from .._device import parse_device
    from .._output_folder import check_output_folder

    if args.svhn_extra and args.dataset != "SVHN":
        return command_error("extract", "'--svhn-extra' applies to SVHN only, got "
                             f"'--dataset {args.dataset}'")
    _warn_unused_extract_flags(args)
    try:
        device = parse_device(args.device)
        if not Path(args.data_dir).exists():
            raise FileNotFoundError(f"'data_dir' {args.data_dir!r} does not exist")
        if not Path(args.data_dir).is_dir():
            raise FileNotFoundError(f"'data_dir' {args.data_dir!r} is not a folder")
        check_output_folder(args.data_dir, argument="data_dir")  # the features go there
        return _extract(args, device)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        return command_error("extract", name_flags(str(exc), _FLAGS))
    except ArithmeticError as exc:  # e.g. the DP accountant at --std 1e-300
        return command_error("extract", f"a computation failed numerically ({exc}); extreme "
                      "--std, --delta or --learning-rate values can cause this", status=1)


def _check_checkpoint(checkpoint: Any) -> bool:
    """Return whether ``checkpoint`` holds weights to load.

    Raises ValueError for a path that cannot be a checkpoint (a folder, a file that is not
    safetensors, an unwritable place). Checked before any training, so that a bad
    ``--checkpoint`` costs no run and a user's file that is not a checkpoint is never
    overwritten (not even with ``--force``).
    """
    from safetensors import SafetensorError, safe_open

    from .._output_folder import check_output_folder

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
    from ..epoch_state import saved_epochs

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

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_model, save_model

    from .._atomic_files import replace_atomically
    from ..data import extracted_features_path, save_features
    from .extractor_images import load_extractor_images
    from .extractors import extract_features

    parts = load_extractor_images(args.dataset, args.data_dir, args.svhn_extra)
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
        if args.no_resume:  # no training, so nothing to start over
            warnings.warn(no_effect_message(
                ["--no-resume"], f"with the trained extractor in {str(checkpoint)!r} (it is "
                "loaded, not trained; '--force' trains a new one)"), UserWarning, stacklevel=1)
    else:
        if args.force and not has_checkpoint:  # nothing to replace: it trains anyway
            warnings.warn(no_effect_message(
                ["--force"], f"without a trained extractor in {str(checkpoint)!r} (there is "
                "none to replace; the extractor is trained anyway)"), UserWarning, stacklevel=1)
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
