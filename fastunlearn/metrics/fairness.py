"""Fairness across classes: per-class accuracy, the worst class and the largest gap."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import logits_and_labels

__all__ = ["class_fairness", "per_class_accuracy"]

_INT64_MAX = 2**63 - 1


def per_class_accuracy(
    logits: Any,
    labels: Any,
    num_classes: int | np.integer | None = None,
) -> Tensor:
    """Accuracy of every class (one ``bincount`` pass, no loop over classes).

    Args:
        logits: ``[..., C]`` logits; with ``[S, N, C]`` (N models) the accuracy of a class
            pools all its (example, model) pairs, i.e. it is the mean over models.
        labels: Labels of shape ``logits.shape[:-1]``, or ``[S]`` for ``[S, N, C]``.
        num_classes: Number of classes (an integer >= C), ``C`` by default.

    Returns:
        float64 ``[num_classes]`` on the CPU; nan for a class without examples.

    Raises:
        TypeError: If ``num_classes`` is not an integer.
        ValueError: If ``num_classes`` is below C or above 2**63 - 1, or on bad logits /
            labels.

    """
    z, y = logits_and_labels(logits, labels)
    if num_classes is not None and (isinstance(num_classes, (bool, np.bool_))
                                    or not isinstance(num_classes, numbers.Integral)):
        # int() would silently truncate 10.7 to 10
        raise TypeError(f"'num_classes' must be an integer, got {num_classes!r}")
    C = z.shape[-1] if num_classes is None else int(num_classes)
    if C > _INT64_MAX:
        raise ValueError(f"'num_classes' ({C}) is too large (at most 2**63 - 1)")
    if C < z.shape[-1]:
        raise ValueError(f"'num_classes' ({C}) is smaller than the logits' classes "
                         f"({z.shape[-1]})")
    y = y.reshape(-1)
    correct = (z.argmax(-1).reshape(-1) == y).to(torch.float64)
    total = torch.bincount(y, minlength=C).to(torch.float64)
    hits = torch.bincount(y, weights=correct, minlength=C)
    return (hits / total).cpu()  # 0/0 -> nan for absent classes


def class_fairness(
    logits: Any,
    labels: Any,
    num_classes: int | np.integer | None = None,
) -> dict[str, Any]:
    """Per-class accuracy, worst and best class, and the largest gap between classes.

    Classes without examples are left out of worst/best/gap.

    Returns:
        ``{"per_class": [...], "worst_class", "worst_accuracy", "best_class",
        "best_accuracy", "largest_gap", "mean_class_accuracy"}``.

    Raises:
        TypeError: If ``num_classes`` is not an integer (see :func:`per_class_accuracy`).
        ValueError: If ``labels`` is empty, or as for :func:`per_class_accuracy` (bad
            ``num_classes``, logits or labels).

    """
    acc = per_class_accuracy(logits, labels, num_classes)
    present = ~torch.isnan(acc)
    if not bool(present.any()):
        raise ValueError("'labels' is empty: no class to measure")
    masked_lo = acc.masked_fill(~present, math.inf)
    masked_hi = acc.masked_fill(~present, -math.inf)
    worst = int(masked_lo.argmin())
    best = int(masked_hi.argmax())
    return {
        "per_class": [float(a) for a in acc],
        "worst_class": worst,
        "worst_accuracy": float(acc[worst]),
        "best_class": best,
        "best_accuracy": float(acc[best]),
        "largest_gap": float(acc[best] - acc[worst]),
        "mean_class_accuracy": float(acc[present].mean()),
    }
