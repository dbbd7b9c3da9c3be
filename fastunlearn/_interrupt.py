"""Ctrl-C in a long command: stop at the next safe point and keep what was done.

The experiment runners (``run_removal_experiment``, ``run_harness``,
``run_repair_experiment``, ``iterative_label_repair``) take a ``should_stop`` callable
that they ask between steps (removals, method runs, repair steps); when it answers True
they stop there, mark the result as stopped on request and write everything finished so
far. The commands wire
``should_stop`` to :class:`GracefulStop`: inside the step loops (the runners mark them
with :func:`stop_points`) the first Ctrl-C asks the run to stop after the step in progress
(a removal is never cut in half) and a second one aborts at once; elsewhere (loading data,
training the models a run starts from, writing files) Ctrl-C aborts at once as usual. The
trainings that keep their finished epochs (:mod:`fastunlearn.epoch_state`: ``extract``,
and ``forget`` and ``repair`` with a cache) lose only the epoch in progress: the same
command resumes after the others. A library user can pass any callable instead, e.g. a
time limit.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any, TextIO

__all__ = ["INTERRUPTED_STATUS", "GracefulStop", "Skip", "StopCheck", "check_stop_callable",
           "skippable", "stop_points", "stop_requested"]

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_STATUS = 130

#: What the runners take: called between steps, True means "stop here".
StopCheck = Callable[[], bool]


def stop_requested(should_stop: StopCheck | None, argument: str = "should_stop") -> bool:
    """Ask ``should_stop`` (None: never stop); its answer must be a plain truth value.

    Raises:
        TypeError: ``should_stop`` is neither None nor callable.

    """
    check_stop_callable(should_stop, argument)
    return should_stop is not None and bool(should_stop())


def check_stop_callable(should_stop: Any, argument: str = "should_stop") -> None:
    """Refuse, before any work, a ``should_stop`` that is neither None nor callable."""
    if should_stop is not None and not callable(should_stop):
        raise TypeError(f"'{argument}' must be None or a callable taking no arguments, "
                        f"got {type(should_stop).__name__}")


@contextlib.contextmanager
def stop_points(should_stop: StopCheck | None) -> Iterator[None]:
    """Mark a runner's step loop: there a :class:`GracefulStop` defers the first Ctrl-C.

    For any other ``should_stop`` (None, a plain callable) this does nothing.
    """
    if not isinstance(should_stop, GracefulStop):
        yield
        return
    before = should_stop.armed
    should_stop.armed = True
    try:
        yield
    finally:
        should_stop.armed = before


class Skip:
    """What :func:`skippable` reports: ``skipped`` is True when Ctrl-C cut the work short."""

    def __init__(self) -> None:
        self.skipped = False


@contextlib.contextmanager
def skippable(should_stop: StopCheck | None, what: str) -> Iterator[Skip]:
    """Mark optional work after a run's steps (e.g. timing a retraining) that Ctrl-C skips.

    With a :class:`GracefulStop`, the first Ctrl-C inside abandons the work at once (the
    KeyboardInterrupt is caught here, ``skipped`` set, and the stop counted as requested,
    so the command still writes its results and exits with 130); a second Ctrl-C aborts.
    With any other ``should_stop`` the KeyboardInterrupt propagates as usual.

    Args:
        should_stop: The run's ``should_stop``.
        what: The work, for the message ("the retraining timing").

    """
    skip = Skip()
    if not isinstance(should_stop, GracefulStop) or should_stop.requested:
        yield skip
        return
    try:
        yield skip
    except KeyboardInterrupt:  # the first Ctrl-C (the work is outside any step loop)
        skip.skipped = should_stop.requested = True
        print(f"\nfastunlearn: Ctrl-C: skipping {what} and writing what is done",
              file=should_stop.stream or sys.stderr, flush=True)


class GracefulStop:
    """Turn the first Ctrl-C in a step loop into a request to stop; a second one raises.

    Use as a context manager around a run and pass the instance (it is callable) as the
    run's ``should_stop``. Inside the run's step loops (marked by :func:`stop_points`) the
    first Ctrl-C sets :attr:`requested`, which the loop reads before its next step, and
    prints what will happen; outside them, and at the second Ctrl-C, KeyboardInterrupt is
    raised as usual. The handler is installed only in the main thread and only where SIGINT
    still has Python's default handler (a caller's own handler is left alone); the previous
    handler is always put back on exit. :attr:`requested` stays readable after the block
    and is cleared when the instance is entered again.

    Args:
        what: The step the run finishes before it stops, for the message ("removal").
        stream: Where the message goes (stderr by default).

    """

    def __init__(self, what: str = "step", stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream
        self.requested = False
        self.armed = False
        self._previous: Any = None
        self._installed = False

    def __call__(self) -> bool:
        """Return True once Ctrl-C was pressed (what the runners' ``should_stop`` asks)."""
        return self.requested

    def __enter__(self) -> GracefulStop:
        self.requested = False  # a reused instance starts a new run (read it after exit)
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested or not self.armed:  # a second Ctrl-C, or no step to finish: abort
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        stream = self.stream or sys.stderr
        print(f"\nfastunlearn: Ctrl-C: stopping after the current {self.what} and writing "
              "what is done (Ctrl-C again to abort at once)", file=stream, flush=True)
