"""Influence-based unlearning of features and labels (Warnecke et al., NDSS 2023).

:func:`influence_update` applies ``theta - tau G`` (first order) or
``theta - step_scale (H + lambda I)^{-1} G`` (second order, solvers ``"cg"``, ``"lissa"``,
``"direct"``; ``step_scale`` is 1 except for LiSSA on summed batch Hessians, see
:class:`LissaSettings`) with ``G = sum grad l(z~) - sum grad l(z)`` for affected points
``z`` and their corrections ``z~``. Drivers: :func:`repair_labels` and
:func:`iterative_label_repair` (label poisoning), :func:`unlearn_features` (replace or zero
feature values). :func:`linear_influence_update`
is the certified logistic-regression variant.
"""

from typing import TYPE_CHECKING

from .._lazy_exports import install_lazy_exports

if TYPE_CHECKING:
    from .canary import CanaryUnlearnConfig, unlearn_canary
    from .curvature import GGNOperator
    from .drivers import (
        IterativeRepairResult,
        iterative_label_repair,
        predict,
        repair_labels,
        replace_features,
        unlearn_features,
    )
    from .feature_experiment import (
        FeatureConfig,
        render_feature_report,
        run_feature_experiment,
        write_feature_outputs,
    )
    from .gradients import (
        default_loss,
        gradient_difference,
        last_parameters,
        loss_gradient,
        loss_value,
    )
    from .linear import LinearUpdateResult, fit_logistic, linear_influence_update, required_sigma
    from .update import (
        CURVATURES,
        LISSA_HESSIANS,
        SOLVERS,
        LissaSettings,
        UpdateResult,
        check_update_options,
        influence_update,
    )

__all__ = [
    # updates
    "influence_update",
    "UpdateResult",
    "LissaSettings",
    "LISSA_HESSIANS",
    "check_update_options",
    "SOLVERS",
    "CURVATURES",
    "GGNOperator",
    # gradients and parameter subsets
    "gradient_difference",
    "loss_gradient",
    "loss_value",
    "default_loss",
    "last_parameters",
    # drivers
    "repair_labels",
    "iterative_label_repair",
    "IterativeRepairResult",
    "unlearn_features",
    "replace_features",
    "predict",
    # certified linear variant
    "linear_influence_update",
    "LinearUpdateResult",
    "fit_logistic",
    "required_sigma",
]

# feature-unlearning experiment and canary unlearning (issue 4)
__all__ += [
    "FeatureConfig",
    "run_feature_experiment",
    "render_feature_report",
    "write_feature_outputs",
    "CanaryUnlearnConfig",
    "unlearn_canary",
]

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)
