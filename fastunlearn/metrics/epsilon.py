"""Seed A's per-example epsilon-hat of a likelihood-ratio attack ("Forget with Precision").

For every forget example the attacker sees the hinge logit of N retrained models and of N
unlearned models, fits one Gaussian per group (mean and population std), scores every
observation x by the likelihood ratio ``LR(x) = N(x; mu_U, sd_U) / N(x; mu_R, sd_R)``, takes
as positive group the one with the larger median score (ties: unlearned), and sweeps the
DET curve over all distinct score thresholds (``x`` predicted positive when
``LR(x) >= t``). With ``e = 1e-8`` every threshold gives

    eps_t = max(log(1 - delta - FPR + e) - log(FNR + e), log(1 - delta - FNR + e) - log(FPR + e))

A threshold with FPR = FNR = 0 makes the example's epsilon infinite; thresholds where exactly
one of FPR, FNR is zero are dropped; the example's epsilon is the nan-max over the rest (nan
if none is left). The metric is the median over examples (nan ignored, infinities kept),
with ``delta = 0.05``.

Everything is vectorised over chunks of examples (``_CHUNK_ELEMENTS`` statistics each, so
the working memory stays bounded): one sort of the 2N scores per example, prefix counts,
and a masked reduction (no Python loop over examples or thresholds).

Numerical notes. The ratio is computed as ``scipy.stats.norm.pdf`` computes each density
(``exp(-y**2 / 2) / sqrt(2 pi) / sd``, float64), so that densities that underflow to 0 tie
exactly as they do in the study's script. Where both densities underflow (0/0, on which the
study's script would stop with an error) the score is ``+inf`` if the log ratio is positive
and 0 otherwise. The end-point trimming of ``sklearn.metrics.det_curve`` only removes
thresholds with FPR = 0 or FNR = 0 that cannot change the result, so it needs no special
treatment. An example whose retrained or unlearned statistics are all equal (zero std; the
densities are undefined) gets epsilon nan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._repr import fields_repr
from ._checks import check_delta, pair_of_stats, stacked_logits
from ._chunking import row_chunks
from ._reduce import median, nanmax, nanmedian
from .statistics import hinge_logit

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "EpsilonResult",
    "epsilon_hat",
    "lira_epsilons",
    "lira_scores",
]

#: Seed A's default delta (paper and ``attack.py``).
DEFAULT_DELTA = 0.05
#: The additive constant inside the logarithms of ``attack.py``.
LOG_EPS = 1e-8

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _gauss_pdf(x: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
    y = (x - mu) / sd
    return torch.exp(-(y * y) / 2.0) / _SQRT_2PI / sd


def _gauss_logpdf(x: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
    y = (x - mu) / sd
    return -(y * y) / 2.0 - torch.log(sd)


#: Statistics (examples x models) processed per chunk of examples: bounds the working memory
#: of the scores and epsilons (a few tens of float64 temporaries of this size).
_CHUNK_ELEMENTS = 1 << 17

#: Rows whose largest magnitude lies outside [2**-_SAFE_EXP, 2**_SAFE_EXP] are rescaled.
_SAFE_EXP = 500


def _rescale_extreme_rows(r: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Divide rows of extreme magnitude by a power of two (exact).

    Otherwise the std overflows (|x| ~ 1e300: var = inf) or underflows (|x| ~ 1e-300:
    var = 0).

    The likelihood ratio is invariant to a common scale of x, mu and sd. Rows in the safe
    range are left untouched, so their densities (and underflow ties) are unchanged.
    """
    big = torch.maximum(r.abs().amax(1), u.abs().amax(1))
    extreme = (big > 2.0 ** _SAFE_EXP) | ((big < 2.0 ** -_SAFE_EXP) & (big > 0))
    if not bool(extreme.any()):
        return r, u
    _, e = torch.frexp(big)
    scale = torch.where(extreme, torch.ldexp(torch.ones_like(big), e.to(big.dtype)),
                        torch.ones_like(big))[:, None]
    return r / scale, u / scale


def lira_scores(retrained: Any, unlearned: Any) -> tuple[Tensor, Tensor]:
    """Likelihood-ratio scores ``N(x; mu_U, sd_U) / N(x; mu_R, sd_R)`` of every observation.

    Args:
        retrained: ``[S, N]`` statistic (e.g. :func:`~.statistics.hinge_logit`) of N
            retrained models on S examples.
        unlearned: ``[S, M]`` statistic of M unlearned models.

    Returns:
        ``(scores_retrained [S, N], scores_unlearned [S, M])`` in float64; rows whose
        retrained or unlearned std is zero are nan.

    Raises:
        ValueError: On mismatched shapes or non-finite input.

    """
    r, u = pair_of_stats(retrained, unlearned)
    sr = torch.empty_like(r)
    su = torch.empty_like(u)
    for sl in _row_chunks(r, u):
        sr[sl], su[sl] = _scores(r[sl], u[sl])
    return sr, su


def _row_chunks(r: Tensor, u: Tensor) -> list[slice]:
    """Consecutive example ranges of about ``_CHUNK_ELEMENTS`` statistics.

    Everything here is computed per example (row), so chunking is exact.
    """
    return row_chunks(r.shape[0], _CHUNK_ELEMENTS // (r.shape[1] + u.shape[1]))


def _scores(r: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`lira_scores` of checked float64 ``[B, N]`` and ``[B, M]`` statistics."""
    r, u = _rescale_extreme_rows(r, u)
    mu_r, sd_r = r.mean(1, keepdim=True), r.std(1, correction=0, keepdim=True)
    mu_u, sd_u = u.mean(1, keepdim=True), u.std(1, correction=0, keepdim=True)
    out = []
    for x in (r, u):
        ratio = _gauss_pdf(x, mu_u, sd_u) / _gauss_pdf(x, mu_r, sd_r)
        log_ratio = _gauss_logpdf(x, mu_u, sd_u) - _gauss_logpdf(x, mu_r, sd_r)
        both_zero = torch.isnan(ratio)
        resolved = torch.where(log_ratio > 0, torch.inf, 0.0).to(ratio.dtype)
        ratio = torch.where(both_zero, resolved, ratio)
        degenerate = (sd_r == 0) | (sd_u == 0)
        out.append(ratio.masked_fill(degenerate, torch.nan))
    return out[0], out[1]


def _det_epsilons(
    scores: Tensor, positive: Tensor, n_pos: Tensor, n_neg: Tensor, delta: float
) -> Tensor:
    """Per-row epsilon over all distinct thresholds of ``scores [S, K]`` (labels ``positive``)."""
    s, order = scores.sort(dim=1, descending=True)
    y = positive.gather(1, order)
    tp = y.cumsum(1)
    fp = (~y).cumsum(1)
    distinct = torch.ones_like(y)
    distinct[:, :-1] = s[:, :-1] != s[:, 1:]
    n_pos = n_pos[:, None]
    n_neg = n_neg[:, None]
    separable = (distinct & (fp == 0) & (tp == n_pos)).any(1)
    keep = distinct & (fp > 0) & (tp < n_pos)
    fpr = fp.to(torch.float64) / n_neg
    fnr = (n_pos - tp).to(torch.float64) / n_pos
    e1 = torch.log(1.0 - delta - fpr + LOG_EPS) - torch.log(fnr + LOG_EPS)
    e2 = torch.log(1.0 - delta - fnr + LOG_EPS) - torch.log(fpr + LOG_EPS)
    both = torch.cat([e1.masked_fill(~keep, torch.nan), e2.masked_fill(~keep, torch.nan)], 1)
    eps = nanmax(both, 1)
    return eps.masked_fill(separable, torch.inf)


def lira_epsilons(
    retrained: Any,
    unlearned: Any,
    *,
    delta: float | np.floating = DEFAULT_DELTA,
) -> Tensor:
    """Per-example epsilon of Seed A's Gaussian likelihood-ratio attack.

    Args:
        retrained: ``[S, N]`` attack statistic (hinge logit) of N retrained models.
        unlearned: ``[S, M]`` statistic of M unlearned models (N = M in the study).
        delta: The delta of (epsilon, delta); 0.05 in the study.

    Returns:
        float64 ``[S]``: inf for perfectly separable examples, nan where no threshold is
        usable or a group has zero spread.

    Raises:
        ValueError: On mismatched shapes, non-finite input or ``delta`` outside [0, 1).

    """
    delta = check_delta(delta)
    r, u = pair_of_stats(retrained, unlearned)
    eps = torch.empty(r.shape[0], dtype=torch.float64, device=r.device)
    for sl in _row_chunks(r, u):
        eps[sl] = _epsilons(*_scores(r[sl], u[sl]), delta)
    return eps


def _epsilons(sr: Tensor, su: Tensor, delta: float) -> Tensor:
    """:func:`lira_epsilons` from the scores ``[B, N]`` and ``[B, M]``."""
    n, m = sr.shape[1], su.shape[1]
    undefined = torch.isnan(sr).any(1) | torch.isnan(su).any(1)
    sr = sr.nan_to_num(0.0)
    su = su.nan_to_num(0.0)
    retrained_positive = median(sr, 1) > median(su, 1)
    scores = torch.cat([sr, su], 1)
    positive = torch.cat(
        [retrained_positive[:, None].expand(-1, n), (~retrained_positive)[:, None].expand(-1, m)],
        1,
    )
    n_pos = torch.where(retrained_positive, n, m)
    n_neg = torch.where(retrained_positive, m, n)
    eps = _det_epsilons(scores, positive, n_pos, n_neg, delta)
    return eps.masked_fill(undefined, torch.nan)


@dataclass(frozen=True, repr=False)
class EpsilonResult:
    """Seed A's epsilon-hat and the per-example epsilons behind it.

    Attributes:
        epsilon_hat: Median of ``per_example`` (nan ignored, infinities kept).
        per_example: float64 ``[S]`` per-example epsilons (CPU).
        delta: The delta used.
        n_infinite: Examples whose two groups are perfectly separable.
        n_nan: Examples without a usable threshold.
        mean: nan-mean of the finite per-example epsilons.

    """

    epsilon_hat: float
    per_example: Tensor
    delta: float
    n_infinite: int
    n_nan: int
    mean: float

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the per-example tensor)."""
        return {
            "epsilon_hat": self.epsilon_hat, "delta": self.delta,
            "n_infinite": self.n_infinite, "n_nan": self.n_nan, "mean_finite": self.mean,
        }


def epsilon_hat(
    retrain_logits: Any,
    unlearn_logits: Any,
    labels: Any,
    *,
    delta: float | np.floating = DEFAULT_DELTA,
) -> EpsilonResult:
    """Seed A's epsilon-hat from logits: hinge logit, Gaussian LR attack, median over examples.

    Args:
        retrain_logits: ``[S, N, C]`` logits of N retrained models on the S forget examples.
        unlearn_logits: ``[S, M, C]`` logits of M unlearned models.
        labels: ``[S]`` integer labels.
        delta: delta of (epsilon, delta), 0.05 by default.

    Returns:
        An :class:`EpsilonResult`.

    """
    r, u, y = stacked_logits(retrain_logits, unlearn_logits, labels, min_models=(2, 2),
                             purpose="epsilon-hat")
    hr = hinge_logit(r, y)
    hu = hinge_logit(u, y)
    eps = lira_epsilons(hr, hu, delta=delta).cpu()
    finite = eps[torch.isfinite(eps)]
    return EpsilonResult(
        epsilon_hat=nanmedian(eps),
        per_example=eps,
        delta=float(delta),
        n_infinite=int(torch.isinf(eps).sum()),
        n_nan=int(torch.isnan(eps).sum()),
        mean=float(finite.mean()) if finite.numel() else float("nan"),
    )
