"""The comparison harness behind ``fastunlearn forget``.

:func:`run_harness` trains the original model and retrained oracles (cached on disk), runs
forgetting methods over seeds, collects logits and computes every metric of
:mod:`fastunlearn.metrics`; :func:`write_outputs` writes the JSON, the Markdown table, the
PNG plots and the logits (fixture layout, readable by ``fastunlearn evaluate``).
"""

from typing import TYPE_CHECKING

from .._lazy_exports import install_lazy_exports

if TYPE_CHECKING:
    from .config import (
        DIGITS_OVERRIDES,
        HarnessConfig,
        TrainSettings,
        method_overrides,
        oracle_recipe,
    )
    from .data import HarnessData, build_harness_model, load_harness_data, split_forget
    from .report import render_table, write_outputs
    from .runner import collect_logits, run_harness
    from .training import TrainedModel, cache_key, train_model, train_or_load

__all__ = [
    "DIGITS_OVERRIDES",
    "HarnessConfig",
    "HarnessData",
    "TrainSettings",
    "TrainedModel",
    "build_harness_model",
    "cache_key",
    "collect_logits",
    "load_harness_data",
    "method_overrides",
    "oracle_recipe",
    "render_table",
    "run_harness",
    "split_forget",
    "train_model",
    "train_or_load",
    "write_outputs",
]

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)
