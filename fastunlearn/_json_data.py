"""The one way results become strict JSON: non-finite floats as ``"inf"``, ``"-inf"``, ``"nan"``.

``json.dumps`` writes the tokens ``Infinity`` / ``NaN`` for such floats, which are not JSON:
jq, JavaScript and most other parsers reject the file. Writing ``null`` instead would lose
what the value was (an infinite epsilon - no privacy at all - would read like a value that
was never computed), so every command's JSON (``remove``, ``repair``, ``unlearn-features``,
``canary``, ``exposure``, ``evaluate``, ``forget``) writes the strings, and ``float()``
reads them back. ``None`` stays ``null``: a value that does not apply or was not measured.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["NON_FINITE_STRINGS", "json_ready"]

#: What :func:`json_ready` writes for ``inf``, ``-inf`` and ``nan``.
NON_FINITE_STRINGS = ("inf", "-inf", "nan")


def json_ready(value: Any) -> Any:
    """Return ``value`` as strict JSON data (``json.dumps(..., allow_nan=False)`` accepts it).

    Mappings become dicts with string keys, tuples and lists lists, tensors and numpy
    arrays (nested) lists, numpy scalars Python numbers and bools; non-finite floats (also
    inside tensors and arrays) become ``"inf"``, ``"-inf"`` or ``"nan"``. Anything else is
    returned as it is.
    """
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    # NumPy is imported only when a value could be one of its scalars (the commands build
    # their parsers without it)
    np = sys.modules.get("numpy")
    if isinstance(value, float) or (np is not None and isinstance(value, np.floating)):
        # numpy.float64 is a float subclass; np.longdouble is not (its tolist() returns it)
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if np is not None and isinstance(value, np.generic):  # other scalars: the Python value
        item = value.item()
        return value if isinstance(item, np.generic) else json_ready(item)
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, (str, bytes)):  # tensors, numpy arrays
        return json_ready(tolist())
    return value
