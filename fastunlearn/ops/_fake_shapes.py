"""Checks shared by the fake (meta) kernels.

The shapes of the certified step's in-place ops, and the one-device rule of every op.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def check_fake_shapes(op: str, expected: Iterable[tuple[str, object, Sequence[int]]]) -> None:
    """Check each ``(name, tensor, shape)`` at trace time (ValueError naming the argument)."""
    for name, t, shape in expected:
        assert isinstance(t, Tensor)

        def message(n: str = name, t: Tensor = t) -> str:
            return f"{op}: argument '{n}' has shape {tuple(t.shape)}"

        torch._check_value(tuple(t.shape) == tuple(shape), message)


def check_fake_devices(op: str, named: Iterable[tuple[str, object]]) -> None:
    """Check that every tensor of ``(name, tensor)`` is on the first one's device.

    A fake kernel also runs in eager mode when any argument is a meta tensor: without this
    check, mixing a meta tensor with CPU tensors returned uninitialised CPU memory (or, for an
    in-place op, wrote nothing) instead of the ValueError the real kernels raise.
    """
    first_name, first = None, None
    for name, t in named:
        if not isinstance(t, Tensor):
            continue
        if first is None:
            first_name, first = name, t
        elif t.device != first.device:
            raise ValueError(
                f"{op}: argument '{name}' is on {t.device} but '{first_name}' is on "
                f"{first.device}; all tensors must be on one device"
            )


def check_fake_devices_of(op: str, args: Sequence[object]) -> None:
    """:func:`check_fake_devices` over the positional ``args`` of ``fastunlearn::op``."""
    schema = getattr(torch.ops.fastunlearn, op).default._schema
    check_fake_devices(op, zip((a.name for a in schema.arguments), args, strict=False))
