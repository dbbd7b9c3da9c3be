"""Batched conjugate gradients for K right-hand sides, one fused update op per iteration.

Each column of ``B`` is an independent CG solve (own step sizes, own stopping test). An
iteration is exactly one operator call on the [d, K] block of search directions plus one
:func:`fastunlearn.ops.cg_update_` launch that updates x, r, p, the residual norms and the
per-column ``active`` flags on the device. The host only looks at ``active.any()`` every
``check_every`` iterations, so between checks nothing waits for the device.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .. import ops
from .._equality import dataclass_eq
from .._numbers import check_int, check_real
from .._repr import fields_repr
from .operators import LinearOperator, _check_float_tensor

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CGResult", "cg", "CGInverseOperator", "CGNotConvergedError"]

Matmat = Callable[[Tensor], Tensor]


class CGNotConvergedError(RuntimeError):
    """A :class:`CGInverseOperator` product missed its tolerance (``on_unconverged="raise"``)."""


@dataclass(frozen=True, repr=False)
class CGResult:
    """Outcome of :func:`cg`.

    Attributes:
        solution: Tensor[d] or Tensor[d, K] (the rank of ``B``).
        iterations: int64 Tensor[K], CG steps taken per column.
        residual_norms: Tensor[K], true residual norms ``||B - A x||`` per column, computed
            with one extra operator call after the loop (not the recursive estimate).
        converged: bool Tensor[K], ``residual_norms <= max(tol * ||b||, atol)``.
        num_matvecs: Operator-vector products evaluated (operator calls times K), including
            the initial residual for ``x0`` and the final true residual.
        breakdown: bool Tensor[K], columns stopped because ``p^T A p <= 0`` or non-finite
            (the operator is not positive definite along p); their solution is the last
            iterate. With a singular positive semidefinite ``A`` and a right-hand side
            outside its range (no solution exists) the iterates grow without bound first,
            so that iterate may hold huge or infinite entries (``converged`` is False).

    """

    solution: Tensor
    iterations: Tensor
    residual_norms: Tensor
    converged: Tensor
    num_matvecs: int
    breakdown: Tensor

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised


def _as_matmat(A: object) -> tuple[Matmat, int | None]:
    if isinstance(A, LinearOperator):
        return A.matmat, A.shape[1]
    if callable(A):
        return A, None
    raise TypeError(f"'A' must be a LinearOperator or a callable, got {type(A).__name__}")


def _jacobi_from_operator(A: object, B: Tensor) -> Tensor:
    diagonal = getattr(A, "diagonal", None)
    if not callable(diagonal):
        raise ValueError("precond='jacobi' needs an operator 'A' with a diagonal() method")
    try:
        diag = diagonal()
    except NotImplementedError as exc:  # e.g. a damped operator whose base has no diagonal
        raise ValueError(f"precond='jacobi' needs the diagonal of 'A': {exc}") from exc
    if not bool(((diag > 0) & torch.isfinite(diag)).all()):
        raise ValueError("precond='jacobi': the diagonal of 'A' must be positive and finite")
    return _check_inv_diag(1.0 / diag, B)


def _check_inv_diag(inv_diag: Tensor, B: Tensor) -> Tensor:
    d, K = B.shape
    if inv_diag.ndim == 1:
        inv_diag = inv_diag.unsqueeze(1)
    if inv_diag.ndim != 2 or inv_diag.shape[0] != d or inv_diag.shape[1] not in (1, K):
        raise ValueError(
            f"'precond' (inverse diagonal) must have shape [{d}], [{d}, 1] or [{d}, {K}], "
            f"got {list(inv_diag.shape)}"
        )
    if inv_diag.dtype != B.dtype:
        raise TypeError(f"'precond' must have dtype {B.dtype}, got {inv_diag.dtype}")
    if inv_diag.device != B.device:
        raise ValueError(f"'precond' must be on {B.device}, got {inv_diag.device}")
    return inv_diag.contiguous()


def _check_precond_kind(precond: object) -> None:
    """Check what of ``precond`` does not need ``B``: its type, and the one string."""
    if isinstance(precond, str):
        if precond != "jacobi":
            raise ValueError(f"'precond' must be None, 'jacobi', a tensor or a callable, "
                             f"got {precond!r}")
    elif isinstance(precond, Tensor):
        _check_float_tensor("precond", precond)
    elif precond is not None and not (isinstance(precond, LinearOperator) or callable(precond)):
        raise TypeError(f"'precond' must be None, 'jacobi', a tensor or a callable, "
                        f"got {type(precond).__name__}")


def _preconditioner(precond: object, A: object, B: Tensor) -> tuple[Tensor | None, Matmat | None]:
    """Split ``precond`` into a Jacobi inverse diagonal (fused path) or a callable (unfused)."""
    _check_precond_kind(precond)
    if precond is None:
        return None, None
    if isinstance(precond, str):
        return _jacobi_from_operator(A, B), None
    if isinstance(precond, Tensor):
        inv_diag = _check_inv_diag(precond, B)
        if not bool(((inv_diag > 0) & torch.isfinite(inv_diag)).all()):
            raise ValueError("'precond' (inverse diagonal) must be positive and finite")
        return inv_diag, None
    if isinstance(precond, LinearOperator):
        d = B.shape[0]
        if tuple(precond.shape) != (d, d):
            raise ValueError(f"'precond' must be a ({d}, {d}) operator like 'A', got shape "
                             f"{tuple(precond.shape)}")
        return None, precond.matmat
    return None, cast(Matmat, precond)  # a callable, as _check_precond_kind checked


def _check_options(
    tol: object, atol: object, maxiter: object, check_every: object, callback: object
) -> tuple[float, float, int | None, int | None]:
    """Check the scalar options of :func:`cg` (they need neither ``A`` nor ``B``).

    ``maxiter`` and ``check_every`` may be None (their defaults depend on ``B`` and ``A``).
    """
    tol = check_real("tol", tol)
    atol = check_real("atol", atol)
    maxiter = None if maxiter is None else check_int("maxiter", maxiter, 0)
    check_every = None if check_every is None else check_int("check_every", check_every, 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"'callback' must be callable, got {type(callback).__name__}")
    return tol, atol, maxiter, check_every


def _apply(f: Matmat, V: Tensor, name: str) -> Tensor:
    """``f(V)``, checked to be a tensor of the shape, dtype and device of ``V``."""
    out = f(V)
    if not isinstance(out, Tensor) or out.shape != V.shape:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"'{name}' must map a [d, K] block to [d, K], got {shape}")
    if out.dtype != V.dtype:
        raise TypeError(f"'{name}' must return dtype {V.dtype} (that of 'B'), got {out.dtype}")
    if out.device != V.device:
        raise ValueError(f"'{name}' must return a tensor on {V.device} (that of 'B'), "
                         f"got {out.device}")
    return out


def _check_finite(name: str, t: Tensor) -> None:
    """Raise ValueError when ``t`` holds NaN or infinity (one host synchronisation)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"'{name}' must be finite (it holds NaN or infinity)")


def _pcg_update_(
    x: Tensor, r: Tensor, p: Tensor, Ap: Tensor, M: Matmat, rz: Tensor, rr: Tensor,
    active: Tensor, iterations: Tensor, threshold_sq: Tensor,
) -> None:
    """Plain-torch (unfused) twin of ``ops.cg_update_`` with a general preconditioner M."""
    pAp = (p * Ap).sum(0)
    ok = active & (pAp > 0) & torch.isfinite(pAp)
    alpha = torch.where(ok, rz / torch.where(ok, pAp, 1.0), 0.0)
    x.copy_(torch.where(ok, x + alpha * p, x))
    r.copy_(torch.where(ok, r - alpha * Ap, r))
    z = _apply(M, r, "precond")
    rz_new = (r * z).sum(0)
    beta = torch.where(ok & (rz != 0), rz_new / torch.where(rz != 0, rz, 1.0), 0.0)
    p.copy_(torch.where(ok, z + beta * p, p))
    rz.copy_(torch.where(ok, rz_new, rz))
    rr.copy_(torch.where(ok, (r * r).sum(0), rr))
    iterations.add_(ok.to(iterations.dtype))
    active.copy_(ok & (rr > threshold_sq))


def cg(
    A: LinearOperator | Matmat,
    B: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float | np.floating = 1e-6,
    atol: float | np.floating = 0.0,
    maxiter: int | np.integer | None = None,
    precond: Tensor | str | LinearOperator | Matmat | None = None,
    check_every: int | np.integer | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> CGResult:
    """Solve ``A X = B`` column by column with (preconditioned) conjugate gradients.

    ``A`` must be symmetric positive definite on the columns it is applied to. Column k stops
    when its recursive residual satisfies ``||r_k|| <= max(tol * ||b_k||, atol)`` (SciPy's
    rule) or when CG breaks down on it (``p^T A p <= 0``); stopped columns are never modified
    again. Convergence is tested on the host only every ``check_every`` iterations: the answer
    does not depend on ``check_every``, only the number of wasted operator calls after the
    last column stops (at most ``check_every - 1``).

    The recursive residual keeps shrinking after the true one has stalled at the operator's
    rounding floor, about ``eps * ||A|| ||x||`` (float32: ``eps`` ~ 1e-7, so a relative
    ``tol`` much below ``1e-7 * cond(A)`` is out of reach); ``converged`` is judged on the
    true residual, so such a column reports ``False`` with its true residual norm. Solve in
    float64 when a tighter tolerance matters.

    Preconditioning:

    - ``None``: plain CG.
    - a tensor: Jacobi, the *inverse* diagonal ([d], [d, 1] or [d, K], positive), passed to the
      fused op.
    - ``"jacobi"``: the same with ``1 / A.diagonal()`` (operators that define ``diagonal()``:
      :class:`~fastunlearn.linalg.DenseOperator`,
      :class:`~fastunlearn.linalg.GLMHessianOperator`, ...).
    - any other callable or LinearOperator ``M`` (applied as ``z = M(r)`` to [d, K]; must be
      symmetric positive definite): runs an unfused plain-torch PCG step (several kernels
      per iteration), with the same masking and stopping semantics.

    Args:
        A: A square LinearOperator, or a callable mapping [d, K] -> [d, K].
        B: Tensor[d] or Tensor[d, K], float32 or float64, finite right-hand sides. The
            solve is not differentiable: ``B`` and ``x0`` are used detached.
        x0: Initial guess shaped like ``B`` (default zeros; costs one extra operator call).
            Ignored for all-zero columns of ``B``, whose solution is exactly zero.
        tol: Relative tolerance (>= 0).
        atol: Absolute tolerance (>= 0).
        maxiter: Maximum iterations (default ``10 * d``).
        precond: See above.
        check_every: Host convergence check period in iterations (>= 1); default 1 for an
            operator with ``costly_products`` (network curvature: a wasted product costs a
            pass over the data), else 10.
        callback: Called as ``callback(iteration, x, rr)`` after every iteration with the
            live [d, K] iterate and the squared recursive residual norms [K]. Reading them
            synchronises with the device.

    Returns:
        A :class:`CGResult`; ``solution`` has the rank of ``B``.

    Raises:
        TypeError: bad types of ``A``, ``B``, ``x0``, ``precond``, ints or dtype mismatches
            (also an operator or preconditioner returning another dtype than ``B``'s).
        ValueError: wrong shapes, devices, non-finite ``B`` or ``x0``, negative
            ``tol``/``atol``/``maxiter``,
            ``check_every < 1``, an unusable Jacobi diagonal, or an operator returning
            the wrong shape.

    """
    matmat, d_op = _as_matmat(A)
    B = _check_float_tensor("B", B).detach()
    if B.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"'B' must be float32 or float64, got {B.dtype}")
    if B.ndim not in (1, 2) or (d_op is not None and B.shape[0] != d_op):
        expected = "[d] or [d, K]" if d_op is None else f"[{d_op}] or [{d_op}, K]"
        raise ValueError(f"'B' must have shape {expected}, got {list(B.shape)}")
    if isinstance(A, LinearOperator):
        if B.dtype != A.dtype:
            raise TypeError(f"'B' must have the operator's dtype {A.dtype}, got {B.dtype}")
        if B.device != A.device:
            raise ValueError(f"'B' must be on the operator's device {A.device}, got {B.device}")
    _check_finite("B", B)
    tol, atol, maxiter, check_every = _check_options(tol, atol, maxiter, check_every, callback)
    d = B.shape[0]
    if maxiter is None:
        maxiter = 10 * d
    if check_every is None:
        check_every = 1 if getattr(A, "costly_products", False) else 10

    vector = B.ndim == 1
    Bm = B.unsqueeze(1) if vector else B
    K = Bm.shape[1]
    inv_diag, M = _preconditioner(precond, A, Bm)
    # Columns far outside the dtype's comfortable range are solved divided by a power of
    # two (exact, and A x = b is linear in b): their squared norms would overflow to inf
    # or underflow to 0 and stop CG at once, reporting 0 as converged.
    scale = _column_scale(Bm)
    if scale is not None:
        Bm = Bm / scale
    atol_t = torch.full((K,), atol, dtype=Bm.dtype, device=Bm.device)
    if scale is not None:
        atol_t = atol_t / scale[0]

    num_calls = 0
    if x0 is None:
        x = torch.zeros_like(Bm, memory_format=torch.contiguous_format)
        r = Bm.clone(memory_format=torch.contiguous_format)
    else:
        x0 = _check_float_tensor("x0", x0).detach()
        if x0.shape != B.shape:
            raise ValueError(f"'x0' must have the shape of 'B' {list(B.shape)}, "
                             f"got {list(x0.shape)}")
        if x0.dtype != B.dtype:
            raise TypeError(f"'x0' must have dtype {B.dtype}, got {x0.dtype}")
        if x0.device != B.device:
            raise ValueError(f"'x0' must be on {B.device}, got {x0.device}")
        _check_finite("x0", x0)
        x = (x0.unsqueeze(1) if vector else x0).clone(memory_format=torch.contiguous_format)
        if scale is not None:
            x.div_(scale)
        # A zero right-hand side has the exact solution 0 whatever the guess (SciPy does the
        # same); starting from x0 there would chase a relative tolerance of 0 until maxiter.
        x.masked_fill_((Bm == 0).all(0, keepdim=True), 0.0)
        r = (Bm - _apply(matmat, x, "A")).contiguous()
        num_calls += 1

    if inv_diag is not None:
        z = r * inv_diag
    elif M is not None:
        z = _apply(M, r, "precond")
    else:
        z = r
    p = z.clone(memory_format=torch.contiguous_format)
    rz = (r * z).sum(0)
    rr = (r * r).sum(0)
    threshold = torch.maximum(tol * torch.linalg.vector_norm(Bm, dim=0), atol_t)
    threshold_sq = threshold.square()
    active = rr > threshold_sq
    iterations = torch.zeros(K, dtype=torch.int64, device=B.device)

    for it in range(maxiter):
        # The only host synchronisation of the loop, once every check_every iterations.
        if it % check_every == 0 and not bool(active.any()):
            break
        Ap = _apply(matmat, p, "A")
        num_calls += 1
        if M is None:
            ops.cg_update_(x, r, p, Ap, inv_diag, rz, rr, active, iterations, threshold_sq)
        else:
            _pcg_update_(x, r, p, Ap, M, rz, rr, active, iterations, threshold_sq)
        if callback is not None:
            if scale is None:
                callback(it + 1, x, rr)
            else:  # the caller's units (copies)
                callback(it + 1, x * scale, rr * scale[0].square())

    residual_norms = torch.linalg.vector_norm(Bm - _apply(matmat, x, "A"), dim=0)
    num_calls += 1
    # Inactive although the recursive residual is still above the threshold: breakdown.
    breakdown = ~active & (rr > threshold_sq)
    converged = residual_norms <= threshold
    if scale is not None:
        x = x * scale
        residual_norms = residual_norms * scale[0]
    return CGResult(
        solution=x.squeeze(1) if vector else x,
        iterations=iterations,
        residual_norms=residual_norms,
        converged=converged,
        num_matvecs=num_calls * K,
        breakdown=breakdown,
    )


#: Largest |binary exponent| of a right-hand side's entries solved as given: beyond it the
#: squared norms CG forms (summed over up to 2**47 entries) leave the dtype's range.
_SAFE_EXPONENT = {torch.float32: 40, torch.float64: 400}


def _column_scale(Bm: Tensor) -> Tensor | None:
    """Powers of two ``[1, K]`` bringing extreme columns of ``Bm`` near 1 (None: none is)."""
    if Bm.numel() == 0:
        return None
    largest = Bm.abs().amax(0)
    exponent = torch.frexp(largest).exponent
    extreme = (exponent.abs() > _SAFE_EXPONENT[Bm.dtype]) & (largest > 0)
    if not bool(extreme.any()):
        return None
    ones = torch.ones_like(largest)
    return torch.where(extreme, torch.ldexp(ones, exponent), ones).unsqueeze(0)


#: The keyword options of :func:`cg` a :class:`CGInverseOperator` passes on, with defaults.
_CG_DEFAULTS = {
    name: p.default for name, p in inspect.signature(cg).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name != "x0"
}
_CG_KEYWORDS = frozenset(_CG_DEFAULTS)


def _check_cg_kwargs(cg_kwargs: dict[str, object]) -> None:
    """Check the keyword options of :func:`cg` as far as they do not need ``B``.

    The same checks :func:`cg` makes (``tol``, ``atol``, ``maxiter``, ``check_every``,
    ``callback``, and the kind of ``precond``), so a bad option fails at construction.
    """
    unknown = sorted(set(cg_kwargs) - _CG_KEYWORDS)
    if unknown:
        raise TypeError(f"'cg_kwargs': unknown keyword(s) {unknown}; "
                        f"allowed: {sorted(_CG_KEYWORDS)}")
    opts = {**_CG_DEFAULTS, **cg_kwargs}
    _check_options(opts["tol"], opts["atol"], opts["maxiter"], opts["check_every"],
                   opts["callback"])
    _check_precond_kind(opts["precond"])


class CGInverseOperator(LinearOperator):
    """``A^{-1}`` as an operator: each product runs :func:`cg` on the given columns.

    A product whose solve misses the tolerance is not returned silently: by default it
    warns (``RuntimeWarning``, with the worst column's relative residual);
    ``on_unconverged="raise"`` raises :class:`CGNotConvergedError` instead, ``"ignore"``
    leaves it to :attr:`last_result`.

    Args:
        A: The symmetric positive definite LinearOperator to invert.
        on_unconverged: ``"warn"`` (default), ``"raise"`` or ``"ignore"``.
        **cg_kwargs: Keyword arguments of :func:`cg` (``tol``, ``atol``, ``maxiter``,
            ``precond``, ``check_every``, ``callback``).

    Attributes:
        last_result: The :class:`CGResult` of the most recent product (None before).
        num_matvecs: Products with ``A`` evaluated over all solves so far.

    Raises:
        TypeError: ``A`` is not a LinearOperator, an unknown keyword, or a keyword of the
            wrong type (checked here as :func:`cg` checks it).
        ValueError: ``on_unconverged`` is not one of the three choices, or a keyword out of
            range (e.g. ``tol < 0``).

    """

    def __init__(self, A: LinearOperator, on_unconverged: str = "warn",
                 **cg_kwargs: object) -> None:
        if not isinstance(A, LinearOperator):
            raise TypeError(f"'A' must be a LinearOperator, got {type(A).__name__}")
        if on_unconverged not in ("warn", "raise", "ignore"):
            raise ValueError(f"'on_unconverged' must be 'warn', 'raise' or 'ignore', got "
                             f"{on_unconverged!r}")
        _check_cg_kwargs(cg_kwargs)
        self.on_unconverged = on_unconverged
        self.A = A
        # keyword -> value of the type cg takes for it (_check_cg_kwargs checked them)
        self.cg_kwargs: dict[str, Any] = cg_kwargs
        self.last_result: CGResult | None = None
        self.num_matvecs = 0
        self.shape = A.shape
        self.dtype = A.dtype
        self.device = A.device

    def matmat(self, V: Tensor) -> Tensor:
        """``A^{-1} V`` by CG, V [d, K] -> [d, K].

        Raises:
            TypeError: If ``V`` is not a floating tensor of the operator's dtype.
            ValueError: If ``V`` is not ``[d, K]`` or not on the operator's device.
            CGNotConvergedError: If ``on_unconverged="raise"`` and CG misses the tolerance
                on a column.

        """
        V = self._check_block(V)
        result = cg(self.A, V, **self.cg_kwargs)
        self.last_result = result
        self.num_matvecs += result.num_matvecs
        if self.on_unconverged != "ignore" and not bool(result.converged.all()):
            missed = ~result.converged
            norms = torch.linalg.vector_norm(V, dim=0).to(result.residual_norms.dtype)
            relative = result.residual_norms[missed] / norms[missed].clamp_min(
                torch.finfo(norms.dtype).tiny)
            worst = float(relative.max())
            message = (f"CG did not converge on {int(missed.sum())} of "
                       f"{result.converged.numel()} column(s) (worst relative residual "
                       f"{worst:.3g}, {int(result.iterations.max())} iterations): the "
                       "product is an inexact inverse; raise maxiter or use a preconditioner")
            if self.on_unconverged == "raise":
                raise CGNotConvergedError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return result.solution
