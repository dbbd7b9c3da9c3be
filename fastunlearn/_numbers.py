"""Real numbers given as arguments: Python ints may lie beyond the float range.

``float(10**400)`` and ``math.isfinite(10**400)`` raise OverflowError; argument checks treat
such an int as infinite instead, so it is refused like ``inf`` with a message naming the
argument.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["as_float", "is_finite"]


def is_finite(value: numbers.Real) -> bool:
    """Whether a real number is finite (an int beyond the float range is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def as_float(value: numbers.Real) -> float:
    """``float(value)``, with an int beyond the float range as a signed infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
