"""Pipelined runs of single-row removals on the fixed-shape step (the CUDA path).

:class:`PipelinedRuns` is a mixin of
:class:`~fastunlearn.certified.CertifiedLogisticRegression`. The removal loop of
:meth:`~fastunlearn.certified.single_row.SingleRowSteps._remove_fixed` reads four numbers
from the device after every row before it launches the next: on a GPU the device then waits
for the host's bookkeeping and launches, and the host for the device, once per removal.

Here the host queues rows without waiting. Each row is one replay of a graph that starts the
step, takes at most one chained CG iteration and commits the step only where the host's own
tests pass, taken on the device (:meth:`FixedShapeStep._pipelined_step
<fastunlearn.certified.fixed_step.FixedShapeStep>`): every earlier row of the run committed,
the extended factor positive definite, the residual within ``cg_tol`` of the bound, the
bound within the budget left. The numbers of each window of rows are copied to the host
behind the work (two windows in flight, growing from :data:`FIRST_WINDOW` to
:data:`MAX_WINDOW` rows); the host reads them in order, accounts each committed row exactly
as the row-by-row loop does and stops at the first row the device did not commit: that row
goes to the row-by-row loop (more CG iterations; with it the next rows, up to
:data:`ROWWISE_AFTER_STOP` in all, before the next run) or to the caller's single step
(factor or budget), and the slots of the rows queued after it are cleaned. The removals are
those of the row-by-row loop, bit for bit on the CPU (tested).
"""

from __future__ import annotations

import time
from collections import deque
from typing import cast

import numpy as np
import torch

from . import woodbury
from ._estimator_attributes import EstimatorAttributes
from .fixed_step import RunResults
from .records import RemovalReport

__all__ = ["FIRST_WINDOW", "MAX_WINDOW", "ROWWISE_AFTER_STOP", "PipelinedRuns"]

#: Rows in the first window of a pipelined run; each further window doubles, up to
#: :data:`MAX_WINDOW`. Small first windows bound the work thrown away when an early row of a
#: run is not committed (on digits ~7 % of rows need a second CG iteration).
FIRST_WINDOW = 4

#: Most rows in one window of a pipelined run (one device-to-host copy of their numbers).
MAX_WINDOW = 32

#: Rows the row-by-row loop takes after a pipelined run stopped at a row that needs a second
#: CG iteration, before the next run is pipelined again. Late in a Woodbury factor's life
#: most rows need one (digits one-vs-rest: none of the first 96 rows after a refresh, 61-70 %
#: of rows 192-255), and each such stop discards the rows the run had queued: handing the
#: loop one row at a time, 1089 of the 1566 steps the device computed for 600 digits
#: removals were thrown away (counted on the CPU twin; on the H200 the blocks where this
#: happened took 2-4 times the median). Predicted with 32: a tenth of that waste.
ROWWISE_AFTER_STOP = 32


class PipelinedRuns(EstimatorAttributes):
    """The pipelined removal loop of the fixed-shape step (a mixin; see the module)."""

    def _pipeline_applies(self, refresh_after: int) -> bool:
        """Whether a run of rows is pipelined (else: :meth:`_remove_fixed`, row by row).

        Off on a model with ``_pipeline_removals = False`` or ``_chain_iterations = False``
        (the benchmark's comparisons), and where a row needing one CG iteration must end the
        run (``refresh_after == 0``: the device commits such rows).
        """
        return (
            getattr(self, "_pipeline_removals", True)
            and getattr(self, "_chain_iterations", True)
            and refresh_after != 0
        )

    def _remove_on_fixed_step(
        self, arr: np.ndarray, lo: int, report: RemovalReport, refresh_after: int = -1
    ) -> tuple[int, bool]:
        """Remove rows ``arr[lo:]`` with the fixed-shape step: pipelined where it applies."""
        if self._pipeline_applies(refresh_after):
            return self._remove_pipelined(arr, lo, report, refresh_after)
        return self._remove_fixed(arr, lo, report, refresh_after)

    def _remove_pipelined(
        self, arr: np.ndarray, lo: int, report: RemovalReport, refresh_after: int = -1
    ) -> tuple[int, bool]:
        """Remove rows ``arr[lo:]`` in one pipelined run, as far as it can go.

        The run is the longest from ``lo`` whose rows every class holds, that fits the free
        Woodbury columns and that ends with the first row after which a cached spectral bound
        must be refreshed (refreshed after the run). Returns ``(rows removed, refused)`` as
        :meth:`_remove_fixed`.
        """
        base = self._removal_factor()
        slot0 = base.rows
        rows_np = self._held_run(arr, lo, base.capacity - slot0)
        rows_np = self._spectral_run(rows_np)[0]
        count = int(rows_np.shape[0])
        if count == 0:
            return 0, False
        fixed = self._fixed_step_for(base)
        cg_tol = float(self.cg_tol)
        in_flight: deque[RunResults] = deque()
        done, fetched, window = 0, 0, FIRST_WINDOW  # rows accounted, rows being copied back
        stop: list[float] | None = None  # the numbers of the first row not committed
        last = time.perf_counter()

        def absorb(batch: RunResults) -> list[float] | None:
            """Account the committed rows of ``batch`` in order; the first other row's numbers."""
            nonlocal done, last
            numbers = batch.wait()
            now = time.perf_counter()
            seconds = (now - last) / len(numbers)  # the window's time, shared by its rows
            last = now
            for j, (residual, bound, ok, iterated, committed) in enumerate(numbers):
                if batch.first + j < done:  # accounted before an exception: retried here
                    continue
                if not committed > 0.5:
                    return [residual, bound, ok, iterated, committed]
                self._account_fixed_row(
                    report, int(rows_np[done]), residual + bound, int(iterated > 0.5), seconds
                )
                done += 1
            return None

        fixed.start_run(torch.from_numpy(rows_np), slot0, self.budget_used_, self.budget_)
        try:
            while done < count and stop is None:
                while fetched < count and len(in_flight) < 2:
                    size = min(window, count - fetched)
                    for _ in range(size):
                        fixed.enqueue()
                    in_flight.append(fixed.fetch(fetched, size))
                    fetched += size
                    window = min(2 * window, MAX_WINDOW)
                stop = absorb(in_flight[0])  # dropped once absorbed: retried after an exception
                in_flight.popleft()
        finally:
            # rows the device committed that an exception kept the host from accounting
            queued = fixed.queued
            if stop is None and queued > fetched:
                in_flight.append(fixed.fetch(fetched, queued - fetched))
            while stop is None and in_flight:
                stop = absorb(in_flight.popleft())  # an exception here propagates as it is
            if done:
                self._wood = base._replace(rows=slot0 + done, M_inv=None)
            if queued > done:  # rows queued and not committed: clean the slots they wrote
                # the run's factors: ``base`` (or its update above) since _removal_factor
                woodbury.discard(cast(woodbury.RemovedRowsFactor, self._wood), slot0 + queued)
                fixed.forget_c_inverse()
            self._refresh_loose_spectral()
        if stop is not None:
            residual, bound, ok = stop[:3]
            if ok > 0.5 and not residual <= cg_tol * bound:
                # more CG iterations than the chained one: the row-by-row loop takes it, and
                # the rows after it (their neighbours likely need as many; ROWWISE_AFTER_STOP)
                more, refused = self._remove_fixed(arr, lo + done, report, refresh_after,
                                                   ROWWISE_AFTER_STOP)
                return done + more, refused
            return done, True  # factor or budget: the caller's single step takes the row
        return done, False
