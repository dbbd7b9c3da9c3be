"""Feature-unlearning experiment (Warnecke et al., NDSS 2023, Section 7 setup, small data).

A multinomial logistic regression (``nn.Linear``, float64) is fitted exactly (L-BFGS to a
tight gradient tolerance) on the objective::

    J(theta; D) = sum_i CE(theta; x_i, y_i) + (l2 / 2) ||theta||^2

Feature columns are then unlearned: **remove** mode zeroes them in every row where they are
non-zero (the reference's feature removal; on standardised tabular data zero is the column
mean), **replace** mode sets them to ``value`` in ``n_rows`` random rows. ``Z`` are the
affected rows as trained on, ``Z~`` the same rows with the new values. The model is updated
with :func:`~fastunlearn.influence.unlearn_features`:

- first order: ``theta - tau G`` (``tau="auto"``: the curvature step of ``J(.; D~)``);
- second order: ``theta - (H + l2 I)^{-1} G`` by CG, with ``H`` the Hessian of the summed
  loss on the corrected training set, i.e. exactly one Newton step on ``J(.; D~)``.

Each is compared with retraining from scratch on the corrected data: the gradient residual
``||grad J(theta; D~)||`` (retraining: ~0), the parameter distance to the retrained model,
test accuracy and wall time. On the digits, the certified linear variant
(:func:`~fastunlearn.influence.linear_influence_update`, binary ``a`` vs ``b`` digits, rows
scaled to unit norm) is added with its exact residual and the noise ``sigma`` that would
certify it.

Data: the embedded digits (64 pixels / 16, ten classes) or scikit-learn's bundled
``breast_cancer`` (30 features, 2 classes) and ``wine`` (13 features, 3 classes),
standardised with the training split's mean and standard deviation.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .._json_data import json_ready
from .._numbers import (
    MAX_SEED,
    as_float,
    check_flag,
    check_fraction,
    check_int,
    check_real,
    check_seed,
    is_integer,
    is_real,
)
from .._numbers import plain_fields as _plain_fields
from .._result_shape import check_result_shape
from .._unused_settings import warn_unused_settings
from .arguments import (
    _check_auto_or_float,
    _check_inputs,
    _check_labelled_rows,
    _check_target_range,
    _num_outputs,
)
from .drivers import predict, replace_features, unlearn_features
from .experiment import (
    _agg_figure,
    _cell,
    _check_cg_tol,
    _save_png,
    _times,
    _write_report_files,
)
from .gradients import default_loss, loss_gradient
from .linear import fit_logistic, linear_influence_update
from .unused_settings import feature_rules

__all__ = [
    "DATASETS",
    "MODES",
    "FeatureConfig",
    "FeatureData",
    "load_feature_data",
    "select_columns",
    "fit_linear_model",
    "objective_gradient",
    "curvature_step",
    "run_feature_experiment",
    "render_feature_report",
    "write_feature_outputs",
]

#: Data sets: the embedded digits and two tabular sets bundled with scikit-learn.
DATASETS = ("digits", "breast_cancer", "wine")
#: ``remove``: zero the columns wherever non-zero; ``replace``: set them in random rows.
MODES = ("remove", "replace")


@dataclass
class FeatureConfig:
    """Settings of :func:`run_feature_experiment`.

    Attributes:
        dataset: ``digits``, ``breast_cancer`` or ``wine``.
        columns: Feature indices to unlearn (None: the ``top_k`` most used columns, i.e.
            those with the most non-zero training values; for standardised tabular data,
            the columns with the largest weight norm of the trained model).
        top_k: Number of columns chosen when ``columns`` is None, at most the data's
            number of features (more is refused).
        mode: ``remove`` or ``replace``.
        n_rows: Rows changed in ``replace`` mode (random, seeded).
        value: New value in ``replace`` mode (``remove`` mode always zeroes).
            :func:`run_feature_experiment` refuses a value whose square, summed over the
            ``n_rows`` replaced rows, overflows the data's dtype, and warns about one more
            than 1,000 times the largest absolute value of the training data (the
            replaced rows then dominate the loss: retraining does not converge and the
            updates are refused).
        l2: L2 regularisation of the summed objective (> 0; also the Tikhonov damping of
            the second-order solve, which makes it the exact Hessian of ``J``).
        steps: Split the columns into this many chunks and update once per chunk (the
            reference's stepwise variant; 1: one update for all columns). At most one
            step per column is made: more are capped to the number of columns (the
            result's ``data.update_steps`` gives the steps made).
        tau: First-order step size, or ``"auto"``: the curvature step
            ``||G||^2 / G^T (H + l2 I) G`` of ``J`` (:func:`curvature_step`), per step.
        cg_tol: CG relative tolerance, > 0 (use ``cg_maxiter`` for a fixed number of
            iterations).
        cg_maxiter: CG iteration cap.
        train_tol: Gradient-norm tolerance of training (on ``J / n``).
        train_rounds: L-BFGS rounds (20 iterations each) at most.
        test_fraction: Stratified test fraction.
        seed: Seed of the split and the replace-mode rows.
        linear: Also run the certified linear variant (digits only; it always removes
            ``columns``, i.e. zeroes them wherever non-zero, whatever ``mode``).
        binary: Digit pair ``(a, b)`` of the certified variant (``a`` -> +1).
        linear_lam: ``lam`` of the certified variant (times n).
        epsilon: Certificate epsilon.
        delta: Certificate delta.
        progress: Show progress bars (training rounds, methods).

    """

    dataset: str = "digits"
    columns: tuple[int, ...] | None = None
    top_k: int = 4
    mode: str = "remove"
    n_rows: int = 50
    value: float = 0.0
    l2: float = 10.0
    steps: int = 1
    tau: float | str = "auto"
    cg_tol: float = 1e-10
    cg_maxiter: int = 500
    train_tol: float = 1e-10
    train_rounds: int = 100
    test_fraction: float = 0.2
    seed: int = 0
    linear: bool = True
    binary: tuple[int, int] = (3, 8)
    linear_lam: float = 1e-2
    epsilon: float = 0.1
    delta: float = 0.01
    progress: bool = False

    def __post_init__(self) -> None:
        _plain_fields(self)  # NumPy scalars as Python values (equality, JSON)

    def validate(self) -> FeatureConfig:
        """Check every field that does not need the data; return self.

        Warns (UserWarning) about fields set to a value other than their default that the
        other settings make pointless (``'top_k' has no effect with 'columns' set ...``;
        the table: :func:`~fastunlearn.influence.unused_settings.feature_rules`), each
        once however often the config is validated.

        Raises:
            TypeError: If a field has the wrong type (named): ``columns`` neither None nor
                a sequence of ints, a count or ``seed`` not an int (a bool or float is
                refused), a number not a real (a bool or str is refused), ``tau`` neither
                ``"auto"`` nor a real, ``binary`` not a pair of ints, or ``linear`` or
                ``progress`` not a bool.
            ValueError: If a field is out of range (named): ``dataset`` or ``mode`` not a
                known name, ``columns`` empty, negative or with duplicates, a count < 1,
                ``seed`` not in ``[0, 2**64 - 1]`` (``[0, 2**60 - 1]`` for the digits), a
                tolerance or weight not
                finite (and > 0 where required, ``cg_tol`` included), ``delta`` or
                ``test_fraction`` outside ``(0, 1)``, ``tau`` neither ``"auto"`` nor finite
                and positive, or ``binary`` not two distinct digits in 0..9.

        """
        _plain_fields(self)  # fields may have been set after construction
        if self.dataset not in DATASETS:
            raise ValueError(f"'dataset' must be one of {DATASETS}, got {self.dataset!r}")
        if self.mode not in MODES:
            raise ValueError(f"'mode' must be one of {MODES}, got {self.mode!r}")
        if self.columns is not None:
            if isinstance(self.columns, (str, bytes)) or not isinstance(self.columns, Sequence):
                raise TypeError(f"'columns' must be a sequence of ints, got "
                                f"{type(self.columns).__name__}")
            if len(self.columns) == 0:
                raise ValueError("'columns' must name at least one feature")
            if any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
                   for c in self.columns):
                raise TypeError(f"'columns' must hold ints, got {list(self.columns)}")
            if any(c < 0 for c in self.columns):
                raise ValueError(f"'columns' must hold non-negative feature indices, got "
                                 f"{list(self.columns)}")
            if len(set(self.columns)) != len(self.columns):
                raise ValueError(f"'columns' holds duplicates: {list(self.columns)}")
        # a wrong type is a TypeError (a bool is no count or rate); then the range
        for name in ("top_k", "n_rows", "cg_maxiter", "train_rounds", "steps"):
            check_int(name, getattr(self, name), 1)
        # a torch.Generator seed (replace mode); the digits split derives one per class
        check_seed("seed", self.seed, _max_seed(self.dataset))
        for name in ("l2", "linear_lam", "epsilon", "train_tol", "value", "cg_tol", "delta",
                     "test_fraction"):
            value = getattr(self, name)
            if not is_real(value):
                raise TypeError(f"'{name}' must be a real number, got "
                                f"{type(value).__name__} {value!r}")
        for name in ("l2", "linear_lam", "epsilon", "train_tol"):
            value = getattr(self, name)
            if not 0 < as_float(value) < math.inf:
                raise ValueError(f"'{name}' must be finite and > 0, got {value!r}")
        for name in ("value", "cg_tol"):
            value = getattr(self, name)
            if not math.isfinite(as_float(value)):
                raise ValueError(f"'{name}' must be a finite number, got {value!r}")
        _check_cg_tol(self.cg_tol)
        for name in ("delta", "test_fraction"):
            check_fraction(name, getattr(self, name))
        _check_auto_or_float("tau", self.tau, positive=True)
        if isinstance(self.binary, (str, bytes)) or not isinstance(self.binary, Sequence):
            raise TypeError(f"'binary' must be a pair of two distinct digits in 0..9, got "
                            f"{type(self.binary).__name__} {self.binary!r}")
        pair = tuple(self.binary)
        if any(not is_integer(d) for d in pair):  # True is no digit (isinstance(True, int))
            raise TypeError(f"'binary' must hold int digits in 0..9, got {self.binary!r}")
        if len(pair) != 2 or pair[0] == pair[1] or any(not 0 <= d <= 9 for d in pair):
            raise ValueError(f"'binary' must be two distinct digits in 0..9, got {self.binary!r}")
        check_flag("linear", self.linear)
        check_flag("progress", self.progress)
        # settings the others make pointless (each named once, however often validated)
        warn_unused_settings(self, feature_rules(self), stacklevel=2)
        return self


@dataclass
class FeatureData:
    """Flat float64 features and int64 labels of one experiment.

    Attributes:
        X_train: Tensor[N, F].
        y_train: Tensor[N].
        X_test: Tensor[M, F].
        y_test: Tensor[M].
        feature_names: One name per column.
        num_classes: Number of classes.

    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    feature_names: list[str]
    num_classes: int


def _max_seed(dataset: str) -> int:
    """Return the largest seed ``dataset``'s split takes (the digits derive one per class)."""
    if dataset != "digits":
        return MAX_SEED
    from ..data.digits import MAX_DIGITS_SEED  # the data package loads torchvision: lazily

    return MAX_DIGITS_SEED


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    test = np.zeros(y.shape[0], dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        rng.shuffle(rows)
        test[rows[: max(1, int(round(fraction * rows.size)))]] = True
    return test


def load_feature_data(dataset: str, *, test_fraction: float = 0.2, seed: int = 0) -> FeatureData:
    """Load ``digits`` (pixels / 16) or a bundled scikit-learn table (standardised).

    Args:
        dataset: One of :data:`DATASETS`.
        test_fraction: Stratified test fraction.
        seed: Seed of the split.

    Returns:
        A :class:`FeatureData` (CPU, float64).

    Raises:
        TypeError: ``test_fraction`` is not a number or ``seed`` not an int.
        ValueError: unknown ``dataset``, ``test_fraction`` outside (0, 1) or ``seed``
            outside ``[0, 2**64 - 1]``.

    """
    test_fraction = check_fraction("test_fraction", test_fraction)
    seed = check_seed("seed", seed, _max_seed(dataset))
    if dataset == "digits":
        from ..data import load_digits_dataset

        split = load_digits_dataset(normalize=False, dtype=torch.float64,
                                    test_fraction=test_fraction, seed=seed)
        names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
        return FeatureData(split.X_train / 16.0, split.y_train, split.X_test / 16.0,
                           split.y_test, names, 10)
    if dataset not in DATASETS:
        raise ValueError(f"'dataset' must be one of {DATASETS}, got {dataset!r}")
    from sklearn import datasets as skd

    bunch = skd.load_breast_cancer() if dataset == "breast_cancer" else skd.load_wine()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    test = _stratified_split(y, test_fraction, seed)
    mean = X[~test].mean(axis=0)
    std = X[~test].std(axis=0)
    X = (X - mean) / np.where(std > 0, std, 1.0)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    mask = torch.from_numpy(test)
    return FeatureData(Xt[~mask].contiguous(), yt[~mask].contiguous(), Xt[mask].contiguous(),
                       yt[mask].contiguous(), [str(n) for n in bunch.feature_names],
                       int(y.max()) + 1)


def select_columns(X: Tensor, k: int, model: nn.Linear | None = None) -> list[int]:
    """Pick the ``k`` most used columns: most non-zero rows, ties (dense data) by weight norm.

    Args:
        X: Tensor[N, F], training features (at least one column).
        k: How many, >= 1 (clipped to F: a larger ``k`` returns every column).
        model: Trained linear model on the F features; its per-column weight norm breaks
            ties.

    Returns:
        Sorted column indices.

    Raises:
        TypeError: ``X`` is not a 2-D tensor, ``k`` not an int (a bool neither) or
            ``model`` not an ``nn.Linear``.
        ValueError: ``X`` has no column, ``k < 1``, or ``model`` takes another number of
            features than ``X`` has.

    """
    if not isinstance(X, Tensor) or X.dim() != 2:
        shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
        raise TypeError(f"'X' must be a 2-D tensor [N, F], got {shape}")
    if X.shape[1] == 0:
        raise ValueError("'X' has no column to select")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"'k' must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"'k' must be >= 1, got {k}")
    if model is not None:
        if not isinstance(model, nn.Linear):
            raise TypeError(f"'model' must be an nn.Linear or None, got {type(model).__name__}")
        if model.in_features != X.shape[1]:
            raise ValueError(f"'model' takes {model.in_features} features, 'X' has "
                             f"{X.shape[1]} columns")
    counts = (X != 0).sum(dim=0).to(torch.float64)
    score = counts.clone()
    if model is not None:
        w = model.weight.detach().norm(dim=0).to(torch.float64)
        score = counts + w / (1.0 + float(w.max()))  # < 1: only breaks ties between counts
    order = torch.argsort(score, descending=True, stable=True)
    return sorted(int(c) for c in order[: min(int(k), X.shape[1])])


def _flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _check_linear_data(X: object, y: object, dtype: torch.dtype,
                       num_classes: int | None) -> tuple[Tensor, Tensor]:
    """Check the features ``X`` [N, F] and labels ``y`` [N] of the linear helpers (named).

    ``X`` must be finite and of ``dtype`` (the model's), ``y`` integer labels on ``X``'s
    device in ``[0, num_classes)`` (not checked when ``num_classes`` is None).
    """
    X, y = _check_labelled_rows(X, y)
    if X.dim() != 2:
        raise ValueError(f"'X' must be 2-D [N, F], got shape {tuple(X.shape)}")
    if y.dim() != 1:
        raise ValueError(f"'y' must be 1-D [N], got shape {tuple(y.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"'X' must be floating point, got {X.dtype}")
    _check_inputs("X", X, dtype, X.device)
    if y.device != X.device:
        raise ValueError(f"'y' must be on the device of 'X' {X.device}, got {y.device}")
    _check_target_range("y", y, num_classes)
    return X, y


def _check_linear_model(model: object, X: Tensor) -> nn.Linear:
    """``model`` must be an ``nn.Linear`` with a bias on ``X``'s features and device."""
    if not isinstance(model, nn.Linear):
        raise TypeError(f"'model' must be an nn.Linear, got {type(model).__name__}")
    if model.bias is None:
        raise ValueError("'model' must have a bias (the objective's linear model does)")
    if isinstance(X, Tensor) and X.dim() == 2 and X.shape[1] != model.in_features:
        raise ValueError(f"'model' takes {model.in_features} features, 'X' has "
                         f"{X.shape[1]} columns")
    if isinstance(X, Tensor) and X.device != model.weight.device:
        raise ValueError(f"'X' must be on the model's device {model.weight.device}, got "
                         f"{X.device}")
    return model


def objective_gradient(model: nn.Module, X: Tensor, y: Tensor, l2: float) -> Tensor:
    """``grad J(theta; (X, y))`` = summed cross-entropy gradient + ``l2 * theta`` (flat).

    Raises:
        TypeError: ``model`` has no parameters or mixes dtypes, ``X`` is not a floating
            tensor of the parameters' dtype, ``y`` does not hold integer labels, or ``l2``
            is not a number.
        ValueError: ``X`` is not 2-D and finite or not on the model's device, ``y`` is not
            1-D of ``X``'s length, a label is outside the model's outputs, or ``l2`` is not
            finite and >= 0.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1:
        got = sorted(map(str, dtypes)) or "no parameters"
        raise TypeError(f"'model' must have parameters of one dtype, got {got}")
    device = next(model.parameters()).device
    if isinstance(X, Tensor) and X.device != device:
        raise ValueError(f"'X' must be on the model's device {device}, got {X.device}")
    X, y = _check_linear_data(X, y, dtypes.pop(), None)
    _check_target_range("y", y, _num_outputs(model, X))
    l2 = check_real("l2", l2)
    g = loss_gradient(model, default_loss, X, y, chunk_size=None)
    return g + l2 * _flat_params(model)


def curvature_step(model: nn.Linear, X: Tensor, y: Tensor, l2: float) -> float:
    """First-order step size ``||g||^2 / g^T (H + l2 I) g`` for ``J(.; (X, y))`` at the model.

    ``g = grad J`` (the update's ``G`` when the model minimised the old objective); the
    step minimises the quadratic model of ``J`` along ``-g``. Unlike the drivers' ``"auto"``
    line search it includes the L2 term of ``J``.

    Raises:
        TypeError: ``model`` is not an ``nn.Linear``, ``X`` not a floating tensor of its
            dtype, ``y`` not integer labels, ``l2`` not a number.
        ValueError: ``model`` has no bias or another number of features than ``X``'s
            columns, ``X`` is not 2-D and finite or not on the model's device, ``y`` is not
            1-D of ``X``'s length or holds a label outside the model's outputs, ``l2`` is
            not finite and >= 0.

    """
    model = _check_linear_model(model, X)
    X, y = _check_linear_data(X, y, model.weight.dtype, model.out_features)
    l2 = check_real("l2", l2)
    with torch.no_grad():
        W, b = model.weight, model.bias
        logits = X @ W.T + b
        p = torch.softmax(logits, dim=-1)
        r = p.clone()
        r[torch.arange(X.shape[0]), y] -= 1.0  # d CE / d logits
        gW = r.T @ X + l2 * W
        gb = r.sum(0) + l2 * b
        s = X @ gW.T + gb  # directional derivative of the logits along g
        # CE Hessian in logit space: diag(p) - p p^T
        ghg = float((p * s * s).sum() - ((p * s).sum(1) ** 2).sum()) \
            + l2 * float((gW * gW).sum() + (gb * gb).sum())
        gg = float((gW * gW).sum() + (gb * gb).sum())
    return gg / ghg if ghg > 0 and gg > 0 else 1.0


def fit_linear_model(
    X: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    *,
    tol: float = 1e-10,
    rounds: int = 100,
    progress: bool = False,
) -> tuple[nn.Linear, float]:
    """Minimise ``J`` from zero weights with L-BFGS (strong Wolfe) until ``||grad J|| / n <= tol``.

    The model is float64 on ``X``'s device, as ``X`` must be.

    Returns:
        ``(model, wall seconds)``.

    Raises:
        TypeError: ``X`` is not a float64 tensor, ``y`` not integer labels, or a number
            argument has the wrong type.
        ValueError: ``X`` is not 2-D and finite, ``y`` is not 1-D of ``X``'s length or
            holds a label outside ``[0, num_classes)``, ``num_classes < 2``, ``l2`` or
            ``tol`` not finite and > 0, or ``rounds < 1``.

    """
    num_classes = check_int("num_classes", num_classes, 2)
    X, y = _check_linear_data(X, y, torch.float64, num_classes)
    # l2 > 0: J is then strictly convex and the minimiser exists (not on separable data)
    l2 = check_real("l2", l2, positive=True)
    tol = check_real("tol", tol, positive=True)
    rounds = check_int("rounds", rounds, 1)
    n = X.shape[0]
    # skip_init: a plain nn.Linear would draw (and discard) its random initialisation from
    # the caller's global RNG; the weights start at zero anyway
    model = nn.utils.skip_init(nn.Linear, X.shape[1], num_classes, dtype=torch.float64,
                               device=X.device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=20, history_size=20,
                            tolerance_grad=tol, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        sq = sum((p * p).sum() for p in model.parameters())
        loss = (default_loss(model(X), y) + 0.5 * l2 * sq) / n
        loss.backward()
        return loss

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, desc="fit", unit="round", leave=False)
    t0 = time.perf_counter()
    for _ in range(rounds):
        opt.step(closure)
        if bar is not None:
            bar.update(1)
        with torch.no_grad():
            gnorm = float(torch.linalg.vector_norm(
                torch.cat([p.grad.reshape(-1) for p in model.parameters()])))
        if gnorm <= tol:
            break
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    for p in model.parameters():
        p.grad = None
    model.eval()
    return model, elapsed


def _accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    return float((predict(model, X) == y).float().mean())


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _check_columns(columns: Sequence[int], n_features: int) -> list[int]:
    bad = [c for c in columns if not 0 <= int(c) < n_features]
    if bad:
        raise ValueError(f"'columns' holds {bad}, outside [0, {n_features - 1}] "
                         f"({n_features} features)")
    return [int(c) for c in columns]


def _check_value(value: float, dtype: torch.dtype, n_rows: int) -> None:
    """Refuse a replace-mode ``value`` too large for the data's floating ``dtype`` (named).

    The objective's curvature in a replaced column sums ``value**2`` over the ``n_rows``
    replaced rows: where that overflows, the gradients, the updates and the retraining are
    not finite (every residual unknown, both updates rejected), so the run would measure
    nothing. ``|value|`` must therefore be at most ``sqrt(max / n_rows)``, with ``max``
    the largest finite number of ``dtype`` (about 1.9e153 for 50 float64 rows).
    """
    largest = float(torch.finfo(dtype).max)
    name = str(dtype).removeprefix("torch.")
    if abs(value) > largest:
        raise ValueError(f"'value' {value:g} is not finite in the {name} training data "
                         f"(largest {largest:.4g})")
    limit = math.sqrt(largest / n_rows)
    if abs(value) > limit:
        raise ValueError(f"'value' {value:g} is too large for the {name} training data: its "
                         f"square summed over the {n_rows} replaced rows (the objective's "
                         f"curvature) overflows {name}; use |value| <= {limit:.4g}")


#: Largest ``|value| / max |X_train|`` a replace-mode value is taken at without a warning.
#: Measured on the default digits setting (the 4 most used pixels, 50 rows, pixels in
#: [0, 1]): retraining's gradient residual was 1.5e-5 at values up to 10 times the data's
#: largest value, 4e-3 at 100, 0.04 at 300, 0.67 at 1,000 and 23 at 10,000 times (L-BFGS
#: no longer reaches the minimum: the replaced rows' curvature, ``value**2`` summed over
#: them, dwarfs the rest of the data's); both updates were refused (the corrected loss
#: grew) from 30 times on; the retrained test accuracy, 0.936 at 0, held up to 1e5 times,
#: then fell to 0.92 at 3e5, 0.90 at 1e6, 0.85 at 3e6 and chance (0.10) at 1e7 and 1e8.
#: Beyond 1,000 times nothing of the comparison is left, and no value a feature can take
#: comes near it.
_VALUE_RATIO_WARN = 1_000.0


def _warn_far_value(value: float, X: Tensor, stacklevel: int) -> None:
    """Warn when a replace-mode ``value`` lies far outside the training data's range.

    The reference is the largest absolute value of the whole training matrix, not of the
    affected columns: what breaks is the conditioning of the objective (the replaced rows'
    ``value**2`` against the other features' squares), and the columns are not known
    before the model is fitted when ``columns`` is None (a column that is zero in every
    row, e.g. a digits border pixel, would also call any non-zero value "far").
    ``stacklevel`` is what :func:`warnings.warn` would be given in this helper's caller.
    """
    largest = float(X.abs().max()) if X.numel() else 0.0
    if not abs(value) > _VALUE_RATIO_WARN * largest:
        return
    ratio = abs(value) / largest if largest > 0 else math.inf
    warnings.warn(
        f"'value' {value:g} is {ratio:.3g} times the largest absolute feature value of the "
        f"training data ({largest:.4g}; warned above {_VALUE_RATIO_WARN:g} times): the "
        "corrected rows then dominate the loss, so retraining stops converging, the "
        "updates are refused and the results say little (on the digits the retrained "
        "accuracy starts to fall at 3e5 times, to chance at 1e7); use a value in the "
        "data's range, such as 0 or the column mean",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def _linear_variant(config: FeatureConfig, columns: list[int]) -> dict[str, Any]:
    """Certified linear update on binary digits (rows scaled to unit norm).

    The columns are removed (zeroed wherever non-zero) in either ``mode``: the replace
    mode's rows index the ten-class training set, not this binary one.
    """
    from ..data import load_digits_dataset

    # two digits: FeatureConfig.validate checked the pair (it may come as a JSON list)
    pair = cast("tuple[int, int]", tuple(config.binary))
    split = load_digits_dataset(binary=pair, normalize=True,
                                dtype=torch.float64, test_fraction=config.test_fraction,
                                seed=config.seed)
    X, y = split.X_train, split.y_train
    t0 = time.perf_counter()
    w, _ = fit_logistic(X, y, config.linear_lam)
    fit_s = time.perf_counter() - t0
    corrected, rows = replace_features(X, columns)
    out: dict[str, Any] = {"binary": list(config.binary), "lam": config.linear_lam,
                           "n_train": int(X.shape[0]), "num_affected": int(rows.numel()),
                           "epsilon": config.epsilon, "delta": config.delta}
    if rows.numel() == 0:
        out["reason"] = "no row has a non-zero value in the given columns"
        return out
    t0 = time.perf_counter()
    w_re, _ = fit_logistic(corrected, y, config.linear_lam)
    retrain_s = time.perf_counter() - t0

    def acc(weights: Tensor) -> float:
        pred = (split.X_test @ weights > 0).to(torch.int64)
        return float((pred == split.y_test).float().mean())

    out.update(train_seconds=fit_s, retrain_seconds=retrain_s, acc_original=acc(w),
               acc_retrained=acc(w_re), distance_original=_norm(w - w_re), methods={})
    for order in (1, 2):
        tau = None
        if order == 1:
            # curvature step ||G||^2 / G^T H G of the corrected objective, as in "auto"
            probe = linear_influence_update(X, y, w, rows, new_X=corrected[rows],
                                            lam=config.linear_lam, order=1, tau=1.0)
            G = w - probe.weights.to(torch.float64)
            z = corrected @ w
            s = torch.sigmoid(z) * torch.sigmoid(-z)
            curv = float((s * (corrected @ G) ** 2).sum()) \
                + config.linear_lam * X.shape[0] * float(G @ G)
            tau = float(G @ G) / curv if curv > 0 else 1.0
        res = linear_influence_update(X, y, w, rows, new_X=corrected[rows],
                                      lam=config.linear_lam, order=order, tau=tau,
                                      epsilon=config.epsilon, delta=config.delta)
        out["methods"][f"order{order}"] = {
            **res.to_dict(), "tau": tau, "acc": acc(res.weights),
            "distance_retrained": _norm(res.weights - w_re)}
    return out


def _merge_updates(updates: list[dict[str, Any]]) -> dict[str, Any]:
    """One record for a (stepwise) sequence of updates: counts summed, flags combined."""
    out = dict(updates[-1])
    for key in ("num_gradients", "num_hvps", "num_loss_evals", "solver_iterations"):
        out[key] = sum(int(u[key]) for u in updates)
    out["num_affected"] = max(int(u["num_affected"]) for u in updates)
    out["applied"] = all(bool(u["applied"]) for u in updates)
    out["diverged"] = any(bool(u["diverged"]) for u in updates)
    reasons = [u["reason"] for u in updates if u.get("reason")]
    out["reason"] = "; ".join(reasons) if reasons else None
    out["steps"] = len(updates)
    return out


def run_feature_experiment(
    config: FeatureConfig, data: FeatureData | None = None
) -> dict[str, Any]:
    """Run the experiment; return its JSON-ready result dict.

    Args:
        config: The settings (validated here).
        data: Preloaded data (default :func:`load_feature_data`).

    Returns:
        A dict with ``config``, ``data`` (sizes, columns, affected rows, ``update_steps``:
            the stepwise updates made), ``original``,
        ``retrained`` and ``methods`` (``first_order``, ``second_order``: residual,
        distance to the retrained parameters, test accuracy, seconds, speed-up, the
        update's counts) and, for the digits with ``config.linear``, ``linear`` (the
        certified variant: residuals and ``sigma_required`` per order).

    Raises:
        TypeError: If ``config`` is not a :class:`FeatureConfig`, or a setting has the wrong
            type (see :meth:`FeatureConfig.validate`).
        ValueError: Bad settings (see :meth:`FeatureConfig.validate`), ``columns`` out of
            range, or, in replace mode, ``n_rows`` above the number of training rows or a
            ``value`` too large for the data's dtype (its square summed over the
            ``n_rows`` rows overflows; named, raised before any fitting).

    Warns:
        UserWarning: In replace mode, if ``|value|`` is more than 1,000 times the largest
            absolute value of the training data (before any fitting; the run goes on).

    """
    if not isinstance(config, FeatureConfig):
        raise TypeError(f"'config' must be a FeatureConfig, got {type(config).__name__}")
    config.validate()
    data = data if data is not None else load_feature_data(
        config.dataset, test_fraction=config.test_fraction, seed=config.seed)
    X, y = data.X_train, data.y_train
    n, n_features = X.shape
    if config.columns is not None:
        columns = _check_columns(config.columns, n_features)
    else:
        columns = None
        if config.top_k > n_features:  # not clipped: the user asked for more than there is
            raise ValueError(f"'top_k' must be <= {n_features} features, got {config.top_k}")
    if config.mode == "replace" and config.n_rows > n:
        raise ValueError(f"'n_rows' must be <= {n} training rows, got {config.n_rows}")
    if config.mode == "replace":  # before any fitting
        _check_value(float(config.value), X.dtype, config.n_rows)
        _warn_far_value(float(config.value), X, stacklevel=2)

    original, train_s = fit_linear_model(X, y, data.num_classes, config.l2,
                                         tol=config.train_tol, rounds=config.train_rounds,
                                         progress=config.progress)
    if columns is None:
        columns = select_columns(X, config.top_k, original)
    rows: Tensor | None = None
    # remove mode zeroes the columns; ``value`` is the new value of replace mode only
    value = float(config.value) if config.mode == "replace" else 0.0
    if config.mode == "replace":
        gen = torch.Generator().manual_seed(config.seed)
        rows = torch.sort(torch.randperm(n, generator=gen)[: config.n_rows]).values
    corrected, affected = replace_features(X, columns, rows=rows, values=value)

    retrained, retrain_s = fit_linear_model(corrected, y, data.num_classes, config.l2,
                                            tol=config.train_tol, rounds=config.train_rounds,
                                            progress=config.progress)
    theta_re = _flat_params(retrained)
    theta_0 = _flat_params(original)
    # stepwise: at most one column per step (a request for more steps is capped)
    chunks = [c.tolist() for c in torch.tensor(columns).tensor_split(
        min(config.steps, len(columns)))]
    result: dict[str, Any] = {
        "config": {**asdict(config), "columns": columns, "binary": list(config.binary)},
        "data": {"dataset": config.dataset, "n_train": n, "n_test": int(data.X_test.shape[0]),
                 "n_features": n_features, "num_classes": data.num_classes,
                 "columns": columns, "column_names": [data.feature_names[c] for c in columns],
                 "num_affected": int(affected.numel()),
                 "num_params": int(theta_0.numel()), "update_steps": len(chunks)},
        "original": {"acc": _accuracy(original, data.X_test, data.y_test),
                     "residual": _norm(objective_gradient(original, corrected, y, config.l2)),
                     "residual_old_data": _norm(objective_gradient(original, X, y, config.l2)),
                     "distance_retrained": _norm(theta_0 - theta_re),
                     "seconds": train_s},
        "retrained": {"acc": _accuracy(retrained, data.X_test, data.y_test),
                      "residual": _norm(objective_gradient(retrained, corrected, y, config.l2)),
                      "seconds": retrain_s},
        "methods": {},
    }
    methods = (("first_order", dict(order=1, tau=config.tau)),
               ("second_order", dict(order=2, solver="cg", damping=config.l2,
                                     curvature="hessian", tol=config.cg_tol,
                                     maxiter=config.cg_maxiter)))
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods), desc="unlearn", unit="method")
    for name, kwargs in methods:
        model = copy.deepcopy(original)
        t0 = time.perf_counter()
        X_cur, results = X, []
        for chunk in chunks:
            X_next, _ = replace_features(X_cur, chunk, rows=rows, values=value)
            step_kwargs = dict(kwargs)
            if name == "first_order" and config.tau == "auto":
                step_kwargs["tau"] = curvature_step(model, X_next, y, config.l2)
            res = unlearn_features(model, X_cur, y, chunk, rows=rows,
                                   values=value, chunk_size=None, **step_kwargs)
            results.append(res)
            X_cur = X_next
        seconds = time.perf_counter() - t0
        theta = _flat_params(model)
        result["methods"][name] = {
            "acc": _accuracy(model, data.X_test, data.y_test),
            "residual": _norm(objective_gradient(model, corrected, y, config.l2)),
            "distance_retrained": _norm(theta - theta_re),
            "seconds": seconds,
            "speedup_vs_retrain": retrain_s / seconds if seconds > 0 else math.nan,
            "update": _merge_updates([r.to_dict() for r in results]),
        }
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if config.dataset == "digits" and config.linear:
        result["linear"] = _linear_variant(config, columns)
    return json_ready(result)


#: The parts of a :func:`run_feature_experiment` result the report and the plot read.
_RESULT_KEYS = ("config", "data", "original", "retrained", "methods")


def _check_result(result: object) -> dict[str, Any]:
    """Refuse anything but a :func:`run_feature_experiment` result (named, not a KeyError)."""
    sections = {key: ("dataset",) if key == "data" else () for key in _RESULT_KEYS}
    return check_result_shape(result, "run_feature_experiment", sections)


def _steps_text(config: dict[str, Any], data: dict[str, Any]) -> str:
    """Say how many update steps a result made, and why fewer than requested (capped).

    ``config`` and ``data`` are the result's entries; a result without
    ``data["update_steps"]`` (written before it was recorded) made ``config["steps"]``.
    """
    requested = int(config["steps"])
    made = int(data.get("update_steps", requested))
    text = f"{made} update steps (stepwise)" if made > 1 else "one update step"
    if made < requested:
        text += (f"; {requested} were requested, capped at one step per column "
                 f"({len(data['columns'])} columns)")
    return text


def _linear_steps_text(linear: dict[str, Any]) -> str:
    """Say which steps the certified linear variant made (a result's ``linear`` entry).

    It updates once per order for all the columns, whatever ``steps`` and ``tau`` (which
    set the other updates): first order with its own curvature step size, second order one
    Newton step.
    """
    from ..report import format_value

    tau = (linear.get("methods") or {}).get("order1", {}).get("tau")
    size = "" if tau is None else f" (tau {format_value(tau)})"
    return ("one update per order for all the columns at once: first order one step with "
            f"its own curvature step size{size}, second order one Newton step")


def render_feature_report(result: dict[str, Any], plot: str | None = None) -> str:
    """Markdown page of a feature-unlearning result.

    Raises:
        TypeError / ValueError: ``result`` is not a :func:`run_feature_experiment` result
            (not a dict, or a missing part, named).

    """
    from ..report import format_value as fv

    result = _check_result(result)
    cfg, data = result["config"], result["data"]
    mode = ("zeroed in every row where non-zero" if cfg["mode"] == "remove"
            else f"set to {cfg['value']} in {cfg['n_rows']} random rows")
    names = ", ".join(data["column_names"])
    lines = [f"# Feature unlearning: {data['dataset']}", "",
             f"Logistic regression ({data['num_params']} parameters, L2 {fv(cfg['l2'])}, "
             f"summed cross-entropy) on {data['n_train']} training rows, "
             f"{data['n_features']} features, {data['num_classes']} classes. "
             f"Columns {data['columns']} ({names}) {mode}: "
             f"{data['num_affected']} affected rows; {_steps_text(cfg, data)}.", "",
             "| model | gradient residual | distance to retrained | "
             "test accuracy | time (s) |", "|---|---|---|---|---|"]
    o, r = result["original"], result["retrained"]
    lines.append(f"| original | {fv(o['residual'])} | {fv(o['distance_retrained'])} | "
                 f"{fv(o['acc'])} | {fv(o['seconds'])} (training) |")
    for name, m in result["methods"].items():
        lines.append(f"| {name.replace('_', '-')} | {fv(m['residual'])} | "
                     f"{fv(m['distance_retrained'])} | {fv(m['acc'])} | {fv(m['seconds'])} |")
    lines.append(f"| retrained | {fv(r['residual'])} | 0 | {fv(r['acc'])} | "
                 f"{fv(r['seconds'])} |")
    lines += ["", "| method | speed-up vs retraining | gradients | HVPs | CG iterations | "
              "tau | applied |", "|---|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        u = m["update"]
        lines.append(f"| {name.replace('_', '-')} | {_times(m['speedup_vs_retrain'])} | "
                     f"{u['num_gradients']} | {u['num_hvps']} | {u['solver_iterations']} | "
                     f"{fv(u['tau'])} | {fv(u['applied'])} {_cell(u.get('reason') or '')} |")
    lines += ["", "Gradient residual: the norm of the gradient of the regularised summed "
              "objective J on the corrected training data D~ (0 at its minimiser); the "
              "second-order update is one Newton step on it. Accuracy on "
              "the unchanged test split. Retraining: L-BFGS from zero weights.", ""]
    lin = result.get("linear")
    if lin and "methods" in lin:
        lines += [f"## Certified linear variant (digits {lin['binary'][0]} vs "
                  f"{lin['binary'][1]}, unit-norm rows)", "",
                  f"lam {fv(lin['lam'])} (times n = {lin['n_train']}), "
                  f"{lin['num_affected']} affected rows (the columns zeroed wherever "
                  f"non-zero, in either mode); epsilon {fv(lin['epsilon'])}, "
                  f"delta {fv(lin['delta'])}. Retrained accuracy {fv(lin['acc_retrained'])}, "
                  f"original {fv(lin['acc_original'])} (distance "
                  f"{fv(lin['distance_original'])}). The certified variant makes "
                  f"{_linear_steps_text(lin)} (tau and steps apply to the other updates).",
                  "", "| order | residual before | residual after | bound | sigma required | "
                  "distance to retrained | test accuracy | time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in lin["methods"].items():
            lines.append(f"| {name[-1]} | {fv(m['residual_before'])} | {fv(m['residual'])} | "
                         f"{fv(m['bound'])} | {fv(m['sigma_required'])} | "
                         f"{fv(m['distance_retrained'])} | {fv(m['acc'])} | "
                         f"{fv(m['time_s'])} |")
        lines.append("")
    if plot:
        lines += [f"![residuals and times]({plot})", ""]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> Path:
    fig = _agg_figure(9.0, 3.8)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    m = result["methods"]
    labels = ["original", "first order", "second order", "retrained"]
    res = [result["original"]["residual"], m["first_order"]["residual"],
           m["second_order"]["residual"], result["retrained"]["residual"]]
    floor, ceil = 1e-16, 1e100  # matplotlib's log autoscale overflows near 1e300
    colors = ["tab:red", "tab:orange", "tab:blue", "black"]
    # None is how the result stores a NaN or infinite residual: no bar (not a 1e-16 one)
    heights = [min(max(float(v), floor), ceil) if _finite(v) else math.nan for v in res]
    ax.bar(labels, heights, color=colors)
    ax.set_yscale("log")
    _mark_missing(ax, labels, res, ceil)
    ax.set_ylabel("||grad J(theta; D~)||")
    ax.set_title(f"Gradient residual ({result['data']['dataset']})")
    ax.tick_params(axis="x", labelsize=8)
    times = [m["first_order"]["seconds"], m["second_order"]["seconds"],
             result["retrained"]["seconds"]]
    bars = bx.bar(labels[1:], [float(t) if _finite(t) else math.nan for t in times],
                  color=colors[1:])
    # a 5 ms update next to a 0.5 s retraining is a bar too thin to read: say each time
    bx.bar_label(bars, labels=[f"{float(t):.3g} s" if _finite(t) else "" for t in times],
                 fontsize=8, padding=2)
    bx.margins(y=0.12)  # room above the tallest bar for its label
    _mark_missing(bx, labels[1:], times, math.inf)
    bx.set_ylabel("wall time (s)")
    bx.set_title("Update vs retraining time")
    bx.tick_params(axis="x", labelsize=8)
    for a in (ax, bx):
        a.grid(True, axis="y", alpha=0.3)
    return _save_png(fig, path)


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number (None, NaN and inf are not)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _mark_missing(ax: Any, labels: list[str], values: list[Any], ceil: float) -> None:
    """Name the bars not drawn (``n/a``: None or not finite) or cut at ``ceil``."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for label, v in zip(labels, values, strict=True):
        word = ("n/a" if not _finite(v) else f"{float(v):.2g} (cut)" if v > ceil else "")
        if word:
            ax.text(label, 0.02, word, transform=trans, ha="center", va="bottom",
                    fontsize=7, color="tab:red")


def write_feature_outputs(
    result: dict[str, Any], out_dir: str | os.PathLike[str], *, plots: bool = True
) -> dict[str, str]:
    """Write ``features_<dataset>.json``, ``.png`` and ``.md`` into ``out_dir``.

    With ``plots=False`` no figure is drawn, and a ``features_<dataset>.png`` of an earlier
    run is removed (it would not match these results).

    Returns:
        Kind (``json``, ``plot``, ``markdown``) -> path.

    Raises:
        TypeError / ValueError: ``result`` is not a :func:`run_feature_experiment` result
            (checked before anything is written).

    """
    result = _check_result(result)
    stem = f"features_{result['data']['dataset']}"
    return _write_report_files(
        result, out_dir, stem, render=render_feature_report, plot=_plot if plots else None
    )
