"""Gradient-residual bounds and the (epsilon, delta) noise budget of certified removal.

Notation (Guo et al., ICML 2020): after a Newton removal step ``v = H^{-1} Delta`` taken at
``w`` on the remaining rows ``X_rem``, the gradient of the perturbed objective at the new point
is the Taylor remainder of the loss gradient. For the logistic loss it obeys

    ||grad L_b(w + v; D')|| <= gamma * ||X_rem||_2 * ||v|| * ||X_rem v||      (Corollary 1)

with ``gamma`` the Lipschitz constant of ``l''`` (1/4 in the paper; the true constant of
``sigma'`` is ``1 / (6 sqrt 3)``). The worst-case bound (Theorem 1) assumes only
``||x_i|| <= 1`` and ``|l'| <= C``.

Objective perturbation ``b ~ N(0, sigma^2 I)`` gives (epsilon, delta)-certified removal as long
as the accumulated residual stays below ``sigma * epsilon / c(delta)`` with
``c(delta) = sqrt(2 ln(1.5 / delta))``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import SupportsFloat, SupportsIndex, cast

import numpy as np
from torch import Tensor

__all__ = [
    "GAMMA_PAPER",
    "GAMMA_TIGHT",
    "c_delta",
    "data_dependent_bound",
    "epsilon_spent",
    "noise_budget",
    "resolve_gamma",
    "worst_case_bound",
]

#: Lipschitz constant of the logistic loss's second derivative used by the paper.
GAMMA_PAPER = 0.25
#: The exact Lipschitz constant of ``sigma'(z) = sigma(z) (1 - sigma(z))``: ``1 / (6 sqrt 3)``.
GAMMA_TIGHT = 1.0 / (6.0 * math.sqrt(3.0))


def _is_real(value: object) -> bool:
    """Python or numpy real scalar, not a bool (``np.float32(0.25)`` counts)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _as_float(name: str, value: object) -> float:
    """``float(value)``; an int beyond the float range is a ValueError naming ``name``."""
    try:
        return float(cast(SupportsFloat, value))
    except OverflowError:
        # not the digits: str() of a huge int can fail too
        bits = int(cast(SupportsIndex, value)).bit_length()
        raise ValueError(f"argument '{name}' is too large for a float (an int of {bits} "
                         "bits)") from None


def _check_delta(delta: float | np.floating) -> float:
    if not _is_real(delta):
        raise TypeError(f"argument 'delta' must be a real number, got {type(delta).__name__}")
    delta = _as_float("delta", delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"argument 'delta' must be in (0, 1), got {delta}")
    return delta


def _check_nonneg(name: str, value: object, *, positive: bool = False) -> float:
    if not _is_real(value):
        raise TypeError(f"argument '{name}' must be a real number, got {type(value).__name__}")
    value = _as_float(name, value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "> 0" if positive else ">= 0"
        raise ValueError(f"argument '{name}' must be finite and {kind}, got {value}")
    return value


def _count_list(name: str, value: object) -> list[float]:
    """Row counts (a number, or one per class) as floats, each finite and >= 0."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(_as_float(name, value) if _is_real(value) else value)
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise TypeError(f"argument '{name}' must be a count or a non-empty tensor/array of "
                        f"counts, got {type(value).__name__} of dtype {array.dtype}")
    counts = array.astype(np.float64).reshape(-1)
    if not (np.isfinite(counts).all() and (counts >= 0).all()):
        raise ValueError(f"argument '{name}' must hold finite counts >= 0, got {counts.tolist()}")
    return counts.tolist()


def c_delta(delta: float | np.floating) -> float:
    """Return ``c = sqrt(2 ln(1.5 / delta))``, the Gaussian-mechanism constant.

    Args:
        delta: failure probability in (0, 1).

    Returns:
        ``c(delta)``; e.g. ``c(1e-4) = 4.3854``.

    Raises:
        ValueError: if ``delta`` is not in (0, 1).

    """
    return math.sqrt(2.0 * math.log(1.5 / _check_delta(delta)))


def noise_budget(
    sigma: float | np.floating,
    epsilon: float | np.floating,
    delta: float | np.floating,
) -> float:
    """Largest accumulated gradient residual certified by ``b ~ N(0, sigma^2 I)``.

    ``budget = sigma * epsilon / c(delta)``; e.g. sigma 10, epsilon 1, delta 1e-4 gives 2.280.

    Args:
        sigma: standard deviation of the objective perturbation, >= 0.
        epsilon: privacy parameter, > 0.
        delta: failure probability in (0, 1).

    Returns:
        The budget ``epsilon'`` (0 when ``sigma == 0``).

    Raises:
        ValueError: if an argument is out of range.

    """
    sigma = _check_nonneg("sigma", sigma)
    epsilon = _check_nonneg("epsilon", epsilon, positive=True)
    return sigma * epsilon / c_delta(delta)


def epsilon_spent(
    used: float | np.floating,
    sigma: float | np.floating,
    delta: float | np.floating,
) -> float:
    """Epsilon certified by an accumulated residual ``used``: ``c(delta) * used / sigma``.

    Args:
        used: accumulated gradient-residual bound, >= 0.
        sigma: standard deviation of the perturbation, >= 0.
        delta: failure probability in (0, 1).

    Returns:
        The epsilon spent (``inf`` when ``sigma == 0`` and ``used > 0``).

    Raises:
        ValueError: if an argument is out of range.

    """
    used = _check_nonneg("used", used)
    sigma = _check_nonneg("sigma", sigma)
    c = c_delta(delta)
    if sigma == 0.0:
        return 0.0 if used == 0.0 else math.inf
    return c * used / sigma


def resolve_gamma(gamma: float | np.floating | str) -> float:
    """Turn the ``gamma`` option into a number.

    Args:
        gamma: a positive float, or ``"tight"`` for ``1 / (6 sqrt 3)`` or ``"paper"`` for 1/4.

    Returns:
        The Lipschitz constant used by the bounds.

    Raises:
        ValueError: if ``gamma`` is not positive and finite or an unknown string.

    """
    if isinstance(gamma, str):
        if gamma == "tight":
            return GAMMA_TIGHT
        if gamma == "paper":
            return GAMMA_PAPER
        raise ValueError(
            f"argument 'gamma' must be a positive float, 'tight' or 'paper', got {gamma!r}"
        )
    return _check_nonneg("gamma", gamma, positive=True)


def data_dependent_bound(
    spectral_norm: Tensor,
    step_norm: Tensor,
    projected_norm: Tensor,
    gamma: float | np.floating,
    row_norm_max: float | np.floating = 1.0,
) -> Tensor:
    """Per-class data-dependent bound ``gamma ||X_rem||_2 ||v|| ||X_rem v||`` (Corollary 1).

    The paper's derivation bounds ``max_i |x_i . v|`` by ``||v||``, which needs
    ``||x_i|| <= 1``; for rows longer than 1 the factor ``max(1, max_i ||x_i||)`` keeps the
    bound valid (it is exactly 1 for L2-normalised rows).

    Args:
        spectral_norm (Tensor[K]): safe upper bounds of ``||X_rem,k||_2``.
        step_norm (Tensor[K]): ``||v_k||`` with ``v_k = H_k^{-1} Delta_k``.
        projected_norm (Tensor[K]): ``||X_rem,k v_k||``.
        gamma: Lipschitz constant of ``l''`` (see :func:`resolve_gamma`).
        row_norm_max: largest row norm of the remaining data.

    Returns:
        Tensor[K]: the bound of each class; their sum bounds the joint residual.

    Raises:
        TypeError: if a norm is not a tensor.
        ValueError: if ``gamma`` is not positive or ``row_norm_max`` is negative (both finite).

    """
    for name, value in (("spectral_norm", spectral_norm), ("step_norm", step_norm),
                        ("projected_norm", projected_norm)):
        if not isinstance(value, Tensor):
            raise TypeError(f"argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
    gamma = _check_nonneg("gamma", gamma, positive=True)
    row_factor = max(1.0, _check_nonneg("row_norm_max", row_norm_max))
    return gamma * row_factor * spectral_norm * step_norm * projected_norm


def worst_case_bound(
    lam: float | np.floating,
    n: float | np.integer | np.floating | Tensor | np.ndarray | Sequence[float],
    m: float | np.integer | np.floating | Tensor | np.ndarray | Sequence[float] = 1,
    gamma: float | np.floating = GAMMA_PAPER,
    C: float | np.floating = 1.0,
    row_norm: float | np.floating = 1.0,
) -> float:
    """Worst-case residual of removing ``m`` points from ``n`` (Theorem 1 / batch version).

    ``4 gamma m^2 C^2 R^3 / (lam^2 (n - m))`` with ``R = row_norm``, summed over classes when
    ``n`` and ``m`` are per-class tensors. Theorem 1 assumes ``||x_i|| <= 1`` (``R = 1``) and
    ``|l'| ||x_i|| <= C`` (``C = 1`` for logistic loss). With rows up to ``R`` long the
    curvature term ``l''(x^T w) x x^T`` of a row is ``gamma R^3``-Lipschitz in ``w`` (``l''``
    is ``gamma``-Lipschitz in the margin), hence the factor ``R^3``; the logistic loss then
    has ``C = R``. E.g. lam 1e-3, n 11982, m 1 gives 83.5.

    Args:
        lam: L2 regularisation, > 0.
        n: rows before the removal (per class).
        m: rows removed at once (per class); classes with ``m == 0`` contribute 0.
        gamma: Lipschitz constant of ``l''``.
        C: bound on ``|l'|`` times the row norm.
        row_norm: bound on the row norms ``R`` (callers pass ``max(1, R)``), > 0.

    Returns:
        The bound (``inf`` if a class would be left with no rows).

    Raises:
        TypeError: if an argument is not a number (``n``, ``m``: numbers or a tensor/array of
            them).
        ValueError: if ``lam``, ``gamma`` or ``row_norm`` is not positive, ``C``, ``n`` or
            ``m`` is negative, or any of them is not finite.

    """
    lam = _check_nonneg("lam", lam, positive=True)
    gamma = _check_nonneg("gamma", gamma, positive=True)
    C = _check_nonneg("C", C)
    lipschitz = gamma * _check_nonneg("row_norm", row_norm, positive=True) ** 3
    # host arithmetic on a handful of numbers (once per removal): plain floats
    n_list = _count_list("n", n)
    m_list = _count_list("m", m)
    if len(m_list) == 1:
        m_list = m_list * len(n_list)
    if len(m_list) != len(n_list):
        raise ValueError(f"arguments 'n' and 'm' must have the same length or 'm' one entry, "
                         f"got {len(n_list)} and {len(m_list)}")
    total = 0.0
    for n_k, m_k in zip(n_list, m_list, strict=True):
        if m_k > 0:
            rest = max(n_k - m_k, 0.0)
            # lam * lam underflows to 0 below lam ~1e-154: the bound is then +inf (as the
            # C++ kernels' IEEE division gives), not a ZeroDivisionError
            denominator = lam * lam * rest
            if denominator == 0:
                total = math.inf
            else:
                total += 4.0 * lipschitz * m_k * m_k * C * C / denominator
    return total
