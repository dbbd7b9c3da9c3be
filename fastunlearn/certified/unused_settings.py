"""The settings of a certified removal experiment that the others make pointless.

:func:`removal_rules` (:class:`~fastunlearn.certified.experiment.ExperimentConfig`, the
``remove`` command): warned about from Python with the fields' names and by the command
with its flags (:func:`fastunlearn._unused_settings.warn_unused_settings`).
"""

from __future__ import annotations

from typing import Any

from .._unused_settings import UnusedRule

__all__ = ["TARGET_EPSILON_USE", "removal_rules"]

#: What ``target_epsilon`` is for (said when it has no effect).
TARGET_EPSILON_USE = "(it is the total epsilon of a DP feature extractor composed with the head)"


def removal_rules(config: Any) -> list[UnusedRule]:
    """Return the rules of a :class:`~fastunlearn.certified.experiment.ExperimentConfig`.

    ``solver="auto"`` may pick CG for any step, so ``cg_tol`` is unused with ``cholesky``
    only. Whether a named ``extractor`` is differentially private is known once its
    features are read (``target_epsilon`` with one that is not: said after the run).
    """
    no_extractor = config.extractor == "none"
    return [
        UnusedRule(config.solver == "cholesky", ("cg_tol",), (("solver", "cholesky"),),
                   "(for the CG solver)"),
        UnusedRule(config.dataset == "digits" and no_extractor, ("data_dir",),
                   (("dataset", "digits"), ("extractor", "none")),
                   "(the digits are bundled; the folder is read for other data sets and for "
                   "extracted features)"),
        UnusedRule(no_extractor, ("target_epsilon",), (("extractor", "none"),),
                   TARGET_EPSILON_USE),
        UnusedRule(config.std == 0, ("epsilon", "delta"), (("std", 0),),
                   "(the budget sigma * epsilon / c is 0: every removal retrains)"),
        UnusedRule(config.result_dir is None, ("plots",), (("result_dir", None),),
                   "(nothing is written)"),
        UnusedRule(config.num_removes == 0, ("retrain", "eval_every", "solver", "cg_tol"),
                   (("num_removes", 0),), "(no row is removed)"),
        UnusedRule(config.train_mode == "binary", ("subsample_ratio",),
                   (("train_mode", "binary"),),
                   "(as in the reference, where it subsamples the negatives of each "
                   "one-vs-rest class)"),
    ]
