"""Shape checks shared by the fake (meta) kernels of the certified step's in-place ops."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def check_fake_shapes(op: str, expected: Iterable[tuple[str, object, Sequence[int]]]) -> None:
    """Check each ``(name, tensor, shape)`` at trace time, naming the argument on failure."""
    for name, t, shape in expected:
        assert isinstance(t, Tensor)
        torch._check(
            tuple(t.shape) == tuple(shape),
            lambda n=name, t=t: f"{op}: argument '{n}' has shape {tuple(t.shape)}",
        )
