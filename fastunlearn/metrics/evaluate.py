"""Every applicable metric for a saved-logits directory (the fixture layout).

For each method folder, against the retrained models of the same directory:

* forget accuracy of every model from the logits (mean and spread), and the retain /
  forget / test accuracies and wall times of the ``metrics.csv`` files where present;
* Seed A's epsilon-hat (delta 0.05 by default) with its per-example epsilons;
* the NeurIPS 2023 competition forget score F and, when both ``metrics.csv`` give retain
  and test accuracies, the final score ``F * (RA_U / RA_R) * (TA_U / TA_R)``;
* class fairness on the forget set (per-class accuracy pooled over models, worst class,
  largest gap) for the method and for the retrained models;
* the wall-time ratio to retraining when both ``metrics.csv`` have ``wall_time_s``.

A ``baseline`` entry scores the retrained models against themselves (first half vs second
half), the noise floor of both epsilon metrics. MIA-Efficacy needs retain and test logits,
which this layout does not hold; it is reported as not applicable.

A metric a method has too few models for (epsilon-hat: 2 per group, the competition score:
2 retrained and 3 unlearned) is skipped for that method with a ``privacy_note``, and a
method whose logits cannot be scored gets an ``error``; the other methods are still scored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._device import parse_device
from .._numbers import check_flag
from ._checks import check_delta, stacked_logits
from .accuracy import per_model_accuracy
from .competition import DEFAULT_DELTA as COMPETITION_DELTA
from .competition import (
    check_accuracies,
    competition_score,
    mark_final_score_undefined,
    zero_retrained_accuracies,
)
from .epsilon import DEFAULT_DELTA as EPSILON_DELTA
from .epsilon import epsilon_hat
from .fairness import class_fairness
from .fixtures import LogitsDir, _mean_recorded, load_logits_dir
from .timing import time_ratio

if TYPE_CHECKING:
    import numpy as np

__all__ = ["evaluate_logits", "evaluate_logits_dir"]

#: Retrained models per half of the retrained-vs-retrained baseline: epsilon-hat's minimum
#: (the competition score, 3 unlearned models, is left out of a baseline of 2 or 2.5 per
#: half with a ``privacy_note``, as for a method). ``fastunlearn forget`` uses the same rule.
MIN_BASELINE_HALF = 2

#: Fewest retrained / unlearned models of epsilon-hat and of the competition score.
MIN_EPSILON_MODELS = (2, 2)
MIN_COMPETITION_MODELS = (2, 3)


def _finite_list(t: Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def evaluate_logits(
    retrain: Tensor,
    unlearn: Tensor,
    labels: Tensor,
    *,
    delta: float | np.floating = EPSILON_DELTA,
    competition_delta: float | np.floating = COMPETITION_DELTA,
    accuracies: dict[str, float] | None = None,
    per_example: bool = True,
) -> dict[str, Any]:
    """Epsilon-hat, competition score, forget accuracy and fairness of one method.

    A score that needs more models than given (:data:`MIN_EPSILON_MODELS`,
    :data:`MIN_COMPETITION_MODELS`) is left out and ``privacy_note`` says why.

    Args:
        retrain: ``[S, N, C]`` retrained-model logits on the forget set.
        unlearn: ``[S, M, C]`` unlearned-model logits.
        labels: ``[S]`` labels.
        delta: Seed A's delta.
        competition_delta: The competition's delta.
        accuracies: Optional ``ra_u, ra_r, ta_u, ta_r`` for the competition final score.
        per_example: Include the per-example epsilons (lists) in the result.

    Returns:
        A JSON-friendly dict.

    Raises:
        ValueError: If the logits are empty, disagree in shape, or hold nan / inf, a delta
            is outside [0, 1), or ``accuracies`` lacks a key or has another one.
        TypeError: If a delta is not a number, ``accuracies`` not a mapping or
            ``per_example`` not a bool.

    """
    # checked here too: a score skipped for too few models would not check its own
    delta = check_delta(delta, "delta")
    competition_delta = check_delta(competition_delta, "competition_delta")
    check_accuracies(accuracies)
    per_example = check_flag("per_example", per_example)  # "no" would be truthy
    retrain, unlearn, labels = stacked_logits(retrain, unlearn, labels)
    n, m = int(retrain.shape[1]), int(unlearn.shape[1])
    acc = per_model_accuracy(unlearn, labels)
    out: dict[str, Any] = {
        "num_models": m,
        "forget_accuracy": float(acc.mean()),
        "forget_accuracy_std": float(acc.std()) if acc.numel() > 1 else 0.0,
        "fairness": class_fairness(unlearn, labels),
    }
    examples: dict[str, list[float]] = {}
    notes = []
    if n >= MIN_EPSILON_MODELS[0] and m >= MIN_EPSILON_MODELS[1]:
        eps = epsilon_hat(retrain, unlearn, labels, delta=delta)
        out.update(epsilon_hat=eps.epsilon_hat, seed_a=eps.to_dict())
        examples["epsilon"] = _finite_list(eps.per_example)
    else:
        notes.append(f"epsilon-hat needs >= {MIN_EPSILON_MODELS[0]} retrained and >= "
                     f"{MIN_EPSILON_MODELS[1]} unlearned models, got {n} and {m}")
    if n >= MIN_COMPETITION_MODELS[0] and m >= MIN_COMPETITION_MODELS[1]:
        comp = competition_score(retrain, unlearn, labels, delta=competition_delta,
                                 accuracies=accuracies)
        out.update(competition_forget_score=comp.forget_score,
                   competition_final_score=comp.final_score, competition=comp.to_dict())
        examples["competition_epsilon"] = _finite_list(comp.per_example)
    else:
        notes.append(f"the competition score needs >= {MIN_COMPETITION_MODELS[0]} retrained "
                     f"and >= {MIN_COMPETITION_MODELS[1]} unlearned models, got {n} and {m}")
    if per_example and examples:
        out["per_example"] = examples
    if notes:
        out["privacy_note"] = "; ".join(notes)
    return out


def _csv_means(columns: dict[str, list[float]]) -> dict[str, float]:
    """Means of the accuracy and wall-time columns of one ``metrics.csv``.

    Over the recorded values: an empty cell (a model whose value was not recorded) is read
    as NaN (:func:`~.fixtures.read_metrics_csv`) and left out, as in
    :meth:`~.fixtures.LogitsDir.mean_metric`; a column without any recorded value is left
    out (it made every mean, the final score and the time ratio NaN, or stopped the
    evaluation of the whole directory).
    """
    out = {}
    for col in ("retain_accuracy", "forget_accuracy", "test_accuracy", "wall_time_s"):
        mean = _mean_recorded(columns.get(col))
        if not math.isnan(mean):
            out[col] = mean
    return out


def _evaluate_method(data: LogitsDir, name: str, ret_csv: dict[str, float], *,
                     dev: torch.device, **options: Any) -> dict[str, Any]:
    """Score one method folder; a ValueError becomes the entry's ``error``."""
    m_csv = _csv_means(data.metrics.get(name, {}))
    accs = None
    if all(k in m_csv and k in ret_csv for k in ("retain_accuracy", "test_accuracy")):
        accs = {"ra_u": m_csv["retain_accuracy"], "ra_r": ret_csv["retain_accuracy"],
                "ta_u": m_csv["test_accuracy"], "ta_r": ret_csv["test_accuracy"]}
    # the final score divides by the retrained accuracies: where one is 0 it is undefined
    # (final_score's error turned the method's entry into an error, epsilon-hat and F lost)
    zero = zero_retrained_accuracies(accs)
    try:
        entry = evaluate_logits(data.retrain.to(dev), data.methods[name].to(dev),
                                data.labels.to(dev), accuracies=None if zero else accs,
                                **options)
    except ValueError as exc:
        entry = {"num_models": int(data.methods[name].shape[1]), "error": str(exc)}
    mark_final_score_undefined(entry, zero, "the retrained models' (metrics.csv)")
    entry["csv"] = m_csv
    seconds, retrain_seconds = m_csv.get("wall_time_s", -1.0), ret_csv.get("wall_time_s", 0.0)
    # a negative or infinite time in a metrics.csv has no ratio (time_ratio would raise
    # here, outside the method's error handling, and stop the whole evaluation)
    if 0 <= seconds < math.inf and 0 < retrain_seconds < math.inf:
        entry["time_ratio"] = time_ratio(seconds, retrain_seconds)
    return entry


def evaluate_logits_dir(
    path: str | os.PathLike[str],
    *,
    methods: list[str] | None = None,
    delta: float | np.floating = EPSILON_DELTA,
    competition_delta: float | np.floating = COMPETITION_DELTA,
    baseline: bool = True,
    per_example: bool = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compute every applicable metric for each method folder vs the retrained logits.

    Args:
        path: Directory in the fixture layout (:mod:`.fixtures`).
        methods: Method folders to score (all by default).
        delta: Seed A's delta (0.05).
        competition_delta: The competition's delta (1e-5).
        baseline: Also score retrained vs retrained (first half vs second half of the models).
        per_example: Keep the per-example epsilons in the result.
        device: Where to compute (``"cuda"`` to use a GPU); the CPU by default.
        progress: Show a tqdm bar over the methods.

    Returns:
        ``{"path", "num_examples", "num_models", "num_classes", "delta",
        "competition_delta", "retrain": {...}, "methods": {name: {...}}, "baseline": {...},
        "mia": {...}}`` (JSON-friendly). ``"baseline"`` is present only with ``baseline``
        and at least ``2 * MIN_BASELINE_HALF`` (4) retrained models; with fewer,
        ``"baseline_skipped"`` says why instead.

    Raises:
        FileNotFoundError: If ``path`` or a requested method is missing.
        TypeError: If a delta is not a number, a flag (``baseline``, ``per_example``,
            ``progress``) not a bool, or ``methods`` not a list of names.
        ValueError: If a delta is outside [0, 1), ``methods`` is an empty list, ``device``
            is not a usable CPU or CUDA device, or the directory does not hold valid logits.

    """
    # checked before anything is read: a bad delta would otherwise only turn every
    # method's entry into an 'error'
    delta = check_delta(delta, "delta")
    competition_delta = check_delta(competition_delta, "competition_delta")
    baseline = check_flag("baseline", baseline)  # "no" would be truthy
    per_example = check_flag("per_example", per_example)
    progress = check_flag("progress", progress)
    if methods is not None and not isinstance(methods, (str, bytes)) \
            and isinstance(methods, Sequence) and len(methods) == 0:
        # an empty list scored nothing and returned an empty result (None means all)
        raise ValueError("'methods' is empty: name at least one method folder, or pass "
                         "None to score them all")
    dev = parse_device(device) if device is not None else torch.device("cpu")
    data = load_logits_dir(path, methods)
    labels = data.labels.to(dev)
    retrain = data.retrain.to(dev)
    ret_csv = _csv_means(data.retrain_metrics)
    ret_acc = per_model_accuracy(retrain, labels)
    result: dict[str, Any] = {
        "path": str(data.path),
        "num_examples": int(retrain.shape[0]),
        "num_models": int(retrain.shape[1]),
        "num_classes": int(retrain.shape[2]),
        "delta": delta,
        "competition_delta": competition_delta,
        "retrain": {
            "forget_accuracy": float(ret_acc.mean()),
            "csv": ret_csv,
            "fairness": class_fairness(retrain, labels),
        },
        "methods": {},
        "mia": {"applicable": False,
                "reason": "MIA-Efficacy needs retain and test logits; this layout holds "
                          "forget-set logits only (use fastunlearn.metrics.svc_mia_efficacy)"},
    }
    names = list(data.methods)
    iterator: Any = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="evaluate", unit="method")
    for name in iterator:
        result["methods"][name] = _evaluate_method(
            data, name, ret_csv, dev=dev, delta=delta, competition_delta=competition_delta,
            per_example=per_example)
    if baseline and retrain.shape[1] < 2 * MIN_BASELINE_HALF:
        result["baseline_skipped"] = (
            f"the baseline needs at least {2 * MIN_BASELINE_HALF} retrained models "
            f"({MIN_BASELINE_HALF} per half, epsilon-hat's minimum), "
            f"got {retrain.shape[1]}"
        )
    elif baseline:
        half = retrain.shape[1] // 2
        result["baseline"] = evaluate_logits(
            retrain[:, :half], retrain[:, half:2 * half], labels, delta=delta,
            competition_delta=competition_delta, per_example=per_example)
        result["baseline"]["split"] = f"retrained models 1..{half} vs {half + 1}..{2 * half}"
    return result
