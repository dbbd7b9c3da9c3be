"""Exceptions of the certified-removal package."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from .records import RemovalReport

__all__ = ["BudgetExceededError"]


class BudgetExceededError(RuntimeError):
    """A removal would push the used noise budget past ``sigma * epsilon / c(delta)``.

    Raised by :meth:`CertifiedLogisticRegression.remove` when ``retrain=False``. The removal
    that would have exceeded the budget is not applied; removals committed earlier in the same
    call stay committed and are listed in :attr:`report`.

    Attributes:
        indices: the training-row index (or, for a batch, indices) that was not removed.
        bound: the gradient-residual bound that removal would have added.
        budget_left: the budget left before that removal (``budget_ - budget_used_``).
        report: the :class:`RemovalReport` of the removals committed earlier in the call
            (``None`` when nothing was committed).

    """

    def __init__(
        self,
        message: str,
        *,
        indices: tuple[int, ...] = (),
        bound: float | np.floating = float("nan"),
        budget_left: float | np.floating = float("nan"),
        report: RemovalReport | None = None,
    ) -> None:
        super().__init__(message)
        self.indices = tuple(indices)
        self.bound = float(bound)
        self.budget_left = float(budget_left)
        self.report = report
