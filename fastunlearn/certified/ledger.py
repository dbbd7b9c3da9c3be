"""Append-only removal ledger: one JSON object per line, durable on every append.

The ledger is the audit trail of a checkpointed certified model: one record per event
(``fit``, ``remove``, ``retrain``), each carrying a sequence number ``seq`` that grows by
exactly one from record to record. :func:`fastunlearn.certified.persistence.checkpoint` writes
the model state first and appends the record second, so a crash can leave at most

* a *torn* last line (the process died inside ``write``): no trailing newline, or it does not
  parse. :meth:`RemovalLedger.records` ignores it and :meth:`RemovalLedger.repair` cuts it;
* one record missing at the end (the process died between the two writes): the model file
  carries that record and :func:`~fastunlearn.certified.persistence.load_model` appends it.

Any other damage (a bad line before the last, a gap or a step back in ``seq``) cannot come from
a crash of this writer and raises :class:`ValueError`.

Testing hook (tests only, never set it in production): the environment variable
``FASTUNLEARN_TEST_CRASH="<point>[:<n>]"`` makes the process SIGKILL itself the ``n``-th time
(default 1st) it reaches ``<point>``: ``ledger_torn`` (inside :meth:`RemovalLedger.append`,
after half of the line is durably written) or one of the points of
:func:`fastunlearn.certified.persistence.save_model` (``before_replace``, ``after_replace``,
``data_before_replace`` for a checkpoint's data file)
and :func:`~fastunlearn.certified.persistence.checkpoint` (``before_ledger``).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["RemovalLedger", "ledger_path", "normalize_record"]

_CRASH_ENV = "FASTUNLEARN_TEST_CRASH"
_LEDGER_SUFFIX = ".ledger.jsonl"
_crash_hits: dict[str, int] = {}

# Backwards reads of the tail happen in blocks of this size; a line longer than one block (a
# batch removal of many indices) costs a few more reads.
_TAIL_BLOCK = 1 << 16


def ledger_path(path: str | os.PathLike[str]) -> Path:
    """Return the removal ledger path of the model file ``path``: ``<path>.ledger.jsonl``."""
    return Path(os.fspath(path) + _LEDGER_SUFFIX)


def _should_crash(point: str) -> bool:
    """Whether the test crash hook fires at ``point`` now (see the module docstring)."""
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return False
    name, _, nth = spec.partition(":")
    if name != point:
        return False
    _crash_hits[point] = _crash_hits.get(point, 0) + 1
    return _crash_hits[point] == (int(nth) if nth else 1)


def _die() -> None:
    """Kill this process the way a power cut or OOM kill would: no cleanup, no flushing."""
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_point(point: str) -> None:
    if _should_crash(point):
        _die()


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (create, rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; its renames are journaled
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_json_value(value: Any) -> Any:
    """``json.dumps`` hook: numpy/torch scalars and arrays, sets and paths to plain JSON."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"ledger record value of type {type(value).__name__} is not JSON-serialisable")


def _dumps(record: Mapping[str, Any]) -> str:
    # Compact, one line: json escapes newlines inside strings.
    return json.dumps(record, default=_to_json_value, separators=(",", ":"))


def normalize_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``record`` as plain JSON data, exactly as it reads back from a ledger.

    Numpy/torch values become Python lists and numbers, so a record kept in memory (or inside
    a model file) compares equal to the same record read back from the ledger.

    Args:
        record: mapping with string keys.

    Returns:
        A new dict of ``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` values.

    Raises:
        TypeError: ``record`` is not a mapping or holds a value that cannot be serialised.

    """
    if not isinstance(record, Mapping):
        raise TypeError(f"'record' must be a mapping, got {type(record).__name__}")
    return json.loads(_dumps(dict(record)))


def _parse(line: bytes) -> dict[str, Any]:
    """Parse one ledger line; ValueError unless it is a JSON object with an integer seq."""
    try:
        record = json.loads(line)
    except RecursionError:  # absurdly deep nesting: no writer of ours produces it
        raise ValueError("line nests too deeply to be a ledger record") from None
    if not isinstance(record, dict):
        raise ValueError("line is not a JSON object")
    seq = record.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError("record has no integer 'seq'")
    return record


class RemovalLedger:
    """Append-only JSON-lines file of removal events.

    Each line is one JSON object with an integer ``"seq"``; records written by
    :func:`~fastunlearn.certified.persistence.checkpoint` also hold ``"event"`` (``"fit"``,
    ``"remove"`` or ``"retrain"``), ``"time"``, ``"seed"``, ``"indices"``, ``"bound"``,
    ``"cumulative"`` and ``"budget_left"``. Sequence numbers start at 1 and grow by exactly 1.
    One process at a time may write a ledger.

    Args:
        path: the ledger file (created by the first append).

    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RemovalLedger({str(self.path)!r})"

    # ------------------------------------------------------------------ reading
    def _scan(self) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """Parse the whole file.

        Returns:
            ``([(byte offset, record), ...], clean size)``; the clean size excludes a torn
            last line (it equals the file size when there is none).

        Raises:
            ValueError: a line before the last is bad, or ``seq`` does not grow by exactly 1.

        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        lines = data.split(b"\n")
        # After split, the last element holds the bytes behind the final newline: empty for an
        # intact file, the torn fragment otherwise.
        if lines[-1] == b"":
            lines.pop()
            n_terminated = len(lines)
        else:
            n_terminated = len(lines) - 1
        out: list[tuple[int, dict[str, Any]]] = []
        offset = 0
        for i, line in enumerate(lines):
            if i == n_terminated:  # no newline: a torn write even if it happens to parse
                break
            try:
                record = _parse(line)
            except ValueError as err:
                if i == len(lines) - 1:
                    break  # garbage as the very last line: a torn write
                raise ValueError(
                    f"ledger {str(self.path)!r} is corrupt at line {i + 1} (not the last line, "
                    f"so not a torn write): {err}"
                ) from None
            if out and record["seq"] != out[-1][1]["seq"] + 1:
                raise ValueError(
                    f"ledger {str(self.path)!r} is inconsistent at line {i + 1}: seq "
                    f"{record['seq']} follows seq {out[-1][1]['seq']} (must grow by exactly 1)"
                )
            out.append((offset, record))
            offset += len(line) + 1
        return out, offset

    def records(self) -> list[dict[str, Any]]:
        """All complete records in order; a torn last line is ignored (not removed).

        Returns:
            The records (an empty list when the file does not exist).

        Raises:
            ValueError: a line before the last is bad, or ``seq`` does not grow by exactly 1.

        """
        return [record for _, record in self._scan()[0]]

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _last_complete(self) -> tuple[dict[str, Any] | None, int]:
        """``(last intact record or None, clean size)``, reading only the end of the file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None, 0
        try:
            pos = os.fstat(fd).st_size
            buf = b""
            # Read backwards until the buffer holds the newline ending the last complete line
            # and the one before it (or the start of the file).
            while pos > 0 and buf.count(b"\n") < 2:
                start = max(0, pos - _TAIL_BLOCK)
                buf = os.pread(fd, pos - start, start) + buf
                pos = start
        finally:
            os.close(fd)
        end = buf.rfind(b"\n")
        if end < 0:
            return None, 0  # not one complete line in the whole file
        line_start = buf.rfind(b"\n", 0, end) + 1
        try:
            record = _parse(buf[line_start:end])
        except ValueError:
            # The last terminated line is garbage: only a full scan can tell a torn tail from
            # corruption (and it raises for the latter).
            records, clean = self._scan()
            return (records[-1][1] if records else None), clean
        return record, pos + end + 1

    def last_seq(self) -> int:
        """Sequence number of the last complete record; 0 for an empty or missing ledger.

        Reads only the end of the file, so it stays cheap for long ledgers.
        """
        record, _ = self._last_complete()
        return 0 if record is None else int(record["seq"])

    def last_record(self) -> dict[str, Any] | None:
        """Return the last complete record, ``None`` for an empty ledger (reads the tail only)."""
        return self._last_complete()[0]

    # ------------------------------------------------------------------ writing
    def _truncate_to(self, size: int) -> None:
        with open(self.path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())

    def repair(self) -> int:
        """Cut a torn last line, if any, durably.

        Returns:
            The number of bytes removed (0 when the ledger is intact or missing).

        """
        _, clean = self._last_complete()
        size = self._size()
        if clean == size:
            return 0
        self._truncate_to(clean)
        return size - clean

    def truncate_after(self, seq: int) -> int:
        """Drop every record whose sequence number is above ``seq``, and any torn tail.

        Only used to reconcile a ledger that ran ahead of its model file, which the write
        order of :func:`~fastunlearn.certified.persistence.checkpoint` never produces.

        Args:
            seq: the last sequence number to keep.

        Returns:
            The number of complete records removed.

        """
        records, clean = self._scan()
        kept = sum(1 for _, rec in records if rec["seq"] <= seq)
        cut = records[kept][0] if kept < len(records) else clean
        if cut != self._size():
            self._truncate_to(cut)
        return len(records) - kept

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record durably (write, flush, fsync) and return it as stored.

        A torn last line left by an earlier crash is cut first, so the new record starts on a
        line of its own. ``record["seq"]`` must be :meth:`last_seq` + 1.

        Args:
            record: mapping with an integer ``"seq"``; numpy and torch values are converted.

        Returns:
            The record as plain JSON data (see :func:`normalize_record`).

        Raises:
            ValueError: ``record["seq"]`` is missing or is not :meth:`last_seq` + 1.
            TypeError: a value is not JSON-serialisable.

        """
        rec = normalize_record(record)
        try:
            seq = _parse(_dumps(rec).encode())["seq"]
        except ValueError as err:
            raise ValueError(f"'record' cannot go in ledger {str(self.path)!r}: {err}") from None
        last, clean = self._last_complete()
        expected = 1 if last is None else int(last["seq"]) + 1
        if seq != expected:
            raise ValueError(
                f"'record' has seq {seq} but ledger {str(self.path)!r} expects seq {expected}"
            )
        line = (_dumps(rec) + "\n").encode("utf-8")
        created = not self.path.exists()
        with open(self.path, "ab") as fh:
            if fh.tell() != clean:
                fh.truncate(clean)  # cut a torn tail; append mode then writes at the new end
            if _should_crash("ledger_torn"):
                fh.write(line[: len(line) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                _die()
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            fsync_directory(self.path.parent)
        return rec
