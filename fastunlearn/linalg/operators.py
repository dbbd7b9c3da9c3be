"""Square linear operators acting on [d] vectors and [d, K] blocks of columns.

An operator only needs :meth:`LinearOperator.matmat`; ``@``, :meth:`~LinearOperator.to_dense`
and the checks on the input come from the base class. Solvers (:func:`~fastunlearn.linalg.cg`,
:func:`~fastunlearn.linalg.lissa`) take any of these operators.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import ops
from .._numbers import check_real
from ..ops.glm import square_weighted_sums

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LinearOperator",
    "DenseOperator",
    "GLMHessianOperator",
    "ScaledIdentityPlus",
    "damped",
]


def _check_float_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"'{name}' must have a floating dtype, got {t.dtype}")
    return t


def _all_finite(t: Tensor, *, nonnegative: bool = False) -> bool:
    """Whether every entry of ``t`` is finite (and ``>= 0`` with ``nonnegative``).

    One min/max reduction (NaN propagates through both, an infinity is an extreme) instead of
    ``isfinite(t).all()``, whose boolean and ``abs`` temporaries are 1.75x the size of a
    float32 ``t``.
    """
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    ok = torch.isfinite(torch.stack([low, high])).all()
    if nonnegative:
        ok = ok & (low >= 0)
    return bool(ok)


class LinearOperator:
    """A square linear operator ``A`` of shape ``(d, d)`` (curvlinops-like).

    Subclasses set :attr:`shape`, :attr:`dtype` and :attr:`device` and implement
    :meth:`matmat`. Operators that can cheaply report their diagonal also define
    ``diagonal()`` (used by Jacobi preconditioning in :func:`~fastunlearn.linalg.cg`).

    Attributes:
        shape: ``(d, d)``.
        dtype: Floating dtype of the inputs and outputs.
        device: Device of the inputs and outputs.
        costly_products: Whether one product costs far more than a host synchronisation
            (a pass of a network over data): :func:`~fastunlearn.linalg.cg` then checks for
            convergence after every product by default.

    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    costly_products: bool = False

    def matmat(self, V: Tensor) -> Tensor:
        """Apply the operator to the columns of ``V``.

        Args:
            V: Tensor[d, K].

        Returns:
            Tensor[d, K], ``A @ V``.

        """
        raise NotImplementedError

    def _check_block(self, V: object, name: str = "V") -> Tensor:
        """Validate a [d, K] block of the operator's dtype and device."""
        V = _check_float_tensor(name, V)
        d = self.shape[1]
        if V.ndim != 2 or V.shape[0] != d:
            raise ValueError(f"'{name}' must have shape [{d}, K], got {list(V.shape)}")
        if V.dtype != self.dtype:
            raise TypeError(f"'{name}' must have dtype {self.dtype}, got {V.dtype}")
        if V.device != self.device:
            raise ValueError(f"'{name}' must be on {self.device}, got {V.device}")
        return V

    def __matmul__(self, v: Tensor) -> Tensor:
        """Apply the operator to a vector ``v`` [d] (returns [d]) or a block ``v`` [d, K].

        Raises:
            TypeError: If ``v`` is not a floating tensor (or, from :meth:`matmat`, not of the
                operator's dtype).
            ValueError: If ``v`` is neither ``[d]`` nor ``[d, K]``.

        """
        v = _check_float_tensor("v", v)
        if v.ndim == 1:
            return self.matmat(v.unsqueeze(1)).squeeze(1)
        if v.ndim == 2:
            return self.matmat(v)
        raise ValueError(f"'v' must have shape [d] or [d, K], got {list(v.shape)}")

    def to_dense(self) -> Tensor:
        """Return the operator as a dense matrix, ``A @ I`` (d columns; small d only).

        Returns:
            Tensor[d, d].

        """
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class DenseOperator(LinearOperator):
    """A dense square matrix as an operator.

    Args:
        H: Tensor[d, d], floating.

    Raises:
        TypeError: ``H`` is not a floating tensor.
        ValueError: ``H`` is not square 2-D, or holds NaN or infinity.

    """

    def __init__(self, H: Tensor) -> None:
        H = _check_float_tensor("H", H)
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"'H' must be a square [d, d] matrix, got {list(H.shape)}")
        if not bool(torch.isfinite(H).all()):
            raise ValueError("'H' must be finite (it holds NaN or infinity)")
        self.H = H
        self.shape = (H.shape[0], H.shape[1])
        self.dtype = H.dtype
        self.device = H.device

    def matmat(self, V: Tensor) -> Tensor:
        """``H @ V`` for V [d, K] -> [d, K]."""
        return self.H @ self._check_block(V)

    def diagonal(self) -> Tensor:
        """Return the diagonal of ``H`` -> [d]."""
        return self.H.diagonal()

    def to_dense(self) -> Tensor:
        """``H`` itself -> [d, d]."""
        return self.H


class GLMHessianOperator(LinearOperator):
    """Hessian of an L2-regularised GLM (logistic regression), ``X^T diag(S) X + lam I``.

    Applied matrix-free by the fused op :func:`fastunlearn.ops.glm_hvp` (one pass over X).
    ``S`` carries the per-row curvature weights ``sigma'(margin_i) * w_i``: sample weights
    are folded in, and removed rows simply get weight 0, so removing data never copies X.

    With ``S`` of shape [n] (or [n, 1]) this is one Hessian and ``matmat`` accepts any number
    of columns. With ``S`` of shape [n, K] (one-vs-rest heads) column ``k`` of the input is
    multiplied by the k-th Hessian ``X^T diag(S[:, k]) X + lam I``, so ``matmat`` needs exactly
    K columns: K independent systems that CG solves at once. :meth:`to_dense` is then [K, d, d].

    Args:
        X: Tensor[n, d], features.
        S: Tensor[n] or Tensor[n, K], non-negative curvature weights (same dtype/device as X).
        lam: L2 regularisation (>= 0) added on the diagonal.

    Raises:
        TypeError: non-floating tensors (or not float32/float64), dtype mismatch, non-number
            ``lam``.
        ValueError: wrong shapes, mixed devices, non-finite ``X``, negative or non-finite
            ``S`` or ``lam``.

    """

    def __init__(self, X: Tensor, S: Tensor, lam: float | np.floating = 0.0) -> None:
        X = _check_float_tensor("X", X)
        S = _check_float_tensor("S", S)
        if X.dtype not in (torch.float32, torch.float64):  # the dtypes of ops.glm_hvp
            raise TypeError(f"'X' must be float32 or float64, got {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"'X' must have shape [n, d], got {list(X.shape)}")
        if S.ndim not in (1, 2) or S.shape[0] != X.shape[0]:
            raise ValueError(
                f"'S' must have shape [n] or [n, K] with n = {X.shape[0]}, got {list(S.shape)}"
            )
        if S.dtype != X.dtype:
            raise TypeError(f"'S' must have the dtype of 'X' ({X.dtype}), got {S.dtype}")
        if S.device != X.device:
            raise ValueError(f"'S' must be on the device of 'X' ({X.device}), got {S.device}")
        if not _all_finite(S, nonnegative=True):
            raise ValueError("'S' must be finite and non-negative (curvature weights)")
        if not _all_finite(X):
            raise ValueError("'X' must be finite (it holds NaN or infinity)")
        self.lam = check_real("lam", lam)
        self.X = X
        self.S = S.unsqueeze(1) if S.ndim == 1 else S  # [n, K]
        self.num_heads = self.S.shape[1]
        d = X.shape[1]
        self.shape = (d, d)
        self.dtype = X.dtype
        self.device = X.device

    def matmat(self, V: Tensor) -> Tensor:
        """``X^T (S * (X V)) + lam V`` for V [d, K] -> [d, K].

        Raises:
            TypeError: If ``V`` is not a floating tensor of the operator's dtype.
            ValueError: If ``V`` is not ``[d, K]`` or not on the operator's device, or ``S``
                has several columns and ``K`` differs from their number.

        """
        V = self._check_block(V)
        K = V.shape[1]
        S = self.S
        if self.num_heads == 1:
            S = S.expand(S.shape[0], K)  # one Hessian for every column
        elif K != self.num_heads:
            raise ValueError(
                f"'V' must have {self.num_heads} columns (one per column of 'S'), got {K}"
            )
        return ops.glm_hvp(self.X, S, V, self.lam)

    def diagonal(self) -> Tensor:
        """``sum_i S[i, k] X[i, j]^2 + lam`` -> [d] for one Hessian, [d, K] for K heads."""
        # (X * X)^T S in blocks of columns: no n x d temporary
        diag = square_weighted_sums(self.X, self.S) + self.lam  # [d, K]
        return diag.squeeze(1) if self.num_heads == 1 else diag

    def to_dense(self) -> Tensor:
        """Return the explicit Hessian (``ops.glm_hessian``): [d, d] or [K, d, d]."""
        H = ops.glm_hessian(self.X, self.S, self.lam)
        return H[0] if self.num_heads == 1 else H


class ScaledIdentityPlus(LinearOperator):
    """``A + c I`` for an operator ``A`` and a constant ``c >= 0`` (Tikhonov damping).

    Args:
        base: The operator ``A``.
        c: The constant added on the diagonal.

    Raises:
        TypeError: ``base`` is not a LinearOperator.
        ValueError: ``c`` negative or non-finite.

    """

    def __init__(self, base: LinearOperator, c: float | np.floating) -> None:
        if not isinstance(base, LinearOperator):
            raise TypeError(f"'base' must be a LinearOperator, got {type(base).__name__}")
        self.base = base
        self.c = check_real("c", c)
        self.costly_products = base.costly_products
        self.shape = base.shape
        self.dtype = base.dtype
        self.device = base.device

    def matmat(self, V: Tensor) -> Tensor:
        """Return ``A V + c V`` for V [d, K] -> [d, K]."""
        out = self.base.matmat(V)
        return out.add(V, alpha=self.c) if self.c else out

    def diagonal(self) -> Tensor:
        """``diag(A) + c`` (only when ``A`` has a ``diagonal()``)."""
        diagonal: Callable[[], Tensor] | None = getattr(self.base, "diagonal", None)
        if not callable(diagonal):
            raise NotImplementedError(f"{type(self.base).__name__} has no diagonal()")
        return diagonal() + self.c


def damped(op: LinearOperator, damping: float | np.floating) -> LinearOperator:
    """Return ``op + damping * I``.

    A :class:`GLMHessianOperator` folds the damping into its ``lam`` (still one fused op per
    product); any other operator is wrapped in :class:`ScaledIdentityPlus`.

    Args:
        op: The operator.
        damping: Non-negative constant added on the diagonal.

    Returns:
        The damped operator (``op`` itself when damping is 0).

    Raises:
        TypeError: ``op`` is not a LinearOperator or ``damping`` is not a number.
        ValueError: ``damping`` negative or non-finite.

    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"'op' must be a LinearOperator, got {type(op).__name__}")
    damping = check_real("damping", damping)
    if damping == 0.0:
        return op
    if isinstance(op, GLMHessianOperator):
        # X and S were checked when op was built: the same operator with the new lam,
        # without reading all of X again to check it
        out = copy.copy(op)  # shares X and S, as the old rebuilt operator did
        out.lam = check_real("lam", op.lam + damping)
        return out
    return ScaledIdentityPlus(op, damping)
