"""Certified data removal for L2-regularised logistic regression (Guo et al., ICML 2020).

:class:`CertifiedLogisticRegression` trains with objective perturbation to the exact
minimiser (float64 Newton), removes training rows with Newton steps on the fused GLM ops,
accumulates the data-dependent gradient-residual bounds against the (epsilon, delta) noise
budget, and retrains (or raises :class:`BudgetExceededError`) before the budget is exceeded.
"""

from typing import TYPE_CHECKING

from .._lazy_exports import install_lazy_exports

if TYPE_CHECKING:
    from . import bounds, math
    from .bounds import (
        GAMMA_PAPER,
        GAMMA_TIGHT,
        c_delta,
        data_dependent_bound,
        epsilon_spent,
        noise_budget,
        resolve_gamma,
        worst_case_bound,
    )
    from .errors import BudgetExceededError
    from .estimator import CertifiedLogisticRegression
    from .math import newton_fit, no_tf32, normalize_rows, residual_norm
    from .records import RemovalRecord, RemovalReport

__all__ = [
    # estimator
    "CertifiedLogisticRegression",
    "RemovalRecord",
    "RemovalReport",
    "BudgetExceededError",
    # bounds and budget
    "GAMMA_PAPER",
    "GAMMA_TIGHT",
    "c_delta",
    "noise_budget",
    "epsilon_spent",
    "resolve_gamma",
    "data_dependent_bound",
    "worst_case_bound",
    # numerics
    "newton_fit",
    "residual_norm",
    "normalize_rows",
    "no_tf32",
    # modules
    "bounds",
    "math",
]

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)
