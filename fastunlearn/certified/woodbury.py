"""Cholesky factors kept exact for removed rows by the Woodbury identity.

The CG solver of :class:`~fastunlearn.certified.CertifiedLogisticRegression` starts every
removal from a solve with the Cholesky factors ``L_k L_k^T = M_k`` of the last dense Hessian.
Each removal takes a row out of the Hessian, and after a few removals that mismatch, not the
small change of ``w``, is what makes the solve inexact. The removed rows are a low-rank
downdate ``M_k' = M_k - U_k U_k^T`` (column ``j`` of ``U_k`` is ``sqrt(s_jk) x_j``, with
``s_jk`` the curvature weight the factors were built with), so

    ``M_k'^{-1} b = M_k^{-1} b + G_k C_k^{-1} U_k^T M_k^{-1} b``,
    ``G_k = M_k^{-1} U_k``, ``C_k = I - U_k^T G_k``,

costs two triangular solves plus ``O(d t)`` for ``t`` removed rows, instead of a new
``O(n d^2)`` Hessian. ``C_k`` is positive definite whenever ``M_k'`` is (it is the Hessian
of the remaining rows), so it is solved through its own Cholesky factor.

On the CPU the compiled single-row step (``certified_cg_step``) keeps ``M_k'^{-1}``
explicitly instead and folds each removed row into it by the Sherman-Morrison formula,
``O(d^2)`` per row whatever the number of rows removed; it only writes the row's column of
``U`` and leaves it *pending*: :func:`settle` folds pending columns into ``G`` and ``C``
when a Python step needs the terms.

Only the speed of the solver depends on this: the certified bound always uses the true
residual ``||H V - Delta||`` of the step actually taken.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["RemovedRowsFactor", "discard", "extend", "inverse", "settle", "solve", "start"]


class RemovedRowsFactor(NamedTuple):
    """Factors ``L`` of ``M`` and the Woodbury terms of the ``rows`` removed since.

    The terms live in buffers sized for ``capacity`` rows; only the first ``rows`` columns
    are part of the state. :func:`extend` writes the next columns in place and returns a new
    tuple with a larger ``rows``: the old tuple stays valid (it never reads past its
    ``rows``), so a planned removal that is not committed changes nothing once
    :func:`discard` has cleaned the columns it wrote.

    The columns past ``rows`` are kept at zero in ``G_buf`` and at the identity in ``C_buf``,
    and past ``folded`` (``rows`` plus the pending rows) at zero in ``U_buf``, so with no
    pending row products over the whole capacity equal those over the first ``rows``
    (``C_buf`` is then ``blockdiag(C_chol, I)``): the fixed-shape removal step
    (:mod:`~fastunlearn.certified.fixed_step`, which leaves no row pending) relies on it.

    Attributes:
        L (Tensor[K, d, d]): lower Cholesky factors of ``M_k``.
        weights (Tensor[n, K]): curvature weights ``s`` the factors were built with.
        U_buf (Tensor[K, d, capacity]): removed rows scaled by ``sqrt(s)``.
        G_buf (Tensor[K, d, capacity]): ``M^{-1} U``.
        C_buf (Tensor[K, capacity, capacity]): lower Cholesky factor of ``I - U^T G``.
        rows (int): removed rows folded into ``G`` and ``C``.
        M_inv (Tensor[K, d, d] | None): ``M'^{-1}`` explicitly, every folded row (``rows +
            pending``) included (``start(..., inverse=True)``; None once stale): the compiled
            CPU step applies it as one dense product and updates it per row.
        M_spare (Tensor[K, d, d] | None): a buffer of the same shape that the compiled step
            writes the next ``M_inv`` into (the two swap, so an uncommitted step changes
            nothing).
        pending (int): rows past ``rows`` whose ``U`` columns are written and folded into
            ``M_inv`` but not yet into ``G`` and ``C`` (see :func:`settle`).

    """

    L: Tensor
    weights: Tensor
    U_buf: Tensor
    G_buf: Tensor
    C_buf: Tensor
    rows: int
    M_inv: Tensor | None = None
    M_spare: Tensor | None = None
    pending: int = 0

    @property
    def capacity(self) -> int:
        """Most rows the buffers hold."""
        return int(self.U_buf.shape[-1])

    @property
    def folded(self) -> int:
        """Removed rows folded in so far: ``rows + pending``."""
        return self.rows + self.pending

    @property
    def U(self) -> Tensor:
        """``[K, d, rows]`` removed rows scaled by ``sqrt(s)``."""
        return self.U_buf[..., : self.rows]

    @property
    def G(self) -> Tensor:
        """``[K, d, rows]`` ``M^{-1} U``."""
        return self.G_buf[..., : self.rows]

    @property
    def C_chol(self) -> Tensor:
        """``[K, rows, rows]`` lower Cholesky factor of ``I - U^T G``."""
        return self.C_buf[:, : self.rows, : self.rows]


def _factor_solve(L: Tensor, B: Tensor) -> Tensor:
    """``(L L^T)^{-1} B`` for ``L [K, d, d]``, ``B [K, d, r]`` by two triangular solves."""
    y = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L.mH, y, upper=True)


def start(
    L: Tensor,
    weights: Tensor,
    capacity: int,
    reuse: RemovedRowsFactor | None = None,
    *,
    inverse: bool = False,
) -> RemovedRowsFactor:
    """Terms for factors ``L`` of ``X^T diag(weights_k) X + c I`` with no row removed yet.

    With ``reuse`` (an earlier state of the same shapes), its buffers are overwritten and
    returned instead of new ones, ``L`` and ``weights`` copied into them: the tensors keep
    their addresses, which a captured CUDA graph reading them needs. With ``inverse``, also
    ``M^{-1}`` (``M_inv``, ``K d^3`` flops once per factorisation) and its spare buffer.
    """
    K, d = L.shape[0], L.shape[-1]
    M_inv = torch.cholesky_inverse(L).contiguous() if inverse else None
    # zeros, not empty: a model's state holds no uninitialised memory (copies compare equal)
    M_spare = torch.zeros_like(M_inv) if M_inv is not None else None
    if (
        reuse is not None
        and reuse.L.shape == L.shape
        and reuse.weights.shape == weights.shape
        and reuse.capacity == capacity
        and reuse.L.device == L.device
    ):
        if reuse.L is not L:
            reuse.L.copy_(L)
        if reuse.weights is not weights:
            reuse.weights.copy_(weights)
        if M_inv is not None and reuse.M_inv is not None:
            M_inv = reuse.M_inv.copy_(M_inv)
        if M_spare is not None and reuse.M_spare is not None:
            M_spare = reuse.M_spare
        reuse.U_buf.zero_()
        reuse.G_buf.zero_()
        reuse.C_buf.zero_().diagonal(dim1=-2, dim2=-1).fill_(1.0)
        return reuse._replace(rows=0, M_inv=M_inv, M_spare=M_spare, pending=0)
    C = L.new_zeros(K, capacity, capacity)
    C.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return RemovedRowsFactor(  # contiguous copies: the compiled CPU step reads them as is
        L.clone(memory_format=torch.contiguous_format),
        weights.clone(memory_format=torch.contiguous_format),
        L.new_zeros(K, d, capacity),
        L.new_zeros(K, d, capacity),
        C,
        0,
        M_inv,
        M_spare,
    )


def discard(state: RemovedRowsFactor, rows: int) -> None:
    """Restore the columns ``state.folded .. rows`` that an uncommitted step wrote."""
    t, end = state.folded, min(rows, state.capacity)
    if end <= t:
        return
    state.U_buf[..., t:end] = 0.0
    state.G_buf[..., t:end] = 0.0
    state.C_buf[:, t:end, :] = 0.0
    state.C_buf[:, t:end, t:end].diagonal(dim1=-2, dim2=-1).fill_(1.0)


def _grow(
    state: RemovedRowsFactor, U_new: Tensor, B: Tensor | None
) -> tuple[RemovedRowsFactor | None, Tensor | None]:
    """Write the columns ``U_new [K, d, m]`` after ``state.rows`` (see :func:`extend`)."""
    m, t = int(U_new.shape[-1]), state.rows
    rhs = U_new if B is None else torch.cat([U_new, B.T.unsqueeze(-1)], dim=-1)
    solved = _factor_solve(state.L, rhs)
    G_new = solved[..., :m]
    # C = I - U^T G grows by [C12; C22]; its factor by [L21 L22]
    C12 = -torch.bmm(state.U.mT, G_new)  # [K, t, m]
    C22 = -torch.bmm(U_new.mT, G_new)
    C22.diagonal(dim1=-2, dim2=-1).add_(1.0)
    L21t = torch.linalg.solve_triangular(state.C_chol, C12, upper=False)  # [K, t, m]
    S22 = C22 - torch.bmm(L21t.mT, L21t)
    L22, info = torch.linalg.cholesky_ex(0.5 * (S22 + S22.mT))
    if bool((info != 0).any()):
        return None, None
    state.U_buf[..., t : t + m] = U_new
    state.G_buf[..., t : t + m] = G_new
    state.C_buf[:, t : t + m, :t] = L21t.mT
    state.C_buf[:, t : t + m, t : t + m] = L22
    state.C_buf[:, :t, t : t + m] = 0.0
    factor = state._replace(rows=t + m)
    if B is None:
        return factor, None
    y = solved[..., m:]
    y = y + torch.bmm(factor.G, torch.cholesky_solve(torch.bmm(factor.U.mT, y), factor.C_chol))
    return factor, y.squeeze(-1).T


def extend(
    state: RemovedRowsFactor, X_rows: Tensor, rows: Tensor, B: Tensor | None = None
) -> tuple[RemovedRowsFactor | None, Tensor | None]:
    """Fold the removal of ``rows`` (features ``X_rows [m, d]``) into the terms.

    The Cholesky factor of ``C`` grows by a block row (``O(t^2 m)``), the new columns of
    ``U`` and ``G`` are written into the buffers. With ``B [d, K]``, also returns
    ``M'^{-1} B`` for the extended terms, its triangular solves sharing the factors' pass
    with the new rows'. Returns ``(None, None)`` when the buffers are full or ``C`` is not
    numerically positive definite (the caller falls back to the plain factors). ``state``
    must have no pending rows (:func:`settle`); the result's ``M_inv`` is None (stale).
    """
    if state.pending:
        raise ValueError("extend: the state has pending rows; settle() it first")
    m = int(X_rows.shape[0])
    if state.rows + m > state.capacity:
        return None, None
    scale = state.weights[rows].clamp_min(0.0).sqrt()  # [m, K]
    U_new = X_rows.T.unsqueeze(0) * scale.T.unsqueeze(1)  # [K, d, m]
    factor, y = _grow(state, U_new, B)
    return (None, None) if factor is None else (factor._replace(M_inv=None), y)


def settle(state: RemovedRowsFactor) -> RemovedRowsFactor | None:
    """Fold the pending rows (written by the compiled step into ``U_buf``) into ``G``, ``C``.

    Returns the state with ``rows = folded`` and no pending row (``M_inv`` stays valid: it
    already holds them), or None when the extended ``C`` is not numerically positive
    definite.
    """
    if not state.pending:
        return state
    U_new = state.U_buf[..., state.rows : state.folded].clone()
    factor, _ = _grow(state._replace(pending=0), U_new, None)
    return factor


def inverse(state: RemovedRowsFactor) -> Tensor:
    """``M'^{-1} = M^{-1} + G C^{-1} G^T`` explicitly, ``[K, d, d]`` (no pending rows)."""
    if state.pending:
        raise ValueError("inverse: the state has pending rows; settle() it first")
    M_inv = torch.cholesky_inverse(state.L)
    if state.rows:
        M_inv = M_inv + torch.bmm(state.G, torch.cholesky_solve(state.G.mT, state.C_chol))
    return (0.5 * (M_inv + M_inv.mT)).contiguous()


def solve(state: RemovedRowsFactor, B: Tensor, classes: Tensor | None = None) -> Tensor:
    """``M_k'^{-1} B[:, k]`` for every class (or the given ``classes``): ``B [d, k']``.

    Only the rows folded into ``G`` and ``C`` count: :func:`settle` pending rows first.
    """
    L, U, G, C_chol = state.L, state.U, state.G, state.C_chol
    if classes is not None:
        L, U, G, C_chol = (t.index_select(0, classes) for t in (L, U, G, C_chol))
    y = _factor_solve(L, B.T.unsqueeze(-1))  # [k', d, 1]
    if U.shape[-1]:
        w = torch.cholesky_solve(torch.bmm(U.mT, y), C_chol)
        y = y + torch.bmm(G, w)
    return y.squeeze(-1).T
