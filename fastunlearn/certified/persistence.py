"""Crash-safe persistence of certified models: safetensors state file plus removal ledger.

File format (``FORMAT_VERSION`` 1): one safetensors file holding the tensors of
``model.get_state()`` and, in the safetensors metadata header, one key ``"fastunlearn"`` whose
value is a JSON object::

    {"format": "fastunlearn.certified", "format_version": 1, "model_class": "...",
     "state": <meta dict of get_state()>, "checksums": {tensor name: crc32 hex},
     "ledger_seq": int or null, "last_record": dict or null, "lineage": str (checkpoints),
     "header_crc32": hex}

Loading goes through safetensors only: nothing is ever unpickled, so a file cannot run code.
The CRC-32 of every tensor and of the header itself (its canonical JSON without the
``header_crc32`` key) is checked, so a damaged file raises instead of loading wrong data; the
model's ``from_state`` then re-validates the decoded values (parameters, budget, shapes).

Every write is atomic: the file is written under a temporary name in the same directory,
flushed and fsynced, renamed over the target with :func:`os.replace`, and the directory is
fsynced, so the target always holds either the old or the new complete state.

:func:`checkpoint` writes the state first (carrying the new ledger record and its ``seq``) and
appends the record to ``<path>.ledger.jsonl`` second. :func:`load_model` then repairs whatever
a crash left: a torn ledger line is cut, a record present in the state but missing from the
ledger is appended, records beyond the state's ``seq`` are dropped. A process killed at any
moment of a removal therefore loads as the model before or after that removal, with a ledger
that ends with the record of exactly that state. Checkpoints and repairs hold an exclusive
``flock`` on the ledger, so a reader in another process never repairs around a live writer.

A checkpoint path has one writer at a time. Every ``fit`` checkpoint starts a new *lineage* (a
random id kept in the header, next to ``ledger_seq``); the model remembers the path, lineage
and ``seq`` of its last write (or of the file it was loaded from). Any other event is refused
with ValueError, before the model changes, when the file was written by someone else since:
a copy of the model (``clone`` + ``fit``, ``deepcopy``, pickling; the first to write wins) or
another model whose path was set after fitting. A ``fit`` may always start a new lineage over a
path; the ledger keeps the older records.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .._atomic_files import permissions_for_replacement
from .._numbers import is_flag
from .._paths import check_file_path
from ._settings import device_setting
from .ledger import (
    RemovalLedger,
    _crash_point,
    _dumps,
    _to_json_value,
    fsync_directory,
    ledger_path,
    normalize_record,
)

__all__ = [
    "FORMAT_VERSION",
    "check_checkpoint_owner",
    "checkpoint",
    "ledger_path",
    "load_model",
    "read_metadata",
    "save_model",
]

FORMAT_NAME = "fastunlearn.certified"
DATA_FORMAT_NAME = "fastunlearn.certified.data"
_DATA_REQUIRED = (("data_id", str), ("checksums", dict))
FORMAT_VERSION = 1
METADATA_KEY = "fastunlearn"
_TMP_MARK = ".tmp-"
# safetensors: an 8-byte little-endian header length, then that many bytes of JSON.
_MAX_HEADER = 100_000_000
# Header key holding the CRC-32 of the rest of the header (absent in files written before it).
_HEADER_CRC = "header_crc32"
# Model attribute remembering the checkpoint it last wrote: (path key, lineage, ledger seq).
_MARK = "_checkpoint_mark"


class _FromState(Protocol):
    """A model class as :func:`load_model` takes it: one with a ``from_state`` classmethod."""

    def from_state(
        self, tensors: dict[str, torch.Tensor], meta: Any, *, device: Any = None
    ) -> Any: ...


# ---------------------------------------------------------------------- reading
def _not_safetensors(path: Path, head: bytes) -> str:
    """Explain what a non-safetensors file looks like, for the error message."""
    if head[:1] == b"\x80":
        return "it looks like a Python pickle, which is never loaded (it could run code)"
    if head[:4] == b"PK\x03\x04":
        return "it looks like a torch.save zip archive (pickle inside), which is never loaded"
    return "it is not a safetensors file"


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the fastunlearn header of a model file without loading tensors.

    Args:
        path: a file written by :func:`save_model`.

    Returns:
        The decoded header dict (``format``, ``format_version``, ``state``, ``checksums``,
        ``ledger_seq``, ``last_record``, ...).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TypeError, ValueError: ``path`` is not a path, is empty or names a folder.
        ValueError: the file is not a safetensors file written by fastunlearn, is truncated or
            corrupt, or has an unknown format version.

    """
    return _read_header(check_file_path(path), FORMAT_NAME,
                        (("state", dict), ("checksums", dict)))


def _read_header(
    p: Path, format_name: str, required: tuple[tuple[str, type], ...]
) -> dict[str, Any]:
    """Read and check the fastunlearn header of ``p`` (format ``format_name``)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            size = os.fstat(fh.fileno()).st_size
            if len(head) < 8:
                raise ValueError(f"model file {str(p)!r} is truncated ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n <= 1 or n > min(_MAX_HEADER, size - 8):
                raise ValueError(
                    f"model file {str(p)!r} is corrupt: {_not_safetensors(p, head)} "
                    f"(header length {n}, file size {size})"
                )
            raw = fh.read(n)
    except FileNotFoundError:
        raise FileNotFoundError(f"model file {str(p)!r} does not exist") from None
    try:
        header = json.loads(raw)
        text = header["__metadata__"][METADATA_KEY]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValueError(
            f"model file {str(p)!r} is corrupt or was not written by fastunlearn: its "
            f"safetensors header has no '{METADATA_KEY}' metadata"
        ) from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"model file {str(p)!r} has corrupt metadata: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise ValueError(f"model file {str(p)!r} is not a {format_name} file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"model file {str(p)!r} has format version {version!r}; this fastunlearn reads "
            f"version {FORMAT_VERSION} only (a newer fastunlearn may have written it)"
        )
    stored = meta.pop(_HEADER_CRC, None)
    if stored is not None and stored != _header_checksum(meta):
        raise ValueError(f"model file {str(p)!r} is corrupt: checksum mismatch in its header")
    for key, kind in required:
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"model file {str(p)!r} has corrupt metadata: no '{key}' object")
    return meta


def _header_checksum(header: Mapping[str, Any]) -> str:
    """CRC-32 of the header's canonical JSON (sorted keys, no ``header_crc32`` key)."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), default=_to_json_value)
    return f"{zlib.crc32(text.encode('utf-8')) & 0xFFFFFFFF:08x}"


def _checksum(tensor: torch.Tensor) -> str:
    raw = tensor.detach().reshape(-1).view(torch.uint8).numpy()
    # numpy's stubs declare ndarray's buffer protocol (__buffer__) only for Python >= 3.12
    return f"{zlib.crc32(memoryview(raw)) & 0xFFFFFFFF:08x}"  # type: ignore[arg-type]


def _file_id(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _load_tensors(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; ValueError if it cannot be parsed."""
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{kind} file {str(path)!r} is corrupt: {err}") from None


def _read_state_once(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = read_metadata(path)
    tensors = _load_tensors(path, "model")
    sums = meta["checksums"]
    if set(sums) != set(tensors):
        raise ValueError(
            f"model file {str(path)!r} is corrupt: tensors {sorted(tensors)} do not match the "
            f"recorded names {sorted(sums)}"
        )
    for name, tensor in tensors.items():
        if _checksum(tensor) != sums[name]:
            raise ValueError(
                f"model file {str(path)!r} is corrupt: checksum mismatch in tensor {name!r}"
            )
    if meta.get("data_file") is not None:
        tensors.update(_read_data_file(path, meta))
    return tensors, meta


def _read_data_file(path: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read the tensors a checkpoint keeps in its data file, checked against its header."""
    name, sums = meta.get("data_file"), meta.get("data_checksums")
    if not isinstance(name, str) or "/" in name or os.sep in name or not isinstance(sums, dict):
        raise ValueError(f"model file {str(path)!r} has corrupt data-file metadata")
    data_path = path.parent / name
    if not data_path.exists():
        raise ValueError(
            f"model file {str(path)!r} keeps its training data in {str(data_path)!r}, which "
            "is missing: a checkpoint is the model file, its data file and its ledger; copy "
            "them together (or use save() for one self-contained file)"
        )
    _read_header(data_path, DATA_FORMAT_NAME, _DATA_REQUIRED)
    data = _load_tensors(data_path, "data")
    if set(data) != set(sums) or any(_checksum(t) != sums[k] for k, t in data.items()):
        raise ValueError(
            f"data file {str(data_path)!r} does not match model file {str(path)!r} (checksum "
            "mismatch)"
        )
    return data


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Header and tensors of one and the same version of ``path``.

    The header and the tensors are read by two opens; a writer replacing the file in between
    (``os.replace`` gives it a new inode) is detected and the read retried.
    """
    for attempt in range(3):
        try:
            before = _file_id(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"model file {str(path)!r} does not exist") from None
        try:
            state = _read_state_once(path)
        except (ValueError, FileNotFoundError):
            if attempt < 2 and _exists_changed(path, before):
                continue
            raise
        if not _exists_changed(path, before):
            return state
    raise ValueError(f"model file {str(path)!r} kept changing while being read")


def _exists_changed(path: Path, before: tuple[int, int, int]) -> bool:
    try:
        return _file_id(path) != before
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def _ledger_lock(book: RemovalLedger) -> Iterator[None]:
    """Hold an exclusive lock on the ledger for one checkpoint or one reconciliation.

    A writer (state file + ledger line) and a reader that repairs the ledger must not
    interleave: the reader could append the record the writer is about to append, or cut
    records the writer just wrote. The kernel drops the lock when its process dies, so a
    crashed writer never blocks recovery. Without ``fcntl`` (Windows) this is a no-op.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(book.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------- writing
def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-disjoint copies where needed (safetensors refuses aliasing)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(
                "model.get_state() must return tensors as dict[str, Tensor]; got entry "
                f"{name!r}: {type(tensor).__name__}"
            )
        t = tensor.detach().to("cpu").contiguous()
        key = t.untyped_storage().data_ptr()
        if t.numel() and key in seen:
            t = t.clone()
            key = t.untyped_storage().data_ptr()
        seen.add(key)
        out[name] = t
    return out


def _tmp_path(path: Path) -> Path:
    # Same directory (so os.replace is an atomic rename); pid in the name so a later writer can
    # tell files abandoned by dead processes from a live writer's.
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove_stale_tmp(path: Path) -> None:
    """Delete temporary files that killed writers left next to ``path``.

    Those of the model file itself and of its data files (``<name>.data-<id>.safetensors``,
    as large as the training data), written by a process that no longer runs.
    """
    pattern = re.compile(
        rf"\.{re.escape(path.name)}(?:\.data-[0-9A-Za-z]+\.safetensors)?"
        rf"{re.escape(_TMP_MARK)}(\d+)-"
    )
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        try:
            pid = int(match.group(1))
            if pid == os.getpid():
                continue
            os.kill(pid, 0)  # raises if no such process: the writer is gone
        except ProcessLookupError:
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass
        except (ValueError, OSError):
            continue


def save_model(
    model: Any,
    path: str | os.PathLike[str],
    *,
    ledger_seq: int | None = None,
    last_record: Mapping[str, Any] | None = None,
    lineage: str | None = None,
) -> Path:
    """Write ``model.get_state()`` to one safetensors file, atomically and durably.

    Args:
        model: an object with ``get_state() -> (dict[str, Tensor], dict)`` (a fitted
            :class:`~fastunlearn.certified.estimator.CertifiedLogisticRegression`).
        path: target file; its directory must exist. An existing file is replaced.
        ledger_seq: sequence number of the ledger record this state corresponds to (set by
            :func:`checkpoint`; leave ``None`` for a plain save).
        last_record: that ledger record (set by :func:`checkpoint`).
        lineage: id of the run of checkpoints this state belongs to (set by
            :func:`checkpoint`; kept in the header of checkpoint files only).

    Returns:
        The path written.

    Raises:
        TypeError: ``get_state()`` returned something other than ``(dict[str, Tensor], dict)``
            or its meta is not JSON-serialisable.
        FileNotFoundError: the directory of ``path`` does not exist.
        OSError: the file cannot be written there (e.g. in ``/proc``, or the disk is full;
            the message names ``path``, safetensors' error is chained); no temporary file is
            left and a file already at ``path`` is kept as it was.
        TypeError, ValueError: ``path`` is not a path, is empty or names a folder.

    """
    p = check_file_path(path)
    if not p.parent.is_dir():
        raise FileNotFoundError(f"directory {str(p.parent)!r} of 'path' does not exist")
    data = _DataFile.plan(model, p) if ledger_seq is not None else None
    state = model.get_state() if data is None else data.state(model)
    if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping)):
        raise TypeError("model.get_state() must return (dict[str, Tensor], dict)")
    tensors = _prepare_tensors(state[0])
    header: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "state": dict(state[1]),
        "ledger_seq": ledger_seq,
        "last_record": None if last_record is None else normalize_record(last_record),
    }
    if ledger_seq is not None:
        header["lineage"] = lineage
    if data is not None:
        header.update(data_file=data.name, data_checksums=data.write(tensors))
    header["checksums"] = {name: _checksum(t) for name, t in tensors.items()}
    _write_atomically(p, tensors, header)
    _crash_point("after_replace")
    fsync_directory(p.parent)
    if data is not None:
        data.remove_others()
    return p


def _write_atomically(
    p: Path,
    tensors: dict[str, torch.Tensor],
    header: dict[str, Any],
    crash_point: str = "before_replace",
    permissions_of: Path | None = None,
) -> None:
    """Write ``tensors`` with ``header`` (plus its CRC) to ``p`` by fsync + rename.

    The file gets the permission bits of ``permissions_of`` (default: ``p``) where that
    file exists, else those of a new file: a checkpoint made private stays private.
    """
    try:
        header = normalize_record(header)  # as it reads back, so the checksum matches
        header[_HEADER_CRC] = _header_checksum(header)
        text = _dumps(header)
    except TypeError as err:
        raise TypeError(f"model.get_state() meta is not JSON-serialisable: {err}") from None
    tmp = _tmp_path(p)
    try:
        try:
            save_file(tensors, tmp, metadata={METADATA_KEY: text})
        except SafetensorError as err:  # e.g. an I/O error: neither OSError nor ValueError
            raise OSError(f"cannot write {str(p)!r}: {err}") from err
        # save_file closed (and so flushed) the file; now force the bytes to disk.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # save_file creates it private (0600): the mode of the file it replaces, or a new one's
        permissions_for_replacement(tmp, p if permissions_of is None else permissions_of)
        _crash_point(crash_point)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class _DataFile:
    """The training data of a checkpoint, in a file of its own written once per ``fit``.

    A model that names its fixed tensors (``STATIC_TENSORS``) and the fit they come from
    (``static_state_id()``) keeps them in ``<model file>.data-<id>.safetensors``: every
    later checkpoint of that fit reuses the file, so a removal rewrites the changing state
    only, not ``X``. The file is written (atomically) before the model file that refers to
    it and deleted only once no model file refers to it.
    """

    def __init__(self, path: Path, names: tuple[str, ...], data_id: str) -> None:
        self.path, self.names, self.data_id = path, names, data_id
        self.name = f"{path.name}.data-{data_id}.safetensors"
        self.file = path.parent / self.name
        self.checksums: dict[str, str] | None = None

    @classmethod
    def plan(cls, model: Any, path: Path) -> _DataFile | None:
        names = tuple(getattr(model, "STATIC_TENSORS", ()))
        get_id = getattr(model, "static_state_id", None)
        data_id = get_id() if names and callable(get_id) else None
        if not isinstance(data_id, str) or not data_id.isalnum():
            return None
        plan = cls(path, names, data_id)
        try:
            meta = _read_header(plan.file, DATA_FORMAT_NAME, _DATA_REQUIRED)
        except (FileNotFoundError, ValueError):
            return plan  # absent or damaged: written anew
        if meta["data_id"] == data_id and set(meta["checksums"]) == set(names):
            plan.checksums = dict(meta["checksums"])
        return plan

    def state(self, model: Any) -> Any:
        """``model.get_state()``, without copying the fixed tensors when the file has them."""
        if self.checksums is None:
            return model.get_state()
        return model.get_state(exclude=self.names)

    def write(self, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
        """Move the fixed tensors out of ``tensors`` into the file; return their checksums."""
        fixed = {name: tensors.pop(name) for name in self.names if name in tensors}
        if self.checksums is None:
            sums = {name: _checksum(t) for name, t in fixed.items()}
            header = {"format": DATA_FORMAT_NAME, "format_version": FORMAT_VERSION,
                      "data_id": self.data_id, "checksums": sums}
            # the training data file as private as the model file it belongs to
            _write_atomically(self.file, fixed, header, "data_before_replace",
                              permissions_of=self.path)
            fsync_directory(self.path.parent)
            self.checksums = sums
        return self.checksums

    def remove_others(self) -> None:
        """Delete this model file's data files of other fits (none is referenced now)."""
        prefix = f"{self.path.name}.data-"
        for entry in os.listdir(self.path.parent):
            if entry.startswith(prefix) and entry.endswith(".safetensors") and entry != self.name:
                with contextlib.suppress(OSError):
                    os.unlink(self.path.parent / entry)


# ---------------------------------------------------------------------- ownership
def _path_key(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _set_mark(model: Any, path: Path, lineage: Any, seq: int) -> None:
    """Remember that ``model`` wrote (or was loaded from) ``path`` at ``lineage``, ``seq``."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(model, _MARK, (_path_key(path), lineage, int(seq)))


def _foreign_writer(
    p: Path, model: Any, meta: Mapping[str, Any] | None, book: RemovalLedger
) -> str | None:
    """Why ``model`` may not write a non-``fit`` event to ``p``; ``None`` when it may.

    ``meta`` is the header of ``p`` (``None`` when there is no file). The model may write when
    the checkpoint file is the one it last wrote or loaded (same path, lineage and ``seq``),
    or when the path holds no checkpoint and no ledger records at all.
    """
    mark: Any = getattr(model, _MARK, None)  # (path key, lineage, seq) when ``mine``
    key = _path_key(p)
    mine = isinstance(mark, tuple) and len(mark) == 3 and mark[0] == key
    seq = None if meta is None else meta.get("ledger_seq")
    if seq is not None:
        meta = cast("Mapping[str, Any]", meta)  # a ledger seq was read from it
        if mine and mark[1] == meta.get("lineage") and mark[2] == seq:
            return None
        wrote = f"seq {mark[2]}" if mine else "nothing there"
        return f"the file is at ledger seq {seq}; this model last wrote {wrote}"
    last = book.last_seq()
    if last == 0 or (mine and mark[2] == last):
        return None
    return f"its ledger {str(book.path)!r} holds records up to seq {last} of another model"


def _owner_error(p: Path, why: str, event: str, outcome: str) -> ValueError:
    return ValueError(
        f"argument 'checkpoint' {str(p)!r} was written by another model (or another copy of "
        f"this one) since this model last wrote it ({why}); a {event} checkpointed there "
        "would mix two models' records in one ledger. Give each model, and each copy (clone, "
        "deepcopy, pickle), its own checkpoint path, or load the checkpoint (load(path)) and "
        f"go on with the loaded model; {outcome}"
    )


def check_checkpoint_owner(model: Any, event: str = "remove") -> None:
    """Raise ValueError unless ``model`` may checkpoint a non-``fit`` event to its path.

    Called before a removal or retrain changes anything; :func:`checkpoint` checks again
    under the ledger lock. See the module docstring for the rule.

    Args:
        model: model with ``checkpoint`` (a path, or ``None``: nothing to check).
        event: the event to be written (``"fit"`` is always allowed).

    Raises:
        ValueError: the checkpoint file (or ledger) at the path was written by another model
            since ``model`` last wrote it, or the file's header is corrupt.

    """
    target = getattr(model, "checkpoint", None)
    if target is None or target == "" or event == "fit":
        return
    p = Path(target)
    book = RemovalLedger(ledger_path(p))
    if not p.exists() and not book.path.exists():
        return
    meta = read_metadata(p) if p.exists() else None
    why = _foreign_writer(p, model, meta, book)
    if why is not None:
        raise _owner_error(p, why, event, "the model was not changed")


# ---------------------------------------------------------------------- ledger reconciliation
def _same_record(a: Any, b: Any) -> bool:
    # Compare as canonical JSON text: NaN equals NaN there, and key order does not matter.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _contradiction(path: Path, book: RemovalLedger, what: str) -> ValueError:
    return ValueError(
        f"ledger {str(book.path)!r} contradicts model file {str(path)!r}: {what} (no crash "
        "explains this; pass ledger=False to load_model to load the state alone)"
    )


def _reconcile(
    path: Path, meta: Mapping[str, Any], book: RemovalLedger, *, allow_rollback: bool = False
) -> int | None:
    """Make the ledger end with the record of the state in ``meta`` (see module docstring).

    Reads only the end of the ledger unless it ran ahead of the state. The ledger is never
    shortened: a torn last line is cut and a missing last record appended, nothing else.

    Returns:
        ``None``, or, when the ledger ran ahead of the state and ``allow_rollback`` is true,
        the ledger's last sequence number (the caller records the rollback).

    Raises:
        ValueError: the ledger contradicts the state in a way no crash of :func:`checkpoint`
            explains, ran ahead of the state (unless ``allow_rollback``), or is corrupt before
            its last line.

    """
    seq = meta.get("ledger_seq")
    last = meta.get("last_record")
    if seq is None:
        return None  # a plain save: no ledger belongs to it
    if (
        isinstance(seq, bool)
        or not isinstance(seq, int)
        or not isinstance(last, dict)
        or last.get("seq") != seq
    ):
        raise ValueError(f"model file {str(path)!r} has corrupt ledger metadata")
    tail = book.last_record()
    head = 0 if tail is None else int(tail["seq"])
    if head > seq:
        # The ledger ran ahead of the state (never produced by checkpoint's write order, but
        # e.g. an older copy of the model file put back).
        match = [rec for rec in book.records() if rec["seq"] == seq]
        if not match:
            raise _contradiction(path, book, f"the ledger has no record seq {seq}")
        if not _same_record(match[0], last):
            raise _contradiction(path, book, f"record seq {seq} differs from the model's")
        book.repair()
        if allow_rollback:
            return head
        raise ValueError(
            f"model file {str(path)!r} is older than its ledger {str(book.path)!r}: the file "
            f"holds the state of record seq {seq}, the ledger goes on to seq {head} (was an "
            "older copy of the file put back?). Loading it would undo the removals recorded "
            "after it; pass allow_rollback=True to load it and record the rollback in the "
            "ledger, or ledger=False to read the state alone (nothing written)"
        )
    if head == seq:
        if not _same_record(tail, last):
            raise _contradiction(path, book, f"record seq {seq} differs from the model's")
        book.repair()
    elif head == seq - 1:
        # Killed between the state write and the ledger append (maybe mid-line).
        book.repair()
        book.append(last)
    else:
        raise _contradiction(
            path,
            book,
            f"the model was checkpointed at seq {seq} but the ledger ends at seq {head}; only "
            "the last record can be missing after a crash",
        )
    return None


def _removed_ids(model: Any) -> list[int] | None:
    removed = getattr(model, "removed_indices_", None)
    return None if removed is None else sorted(int(i) for i in removed)


def _note_removed_before(model: Any, rec: dict[str, Any]) -> None:
    """Give the first record of a ledger started after ``fit`` the rows removed before it."""
    removed = _removed_ids(model)
    if removed is None or "removed_before" in rec:
        return
    idx = rec.get("indices")
    now = {int(idx)} if isinstance(idx, int) else {int(i) for i in (idx or [])}
    rec["removed_before"] = [i for i in removed if i not in now]


def _record_rollback(
    path: Path, model: Any, book: RemovalLedger, to_seq: int, head: int, lineage: Any
) -> None:
    """Checkpoint ``model`` (the state of record ``to_seq``) with a ``rollback`` record."""
    rec: dict[str, Any] = {
        "seq": head + 1,
        "event": "rollback",
        "to_seq": to_seq,
        "undone": head - to_seq,
        "indices": [],
        "time": time.time(),
    }
    removed = _removed_ids(model)
    if removed is not None:
        rec["removed_before"] = removed
    save_model(model, path, ledger_seq=rec["seq"], last_record=rec, lineage=lineage)
    _set_mark(model, path, lineage, rec["seq"])
    book.append(rec)


def _check_removed(
    path: Path, model: Any, ledger: RemovalLedger, records: list[dict[str, Any]]
) -> None:
    """Check that the model's removed rows are those the ledger lists since the last fit."""
    removed = _removed_ids(model)
    if removed is None:
        return
    listed: set[int] = set()
    for rec in records:
        if rec.get("event") == "fit":
            listed = set()
        before = rec.get("removed_before")
        if isinstance(before, list):
            listed = {int(i) for i in before}
        if rec.get("event") in ("remove", "retrain"):
            idx = rec.get("indices")
            if isinstance(idx, list):
                listed.update(int(i) for i in idx)
            elif isinstance(idx, int) and not isinstance(idx, bool):
                listed.add(idx)
    have = set(removed)
    if have != listed:
        raise _contradiction(
            path,
            ledger,
            f"the model has {len(have)} removed rows, the ledger lists {len(listed)} since the "
            f"last fit (first differences: {sorted(have ^ listed)[:5]})",
        )


def _checks_devices(cls: Any) -> bool:
    """Whether ``cls`` is the certified estimator's kind (CPU or CUDA devices only)."""
    from .state import ModelState

    return isinstance(cls, type) and issubclass(cls, ModelState)


def load_model(
    path: str | os.PathLike[str],
    *,
    cls: _FromState | None = None,
    ledger: bool = True,
    allow_rollback: bool = False,
    device: str | Any | None = None,
) -> Any:
    """Load a model written by :func:`save_model` or :func:`checkpoint`.

    Only safetensors is read, never pickle, so loading cannot execute code from the file.
    When the file was written by :func:`checkpoint` and ``ledger`` is true, the ledger
    ``<path>.ledger.jsonl`` is reconciled with it (torn last line cut, a missing last record
    appended) and checked against the model's removed rows; the loaded model's
    ``checkpoint`` is then ``path`` (absolute), so it goes on checkpointing there (it owns the
    checkpoint, see :func:`checkpoint`). A model
    loaded from a plain :func:`save_model` file, or with ``ledger=False``, has
    ``checkpoint=None``: a backup copy never writes into the live checkpoint it was taken
    from.

    Args:
        path: the model file.
        cls: class providing ``from_state(tensors, meta)``; defaults to
            :class:`~fastunlearn.certified.estimator.CertifiedLogisticRegression`.
        ledger: reconcile and check the ledger; ``False`` loads the state alone and writes
            nothing.
        allow_rollback: load a checkpoint file older than its ledger (a backup put back) and
            append a ``"rollback"`` record; without it that raises ValueError.
        device: passed to ``cls.from_state(..., device=device)`` (e.g. ``"cpu"`` for a model
            saved on a GPU); ``None`` keeps the saved device.

    Returns:
        The model, ``cls.from_state(tensors, meta)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TypeError, ValueError: ``path`` is not a path, is empty or names a folder.
        ValueError: the file is corrupt, not a fastunlearn model file, has an unknown format
            version, or its ledger contradicts it or is newer than it; or (for the default
            class) ``device`` names no CPU or available CUDA device, checked before anything
            is read.
        TypeError: ``allow_rollback`` or ``ledger`` is not a bool, or (for the default class)
            ``device`` is not a device string, ``torch.device`` or CUDA index.

    """
    for name, flag in (("ledger", ledger), ("allow_rollback", allow_rollback)):
        if not is_flag(flag):  # a bool or np.bool_
            raise TypeError(f"argument '{name}' must be a bool, got {type(flag).__name__}")
    ledger, allow_rollback = bool(ledger), bool(allow_rollback)
    p = check_file_path(path)
    if cls is None:
        from .estimator import CertifiedLogisticRegression

        cls = CertifiedLogisticRegression
    if device is not None and _checks_devices(cls):
        device = device_setting(device)  # refused before the ledger is read or repaired

    def build(tensors: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> Any:
        state = meta["state"]
        if device is None:
            return cls.from_state(tensors, state)
        return cls.from_state(tensors, state, device=device)

    def attach(model: Any, target: str | None) -> Any:
        if hasattr(model, "checkpoint"):
            model.checkpoint = target
        return model

    if not ledger or read_metadata(p).get("ledger_seq") is None:
        tensors, meta = _read_state(p)
        return attach(build(tensors, meta), None)
    book = RemovalLedger(ledger_path(p))
    # State and ledger are read and repaired under the writers' lock, so a checkpoint running
    # in another process cannot slip between them.
    with _ledger_lock(book):
        tensors, meta = _read_state(p)
        head = _reconcile(p, meta, book, allow_rollback=allow_rollback)
        model = attach(build(tensors, meta), str(p.absolute()))
        if hasattr(model, "checkpoint"):
            _set_mark(model, p, meta.get("lineage"), int(meta["ledger_seq"]))
        if head is not None:
            _record_rollback(p, model, book, int(meta["ledger_seq"]), head, meta.get("lineage"))
        records = book.records()
        _remove_stale_tmp(p)
    _check_removed(p, model, book, records)
    return model


def checkpoint(model: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    """Durably record one event of ``model``: state file first, ledger line second.

    The record gets the next sequence number (``"seq"``) and, unless given, the current
    ``"time"``; the state is saved to ``model.checkpoint`` with that record in its header, then
    the record is appended to ``<model.checkpoint>.ledger.jsonl``. A ledger left inconsistent
    by an earlier crash is reconciled first, so sequence numbers stay contiguous. The first
    record of a new ledger that is not a ``fit`` (a checkpoint path set after fitting) gets
    ``"removed_before"``, the rows the model had already removed.

    One writer per path: a ``fit`` starts a new lineage (allowed over any path; the ledger
    keeps the older records); any other event is refused unless the file is the one this
    model last wrote or was loaded from, or the path holds no checkpoint yet (see the module
    docstring and :func:`check_checkpoint_owner`).

    Args:
        model: model with ``checkpoint`` (a path) and ``get_state()``.
        record: the event, e.g. ``{"event": "remove", "seed": ..., "indices": [...],
            "bound": ..., "cumulative": ..., "budget_left": ...}``; not modified.

    Returns:
        The record as written (plain JSON data, with ``seq`` and ``time``).

    Raises:
        ValueError: ``model.checkpoint`` is not set, the existing files are inconsistent, or
            they were written by another model since this one last wrote them (not a fit).
        TypeError: ``record`` is not a JSON-serialisable mapping.

    """
    target = getattr(model, "checkpoint", None)
    if target is None or target == "":
        raise ValueError("model.checkpoint is not set; give the model a checkpoint path")
    p = Path(target)
    rec = normalize_record(record)
    rec.setdefault("time", time.time())
    book = RemovalLedger(ledger_path(p))
    fit = rec.get("event") == "fit"
    with _ledger_lock(book):
        prev_seq = 0
        prev = read_metadata(p) if p.exists() else None
        if not fit:
            why = _foreign_writer(p, model, prev, book)
            if why is not None:
                raise _owner_error(p, why, str(rec.get("event")), "nothing was written")
        if prev is not None:
            _reconcile(p, prev, book)
            prev_seq = prev.get("ledger_seq") or 0
        seq = max(book.last_seq(), prev_seq) + 1
        rec = {"seq": seq, **{k: v for k, v in rec.items() if k != "seq"}}
        if seq == 1 and not fit:
            _note_removed_before(model, rec)
        lineage = None if fit or prev is None else prev.get("lineage")
        if not isinstance(lineage, str):
            lineage = uuid.uuid4().hex
        try:
            save_model(model, p, ledger_seq=seq, last_record=rec, lineage=lineage)
        except BaseException:
            # a write that failed after its rename (e.g. fsync of the directory) is ours
            with contextlib.suppress(Exception):
                now = read_metadata(p)
                if now.get("lineage") == lineage and now.get("ledger_seq") == seq:
                    _set_mark(model, p, lineage, seq)
            raise
        _set_mark(model, p, lineage, seq)
        _crash_point("before_ledger")
        return book.append(rec)
