"""Certified feature/label unlearning for L2-regularised logistic regression.

The linear variant of Warnecke et al. (reference ``DPLRUnlearner``) on the numerics of
:mod:`fastunlearn.certified`. With the perturbed objective of that module (binary labels
``y = +/-1``, sum scaling)::

    L_b(w; D) = sum_i log(1 + exp(-y_i w.x_i)) + (lam n / 2) ||w||^2 + b.w,  b ~ N(0, sigma^2 I)

and ``Z``/``Z~`` the affected rows before/after the change, ``G = sum grad l(z~) -
sum grad l(z)`` (the regulariser and ``b`` cancel). The second-order update
``w - H(w; D~)^{-1} G`` with the Hessian of the *corrected* objective is exactly one Newton
step on ``L_b(.; D~)`` when ``w`` minimised ``L_b(.; D)``. Its gradient residual
``||grad L_b(w_new; D~)||`` is computed exactly, and the objective-perturbation noise that
certifies it is ``sigma = residual * c(delta) / epsilon`` with ``c(delta) =
sqrt(2 ln(1.5 / delta))`` (reference: epsilon 0.1, delta 0.01, c = 3.166).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._no_effect import no_effect_message
from .._numbers import as_int, check_real, check_seed, is_integer
from .._repr import fields_repr
from ..certified.bounds import (
    GAMMA_TIGHT,
    c_delta,
    data_dependent_bound,
    epsilon_spent,
    noise_budget,
)
from ..certified.math import (
    cholesky_apply,
    cholesky_factor,
    draw_perturbation,
    gram_matrices,
    logistic_hessian,
    loss_derivative,
    newton_fit,
    no_tf32,
    residual_norm,
    spectral_norm_upper,
)
from .drivers import _as_index

__all__ = ["LinearUpdateResult", "fit_logistic", "linear_influence_update", "required_sigma"]


@dataclass(repr=False)
class LinearUpdateResult:
    """Outcome of :func:`linear_influence_update`.

    Attributes:
        weights: Tensor[d], the updated weights ``w_new``.
        order: 1 or 2.
        residual: ``||grad L_b(w_new; D~)||``, the exact gradient residual.
        residual_before: The same at the old weights (what doing nothing leaves).
        bound: Data-dependent bound ``gamma max(1, R) ||X~||_2 ||v|| ||X~ v||`` on the
            residual of the Newton step from an exact minimiser, ``R`` the longest row of
            ``X~`` (second order only; Guo et al. Cor. 1).
        sigma_required: Noise ``residual * c(delta) / epsilon`` that certifies the update.
        certified: With ``sigma`` given: ``residual <= sigma * epsilon / c(delta)``.
        epsilon_spent: With ``sigma`` given: ``c(delta) * residual / sigma``.
        num_affected: Number of affected rows.
        num_gradients: Per-sample gradients evaluated.
        time_s: Wall time of the update.

    """

    weights: Tensor
    order: int
    residual: float
    residual_before: float
    bound: float | None
    sigma_required: float
    certified: bool | None
    epsilon_spent: float | None
    num_affected: int
    num_gradients: int
    time_s: float

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    def to_dict(self) -> dict[str, Any]:
        """Every field except ``weights``."""
        return {k: v for k, v in self.__dict__.items() if k != "weights"}


def required_sigma(
    residual: float | np.floating,
    epsilon: float | np.floating = 0.1,
    delta: float | np.floating = 0.01,
) -> float:
    """Objective-perturbation noise certifying a gradient residual: ``residual c(delta) / eps``.

    Args:
        residual: Gradient residual, >= 0.
        epsilon: Privacy parameter, > 0.
        delta: Failure probability in (0, 1).

    Returns:
        sigma.

    Raises:
        ValueError: an argument out of range.
        TypeError: an argument is not a real number.

    """
    residual = check_real("residual", residual)
    epsilon = check_real("epsilon", epsilon, positive=True)
    return residual * c_delta(delta) / epsilon


def _labels(name: str, y: Tensor, n: int) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"'{name}' must have shape [{n}], got {list(y.shape)}")
    values = set(torch.unique(y).tolist())
    if not values <= {-1.0, 1.0} and not values <= {0.0, 1.0}:
        raise ValueError(f"'{name}' must hold binary labels (+/-1 or 0/1), got {sorted(values)}")
    y = y.to(torch.float64)
    return torch.where(y > 0, 1.0, -1.0).to(torch.float64)


def _features(name: str, X: object) -> Tensor:
    if not isinstance(X, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim != 2 or not X.is_floating_point():
        raise ValueError(f"'{name}' must be a floating [n, d] matrix, got {X.dtype} "
                         f"{list(X.shape)}")
    if X.shape[0] == 0:
        raise ValueError(f"'{name}' must hold at least one row, got {list(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"'{name}' contains non-finite values (NaN or inf)")
    return X.to(torch.float64)


def _vector(name: str, value: object, d: int, device: torch.device) -> Tensor:
    """Check a finite Tensor[d]; return it as float64 on ``device``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != (d,):
        raise ValueError(f"'{name}' must have shape [{d}], got {list(value.shape)}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"'{name}' must be real-valued, got {value.dtype}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"'{name}' contains non-finite values (NaN or inf)")
    return value.to(device=device, dtype=torch.float64)


def _check_step(order: object, tau: object) -> float | None:
    """``order`` (the int 1 or 2) and ``tau``; returns tau for first order, else None.

    A ``tau`` given with ``order=2`` is checked all the same and warned about (it has no
    effect there); the warning points at the caller of ``linear_influence_update``.
    """
    if not is_integer(order):  # Python or NumPy int, not a bool
        raise TypeError(f"'order' must be the int 1 or 2, got {order!r}")
    order = as_int(order)
    if order not in (1, 2):
        raise ValueError(f"'order' must be 1 or 2, got {order!r}")
    if tau is None:
        if order == 1:
            raise ValueError("'tau' (a finite step size > 0) is required for order=1")
        return None
    value = check_real("tau", tau, positive=True)
    if order == 1:
        return value
    warnings.warn(no_effect_message(["tau"], "with order=2 (it is the first-order step size)"),
                  UserWarning, stacklevel=3)
    return None


def fit_logistic(
    X: Tensor,
    y: Tensor,
    lam: float | np.floating,
    *,
    sigma: float | np.floating = 0.0,
    seed: int | np.integer = 0,
) -> tuple[Tensor, Tensor]:
    """Fit the perturbed objective exactly (float64 Newton) with ``b ~ N(0, sigma^2 I)``.

    Args:
        X: Tensor[n, d], features.
        y: Tensor[n], binary labels (+/-1 or 0/1).
        lam: L2 regularisation (> 0, times n).
        sigma: Objective-perturbation noise (0: none).
        seed: Seed of the perturbation draw.

    Returns:
        ``(w [d], b [d])``, float64.

    Raises:
        TypeError: If ``X`` or ``y`` is not a tensor, ``lam`` or ``sigma`` is not a real
            number, or ``seed`` is not an int (a bool is not one).
        ValueError: If ``X`` is not a finite, non-empty floating ``[n, d]`` matrix, ``y``
            is not ``[n]`` binary labels, ``lam`` is not finite and > 0, ``sigma`` is not
            finite and >= 0, or ``seed`` is negative.

    """
    X = _features("X", X)
    Y = _labels("y", y, X.shape[0]).unsqueeze(1)
    lam = check_real("lam", lam, positive=True)
    sigma = check_real("sigma", sigma)  # NaN / inf: a named error
    seed = check_seed("seed", seed)
    b = draw_perturbation(seed, 0, X.shape[1], 1, sigma).to(X.device)
    A = torch.ones_like(Y)
    with no_tf32():
        fit = newton_fit(X, Y, A, b, lam)
    return fit.W[:, 0], b[:, 0]


def linear_influence_update(
    X: Tensor,
    y: Tensor,
    w: Tensor,
    rows: Any,
    *,
    new_X: Tensor | None = None,
    new_y: Tensor | None = None,
    lam: float | np.floating,
    b: Tensor | None = None,
    order: int | np.integer = 2,
    tau: float | np.floating | None = None,
    epsilon: float | np.floating = 0.1,
    delta: float | np.floating = 0.01,
    sigma: float | np.floating | None = None,
    gamma: float | np.floating = GAMMA_TIGHT,
) -> LinearUpdateResult:
    """First- or second-order update of a logistic regression for changed rows, certified.

    Args:
        X: Tensor[n, d], training features as trained on.
        y: Tensor[n], binary labels as trained on.
        w: Tensor[d], floating, the trained weights (minimiser of ``L_b(.; D)``); finite.
        rows: Affected rows (ints in [0, n), no duplicates).
        new_X: Tensor[len(rows), d], their corrected features (None: unchanged).
        new_y: Tensor[len(rows)], their corrected labels (None: unchanged).
        lam: L2 regularisation of the objective (> 0, times n).
        b: Tensor[d], the objective perturbation used in training (None: zeros); finite.
        order: The int 2 (Newton step, certified) or 1 (``w - tau G``).
        tau: First-order step size (a finite number > 0, not a bool); required for
            ``order=1``. Checked with ``order=2`` too, where it has no effect and is
            warned about (UserWarning).
        epsilon: Privacy parameter of the certificate.
        delta: Failure probability of the certificate.
        sigma: The perturbation's standard deviation, if the model has one: then
            ``certified`` and ``epsilon_spent`` are filled in.
        gamma: Lipschitz constant of ``l''`` for the data-dependent bound (finite, >= 0).

    Returns:
        A :class:`LinearUpdateResult`; the inputs are not modified.

    Raises:
        TypeError: If ``X``, ``y``, ``w``, ``new_X``, ``new_y`` or ``b`` is not a tensor (where
            given), ``w`` is not floating point (or ``b`` not real), ``rows`` does not hold
            integers, ``order`` is not an int, or ``lam``, ``tau`` or ``gamma`` is not a
            real number.
        ValueError: Bad inputs (named): non-finite or misshapen ``X``, ``w``, ``new_X`` or
            ``b``; non-binary or misshapen labels; ``rows`` empty, out of range or with
            duplicates; ``lam`` not finite and > 0; ``order`` not 1 or 2; ``tau`` missing
            for ``order=1`` or (given with either order) not finite and > 0; ``gamma``
            not finite and >= 0;
            ``epsilon`` not finite and > 0, ``delta`` outside (0, 1) or ``sigma`` not
            finite and >= 0; or updated weights (or their residual) that are not finite.
            (A ``delta`` that is not a real number is a TypeError.)

    """
    t0 = time.perf_counter()
    X = _features("X", X)
    n, d = X.shape
    Y = _labels("y", y, n)
    W = _vector("w", w, d, X.device).reshape(d, 1)
    if not w.is_floating_point():  # the new weights are returned in the dtype of 'w'
        raise TypeError(f"'w' must be floating point, got {w.dtype}")
    idx = _as_index("rows", rows, n, X.device)
    m = idx.numel()
    Xn = X[idx] if new_X is None else _features("new_X", new_X).to(X.device)
    if Xn.shape != (m, d):
        raise ValueError(f"'new_X' must have shape [{m}, {d}], got {list(Xn.shape)}")
    Yn = Y[idx] if new_y is None else _labels("new_y", new_y, m).to(X.device)
    lam = check_real("lam", lam, positive=True)
    tau = _check_step(order, tau)
    order = as_int(order)  # checked: a Python or NumPy int
    gamma = check_real("gamma", gamma)
    B = torch.zeros(d, 1, dtype=torch.float64, device=X.device) if b is None else \
        _vector("b", b, d, X.device).reshape(d, 1)

    X_new = X.clone()
    X_new[idx] = Xn
    Y_new = Y.clone()
    Y_new[idx] = Yn
    Yc, Ync = Y.unsqueeze(1), Y_new.unsqueeze(1)
    A = torch.ones_like(Yc)
    with no_tf32():
        G = Xn.T @ loss_derivative(Xn @ W, Yn.unsqueeze(1)) \
            - X[idx].T @ loss_derivative(X[idx] @ W, Yc[idx])
        bound = None
        if order == 2:
            L = cholesky_factor(logistic_hessian(X_new, A, W, lam))
            step = cholesky_apply(L, G)
            gram = gram_matrices(X_new, A)
            spectral = spectral_norm_upper(gram, gram.diagonal(dim1=-2, dim2=-1).sum(-1))
            row_max = float(torch.linalg.vector_norm(X_new, dim=1).max())
            bound = float(data_dependent_bound(
                spectral, torch.linalg.vector_norm(step, dim=0),
                torch.linalg.vector_norm(X_new @ step, dim=0), gamma, row_max).sum())
        else:
            assert tau is not None
            step = tau * G
        W_new = W - step
        residual = residual_norm(X_new, Ync, A, W_new, B, lam)
        if not (bool(torch.isfinite(W_new).all()) and math.isfinite(residual)):
            raise ValueError(f"the updated weights or their residual are not finite (order "
                             f"{order}" + (f", 'tau' = {tau!r} too large)" if order == 1
                                           else ")"))
        residual_before = residual_norm(X_new, Ync, A, W, B, lam)
    sig = required_sigma(residual, epsilon, delta)
    certified = spent = None
    if sigma is not None:
        certified = residual <= noise_budget(sigma, epsilon, delta)
        spent = epsilon_spent(residual, sigma, delta)
    return LinearUpdateResult(
        weights=W_new[:, 0].to(w.dtype), order=order, residual=residual,
        residual_before=residual_before, bound=bound, sigma_required=sig,
        certified=certified, epsilon_spent=spent, num_affected=m, num_gradients=2 * m,
        time_s=time.perf_counter() - t0,
    )
