"""Checks of the certified estimator's settings, each naming it as ``argument '<name>'``.

A value of the wrong type is a TypeError (a bool is not a number, an int is not a flag, a
float is not a count); a value of the right type that is out of range is a ValueError. The
estimator checks its settings where it reads them (``fit``, ``remove``), as scikit-learn
requires, and :meth:`~fastunlearn.certified.state.ModelState.from_state` reads a device
argument with the same check.
"""

from __future__ import annotations

import torch

from .._device import parse_device
from .._numbers import as_float, as_int, check_flag, is_integer, is_real

__all__ = ["check_flag", "device_setting", "int_setting", "real_setting"]


def real_setting(name: str, value: object) -> float:
    """Return a real setting as a float (an int beyond the float range as +-inf).

    Raises:
        TypeError: If ``value`` is not a Python or NumPy real number (a bool is not one).

    """
    if not is_real(value):
        raise TypeError(f"argument '{name}' must be a real number, got "
                        f"{type(value).__name__} {value!r}")
    return as_float(value)


def int_setting(name: str, value: object, minimum: int, what: str) -> int:
    """Return an integer setting >= ``minimum`` as a Python int.

    Args:
        name: The setting, named in the errors.
        value: Its value.
        minimum: The smallest valid value.
        what: The expected value in words, e.g. ``"a non-negative int"``.

    Raises:
        TypeError: If ``value`` is not a Python or NumPy integer (a bool or float is not).
        ValueError: If it is below ``minimum``.

    """
    if not is_integer(value):
        raise TypeError(f"argument '{name}' must be {what}, got {type(value).__name__} "
                        f"{value!r}")
    number = as_int(value)
    if number < minimum:
        raise ValueError(f"argument '{name}' must be {what}, got {number!r}")
    return number


def device_setting(value: object, name: str = "device") -> torch.device:
    """Return ``value`` as a CPU or (visible) CUDA ``torch.device``.

    The library's one device parser (:func:`~fastunlearn._device.parse_device`), its errors
    naming ``name``.

    Raises:
        TypeError: If ``value`` is not a device string, a ``torch.device`` or a CUDA index.
        ValueError: If it names no CPU or visible CUDA device.

    """
    return parse_device(value, argument=name)
