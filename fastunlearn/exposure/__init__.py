"""Canary exposure: how much a sequence model memorised an inserted secret.

:func:`rank_exposure` and :func:`skew_normal_exposure` are the metric (Carlini et al.
2019, as used by the influence-unlearning reference); :func:`run_canary_experiment`
inserts a canary into generated text, trains a small character LSTM/GRU and measures it.
"""

from typing import TYPE_CHECKING

from .._lazy_exports import install_lazy_exports

if TYPE_CHECKING:
    from .experiment import (
        CanaryConfig,
        CanaryResult,
        ExposureMeasurement,
        format_report,
        greedy_completion,
        measure_exposure,
        run_canary_experiment,
        train_char_lm,
    )
    from .exposure import (
        SkewNormalFit,
        exposure_from_rank,
        fit_skew_normal,
        rank_exposure,
        skew_normal_exposure,
    )
    from .model import CharLM, sequence_log_perplexity
    from .plot import plot_exposure
    from .text import DIGITS, CharVocab, generate_corpus, insert_canary

__all__ = [
    "CanaryConfig",
    "CanaryResult",
    "CharLM",
    "CharVocab",
    "DIGITS",
    "ExposureMeasurement",
    "SkewNormalFit",
    "exposure_from_rank",
    "fit_skew_normal",
    "format_report",
    "generate_corpus",
    "greedy_completion",
    "insert_canary",
    "plot_exposure",
    "measure_exposure",
    "rank_exposure",
    "run_canary_experiment",
    "sequence_log_perplexity",
    "skew_normal_exposure",
    "train_char_lm",
]

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)
