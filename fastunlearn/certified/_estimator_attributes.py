"""What the mixins of the certified estimator use of it, for type checkers only.

:class:`~fastunlearn.certified.state.ModelState`,
:class:`~fastunlearn.certified.single_row.SingleRowSteps` and
:class:`~fastunlearn.certified.pipelined.PipelinedRuns` are parts of
:class:`~fastunlearn.certified.CertifiedLogisticRegression`. They derive from
:class:`EstimatorAttributes`, which declares the attributes the estimator sets and the
methods one part calls on another; at run time it is ``object``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__all__ = ["EstimatorAttributes"]

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from .fixed_step import FixedShapeStep
    from .records import RemovalRecord, RemovalReport
    from .woodbury import RemovedRowsFactor

    class EstimatorAttributes:
        """What the mixins of ``CertifiedLogisticRegression`` use of the estimator (typing only).

        :class:`ModelState`, :class:`~fastunlearn.certified.single_row.SingleRowSteps` and
        :class:`~fastunlearn.certified.pipelined.PipelinedRuns` derive from it for type
        checkers only (at run time from ``object``): the attributes the estimator sets
        (``fit``, ``from_state``) and the methods one part of the class calls on another.
        """

        # parameters read at every removal
        checkpoint: str | os.PathLike[str] | None
        cg_tol: float | np.floating
        # fitted public attributes
        classes_: np.ndarray
        n_features_in_: int
        coef_: np.ndarray
        b_: np.ndarray
        budget_: float
        budget_used_: float
        budget_left_: float
        training_residual_: float
        n_removed_: int
        removed_indices_: np.ndarray
        retrains_: int
        n_iter_: int
        # the fitted state (tensors on the model's device)
        _cfg: dict[str, Any]
        _data_id: str
        _X: Tensor
        _Y: Tensor
        _labels: Tensor
        _member: Tensor
        _A: Tensor
        _removed: Tensor
        _n_rem: Tensor
        _row_sq: Tensor
        _row_norm_max: float
        _shared_gram: bool
        _draws: int
        _history: list[RemovalRecord]
        _gram: Tensor
        _eig: Tensor
        _eig_slack: Tensor
        _W: Tensor
        _b: Tensor
        _Z: Tensor | None
        _chol: Tensor
        # the CG starting factors, their Woodbury terms and the fixed-shape step
        _wood: RemovedRowsFactor | None
        _wood_last: RemovedRowsFactor
        _factor_generation: int
        _fixed: FixedShapeStep
        _cg_base: int
        _cg_last: int
        # host (numpy) mirrors of the removal bookkeeping
        _h_A: np.ndarray
        _h_removed: np.ndarray
        _h_labels: np.ndarray
        _h_n_rem: np.ndarray
        _h_row_sq: np.ndarray
        _h_eig: np.ndarray
        _h_eig_slack: np.ndarray
        # whether an event's checkpoint failed after its step was applied
        _ledger_gap: bool

        def get_params(self, deep: bool = True) -> dict[str, Any]: ...

        def _fit_config(self) -> dict[str, Any]: ...

        def _margins(self) -> Tensor: ...

        def _removal_factor(self, settled: bool = True) -> RemovedRowsFactor: ...

        def _drop_row_mirrors(self, i: int) -> None: ...

        def _refresh_loose_spectral(self) -> None: ...

        def _held_run(self, arr: np.ndarray, lo: int, free: int) -> np.ndarray: ...

        def _spectral_run(self, rows_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

        def _fixed_step_for(self, base: RemovedRowsFactor) -> FixedShapeStep: ...

        def _account_fixed_row(
            self, report: RemovalReport, row: int, bound: float, iterations: int, seconds: float
        ) -> None: ...

        def _remove_fixed(
            self,
            arr: np.ndarray,
            lo: int,
            report: RemovalReport,
            refresh_after: int = -1,
            limit: int | None = None,
        ) -> tuple[int, bool]: ...

else:
    EstimatorAttributes = object
