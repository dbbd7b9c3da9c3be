"""Argument checks shared by the metric functions (clear errors naming the argument)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._numbers import check_fraction


def as_tensor(value: Any, name: str) -> Tensor:
    """Return ``value`` as a tensor (numpy arrays and sequences are converted, not copied twice).

    Raises:
        TypeError: If ``value`` cannot be read as a numeric tensor.

    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if not value.dtype.isnative:  # e.g. a big-endian '>f4' .npy: torch refuses it
            value = value.astype(value.dtype.newbyteorder("="))
        try:
            return torch.from_numpy(np.ascontiguousarray(value))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"'{name}' must be a numeric array, got dtype {value.dtype}") \
                from exc
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"'{name}' must be a tensor or array, got {type(value).__name__}") from exc


def float_tensor(value: Any, name: str, ndim: int | None = None) -> Tensor:
    """Return a finite floating tensor (integers promoted to float64), ``ndim`` checked.

    Raises:
        TypeError: If it is not numeric.
        ValueError: If it has the wrong number of dimensions or non-finite entries.

    """
    t = as_tensor(value, name)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"'{name}' must be real floating point, got {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"'{name}' must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.numel() and not _all_finite(t):
        raise ValueError(f"'{name}' has non-finite entries (nan or inf)")
    return t


def _all_finite(t: Tensor) -> bool:
    """Whether every entry of a non-empty floating tensor is finite.

    One reduction pass (nan propagates through min and max, and an infinity is an extreme),
    without the full-size boolean temporary of ``isfinite(t).all()``: this check runs on
    every metric input, often the same large logits several times.
    """
    extremes = torch.aminmax(t)
    return bool(torch.isfinite(torch.stack([extremes.min, extremes.max])).all())


def label_tensor(value: Any, name: str, num_classes: int, shape: tuple[int, ...]) -> Tensor:
    """Integer class labels of ``shape`` in ``[0, num_classes)`` as int64.

    Raises:
        TypeError: If the labels are not integers.
        ValueError: On a shape mismatch or a label out of range.

    """
    t = _label_values(value, name, num_classes)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"'{name}' must be integer class labels, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"'{name}' must have shape {tuple(shape)}, got {tuple(t.shape)}")
    unsigned64 = t.dtype == torch.uint64
    t = t.to(torch.int64)  # uint64 labels >= 2**63 wrap round to negative numbers here
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if unsigned64 and lo < 0:  # report the wrapped labels as given, not as negatives
            wrapped = t < 0
            hi = int(t[wrapped].max()) + 2**64
            lo = int(t[~wrapped].min()) if not bool(wrapped.all()) else lo + 2**64
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"'{name}' has labels outside [0, {num_classes}): min {lo}, max {hi}"
            )
    return t


def _label_values(value: Any, name: str, num_classes: int) -> Tensor:
    """``value`` as a tensor (:func:`as_tensor`); a Python int beyond int64 is out of range.

    ``torch.as_tensor([0, 2**63])`` fails as if the labels were not numbers at all: such a
    label is reported as a label outside ``[0, num_classes)`` instead.

    Raises:
        TypeError: If ``value`` cannot be read as a numeric tensor.
        ValueError: If it holds a Python int outside the int64 range.

    """
    try:
        return as_tensor(value, name)
    except TypeError:
        huge = _huge_int(value)
        if huge is None:
            raise
        raise ValueError(f"'{name}' has labels outside [0, {num_classes}): {huge}") from None


def _huge_int(value: Any) -> int | None:
    """Return the first Python int beyond int64 in ``value`` (nested lists/tuples), or None."""
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _huge_int(item)
            if found is not None:
                return found
        return None
    if isinstance(value, int) and not isinstance(value, bool) \
            and not -(2**63) <= value < 2**63:
        return value
    return None


def logits_and_labels(
    logits: Any, labels: Any, *, logits_name: str = "logits", labels_name: str = "labels"
) -> tuple[Tensor, Tensor]:
    """Check logits ``[..., C]`` (C >= 2) and labels of shape ``logits.shape[:-1]``.

    Labels of shape ``[S]`` with logits ``[S, N, C]`` (one label per example shared by N
    models) are broadcast to ``[S, N]``.
    """
    z = float_tensor(logits, logits_name)
    if z.dim() < 2 or z.shape[-1] < 2:
        raise ValueError(
            f"'{logits_name}' must have shape [..., C] with C >= 2 classes, got {tuple(z.shape)}"
        )
    y = _label_values(labels, labels_name, z.shape[-1])
    if z.dim() == 3 and y.dim() == 1 and y.shape[0] == z.shape[0]:
        y = label_tensor(y, labels_name, z.shape[-1], (z.shape[0],))
        return z, y.to(z.device)[:, None].expand(z.shape[0], z.shape[1])
    y = label_tensor(y, labels_name, z.shape[-1], tuple(z.shape[:-1]))
    return z, y.to(z.device)


def check_examples(t: Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` if ``t`` holds no example (its dim 0 is 0)."""
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"'{name}' has no examples (shape {tuple(t.shape)}): "
                         "a metric needs at least one")


def check_delta(delta: float | np.floating, name: str = "delta") -> float:
    """``delta`` as a float in [0, 1) (Python or numpy real numbers)."""
    return check_fraction(name, delta, zero=True)


def pair_of_stats(retrained: Any, unlearned: Any) -> tuple[Tensor, Tensor]:
    """Per-example statistics ``[S, N]`` and ``[S, M]`` (same S, N and M >= 2) as float64."""
    r = float_tensor(retrained, "retrained", ndim=2)
    u = float_tensor(unlearned, "unlearned", ndim=2)
    check_examples(r, "retrained")
    check_examples(u, "unlearned")
    if r.shape[0] != u.shape[0]:
        raise ValueError(
            f"'retrained' and 'unlearned' must have the same number of examples (dim 0), "
            f"got {r.shape[0]} and {u.shape[0]}"
        )
    if r.shape[1] < 2 or u.shape[1] < 2:
        raise ValueError(
            f"need at least 2 models per group (dim 1), got {r.shape[1]} retrained and "
            f"{u.shape[1]} unlearned"
        )
    if r.device != u.device:
        raise ValueError(f"'retrained' is on {r.device} but 'unlearned' on {u.device}")
    return r.to(torch.float64), u.to(torch.float64)


def stacked_logits(
    retrain_logits: Any, unlearn_logits: Any, labels: Any, *,
    min_models: tuple[int, int] = (1, 1), purpose: str = "this metric",
) -> tuple[Tensor, ...]:
    """Check ``[S, N, C]`` retrained and ``[S, M, C]`` unlearned logits and ``[S]`` labels.

    Args:
        retrain_logits: Retrained-model logits.
        unlearn_logits: Unlearned-model logits.
        labels: Labels.
        min_models: Fewest ``(N, M)`` the caller needs.
        purpose: The metric, named in the error when there are too few models.

    Raises:
        ValueError: Naming the argument: no examples (S = 0), too few models, shapes that
            disagree, fewer than 2 classes, non-finite logits or labels out of range.

    """
    r = float_tensor(retrain_logits, "retrain_logits", ndim=3)
    u = float_tensor(unlearn_logits, "unlearn_logits", ndim=3)
    check_examples(r, "retrain_logits")
    check_examples(u, "unlearn_logits")
    if r.shape[0] != u.shape[0] or r.shape[2] != u.shape[2]:
        raise ValueError(
            f"'retrain_logits' {tuple(r.shape)} and 'unlearn_logits' {tuple(u.shape)} must "
            "agree on examples (dim 0) and classes (dim 2)"
        )
    for t, name, low in ((r, "retrain_logits", min_models[0]),
                         (u, "unlearn_logits", min_models[1])):
        if t.shape[1] < low:
            raise ValueError(f"'{name}' holds {t.shape[1]} model(s) (dim 1); {purpose} needs "
                             f"at least {low}")
    if r.shape[2] < 2:
        raise ValueError(f"'retrain_logits' needs at least 2 classes, got {r.shape[2]}")
    if r.device != u.device:
        raise ValueError(f"'retrain_logits' is on {r.device} but 'unlearn_logits' on {u.device}")
    y = label_tensor(labels, "labels", r.shape[2], (r.shape[0],)).to(r.device)
    return r, u, y
