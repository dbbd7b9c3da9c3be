"""Short, bounded reprs of result objects that hold tensors, arrays and long lists.

A dataclass's generated ``__repr__`` prints every element of every list it holds and up to
a thousand values of each tensor, so the repr of a result over thousands of examples runs
to hundreds of kilobytes. :func:`summarize` renders one value in at most a few hundred
characters (counts, shape, first and last items, as NumPy and PyTorch truncate), and
:func:`fields_repr` renders a dataclass with it; assign ``__repr__ = fields_repr`` in a
``@dataclass(repr=False)`` class.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["fields_repr", "format_number", "summarize"]

#: tensors and arrays of at most this many elements are printed in full
SMALL_TENSOR = 8
#: sequences and mappings of at most this many items are printed in full (fewer when nested)
SMALL_SEQUENCE = 10
#: mappings of at most this many items are printed in full
SMALL_MAPPING = 6
#: items shown at each end of a longer sequence (one fewer when nested)
EDGE_ITEMS = 3
#: strings longer than this are cut
LONG_STRING = 80


def format_number(value: float | None, digits: int = 4) -> str:
    """Return ``value`` with ``digits`` significant digits (``nan``, ``inf``, ``None`` as such)."""
    if value is None:
        return "None"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    if math.isnan(number) or math.isinf(number):
        return str(number)
    return f"{number:.{digits}g}"


def _array_summary(value: torch.Tensor | np.ndarray) -> str:
    """``Tensor(shape=[...], dtype=...)`` or ``ndarray(...)`` of a large tensor or array."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        device = "" if value.device.type == "cpu" else f", device='{value.device}'"
        return f"Tensor(shape={list(value.shape)}, dtype={dtype}{device})"
    return f"ndarray(shape={list(value.shape)}, dtype={value.dtype})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def summarize(value: Any, depth: int = 0) -> str:
    """Return a bounded, one-line repr of ``value``.

    Tensors and arrays of at most :data:`SMALL_TENSOR` elements print their values, larger
    ones their shape and dtype; lists and tuples of more than :data:`SMALL_SEQUENCE` items
    show the first and last :data:`EDGE_ITEMS` and how many are left out, mappings of more
    than :data:`SMALL_MAPPING` their first keys; a mapping, or a sequence of containers,
    nested in another prints only its length; an ``nn.Module`` prints its class and
    parameter count; long strings are cut.

    Args:
        value: anything.
        depth: nesting level (0 for a field of the object being printed).

    Returns:
        str: the summary (a few hundred characters at most).

    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        numel = value.size if isinstance(value, np.ndarray) else value.numel()
        if 0 < numel <= SMALL_TENSOR:
            return _one_line(repr(value))
        return _array_summary(value)
    if isinstance(value, nn.Module):
        try:
            count = str(sum(p.numel() for p in value.parameters()))
        except (RuntimeError, ValueError):  # lazy modules: parameters not materialised yet
            count = "?"
        return f"{type(value).__name__}({count} parameters)"
    if isinstance(value, str):
        limit = LONG_STRING if depth == 0 else LONG_STRING // 4
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} chars)"
    if isinstance(value, Mapping):
        if depth > 0 and len(value) > 0:
            return f"{{...{len(value)} keys}}"
        keys = list(value)
        shown = keys if len(keys) <= SMALL_MAPPING else keys[:SMALL_MAPPING - 1]
        items = [f"{summarize(k, depth + 1)}: {summarize(value[k], depth + 1)}" for k in shown]
        if len(shown) < len(keys):
            items.append(f"... {len(keys) - len(shown)} more")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        if depth > 0 and len(value) > 0 and not all(_is_scalar(v) for v in value):
            return f"{open_}...{len(value)} items{close}"
        edge = EDGE_ITEMS if depth == 0 else EDGE_ITEMS - 1
        if len(value) <= (SMALL_SEQUENCE if depth == 0 else 2 * edge):
            joined = ", ".join(summarize(v, depth + 1) for v in value)
            comma = "," if isinstance(value, tuple) and len(value) == 1 else ""
            return f"{open_}{joined}{comma}{close}"
        head = ", ".join(summarize(v, depth + 1) for v in value[:edge])
        tail = ", ".join(summarize(v, depth + 1) for v in value[-edge:])
        return f"{open_}{head}, ... {len(value) - 2 * edge} more, {tail}{close}"
    text = _one_line(repr(value))
    if len(text) > 4 * LONG_STRING:
        return f"{text[:4 * LONG_STRING]}..."
    return text


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, bool, str, np.generic)) or value is None


def fields_repr(self: Any) -> str:
    """``__repr__`` of a dataclass or NamedTuple: ``Name(field=value, ...)``, values summarised.

    Only dataclass fields declared with ``repr=True`` (the default) are shown, as the
    generated ``__repr__`` does; each value is rendered by :func:`summarize`, so the repr
    stays short whatever the size of the tensors and lists the object holds.
    """
    if dataclasses.is_dataclass(self):
        names = [f.name for f in dataclasses.fields(self) if f.repr]
    else:
        names = list(self._fields)
    parts = [f"{name}={summarize(getattr(self, name))}" for name in names]
    return f"{type(self).__name__}({', '.join(parts)})"
