"""The certified single-row removal step as one compiled CPU call (internal).

:func:`certified_cg_step` computes, for one training row that every class holds, the
Newton step of :class:`~fastunlearn.certified.CertifiedLogisticRegression`'s ``cg`` solver
and its bound terms: ``Delta``, the curvature weights of the remaining rows, the removed
row folded into the explicit preconditioner ``M'^{-1}`` by the Sherman-Morrison formula
(written into ``M_out``; the row's scaled features into column ``slot`` of ``U_buf``),
preconditioned CG until the summed solve residual is at most ``cg_tol`` times the summed
data-dependent bound. Its Python twins, which the tests compare it with, are the
general step (``CertifiedLogisticRegression._plan``) and
:class:`~fastunlearn.certified.fixed_step.FixedShapeStep`.

:func:`certified_cg_steps` runs that step for a list of rows in turn and commits each one
in place while its bound fits the budget, so a sequential ``remove`` of many rows is one
call rather than a Python loop of plan-and-commit steps.

They exist for speed on small problems: on the bundled digits (1438 x 64, K = 10) the
Python step makes ~600 operator calls per removal; this is one. They have CPU kernels only:
on CUDA the same step runs as captured CUDA graphs of the tensor expressions
(:mod:`fastunlearn.certified.fixed_step`). Everything is float64 and contiguous.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices_of

__all__ = ["CertifiedStep", "CertifiedSteps", "certified_cg_step", "certified_cg_steps"]


def _check_tensors(op: str, names: tuple[str, ...], tensors: tuple[object, ...]) -> None:
    for name, t in zip(names, tensors, strict=True):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: argument '{name}' must be a Tensor, got {type(t).__name__}")


class CertifiedStep(NamedTuple):
    """Result of :func:`certified_cg_step`.

    Attributes:
        V (Tensor[d, K]): the Newton step of each class.
        XV (Tensor[n, K]): ``X @ V``.
        residual (float): ``sum_k ||H_k v_k - Delta_k||``.
        bound (float): sum of the per-class data-dependent bounds.
        iterations (int): CG iterations after the first direction.
        factor_ok (bool): False when the downdated preconditioner is not positive definite
            (nothing else was computed or written).
        converged (bool): False when ``max_iter`` iterations did not reach the target.

    """

    V: Tensor
    XV: Tensor
    residual: float
    bound: float
    iterations: int
    factor_ok: bool
    converged: bool


def certified_cg_step(
    X: Tensor,
    Y: Tensor,
    A: Tensor,
    Z: Tensor,
    W: Tensor,
    n_rem: Tensor,
    eig: Tensor,
    row_sq: Tensor,
    M_inv: Tensor,
    M_out: Tensor,
    weights: Tensor,
    U_buf: Tensor,
    slot: int,
    row: int,
    *,
    lam: float,
    gamma: float,
    row_norm_max: float,
    cg_tol: float,
    max_iter: int,
) -> CertifiedStep:
    """Plan the certified removal of ``row`` (see the module docstring).

    Args:
        X: ``[n, d]`` features.
        Y: ``[n, K]`` labels in {-1, +1}.
        A: ``[n, K]`` row weights before the removal.
        Z: ``[n, K]`` margins ``X W``.
        W: ``[d, K]`` weights.
        n_rem: ``[K]`` remaining (weighted) rows per class, before the removal.
        eig: ``[K]`` (or ``[1]``, one shared Gram matrix) upper bounds of ``lambda_max``.
        row_sq: ``[n]`` squared row norms.
        M_inv: ``[K, d, d]`` ``M'^{-1}``: the inverses of the last dense Hessians with the
            rows removed since taken out (see :mod:`fastunlearn.certified.woodbury`).
        M_out: ``[K, d, d]`` written with ``M'^{-1}`` after also taking out ``row`` (must
            not be ``M_inv``).
        weights: ``[n, K]`` curvature weights the dense Hessians were built with.
        U_buf: ``[K, d, T]`` removed rows scaled by ``sqrt(weights)``; column ``slot`` is
            written with ``row``'s.
        slot: the column of ``U_buf`` to write (``0 <= slot < T``).
        row: the row to remove; every class must hold it (``A[row] > 0``).
        lam: L2 regularisation per row.
        gamma: Lipschitz constant of the loss's second derivative.
        row_norm_max: largest row norm (the bound's ``max(1, .)`` factor).
        cg_tol: stop when the solve residual is at most this fraction of the bound.
        max_iter: CG iterations allowed after the first direction.

    Returns:
        CertifiedStep: the step, its bound terms and the solver's status.

    Raises:
        TypeError: an argument is not a Tensor.
        TypeError: a tensor's dtype is not float64.
        ValueError: wrong shapes, device (CPU only), a non-contiguous tensor or an index out
            of range (the message names the argument).

    """
    names = ("X", "Y", "A", "Z", "W", "n_rem", "eig", "row_sq", "M_inv", "M_out", "weights",
             "U_buf")
    tensors = (X, Y, A, Z, W, n_rem, eig, row_sq, M_inv, M_out, weights, U_buf)
    _check_tensors("certified_cg_step", names, tensors)
    V, XV, stats = torch.ops.fastunlearn.certified_cg_step.default(
        *tensors, int(slot), int(row), float(lam), float(gamma), float(row_norm_max),
        float(cg_tol), int(max_iter))
    residual, bound, iterations, ok, converged = stats.tolist()
    return CertifiedStep(V, XV, residual, bound, int(iterations), ok > 0.5, converged > 0.5)


@torch.library.register_fake("fastunlearn::certified_cg_step")
def _certified_cg_step_fake(X: Tensor, Y: Tensor, A: Tensor, Z: Tensor, W: Tensor,
                            n_rem: Tensor, eig: Tensor, row_sq: Tensor, M_inv: Tensor,
                            M_out: Tensor, weights: Tensor, U_buf: Tensor,
                            slot: int, row: int, lam: float, gamma: float,
                            row_norm_max: float, cg_tol: float,
                            max_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    check_fake_devices_of("certified_cg_step", (X, Y, A, Z, W, n_rem, eig, row_sq, M_inv, M_out,
                                                weights, U_buf))
    torch._check_value(X.dim() == 2 and A.dim() == 2,
                       lambda: "certified_cg_step: arguments 'X' and 'A' must be 2-D")
    torch._check_type(X.dtype == torch.float64,
                      lambda: f"certified_cg_step: argument 'X' must be float64, got {X.dtype}")
    n, d, K = X.shape[0], X.shape[1], A.shape[1]
    return X.new_empty(d, K), X.new_empty(n, K), X.new_empty(5)


class CertifiedSteps(NamedTuple):
    """Result of :func:`certified_cg_steps`: one entry per committed row, in order.

    Attributes:
        bounds (list[float]): each step's bound (data-dependent bound plus solve residual).
        worst_case (list[float]): each step's worst-case bound.
        iterations (list[int]): CG iterations after the first direction.
        seconds (list[float]): wall time of each step.

    """

    bounds: list[float]
    worst_case: list[float]
    iterations: list[int]
    seconds: list[float]

    @property
    def done(self) -> int:
        """How many rows were removed (the first ones of ``rows``)."""
        return len(self.bounds)


def certified_cg_steps(
    X: Tensor,
    Y: Tensor,
    A: Tensor,
    Z: Tensor,
    W: Tensor,
    n_rem: Tensor,
    eig: Tensor,
    row_sq: Tensor,
    gram: Tensor,
    removed: Tensor,
    M_inv: Tensor,
    M_spare: Tensor,
    weights: Tensor,
    U_buf: Tensor,
    rows: Tensor,
    slot: int,
    *,
    lam: float,
    gamma: float,
    row_norm_max: float,
    cg_tol: float,
    max_iter: int,
    budget_used: float,
    budget: float,
    refresh_after: int = -1,
) -> CertifiedSteps:
    """Remove ``rows`` one after another with the step of :func:`certified_cg_step`, in place.

    Each row's step is committed while ``budget_used`` plus its bound stays within
    ``budget``: ``W += V``, ``Z += X V``, the row's memberships zeroed in ``A`` and taken off
    ``n_rem``, its outer product taken off the Gram matrices (``gram [1, d, d]`` shared, or
    ``[K, d, d]`` weighted by the memberships), ``removed[row] = True``; the inverse with the
    row folded in becomes current (``M_inv`` and ``M_spare`` alternate: after an odd number of
    rows it is in ``M_spare``) and its ``U`` column is kept at ``slot + i``. The first row that
    is refused (its downdate not positive definite, CG not converged in ``max_iter``, or the
    budget exceeded) changes nothing and ends the call; the caller plans that row again with
    the single step to tell why.

    Args:
        X: ``[n, d]`` features.
        Y: ``[n, K]`` labels in {-1, +1}.
        A: ``[n, K]`` row memberships (in place, contiguous).
        Z: ``[n, K]`` margins ``X W`` (in place, contiguous).
        W: ``[d, K]`` weights (in place, contiguous).
        n_rem: ``[K]`` remaining (weighted) rows per class (in place, contiguous).
        eig: ``[K]`` or ``[1]`` upper bounds of ``lambda_max`` (refresh them between calls).
        row_sq: ``[n]`` squared row norms.
        gram: ``[1, d, d]`` or ``[K, d, d]`` Gram matrices of the remaining rows (in place).
        removed: ``[n]`` bool removal flags (in place).
        M_inv: ``[K, d, d]`` current ``M'^{-1}``.
        M_spare: ``[K, d, d]`` a second buffer for it.
        weights: ``[n, K]`` curvature weights the dense Hessians were built with.
        U_buf: ``[K, d, T]``; columns ``slot ..`` receive the removed rows'.
        rows: ``[m]`` int64 rows to remove, each held by every class, none removed yet.
        slot: first free column of ``U_buf`` (``slot + m <= T``).
        lam: L2 regularisation per row.
        gamma: Lipschitz constant of the loss's second derivative.
        row_norm_max: largest row norm.
        cg_tol: stop CG when the solve residual is at most this fraction of the bound.
        max_iter: CG iterations allowed after the first direction.
        budget_used: budget used before the first row.
        budget: the total budget.
        refresh_after: when >= 0, also stop after committing a row whose CG needed more than
            this many iterations (the caller refreshes its factors first).

    Returns:
        CertifiedSteps: the committed rows' bounds, worst-case bounds, iterations and times.

    Raises:
        TypeError: an argument is not a Tensor.
        TypeError: a tensor has the wrong dtype.
        ValueError: wrong shapes or devices, a non-contiguous tensor written in place or an
            index out of range (the message names the argument).

    """
    names = ("X", "Y", "A", "Z", "W", "n_rem", "eig", "row_sq", "gram", "removed", "M_inv",
             "M_spare", "weights", "U_buf", "rows")
    tensors = (X, Y, A, Z, W, n_rem, eig, row_sq, gram, removed, M_inv, M_spare, weights,
               U_buf, rows)
    _check_tensors("certified_cg_steps", names, tensors)
    records = torch.ops.fastunlearn.certified_cg_steps.default(
        *tensors, int(slot), float(lam), float(gamma), float(row_norm_max), float(cg_tol),
        int(max_iter), float(budget_used), float(budget), int(refresh_after))
    if records.shape[0] == 0:
        return CertifiedSteps([], [], [], [])
    bounds, worst, iterations, seconds = records.T.tolist()
    return CertifiedSteps(bounds, worst, [int(i) for i in iterations], seconds)


@torch.library.register_fake("fastunlearn::certified_cg_steps")
def _certified_cg_steps_fake(X: Tensor, Y: Tensor, A: Tensor, Z: Tensor, W: Tensor,
                             n_rem: Tensor, eig: Tensor, row_sq: Tensor, gram: Tensor,
                             removed: Tensor, M_inv: Tensor, M_spare: Tensor,
                             weights: Tensor, U_buf: Tensor, rows: Tensor, slot: int,
                             lam: float, gamma: float, row_norm_max: float, cg_tol: float,
                             max_iter: int, budget_used: float, budget: float,
                             refresh_after: int = -1) -> Tensor:
    check_fake_devices_of("certified_cg_steps", (X, Y, A, Z, W, n_rem, eig, row_sq, gram, removed,
                                                 M_inv, M_spare, weights, U_buf, rows))
    torch._check_type(X.dtype == torch.float64,
                      lambda: f"certified_cg_steps: argument 'X' must be float64, got {X.dtype}")
    torch._check_value(rows.dim() == 1,
                       lambda: "certified_cg_steps: argument 'rows' must be 1-D")
    done = torch.library.get_ctx().new_dynamic_size(max=rows.shape[0])
    return X.new_empty(done, 4)
