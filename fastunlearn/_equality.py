"""Value equality of dataclasses that hold tensors (the generated ``__eq__`` cannot).

A dataclass's generated ``__eq__`` compares field tuples, which calls ``bool()`` on the
element-wise ``tensor == tensor`` and raises "Boolean value of Tensor with more than one
value is ambiguous" for any two distinct tensors of more than one element (e.g. a result
and its ``deepcopy`` or pickle round trip). Assign :func:`dataclass_eq` as the class's
``__eq__`` to compare tensors and arrays by dtype, shape, device and values instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["dataclass_eq", "values_equal"]


def values_equal(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are equal, tensors and arrays compared as whole values."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                and torch.equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.dtype == b.dtype and np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(values_equal(x, y) for x, y in zip(a, b, strict=True)))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def dataclass_eq(self: Any, other: Any) -> bool:
    """``__eq__`` of a dataclass: same class and every compared field :func:`values_equal`."""
    if other.__class__ is not self.__class__:
        return NotImplemented
    return all(values_equal(getattr(self, f.name), getattr(other, f.name))
               for f in dataclasses.fields(self) if f.compare)
