"""The NeurIPS 2023 Machine Unlearning Competition forget score and final score.

Per forget example the attacker sees the logit-scaled confidence
(:func:`~.statistics.logit_scaled_confidence`) of N retrained and N unlearned models.
Following the official scoring code (google-deepmind/unlearning_evaluation, ``metric.py``):

1. positive group: retrained if its median is strictly larger, else unlearned;
2. peaky rule: if (smaller range) / (larger range) < 0.01 the example's epsilon is the cap
   (50) and nothing else is computed (two zero ranges give 0/0 and are not caught);
3. single-threshold family: ``t`` in ``linspace(min, max, ceil(100 (max - min)))`` over the
   pooled values (``torch.linspace``), positive if ``f >= t``;
4. double-threshold family: positive := the peakier group (smaller range; the original
   negative group on equal ranges), ``w`` its range; right edges
   ``r in linspace(min_pos + w - 2, max_pos + 2, ceil(100 (hi - lo)))`` and for each 400 left
   edges ``l in linspace(r - w - 2, r - w + 2)`` (``numpy.linspace``); positive if
   ``l <= f <= r``;
5. per threshold: FPR = FNR = 0 gives inf; exactly one of them 0 is discarded; otherwise
   ``clip(nanmax(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)), 0)``
   with the rates and logarithms in float32 as the official code computes them;
6. the example's epsilon is the max over kept thresholds of both families, clipped to
   [0, 50] (inf becomes 50). delta = 1e-5.

The forget score F averages ``2**(1 - k)`` points over examples, bin k covering
``[0.5 (k - 1), 0.5 k)``, bins existing while their end is at most ``ceil(ln(N - 1))``; the
final score is ``F * (RA_U / RA_R) * (TA_U / TA_R)``.

Implementation: examples are processed in chunks, all at once, with no loop over
thresholds. The rates depend only on the integer counts (FP, FN), so every threshold's
epsilon is a lookup in an ``(n_neg + 1) x (n_pos + 1)`` table. All thresholds lying in the
same gap between two consecutive sorted observations give the same counts, so each row of
thresholds is reduced to the gaps it hits: the number of grid entries at or below every
observation (``searchsorted`` for the single family; arithmetic on the linear grid, with
exact float64 comparisons wherever rounding could matter, for the 400-entry rows of left
edges) tells which gaps hold a threshold, and prefix sums over the sorted observations give
the counts of each gap. The cost per example is (right edges) x (models) instead of
(right edges) x 400 x (models). Thresholds are the same float64 numbers the official code
builds (numpy's linspace is reproduced and torch's is called), so the decisions match it
exactly. Examples without any usable threshold (the official code stops with an
assertion) get nan, which earns 0 points.

Where the compiled library has a kernel for the inputs' device, the epsilons come from the
fused op ``torch.ops.fastunlearn.competition_epsilons`` (:mod:`fastunlearn.ops.competition`:
one sort per example and a sweep over the gaps, examples in parallel on the CPU, one CUDA
block per example), fed with the same single-threshold grid (``torch.linspace``, built here)
and the same float32 epsilon table, so both paths give identical epsilons; the vectorised
torch path above is the fallback.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._extension import has_kernel
from .._numbers import check_int
from .._repr import fields_repr
from ._checks import as_tensor, check_delta, pair_of_stats, stacked_logits
from ._reduce import median
from .statistics import logit_scaled_confidence

__all__ = [
    "CompetitionResult",
    "competition_epsilons",
    "epsilon_table",
    "competition_score",
    "final_score",
    "forget_score",
    "score_bins",
]

#: Official constants (``metric.py``).
DEFAULT_DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
PEAKY_RATIO = 0.01

#: Threshold-grid entries processed per chunk (bounds the working memory).
_CHUNK_ELEMENTS = 1 << 19
#: Single-threshold grid entries built and passed to the compiled op per chunk of examples
#: (16 MiB of float64; the grid of all examples at once grew with S).
_GRID_CHUNK_ELEMENTS = 1 << 21


def _eps_table(n_pos: int, n_neg: int, delta: float, device: torch.device) -> Tensor:
    """Epsilon for every (FP, FN) count pair, ``[n_neg + 1, n_pos + 1]`` (float32).

    inf where FP = FN = 0, -inf (discarded) where exactly one is zero or both log terms
    are nan; otherwise the clipped nan-max, computed in float32 as the official code does.
    Always computed on the CPU (where the official code runs) and then moved to
    ``device``: a GPU's float32 log may round differently, and every device must give the
    same epsilons.
    """
    fpr = (torch.arange(n_neg + 1, dtype=torch.float32) / n_neg)[:, None]
    fnr = (torch.arange(n_pos + 1, dtype=torch.float32) / n_pos)[None, :]
    a = torch.tensor(1.0 - delta, dtype=torch.float32)
    t1 = torch.log(a - fpr) - torch.log(fnr)
    t2 = torch.log(a - fnr) - torch.log(fpr)
    t1, t2 = torch.broadcast_tensors(t1, t2)
    val = torch.where(torch.isnan(t1), t2, torch.where(torch.isnan(t2), t1, torch.maximum(t1, t2)))
    val = val.clamp_min(0.0).to(torch.float64)  # nan stays nan
    fp0, fn0 = fpr == 0, fnr == 0
    val = torch.where(fp0 ^ fn0, -torch.inf, val)
    val = torch.where(fp0 & fn0, torch.inf, val)
    val = val.nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf).float()
    return val.to(device)


def _torch_linspace(start: Tensor, end: Tensor, steps: Tensor, width: int) -> Tensor:
    """Rows of ``torch.linspace(start, end, steps)`` on the CPU, padded with +inf.

    The official code builds these thresholds with ``torch.linspace`` on the CPU; its
    vectorised kernel rounds differently from a plain ``start + i * step``, so the rows are
    built with it (one small call per example) to keep the thresholds bit-identical.
    """
    out = torch.full((start.shape[0], width), torch.inf, dtype=torch.float64)
    for i, (a, b, n) in enumerate(zip(start.tolist(), end.tolist(), steps.tolist(),
                                      strict=True)):
        if n > 0:
            out[i, :n] = torch.linspace(a, b, n, dtype=torch.float64)
    return out.to(start.device)


def _numpy_linspace(start: Tensor, stop: Tensor, num: int | Tensor, width: int) -> Tensor:
    """Rows of ``numpy.linspace(start, stop, num)``: ``i * step + start``, last = stop."""
    idx = torch.arange(width, dtype=torch.float64, device=start.device)
    shape = (1,) * start.dim() + (width,)
    idx = idx.reshape(shape)
    n = torch.as_tensor(num, device=start.device).to(torch.float64)
    n = n.reshape(n.shape + (1,)) if n.dim() else n
    step = ((stop - start)[..., None]) / (n - 1).clamp_min(1)
    out = idx * step + start[..., None]
    out = torch.where(idx == n - 1, stop[..., None].expand_as(out), out)
    return out.masked_fill(idx >= n, torch.inf)


def _first_above_rows(
    start: Tensor,
    stop: Tensor,
    n: int,
    values: Tensor,
    out: Tensor | None = None,
    origin: Tensor | None = None,
) -> Tensor:
    """``#{j : l_j <= v}`` for rows ``l_j = numpy.linspace(start, stop, n)`` and values ``v``.

    Args:
        start: ``[...]`` first grid entry of each row (float64).
        stop: ``[...]`` last grid entry of each row.
        n: Entries per row (> 1).
        values: ``[..., K]`` values, one set per row (broadcast against ``start[..., None]``).
        out: Optional ``[..., K]`` buffer (may be a view) to write the result into, float64,
            or float32 with ``origin``.
        origin: Optional per-row origin (broadcastable to ``start``) close to the rows: the
            arithmetic then runs in float32 on values relative to it (twice the throughput);
            the band of values sent to the exact check widens to cover float32 rounding.

    Returns:
        ``[..., K]`` integers in ``[0, n]`` (float dtype): the index of the first grid entry
        above ``v``. Computed arithmetically from the linear grid, then corrected with exact
        float64 comparisons against the grid's own entries wherever ``v`` lies within
        rounding distance of one of them, so it equals a ``searchsorted`` on the grid.

    """
    step = ((stop - start) / (n - 1))[..., None]
    s0 = start[..., None]
    # the grid's entries i * step + start are rounded to float64 at the rows' magnitude:
    # far from 0 (|start| ~ 1e10 and more) an entry lies a sizeable fraction of a step
    # away from its arithmetic position, and the band sent to the exact check widens with it
    drift = (start.abs() + stop.abs() + 4.0)[..., None] * 2.0**-51 / step
    if origin is None:
        u = values - s0
        u.div_(step)
        band = drift + 1e-6
    else:
        o = origin[..., None]
        u = (values - o).float() - (s0 - o).float()
        u.mul_((1.0 / step).float())
        # |v - origin| and |start - origin| stay below ~100 near the grid (farther values
        # are clamped): float32 rounding moves u by < 1e-3 grid steps
        band = (drift + 5e-3).float()
    first = torch.floor(u) if out is None else torch.floor(u, out=out)
    frac = u.sub_(first)
    risky = ((frac < band) | (frac > 1 - band)).nonzero(as_tuple=True)
    first.add_(1).clamp_(0, n)
    if risky[0].numel():
        shape = first.shape
        v = values.expand(shape)[risky]
        st = s0.expand(shape)[risky]
        sp = step.expand(shape)[risky]
        end = stop[..., None].expand(shape)[risky]
        j = first[risky].to(torch.float64)

        def grid(i: Tensor) -> Tensor:
            return torch.where(i == n - 1, end, i * sp + st)

        while True:  # one grid step per pass (one or two passes below ~1e13)
            moved = j - ((j > 0) & (grid((j - 1).clamp_min(0)) > v)).to(j.dtype)
            moved += ((moved < n) & (grid(moved.clamp_max(n - 1)) <= v)).to(j.dtype)
            if torch.equal(moved, j):
                break
            j = moved
        first[risky] = j.to(first.dtype)
    return first


def _weights(P: int, Q: int, device: torch.device) -> Tensor:
    """Signed weight per observation: positives +1, negatives -(P + 1)."""
    return torch.cat([
        torch.ones(P, dtype=torch.int64, device=device),
        torch.full((Q,), -(P + 1), dtype=torch.int64, device=device),
    ])


def _sorted_pool(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Pooled values sorted per row ``[B, K]`` and the prefix sums ``W [B, K + 1]``.

    ``W[:, g] = #pos among the g smallest - (P + 1) #neg among them``: for a threshold
    above exactly the g smallest values, ``#pos < t - (P + 1) #neg < t``.
    """
    P, Q = pos.shape[1], neg.shape[1]
    values, order = torch.cat([pos, neg], 1).sort(1)
    w = _weights(P, Q, pos.device)[order]
    W = torch.zeros(values.shape[0], values.shape[1] + 1, dtype=torch.int64, device=pos.device)
    W[:, 1:] = w.cumsum(1)
    return values, W


def _gaps_max(edges: Tensor, n_valid: Tensor, index: Tensor, table: Tensor) -> Tensor:
    """Max of ``table[index]`` over the gaps between sorted values that hold a grid point.

    Gap g (thresholds above exactly the g smallest values) holds the grid entries
    ``[edges[g], edges[g + 1])``; it counts when it holds one whose position is below
    ``n_valid``. All thresholds in a gap give the same counts, so the gaps stand for the
    whole grid.

    Args:
        edges: ``[..., K + 2]``: 0, the number of grid entries <= each sorted value, and
            the number of grid entries of the row.
        n_valid: ``[...]`` grid entries usable per row (a prefix).
        index: ``[..., K + 1]`` table index of each gap (overwritten).
        table: ``[size]`` flat epsilon table.

    """
    first, last = edges[..., :-1], edges[..., 1:]
    ok = last > first
    ok &= first < n_valid[..., None]
    index.masked_fill_(~ok, table.numel())
    ext = torch.cat([table, table.new_full((1,), -torch.inf)])
    vals = torch.take(ext, index)
    return vals.reshape(vals.shape[0], -1).amax(1).to(torch.float64)


def _single_family(pos: Tensor, neg: Tensor, table: Tensor) -> Tensor:
    """Max epsilon of the single-threshold family, ``pos [B, P]``, ``neg [B, Q]``."""
    P, Q = pos.shape[1], neg.shape[1]
    values, W = _sorted_pool(pos, neg)
    lo, hi = values[:, 0], values[:, -1]
    steps = torch.ceil((hi - lo) * THRESHOLDS_PER_UNIT).to(torch.int64)
    width = max(int(steps.max()), 1)
    grid = _torch_linspace(lo, hi, steps, width)  # [B, T], +inf padded
    le = torch.searchsorted(grid, values.contiguous(), right=True)  # [B, K]
    edges = torch.cat([torch.zeros_like(le[:, :1]), le, steps[:, None]], 1).to(torch.float64)
    # positive if f >= t: FN = #pos < t, FP = Q - #neg < t, index FP (P + 1) + FN
    index = Q * (P + 1) + W
    return _gaps_max(edges, steps.to(torch.float64), index, table.reshape(-1))


def _double_family(pos: Tensor, neg: Tensor, table: Tensor) -> Tensor:
    """Max epsilon of the interval family; ``pos [B, P]`` is the peakier group."""
    P = pos.shape[1]
    pmin, pmax = pos.amin(1), pos.amax(1)
    width = pmax - pmin
    lo = pmin + width - BUFFER
    hi = pmax + BUFFER
    n_right = torch.ceil((hi - lo) * THRESHOLDS_PER_UNIT).to(torch.int64)
    R = max(int(n_right.max()), 1)
    right = _numpy_linspace(lo, hi, n_right, R)  # [B, R], +inf padded
    L = int(math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT))
    finite = torch.isfinite(right)
    centre = torch.where(finite, right, 0.0) - width[:, None]
    start, stop = centre - BUFFER, centre + BUFFER
    # positive if l <= f <= r: TP = #pos <= r - #pos < l, FP = #neg <= r - #neg < l,
    # FN = P - TP, so the index FP (P + 1) + FN is base(r) + #pos < l - (P + 1) #neg < l
    rr = torch.where(finite, right, -torch.inf).contiguous()
    pos_le = torch.searchsorted(pos.sort(1).values, rr, right=True)
    neg_le = torch.searchsorted(neg.sort(1).values, rr, right=True)
    base = neg_le * (P + 1) + P - pos_le  # [B, R]
    values, W = _sorted_pool(pos, neg)
    B, K = values.shape
    edges = torch.empty(B, R, K + 2, dtype=torch.float32, device=pos.device)
    edges[..., 0] = 0
    edges[..., -1] = L
    _first_above_rows(start, stop, L, values[:, None, :], out=edges[..., 1:-1],
                      origin=pmin[:, None])
    # usable left edges: l <= r (a non-empty interval) on a real (not padded) right edge
    n_valid = _first_above_rows(start, stop, L, rr[..., None]).squeeze(-1)
    n_valid = n_valid.masked_fill_(~finite, 0).float()
    index = base[..., None] + W[:, None, :]
    return _gaps_max(edges, n_valid, index, table.reshape(-1))


def _chunks(n: int, per_example: int) -> list[slice]:
    size = max(1, _CHUNK_ELEMENTS // max(per_example, 1))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _group_epsilons(pos: Tensor, neg: Tensor, delta: float) -> Tensor:
    """Per-example epsilon (unclipped, nan if nothing kept) for one positive/negative split."""
    B, P = pos.shape
    Q = neg.shape[1]
    out = torch.full((B,), torch.nan, dtype=torch.float64, device=pos.device)
    if B == 0:
        return out
    pd = pos.amax(1) - pos.amin(1)
    nd = neg.amax(1) - neg.amin(1)
    largest = torch.where(pd > nd, pd, nd)
    smallest = torch.where(pd > nd, nd, pd)
    peaky = (smallest / largest) < PEAKY_RATIO  # 0/0 is nan: not peaky
    out[peaky] = EPSILON_CAP
    todo = ~peaky
    single = torch.full((B,), -torch.inf, dtype=torch.float64, device=pos.device)
    double = torch.full((B,), -torch.inf, dtype=torch.float64, device=pos.device)
    table_pq = _eps_table(P, Q, delta, pos.device)
    # single family, original positive group
    idx = todo.nonzero().squeeze(1)
    if idx.numel():
        span = (torch.cat([pos[idx], neg[idx]], 1).aminmax(dim=1))
        per = int(torch.ceil((span.max - span.min).max() * THRESHOLDS_PER_UNIT)) + 1
        for sl in _chunks(idx.numel(), per):
            j = idx[sl]
            single[j] = _single_family(pos[j], neg[j], table_pq)
    # double family: the peakier group is positive (the original negative on equal ranges)
    swap = pd >= nd
    per = (int(math.ceil(2 * BUFFER * THRESHOLDS_PER_UNIT)) + 2) * (P + Q + 1)
    for flag in (False, True):
        idx = (todo & (swap == flag)).nonzero().squeeze(1)
        if not idx.numel():
            continue
        a, b = (neg, pos) if flag else (pos, neg)
        table = _eps_table(a.shape[1], b.shape[1], delta, pos.device) if flag else table_pq
        for sl in _chunks(idx.numel(), per):
            j = idx[sl]
            double[j] = _double_family(a[j], b[j], table)
    best = torch.maximum(single, double)
    best = best.masked_fill(best == -torch.inf, torch.nan)
    out[todo] = best[todo]
    return out


def epsilon_table(n_pos: int, n_neg: int, delta: float = DEFAULT_DELTA,
                  device: torch.device | str = "cpu") -> Tensor:
    """Return the float32 epsilon of every ``(FP, FN)`` pair, ``[n_neg + 1, n_pos + 1]``.

    Rates ``FP / n_neg`` and ``FN / n_pos`` and the logarithms in float32 as the official
    code computes them; ``inf`` where FP = FN = 0, ``-inf`` (discarded) where exactly one is
    zero or both log terms are nan, otherwise the clipped nan-max of the two log ratios.

    Raises:
        TypeError: ``n_pos`` or ``n_neg`` is not an int, or ``delta`` not a number.
        ValueError: ``n_pos`` or ``n_neg`` is < 1 (no rate without examples), or
            ``delta`` is outside [0, 1).

    """
    return _eps_table(check_int("n_pos", n_pos, 1), check_int("n_neg", n_neg, 1),
                      check_delta(delta), torch.device(device))


def _single_grids(r: Tensor, u: Tensor, skip: Tensor) -> tuple[Tensor, Tensor]:
    """Each example's single-threshold grid (``torch.linspace`` on the CPU), concatenated.

    Examples flagged in ``skip`` get an empty grid. Returns ``(grid [T], offsets [S + 1])``
    on the inputs' device.
    """
    lo, hi, steps = _single_steps(r, u, skip)
    return _grids_of(steps.tolist(), lo, hi).to(r.device), _offsets(steps, r.device)


def _single_steps(r: Tensor, u: Tensor, skip: Tensor) -> tuple[list[float], list[float], Tensor]:
    """Pooled minimum and maximum per example and its grid size (0 where ``skip``).

    Returns ``(lo, hi, steps)``: Python floats and an int64 ``[S]`` tensor on the CPU.
    """
    lo = torch.minimum(r.amin(1), u.amin(1))
    hi = torch.maximum(r.amax(1), u.amax(1))
    steps = torch.ceil((hi - lo) * THRESHOLDS_PER_UNIT).to(torch.int64).masked_fill(skip, 0)
    return lo.tolist(), hi.tolist(), steps.cpu()


def _grids_of(steps: list[int], lo: list[float], hi: list[float]) -> Tensor:
    """Concatenate the grids ``torch.linspace(lo, hi, steps)`` (float64, on the CPU)."""
    pieces = [torch.linspace(a, b, n, dtype=torch.float64)
              for a, b, n in zip(lo, hi, steps, strict=True) if n > 0]
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.float64)


def _offsets(steps: Tensor, device: torch.device) -> Tensor:
    """Grid offsets ``[S + 1]`` (int64, rising from 0) of per-example ``steps``."""
    offsets = torch.zeros(steps.shape[0] + 1, dtype=torch.int64)
    offsets[1:] = steps.cumsum(0)
    return offsets.to(device)


def _grid_chunks(steps: Tensor, per_example: int) -> list[slice]:
    """Split the examples into consecutive ranges of bounded work.

    A range holds at most ``_GRID_CHUNK_ELEMENTS`` grid entries plus ``per_example`` per example
    (and at least one example).
    """
    cost = (steps + per_example).cumsum(0).tolist()
    chunks, start, done = [], 0, 0
    n = len(cost)
    while start < n:
        end = bisect.bisect_right(cost, done + _GRID_CHUNK_ELEMENTS, lo=start)
        end = max(end, start + 1)
        chunks.append(slice(start, end))
        done, start = cost[end - 1], end
    return chunks


def _op_available(device_type: str) -> bool:
    """Whether the compiled op has a kernel for ``device_type`` (False for an older build)."""
    try:
        return bool(has_kernel("competition_epsilons", device_type))
    except RuntimeError:  # a compiled library from before the op existed
        return False


def _epsilons_op(r: Tensor, u: Tensor, delta: float) -> Tensor:
    """Clipped per-example epsilons from the fused op (float64 ``[S, N]``, ``[S, M]``).

    Examples are processed in chunks (the op is per example): each chunk's grids are
    built and passed on their own, so the memory beyond the inputs and the ``[S]`` output is
    bounded by about twice ``_GRID_CHUNK_ELEMENTS`` float64 grid entries.
    """
    from ..ops.competition import competition_epsilons as op

    rd = r.amax(1) - r.amin(1)
    ud = u.amax(1) - u.amin(1)
    peaky = torch.minimum(rd, ud) / torch.maximum(rd, ud) < PEAKY_RATIO  # 0/0: not peaky
    lo, hi, steps = _single_steps(r, u, peaky)
    N, M = r.shape[1], u.shape[1]
    table_r, table_u = _eps_table(N, M, delta, r.device), _eps_table(M, N, delta, r.device)
    out = torch.empty(r.shape[0], dtype=torch.float64, device=r.device)
    for sl in _grid_chunks(steps, N + M):
        part = steps[sl]
        grid = _grids_of(part.tolist(), lo[sl], hi[sl]).to(r.device)
        # (the op's right-edge check, which names an example by its index in the chunk, is
        # unreachable here: _check_grid_size refuses the magnitudes that trigger it)
        out[sl] = op(r[sl], u[sl], grid, _offsets(part, r.device), table_r, table_u)
        del grid
    return out


def _epsilons_torch(r: Tensor, u: Tensor, delta: float) -> Tensor:
    """Clipped per-example epsilons by the vectorised torch path (float64 inputs)."""
    retrained_positive = median(r, 1) > median(u, 1)
    eps = torch.full((r.shape[0],), torch.nan, dtype=torch.float64, device=r.device)
    for flag in (True, False):
        idx = (retrained_positive == flag).nonzero().squeeze(1)
        if idx.numel():
            pos, neg = (r[idx], u[idx]) if flag else (u[idx], r[idx])
            eps[idx] = _group_epsilons(pos, neg, delta)
    return eps.clamp(0.0, EPSILON_CAP)


#: Most single-threshold grid entries per example (the logit-scaled confidence spans at
#: most ~207.3, i.e. ~2e4 entries); wider spans overflowed int64 or the grid offsets.
_MAX_GRID = 2**31 - 1


def _check_grid_size(r: Tensor, u: Tensor) -> None:
    """Raise ValueError if an example's span needs more than ``_MAX_GRID`` thresholds."""
    span = (torch.maximum(r.amax(1), u.amax(1)) - torch.minimum(r.amin(1), u.amin(1))).max()
    if not float(span) * THRESHOLDS_PER_UNIT <= _MAX_GRID:  # also catches an inf span
        raise ValueError(
            f"'retrained' and 'unlearned' span {float(span):.4g} within an example: the "
            f"threshold grid ({THRESHOLDS_PER_UNIT} per unit) would exceed {_MAX_GRID} "
            "entries; expected logit-scaled confidences (within about +-103.6)"
        )


def competition_epsilons(
    retrained: Any, unlearned: Any, *, delta: float | np.floating = DEFAULT_DELTA
) -> Tensor:
    """Per-example epsilons of the NeurIPS 2023 competition metric, clipped to [0, 50].

    Args:
        retrained: ``[S, N]`` logit-scaled confidences of N retrained models on S examples.
        unlearned: ``[S, M]`` confidences of M unlearned models (N = M officially).
        delta: delta of (epsilon, delta), 1e-5 officially.

    Returns:
        float64 ``[S]`` on the inputs' device; nan where no threshold is usable.

    Uses the compiled op where it has a kernel for the device, the vectorised torch path
    otherwise; both give identical epsilons.

    Raises:
        ValueError: On mismatched shapes, non-finite input or ``delta`` outside [0, 1).

    """
    delta = check_delta(delta)
    r, u = pair_of_stats(retrained, unlearned)
    _check_grid_size(r, u)
    if _op_available(r.device.type):
        return _epsilons_op(r, u, delta)
    return _epsilons_torch(r, u, delta)


def score_bins(num_models: int | np.integer) -> list[tuple[float, float, float]]:
    """Return the official bins ``(start, end, points)``: width 0.5, points 1, 1/2, ...

    Bins exist while their end is at most ``ceil(ln(num_models - 1))``.

    Raises:
        TypeError: If ``num_models`` is not an integer (a bool or a float is not one).
        ValueError: If ``num_models`` is below 3.

    """
    num_models = check_int("num_models", num_models, 3)  # NumPy ints too (a shape entry)
    max_eps = math.ceil(math.log(num_models - 1))
    bins, k = [], 0
    while 0.5 * (k + 1) <= max_eps:
        bins.append((0.5 * k, 0.5 * (k + 1), 2.0 ** -k))
        k += 1
    return bins


def _epsilon_tensor(epsilons: Any) -> Tensor:
    """``epsilons`` as a float64 ``[S]`` tensor, S >= 1, each >= 0, ``inf`` or nan.

    An epsilon is never negative (the per-threshold values are clipped at 0): a negative one
    (``-inf`` too) is not an epsilon, and would earn the first bin's full points.

    Raises:
        TypeError: If ``epsilons`` is not a real tensor or array.
        ValueError: If it is not 1-D, is empty or holds a negative value.

    """
    e = as_tensor(epsilons, "epsilons")
    if e.dtype == torch.bool or e.is_complex():
        raise TypeError(f"'epsilons' must be real numbers, got {e.dtype}")
    if e.dim() != 1:
        raise ValueError(f"'epsilons' must be 1-D (one per example), got shape {tuple(e.shape)}")
    if e.numel() == 0:
        raise ValueError("'epsilons' is empty")
    e = e.to(torch.float64)
    negative = e < 0  # nan compares False: allowed (no usable threshold, 0 points)
    if bool(negative.any()):
        raise ValueError(f"'epsilons' must be >= 0 (inf or nan allowed), got "
                         f"{float(e[negative][0])} at index {int(negative.nonzero()[0, 0])}")
    return e


def forget_score(epsilons: Any, num_models: int | np.integer) -> float:
    """Forget quality F: mean over examples of the points of each epsilon's bin.

    An epsilon earns the points of the first bin whose end exceeds it; epsilons beyond the
    last bin (the cap 50 included) and nan earn 0.

    Args:
        epsilons: ``[S]`` per-example epsilons (:func:`competition_epsilons`): each >= 0,
            ``inf`` (no privacy) or nan (no usable threshold).
        num_models: Number of unlearned models N (sets the number of bins).

    Raises:
        TypeError: If ``epsilons`` is not a real tensor or array, or ``num_models`` is not
            an integer (a bool or a float is not one).
        ValueError: If ``epsilons`` is not 1-D, is empty or holds a negative value (``-inf``
            included), or ``num_models`` is below 3.

    """
    e = _epsilon_tensor(epsilons)
    points = torch.zeros_like(e)
    for start, end, pts in reversed(score_bins(num_models)):
        points = torch.where(e < end, torch.full_like(e, pts), points)
        del start
    return float(points.mean())


def final_score(
    forget: float | np.floating,
    ra_u: float | np.floating,
    ra_r: float | np.floating,
    ta_u: float | np.floating,
    ta_r: float | np.floating,
) -> float:
    """Competition final score ``F * (RA_U / RA_R) * (TA_U / TA_R)`` (ratios not capped).

    Every value is a fraction in [0, 1] (the forget score F and the four accuracies; not
    percentages). A nan input (an accuracy that could not be measured) gives a nan score.

    Raises:
        TypeError: If a value is not a real number.
        ValueError: If a value is outside [0, 1] (or infinite), or a retrained accuracy is 0.

    """
    values = {"forget": forget, "ra_u": ra_u, "ra_r": ra_r, "ta_u": ta_u, "ta_r": ta_r}
    for name, v in values.items():
        if isinstance(v, Tensor) and v.numel() == 1 and not v.dtype.is_complex \
                and v.dtype != torch.bool:
            v = values[name] = float(v)  # a 0-d accuracy tensor
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"'{name}' must be a real number, got {type(v).__name__}")
        try:
            infinite = math.isinf(v)
        except OverflowError:  # an int too large for a float
            infinite = True
        if infinite or v < 0:
            raise ValueError(f"'{name}' must be finite and >= 0, got {v}")
        if v > 1:
            raise ValueError(f"'{name}' must be a fraction in [0, 1], got {v}"
                             + (" (a percentage?)" if v <= 100 else ""))
    if any(math.isnan(v) for v in values.values()):
        return math.nan
    for name in ("ra_r", "ta_r"):
        if not values[name] > 0:
            raise ValueError(f"'{name}' must be > 0, got {values[name]}")
    forget, ra_u, ra_r, ta_u, ta_r = (float(v) for v in values.values())
    return forget * (ra_u / ra_r) * (ta_u / ta_r)


ACCURACY_KEYS = ("ra_u", "ra_r", "ta_u", "ta_r")


def check_accuracies(accuracies: Any) -> None:
    """Raise unless ``accuracies`` is None or a mapping with exactly the four accuracy keys.

    Raises:
        TypeError: If ``accuracies`` is not a mapping.
        ValueError: If a key is missing, or one is not an accuracy key (a misspelt key
            would otherwise be ignored).

    """
    if accuracies is None:
        return
    if not isinstance(accuracies, Mapping):
        raise TypeError(f"'accuracies' must be a dict with keys {list(ACCURACY_KEYS)}, got "
                        f"{type(accuracies).__name__}")
    unknown = [k for k in accuracies if k not in ACCURACY_KEYS]
    if unknown:
        raise ValueError(f"'accuracies' has unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(map(repr, ACCURACY_KEYS))}")
    missing = set(ACCURACY_KEYS) - set(accuracies)
    if missing:
        raise ValueError(f"'accuracies' lacks {sorted(missing)}")


def zero_retrained_accuracies(accuracies: Mapping[str, float] | None) -> list[str]:
    """Return the retrained accuracies (``'ra_r'``, ``'ta_r'``) that are not > 0.

    :func:`final_score` divides by them: where one is 0 the final score is undefined, and
    callers that score many methods pass no accuracies and call
    :func:`mark_final_score_undefined` rather than lose every method's other scores.
    """
    if accuracies is None:
        return []
    return [k for k in ("ra_r", "ta_r") if not accuracies[k] > 0]


def mark_final_score_undefined(entry: dict[str, Any], zero: Sequence[str], whose: str) -> None:
    """Set a scored ``entry``'s final score to NaN with a ``privacy_note`` saying why.

    ``zero`` are the keys :func:`zero_retrained_accuracies` returned (nothing happens for
    none, or for an entry without a competition score); ``whose`` names the retrained
    models in the note ("the oracles'").
    """
    if not zero or "competition_forget_score" not in entry:
        return
    entry["competition_final_score"] = entry["competition"]["final_score"] = math.nan
    which = " and ".join({"ra_r": "retain", "ta_r": "test"}[k] for k in zero)
    note = f"the final score is undefined: {whose} mean {which} accuracy is 0"
    entry["privacy_note"] = "; ".join(filter(None, [entry.get("privacy_note"), note]))


@dataclass(frozen=True, repr=False)
class CompetitionResult:
    """Competition forget score and the per-example epsilons behind it.

    Attributes:
        forget_score: F in [0, 1].
        per_example: float64 ``[S]`` epsilons in [0, 50] (CPU).
        num_models: N used for the bins.
        delta: The delta used.
        final_score: ``F * (RA_U / RA_R) * (TA_U / TA_R)`` when accuracies were given.

    """

    forget_score: float
    per_example: Tensor
    num_models: int
    delta: float
    final_score: float | None = None

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the per-example tensor)."""
        e = self.per_example
        return {
            "forget_score": self.forget_score, "final_score": self.final_score,
            "num_models": self.num_models, "delta": self.delta,
            "n_capped": int((e >= EPSILON_CAP).sum()), "n_nan": int(torch.isnan(e).sum()),
        }


def competition_score(
    retrain_logits: Any,
    unlearn_logits: Any,
    labels: Any,
    *,
    delta: float | np.floating = DEFAULT_DELTA,
    accuracies: dict[str, float] | None = None,
) -> CompetitionResult:
    """Forget score (and final score) of the competition from forget-set logits.

    Args:
        retrain_logits: ``[S, N, C]`` logits of N retrained models on the S forget examples.
        unlearn_logits: ``[S, N, C]`` logits of N unlearned models.
        labels: ``[S]`` integer labels.
        delta: delta of (epsilon, delta), 1e-5 officially.
        accuracies: Optional ``{"ra_u", "ra_r", "ta_u", "ta_r"}`` mean retain/test accuracies
            of the unlearned and retrained models, for the final score.

    Returns:
        A :class:`CompetitionResult`.

    Raises:
        TypeError: If ``accuracies`` is not a mapping (or a value not a number).
        ValueError: On bad logits or labels, ``delta`` outside [0, 1), or ``accuracies``
            without the four keys or with another key.

    """
    delta = check_delta(delta)
    check_accuracies(accuracies)
    r, u, y = stacked_logits(retrain_logits, unlearn_logits, labels, min_models=(2, 3),
                             purpose="the competition score")
    cr = logit_scaled_confidence(r, y)
    cu = logit_scaled_confidence(u, y)
    eps = competition_epsilons(cr, cu, delta=delta).cpu()
    n_models = cu.shape[1]
    f = forget_score(eps, n_models)
    final = None
    if accuracies is not None:
        final = final_score(f, accuracies["ra_u"], accuracies["ra_r"], accuracies["ta_u"],
                            accuracies["ta_r"])
    return CompetitionResult(forget_score=f, per_example=eps, num_models=n_models,
                             delta=float(delta), final_score=final)
