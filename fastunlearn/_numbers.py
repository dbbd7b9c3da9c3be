"""Real numbers given as arguments: Python ints may lie beyond the float range.

``float(10**400)`` and ``math.isfinite(10**400)`` raise OverflowError; argument checks treat
such an int as infinite instead, so it is refused like ``inf`` with a message naming the
argument.

NumPy scalars are numbers too: ``np.int64`` (``np.arange``) where an int is taken,
``np.float32`` where a real is, ``np.bool_`` where a flag is; checks accept them with
:func:`is_integer`, :func:`is_real` and :func:`is_flag` and pass the Python value on
(:func:`as_int`, :func:`as_float`, ``bool``), so configs and JSON hold plain Python values.
Bools are not numbers here (``True`` as a count or a rate is a mistake).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import SupportsFloat, SupportsIndex, cast

import numpy as np

__all__ = [
    "MAX_SEED",
    "as_float",
    "as_int",
    "as_plain",
    "check_flag",
    "check_fraction",
    "check_int",
    "check_real",
    "check_seed",
    "is_finite",
    "is_flag",
    "is_integer",
    "is_real",
    "plain_fields",
]


def is_integer(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy integer (not a bool or ``np.bool_``)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy real number (not a bool or ``np.bool_``)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_flag(value: object) -> bool:
    """Whether ``value`` is a bool or a NumPy bool."""
    return isinstance(value, (bool, np.bool_))


def check_flag(name: str, value: object) -> bool:
    """Return a flag argument as a Python bool: a bool or ``np.bool_`` only.

    The library's one check of a flag (a string such as ``"no"`` is truthy, ``1`` is a
    number: both would silently pass as a setting the caller did not mean).

    Raises:
        TypeError: ``value`` is not a bool, naming ``name``.

    """
    if not is_flag(value):
        raise TypeError(f"'{name}' must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


#: Largest seed of a ``torch.Generator`` (an unsigned 64-bit integer). A negative seed is
#: refused: the generator would alias it onto another one silently.
MAX_SEED = 2**64 - 1


def check_int(name: str, value: object, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return an integer argument as a Python int, checked to lie in ``[minimum, maximum]``.

    The library's check of a count or an index given as an argument (``np.int64`` is
    accepted; a bool or a float is not an int).

    Raises:
        TypeError: ``value`` is not a Python or NumPy integer, naming ``name``.
        ValueError: It is below ``minimum`` or above ``maximum`` (when given).

    """
    if not is_integer(value):
        raise TypeError(f"'{name}' must be an int, got {type(value).__name__} {value!r}")
    number = as_int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"'{name}' must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"'{name}' must be <= {_power_of_two_text(maximum)}, got {number}")
    return number


def check_seed(name: str, value: object, maximum: int = MAX_SEED) -> int:
    """Return a seed as a Python int, checked to lie in ``[0, maximum]``.

    ``maximum`` defaults to a ``torch.Generator``'s range; a caller that adds offsets to the
    seed or passes it to a smaller generator gives its own.

    Raises:
        TypeError: ``value`` is not a Python or NumPy integer, naming ``name``.
        ValueError: It is negative or above ``maximum``.

    """
    bound = _power_of_two_text(maximum)
    if not is_integer(value):
        raise TypeError(f"'{name}' must be an int in [0, {bound}], got "
                        f"{type(value).__name__} {value!r}")
    number = as_int(value)
    if not 0 <= number <= maximum:
        raise ValueError(f"'{name}' must be an int in [0, {bound}], got {number}")
    return number


def _power_of_two_text(maximum: int) -> str:
    """``2**64 - 1`` for 18446744073709551615, the number itself otherwise."""
    top = maximum + 1
    if top > 1024 and top & (top - 1) == 0:
        return f"2**{top.bit_length() - 1} - 1"
    return str(maximum)


def check_real(name: str, value: object, *, positive: bool = False) -> float:
    """Return a finite real argument ``>= 0`` (``> 0`` with ``positive``) as a float.

    The library's check of a rate, a tolerance or a weight given as an argument (NumPy
    reals are accepted; a bool is not a number; an int beyond the float range is infinite).

    Raises:
        TypeError: ``value`` is not a Python or NumPy real number, naming ``name``.
        ValueError: It is not finite, is negative, or is 0 with ``positive``.

    """
    if not is_real(value):
        raise TypeError(f"'{name}' must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    number = as_float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"'{name}' must be finite and {'> 0' if positive else '>= 0'}, "
                         f"got {number}")
    return number


def check_fraction(name: str, value: object, *, zero: bool = False, one: bool = False) -> float:
    """Return a fraction argument as a float in ``(0, 1)``; ``zero`` / ``one`` close the ends.

    The library's check of a split fraction, a probability or a ratio given as an argument:
    ``(0, 1)`` by default, ``(0, 1]`` with ``one``, ``[0, 1)`` with ``zero``. NumPy reals are
    accepted; a bool is not a number; NaN is refused.

    Raises:
        TypeError: ``value`` is not a Python or NumPy real number, naming ``name``.
        ValueError: It lies outside the interval, which the message spells out.

    """
    if not is_real(value):
        raise TypeError(f"'{name}' must be a real number, got {type(value).__name__} "
                        f"{value!r}")
    number = as_float(value)
    above = number >= 0 if zero else number > 0
    below = number <= 1 if one else number < 1
    if not (above and below):  # NaN fails both
        interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
        raise ValueError(f"'{name}' must be in {interval}, got {number}")
    return number


def as_int(value: object) -> int:
    """Return the Python int of an integer (``np.int64(3)`` -> ``3``)."""
    # Callers check the value with is_integer first (Python or NumPy integer).
    return int(cast(SupportsIndex, value))


def is_finite(value: object) -> bool:
    """Whether a real number is finite (an int beyond the float range is not)."""
    try:
        return math.isfinite(cast(SupportsFloat, value))
    except OverflowError:
        return False


def as_float(value: object) -> float:
    """``float(value)``, with an int beyond the float range as a signed infinity."""
    try:
        return float(cast(SupportsFloat, value))
    except OverflowError:
        # Only an exact real (an int) overflows; it compares with 0 as an int does.
        return math.inf if cast(int, value) > 0 else -math.inf


def as_plain(value: object) -> object:
    """Return a NumPy bool, integer or real scalar as the Python value, anything else as is.

    Tuples and lists are converted element by element (``columns=(np.int64(3),)``).
    """
    if isinstance(value, np.generic):
        if is_flag(value):
            return bool(value)
        if is_integer(value):
            return as_int(value)
        if is_real(value):
            return as_float(value)
        return value
    if isinstance(value, (tuple, list)) and any(isinstance(v, np.generic) for v in value):
        return type(value)(as_plain(v) for v in value)
    return value


def plain_fields(config: object) -> None:
    """Replace NumPy scalars in a dataclass's fields by the Python values (in place).

    Configs built with ``np.int64(2)`` then equal those built with ``2``, and their
    ``asdict`` and JSON are the same; the values are checked where the config is used.
    Frozen dataclasses too.

    Raises:
        TypeError: ``config`` is not a dataclass instance.

    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"'config' must be a dataclass instance, got {type(config).__name__}")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        plain = as_plain(value)
        if plain is not value:
            object.__setattr__(config, f.name, plain)
