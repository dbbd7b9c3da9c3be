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

Range. The expansion squares the data in the input dtype: rows with squared norms past the
dtype's largest value (float32 rows of norm above ~1e19) overflow, and tiny rows (float32 norms
~1e-20 and below) square into subnormals or 0, so that every distance looks alike and the
selection is wrong. :func:`knn_extreme` therefore checks the largest ``|entry|`` of ``Q`` and
``P`` (one cheap min/max reduction) and, only when it lies outside ``[sqrt(tiny / eps),
sqrt(max / (16 d))]`` of the dtype, multiplies both by the same power of two ``2^e``, chosen to
put the largest entry near the top of that range. A power of two is exact (barring entries that
fall below the subnormal range, which are negligible next to the largest), so the scaled
problem has exactly the scaled distances and the same selection; the returned distances
(recomputed directly, see above) are multiplied back by ``2^-2e`` in float64 and rounded once
to the input dtype. A true squared distance beyond the dtype's range comes out ``inf`` (the
correctly rounded value), one below it ``0`` or subnormal, while the indices are those of the
true distances. In range, the inputs go to the op untouched (no copy). A single scale cannot
help data whose own entries span more than the dtype's range (rows near the overflow limit
together with rows whose squares underflow): the small rows then lose precision, as they do
relative to the large ones anyway. Under ``torch.compile`` the same scaling is applied without
a data-dependent branch (the scale is 1 in range, at the cost of two copies).

Ties. Each output row is sorted best first by (distance, index of ``P``): equal distances come
out smaller index first. Selection compares (computed distance, index) too, so among exact
duplicate rows of ``P`` the smaller indices are chosen, except on CUDA with ``k > 64``, where
``torch.topk`` selects within a tile and may pick any of the duplicates tied at the k-th place.
A point whose true distance is within the expansion's rounding error of the k-th one may be
exchanged with it. After the range rescaling, distances that round to the same value only in
the input dtype (several ``inf``, or subnormals) stay in the order of their true distances.

The outputs are not differentiable: the op's autograd registration marks both outputs
non-differentiable, so they never require grad (gather rows with the indices and
differentiate through that instead). The indices are int64.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, SupportsIndex, cast

import torch
from torch import Tensor

from .._numbers import is_flag

if TYPE_CHECKING:
    import numpy as np

__all__ = ["knn_extreme", "farthest_k", "nearest_k"]

_OP = "knn_extreme"


def _check_args(Q: object, P: object, k: object) -> int:
    if not isinstance(Q, Tensor):
        raise TypeError(f"{_OP}: argument 'Q' must be a Tensor, got {type(Q).__name__}")
    if not isinstance(P, Tensor):
        raise TypeError(f"{_OP}: argument 'P' must be a Tensor, got {type(P).__name__}")
    if is_flag(k):  # a bool or np.bool_ is no count
        raise TypeError(f"{_OP}: argument 'k' must be an int, got {type(k).__name__}")
    try:
        # int, or an integer scalar such as numpy.int64 (anything else raises TypeError)
        k = operator.index(cast(SupportsIndex, k))
    except TypeError:
        raise TypeError(f"{_OP}: argument 'k' must be an int, got {type(k).__name__}") from None
    if k < 0:
        raise ValueError(f"{_OP}: argument 'k' must be >= 0, got {k}")
    if P.dim() == 2 and k > P.shape[0]:
        raise ValueError(f"{_OP}: argument 'k' must be <= n = {P.shape[0]} (rows of 'P'), got {k}")
    return k


def _checkable(Q: Tensor, P: Tensor) -> bool:
    """Whether the inputs are well-formed real data that the range check can read."""
    return (
        Q.dim() == 2
        and P.dim() == 2
        and Q.dtype in (torch.float32, torch.float64)
        and P.dtype == Q.dtype
        and P.device == Q.device
        and P.shape[1] == Q.shape[1]
        and Q.device.type != "meta"
        and not isinstance(Q, torch._subclasses.FakeTensor)
        and not isinstance(P, torch._subclasses.FakeTensor)
    )


def _safe_range(dtype: torch.dtype, d: int) -> tuple[float, float]:
    """``[lo, hi]`` of the largest ``|entry|`` for which the expansion is safe in ``dtype``.

    ``hi``: ``||q||^2 + ||p||^2 + 2 |q.p| <= 4 d a^2`` stays 4x below the dtype's largest
    value. ``lo``: ``eps a^2 >= tiny``, so the subnormal spacing of the squares is below the
    expansion's own rounding error.
    """
    fi = torch.finfo(dtype)
    return math.sqrt(fi.tiny / fi.eps), math.sqrt(fi.max / (16 * max(d, 1)))


def _range_exponent(Q: Tensor, P: Tensor) -> int:
    """``e`` such that ``2^e Q, 2^e P`` are in the safe range; 0 when they already are.

    Raises ValueError naming ``Q`` or ``P`` if it holds NaN or Inf.
    """
    # aminmax: one pass, no |x| temporary, NaN propagates; one device sync for both
    ends = [torch.stack(torch.aminmax(x.detach())) if x.numel() else x.new_zeros(2)
            for x in (Q, P)]
    (min_q, max_q), (min_p, max_p) = torch.stack(ends).tolist()
    for low, high, arg in ((min_q, max_q, "Q"), (min_p, max_p, "P")):
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{_OP}: argument '{arg}' must be finite (it contains NaN or Inf)")
    amax = max(-min_q, max_q, -min_p, max_p)
    lo, hi = _safe_range(Q.dtype, Q.shape[1])
    if amax == 0.0 or lo <= amax <= hi:
        return 0
    # amax = f 2^ea with f in [0.5, 1): 2^e amax lies in [2^(eh-2), 2^(eh-1)) within (hi/4, hi)
    return math.frexp(hi)[1] - math.frexp(amax)[1] - 1


def _pow2_steps(e: int, dtype: torch.dtype) -> list[float]:
    """Split ``2^e`` into powers of two that are normal numbers of ``dtype``.

    All have exponents of one sign, so multiplying by them in turn is monotone (no
    intermediate under- or overflow that the final product would not have).
    """
    bound = 512 if dtype == torch.float64 else 64  # half the largest binary exponent
    steps, sign = [], 1 if e > 0 else -1
    left = abs(e)
    while left:
        step = min(left, bound)
        steps.append(math.ldexp(1.0, sign * step))
        left -= step
    return steps


def _times_pow2(x: Tensor, e: int) -> Tensor:
    """``x * 2^e``, exact unless an entry leaves the dtype's range (a new tensor)."""
    steps = _pow2_steps(e, x.dtype)
    out = x * steps[0]
    for step in steps[1:]:
        out.mul_(step)
    return out


def _unscale_distances(dist: Tensor, e: int) -> Tensor:
    """Squared distances of ``2^e``-scaled data back to the data's scale (``* 2^-2e``).

    Multiplied in float64 (exact for float32 results), then rounded once to the input dtype:
    ``inf`` for a value beyond it, 0 or a subnormal below it.
    """
    if dist.numel() == 0:
        return dist
    out = _times_pow2(dist.double(), -2 * e)
    return out.to(dist.dtype) if dist.dtype != torch.float64 else out


def _knn_extreme_traced(Q: Tensor, P: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Run the range rescaling without data-dependent Python branches (``torch.compile``).

    The exponent is a tensor (0 in range, or for non-finite data, which the op refuses), split
    in two halves each representable in the dtype; scaling by 1 is exact.
    """
    op = torch.ops.fastunlearn.knn_extreme.default
    if (
        Q.dim() != 2 or P.dim() != 2 or Q.dtype not in (torch.float32, torch.float64)
        or P.dtype != Q.dtype or P.device != Q.device or P.shape[1] != Q.shape[1]
    ):
        return op(Q, P, k, largest)
    Qd, Pd = Q.detach(), P.detach()
    amax = torch.cat([Qd.abs().reshape(-1), Pd.abs().reshape(-1), Qd.new_zeros(1)]).amax()
    amax = amax.double()
    lo, hi = _safe_range(Q.dtype, Q.shape[1])
    out_of_range = torch.isfinite(amax) & (amax > 0) & ((amax < lo) | (amax > hi))
    # floor(log2) may be off by one near a power of two: aim for [hi/16, hi/2]
    e = math.floor(math.log2(hi)) - 2 - torch.floor(torch.log2(amax))
    e = torch.where(out_of_range, e, torch.zeros_like(e))
    e1 = torch.trunc(e / 2)
    e2 = e - e1
    s1, s2 = torch.exp2(e1), torch.exp2(e2)  # float64, exact powers of two
    dist, index = op(Qd * s1.to(Q.dtype) * s2.to(Q.dtype), Pd * s1.to(Q.dtype) * s2.to(Q.dtype),
                     k, largest)
    r1, r2 = torch.exp2(-e1), torch.exp2(-e2)
    out = dist.double() * r1 * r1 * r2 * r2
    return out.to(dist.dtype), index


def knn_extreme(
    Q: Tensor, P: Tensor, k: int | np.integer, *, largest: bool = True
) -> tuple[Tensor, Tensor]:
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

    Any finite magnitude is accepted: data whose squares would overflow or underflow the
    dtype is rescaled by an exact power of two for the search (module docstring, "Range"),
    and a true squared distance too large for the dtype is returned as ``inf`` with the
    right index.

    Raises:
        TypeError: ``Q`` or ``P`` is not a Tensor, ``k`` is not an int, ``largest`` is not
            a bool, or the dtypes are not float or differ.
        ValueError: ``k`` is negative or larger than the number of rows of ``P``, ``Q`` or
            ``P`` holds NaN or Inf, or dimensions, ``d`` or devices do not match (the message
            names the argument).

    """
    k = _check_args(Q, P, k)
    if not is_flag(largest):  # a bool or np.bool_
        raise TypeError(f"{_OP}: argument 'largest' must be a bool, got {type(largest).__name__}")
    largest = bool(largest)
    op = torch.ops.fastunlearn.knn_extreme.default
    if torch.compiler.is_compiling():
        return _knn_extreme_traced(Q, P, k, largest)
    if not _checkable(Q, P):  # malformed or fake: the op raises / computes shapes itself
        return op(Q, P, k, largest)
    e = _range_exponent(Q, P)
    if e == 0:  # the normal range: no copy
        return op(Q, P, k, largest)
    dist, index = op(_times_pow2(Q.detach(), e), _times_pow2(P.detach(), e), k, largest)
    return _unscale_distances(dist, e), index


def farthest_k(Q: Tensor, P: Tensor, k: int | np.integer) -> tuple[Tensor, Tensor]:
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


def nearest_k(Q: Tensor, P: Tensor, k: int | np.integer) -> tuple[Tensor, Tensor]:
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
    torch._check_value(Q.dim() == 2, lambda: f"{_OP}: argument 'Q' must be 2-D, got {Q.dim()}-D")
    torch._check_value(P.dim() == 2, lambda: f"{_OP}: argument 'P' must be 2-D, got {P.dim()}-D")
    torch._check_type(
        Q.dtype in (torch.float32, torch.float64),
        lambda: f"{_OP}: argument 'Q' must be float32 or float64, got {Q.dtype}",
    )
    torch._check_type(
        P.dtype == Q.dtype,
        lambda: f"{_OP}: arguments 'Q' ({Q.dtype}) and 'P' ({P.dtype}) must have the same dtype",
    )
    torch._check_value(
        P.device == Q.device,
        lambda: f"{_OP}: arguments 'Q' and 'P' must be on the same device",
    )
    torch._check_value(
        P.shape[1] == Q.shape[1],
        lambda: f"{_OP}: argument 'P' has {P.shape[1]} columns but {Q.shape[1]} were expected",
    )
    torch._check_value(
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
