"""The settings of the influence experiments that the others make pointless.

:func:`repair_rules` (:class:`~fastunlearn.influence.experiment.RepairConfig`, the
``repair`` command) and :func:`feature_rules`
(:class:`~fastunlearn.influence.feature_experiment.FeatureConfig`, ``unlearn-features``):
one table each, warned about from Python with the fields' names and by the commands with
their flags (:func:`fastunlearn._unused_settings.warn_unused_settings`).
"""

from __future__ import annotations

from typing import Any

from .._unused_settings import GIVEN, UnusedRule

__all__ = ["feature_rules", "repair_rules"]

#: ``repair``'s settings of the second-order solve (none of them is used with order 1).
_SECOND_ORDER = ("solver", "damping", "cg_tol", "cg_maxiter", "lissa_batch", "lissa_damping",
                 "lissa_scale", "lissa_depth", "lissa_hessian")
#: ``repair``'s LiSSA settings.
_LISSA = ("lissa_batch", "lissa_damping", "lissa_scale", "lissa_depth", "lissa_hessian")
#: ``unlearn-features``' settings of the certified linear variant.
_CERTIFIED = ("binary", "linear_lam", "epsilon", "delta")


def repair_rules(config: Any) -> list[UnusedRule]:
    """Return the rules of a :class:`~fastunlearn.influence.experiment.RepairConfig`."""
    order1, solver = config.order == 1, config.solver
    return [
        UnusedRule(order1, _SECOND_ORDER, (("order", 1),), "(for the second-order solve)"),
        UnusedRule(order1 and config.tau != "auto", ("curvature", "hvp_batch_size"),
                   (("order", 1), ("tau", config.tau)),
                   "(for the line search that picks 'tau' when it is 'auto')"),
        UnusedRule(not order1, ("tau",), (("order", config.order),),
                   "(it is the first-order step size)"),
        UnusedRule(not order1 and solver != "lissa", _LISSA, (("solver", solver),),
                   "(for the LiSSA solver)"),
        UnusedRule(not order1 and solver != "cg", ("cg_tol", "cg_maxiter"),
                   (("solver", solver),), "(for the CG solver)"),
        UnusedRule(not order1 and solver == "lissa", ("damping",), (("solver", "lissa"),),
                   "(LiSSA is damped by 'lissa_damping')"),
        UnusedRule("iterative" not in config.protocols, ("steps", "batch"),
                   (("protocols", tuple(config.protocols)),), "(for the iterative protocol)"),
        UnusedRule(config.dataset == "digits", ("data_dir",), (("dataset", "digits"),),
                   "(bundled; the folder is read for cifar10 only)"),
    ]


def feature_rules(config: Any) -> list[UnusedRule]:
    """Return the rules of a :class:`~fastunlearn.influence.feature_experiment.FeatureConfig`."""
    return [
        UnusedRule(config.mode != "replace", ("value", "n_rows"), (("mode", config.mode),),
                   "(remove mode zeroes the columns wherever non-zero)"),
        UnusedRule(config.columns is not None, ("top_k",), (("columns", GIVEN),),
                   "(it picks the columns when 'columns' is None)"),
        UnusedRule(config.dataset != "digits", _CERTIFIED, (("dataset", config.dataset),),
                   "(for the certified linear variant, which runs on the digits only)"),
        UnusedRule(config.dataset == "digits" and not config.linear, _CERTIFIED,
                   (("linear", False),), "(for the certified linear variant)"),
    ]
