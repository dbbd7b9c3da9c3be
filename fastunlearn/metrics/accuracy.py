"""Accuracies: forget / retain / test accuracy, unlearning accuracy (OPTML's UA), per model.

All functions take logits (not predictions) so that they also serve the stacked
``[S, N, C]`` logits of N models used by the epsilon metrics; ties in the logits go to the
lowest class index, as ``argmax`` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._checks import check_examples, logits_and_labels

__all__ = ["accuracy", "accuracy_report", "per_model_accuracy"]


def accuracy(logits: Any, labels: Any) -> float:
    """Fraction of correctly classified examples.

    Args:
        logits: ``[n, C]`` logits (CPU or CUDA).
        labels: ``[n]`` integer labels in ``[0, C)``.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: On an empty set, mismatched shapes or labels out of range.

    """
    z, y = logits_and_labels(logits, labels)
    if z.dim() != 2:
        raise ValueError(f"'logits' must have shape [n, C], got {tuple(z.shape)}")
    check_examples(z, "logits")
    return float((z.argmax(-1) == y).to(torch.float64).mean())


def per_model_accuracy(logits: Any, labels: Any) -> Tensor:
    """Accuracy of each of N models on the same S examples.

    Args:
        logits: ``[S, N, C]`` logits (the fixture layout without the label slot).
        labels: ``[S]`` integer labels.

    Returns:
        float64 ``[N]`` accuracies.

    Raises:
        ValueError: On no examples (S = 0), mismatched shapes or labels out of range.

    """
    z, y = logits_and_labels(logits, labels)
    if z.dim() != 3:
        raise ValueError(f"'logits' must have shape [S, N, C], got {tuple(z.shape)}")
    check_examples(z, "logits")
    return (z.argmax(-1) == y).to(torch.float64).mean(0)


def accuracy_report(
    *,
    forget: tuple[Any, Any] | None = None,
    retain: tuple[Any, Any] | None = None,
    test: tuple[Any, Any] | None = None,
) -> dict[str, float]:
    """Forget, retain and test accuracy and OPTML's unlearning accuracy UA = 1 - forget.

    Args:
        forget: ``(logits [n, C], labels [n])`` of the forget set, or None.
        retain: Same for the retain set.
        test: Same for the test set.

    Returns:
        ``{"forget_accuracy", "unlearning_accuracy", "retain_accuracy", "test_accuracy"}``
        for the sets given (fractions in [0, 1]).

    Raises:
        TypeError: If ``forget``, ``retain`` or ``test`` is neither None nor a
            ``(logits, labels)`` pair (a tuple or list of two).
        ValueError: As for :func:`accuracy` (an empty set, mismatched shapes or labels out
            of range), the message naming the set (``'test': 'labels' has labels outside
            ...``).

    """
    out: dict[str, float] = {}
    for name, pair in (("forget", forget), ("retain", retain), ("test", test)):
        if pair is None:
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"'{name}' must be a (logits, labels) pair")
        try:
            out[f"{name}_accuracy"] = accuracy(pair[0], pair[1])
        except (TypeError, ValueError) as exc:  # 'labels' alone did not say which set
            raise type(exc)(f"'{name}': {exc}") from exc
    if "forget_accuracy" in out:
        out["unlearning_accuracy"] = 1.0 - out["forget_accuracy"]
    return out
