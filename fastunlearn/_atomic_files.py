"""Write result files whole or not at all: a temporary name beside the file, then a rename.

A run interrupted (Ctrl-C, a full disk, a killed job) while writing ``results.json`` in place
leaves a truncated file that looks like a result; written here, the file keeps its old
content or gets the new one, and the temporary file is removed on any failure.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["default_permissions", "permissions_for_replacement", "replace_atomically",
           "save_figure", "swap_in_folder", "write_text"]


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """Return the process's umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and put back at once (the only portable read)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_permissions(path: str | os.PathLike[str]) -> None:
    """Give the file at ``path`` the permissions a newly created file gets (``0o666 & ~umask``).

    Writers that create their file privately (safetensors' ``save_file``,
    ``tempfile.mkstemp``: mode 0600) would otherwise leave model and feature files
    unreadable to the group and others while the JSON, Markdown and PNG beside them are not.
    """
    os.chmod(path, 0o666 & ~_umask())


def permissions_for_replacement(
    tmp: str | os.PathLike[str], existing: str | os.PathLike[str]
) -> None:
    """Give ``tmp`` the permission bits of the file at ``existing`` (following a link).

    Where there is none, ``tmp`` gets :func:`default_permissions`. A file about to be
    replaced by ``tmp`` so keeps its mode: a model or checkpoint made private with
    ``chmod 600`` stays private when it is written again.
    """
    try:
        info = os.stat(existing)
    except OSError:  # no file there (or a broken link): a new file
        default_permissions(tmp)
        return
    if stat.S_ISREG(info.st_mode):
        os.chmod(tmp, stat.S_IMODE(info.st_mode))
    else:
        default_permissions(tmp)


def replace_atomically(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``.

    A file already at ``path`` keeps its permission bits (a model made private with
    ``chmod 600`` stays private); a new file gets :func:`default_permissions`. Where ``path``
    is a symbolic link, the file it points to is replaced and the link kept, as writing
    through ``open(path, "w")`` does.

    Args:
        path: The file to write (its folder must exist).
        write: Writes the whole content to the path it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` or the rename raises (KeyboardInterrupt too); the temporary file
        is removed first and ``path`` is left as it was.

    """
    given = Path(path)
    out = Path(os.path.realpath(given)) if given.is_symlink() else given
    # the name cut so that a file name near the 255-byte limit still leaves room
    tmp = out.with_name(f".{out.name[:200]}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        mode = stat.S_IMODE(os.stat(out).st_mode) if out.is_file() else None
        write(tmp)
        if mode is None:
            default_permissions(tmp)  # some writers create their file private (0600)
        else:
            os.chmod(tmp, mode)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return given


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`replace_atomically`)."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure as PNG at ``path`` atomically (folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return replace_atomically(out, lambda tmp: fig.savefig(tmp, format="png"))


def swap_in_folder(new: Path, root: Path) -> None:
    """Put the fully written folder ``new`` at ``root``, replacing what is there.

    Renames only: ``root`` is first moved aside, then ``new`` takes its place; if that fails
    or is interrupted (KeyboardInterrupt too), the earlier folder goes back in place. An
    empty or missing ``root`` is replaced in one atomic rename.
    """
    if not root.exists() or not any(root.iterdir()):
        os.replace(new, root)
        return
    old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(root, old)
    try:
        os.replace(new, root)
    except BaseException:
        os.replace(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)
