"""The one wording of "these settings do nothing here": ``'a' and 'b' have no effect <why>``.

Used by the commands' unused-flag warnings (:func:`fastunlearn.cli_types.warn_unused_flags`)
and by the configs that name fields their method ignores (:mod:`fastunlearn.forget.base`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["no_effect_message"]


def no_effect_message(names: Sequence[str], why: str) -> str:
    """Return ``'a', 'b' and 'c' have no effect <why>`` (``has`` for one name).

    Args:
        names: The settings (flags or fields), at least one, unquoted.
        why: The rest of the sentence, e.g. ``"with '--solver cholesky' (for the CG solver)"``.

    Raises:
        ValueError: ``names`` is empty.

    """
    if not names:
        raise ValueError("'names' must name at least one setting")
    quoted = [f"'{name}'" for name in names]
    listed = ", ".join(quoted[:-1]) + (" and " if len(quoted) > 1 else "") + quoted[-1]
    return f"{listed} {'has' if len(quoted) == 1 else 'have'} no effect {why}"
