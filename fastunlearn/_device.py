"""The one parser of a user's device argument, shared by every experiment and command."""

from __future__ import annotations

import torch

__all__ = ["parse_device"]


def parse_device(spec: object, *, argument: str = "device") -> torch.device:
    """Return ``spec`` as a CPU or visible CUDA device, or raise ValueError naming it.

    Args:
        spec: ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or a ``torch.device``.
        argument: Its argument name, quoted in the errors.

    Raises:
        ValueError: ``spec`` is not such a device (torch's own parse raises RuntimeError),
            is another device type (``meta``, ``mps``, ...), or names a CUDA device this
            process cannot see.

    """
    bad = f"'{argument}' must be cpu, cuda or cuda:<index>, got {spec!r}"
    try:
        device = torch.device(spec)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(bad) from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(bad)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"'{argument}' is {spec!r} but no CUDA GPU is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"'{argument}' {spec!r}: only {torch.cuda.device_count()} CUDA "
                             "GPU(s) are visible")
    return device
