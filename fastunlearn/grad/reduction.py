"""Check that a scalar loss reduces the batch the way the caller declared.

A per-sample engine told ``loss_reduction="sum"`` but given a mean-reduced loss returns
gradients B times too small, with nothing to show for it; the opposite mistake makes them
B times too large. The two are told apart by the loss of one row duplicated: a sum doubles,
a mean stays. The check costs two loss evaluations on one or two rows and no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_declared_reduction"]

#: Relative tolerance of the duplicated-row test (float32 losses of one row are exact
#: to far better than this; a sum and a mean differ by a factor of two).
_RTOL = 1e-3


def check_declared_reduction(
    loss_fn: Callable[[Any, Any], Any], outputs: Any, targets: Any, B: int, declared: str
) -> None:
    """Raise if ``loss_fn`` visibly reduces the batch other than ``declared`` says.

    Only checked where it is meaningful: ``outputs`` a tensor with the batch on dim 0,
    ``targets`` a tensor with the batch on dim 0 (or None), and a loss of one number. A loss
    that neither doubles nor stays the same for a duplicated row (batch-level terms) is
    left alone. The row is the first (of at most 64) whose loss is not ~0, where a sum and
    a mean could not be told apart, or else zero outputs in place of the first row's
    (the loss of a uniform prediction for cross-entropy); a loss that is ~0 there too is
    left alone.

    Args:
        loss_fn: ``loss_fn(outputs, targets)``.
        outputs: The model's outputs on the batch.
        targets: The targets given with the batch.
        B: The batch size.
        declared: ``"sum"`` or ``"mean"``.

    Raises:
        ValueError: naming ``loss_reduction`` and the reduction the loss performs.

    """
    if B < 1 or not isinstance(outputs, Tensor) or outputs.dim() == 0 or outputs.shape[0] != B:
        return
    if targets is not None and not (isinstance(targets, Tensor) and targets.dim() > 0
                                    and targets.shape[0] == B):
        return
    with torch.no_grad():
        found = _row_with_loss(loss_fn, outputs.detach(), targets, B)
        if found is None:
            return
        row, target, one = found
        try:
            two = loss_fn(torch.cat([row, row]),
                          None if target is None else torch.cat([target, target]))
        except Exception:  # noqa: BLE001 - a loss that cannot take one row is not checked
            return
    if not isinstance(two, Tensor) or two.numel() != 1:
        return
    one_f, two_f = float(one), float(two)
    if not (abs(one_f) > 1e-30 and abs(one_f) < float("inf") and abs(two_f) < float("inf")):
        return
    sums = abs(two_f - 2.0 * one_f) <= _RTOL * abs(2.0 * one_f)
    means = abs(two_f - one_f) <= _RTOL * abs(one_f)
    if declared == "sum" and means:
        raise ValueError(
            "loss_reduction: declared 'sum' but loss_fn averages over the batch (the loss of a "
            f"duplicated row is {two_f:.6g}, the same as the row's {one_f:.6g}); the "
            "per-sample gradients would be B times too small. Pass loss_reduction='mean' or "
            "a loss with reduction='sum'"
        )
    if declared == "mean" and sums:
        raise ValueError(
            "loss_reduction: declared 'mean' but loss_fn sums over the batch (the loss of a "
            f"duplicated row is {two_f:.6g}, twice the row's {one_f:.6g}); the per-sample "
            "gradients would be B times too large. Pass loss_reduction='sum' or a loss with "
            "reduction='mean'"
        )


#: Most rows of the batch tried for one whose loss is not ~0.
_PROBE_ROWS = 64


def _row_with_loss(
    loss_fn: Callable[[Any, Any], Any], outputs: Tensor, targets: Any, B: int
) -> tuple[Tensor, Any, Tensor] | None:
    """Return ``(output row, target row, its loss)`` with a loss not ~0, else the last tried.

    The rows are tried in order (at most :data:`_PROBE_ROWS`); when every loss is ~0, zero
    outputs with the first row's target (floating outputs only). None when the loss fails
    on a row or does not return one number.
    """
    candidates = [(outputs[i:i + 1], None if targets is None else targets[i:i + 1])
                  for i in range(min(B, _PROBE_ROWS))]
    if outputs.is_floating_point():
        candidates.append((torch.zeros_like(outputs[:1]), candidates[0][1]))
    found = None
    for row, target in candidates:
        try:
            value = loss_fn(row, target)
        except Exception:  # noqa: BLE001 - a loss that cannot take one row is not checked
            return found
        if not isinstance(value, Tensor) or value.numel() != 1:
            return found
        found = (row, target, value)
        if abs(float(value)) > 1e-30:
            break
    return found
