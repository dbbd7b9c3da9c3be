"""Neighbour search for anti-sample generation: the k farthest or nearest rows of a pool.

:func:`knn_extreme` finds, for every row of a query matrix ``Q[m, d]``, the ``k`` rows of a
pool ``P[n, d]`` with the largest (or smallest) squared Euclidean distance, without ever
holding the ``m x n`` distance matrix: distances are computed tile by tile with one GEMM per
tile (``||q||^2 + ||p||^2 - 2 q.p``) and merged into a running top-k per query, so memory is
``O(m k)`` plus one tile of a few MB.

Numerics. The GEMM expansion loses relative accuracy for nearly identical points (its absolute
error is about ``eps * (||q||^2 + ||p||^2)``; negative results are clamped to 0), so it only
selects candidates. The returned distances are recomputed directly as ``sum((q - p)^2)`` with a
float64 accumulator and rounded to the input dtype, so a point of ``P`` equal to the query gets
exactly 0. Everything else runs in the input dtype (float32 inputs use a float32 GEMM; on CUDA
the GEMM follows ``torch.backends.cuda.matmul.allow_tf32``).

Ties. Each output row is sorted best first by (distance, index of ``P``): equal distances come
out smaller index first. Selection compares (computed distance, index) too, so among exact
duplicate rows of ``P`` the smaller indices are chosen, except on CUDA with ``k > 64``, where
``torch.topk`` selects within a tile and may pick any of the duplicates tied at the k-th place.
A point whose true distance is within the expansion's rounding error of the k-th one may be
exchanged with it.

The outputs are not differentiable: the op's autograd registration marks both outputs
non-differentiable, so they never require grad (gather rows with the indices and
differentiate through that instead). The indices are int64.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

__all__ = ["knn_extreme", "farthest_k", "nearest_k"]

_OP = "knn_extreme"


def _check_args(Q: object, P: object, k: object) -> int:
    if not isinstance(Q, Tensor):
        raise TypeError(f"{_OP}: argument 'Q' must be a Tensor, got {type(Q).__name__}")
    if not isinstance(P, Tensor):
        raise TypeError(f"{_OP}: argument 'P' must be a Tensor, got {type(P).__name__}")
    if isinstance(k, bool):
        raise TypeError(f"{_OP}: argument 'k' must be an int, got bool")
    try:
        k = operator.index(k)  # int, or an integer scalar such as numpy.int64
    except TypeError:
        raise TypeError(f"{_OP}: argument 'k' must be an int, got {type(k).__name__}") from None
    if k < 0:
        raise ValueError(f"{_OP}: argument 'k' must be >= 0, got {k}")
    if P.dim() == 2 and k > P.shape[0]:
        raise ValueError(f"{_OP}: argument 'k' must be <= n = {P.shape[0]} (rows of 'P'), got {k}")
    return k


def knn_extreme(Q: Tensor, P: Tensor, k: int, *, largest: bool = True) -> tuple[Tensor, Tensor]:
    """Find the ``k`` farthest (or nearest) rows of ``P`` for every row of ``Q``.

    Squared Euclidean distances, computed tile by tile without the full ``m x n`` matrix.
    Each output row is sorted best first (largest distance first when ``largest``, else
    smallest first); ties go to the smaller index of ``P``. See the module docstring for the
    numerics. Not differentiable.

    Args:
        Q: Queries, ``[m, d]``, float32 or float64, finite.
        P: Pool, ``[n, d]``, same dtype and device as ``Q``, finite.
        k: How many rows of ``P`` to return per query, ``0 <= k <= n``.
        largest: ``True`` for the farthest rows, ``False`` for the nearest.

    Returns:
        ``(distances, indices)``: squared distances ``[m, k]`` in the dtype of ``Q`` and
        indices into ``P`` ``[m, k]`` (int64), both sorted best first.

    Raises:
        TypeError: ``Q`` or ``P`` is not a Tensor, or ``k`` is not an int.
        ValueError: ``k`` is negative or larger than the number of rows of ``P``.
        RuntimeError: Wrong dimensions, mismatched ``d``, dtypes or devices, a non-float
            dtype, or NaN/Inf in ``Q`` or ``P`` (the message names the argument).

    """
    k = _check_args(Q, P, k)
    return torch.ops.fastunlearn.knn_extreme.default(Q, P, k, bool(largest))


def farthest_k(Q: Tensor, P: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Find the ``k`` rows of ``P`` farthest from each row of ``Q``.

    Same as ``knn_extreme(Q, P, k, largest=True)``.

    Args:
        Q: Queries, ``[m, d]``.
        P: Pool, ``[n, d]``.
        k: Rows per query, ``0 <= k <= n``.

    Returns:
        ``(squared distances [m, k], indices int64 [m, k])``, farthest first.

    """
    return knn_extreme(Q, P, k, largest=True)


def nearest_k(Q: Tensor, P: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Find the ``k`` rows of ``P`` nearest to each row of ``Q``.

    Same as ``knn_extreme(Q, P, k, largest=False)``.

    Args:
        Q: Queries, ``[m, d]``.
        P: Pool, ``[n, d]``.
        k: Rows per query, ``0 <= k <= n``.

    Returns:
        ``(squared distances [m, k], indices int64 [m, k])``, nearest first.

    """
    return knn_extreme(Q, P, k, largest=False)


@torch.library.register_fake("fastunlearn::knn_extreme")
def _knn_extreme_fake(Q: Tensor, P: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    torch._check(Q.dim() == 2, lambda: f"{_OP}: argument 'Q' must be 2-D, got {Q.dim()}-D")
    torch._check(P.dim() == 2, lambda: f"{_OP}: argument 'P' must be 2-D, got {P.dim()}-D")
    torch._check(
        Q.dtype in (torch.float32, torch.float64),
        lambda: f"{_OP}: argument 'Q' must be float32 or float64, got {Q.dtype}",
    )
    torch._check(
        P.dtype == Q.dtype,
        lambda: f"{_OP}: arguments 'Q' ({Q.dtype}) and 'P' ({P.dtype}) must have the same dtype",
    )
    torch._check(
        P.device == Q.device,
        lambda: f"{_OP}: arguments 'Q' and 'P' must be on the same device",
    )
    torch._check(
        P.shape[1] == Q.shape[1],
        lambda: f"{_OP}: argument 'P' has {P.shape[1]} columns but {Q.shape[1]} were expected",
    )
    torch._check(
        0 <= k <= P.shape[0],
        lambda: f"{_OP}: argument 'k' must satisfy 0 <= k <= n = {P.shape[0]}, got {k}",
    )
    m = Q.shape[0]
    return Q.new_empty((m, k)), Q.new_empty((m, k), dtype=torch.int64)


def _knn_extreme_setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    # Distances and indices are selections, not smooth functions of the inputs: mark both
    # non-differentiable so they never require grad.
    ctx.mark_non_differentiable(*output)


def _knn_extreme_backward(ctx: Any, grad_dist: Tensor, grad_index: Tensor) -> tuple:
    raise RuntimeError(f"{_OP}: the outputs are not differentiable")


torch.library.register_autograd(
    "fastunlearn::knn_extreme", _knn_extreme_backward, setup_context=_knn_extreme_setup_context
)
