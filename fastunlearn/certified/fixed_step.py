"""The CG removal step with fixed shapes, replayed as CUDA graphs on a GPU.

A certified removal at MNIST scale does little arithmetic on a GPU (two passes over ``X``
take ~0.2 ms) but launches ~150 small operators from Python and used to wait for the device
about ten times: the host, not the GPU, set the pace (7.6 ms per removal on an H200). This
module computes the same single-row CG step as
:meth:`CertifiedLogisticRegression._plan <fastunlearn.certified.CertifiedLogisticRegression>`
with tensor shapes that do not change from one removal to the next:

* the removed row and the Woodbury slot it takes are device scalars written by ``fill_``;
* the Woodbury terms are used over their whole capacity: the unused columns are zero in
  ``U`` and ``G`` and the identity in ``C`` (:mod:`~fastunlearn.certified.woodbury`), so the
  products equal those over the rows folded in;
* the step length, CG update and bound terms are tensor expressions with no host read.

On a GPU each piece is captured once as a CUDA graph and replayed: the start of the step
(Delta, Woodbury extension, first CG direction, bound and residual), the start with one CG
iteration chained to it (taken or skipped on the device by the same test as the host's
loop), one CG iteration, and the commit (weights, margins, the row's weights and counts, the
Gram downdate), and the pipelined step (the start, the chained iteration and a commit that
the device applies only where the host's tests pass; see
:mod:`~fastunlearn.certified.pipelined`, whose runs of rows replay it without reading the
device per row). The row-by-row loop (``CertifiedLogisticRegression._remove_fixed``) chains
the iteration while the last removal needed one, so a removal is one replay and one device
read of four numbers (residual, bound, factor check, iteration taken), rarely a further
iteration, and one replay of the commit. Elsewhere, or when a capture fails, the same
functions run eagerly. Only single-row removals that update every class take this path; the
result equals the general step up to rounding (tested on the CPU, and the graphs on an
H200).

On a GPU the preconditioner's two inverses are kept explicitly: ``M^{-1}`` of the dense
factors (once per factorisation) and ``C^{-1}`` of the Woodbury factor (one row per removal,
rebuilt when the factor has rows this step did not fold in), so applying it is a few
batched products. cuBLAS's batched triangular solves with one right-hand side ran as
blocked launches of ~40 us each: 4 ms of a 5.9 ms removal at MNIST scale on an H200 for
``M``, 0.8 ms of 2.1 ms for ``C`` once ``M^{-1}`` was explicit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, cast

import torch
from torch import Tensor

from .. import ops
from ..ops.certified_commit import certified_commit_
from ..ops.certified_start import certified_start_
from ..ops.certified_tail import certified_cg_tail_
from ..ops.certified_woodbury import certified_woodbury_row_
from .bounds import data_dependent_bound
from .math import curvature_weights, loss_derivative
from .woodbury import RemovedRowsFactor

if TYPE_CHECKING:  # pragma: no cover
    from .estimator import CertifiedLogisticRegression

__all__ = ["FixedShapeStep", "RunResults"]

#: Device types on which the step applies ``M^{-1}`` as an explicit inverse (one batched
#: product) instead of two triangular solves: cuBLAS's batched trsm with one right-hand side
#: is launch- and latency-bound. On the CPU the solves are cheap and keep the step's
#: arithmetic identical to the general step's.
EXPLICIT_INVERSE_DEVICES = ("cuda",)

#: Whether the step uses its fused ops (``certified_start_``, ``certified_woodbury_row_``,
#: ``certified_cg_tail_``, ``certified_commit_``: ~95 kernels fewer per pipelined removal on
#: a GPU) unless a model sets ``_fused_start`` / ``_fused_woodbury`` / ``_fused_cg_tail`` /
#: ``_fused_commit``: the environment variable ``FASTUNLEARN_CERTIFIED_FUSED`` (``"1"`` on,
#: the default since they were measured on an H200 on 2026-11-30: 1093 against 961
#: removals/s at MNIST scale, the same bounds and weights; ``"0"`` off).
FUSED_OPS_DEFAULT = os.environ.get("FASTUNLEARN_CERTIFIED_FUSED", "1")
if FUSED_OPS_DEFAULT not in ("0", "1"):
    raise ValueError(
        "environment variable FASTUNLEARN_CERTIFIED_FUSED must be '0' or '1', "
        f"got {FUSED_OPS_DEFAULT!r}"
    )


class _TensorOptions(TypedDict):
    """The ``dtype`` and ``device`` keywords of a tensor factory (``torch.empty(..., **opts)``)."""

    dtype: torch.dtype
    device: torch.device


def _uses(model: CertifiedLogisticRegression, switch: str) -> bool:
    """Whether ``model`` uses the fused op of ``switch`` (its attribute, else the default)."""
    return bool(getattr(model, switch, FUSED_OPS_DEFAULT == "1"))


def _lower_solve(L: Tensor, B: Tensor) -> Tensor:
    """``(L L^T)^{-1} B`` for lower ``L [K, r, r]`` and ``B [K, r, c]``."""
    y = torch.linalg.solve_triangular(L, B, upper=False)
    return torch.linalg.solve_triangular(L.mH, y, upper=True)


class FixedShapeStep:
    """Static buffers and (on CUDA) captured graphs of one model's single-row CG step.

    Built for the model's current tensors; :meth:`matches` says whether it still applies
    (a retrain replaces the weights and margins, a refresh keeps the Woodbury buffers).

    Args:
        model: The fitted estimator (its private tensors are read, never replaced).
        factor: The Woodbury state whose buffers the step reads and writes.
        use_graphs: Capture CUDA graphs (only on a CUDA device).

    """

    def __init__(
        self, model: CertifiedLogisticRegression, factor: RemovedRowsFactor, use_graphs: bool
    ) -> None:
        self.model = model
        cfg = model._cfg
        self.lam, self.gamma = float(cfg["lam"]), float(cfg["gamma"])
        self.row_norm_max = float(model._row_norm_max)
        self.X, self.Y, self.A, self.W = model._X, model._Y, model._A, model._W
        self.Z = model._margins()
        self.n_rem, self.eig, self.row_sq = model._n_rem, model._eig, model._row_sq
        self.gram, self.removed = model._gram, model._removed
        self.shared_gram = bool(model._shared_gram)
        self.factor = factor
        dev = self.X.device
        # On a GPU, M^{-1} of the factors explicitly (K d^3 flops once per factorisation):
        # the preconditioner is then one batched product. Its two triangular solves ran as
        # ~20 blocked cuBLAS trsm launches each, 4 ms of a 6 ms removal on an H200. Only the
        # preconditioner changes (by rounding): CG still stops on the true residual.
        explicit = dev.type in EXPLICIT_INVERSE_DEVICES
        self.M0_inv = torch.cholesky_inverse(factor.L) if explicit else None
        # likewise the inverse of the Woodbury factor C (lower triangular, T x T): adding a
        # row changes one row of C^{-1}, written by the step itself; it is rebuilt whenever
        # the factor has rows this step did not fold in (see _sync_c_inverse)
        self.C_inv = torch.empty_like(factor.C_buf) if explicit else None
        self.C_inv_rows = -1  # the factor rows C_inv is the inverse for; -1: to rebuild
        # refreshed factors are written into the same buffers (the graphs read them), so
        # matches() still holds; the model's factor generation says when M0_inv is stale
        self.generation = getattr(model, "_factor_generation", 0)
        n, K = self.A.shape
        d = self.X.shape[1]
        T = factor.capacity
        f64 = _TensorOptions(dtype=torch.float64, device=dev)
        self.row = torch.zeros(1, dtype=torch.int64, device=dev)
        self.slot = torch.zeros(1, dtype=torch.int64, device=dev)
        self.slots = torch.arange(T, device=dev)
        self.A_after = torch.empty(n, K, **f64)
        # CG state, written by the start and by each iteration
        self.Delta = torch.empty(d, K, **f64)
        self.lam_k = torch.empty(K, **f64)
        self.S = torch.empty(n, K, **f64)
        self.spectral = torch.empty(K, **f64)
        self.row_weights = torch.empty(1, K, **f64)
        self.V = torch.empty(d, K, **f64)
        self.XV = torch.empty(n, K, **f64)
        self.HV = torch.empty(d, K, **f64)
        self.R = torch.empty(d, K, **f64)
        self.P = torch.empty(d, K, **f64)
        self.rz = torch.empty(K, **f64)
        # residual sum, bound sum, factor ok, whether the chained iteration was taken, and
        # (pipelined runs) whether the step was committed
        self.out = torch.zeros(5, **f64)
        # pipelined runs (see :meth:`start_run`): the run's rows, the slot of its first row,
        # the rows enqueued so far, whether every row so far was committed, the used budget
        # and the budget, and each slot's five numbers (copied to the host per window)
        self.run_rows = torch.zeros(T, dtype=torch.int64, device=dev)
        self.run_slot0 = torch.zeros(1, dtype=torch.int64, device=dev)
        self.counter = torch.zeros(1, dtype=torch.int64, device=dev)
        self.alive = torch.ones(1, dtype=torch.bool, device=dev)
        self.budget_used = torch.zeros(1, **f64)
        self.budget = torch.zeros(1, **f64)
        self.results = torch.zeros(T, 5, **f64)
        self.results_host = torch.zeros(T, 5, dtype=torch.float64, pin_memory=dev.type == "cuda")
        # the run's rows on their way to the device: pinned on CUDA, so that the copy does
        # not wait for the queued work (a copy from pageable memory synchronises the stream)
        self.run_rows_host = torch.zeros(T, dtype=torch.int64, pin_memory=dev.type == "cuda")
        self.run_rows_copied: Any = None  # an event after that copy (CUDA)
        self.run_start = 0  # the slot of the run's first row
        self.queued = 0  # rows of the run queued so far
        self.cg_tol = float(model.cg_tol)
        self.chained = False  # whether the last begin() chained an iteration
        self.graphs: dict[str, Any] = {}
        self.use_graphs = bool(use_graphs) and dev.type == "cuda"
        # the end of each CG step as one fused op (certified_cg_tail_) instead of ~25 small
        # operators (per model ``_fused_cg_tail``, else FUSED_OPS_DEFAULT)
        self.fused_tail = _uses(model, "_fused_cg_tail")
        # likewise the pipelined step's guard, commit and bookkeeping as one op
        # (certified_commit_) instead of ~30 (per model ``_fused_commit``)
        self.fused_commit = _uses(model, "_fused_commit")
        # and the row's quantities before its Woodbury extension (certified_start_), and
        # the extension's checks and writes (certified_woodbury_row_; with C^{-1} only)
        self.fused_start = _uses(model, "_fused_start")
        self.fused_woodbury = _uses(model, "_fused_woodbury") and self.C_inv is not None
        self.bound_scale = self.gamma * max(1.0, self.row_norm_max)

    def matches(self, model: CertifiedLogisticRegression, factor: RemovedRowsFactor) -> bool:
        """Whether the buffers and graphs still read the model's current tensors."""
        f = self.factor
        return (
            model._W is self.W
            and getattr(model, "_Z", None) is self.Z
            and model._A is self.A
            and model._eig is self.eig
            and model._n_rem is self.n_rem
            and model._gram is self.gram
            and model._removed is self.removed
            and factor.U_buf is f.U_buf
            and factor.L is f.L
            and factor.weights is f.weights
            and float(model.cg_tol) == self.cg_tol
            and _uses(model, "_fused_cg_tail") == self.fused_tail
            and _uses(model, "_fused_commit") == self.fused_commit
            and _uses(model, "_fused_start") == self.fused_start
            and (_uses(model, "_fused_woodbury") and self.C_inv is not None)
            == self.fused_woodbury
        )

    # ---- the computation -----------------------------------------------------------------

    def _base_solve(self, B: Tensor) -> Tensor:
        """``M^{-1} B`` with the factors alone, ``B [K, d, c]``."""
        if self.M0_inv is not None:
            return torch.bmm(self.M0_inv, B)
        return _lower_solve(self.factor.L, B)

    def _c_solve(self, B: Tensor) -> Tensor:
        """``C^{-1} B`` for the Woodbury factor ``C [K, T, T]`` and ``B [K, T, c]``."""
        if self.C_inv is not None:
            return torch.bmm(self.C_inv, B)
        return torch.linalg.solve_triangular(self.factor.C_buf, B, upper=False)

    def _precondition(self, B: Tensor, y: Tensor | None = None) -> Tensor:
        """``M'^{-1} B`` with the factors and every Woodbury column, ``B [d, K]``.

        ``y``: ``M^{-1} B`` as ``[K, d, 1]`` when the caller already has it.
        """
        f = self.factor
        if y is None:
            y = self._base_solve(B.T.unsqueeze(-1))
        z = torch.bmm(f.U_buf.mT, y)
        if self.C_inv is not None:  # (C C^T)^{-1} z = C^{-T} C^{-1} z
            w = torch.bmm(self.C_inv.mT, torch.bmm(self.C_inv, z))
        else:
            w = _lower_solve(f.C_buf, z)
        return torch.baddbmm(y, f.G_buf, w).squeeze(-1).T

    def _sync_inverses(self, rows: int) -> None:
        """Rebuild the explicit inverses where the factors changed since they were made.

        ``M^{-1}`` when the model started new factors (in the same buffers), ``C^{-1}`` unless
        it is the inverse for the factor's ``rows`` rows. Both are written in place: the
        captured graphs read these tensors.
        """
        if self.M0_inv is None:
            return
        generation = getattr(self.model, "_factor_generation", 0)
        if generation != self.generation:
            self.M0_inv.copy_(torch.cholesky_inverse(self.factor.L))
            self.generation = generation
            self.C_inv_rows = -1
        self._sync_c_inverse(rows)

    def _sync_c_inverse(self, rows: int) -> None:
        """Rebuild ``C^{-1}`` unless it is the inverse for the factor's ``rows`` rows."""
        if self.C_inv is None or self.C_inv_rows == rows:
            return
        C = self.factor.C_buf
        eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device).expand_as(C)
        self.C_inv.copy_(torch.linalg.solve_triangular(C, eye, upper=False))
        self.C_inv_rows = rows

    def forget_c_inverse(self) -> None:
        """Mark ``C^{-1}`` stale: a planned step that wrote its row was not committed."""
        self.C_inv_rows = -1

    def _hessian(self, P: Tensor) -> tuple[Tensor, Tensor]:
        HP, XP = ops.glm_hvp_margins(self.X, self.S, P, 0.0)
        return HP.addcmul_(self.lam_k, P), XP

    def _fused_tail(self, HP: Tensor, XP: Tensor, needed: Tensor | None, first: bool) -> None:
        """Take the step along ``P``, its updates and bound terms in one op (``_start``)."""
        certified_cg_tail_(
            self.V, self.XV, self.HV, self.R, self.out, self.P, XP, HP, self.rz, needed,
            self.A_after, self.Delta, self.spectral, self.bound_scale, first,
        )  # fmt: skip

    def _bound_terms(self) -> None:
        projected = (self.A_after * self.XV.square()).sum(0).sqrt()
        step = torch.linalg.vector_norm(self.V, dim=0)
        per_class = data_dependent_bound(
            self.spectral, step, projected, self.gamma, self.row_norm_max
        )
        torch.sub(self.Delta, self.HV, out=self.R)
        torch.sum(torch.linalg.vector_norm(self.R, dim=0), 0, out=self.out[0])
        torch.sum(per_class, 0, out=self.out[1])

    def _start(self) -> None:
        """Delta, the Woodbury extension by the row, the first CG step and its bound."""
        f, r = self.factor, self.row
        X, Z, A = self.X, self.Z, self.A
        xi = X.index_select(0, r)  # [1, d]
        if self.fused_start:
            certified_start_(
                self.row_weights, self.Delta, self.A_after, self.S, self.lam_k, self.spectral,
                X, self.Y, Z, A, self.W, r, self.n_rem, self.eig, self.row_sq, self.lam,
            )  # fmt: skip
        else:
            a = torch.index_select(A, 0, r, out=self.row_weights)  # [1, K]
            m_k = a[0]
            derivative = loss_derivative(Z.index_select(0, r), self.Y.index_select(0, r))
            torch.add(xi.T @ (a * derivative), (self.lam * m_k) * self.W, out=self.Delta)
            self.A_after.copy_(A).index_fill_(0, r, 0.0)
            curvature_weights(Z, self.A_after, out=self.S)
            torch.mul(self.n_rem - m_k, self.lam, out=self.lam_k)
            trace = self.row_sq @ self.A_after
            torch.minimum(self.eig, trace, out=self.spectral).clamp_min_(0.0).sqrt_()
        # the Woodbury column of the row, written into slot t (zero / identity before)
        scale = f.weights.index_select(0, r).clamp_min(0.0).sqrt()  # [1, K]
        U_new = xi.T.unsqueeze(0) * scale.T.unsqueeze(1)  # [K, d, 1]
        # M^{-1} of the new column and of Delta in one product (one read of M^{-1}): Delta's
        # does not depend on the column, the rest of its preconditioning does
        both = self._base_solve(torch.cat([U_new, self.Delta.T.unsqueeze(-1)], dim=2))
        G_new, y_delta = both[..., :1], both[..., 1:]  # [K, d, 1] each
        C12 = -torch.bmm(f.U_buf.mT, G_new)  # [K, T, 1], zero at and past slot t
        L21 = self._c_solve(C12)  # [K, T, 1], zero at and past slot t
        if self.fused_woodbury:
            # fused_woodbury is set only with an explicit C^{-1} (see __init__)
            C_inv = cast(Tensor, self.C_inv)
            certified_woodbury_row_(
                f.U_buf, f.G_buf, f.C_buf, C_inv, self.out, U_new, G_new, L21, self.slot
            )
        else:
            self._extend(U_new, G_new, L21)
        # CG from zero along the extended solve, scaled to minimise the H-norm error
        self.P.copy_(self._precondition(self.Delta, y_delta))
        HP, XP = self._hessian(self.P)
        torch.sum(self.Delta * self.P, 0, out=self.rz)
        if self.fused_tail:
            self._fused_tail(HP, XP, None, first=True)
            return
        curvature = (self.P * HP).sum(0)
        alpha = torch.where(curvature > 0, self.rz / curvature, 1.0)
        torch.mul(self.P, alpha, out=self.V)
        torch.mul(XP, alpha, out=self.XV)
        torch.mul(HP, alpha, out=self.HV)
        self._bound_terms()

    def _extend(self, U_new: Tensor, G_new: Tensor, L21: Tensor) -> None:
        """Write the row's Woodbury column into slot ``t`` and check the factor (``out[2]``)."""
        f, t = self.factor, self.slot
        S22 = 1.0 - torch.bmm(U_new.mT, G_new) - torch.bmm(L21.mT, L21)  # [K, 1, 1]
        self.out[2] = (S22 > 0).all()  # copied as 1.0 / 0.0
        L22 = S22.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
        onehot = (self.slots == t).to(torch.float64)  # [T]
        row_t = L21.mT + L22 * onehot  # [K, 1, T]: L21^T left of slot t, L22 at it
        if self.C_inv is not None:
            # row t of the new inverse: (e_t - L21^T C^{-1}) / L22; the other rows keep
            # theirs (the rows above are unchanged, those below are still identity rows)
            inv_row = (onehot - torch.bmm(L21.mT, self.C_inv)) / L22
            self.C_inv.index_copy_(1, t, inv_row)
        f.U_buf.index_copy_(2, t, U_new)
        f.G_buf.index_copy_(2, t, G_new)
        f.C_buf.index_copy_(1, t, row_t)

    def _iterate(self, needed: Tensor | None = None) -> None:
        """One preconditioned CG iteration on the step, then its bound terms.

        ``needed`` (a device bool): take the iteration only where it is true; otherwise the
        step stays as it is (its step length is zero, the bound terms are recomputed from the
        same step and come out the same).
        """
        Zr = self._precondition(self.R)
        rz_new = (self.R * Zr).sum(0)
        beta = torch.where(self.rz != 0, rz_new / self.rz, 0.0)
        self.P.mul_(beta).add_(Zr)
        self.rz.copy_(rz_new)
        HP, XP = self._hessian(self.P)
        if self.fused_tail:
            self._fused_tail(HP, XP, needed, first=False)
            return
        curvature = (self.P * HP).sum(0)
        take = curvature > 0 if needed is None else (curvature > 0) & needed
        alpha = torch.where(take, self.rz / curvature, 0.0)
        self.V.addcmul_(alpha, self.P)
        self.XV.addcmul_(alpha, XP)
        self.HV.addcmul_(alpha, HP)
        self._bound_terms()

    def _iterate_if_needed(self) -> None:
        """Take the iteration the host loop would take next, decided on the device.

        Taken when the step's residual is not within ``cg_tol`` times its bound (NaN
        included), as the host's loop decides; ``out[3]`` says whether it was.
        """
        needed = ~(self.out[0] <= self.cg_tol * self.out[1])
        self.out[3] = needed  # copied as 1.0 / 0.0
        self._iterate(needed)

    def _start_and_iterate(self) -> None:
        """Run the start and, where needed, one CG iteration (one launch, one device read)."""
        self._start()
        self._iterate_if_needed()

    def _commit(self, go: Tensor | None = None) -> None:
        """Apply the planned step and drop its row: the device half of the model's commit.

        Same updates as ``CertifiedLogisticRegression._commit`` for this step (weights,
        margins, then the row's weights, counts, removed flag and the rank-1 downdate of the
        Gram matrices), with the row read from the device scalar ``row``.

        ``go`` (a device bool, pipelined runs): apply the updates only where it is true,
        decided on the device; where it is true the tensors get the same values as without
        it (the row's weights and features are finite: multiplying them by one is exact).
        """
        r = self.row
        a = self.row_weights[0]  # [K]: the row's weights before the removal
        x = self.X.index_select(0, r)[0]
        if go is None:
            self.W.add_(self.V)
            self.Z.add_(self.XV)
            self.A.index_fill_(0, r, 0.0)
            self.removed.index_fill_(0, r, True)
        else:
            self.W.add_(torch.where(go, self.V, 0.0))
            self.Z.add_(torch.where(go, self.XV, 0.0))
            self.A.index_copy_(0, r, self.row_weights * ~go)  # zero where go, else as it was
            self.removed.index_copy_(0, r, self.removed.index_select(0, r) | go)
            a = a * go
        if self.shared_gram:
            self.gram[0].addr_(x if go is None else x * go, x, alpha=-1.0)
        else:
            self.gram.sub_(a[:, None, None] * torch.outer(x, x))
        self.n_rem.sub_(a)

    def _pipelined_step(self) -> None:
        """Plan and (where the host would) commit the next row of a pipelined run.

        The row is ``run_rows[counter]`` and its slot ``run_slot0 + counter``. The step is
        committed (``out[4]``) only if every earlier row of the run was, the extended factor
        is positive definite, the start and at most one chained CG iteration reach
        ``cg_tol``, and the bound fits the budget left: the host loop's own tests, taken on
        the device. The row's five numbers go to ``results[slot]``. Once a row is not
        committed no later row of the run is (``alive``), so the host can queue rows without
        reading each one's numbers first.
        """
        torch.index_select(self.run_rows, 0, self.counter, out=self.row)
        torch.add(self.run_slot0, self.counter, out=self.slot)
        self._start()
        self._iterate_if_needed()
        if self.fused_commit:
            certified_commit_(
                self.W, self.Z, self.A, self.removed, self.gram, self.n_rem, self.budget_used,
                self.alive, self.out, self.results, self.counter, self.V, self.XV, self.X,
                self.row, self.slot, self.row_weights, self.budget, self.cg_tol,
                self.shared_gram,
            )  # fmt: skip
            return
        residual, bound = self.out[0], self.out[1]
        total = residual + bound
        go = (
            self.alive
            & (self.out[2] > 0.5)
            & (residual <= self.cg_tol * bound)
            & (self.budget_used + total <= self.budget)  # a NaN never commits
        )
        self._commit(go)
        self.budget_used.add_(torch.where(go, total, 0.0))
        self.alive.logical_and_(go)
        self.out[4] = go[0]  # copied as 1.0 / 0.0
        self.results.index_copy_(0, self.slot, self.out.unsqueeze(0))
        self.counter.add_(1)

    # ---- running -------------------------------------------------------------------------

    def _state_buffers(self) -> list[Tensor]:
        """Return every tensor the step's functions write (its own, the slot's, the model's)."""
        own = [self.row_weights, self.Delta, self.lam_k, self.S, self.spectral, self.A_after,
               self.V, self.XV, self.HV, self.R, self.P, self.rz, self.out]  # fmt: skip
        f = self.factor
        slot = [f.U_buf, f.G_buf, f.C_buf] + ([self.C_inv] if self.C_inv is not None else [])
        model = [self.W, self.Z, self.gram, self.n_rem, self.A, self.removed]
        run = [self.row, self.slot, self.counter, self.alive, self.budget_used, self.results]
        return own + slot + model + run

    @staticmethod
    def _snapshot(buffers: list[Tensor]) -> list[Tensor]:
        """Copy ``buffers`` (see :meth:`_restore`)."""
        return [t.clone() for t in buffers]

    @staticmethod
    def _restore(buffers: list[Tensor], saved: list[Tensor]) -> None:
        """Put back ``buffers`` as :meth:`_snapshot` copied them."""
        for t, copy in zip(buffers, saved, strict=True):
            t.copy_(copy)

    def _launch(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn``: replay its graph on CUDA (captured on first use), else eagerly."""
        if self.use_graphs:
            graph = self.graphs.get(name)
            if graph is None:
                graph = self._capture(name, fn)
            if graph is not None:
                graph.replay()
                return
        fn()

    def _record(self, fn: Callable[[], None]) -> Any:
        """Warm ``fn`` up on a side stream, then capture it as a CUDA graph."""
        dev = self.X.device
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            fn()  # warm-up: workspaces and lazy initialisation outside the capture
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph

    def _capture(self, name: str, fn: Callable[[], None]) -> Any:
        """Capture ``fn`` as a CUDA graph, or switch graphs off (with a warning) if it fails.

        Every tensor ``fn`` may write is copied before and put back after, so the warm-up run
        changes nothing: the replay that follows computes what ``fn`` would have.
        """
        written = self._state_buffers()
        saved = self._snapshot(written)
        try:
            graph = self._record(fn)
        except Exception as err:  # noqa: BLE001 - any capture failure: run eagerly instead
            warnings.warn(
                f"certified removal: CUDA graph capture failed ({type(err).__name__}: {err}); "
                "running the fixed-shape step eagerly",
                RuntimeWarning,
                stacklevel=5,
            )
            self.use_graphs = False
            graph = None
        finally:
            self._restore(written, saved)
        if graph is not None:
            self.graphs[name] = graph
        return graph

    def begin(self, row: int, slot: int, chain: bool = False) -> None:
        """Launch the planning of the removal of ``row`` into Woodbury slot ``slot``.

        ``chain``: also take one CG iteration where the start's residual needs it, decided on
        the device (worth it when most removals need one: one launch and one device read
        fewer; when none was needed, one product with the Hessian was spent for nothing).
        On CUDA this returns once the work is queued; :meth:`result` reads its numbers.
        """
        self.row.fill_(row)
        self.slot.fill_(slot)
        self._sync_inverses(slot)
        if chain:
            self._launch("start+iterate", self._start_and_iterate)
        else:
            self._launch("start", self._start)
        self.chained = chain
        self.C_inv_rows = slot + 1  # the row this start folded in (forget_c_inverse if not)

    def result(self) -> tuple[float, float, bool, int]:
        """Wait for the planned step (one device read).

        Returns:
            ``(solve residual sum, bound sum, factor ok, CG iterations taken)``.

        """
        residual, bound, ok, iterated = self.out.tolist()[:4]
        return residual, bound, ok > 0.5, int(self.chained and iterated > 0.5)

    def start(self, row: int, slot: int) -> tuple[float, float, bool]:
        """Plan the removal of ``row`` into Woodbury slot ``slot`` (no chained iteration).

        Returns:
            ``(solve residual sum, bound sum, factor ok)``; the step is in ``V``/``XV``.

        """
        self.begin(row, slot)
        return self.result()[:3]

    def iterate(self) -> tuple[float, float]:
        """One more CG iteration; returns ``(solve residual sum, bound sum)``."""
        self._launch("iterate", self._iterate)
        residual, bound = self.out.tolist()[:2]
        return residual, bound

    def commit(self) -> None:
        """Launch the commit of the planned step (see :meth:`_commit`); no device read."""
        self._launch("commit", self._commit)

    # ---- pipelined runs ------------------------------------------------------------------

    def start_run(self, rows: Tensor, slot: int, budget_used: float, budget: float) -> None:
        """Prepare a pipelined run removing ``rows`` (int64, CPU) into slots from ``slot`` on.

        ``budget_used`` and ``budget`` are the model's: the device adds each committed row's
        bound to its own copy and refuses the first row that would exceed the budget.
        """
        count = int(rows.shape[0])
        if self.run_rows_copied is not None:  # the last run's copy has left the buffer
            self.run_rows_copied.synchronize()
        self.run_rows_host[:count].copy_(rows)
        self.run_rows[:count].copy_(self.run_rows_host[:count], non_blocking=True)
        if self.run_rows.is_cuda:
            self.run_rows_copied = torch.cuda.Event()
            self.run_rows_copied.record(torch.cuda.current_stream(self.run_rows.device))
        self.run_slot0.fill_(slot)
        self.counter.zero_()
        self.alive.fill_(True)
        self.budget_used.fill_(budget_used)
        self.budget.fill_(budget)
        self._sync_inverses(slot)
        self.run_start = slot
        self.queued = 0

    def enqueue(self) -> None:
        """Queue the next row of the run (one graph launch on CUDA, no device read)."""
        self._launch("pipelined", self._pipelined_step)
        self.queued += 1
        self.C_inv_rows = self.run_start + self.queued  # as begin(): forget_c_inverse if not

    def fetch(self, first: int, count: int) -> RunResults:
        """Start copying the numbers of the run's rows ``first .. first + count`` to the host."""
        lo = self.run_start + first
        host = self.results_host[lo : lo + count]
        host.copy_(self.results[lo : lo + count], non_blocking=True)
        event = None
        if self.results.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.results.device))
        return RunResults(first, host, event)


class RunResults:
    """The numbers of some rows of a pipelined run, on their way to the host.

    Attributes:
        first (int): the run index of the first row.

    """

    def __init__(self, first: int, host: Tensor, event: Any) -> None:
        self.first = first
        self._host = host
        self._event = event

    def wait(self) -> list[list[float]]:
        """Wait for the copy; per row ``[residual, bound, factor ok, iterated, committed]``."""
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()
