"""Check a path argument before anything is read, drawn or written with it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_file_path", "check_path"]


def check_path(path: object, argument: str = "path") -> Path:
    """``path`` as a Path; refuses other types and the empty string (not the current folder).

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike``.
        ValueError: ``path`` is empty.

    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"'{argument}' must be a str or os.PathLike, got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError(f"'{argument}' is empty")
    return Path(path)


def check_file_path(path: object, argument: str = "path") -> Path:
    """:func:`check_path` for a file: an existing folder is refused as well.

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike``.
        ValueError: ``path`` is empty or names an existing folder.

    """
    out = check_path(path, argument)
    if out.is_dir():
        raise ValueError(f"'{argument}' {str(out)!r} is a folder, expected a file")
    return out
