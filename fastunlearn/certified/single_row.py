"""The single-row removal steps of certified removal with fixed shapes, and their loops.

:class:`SingleRowSteps` is a mixin of
:class:`~fastunlearn.certified.CertifiedLogisticRegression`. For one row that every class
holds, removed with the CG solver, it replaces the general step (``_plan``, ~600 operator
calls) with one of two implementations of the same step, each with a loop over a
sequential ``remove(rows)``:

* on the CPU, the compiled op :func:`~fastunlearn.ops.certified.certified_cg_step` (a run of
  rows: :func:`~fastunlearn.ops.certified.certified_cg_steps`), ``_remove_compiled``;
* on CUDA, the fixed-shape step of :mod:`.fixed_step` replayed as CUDA graphs (or run
  eagerly): in pipelined runs by default (:mod:`.pipelined`), else row by row,
  ``_remove_fixed``, which also takes the rows a pipelined run refuses for more CG
  iterations.

Both are tested equal to the general step. The mixin reads and writes the estimator's
private state (tensors, host mirrors, Woodbury factors, budget and history).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor

from ..ops.certified import certified_cg_step, certified_cg_steps
from . import woodbury
from ._estimator_attributes import EstimatorAttributes
from .bounds import worst_case_bound
from .fixed_step import FixedShapeStep
from .records import PlannedStep, RemovalRecord, RemovalReport

if TYPE_CHECKING:
    from .estimator import CertifiedLogisticRegression

__all__ = [
    "CG_MAX_ITERATIONS",
    "COMPILED_STEP_MAX_FEATURES",
    "FIXED_STEP_MODE",
    "FIXED_STEP_MODES",
    "SPECTRAL_REFRESH_FRACTION",
    "SingleRowSteps",
]

#: Where the single-row CG removal step of a row every class holds runs with fixed shapes:
#: ``"auto"`` (default): on the CPU as one compiled call (:func:`~fastunlearn.ops.certified
#: .certified_cg_step`; a sequential run of such rows is one :func:`~fastunlearn.ops
#: .certified.certified_cg_steps` call), on CUDA as the captured CUDA graphs of
#: :mod:`.fixed_step` (H200, MNIST scale, 2026-11-30: 1096 removals/s against 204 for the
#: general step);
#: ``"cpu"``: the compiled call on the CPU, the general step on CUDA; ``"graph"`` /
#: ``"eager"``: :mod:`.fixed_step` on any device (graphs only on CUDA); ``"off"``: the
#: general step everywhere. Per model: the ``_fixed_step_mode`` attribute; default from the
#: environment variable ``FASTUNLEARN_FIXED_STEP``. Every path is tested equal to the general
#: step (on the CPU; the graphs on CUDA too).
FIXED_STEP_MODES = ("cpu", "auto", "graph", "eager", "off")
FIXED_STEP_MODE = os.environ.get("FASTUNLEARN_FIXED_STEP", "auto")
if FIXED_STEP_MODE not in FIXED_STEP_MODES:
    raise ValueError(
        f"environment variable FASTUNLEARN_FIXED_STEP must be one of {FIXED_STEP_MODES}, "
        f"got {FIXED_STEP_MODE!r}"
    )

#: The compiled CPU step keeps ``M^{-1}`` beside the factors (``K d^2`` more memory); above
#: this many features the general step runs instead (its operator overhead is small there).
COMPILED_STEP_MAX_FEATURES = 2048

#: CG iterations allowed to refine one step before giving up (the Hessian is then too
#: ill-conditioned for the starting factors; the dense solver still works).
CG_MAX_ITERATIONS = 200

#: The cached ``lambda_max`` bound of a Gram matrix is recomputed by ``eigvalsh`` once the rows
#: removed since its last computation carry more than this fraction of it: by Weyl's
#: inequality the cached value is then never more than this fraction above the fresh one.
SPECTRAL_REFRESH_FRACTION = 0.05


class SingleRowSteps(EstimatorAttributes):
    """The fixed-shape single-row CG steps and their removal loops (a mixin; see the module)."""

    def _fixed_step_possible(self, solver: str) -> bool:
        """Whether single-row steps may take the fixed-shape or compiled step.

        Each row must also be held by every class (:meth:`_fixed_step_applies`).
        """
        mode = getattr(self, "_fixed_step_mode", FIXED_STEP_MODE)
        if mode == "off" or solver != "cg":
            return False
        device = self._X.device.type
        if mode in ("cpu", "auto"):
            if device == "cpu":  # the compiled step, within its size limit
                if not self._compiled_step_fits():
                    return False
            elif mode == "cpu" or device != "cuda":  # "auto" takes CUDA graphs on CUDA
                return False
        return True

    def _fixed_step_applies(self, rows_np: np.ndarray) -> bool:
        """Whether the step removes one row that every class holds (every class is updated)."""
        return rows_np.shape[0] == 1 and bool((self._h_A[rows_np[0]] > 0).all())

    def _compiled_step_fits(self) -> bool:
        """Whether the features are few enough for the compiled CPU step and its ``M^{-1}``."""
        return int(self._X.shape[1]) <= COMPILED_STEP_MAX_FEATURES

    def _wants_inverse(self) -> bool:
        """Whether the CG starting factors should carry ``M^{-1}`` (for the compiled step)."""
        mode = getattr(self, "_fixed_step_mode", FIXED_STEP_MODE)
        return (
            mode in ("cpu", "auto") and self._X.device.type == "cpu" and self._compiled_step_fits()
        )

    def _plan_compiled(self, rows: Tensor, rows_np: np.ndarray) -> PlannedStep | None:
        """Plan the single-row CG step with the compiled CPU op; None: the general step.

        Same step as :meth:`_plan` (and :class:`~fastunlearn.certified.fixed_step.FixedShapeStep`)
        for one row that every class holds, in one call instead of ~600 operator calls.
        Returns None when the Woodbury buffers are full or the extended factor is not
        positive definite.
        """
        base = self._removal_factor(settled=False)
        if base.folded + 1 > base.capacity:
            return None
        base = self._compiled_base()
        M_inv, M_spare = cast(Tensor, base.M_inv), cast(Tensor, base.M_spare)  # set by it
        cfg = self._cfg
        result = certified_cg_step(
            self._X, self._Y, self._A, self._margins(), self._W, self._n_rem, self._eig,
            self._row_sq, M_inv, M_spare, base.weights, base.U_buf, base.folded,
            int(rows_np[0]), lam=cfg["lam"], gamma=cfg["gamma"],
            row_norm_max=self._row_norm_max, cg_tol=float(self.cg_tol),
            max_iter=CG_MAX_ITERATIONS,
        )  # fmt: skip
        if not result.factor_ok or not result.converged:
            woodbury.discard(base, base.folded + 1)
            if not result.factor_ok:
                return None
            raise RuntimeError(
                f"CG did not reach the residual target in {CG_MAX_ITERATIONS} iterations "
                "(ill-conditioned Hessian); use solver='cholesky'"
            )
        worst = worst_case_bound(
            cfg["lam"], self._h_n_rem, self._h_A[int(rows_np[0])], cfg["gamma"],
            C=max(1.0, self._row_norm_max),
            row_norm=max(1.0, self._row_norm_max),
        )  # fmt: skip
        return PlannedStep(
            rows,
            rows_np,
            None,  # not needed: the row's memberships are read when it is dropped
            None,
            result.V,
            result.XV,
            # the next inverse is in the spare buffer: swap (the current one stays intact)
            base._replace(pending=base.pending + 1, M_inv=base.M_spare, M_spare=base.M_inv),
            None,
            result.residual + result.bound,
            worst,
            result.iterations,
        )

    def _held_run(self, arr: np.ndarray, lo: int, free: int) -> np.ndarray:
        """Return up to ``free`` rows from ``arr[lo]`` on, ending before one not all classes hold.

        The single-row steps update every class, so their runs stop at such a row.
        """
        rows_np = arr[lo : lo + free]
        held = (self._h_A[rows_np] > 0).all(1)
        return rows_np if held.all() else rows_np[: int(np.argmin(held))]

    def _spectral_run(self, rows_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End a run of rows with the first after which a cached spectral bound goes stale.

        Returns the rows kept and the slack of the cached bounds after each of them (summed
        in order, as :meth:`_drop_row_mirrors` does row by row), so a loop that queues its
        rows ahead refreshes a bound only after its last row.
        """
        masses = self._h_row_sq[rows_np][:, None]
        if not self._shared_gram:
            masses = masses * self._h_A[rows_np]
        slack = np.cumsum(np.concatenate([self._h_eig_slack[None], masses]), axis=0)[1:]
        stale = (slack > SPECTRAL_REFRESH_FRACTION * self._h_eig).any(1)
        if stale.any():
            end = int(np.argmax(stale)) + 1
            rows_np, slack = rows_np[:end], slack[:end]
        return rows_np, slack

    def _compiled_loop_applies(self, solver: str, batch: bool) -> bool:
        """Whether this call's sequential rows go through the compiled removal loop (CPU)."""
        return (
            not batch
            and solver == "cg"
            and self.checkpoint is None  # the ledger records every removal as it commits
            and self._wants_inverse()  # the compiled step's mode, device and size
        )

    def _compiled_base(self) -> woodbury.RemovedRowsFactor:
        """Return the starting factors with ``M'^{-1}`` and a spare buffer (compiled step)."""
        base = self._removal_factor(settled=False)
        if base.M_inv is None:  # stale, or factors started elsewhere: the inverse once
            base = self._removal_factor()
            base = self._wood = base._replace(
                M_inv=woodbury.inverse(base),
                M_spare=base.M_spare if base.M_spare is not None else torch.empty_like(base.L),
            )
        return base

    def _remove_compiled(
        self, arr: np.ndarray, lo: int, report: RemovalReport, refresh_after: int = -1
    ) -> tuple[int, bool]:
        """Remove rows ``arr[lo:]`` one by one in one compiled call, as far as it can go.

        The run of rows taken is the longest from ``lo`` whose rows every class holds, that
        fits the free Woodbury columns, and that ends with the first row after which a cached
        spectral bound must be refreshed (refreshed here). Each committed row gets its record
        as in the single-step path. With ``refresh_after >= 0`` the run also ends after a row
        whose CG needed more iterations (solver ``"auto"`` then refreshes the factors).
        Returns ``(rows removed, refused)``: ``refused`` when the op stopped at a row (budget,
        failed downdate, CG): the caller's single step takes it.
        """
        written = (self._A, self._margins(), self._W, self._n_rem, self._gram, self._removed)
        if not all(t.is_contiguous() for t in written):  # the op updates them in place
            return 0, False
        base = self._removal_factor(settled=False)
        rows_np = self._held_run(arr, lo, base.capacity - base.folded)
        if rows_np.shape[0] == 0:
            return 0, False
        rows_np, slack = self._spectral_run(rows_np)
        base = self._compiled_base()
        M_inv, M_spare = cast(Tensor, base.M_inv), cast(Tensor, base.M_spare)  # set by it
        cfg = self._cfg
        result = certified_cg_steps(
            self._X, self._Y, self._A, self._margins(), self._W, self._n_rem, self._eig,
            self._row_sq, self._gram, self._removed, M_inv, M_spare, base.weights,
            base.U_buf, torch.from_numpy(rows_np), base.folded, lam=cfg["lam"],
            gamma=cfg["gamma"], row_norm_max=self._row_norm_max, cg_tol=float(self.cg_tol),
            max_iter=CG_MAX_ITERATIONS, budget_used=self.budget_used_, budget=self.budget_,
            refresh_after=refresh_after,
        )  # fmt: skip
        done = result.done
        if done:
            committed = rows_np[:done]
            for weights_np in self._h_A[committed]:  # in order, as row by row
                self._h_n_rem -= weights_np
            self._h_A[committed] = 0.0
            self._h_removed[committed] = True
            self._h_eig_slack[:] = slack[done - 1]
            odd = done % 2 == 1  # the op alternates the inverse between the two buffers
            self._wood = base._replace(
                pending=base.pending + done,
                M_inv=base.M_spare if odd else base.M_inv,
                M_spare=base.M_inv if odd else base.M_spare,
            )
            for row, bound, worst, iterations, seconds in zip(
                committed.tolist(), *result, strict=True
            ):
                self._account_row(report, row, bound, worst, iterations, seconds)
            self._refresh_loose_spectral()
        ended_early = done < rows_np.shape[0]
        if ended_early and done and refresh_after >= 0 and self._cg_last > refresh_after:
            return done, False  # ended for a refresh, not a refused row
        return done, ended_early

    def _plan_fixed(self, rows: Tensor, rows_np: np.ndarray) -> PlannedStep | None:
        """Plan the single-row CG step with fixed shapes (CUDA graphs on a GPU); None: not here.

        Same step as :meth:`_plan` for one row that every class holds (see
        :mod:`~fastunlearn.certified.fixed_step`). Returns None when the Woodbury buffers are
        full or the extended factor is not positive definite; the general step handles those.
        On the CPU in modes ``"cpu"`` and ``"auto"`` the compiled op plans it instead.
        """
        mode = getattr(self, "_fixed_step_mode", FIXED_STEP_MODE)
        if mode in ("cpu", "auto") and self._X.device.type == "cpu":
            return self._plan_compiled(rows, rows_np)
        base = self._removal_factor()
        if base.rows + 1 > base.capacity:
            return None
        fixed = self._fixed_step_for(base)
        residual, bound, ok = fixed.start(int(rows_np[0]), base.rows)
        if not ok:
            woodbury.discard(base, base.rows + 1)
            fixed.forget_c_inverse()
            return None
        cg_tol = float(self.cg_tol)
        iterations = 0
        while not residual <= cg_tol * bound:  # NaN keeps iterating, as in the general step
            if iterations == CG_MAX_ITERATIONS:
                woodbury.discard(base, base.rows + 1)
                fixed.forget_c_inverse()
                raise RuntimeError(
                    f"CG did not reach the residual target in {CG_MAX_ITERATIONS} iterations "
                    "(ill-conditioned Hessian); use solver='cholesky'"
                )
            residual, bound = fixed.iterate()
            iterations += 1
        m_k = self._h_A[rows_np].sum(0)
        worst = worst_case_bound(
            self._cfg["lam"],
            self._h_n_rem,
            m_k,
            self._cfg["gamma"],
            C=max(1.0, self._row_norm_max),
            row_norm=max(1.0, self._row_norm_max),
        )
        return PlannedStep(
            rows,
            rows_np,
            fixed.row_weights,
            None,
            fixed.V,
            fixed.XV,
            base._replace(rows=base.rows + 1, M_inv=None),  # an explicit inverse is now stale
            None,
            residual + bound,
            worst,
            iterations,
        )

    def _account_row(
        self,
        report: RemovalReport,
        row: int,
        bound: float,
        worst: float,
        iterations: int,
        seconds: float,
    ) -> None:
        """Account a committed single-row CG removal: CG counts, used budget, its record."""
        self._cg_last = iterations
        self._cg_base = self._cg_base or iterations
        self.budget_used_ += bound
        record = RemovalRecord(
            indices=(row,),
            bound=bound,
            cumulative=self.budget_used_,
            budget_left=self.budget_ - self.budget_used_,
            retrained=False,
            seconds=seconds,
            worst_case=worst,
        )
        self._history.append(record)
        report.records.append(record)

    def _account_fixed_row(
        self, report: RemovalReport, row: int, bound: float, iterations: int, seconds: float
    ) -> None:
        """Account a row the fixed-shape step committed on the device.

        Its worst-case bound (from the counts before it), the host mirrors, the used budget
        and its record.
        """
        cfg = self._cfg
        worst = worst_case_bound(
            cfg["lam"], self._h_n_rem, self._h_A[row], cfg["gamma"],
            C=max(1.0, self._row_norm_max),
            row_norm=max(1.0, self._row_norm_max),
        )  # fmt: skip
        self._drop_row_mirrors(row)
        self._account_row(report, row, bound, worst, iterations, seconds)

    def _fixed_step_for(self, base: woodbury.RemovedRowsFactor) -> FixedShapeStep:
        """Return the fixed-shape step for the current tensors (built when they changed)."""
        fixed = getattr(self, "_fixed", None)
        if fixed is None or not fixed.matches(self, base):
            mode = getattr(self, "_fixed_step_mode", FIXED_STEP_MODE)
            model = cast("CertifiedLogisticRegression", self)  # the mixin's only host
            fixed = self._fixed = FixedShapeStep(model, base, use_graphs=mode != "eager")
        fixed.factor = base
        return fixed

    def _fixed_loop_applies(self, solver: str, batch: bool) -> bool:
        """Whether this call's sequential rows go through :meth:`_remove_fixed`.

        That loop serves the fixed-shape step (CUDA graphs); the CPU's compiled step has its
        own loop (:meth:`_compiled_loop_applies`).
        """
        return (
            not batch
            and solver == "cg"
            and self.checkpoint is None  # the ledger records every removal as it commits
            and not self._wants_inverse()
        )

    def _remove_fixed(
        self,
        arr: np.ndarray,
        lo: int,
        report: RemovalReport,
        refresh_after: int = -1,
        limit: int | None = None,
    ) -> tuple[int, bool]:
        """Remove rows ``arr[lo:]`` one by one with the fixed-shape step, as far as it can go.

        The row-by-row loop of :mod:`~fastunlearn.certified.fixed_step` (pipelined runs,
        :mod:`~fastunlearn.certified.pipelined`, are the default; they hand this loop the
        rows that need more than one CG iteration). On a GPU: per row one launch of
        the start (a CUDA graph; with one CG iteration chained to it while the last row
        needed one), one device read of its four numbers, rarely a further iteration, then
        one launch of the commit (a graph too) and the host's bookkeeping while the device
        commits; besides, only the fills of the row and slot. The run of rows is the longest
        from ``lo`` whose rows every class holds and that fits the free Woodbury columns;
        with ``refresh_after >= 0`` it ends after a row whose CG needed more iterations
        (solver ``"auto"`` then refreshes the factors). Returns ``(rows removed, refused)``
        as :meth:`_remove_compiled`: ``refused`` when a row would exceed the budget or its
        extended factor is not positive definite; the caller's single step takes that row.
        ``limit``: remove at most this many rows.
        """
        base = self._removal_factor()
        free = base.capacity - base.rows
        rows_np = self._held_run(arr, lo, free if limit is None else min(free, limit))
        if rows_np.shape[0] == 0:
            return 0, False
        fixed = self._fixed_step_for(base)
        cg_tol = float(self.cg_tol)
        done, refused, planned = 0, False, False
        t0 = time.perf_counter()
        try:
            # chain one CG iteration into the start while the last removal needed one
            # (``_chain_iterations = False`` on a model: never; the benchmark compares both)
            chaining = getattr(self, "_chain_iterations", True)
            fixed.begin(int(rows_np[0]), base.rows, chaining and self._cg_last > 0)
            planned = True
            while True:
                row = int(rows_np[done])
                residual, bound, ok, iterations = fixed.result()
                while ok and not residual <= cg_tol * bound:  # NaN keeps iterating
                    if iterations >= CG_MAX_ITERATIONS:  # a chained one may be past it
                        raise RuntimeError(
                            f"CG did not reach the residual target in {CG_MAX_ITERATIONS} "
                            "iterations (ill-conditioned Hessian); use solver='cholesky'"
                        )
                    residual, bound = fixed.iterate()
                    iterations += 1
                total = residual + bound
                if not ok or self.budget_used_ + total > self.budget_:
                    refused = True  # the single step plans the row again and handles it
                    break
                fixed.commit()
                planned = False
                base = self._wood = base._replace(rows=base.rows + 1, M_inv=None)
                now = time.perf_counter()
                self._account_fixed_row(report, row, total, iterations, now - t0)
                self._refresh_loose_spectral()
                t0 = now
                done += 1
                if done == rows_np.shape[0] or 0 <= refresh_after < iterations:
                    break
                fixed.begin(int(rows_np[done]), base.rows, chaining and iterations > 0)
                planned = True
        finally:
            if planned:  # a started row not committed: clean the slot it wrote
                woodbury.discard(base, base.rows + 1)
                fixed.forget_c_inverse()
            if done:  # the pipelined runs' device copy of the used budget mirrors the model
                fixed.budget_used.fill_(self.budget_used_)
        return done, refused
