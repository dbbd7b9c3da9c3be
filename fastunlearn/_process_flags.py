"""Override process-wide torch settings for the duration of blocks that may overlap.

TF32 switches, the oneDNN/cuDNN ``enabled`` flags and the intra-op thread count are global
to the process. Saving and restoring them per block breaks when blocks overlap in several
threads: thread A saves "on" and switches off, thread B saves "off", A leaves and switches
back on *while B is still inside* (B's certified arithmetic then runs with TF32), and B
finally restores "off" for good. :class:`ProcessWideOverride` counts the active blocks
instead: the first to enter saves the caller's value and sets the override, the last to
leave restores it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["GLOBAL_RNG_LOCK", "ProcessWideOverride"]

_Value = TypeVar("_Value")

#: Held by every block that seeds torch's global generators and draws from them, forked so
#: that the caller's stream is restored afterwards (dropout and ``reset_parameters`` have no
#: generator argument). Two such blocks overlapping in two threads would draw from each
#: other's seeded stream, and each restore would clobber the other's. Re-entrant: seeded
#: blocks nest (a re-initialisation inside a seeded training run).
GLOBAL_RNG_LOCK = threading.RLock()


class ProcessWideOverride(Generic[_Value]):
    """A process-wide setting held at ``value`` while any :meth:`active` block runs.

    Args:
        read: Returns the setting's current value.
        write: Sets it.
        value: The value held inside the blocks.

    """

    def __init__(self, read: Callable[[], _Value], write: Callable[[_Value], None],
                 value: _Value) -> None:
        self._read, self._write, self._value = read, write, value
        self._lock = threading.Lock()
        self._active = 0
        self._saved: _Value | None = None

    @property
    def active_blocks(self) -> int:
        """How many blocks are inside :meth:`active` now (all threads)."""
        return self._active

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Hold the override inside the block; the last block to leave restores the setting."""
        with self._lock:
            if self._active == 0:
                self._saved = self._read()
                self._write(self._value)
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    saved, self._saved = self._saved, None
                    self._write(saved)  # type: ignore[arg-type]
