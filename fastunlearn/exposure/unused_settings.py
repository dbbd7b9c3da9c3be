"""The settings of a canary experiment that the others make pointless.

:func:`canary_rules` (:class:`~fastunlearn.exposure.experiment.CanaryConfig`, the
``exposure`` command): warned about from Python by
:func:`~fastunlearn.exposure.experiment.run_canary_experiment` with the fields' names, and
by the command with its flags (:func:`fastunlearn._unused_settings.warn_unused_settings`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._unused_settings import GIVEN, UnusedRule

if TYPE_CHECKING:
    from .experiment import CanaryConfig

__all__ = ["TRAINING_SETTINGS", "canary_rules"]

#: The settings read by the training steps alone (``seq_len`` is not one of them: it is
#: checked against the text, and canary unlearning takes its windows from it).
TRAINING_SETTINGS = ("lr", "weight_decay", "batch_size")


def canary_rules(config: CanaryConfig) -> list[UnusedRule]:
    """Return the rules of a :class:`~fastunlearn.exposure.experiment.CanaryConfig`.

    - ``steps=0``: no optimiser step is taken, so the learning rate, the L2 penalty and
      the windows per step are never used (nor by the retraining of canary unlearning,
      which takes as many steps).
    - ``n_candidates`` set: the space is scored exhaustively only when the sample is at
      least as large as it, whatever ``enumerate_limit`` says.
    """
    return [
        UnusedRule(config.steps == 0, TRAINING_SETTINGS, (("steps", 0),),
                   "(for the training)"),
        UnusedRule(config.n_candidates is not None, ("enumerate_limit",),
                   (("n_candidates", GIVEN),), "(for the default, n_candidates=None)"),
    ]
