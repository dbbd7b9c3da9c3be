"""Per-example attack statistics computed from logits (vectorised, any leading shape).

* :func:`hinge_logit`: ``z_y - max_{j != y} z_j``, the statistic of Seed A's epsilon-hat
  (``scripts/attack.py`` of "Forget with Precision").
* :func:`logit_scaled_confidence`: ``log(p_y + 1e-45) - log(sum_{j != y} p_j + 1e-45)``, the
  statistic of the NeurIPS 2023 competition (``compute_logit_scaled_confidence`` of
  google-deepmind/unlearning_evaluation).
* :func:`true_class_confidence`: the softmax probability of the label (OPTML's SVC-MIA
  "confidence" feature).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import logits_and_labels
from ._chunking import row_chunks

__all__ = ["hinge_logit", "logit_scaled_confidence", "true_class_confidence"]


#: Logit entries processed per chunk of examples (dim 0): bounds the float64 temporaries
#: of a statistic to a few times 8 MiB beyond its output, whatever the size of the logits.
_CHUNK_ELEMENTS = 1 << 20


def _per_chunk(
    z: Tensor, y: Tensor, fn: Callable[[Tensor, Tensor], Tensor], dtype: torch.dtype
) -> Tensor:
    """``fn(z, y)`` computed over chunks of dim 0 into one ``z.shape[:-1]`` output.

    Every statistic is a function of one row ``z[..., :]`` (and its label), so chunking
    along dim 0 gives the same numbers as one call on the whole input.
    """
    chunks = row_chunks(z.shape[0], _CHUNK_ELEMENTS // max(z[:1].numel(), 1))
    if len(chunks) <= 1:
        return fn(z, y)
    out = torch.empty(z.shape[:-1], dtype=dtype, device=z.device)
    for sl in chunks:
        out[sl] = fn(z[sl], y[sl])
    return out


def _split_label(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Return the label's entry (shape of ``y``) and the label mask (shape of ``z``)."""
    at_label = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    is_label = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, y.unsqueeze(-1), True)
    return at_label, is_label


def hinge_logit(logits: Any, labels: Any) -> Tensor:
    """Hinge logit ``z_y - max_{j != y} z_j`` per (example, model), in float64.

    Args:
        logits: ``[..., C]`` logits (``[S, N, C]``: S examples, N models).
        labels: Integer labels of shape ``logits.shape[:-1]``, or ``[S]`` for ``[S, N, C]``.

    Returns:
        float64 tensor of shape ``logits.shape[:-1]`` on the logits' device.

    """
    z, y = logits_and_labels(logits, labels)
    return _per_chunk(z, y, _hinge, torch.float64)


def _hinge(z: Tensor, y: Tensor) -> Tensor:
    z = z.to(torch.float64)
    at_label, is_label = _split_label(z, y)
    others = z.masked_fill(is_label, -torch.inf).amax(-1)
    return at_label - others


def _exp_as_official(z: Tensor) -> Tensor:
    """``exp(z)`` in ``z``'s dtype as the official code takes it: with numpy on the CPU.

    numpy's float32 ``exp`` is not torch's: here 39 % of random inputs differ by an ulp or
    more. The competition's per-example epsilon is a step function of the statistic, so one
    ulp can move an example across a threshold (on the fixture's ``finetune`` logits 1 of 60
    examples: 2.944 against 2.996). On the CPU the exponentials are therefore the official
    code's to the bit (the statistic agrees to ~1e-15 and the fixture's epsilons are equal);
    on a GPU ``torch.exp`` is used (the statistic within ~2e-7 of the official one).
    """
    if z.device.type == "cpu" and z.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.exp(z.detach().contiguous().numpy()))
    return torch.exp(z)


def logit_scaled_confidence(logits: Any, labels: Any) -> Tensor:
    """Competition statistic ``log(p_y + 1e-45) - log(sum_{j != y} p_j + 1e-45)``.

    Computed as the official code does it: the maximum logit is subtracted and the
    exponential taken in the logits' own dtype (with numpy on the CPU, as the official code,
    whose ``exp`` differs from torch's by an ulp on many float32 inputs), then the softmax is
    normalised in float64. The 1e-45 floors bound the statistic to about [-103.6, 103.6].

    Args:
        logits: ``[..., C]`` logits.
        labels: Integer labels of shape ``logits.shape[:-1]``, or ``[S]`` for ``[S, N, C]``.

    Returns:
        float64 tensor of shape ``logits.shape[:-1]``.

    """
    z, y = logits_and_labels(logits, labels)
    return _per_chunk(z, y, _scaled_confidence, torch.float64)


def _scaled_confidence(z: Tensor, y: Tensor) -> Tensor:
    e = _exp_as_official(z - z.amax(-1, keepdim=True)).to(torch.float64)
    p = e / e.sum(-1, keepdim=True)
    del e
    p_label, is_label = _split_label(p, y)
    p_wrong = p.masked_fill_(is_label, 0.0).sum(-1)
    return torch.log(p_label + 1e-45) - torch.log(p_wrong + 1e-45)


def true_class_confidence(logits: Any, labels: Any) -> Tensor:
    """Softmax probability of the true class (float64), shape ``logits.shape[:-1]``."""
    z, y = logits_and_labels(logits, labels)
    return _per_chunk(z, y, _true_confidence, torch.float64)


def _true_confidence(z: Tensor, y: Tensor) -> Tensor:
    p = torch.softmax(z.to(torch.float64), dim=-1)
    return p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
