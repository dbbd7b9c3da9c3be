"""Label-poisoning repair experiment (Warnecke et al., NDSS 2023, Section 5 setup).

Poison the training labels by flipping class ``s`` to ``9 - s`` for ``budget // 10`` rows of
every source class (the reference's ``flip_labels``), train a clean model (on the true
labels: this *is* retraining, and its time is the retraining time) and a poisoned model, then
repair the poisoned model with influence updates:

- ``iterative`` (the reference protocol): ``steps`` updates; before each, every training row
  whose prediction differs from its corrected label is a candidate and ``batch`` of them are
  sampled, with ``z = (x, current prediction)`` and ``z~ = (x, corrected label)``;
- ``one-shot``: one update on the known flipped rows, ``z = (x, flipped label)``,
  ``z~ = (x, true label)``.

Accuracies (clean, poisoned, repaired) are all measured on the same test split, and
``% restored = (after - before) / (clean - before)`` (NaN when the poisoned model is not
worse than the clean one: there is no damage to restore). Also reported: the
gradient-residual norm ``||grad L(theta_new; D~)||`` of the corrected training loss,
per-sample gradient and HVP counts, and wall times (evaluation excluded from the repair
time).

Data: the embedded digits (8x8, ``small_cnn`` by default) or CIFAR-10 from ``data_dir``
(the reference's 1.8M-parameter CNN, ``cifar_cnn``; pixels scaled to [0, 1]).
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._atomic_files import save_figure, write_text
from .._device import parse_device
from .._earlier_results import keep_earlier_run
from .._interrupt import StopCheck, check_stop_callable, stop_points, stop_requested
from .._json_data import json_ready
from .._model_cache import cache_key, load_cached, store_cached, tensor_digest, weights_digest
from .._numbers import as_float, check_flag, check_int, check_real, check_seed, is_real
from .._numbers import plain_fields as _plain_fields
from .._output_folder import check_output_folder
from .._paths import check_path
from .._process_flags import GLOBAL_RNG_LOCK
from .._unused_settings import warn_unused_settings
from ..epoch_state import EpochState, cache_epoch_state, saved_epochs
from .arguments import (
    _check_auto_or_float,
    _check_labelled_rows,
    _check_order,
)
from .drivers import iterative_label_repair, predict, repair_labels
from .gradients import default_loss, eval_mode, last_parameters, loss_gradient
from .unused_settings import repair_rules
from .update import CURVATURES, LISSA_HESSIANS, MAX_DIRECT_PARAMS, SOLVERS, LissaSettings

__all__ = [
    "PROTOCOLS",
    "RepairConfig",
    "RepairData",
    "flip_labels",
    "load_repair_data",
    "train_classifier",
    "accuracy",
    "run_repair_experiment",
    "write_outputs",
    "render_report",
]

PROTOCOLS = ("iterative", "one-shot")


def _check_cg_tol(cg_tol: float) -> None:
    """Refuse a CG tolerance ``cg_tol`` that is not finite and > 0 (named, as the commands do).

    CG stops once its relative true residual is at most ``cg_tol``. At 0 no solve ever
    stops early (rounding keeps the residual above 0): each runs to ``cg_maxiter``, is
    reported as not converged ("relative residual 1.46e-15 > tol=0") and is applied anyway,
    at up to ``cg_maxiter / iterations needed`` times the cost (digits, default settings:
    500 instead of 46 CG iterations for ``unlearn-features``, 100 instead of 9 for a
    one-shot ``repair``) for the same update. ``--cg-tol`` of both commands refuses it too.
    """
    value = as_float(cg_tol)  # an int beyond the float range is infinite, not an error
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"'cg_tol' must be positive (finite and > 0), got {value}: CG stops at this "
            "relative residual, and 0 is never reached (every solve would run to "
            "'cg_maxiter' and be reported as not converged); use a small positive tolerance "
            "such as 1e-10, and 'cg_maxiter' for a fixed number of iterations")


@dataclass
class RepairConfig:
    """Settings of :func:`run_repair_experiment`.

    Attributes:
        dataset: ``"digits"`` (embedded) or ``"cifar10"`` (from ``data_dir``).
        data_dir: Folder with the torchvision CIFAR-10 files (cifar10 only).
        model: Model zoo name (default: ``small_cnn`` for digits, ``cifar_cnn`` for CIFAR).
        budget: Flipped labels (``budget // 10`` per source class, so ``10 * (budget //
            10)`` in all; a budget that is not a multiple of 10 warns); default 20 % of the
            training set (the reference's 10,000 of 50,000).
        seed: Seed of the poisoning, training and sampling.
        epochs: Training epochs (Adam, amsgrad, as the reference).
        lr: Training learning rate.
        train_batch: Training mini-batch size.
        protocols: Which of ``iterative`` and ``one-shot`` to run.
        order: 1 or 2.
        solver: ``cg``, ``lissa`` or ``direct`` (second order).
        curvature: ``ggn`` (positive semidefinite, default) or ``hessian``.
        damping: Tikhonov damping of CG/direct.
        tau: First-order step (a number or ``"auto"``).
        steps: Iterative protocol steps (reference 10).
        batch: Points per iterative step (reference 1024 second order, 512 first order).
        last_layers: Update only the last ``k`` trainable parameter tensors (0: all; the
            reference uses 6 for its CIFAR CNN); at most the model's number of them
            (checked before training).
        hvp_batch_size: Rows per HVP batch.
        cg_tol: CG relative tolerance (true residual), > 0 (use ``cg_maxiter`` for a fixed
            number of iterations).
        cg_maxiter: CG iteration cap.
        lissa_batch: LiSSA batch B (reference 1024).
        lissa_damping: LiSSA d (reference 1e-4). ``d s`` is the damping relative to the
            Hessian LiSSA multiplies by. With ``lissa_hessian="batch"`` that is the summed
            Hessian of one batch, so relative to the full-data Hessian the damping is
            ``k d s`` and the step is k times the damped Newton step (k = ceil(N / B);
            the result's ``lissa`` entry and each step's ``damping`` / ``step_scale``).
        lissa_scale: LiSSA s (reference 2e5).
        lissa_depth: LiSSA steps.
        lissa_hessian: ``"batch"`` (summed batch Hessian, the reference) or ``"full"``
            (batch Hessian times N / B, an estimate of the full-data Hessian).
        n_train: Use only the first ``n_train`` training rows (0: all); at most the
            number of training rows (checked when the data is loaded).
        device: ``cpu``, ``cuda`` or ``cuda:<i>``.
        progress: Show progress bars.
        cache_dir: Folder of trained clean and poisoned models (None: always train, store
            nothing). A run whose data, model, initial weights, recipe (``epochs``, ``lr``,
            ``train_batch``), seed, torch version and device type match a stored model
            loads it instead of training, and reports the stored training time; the
            ``fastunlearn forget`` cache can share the folder.

    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str | None = None
    budget: int | None = None
    seed: int = 42
    epochs: int = 100
    lr: float = 3e-3
    train_batch: int = 64
    protocols: tuple[str, ...] = PROTOCOLS
    order: int = 2
    solver: str = "cg"
    curvature: str = "ggn"
    damping: float = 100.0
    tau: float | str = "auto"
    steps: int = 10
    batch: int = 1024
    last_layers: int = 0
    hvp_batch_size: int | None = 4096
    cg_tol: float = 1e-4
    cg_maxiter: int = 100
    lissa_batch: int = 1024
    lissa_damping: float = 1e-4
    lissa_scale: float = 2e5
    lissa_depth: int = 100
    lissa_hessian: str = "batch"
    n_train: int = 0
    device: str = "cpu"
    progress: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _plain_fields(self)  # NumPy scalars as Python values (equality, JSON)

    def validate(self) -> RepairConfig:
        """Check every field; return self.

        Warns (UserWarning) about fields set to a value other than their default that the
        other settings make pointless (``'damping' has no effect with solver='lissa' ...``;
        the table: :func:`~fastunlearn.influence.unused_settings.repair_rules`), each once
        however often the config is validated.

        Every field is checked by type and range here, before any data is loaded or a
        model trained: nothing is coerced (``epochs=2.5``, ``True`` or ``"3"`` are
        refused, not rounded or parsed).

        Raises:
            ValueError: a field out of range (named; ``cg_tol`` must be > 0, ``seed`` in
                ``[0, 2**64 - 1]``, ``model`` None or a name of the model zoo,
                ``protocols`` a non-empty subset of
                :data:`PROTOCOLS` without duplicates), or a device that is not visible.
            TypeError: a field of the wrong type (named): a bool, str, float or None where
                an int count is expected, a bool or str where a number is (``tau``: a
                number or ``"auto"``), a non-bool ``progress``, a non-str name
                (``dataset``, ``model``, ``solver``, ``device`` ...), or ``protocols`` not a
                tuple or list.

        """
        _plain_fields(self)  # fields may have been set after construction
        # every field by type and range, before any data is loaded or a model is trained
        for name, choices in (("dataset", ("digits", "cifar10")), ("solver", SOLVERS),
                              ("curvature", CURVATURES), ("lissa_hessian", LISSA_HESSIANS)):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"'{name}' must be a str, one of {tuple(choices)}, got "
                                f"{type(value).__name__} {value!r}")
            if value not in choices:
                raise ValueError(f"'{name}' must be one of {tuple(choices)}, got {value!r}")
        if self.data_dir is not None:
            check_path(self.data_dir, "data_dir")  # TypeError / ValueError (empty)
        if self.dataset == "cifar10" and not self.data_dir:
            raise ValueError("'data_dir' is required for dataset 'cifar10'")
        if self.model is not None and not isinstance(self.model, str):
            raise TypeError(f"'model' must be a model zoo name (str) or None, got "
                            f"{type(self.model).__name__} {self.model!r}")
        if self.model is not None:
            from ..models.zoo import MODELS

            if self.model not in MODELS:  # "" too: it would quietly become the default
                raise ValueError(f"'model' must be a model zoo name, one of "
                                 f"{sorted(MODELS)} (by default small_cnn for digits, cifar_cnn "
                                 f"for cifar10), got {self.model!r}")
        if self.cache_dir is not None:
            check_path(self.cache_dir, "cache_dir")  # TypeError / ValueError (empty)
            if not isinstance(os.fspath(self.cache_dir), str):
                raise TypeError("'cache_dir' must be a str path, got bytes")
            self.cache_dir = os.fspath(self.cache_dir)  # a Path would not go into the JSON
        for name in ("epochs", "train_batch", "steps", "batch", "cg_maxiter", "lissa_batch",
                     "lissa_depth"):
            check_int(name, getattr(self, name), 1)
        for name in ("last_layers", "n_train"):
            check_int(name, getattr(self, name), 0)
        check_seed("seed", self.seed)
        if self.hvp_batch_size is not None:
            check_int("hvp_batch_size", self.hvp_batch_size, 1)
        if self.budget is not None:
            if check_int("budget", self.budget) < 10:
                raise ValueError(f"'budget' must be >= 10 (budget // 10 per class), got "
                                 f"{self.budget}")
        if isinstance(self.protocols, (str, bytes)) or not isinstance(self.protocols,
                                                                      (tuple, list)):
            raise TypeError(f"'protocols' must be a tuple of names from {PROTOCOLS}, got "
                            f"{type(self.protocols).__name__} {self.protocols!r}")
        bad = [p for p in self.protocols if not isinstance(p, str) or p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ValueError(f"'protocols' must be a non-empty subset of {PROTOCOLS}, got "
                             f"{self.protocols}")
        if len(set(self.protocols)) != len(self.protocols):  # a second run would overwrite
            raise ValueError(f"'protocols' holds duplicates: {tuple(self.protocols)}")
        _check_order(self.order)
        for name in ("damping", "lissa_damping"):
            check_real(name, getattr(self, name))
        for name in ("lr", "lissa_scale"):
            check_real(name, getattr(self, name), positive=True)
        if not is_real(self.cg_tol):
            raise TypeError(f"'cg_tol' must be a real number, got "
                            f"{type(self.cg_tol).__name__} {self.cg_tol!r}")
        _check_cg_tol(self.cg_tol)
        _check_auto_or_float("tau", self.tau, positive=True)
        check_flag("progress", self.progress)
        if not isinstance(self.device, str):
            raise TypeError(f"'device' must be a str such as 'cuda:1', got "
                            f"{type(self.device).__name__}")
        parse_device(self.device)  # cpu, cuda or cuda:<i>, visible
        # settings the others make pointless (each named once, however often validated)
        warn_unused_settings(self, repair_rules(self), stacklevel=2)
        return self

    @property
    def model_name(self) -> str:
        """The zoo model used."""
        return self.model or ("small_cnn" if self.dataset == "digits" else "cifar_cnn")


@dataclass
class RepairData:
    """Images and labels of one experiment (all on the experiment's device).

    Attributes:
        X_train: Tensor[N, C, H, W] float32.
        y_train: True labels [N].
        X_test: Tensor[M, C, H, W].
        y_test: Labels [M].
        num_classes: 10.

    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int = 10


def load_repair_data(config: RepairConfig) -> RepairData:
    """Load the digits (stratified seed-0 split, pixels / 16) or CIFAR-10 (pixels / 255).

    Raises:
        ValueError: ``config.n_train`` is above the number of training rows.

    """
    if config.dataset == "digits":
        from ..data import load_digits_dataset

        split = load_digits_dataset(normalize=False, dtype=torch.float32, seed=0)
        X_tr = (split.X_train / 16.0).reshape(-1, 1, 8, 8)
        X_te = (split.X_test / 16.0).reshape(-1, 1, 8, 8)
        y_tr, y_te = split.y_train, split.y_test
    else:
        from ..data import vision_tensors

        assert config.data_dir is not None
        X_tr, y_tr = vision_tensors("cifar10", config.data_dir, train=True)
        X_te, y_te = vision_tensors("cifar10", config.data_dir, train=False)
        X_tr, X_te = X_tr.float() / 255.0, X_te.float() / 255.0
    if config.n_train:
        available = int(X_tr.shape[0])
        if int(config.n_train) > available:  # a slice would silently keep all the rows
            raise ValueError(f"'n_train' must be <= {available} training rows (0: all), got "
                             f"{config.n_train}")
        X_tr, y_tr = X_tr[: config.n_train], y_tr[: config.n_train]
    dev = torch.device(config.device)
    return RepairData(X_tr.contiguous().to(dev), y_tr.to(dev), X_te.contiguous().to(dev),
                      y_te.to(dev))


def flip_labels(labels: Tensor, budget: int, seed: int) -> tuple[Tensor, Tensor]:
    """Flip ``budget // 10`` rows of every class ``s`` to ``9 - s`` (reference ``flip_labels``).

    Args:
        labels: True labels in 0..9, Tensor[N].
        budget: Total flips (>= 10).
        seed: Seed of the per-class choice.

    Returns:
        ``(poisoned labels, flipped row indices sorted)``.

    Raises:
        TypeError: ``budget`` or ``seed`` is not an int, or ``labels`` not integer.
        ValueError: ``budget < 10`` (no flip per class; a negative budget would slice
            from the end), ``seed`` outside ``[0, 2**64 - 1]``, a class has fewer than
            ``budget // 10`` rows, or labels outside 0..9.

    """
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise TypeError("'labels' must be an integer torch.Tensor of classes 0..9")
    budget, seed = check_int("budget", budget), check_seed("seed", seed)
    if budget < 10:
        raise ValueError(f"'budget' must be >= 10 (budget // 10 per class), got {budget}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError("'labels' must be in 0..9 to flip s -> 9 - s")
    per_class = budget // 10
    gen = torch.Generator().manual_seed(seed)
    cpu = labels.cpu()
    chosen = []
    for s in range(10):
        rows = torch.nonzero(cpu == s).reshape(-1)
        if rows.numel() < per_class:
            raise ValueError(f"'budget' {budget} needs {per_class} rows of class {s}, "
                             f"only {rows.numel()} exist")
        chosen.append(rows[torch.randperm(rows.numel(), generator=gen)[:per_class]])
    flipped = torch.sort(torch.cat(chosen)).values
    poisoned = cpu.clone()
    poisoned[flipped] = 9 - cpu[flipped]
    return poisoned.to(labels.device), flipped.to(labels.device)


def train_classifier(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
    epoch_state: EpochState | None = None,
) -> float:
    """Train with Adam (amsgrad) on mean cross-entropy; return the wall time in seconds.

    With ``epoch_state`` (:class:`fastunlearn.epoch_state.EpochState`) the training starts
    after the epochs saved there, saves its state after every epoch and removes the file at
    the end; the returned time then includes the earlier runs' epochs.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``X``/``y`` not tensors, ``y`` not
            integer labels, or a number argument of the wrong type.
        ValueError: ``X`` and ``y`` differ in length or are empty, ``epochs < 0``,
            ``batch_size < 1``, ``lr`` not finite and > 0, or ``seed`` outside
            ``[0, 2**64 - 1]``.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    X, y = _check_labelled_rows(X, y)
    if X.shape[0] == 0:
        raise ValueError("'X' and 'y' are empty: nothing to train on")
    epochs = check_int("epochs", epochs, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_real("lr", lr, positive=True)
    seed = check_seed("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, amsgrad=True)
    model.train()
    rng = SimpleNamespace(generator=gen)  # the batch order's generator, saved with the epoch
    start = 0
    if epoch_state is not None:  # restores earlier_seconds: the saved epochs' training time
        start = epoch_state.load(model, opt, epochs=epochs, device=X.device, loader=rng)
    earlier = epoch_state.earlier_seconds if epoch_state is not None else 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc="train", unit="epoch")
    t0 = time.perf_counter()
    for epoch in range(start, epochs):
        perm = torch.randperm(X.shape[0], generator=gen).to(X.device)
        for begin in range(0, X.shape[0], batch_size):
            idx = perm[begin:begin + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
        if epoch_state is not None:
            _sync(X.device)
            seconds = earlier + time.perf_counter() - t0
            epoch_state.save(epoch + 1, model, opt, device=X.device, loader=rng,
                             extra={"seconds": seconds})
        if bar is not None:
            bar.update(1)
    _sync(X.device)
    elapsed = earlier + time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if epoch_state is not None:
        epoch_state.remove()
    model.eval()
    return elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Fraction of rows whose arg-max prediction equals the label."""
    return float((predict(model, X) == y).float().mean())


def _restored(after: float, before: float, clean: float) -> float:
    """Return the share of the poisoning's damage restored, ``(after - before) / (clean - before)``.

    NaN when the poisoned model is not worse than the clean one (``clean - before <= 0``):
    there is no damage to restore, and with a negative gap the ratio would show an
    improvement as a negative share (and a loss as a positive one).
    """
    gap = clean - before
    return (after - before) / gap if gap > 1e-12 else math.nan


def _update_kwargs(config: RepairConfig, model: nn.Module) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        order=config.order, curvature=config.curvature, hvp_batch_size=config.hvp_batch_size,
        progress=config.progress,
    )
    # the solver's settings, tau and lissa only where they act: influence_update warns
    # about them elsewhere, and the config has said so once already (repair_rules)
    if config.order == 1:
        kwargs["tau"] = config.tau
    else:
        kwargs["solver"] = config.solver
    if config.order == 2 and config.solver == "lissa":
        kwargs["lissa"] = _lissa_settings(config)
    if config.order == 2 and config.solver in ("cg", "direct"):
        kwargs["damping"] = config.damping
    if config.order == 2 and config.solver == "cg":
        kwargs.update(tol=config.cg_tol, maxiter=config.cg_maxiter)
    if config.last_layers:
        kwargs["params"] = last_parameters(model, config.last_layers)
    return kwargs


def _lissa_settings(config: RepairConfig) -> LissaSettings:
    return LissaSettings(batch_size=config.lissa_batch, damping=config.lissa_damping,
                         scale=config.lissa_scale, depth=config.lissa_depth, seed=config.seed,
                         hessian=config.lissa_hessian)


def _lissa_summary(config: RepairConfig, n_rows: int) -> dict[str, Any]:
    """Describe LiSSA's damping on ``n_rows`` training rows (see :class:`LissaSettings`)."""
    settings = _lissa_settings(config)
    return {"hessian": settings.hessian, "batch_size": settings.batch_size,
            "batch_damping": settings.effective_damping,
            "step_scale": settings.step_scale(n_rows),
            "full_data_damping": settings.full_data_damping(n_rows)}


def lissa_damping_text(summary: dict[str, Any]) -> str:
    """One sentence on LiSSA's damping relative to the full-data Hessian H."""
    from ..report import format_value as fv

    k, lam = summary["step_scale"], fv(summary["full_data_damping"])
    if summary["hessian"] == "full":
        return (f"LiSSA (batch Hessians scaled to the full data): damping {lam} relative to "
                f"the full-data Hessian H, step (H + {lam} I)^-1 G.")
    return (f"LiSSA (summed Hessians of {summary['batch_size']}-row batches): d s = "
            f"{fv(summary['batch_damping'])} relative to a batch Hessian, i.e. damping "
            f"{lam} relative to the full-data Hessian H, and the step is {k} x "
            f"(H + {lam} I)^-1 G (k = {k} batches per pass).")


def _build_checked_model(config: RepairConfig, X: Tensor, num_classes: int) -> nn.Module:
    """Build the zoo model and run one training row through it before any training.

    Raises:
        ValueError: the model cannot be built for this data, or it does not accept its
            rows (e.g. ``cifar_cnn`` on 8x8 digits) or gives no ``num_classes`` outputs.

    """
    from ..models import build_model

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if config.model_name in ("small_cnn", "svhn_dp"):
        kwargs.update(in_channels=X.shape[1], side=X.shape[-1])
    elif config.model_name == "mlp":
        kwargs.update(in_features=int(X[0].numel()))
    # seed only the generators the run uses; run_repair_experiment has forked them, so the
    # caller's RNG state is restored afterwards (a bare torch.manual_seed reseeded it)
    torch.default_generator.manual_seed(config.seed)
    if X.device.type == "cuda":
        with torch.cuda.device(X.device):
            torch.cuda.manual_seed(config.seed)
    try:
        model = build_model(config.model_name, **kwargs).to(X.device)
    except (TypeError, ValueError) as exc:  # the builder names its own arguments ('side')
        raise ValueError(f"model {config.model_name!r} cannot be built for {config.dataset}: "
                         f"{exc}") from None
    rows = X[:1].flatten(1) if config.model_name == "mlp" else X[:1]
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(rows)
    except RuntimeError as exc:
        raise ValueError(f"model {config.model_name!r} does not fit the {config.dataset} "
                         f"inputs of shape {list(X.shape[1:])}: {exc}") from None
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, num_classes):
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model {config.model_name!r} gives outputs {shape} for one "
                         f"{config.dataset} row, expected [1, {num_classes}]")
    return model


def _check_last_layers(config: RepairConfig, model: nn.Module) -> None:
    """Refuse a ``last_layers`` above the model's number of trainable parameter tensors.

    :func:`~fastunlearn.influence.gradients.last_parameters` would take them all, i.e.
    silently update the whole model as ``last_layers=0`` does.
    """
    count = sum(1 for p in model.parameters() if p.requires_grad)
    if int(config.last_layers) > count:
        raise ValueError(f"'last_layers' must be <= {count} (the model's trainable parameter "
                         f"tensors; 0: all), got {config.last_layers}")


def _residual_norm(model: nn.Module, X: Tensor, y: Tensor, params: Any) -> float:
    """``||grad L(theta; D~)||`` of the summed corrected training loss."""
    g = loss_gradient(model, default_loss, X, y, params=params, chunk_size=1024)
    return float(torch.linalg.vector_norm(g))


def run_repair_experiment(
    config: RepairConfig,
    data: RepairData | None = None,
    *,
    should_stop: StopCheck | None = None,
) -> dict[str, Any]:
    """Run the experiment; return its JSON-ready result dict.

    The model's initialisation (and any dropout while training) draws from torch's global
    RNG seeded with ``config.seed``; the global RNG is forked, so the caller's state (CPU
    and ``config.device``) is the same after the run.

    Args:
        config: The settings (validated here).
        data: Preloaded data (default :func:`load_repair_data`); with ``config.n_train``
            set it must have that many training rows (checked before training).
        should_stop: Optional callable taking no arguments, asked between the two
            trainings, before every protocol and before every iterative step after the
            first (never inside a training or an update). When it answers True between
            the trainings there is nothing to report and KeyboardInterrupt is raised;
            later, the protocol in progress keeps its finished steps (its accuracy and
            % restored are those after them), the remaining protocols are skipped, and
            the result says so (``stopped_on_request``, ``stop_note``). ``fastunlearn
            repair`` answers True after the first Ctrl-C. None: run everything.

    Returns:
        A dict with ``config``, ``data``, ``training`` (clean/poisoned accuracy and times),
        ``protocols`` (one entry per protocol run: accuracy after, % restored (NaN when
        the poisoned model is not worse than the clean one), residual,
        counts, times, per-step trajectory, ``stopped_on_request``),
        ``stopped_on_request`` (bool), ``skipped_protocols`` (those not run because of a
        stop request) and ``stop_note`` (what was done and what skipped; None when the
        run was not stopped).

    Raises:
        TypeError: ``should_stop`` is neither None nor callable (before any work).
        ValueError: bad settings, an unknown model name, a model that does not fit the
            data (checked on one row before training), ``n_train`` above the training rows
            or ``last_layers`` above the model's trainable parameter tensors, or a class
            with fewer than ``budget // 10`` rows (all before training; with the default
            budget the error says that too few training rows were kept).
        KeyboardInterrupt: ``should_stop`` asked to stop before the poisoned model was
            trained (raised after the clean model's training).

    Warns:
        UserWarning: ``budget`` is not a multiple of 10 (``10 * (budget // 10)`` labels
            are flipped; before training).

    """
    check_stop_callable(should_stop)
    config.validate()
    dev = torch.device(config.device)
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        return _run_repair_experiment(config, data, dev, should_stop)


def _stop_note(config: RepairConfig, protocols: dict[str, Any], stopped_in: str | None,
               skipped: list[str]) -> str:
    """Say what a run stopped on request did and what it skipped, in one sentence."""
    done = []
    for name, p in protocols.items():
        if name == "iterative":
            run = sum(1 for s in p["steps"] if "applied" in s)
            text = f"iterative: {run} of {config.steps} steps run"
            if name == stopped_in:
                text += " (stopped there: accuracy and % restored are after those steps)"
            done.append(text)
        else:
            done.append(f"{name}: done")
    parts = ["clean and poisoned models trained",
             "; ".join(done) if done else "no repair protocol run"]
    if skipped:
        parts.append(f"skipped: {', '.join(skipped)}")
    return "stopped on request: " + "; ".join(parts) + "."


#: Bumped whenever the training changes what a cached model's key produces.
REPAIR_CACHE_VERSION = 1


class _CachedTraining:
    """Train the clean and poisoned models, or load them from ``config.cache_dir``."""

    def __init__(self, config: RepairConfig, init: nn.Module, X: Tensor,
                 dev: torch.device) -> None:
        self.config, self.X = config, X
        self.parts: dict[str, Any] = {}
        if config.cache_dir is not None:  # everything the weights depend on but the labels
            check_output_folder(config.cache_dir, argument="cache_dir")  # before training
            self.parts = {
                "kind": "repair", "version": REPAIR_CACHE_VERSION,
                "torch": torch.__version__.split("+")[0], "inputs": tensor_digest(X),
                "model": config.model_name, "init": weights_digest(init),
                "epochs": config.epochs, "lr": config.lr, "batch_size": config.train_batch,
                "seed": config.seed, "device": dev.type,
            }
        self.dev = dev
        #: finished epochs an interrupted run had kept, by model ("clean", "poisoned")
        self.resumed: dict[str, int] = {}

    def train(self, role: str, model: nn.Module, labels: Tensor) -> tuple[float, bool]:
        """Train ``model`` on ``labels`` (or load it); return ``(seconds, from the cache)``."""
        cfg = self.config
        key = ""
        if cfg.cache_dir is not None:
            key = cache_key({**self.parts, "labels": tensor_digest(labels)})
            seconds = load_cached(cfg.cache_dir, role, key, model, self.dev)
            if seconds is not None:
                return seconds, True
        state, done = None, 0
        if cfg.cache_dir is not None:
            state, done = cache_epoch_state(cfg.cache_dir, role, key, "repair", model)
        if done:
            self.resumed[role.removeprefix("repair-")] = done
        # the training's own random draws (dropout) from a seeded fork: the same model
        # whether the other one came from the cache or not, and the same draws after both
        cuda = self.dev.type == "cuda"
        with torch.random.fork_rng(devices=[self.dev] if cuda else []):
            torch.default_generator.manual_seed(cfg.seed)
            if cuda:
                with torch.cuda.device(self.dev):
                    torch.cuda.manual_seed(cfg.seed)
            try:
                seconds = train_classifier(model, self.X, labels, epochs=cfg.epochs,
                                           lr=cfg.lr, batch_size=cfg.train_batch,
                                           seed=cfg.seed, progress=cfg.progress,
                                           epoch_state=state)
            except KeyboardInterrupt:
                kept = saved_epochs(state.path) if state is not None else None
                if kept:
                    raise KeyboardInterrupt(
                        f"the {role.removeprefix('repair-')} model's first {kept} of "
                        f"{cfg.epochs} epochs are kept in {cfg.cache_dir}; the same run "
                        "resumes after them") from None
                raise
        if cfg.cache_dir is not None:
            try:
                store_cached(cfg.cache_dir, role, key, model, seconds,
                             {"model": cfg.model_name, "seed": cfg.seed})
            except OSError as exc:  # e.g. a full disk: the run goes on, only the entry is lost
                warnings.warn(f"could not store the {role} model in 'cache_dir' "
                              f"{cfg.cache_dir!r}: {exc}", RuntimeWarning, stacklevel=2)
        return seconds, False


def _run_repair_experiment(
    config: RepairConfig, data: RepairData | None, dev: torch.device,
    should_stop: StopCheck | None = None,
) -> dict[str, Any]:
    """Run the body of :func:`run_repair_experiment` inside its forked global RNG."""
    data = data if data is not None else load_repair_data(config)
    n = data.X_train.shape[0]
    if config.n_train and n != config.n_train:  # preloaded data of another size
        raise ValueError(f"'data' has {n} training rows but 'n_train' is {config.n_train}: "
                         "load it with load_repair_data(config), or set n_train=0")
    budget = config.budget if config.budget is not None else max(10, (n // 5) // 10 * 10)
    if config.budget is None:  # the default: say so, not "'budget' 10 needs ..." (not given)
        per_class = budget // 10
        labels = data.y_train.cpu().long()
        counts = torch.bincount(labels[(labels >= 0) & (labels <= 9)], minlength=10).tolist()
        short = [s for s in range(10) if counts[s] < per_class]
        if short:
            rows = (f"'n_train' {n} is too few training rows" if config.n_train
                    else f"the {n} training rows are too few")
            raise ValueError(f"{rows} for the default budget {budget} (20 % of the rows, "
                             f"at least 10; budget // 10 = {per_class} flipped per class): "
                             f"class{'es' if len(short) > 1 else ''} "
                             f"{', '.join(map(str, short))} "
                             f"{'have' if len(short) > 1 else 'has'} "
                             f"{'no' if per_class == 1 else f'fewer than {per_class}'} "
                             "rows; use more training rows")
    y_poison, flipped = flip_labels(data.y_train, budget, config.seed)
    if budget % 10:  # flip_labels flips budget // 10 rows of each of the 10 classes
        per_class = budget // 10
        warnings.warn(f"'budget' {budget} flips {10 * per_class} labels (budget // 10 = "
                      f"{per_class} per class)", UserWarning, stacklevel=3)

    init = _build_checked_model(config, data.X_train.to(dev), data.num_classes)
    _check_last_layers(config, init)
    num_params = sum(p.numel() for p in init.parameters())
    if config.order == 2 and config.solver == "direct":
        # the dense solve's size limit, checked before the two trainings rather than after
        chosen = _update_kwargs(config, init).get("params")
        size = sum(p.numel() for name, p in init.named_parameters()
                   if p.requires_grad and (chosen is None or name in chosen))
        if size > MAX_DIRECT_PARAMS:
            raise ValueError(f"'solver' direct solves a dense {size} x {size} system; it takes "
                             f"at most {MAX_DIRECT_PARAMS} parameters: choose fewer with "
                             "'last_layers', or the 'cg' solver")
    mlp_input = config.model_name == "mlp"
    X_tr = data.X_train.flatten(1) if mlp_input else data.X_train
    X_te = data.X_test.flatten(1) if mlp_input else data.X_test

    trainer = _CachedTraining(config, init, X_tr, dev)
    clean = copy.deepcopy(init)
    retrain_s, clean_cached = trainer.train("repair-clean", clean, data.y_train)
    if stop_requested(should_stop):  # without the poisoned model there is nothing to report
        raise KeyboardInterrupt("stopped on request before the poisoned model was trained: "
                                "nothing to report")
    poisoned = copy.deepcopy(init)
    poison_s, poisoned_cached = trainer.train("repair-poisoned", poisoned, y_poison)
    acc_clean = accuracy(clean, X_te, data.y_test)
    acc_before = accuracy(poisoned, X_te, data.y_test)
    upd = _update_kwargs(config, poisoned)
    params = upd.get("params")
    result: dict[str, Any] = {
        "config": {**asdict(config), "protocols": list(config.protocols),
                   "model": config.model_name},
        "data": {"dataset": config.dataset, "n_train": n, "n_test": int(X_te.shape[0]),
                 "budget": budget, "flipped": int(flipped.numel()), "num_params": num_params,
                 "updated_params": sum(p.numel() for name, p in poisoned.named_parameters()
                                       if params is None or name in params)},
        "training": {"acc_clean": acc_clean, "acc_poisoned": acc_before,
                     "retrain_seconds": retrain_s, "poisoned_train_seconds": poison_s,
                     "clean_cached": clean_cached, "poisoned_cached": poisoned_cached,
                     "resumed_after_epoch": trainer.resumed,
                     "residual_poisoned": _residual_norm(poisoned, X_tr, data.y_train, params)},
        "protocols": {},
    }
    if config.order == 2 and config.solver == "lissa":
        result["lissa"] = _lissa_summary(config, n)
    stopped_in: str | None = None  # the protocol a stop request ended part-way
    skipped: list[str] = []
    with stop_points(should_stop):  # Ctrl-C here: finish the step, then stop
        for n, protocol in enumerate(config.protocols):
            if stop_requested(should_stop):  # this protocol and every later one are skipped
                skipped = list(config.protocols[n:])
                break
            model = copy.deepcopy(poisoned)
            stopped = False
            t0 = time.perf_counter()
            if protocol == "one-shot":
                res = repair_labels(model, X_tr, y_poison, flipped, data.y_train[flipped], **upd)
                _sync(dev)
                seconds = time.perf_counter() - t0
                steps = [{"step": 1, "batch": int(flipped.numel()), **res.to_dict(),
                          "eval": accuracy(model, X_te, data.y_test)}]
                grads, hvps, diverged = res.num_gradients, res.num_hvps, res.diverged
            else:
                batch = config.batch

                def evaluate(m: nn.Module) -> float:
                    return accuracy(m, X_te, data.y_test)

                out = iterative_label_repair(model, X_tr, data.y_train, steps=config.steps,
                                             batch_size=batch, seed=config.seed, evaluate=evaluate,
                                             should_stop=should_stop, **upd)
                stopped = out.stopped_on_request
                seconds = out.update_time_s
                steps, grads, hvps = out.steps, out.num_gradients, out.num_hvps
                diverged = any(r.diverged for r in out.results)
            acc_after = accuracy(model, X_te, data.y_test)
            result["protocols"][protocol] = {
                "acc_after": acc_after,
                "restored": _restored(acc_after, acc_before, acc_clean),
                "residual": _residual_norm(model, X_tr, data.y_train, params),
                "seconds": seconds,
                "speedup_vs_retrain": retrain_s / seconds if seconds > 0 else math.nan,
                "num_gradients": grads,
                "num_hvps": hvps,
                "any_diverged": diverged,
                "stopped_on_request": stopped,
                "steps": [json_ready(s) for s in steps],
            }
            if stopped:
                stopped_in = protocol
                skipped = list(config.protocols[n + 1:])
                break
    result["stopped_on_request"] = stopped_in is not None or bool(skipped)
    result["skipped_protocols"] = skipped
    result["stop_note"] = (_stop_note(config, result["protocols"], stopped_in, skipped)
                           if result["stopped_on_request"] else None)
    return result


def _times(value: Any) -> str:
    """Format a speed-up as ``12.3x``; ``-`` when unknown (a time of 0 s) or not finite."""
    from ..report import format_value

    text = format_value(value)
    return f"{text}x" if text not in ("-", "inf", "-inf") else text


def _cell(text: Any) -> str:
    """Escape what would break a table row: ``|`` splits a cell, a line break ends the row."""
    return " ".join(str(text).replace("|", "\\|").split())


def _protocol_status(protocol: dict[str, Any]) -> str:
    """Return ``applied``, or which update steps of a protocol were NOT APPLIED and why.

    A step that is not applied leaves the model unchanged (the loss check or the solver
    rejected it), so the repaired accuracy is not that of an update.
    """
    updates = [s for s in protocol.get("steps", ()) if "applied" in s]  # not the stop notes
    rejected = [s for s in updates if not s.get("applied")]
    if not rejected:
        return "applied" if updates else "no update made"
    first = rejected[0]
    reason = first.get("reason") or "no reason given"
    if len(updates) == 1:
        return f"NOT APPLIED ({reason})"
    return (f"NOT APPLIED in {len(rejected)} of {len(updates)} steps (step "
            f"{first.get('step')}: {reason}"
            + ("; every step's reason is in the report's steps table)" if len(rejected) > 1
               else ")"))


def render_report(result: dict[str, Any], plot: str | None = None) -> str:
    """Markdown page of a repair result (setup, accuracies, % restored, counts, times)."""
    from ..report import format_value as fv

    cfg, data, tr = result["config"], result["data"], result["training"]
    lines = [f"# Label-poisoning repair: {data['dataset']} / {cfg['model']}", ""]
    if result.get("stopped_on_request"):  # a partial result says so before any number
        note = result.get("stop_note") or "stopped on request."
        lines += [f"> **Partial result**: {note[:1].upper()}{note[1:]}", ""]
    lines += [f"{data['flipped']} of {data['n_train']} training labels flipped (class s -> "
              f"9 - s), seed {cfg['seed']}; order {cfg['order']}"
              + (f", solver {cfg['solver']}" if cfg["order"] == 2 else "")
              + f"; {data['updated_params']} of {data['num_params']} parameters updated."
              + (f" {lissa_damping_text(result['lissa'])}" if result.get("lissa") else ""),
              "",
              "| model | test accuracy | time (s) |", "|---|---|---|",
              f"| clean (= retraining) | {fv(tr['acc_clean'])} | {fv(tr['retrain_seconds'])} |",
              f"| poisoned | {fv(tr['acc_poisoned'])} | {fv(tr['poisoned_train_seconds'])} |"]
    for name, p in result["protocols"].items():
        lines.append(f"| repaired ({name}) | {fv(p['acc_after'])} | {fv(p['seconds'])} |")
    lines += ["", "| protocol | % restored | gradient residual | gradients | HVPs | "
              "speed-up vs retraining | diverged steps |", "|---|---|---|---|---|---|---|"]
    for name, p in result["protocols"].items():
        restored = p["restored"]
        # None or NaN (no damage to restore); also a result read back from its JSON file
        pct = ("-" if not isinstance(restored, numbers.Real) or not math.isfinite(restored)
               else f"{100 * restored:.1f} %")
        n_div = sum(1 for s in p["steps"] if s.get("diverged"))
        lines.append(f"| {name} | {pct} | {fv(p['residual'])} | {p['num_gradients']} | "
                     f"{p['num_hvps']} | {_times(p['speedup_vs_retrain'])} | {n_div} |")
    for name, p in result["protocols"].items():  # a rejected update is no repair: say so
        status = _protocol_status(p)
        if status.startswith("NOT APPLIED"):
            lines += ["", f"**{name}: update {_cell(status)}**; a step not applied leaves "
                      "the model unchanged."]
    cached = [name for name, key in (("clean", "clean_cached"), ("poisoned", "poisoned_cached"))
              if tr.get(key)]
    if cached:
        lines += ["", f"The {' and '.join(cached)} model{'s' if len(cached) > 1 else ''} "
                  "came from the cache; the times are those of the runs that trained them."]
    for name, done in (tr.get("resumed_after_epoch") or {}).items():
        lines += ["", f"The {name} model's training resumed after epoch {done} of "
                  f"{cfg['epochs']}, kept by an interrupted run; its time includes that run's."]
    lines += ["", f"Residual of the poisoned model: {fv(tr['residual_poisoned'])}. "
              "All accuracies on the same test split; % restored = (after - before) / "
              "(clean - before), '-' when the poisoned model is not worse than the clean "
              "one (no damage to restore). Repair time excludes evaluation.", ""]
    for name, p in result["protocols"].items():
        lines += [f"## {name} steps", "", "| step | mispredicted | batch | test acc | "
                  "residual (solver) | iterations | applied | reason |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in p["steps"]:
            lines.append(f"| {s.get('step')} | {fv(s.get('mispredicted'))} | "
                         f"{fv(s.get('batch'))} | {fv(s.get('eval'))} | "
                         f"{fv(s.get('residual'))} | {fv(s.get('solver_iterations'))} | "
                         f"{fv(s.get('applied'))} | {_cell(s.get('reason') or '')} |")
        lines.append("")
    if plot:
        lines += [f"![test accuracy per step]({plot})", ""]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> Path:
    fig = _agg_figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    tr = result["training"]
    for name, p in result["protocols"].items():
        xs = [0] + [s["step"] for s in p["steps"] if s.get("eval") is not None]
        ys = [tr["acc_poisoned"]] + [s["eval"] for s in p["steps"] if s.get("eval") is not None]
        ax.plot(xs, [100 * y for y in ys], marker="o", label=f"repaired ({name})")
    ax.axhline(100 * tr["acc_clean"], color="black", linestyle="--", label="clean / retrained")
    ax.axhline(100 * tr["acc_poisoned"], color="tab:red", linestyle=":", label="poisoned")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("update step")
    ax.set_ylabel("test accuracy (%)")
    setup = " / ".join(str(v) for v in (result.get("data", {}).get("dataset"),
                                        result.get("config", {}).get("model")) if v)
    ax.set_title("Label-poisoning repair" + (f": {setup}" if setup else ""))
    ax.grid(True, alpha=0.3)
    from ..report.plots import _legend_below

    _legend_below(ax)  # below the axes: the accuracy lines reach every corner
    return _save_png(fig, path)


def _agg_figure(width: float, height: float) -> Any:
    """Return a ``width`` x ``height`` inch matplotlib figure (100 dpi) on an Agg canvas.

    Drawn off-screen (no pyplot, no display), so reports render on headless machines.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: Path) -> Path:
    """Lay out a matplotlib figure and save it as PNG at ``path`` (folders created)."""
    from ..report.plots import _layout

    _layout(fig)  # tight_layout that keeps room for a legend below the axes
    return save_figure(fig, path)


def write_outputs(
    result: dict[str, Any], out_dir: str | os.PathLike[str], *, plots: bool = True
) -> dict[str, str]:
    """Write ``repair_<dataset>.json``, ``.png`` and ``.md`` into ``out_dir``.

    With ``plots=False`` no figure is drawn, and a ``repair_<dataset>.png`` of an earlier
    run is removed (it would not match these results).

    Returns:
        Kind (``json``, ``plot``, ``markdown``) -> path.

    """
    stem = f"repair_{result['data']['dataset']}"
    return _write_report_files(
        result, out_dir, stem, render=render_report, plot=_plot if plots else None
    )


def _write_report_files(
    result: dict[str, Any],
    out_dir: str | os.PathLike[str],
    stem: str,
    *,
    render: Callable[[dict[str, Any], str | None], str],
    plot: Callable[[dict[str, Any], Path], Path] | None,
) -> dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and (with ``plot``) ``<stem>.png`` into ``out_dir``.

    The shared writer of the experiment reports. The files of an earlier run with other
    settings (``result["config"]`` against the earlier JSON's) are moved to
    ``earlier/<stem>-<n>/`` with a warning instead of being replaced
    (:func:`~fastunlearn._earlier_results.keep_earlier_run`). ``result`` gains a ``files``
    entry (kind -> path) before it is written; ``render(result, plot_name)`` gives the
    Markdown, with the figure's file name (relative to ``out_dir``) or None. Without ``plot``, a
    ``<stem>.png`` left in ``out_dir`` by an earlier run is removed.

    Returns:
        Kind (``json``, ``markdown`` and, with ``plot``, ``plot``) -> path.

    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # an earlier run's files with other settings go to earlier/<stem>-<n>/ (with a warning)
    keep_earlier_run(folder, stem, json_ready(result.get("config", {})))
    files = {"json": str(folder / f"{stem}.json"), "markdown": str(folder / f"{stem}.md")}
    if plot is not None:
        files["plot"] = str(plot(result, folder / f"{stem}.png"))
    result = {**result, "files": files}
    write_text(files["json"], json.dumps(json_ready(result), indent=2, allow_nan=False) + "\n")
    plot_rel = Path(files["plot"]).name if plot is not None else None
    write_text(files["markdown"], render(result, plot_rel))
    if plot is None:  # an earlier run's figure would not match these results
        (folder / f"{stem}.png").unlink(missing_ok=True)
    return files

