"""Which forgetting methods can forget a given forget set.

Most methods forget any set of examples. Two need whole classes: ``antisamples`` (the
single-class variant) forgets exactly one class, and ``unsir`` forgets every class of the
forget set, so none of them may keep examples in the retain set. :func:`unsuitable_reason`
asks the methods' own checks (the ones they raise from), so its answer and the error a
method would raise never disagree; ``fastunlearn forget --method all`` uses it to skip
such methods, with the reason, on a ``random:`` forget set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .antisamples import check_single_class
from .base import get_method
from .unsir import check_whole_classes

__all__ = ["unsuitable_reason"]


def _one_class(forget: list[int], retain_labels: Tensor) -> None:
    check_single_class(forget)


#: method -> check raising ValueError when the forget set does not suit it
_REQUIREMENTS: dict[str, Callable[[list[int], Tensor], None]] = {
    "antisamples": _one_class,
    "unsir": check_whole_classes,
}


def unsuitable_reason(method: str, forget_labels: Tensor, retain_labels: Tensor) -> str | None:
    """Return why ``method`` cannot forget this forget set, or None when it can.

    Args:
        method: A registered method name.
        forget_labels: Labels of the forget set.
        retain_labels: Labels of the retain set.

    Raises:
        TypeError: If ``method`` is not a str or the labels are not tensors.
        ValueError: If ``method`` is not a registered method.

    """
    get_method(method)  # TypeError / ValueError naming the known methods
    for name, labels in (("forget_labels", forget_labels), ("retain_labels", retain_labels)):
        if not isinstance(labels, Tensor):
            raise TypeError(f"'{name}' must be a tensor, got {type(labels).__name__}")
    check = _REQUIREMENTS.get(method)
    if check is None:
        return None
    try:
        check(torch.unique(forget_labels).tolist(), retain_labels)
    except ValueError as exc:
        return str(exc)
    return None
