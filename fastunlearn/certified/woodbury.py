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

Only the speed of the solver depends on this: the certified bound always uses the true
residual ``||H V - Delta||`` of the step actually taken.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["RemovedRowsFactor", "extend", "solve", "start"]


class RemovedRowsFactor(NamedTuple):
    """Factors ``L`` of ``M`` and the Woodbury terms of the rows removed since.

    Attributes:
        L (Tensor[K, d, d]): lower Cholesky factors of ``M_k``.
        weights (Tensor[n, K]): curvature weights ``s`` the factors were built with.
        U (Tensor[K, d, t]): removed rows scaled by ``sqrt(s)``.
        G (Tensor[K, d, t]): ``M^{-1} U``.
        C_chol (Tensor[K, t, t]): lower Cholesky factors of ``I - U^T G``.

    """

    L: Tensor
    weights: Tensor
    U: Tensor
    G: Tensor
    C_chol: Tensor

    @property
    def rows(self) -> int:
        """Number of removed rows folded in."""
        return int(self.U.shape[-1])


def _factor_solve(L: Tensor, B: Tensor) -> Tensor:
    """``(L L^T)^{-1} B`` for ``L [K, d, d]``, ``B [K, d, r]`` by two triangular solves."""
    y = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L.mH, y, upper=True)


def start(L: Tensor, weights: Tensor) -> RemovedRowsFactor:
    """Terms for factors ``L`` of ``X^T diag(weights_k) X + c I`` with no row removed yet."""
    K, d = L.shape[0], L.shape[-1]
    empty = L.new_zeros(K, d, 0)
    return RemovedRowsFactor(L, weights, empty, empty, L.new_zeros(K, 0, 0))


def extend(
    state: RemovedRowsFactor, X_rows: Tensor, rows: Tensor, B: Tensor | None = None
) -> tuple[RemovedRowsFactor | None, Tensor | None]:
    """Fold the removal of ``rows`` (features ``X_rows [m, d]``) into the terms.

    With ``B [d, K]``, also returns ``M'^{-1} B`` for the extended terms, its triangular solves
    sharing the factors' pass with the new rows'. Returns ``(None, None)`` when ``C`` is not
    numerically positive definite (the caller falls back to the plain factors).
    """
    m = int(X_rows.shape[0])
    scale = state.weights[rows].clamp_min(0.0).sqrt()  # [m, K]
    U_new = (X_rows.T.unsqueeze(0) * scale.T.unsqueeze(1)).contiguous()  # [K, d, m]
    rhs = U_new if B is None else torch.cat([U_new, B.T.unsqueeze(-1)], dim=-1)
    solved = _factor_solve(state.L, rhs)
    G_new = solved[..., :m]
    U = torch.cat([state.U, U_new], dim=-1)
    G = torch.cat([state.G, G_new], dim=-1)
    C = -torch.bmm(U.mT, G)
    C.diagonal(dim1=-2, dim2=-1).add_(1.0)
    C = 0.5 * (C + C.mT)
    C_chol, info = torch.linalg.cholesky_ex(C)
    if bool((info != 0).any()):
        return None, None
    factor = RemovedRowsFactor(state.L, state.weights, U, G, C_chol)
    if B is None:
        return factor, None
    y = solved[..., m:]
    y = y + torch.bmm(G, torch.cholesky_solve(torch.bmm(U.mT, y), C_chol))
    return factor, y.squeeze(-1).T


def solve(state: RemovedRowsFactor, B: Tensor, classes: Tensor | None = None) -> Tensor:
    """``M_k'^{-1} B[:, k]`` for every class (or the given ``classes``): ``B [d, k']``."""
    L, U, G, C_chol = state.L, state.U, state.G, state.C_chol
    if classes is not None:
        L, U, G, C_chol = (t.index_select(0, classes) for t in (L, U, G, C_chol))
    y = _factor_solve(L, B.T.unsqueeze(-1))  # [k', d, 1]
    if U.shape[-1]:
        w = torch.cholesky_solve(torch.bmm(U.mT, y), C_chol)
        y = y + torch.bmm(G, w)
    return y.squeeze(-1).T
