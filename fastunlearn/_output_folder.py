"""The one check every command makes of its output folder before its long work.

Each command calls :func:`check_output_folder` before fitting, training or evaluating, so
a mistyped or unwritable output path costs an error message, not the run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ._paths import check_path

__all__ = ["check_output_folder"]


def _entry_exists(path: Path) -> bool:
    """Whether an entry (a broken symbolic link too) is at ``path``.

    Raises:
        OSError: ``path`` cannot name an entry (a name too long, ...).
        ValueError: ``path`` holds a NUL byte.

    """
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def check_output_folder(folder: str | os.PathLike[str], *, argument: str,
                        names: Sequence[str] = ()) -> Path:
    """Raise ValueError unless results can be written into ``folder``; return it as a Path.

    ``folder`` may be missing (the command creates it later); then the nearest existing
    folder above it must be writable. Writability is tried, not only read from the
    permission bits (root passes those everywhere, and a folder such as ``/proc`` takes
    no new entries whatever they say): an empty probe folder is created in that nearest
    existing folder and removed at once. Nothing else is created or changed here.

    Args:
        folder: The output folder a command was given.
        argument: Its argument name, quoted in the error (e.g. ``"result_dir"``).
        names: File names the command will write into ``folder``; none may be a folder.

    Raises:
        TypeError: ``folder`` is not a str or ``os.PathLike``.
        ValueError: ``folder`` is empty (``"."`` names the current folder), it or an entry
            above it is a file or a broken symbolic link, a name in it is too long, the
            nearest existing folder is not writable or takes no new entries, or one of
            ``names`` in it is a folder.

    """
    path = check_path(folder, argument)
    existing = path
    try:  # a broken symbolic link is in the way too (the folder cannot be made there)
        while not _entry_exists(existing) and existing.parent != existing:
            existing = existing.parent
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise ValueError(f"'{argument}' {str(folder)!r} cannot be a folder "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    if existing.is_symlink() and not existing.exists():
        raise ValueError(f"'{argument}' {str(folder)!r}: {str(existing)!r} is a broken "
                         "symbolic link")
    if not existing.is_dir():
        raise ValueError(f"'{argument}' {str(folder)!r}: {str(existing)!r} exists and is "
                         "not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"'{argument}' {str(folder)!r}: {str(existing)!r} is not writable")
    try:  # e.g. /proc, a read-only mount, or no space left for even a folder entry
        os.rmdir(tempfile.mkdtemp(prefix=".fastunlearn-write-check-", dir=existing))
    except OSError as exc:
        raise ValueError(f"'{argument}' {str(folder)!r}: nothing can be created in "
                         f"{str(existing)!r} ({exc.strerror or exc})") from None
    for name in names:
        if (path / name).is_dir():
            raise ValueError(f"'{argument}' {str(folder)!r}: {name!r} in it is a folder")
    return path
