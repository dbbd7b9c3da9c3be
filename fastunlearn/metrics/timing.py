"""Wall time of an unlearning run and its ratio to retraining (OPTML's RTE)."""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from .._numbers import check_real, is_flag

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Stopwatch", "time_ratio"]


class Stopwatch:
    """Context manager measuring wall time; synchronises CUDA at both ends when asked.

    Example:
        >>> with Stopwatch() as sw:
        ...     _ = sum(range(1000))
        >>> sw.seconds >= 0
        True

    """

    def __init__(self, cuda_sync: bool | None = None) -> None:
        if cuda_sync is not None and not is_flag(cuda_sync):
            raise TypeError(f"'cuda_sync' must be None or a bool, got {type(cuda_sync).__name__}")
        if cuda_sync is not None:
            cuda_sync = bool(cuda_sync)  # np.bool_ too
        if cuda_sync and not torch.cuda.is_available():
            raise ValueError("'cuda_sync' is True but no CUDA GPU is available")
        self.cuda_sync = torch.cuda.is_available() if cuda_sync is None else cuda_sync
        self.seconds = math.nan
        self._start = 0.0

    def __repr__(self) -> str:
        """Return the elapsed seconds (``nan`` before the block ends) and the sync flag."""
        return f"Stopwatch(seconds={self.seconds!r}, cuda_sync={self.cuda_sync!r})"

    def __enter__(self) -> Stopwatch:
        if self.cuda_sync:
            torch.cuda.synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.cuda_sync:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._start

    @property
    def minutes(self) -> float:
        """Elapsed minutes (OPTML reports RTE in minutes)."""
        return self.seconds / 60.0


def time_ratio(seconds: float | np.floating, retrain_seconds: float | np.floating) -> float:
    """Unlearning time as a fraction of retraining time (the competition rejects > ~0.2).

    Raises:
        TypeError: If a time is not a real number (numpy scalars are accepted; bools not).
        ValueError: If a time is negative or not finite, or ``retrain_seconds`` is 0.

    """
    return check_real("seconds", seconds) / check_real("retrain_seconds", retrain_seconds,
                                                        positive=True)
