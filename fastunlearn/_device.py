"""The one parser of a user's device argument, shared by every experiment and command."""

from __future__ import annotations

import torch

from ._numbers import as_int, is_integer

__all__ = ["parse_device"]


def parse_device(spec: object, *, argument: str = "device") -> torch.device:
    """Return ``spec`` as a CPU or visible CUDA device, or raise an error naming it.

    Args:
        spec: ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, a ``torch.device`` or a CUDA index
            (a Python or NumPy int, as ``torch.device`` reads one).
        argument: Its argument name, quoted in the errors.

    Raises:
        TypeError: ``spec`` is none of those types (a float, a bool, a list, ...).
        ValueError: ``spec`` is not such a device (torch's own parse raises RuntimeError),
            is another device type (``meta``, ``mps``, ...), or names a CUDA device this
            process cannot see.

    """
    if not isinstance(spec, (str, torch.device)) and not is_integer(spec):
        raise TypeError(f"'{argument}' must be a device string (cpu, cuda or cuda:<index>), "
                        f"a torch.device or a CUDA index, got {type(spec).__name__} {spec!r}")
    if is_integer(spec):
        spec = as_int(spec)
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
