"""What certified removal records: each removal's accounting, each call's report, each plan.

:class:`RemovalRecord` and :class:`RemovalReport` are public (returned by
:meth:`CertifiedLogisticRegression.remove <fastunlearn.certified.CertifiedLogisticRegression>`);
:class:`PlannedStep` is the estimator's internal plan of one step, computed without changing
the model and committed (or discarded) afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from .._equality import dataclass_eq
from .._repr import format_number, summarize
from . import woodbury

__all__ = ["PlannedStep", "RemovalRecord", "RemovalReport"]


@dataclass(frozen=True, repr=False)
class RemovalRecord:
    """One removal (or batch removal, or retrain) as the model accounted for it.

    Attributes:
        indices: training-row indices removed by this step (empty for an explicit
            :meth:`CertifiedLogisticRegression.retrain_now`).
        bound: the data-dependent gradient-residual bound of the Newton step (summed over
            classes, plus the linear solver's residual). For a step that retrained instead,
            the bound that would have exceeded the budget (not added).
        cumulative: used budget after the step (``budget_used_``).
        budget_left: ``budget_ - cumulative``.
        retrained: whether the step retrained from scratch with a fresh perturbation.
        seconds: wall time of the step (computation only, no checkpoint I/O).
        worst_case: the worst-case bound ``4 gamma m^2 C^2 / (lam^2 (n - m))`` of the step,
            summed over the classes it updates (reported, never used for accounting).

    """

    indices: tuple[int, ...]
    bound: float
    cumulative: float
    budget_left: float
    retrained: bool
    seconds: float
    worst_case: float = 0.0

    #: a NaN field compares as on Python <= 3.12 (the same object is equal; 3.13's
    #: generated __eq__ compares fields one by one and calls such a record unequal to itself)
    __eq__ = dataclass_eq

    def __repr__(self) -> str:
        """Return the record in one short line (a long ``indices`` shows its ends only)."""
        return (f"RemovalRecord(indices={summarize(self.indices)}, "
                f"bound={format_number(self.bound)}, "
                f"cumulative={format_number(self.cumulative)}, "
                f"budget_left={format_number(self.budget_left)}, "
                f"retrained={self.retrained}, seconds={format_number(self.seconds)}, "
                f"worst_case={format_number(self.worst_case)})")

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-compatible data."""
        out = asdict(self)
        out["indices"] = [int(i) for i in self.indices]
        return out


@dataclass(repr=False)
class RemovalReport:
    """What one call of :meth:`CertifiedLogisticRegression.remove` (or ``report``) did.

    Attributes:
        records: one :class:`RemovalRecord` per Newton step or retrain, in order.
        retrains: how many of the records retrained.
        seconds: wall time of the whole call.

    """

    records: list[RemovalRecord] = field(default_factory=list)
    retrains: int = 0
    seconds: float = 0.0

    @property
    def bounds(self) -> list[float]:
        """Per-record bounds."""
        return [r.bound for r in self.records]

    def __repr__(self) -> str:
        """Return a short summary: counts, the budget after the last step, first and last records.

        ``steps`` counts the records, ``rows`` the removed training rows. The length does not
        grow with the number of records (a report of thousands of removals prints its first
        and last record and how many are left out).
        """
        records = self.records
        rows = sum(len(r.indices) for r in records)
        head = (f"RemovalReport(steps={len(records)}, rows={rows}, retrains={self.retrains}, "
                f"seconds={format_number(self.seconds)}")
        if not records:
            return head + ", records=[])"
        last = records[-1]
        head += (f", cumulative={format_number(last.cumulative)}, "
                 f"budget_left={format_number(last.budget_left)}")
        if len(records) <= 2:
            shown = ", ".join(repr(r) for r in records)
        else:
            shown = f"{records[0]!r}, ... {len(records) - 2} more, {last!r}"
        return f"{head}, records=[{shown}])"

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-compatible data."""
        return {
            "records": [r.to_dict() for r in self.records],
            "retrains": int(self.retrains),
            "seconds": float(self.seconds),
        }


class PlannedStep(NamedTuple):
    """A planned Newton removal step, computed without changing the model."""

    rows: Tensor  # int64 [m], on the model's device
    rows_np: np.ndarray  # the same indices on the host
    row_weights: Tensor | None  # [m, K] memberships of the removed rows (before removal)
    classes: Tensor | None  # int64 classes updated; None: all classes
    V: Tensor | None  # [d, k'] Newton step; None: no class is affected
    XV: Tensor | None  # [n, k'] X @ V, the change of the cached margins
    factor: woodbury.RemovedRowsFactor | None  # CG: the factors with these rows folded in
    L: Tensor | None  # [k', d, d] Cholesky factors of the new Hessians (cholesky solver)
    bound: float
    worst_case: float
    cg_iterations: int  # 0 for a Cholesky step
