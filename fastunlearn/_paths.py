"""Check a path argument before anything is read, drawn or written with it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_file_path", "check_output_file", "check_path"]


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
        ValueError: ``path`` is empty, names an existing folder, or cannot name a file (a
            name longer than the file system allows).

    """
    out = check_path(path, argument)
    try:
        is_dir = out.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ValueError(f"'{argument}' {str(out)!r} cannot name a file "
                         f"({exc.strerror or exc})") from None
    if is_dir:
        raise ValueError(f"'{argument}' {str(out)!r} is a folder, expected a file")
    return out


def check_output_file(
    path: object, argument: str = "path", *, create_parents: bool = False
) -> Path:
    """:func:`check_file_path` for a file about to be written: its folder must be usable.

    Nothing is created or changed here. By default the parent folder must exist (the writer
    does not create it); with ``create_parents`` it may be missing (the writer creates it),
    but no existing entry on the way to it may be a file.

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike``.
        ValueError: ``path`` is empty or names an existing folder, or its parent (or, with
            ``create_parents``, the nearest existing entry above it) is not a folder.
        FileNotFoundError: The parent folder does not exist (without ``create_parents``).

    """
    out = check_file_path(path, argument)
    parent = out.parent
    if create_parents:
        # the nearest entry that exists on the way up (nothing exists below a file)
        while not os.path.lexists(parent) and parent.parent != parent:
            parent = parent.parent
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise ValueError(f"'{argument}' {str(out)!r}: {str(parent)!r} exists and is not a "
                         "folder")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"'{argument}' {str(out)!r}: folder {str(parent)!r} does not "
                                "exist")
    return out
