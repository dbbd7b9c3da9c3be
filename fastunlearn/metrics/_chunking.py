"""Chunks of examples (dim 0) for the metrics that work per example."""

from __future__ import annotations


def row_chunks(rows: int, size: int) -> list[slice]:
    """Consecutive ranges of about ``size`` rows covering ``range(rows)``.

    No range holds a single row unless ``rows`` is 1: a reduction over a one-row tensor
    has a single output, for which torch takes its full-reduction path (``std`` and
    ``var`` compute differently there), so a one-row chunk could change the last bits of a
    result computed over many rows at once. A one-row remainder joins the range before it.
    """
    size = max(2, size)
    starts = list(range(0, rows, size))
    if len(starts) > 1 and rows - starts[-1] == 1:
        starts.pop()
    ends = [*starts[1:], rows] if starts else []
    return [slice(a, b) for a, b in zip(starts, ends, strict=True)]
