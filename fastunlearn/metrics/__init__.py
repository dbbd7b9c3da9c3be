"""Evaluation metrics for unlearning: accuracies, MIA, epsilon-hat, competition score, fairness.

Everything is vectorised over examples and runs on CPU or CUDA tensors (float64 where the
result depends on it):

* :func:`accuracy`, :func:`per_model_accuracy`, :func:`accuracy_report`: forget / retain /
  test accuracy and OPTML's unlearning accuracy;
* :func:`svc_mia_efficacy`: OPTML's MIA-Efficacy (SVC on the confidence);
* :func:`epsilon_hat`, :func:`lira_epsilons`: Seed A's per-example epsilon of a Gaussian
  likelihood-ratio attack and its median ("Forget with Precision");
* :func:`competition_score`, :func:`competition_epsilons`, :func:`forget_score`,
  :func:`final_score`: the NeurIPS 2023 unlearning competition metric;
* :func:`per_class_accuracy`, :func:`class_fairness`: per-class accuracy, worst class, gap;
* :class:`Stopwatch`, :func:`time_ratio`: wall time and its ratio to retraining;
* :func:`load_logits_dir`, :func:`write_logits_dir`, :func:`evaluate_logits_dir`: the saved-
  logits layout of the project fixture and every metric computed from it.
"""

from typing import TYPE_CHECKING

from .._lazy_exports import install_lazy_exports

if TYPE_CHECKING:
    from .accuracy import accuracy, accuracy_report, per_model_accuracy
    from .competition import (
        CompetitionResult,
        competition_epsilons,
        competition_score,
        final_score,
        forget_score,
        score_bins,
    )
    from .epsilon import EpsilonResult, epsilon_hat, lira_epsilons, lira_scores
    from .evaluate import evaluate_logits, evaluate_logits_dir
    from .fairness import class_fairness, per_class_accuracy
    from .fixtures import LogitsDir, load_logits_dir, pack_slots, split_slots, write_logits_dir
    from .mia import svc_mia_efficacy
    from .statistics import hinge_logit, logit_scaled_confidence, true_class_confidence
    from .timing import Stopwatch, time_ratio

__all__ = [
    "CompetitionResult",
    "EpsilonResult",
    "LogitsDir",
    "Stopwatch",
    "accuracy",
    "accuracy_report",
    "class_fairness",
    "competition_epsilons",
    "competition_score",
    "epsilon_hat",
    "evaluate_logits",
    "evaluate_logits_dir",
    "final_score",
    "forget_score",
    "hinge_logit",
    "lira_epsilons",
    "lira_scores",
    "load_logits_dir",
    "logit_scaled_confidence",
    "pack_slots",
    "per_class_accuracy",
    "per_model_accuracy",
    "score_bins",
    "split_slots",
    "svc_mia_efficacy",
    "time_ratio",
    "true_class_confidence",
    "write_logits_dir",
]

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)
