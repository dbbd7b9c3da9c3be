"""The one check that a result dict handed to a report writer is what its producer returns.

Report writers read nested entries (``result["config"]["model"]``); given something else (a
hand-made dict, an older file's content) they would fail with a KeyError naming nothing the
caller passed, after creating their output folder. Each writer calls
:func:`check_result_shape` first, with the entries it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_result_shape", "require_entries"]


def check_result_shape(
    result: object,
    producer: str,
    sections: Mapping[str, Iterable[str]],
    entries: Iterable[str] = (),
) -> dict[str, Any]:
    """Return ``result`` if it holds what a ``producer`` result holds; else name the gap.

    Args:
        result: The object given as a result.
        producer: The function whose result it must be (named in the errors).
        sections: Top-level keys whose values must be dicts, with the entries each holds.
        entries: Other top-level keys it must hold.

    Raises:
        TypeError: ``result`` is not a dict.
        ValueError: A key is missing or a section is not a dict (the message names it).

    """
    if not isinstance(result, dict):
        raise TypeError(f"'result' must be the dict {producer} returns, got "
                        f"{type(result).__name__}")
    not_one = f"'result' is not a {producer} result"
    missing = [key for key in (*sections, *entries) if key not in result]
    if missing:
        raise ValueError(f"{not_one}: it lacks {missing}")
    for section, keys in sections.items():
        if not isinstance(result[section], dict):
            raise ValueError(f"{not_one}: result[{section!r}] is not a dict")
        require_entries(result, producer, section, keys)
    return result


def require_entries(result: dict[str, Any], producer: str, section: str,
                    keys: Iterable[str]) -> None:
    """Raise ValueError naming the ``keys`` that ``result[section]`` (a dict) lacks."""
    missing = [key for key in keys if key not in result[section]]
    if missing:
        raise ValueError(f"'result' is not a {producer} result: result[{section!r}] lacks "
                         f"{missing}")
