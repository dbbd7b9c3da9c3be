"""GLM curvature: Hessian-vector products, Hessians and CG solves for K-class linear models.

For one-vs-rest logistic regression with K classes, class k's Hessian is
``H_k = X^T diag(S[:, k]) X + lam I`` where ``S[:, k]`` holds ``sigma'(margin)`` times any
sample weights, and zero for removed rows (so a removal never copies ``X``).

Only :func:`glm_hvp` is differentiable. :func:`glm_hvp_margins`, :func:`glm_hessian` and
:func:`glm_cg` refuse inputs that require grad while grad mode is on (a ``ValueError``
naming the op and the arguments) rather than return outputs that silently carry no
gradient; call them under ``torch.no_grad()`` or on detached tensors.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .._numbers import as_float, as_int, is_finite, is_integer, is_real
from .._repr import fields_repr
from ._fake_shapes import check_fake_devices

if TYPE_CHECKING:
    import numpy as np

_MAX_INT64 = 2**63 - 1

__all__ = [
    "CGResult",
    "glm_cg",
    "glm_hessian",
    "glm_hvp",
    "glm_hvp_margins",
    "jacobi_inverse_diagonal",
]


class CGResult(NamedTuple):
    """What :func:`glm_cg` returns.

    Attributes:
        solution (Tensor[d, K]): the approximate solutions, one column per system.
        iterations (Tensor[K], int64): CG iterations each system took.
        residual_norms (Tensor[K]): the true residual norms ``||B[:, k] - H_k x_k||``,
            recomputed after the loop (not CG's recursively updated estimate).

    """

    solution: Tensor
    iterations: Tensor
    residual_norms: Tensor

    def __repr__(self) -> str:
        return fields_repr(self)  # bounded: large tensors print their shape


def _check_tensor(value: object, name: str) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"argument '{name}' must be a torch.Tensor, got {type(value).__name__}")


def _check_lam(lam: object) -> float:
    if not is_real(lam):  # Python or NumPy real, not a bool
        raise TypeError(f"argument 'lam' must be a real number, got {type(lam).__name__}")
    lam = as_float(lam)  # an int beyond the float range: inf, refused below
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"argument 'lam' must be finite and >= 0, got {lam}")
    return lam


def glm_hvp(X: Tensor, S: Tensor, V: Tensor, lam: float | np.floating) -> Tensor:
    """Hessian-vector products of K weighted least-squares/GLM Hessians.

    Column k of the result is ``X^T (S[:, k] * (X V[:, k])) + lam V[:, k]``. On the CPU each
    row block of ``X`` is read from memory once and used for both products. On CUDA the two
    products are two cuBLAS GEMMs (``X`` read twice); with the environment variable
    ``FASTUNLEARN_GLM_HVP=onepass`` (opt-in, not yet timed on a GPU) float64 calls with
    ``d <= 832`` and ``K <= 16`` on cards with full-rate float64 tensor cores (compute
    capability 8.0, 9.0 or 10.0) run a one-pass tensor-core kernel instead,
    whose results are the same every run. Differentiable with respect to ``X``, ``S`` and
    ``V``.

    Args:
        X (Tensor[n, d]): design matrix (float32 or float64).
        S (Tensor[n, K]): per-row, per-class curvature weights.
        V (Tensor[d, K]): one vector per class.
        lam (float): L2 regularisation, >= 0.

    Returns:
        Tensor[d, K]: ``X^T (S * (X V)) + lam V``. On CUDA with ``lam == 0`` the two GEMMs
        do not form the term ``lam V``, so an infinite entry of ``V`` can give ``inf`` where
        the float64 oracle's ``0 * inf`` gives ``NaN`` (non-finite either way; the one-pass
        kernel forms it, as the oracle does).

    Raises:
        TypeError: if an argument has the wrong Python type.
        TypeError: if a dtype is not float32/float64 or the dtypes differ.
        ValueError: if ``lam`` is negative or not finite, or shapes or devices do not match
            (the message names the argument).

    """
    for name, t in (("X", X), ("S", S), ("V", V)):
        _check_tensor(t, name)
    return torch.ops.fastunlearn.glm_hvp.default(X, S, V, _check_lam(lam))


def glm_hvp_margins(
    X: Tensor, S: Tensor, V: Tensor, lam: float | np.floating
) -> tuple[Tensor, Tensor]:
    """:func:`glm_hvp` and the margins ``X V`` it computes on the way.

    A caller that needs both (the certified CG removal step: ``X V`` updates the cached
    margins and enters the bound) saves the second pass ``X @ V`` would cost. Not
    differentiable (use :func:`glm_hvp` for autograd): inputs that require grad raise
    ``ValueError`` while grad mode is on.

    Args:
        X (Tensor[n, d]): design matrix (float32 or float64).
        S (Tensor[n, K]): per-row, per-class curvature weights.
        V (Tensor[d, K]): one vector per class.
        lam (float): L2 regularisation, >= 0.

    Returns:
        tuple[Tensor[d, K], Tensor[n, K]]: ``X^T (S * (X V)) + lam V`` and ``X V`` (with
        ``lam == 0`` on CUDA, infinite entries of ``V`` as in :func:`glm_hvp`).

    Raises:
        TypeError: if an argument has the wrong Python type.
        TypeError: if a dtype is not float32/float64 or the dtypes differ.
        ValueError: if ``lam`` is negative or not finite, or shapes or devices do not match
            (the message names the argument).

    """
    for name, t in (("X", X), ("S", S), ("V", V)):
        _check_tensor(t, name)
    return torch.ops.fastunlearn.glm_hvp_margins.default(X, S, V, _check_lam(lam))


def glm_hessian(X: Tensor, S: Tensor, lam: float | np.floating) -> Tensor:
    """Compute the K Hessians ``X^T diag(S[:, k]) X + lam I``, accumulated over row chunks.

    Args:
        X (Tensor[n, d]): design matrix (float32 or float64).
        S (Tensor[n, K]): per-row, per-class curvature weights.
        lam (float): L2 regularisation, >= 0.

    Returns:
        Tensor[K, d, d]: the exactly symmetric Hessians.

    Raises:
        TypeError: if an argument has the wrong Python type.
        TypeError: if a dtype is not float32/float64 or the dtypes differ.
        ValueError: if ``lam`` is negative or not finite, or shapes or devices do not match
            (the message names the argument).

    """
    _check_tensor(X, "X")
    _check_tensor(S, "S")
    return torch.ops.fastunlearn.glm_hessian.default(X, S, _check_lam(lam))


def jacobi_inverse_diagonal(X: Tensor, S: Tensor, lam: float | np.floating) -> Tensor:
    """Inverse diagonals of the K Hessians: ``1 / ((X * X)^T S + lam)``, a Jacobi preconditioner.

    Where a diagonal entry is not positive (a feature that is zero on every weighted row
    while ``lam == 0``) or its inverse overflows, the entry is 1, so the preconditioner
    stays positive definite and finite.

    Args:
        X (Tensor[n, d]): design matrix.
        S (Tensor[n, K]): per-row, per-class curvature weights.
        lam (float): L2 regularisation, >= 0.

    Returns:
        Tensor[d, K]: the inverse diagonals, one column per class.

    Raises:
        TypeError: if an argument has the wrong Python type, ``X`` is not float32/float64,
            or ``S`` has another dtype.
        ValueError: if ``lam`` is negative or not finite, or ``X`` and ``S`` do not match in
            shape or device.

    """
    _check_tensor(X, "X")
    _check_tensor(S, "S")
    lam = _check_lam(lam)
    if X.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"argument 'X' must be float32 or float64, got {X.dtype}")
    if S.dtype != X.dtype:
        raise TypeError(
            f"arguments 'S' ({S.dtype}) and 'X' ({X.dtype}) must have the same dtype"
        )
    if S.device != X.device:
        raise ValueError(
            f"arguments 'S' ({S.device}) and 'X' ({X.device}) must be on the same device"
        )
    if X.dim() != 2 or S.dim() != 2 or X.shape[0] != S.shape[0]:
        raise ValueError(
            f"arguments 'X' [n, d] and 'S' [n, K] must be 2-D with the same number of rows, "
            f"got {tuple(X.shape)} and {tuple(S.shape)}"
        )
    diagonal = square_weighted_sums(X, S) + lam
    inverse = diagonal.reciprocal()
    return torch.where((diagonal > 0) & inverse.isfinite(), inverse, torch.ones_like(diagonal))


#: Bytes of the ``X * X`` temporary :func:`square_weighted_sums` builds at a time on the CPU
#: (a block of whole columns; about the L2 cache). Other devices take larger blocks, each
#: block costing kernel launches.
SQUARE_CHUNK_BYTES = 2 << 20
SQUARE_ACCEL_CHUNK_BYTES = 64 << 20
#: Fewest rows a row block of :func:`square_weighted_sums` holds; wider data (fewer rows per
#: block) goes by blocks of columns, whose products are larger.
SQUARE_MIN_BLOCK_ROWS = 256


def square_weighted_sums(X: Tensor, S: Tensor) -> Tensor:
    """``(X * X)^T S`` -> [d, K] without an ``n x d`` temporary: the Hessians' diagonals.

    The squares are formed for a block of ``X`` at a time, at most
    :data:`SQUARE_CHUNK_BYTES` (CPU) or :data:`SQUARE_ACCEL_CHUNK_BYTES` (other devices):
    blocks of whole rows, their products with ``S`` added up, where a block holds at least
    :data:`SQUARE_MIN_BLOCK_ROWS` rows (tall data), else blocks of whole columns, each entry
    one reduction over all ``n`` rows (wide data). When ``X * X`` fits in one block this is
    exactly ``X.square().T @ S``; otherwise an entry may differ from it by the rounding of a
    different summation order (the same ``n`` products), at most ``n`` ulps.

    Args:
        X (Tensor[n, d]): design matrix.
        S (Tensor[n, K]): per-row, per-class weights (dtype and device of ``X``).

    Returns:
        Tensor[d, K]: ``sum_i X[i, j]^2 S[i, k]``.

    Raises:
        ValueError: ``X`` or ``S`` is not 2-D or their numbers of rows differ.

    """
    if X.dim() != 2 or S.dim() != 2 or X.shape[0] != S.shape[0]:
        raise ValueError(
            f"arguments 'X' [n, d] and 'S' [n, K] must be 2-D with the same number of rows, "
            f"got {tuple(X.shape)} and {tuple(S.shape)}"
        )
    n, d = X.shape
    budget = SQUARE_CHUNK_BYTES if X.device.type == "cpu" else SQUARE_ACCEL_CHUNK_BYTES
    rows = budget // max(1, d * X.element_size())
    if rows >= n:
        return X.square().T @ S
    dtype = torch.result_type(X, S)
    if rows >= SQUARE_MIN_BLOCK_ROWS:  # tall: contiguous row blocks, one addmm each
        out = torch.zeros((d, S.shape[1]), dtype=dtype, device=X.device)
        for start in range(0, n, rows):
            out.addmm_(X[start:start + rows].square().T, S[start:start + rows])
        return out
    columns = max(1, budget // max(1, n * X.element_size()))
    out = torch.empty((d, S.shape[1]), dtype=dtype, device=X.device)
    for start in range(0, d, columns):
        stop = min(d, start + columns)
        torch.matmul(X[:, start:stop].square().T, S, out=out[start:stop])
    return out


def glm_cg(
    X: Tensor,
    S: Tensor,
    B: Tensor,
    lam: float | np.floating,
    *,
    x0: Tensor | None = None,
    precond: str | Tensor | None = None,
    tol: float | np.floating = 1e-6,
    maxiter: int | np.integer | None = None,
) -> CGResult:
    """Solve the K systems ``(X^T diag(S[:, k]) X + lam I) x_k = B[:, k]`` by CG, matrix-free.

    All K solves run together on the device of ``X``: each iteration is one
    :func:`glm_hvp` plus one fused update; the host checks for convergence only every few
    iterations. System k stops when ``||r_k|| <= tol * ||B[:, k]||``, on breakdown (the
    operator is not positive definite along the search direction), or after ``maxiter``
    iterations. A zero column of ``B`` without ``x0`` gives a zero solution in 0 iterations.

    Args:
        X (Tensor[n, d]): design matrix (float32 or float64).
        S (Tensor[n, K]): per-row, per-class curvature weights (zero for removed rows).
        B (Tensor[d, K]): right-hand sides.
        lam (float): L2 regularisation, >= 0.
        x0 (Tensor[d, K], optional): warm start; zeros if None.
        precond (str or Tensor, optional): None for plain CG; ``"jacobi"`` for the inverse
            Hessian diagonals (:func:`jacobi_inverse_diagonal`); a Tensor[d, K] of inverse
            diagonals (finite, > 0); or a Tensor[K, d, d] of lower Cholesky factors ``L_k`` of
            preconditioners ``M_k = L_k L_k^T`` (the exact factors of ``H_k`` solve in one
            iteration; the lower triangle finite, the diagonal > 0).
        tol (float): relative residual tolerance, >= 0.
        maxiter (int, optional): iteration cap per system, >= 0; default ``max(10, 2 d)``.

    Returns:
        CGResult: ``(solution [d, K], iterations int64 [K], residual_norms [K])``.

    Raises:
        TypeError: if an argument has the wrong Python type or a tensor the wrong dtype.
        ValueError: if ``lam``, ``tol`` or ``maxiter`` is out of range, ``precond`` is an
            unknown string or a tensor of values no preconditioner has (zero, negative or
            non-finite inverse diagonals; factors with a non-finite lower triangle or a
            diagonal entry <= 0), or shapes or devices do not match (the message names the
            argument).

    """
    for name, t in (("X", X), ("S", S), ("B", B)):
        _check_tensor(t, name)
    lam = _check_lam(lam)
    if x0 is not None:
        _check_tensor(x0, "x0")
    if not is_real(tol):  # Python or NumPy real, not a bool
        raise TypeError(f"argument 'tol' must be a real number, got {type(tol).__name__}")
    if not is_finite(tol) or tol < 0:
        raise ValueError(f"argument 'tol' must be finite and >= 0, got {tol}")
    tol = as_float(tol)
    if maxiter is None:
        maxiter = max(10, 2 * X.shape[-1])
    if not is_integer(maxiter):  # Python or NumPy int, not a bool
        raise TypeError(f"argument 'maxiter' must be an int, got {type(maxiter).__name__}")
    maxiter = as_int(maxiter)
    if not 0 <= maxiter <= _MAX_INT64:
        raise ValueError(f"argument 'maxiter' must be in [0, 2**63 - 1], got {maxiter}")
    if isinstance(precond, str):
        if precond != "jacobi":
            raise ValueError(
                f"argument 'precond' must be None, 'jacobi' or a Tensor, got {precond!r}"
            )
        precond = jacobi_inverse_diagonal(X, S, lam)
    elif precond is not None and not isinstance(precond, Tensor):
        raise TypeError(
            f"argument 'precond' must be None, 'jacobi' or a Tensor, got {type(precond).__name__}"
        )
    solution, iterations, residual_norms = torch.ops.fastunlearn.glm_cg.default(
        X, S, B, lam, x0, precond, float(tol), maxiter
    )
    return CGResult(solution, iterations, residual_norms)


# ---- fake kernels: shapes only, so torch.compile can trace the ops without graph breaks ----


def _check_design(op: str, X: Tensor, S: Tensor) -> None:
    torch._check_value(
        X.dim() == 2, lambda: f"{op}: argument 'X' must be 2-D, got {tuple(X.shape)}"
    )
    torch._check_value(
        S.dim() == 2, lambda: f"{op}: argument 'S' must be 2-D, got {tuple(S.shape)}"
    )
    torch._check_value(
        S.shape[0] == X.shape[0],
        lambda: f"{op}: argument 'S' has {S.shape[0]} rows but {X.shape[0]} were expected",
    )
    torch._check_type(
        X.dtype in (torch.float32, torch.float64),
        lambda: f"{op}: argument 'X' must be float32 or float64, got {X.dtype}",
    )
    torch._check_type(S.dtype == X.dtype, lambda: f"{op}: arguments 'S' and 'X' differ in dtype")


def _check_dk(op: str, name: str, t: Tensor, X: Tensor, S: Tensor) -> None:
    torch._check_value(
        t.dim() == 2 and t.shape[0] == X.shape[1] and t.shape[1] == S.shape[1],
        lambda: (
            f"{op}: argument '{name}' has shape {tuple(t.shape)}, expected "
            f"({X.shape[1]}, {S.shape[1]})"
        ),
    )
    torch._check_type(
        t.dtype == X.dtype, lambda: f"{op}: arguments '{name}' and 'X' differ in dtype"
    )


@torch.library.register_fake("fastunlearn::glm_hvp")
def _glm_hvp_fake(X: Tensor, S: Tensor, V: Tensor, lam: float) -> Tensor:
    check_fake_devices("glm_hvp", (("X", X), ("S", S), ("V", V)))
    _check_design("glm_hvp", X, S)
    _check_dk("glm_hvp", "V", V, X, S)
    return V.new_empty((X.shape[1], S.shape[1]))


@torch.library.register_fake("fastunlearn::glm_hvp_margins")
def _glm_hvp_margins_fake(X: Tensor, S: Tensor, V: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    check_fake_devices("glm_hvp_margins", (("X", X), ("S", S), ("V", V)))
    _check_design("glm_hvp_margins", X, S)
    _check_dk("glm_hvp_margins", "V", V, X, S)
    return V.new_empty((X.shape[1], S.shape[1])), V.new_empty((X.shape[0], S.shape[1]))


@torch.library.register_fake("fastunlearn::glm_hessian")
def _glm_hessian_fake(X: Tensor, S: Tensor, lam: float) -> Tensor:
    check_fake_devices("glm_hessian", (("X", X), ("S", S)))
    _check_design("glm_hessian", X, S)
    return X.new_empty((S.shape[1], X.shape[1], X.shape[1]))


@torch.library.register_fake("fastunlearn::glm_cg")
def _glm_cg_fake(
    X: Tensor,
    S: Tensor,
    B: Tensor,
    lam: float,
    x0: Tensor | None,
    precond: Tensor | None,
    tol: float,
    maxiter: int,
) -> tuple[Tensor, Tensor, Tensor]:
    check_fake_devices("glm_cg", (("X", X), ("S", S), ("B", B), ("x0", x0), ("precond", precond)))
    _check_design("glm_cg", X, S)
    _check_dk("glm_cg", "B", B, X, S)
    if x0 is not None:
        _check_dk("glm_cg", "x0", x0, X, S)
    d, K = X.shape[1], S.shape[1]
    if precond is not None:  # the kernel's shape and dtype checks (not its value checks)
        torch._check_value(
            (precond.dim() == 2 and precond.shape[0] == d and precond.shape[1] in (K, 1))
            or (precond.dim() == 3 and tuple(precond.shape) == (K, d, d)),
            lambda: (
                f"glm_cg: argument 'precond' must be a [d, K] Jacobi inverse diagonal or "
                f"[K, d, d] lower Cholesky factors (d = {d}, K = {K}), got shape "
                f"{tuple(precond.shape)}"
            ),
        )
        torch._check_type(
            precond.dtype == X.dtype, lambda: "glm_cg: arguments 'precond' and 'X' differ in dtype"
        )
    return B.new_empty((d, K)), B.new_empty((K,), dtype=torch.int64), B.new_empty((K,))


# ---- autograd of glm_hvp ----------------------------------------------------------------
# With Z = S * (X V) and the output gradient G:
#   dV = X^T (S * (X G)) + lam G = glm_hvp(X, S, G, lam)   (the operator is symmetric)
#   dS = (X V) * (X G)
#   dX = (S * (X V)) G^T + (S * (X G)) V^T


def _glm_hvp_setup_context(ctx, inputs, output) -> None:
    X, S, V, lam = inputs
    need_X, need_S, need_V = ctx.needs_input_grad[:3]
    ctx.lam = lam
    ctx.save_for_backward(
        X,
        S if (need_X or need_V) else None,
        V if (need_X or need_S) else None,
    )


def _glm_hvp_backward(ctx, grad: Tensor):
    X, S, V = ctx.saved_tensors
    need_X, need_S, need_V = ctx.needs_input_grad[:3]
    dX = dS = dV = None
    if need_V:
        dV = torch.ops.fastunlearn.glm_hvp.default(X, S, grad, ctx.lam)
    if need_X or need_S:
        XV, XG = X @ V, X @ grad
        if need_S:
            dS = XV * XG
        if need_X:
            dX = (S * XV) @ grad.T + (S * XG) @ V.T
    return dX, dS, dV, None


torch.library.register_autograd(
    "fastunlearn::glm_hvp", _glm_hvp_backward, setup_context=_glm_hvp_setup_context
)


# ---- the ops without a gradient formula ----------------------------------------------------
# Their math is differentiable, so outputs that silently carry no gradient would be a wrong
# answer: with an input that requires grad (grad mode on) the call raises instead.


def _refuse_gradients(op: str, names: tuple[str, ...]) -> None:
    def setup_context(ctx: object, inputs: tuple, output: object) -> None:
        wanted = [
            n
            for n, t in zip(names, inputs, strict=False)
            if isinstance(t, Tensor) and t.requires_grad
        ]
        raise ValueError(
            f"{op}: not differentiable, but argument(s) {', '.join(map(repr, wanted))} "
            "require grad; call it under torch.no_grad() or on detached tensors"
            + (" (glm_hvp is differentiable)" if op != "glm_cg" else "")
        )

    def backward(ctx: object, *grads: Tensor) -> tuple:  # pragma: no cover - unreachable
        raise RuntimeError(f"{op}: not differentiable")

    torch.library.register_autograd(f"fastunlearn::{op}", backward, setup_context=setup_context)


_refuse_gradients("glm_hvp_margins", ("X", "S", "V"))
_refuse_gradients("glm_hessian", ("X", "S"))
_refuse_gradients("glm_cg", ("X", "S", "B", "lam", "x0", "precond"))
