"""Reductions with numpy's semantics (nan-aware max and median, infinities kept)."""

from __future__ import annotations

import torch
from torch import Tensor


def nanmax(x: Tensor, dim: int = -1) -> Tensor:
    """Max over ``dim`` ignoring nan; nan where every entry is nan (``np.nanmax``)."""
    is_nan = torch.isnan(x)
    out = x.masked_fill(is_nan, -torch.inf).amax(dim)
    return out.masked_fill(is_nan.all(dim), torch.nan)


def median(x: Tensor, dim: int = -1) -> Tensor:
    """``np.median``: the mean of the two middle values for an even count (inf kept)."""
    n = x.shape[dim]
    if n == 0:
        raise ValueError("median of an empty dimension")
    s = x.sort(dim=dim).values
    lo = s.narrow(dim, (n - 1) // 2, 1).squeeze(dim)
    hi = s.narrow(dim, n // 2, 1).squeeze(dim)
    return torch.where(lo == hi, lo, (lo + hi) / 2)


def nanmedian(x: Tensor) -> float:
    """``np.nanmedian`` of a 1-D tensor: nan ignored, infinities kept; nan if all are nan."""
    v = x.reshape(-1)
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return float("nan")
    return float(median(v.to(torch.float64)))
