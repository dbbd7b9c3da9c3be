"""The exposure of a canary (Carlini et al., "The Secret Sharer", USENIX Security 2019).

A canary ``s[r]`` is a template (``"my telephone number is "``) filled with a random secret
``r`` from a space ``R`` (e.g. all 10-digit strings), inserted into the training text. A
model that memorised it gives the true secret a lower log-perplexity
``P(r) = -sum_i log2 p(r_i | prefix, r_<i)`` than other secrets. Exposure measures how much:

    exposure(r) = log2 |R| - log2 rank(r),

``rank`` being the position of ``P(r)`` among the log-perplexities of all of ``R`` (1 for
the lowest). It ranges from 0 to ``log2 |R|``. When ``R`` is too large to score
exhaustively, the log-perplexities of a random sample of ``R`` are fitted with a
skew-normal distribution ``F`` and exposure is extrapolated as ``-log2 F(P(r))``, the
reference's ``approx_exposure`` (influence reference section 8). The rank over a uniform
sample of ``N`` other secrets, ``log2 (N + 1) - log2 rank``, estimates the exposure with a
resolution of ``log2 (N + 1)`` bits; it is a valid estimate only for ``N < |R|`` (more draws,
with replacement, would exceed ``log2 |R|``), which is why
:func:`~fastunlearn.exposure.measure_exposure` scores the whole space whenever the sample
would not be smaller than it.

Ties count against the canary (a candidate scored exactly like it ranks ahead of it), so
exposure is never overstated.

A skew-normal fit to fewer than 100 sampled candidates is unreliable (see
``_MIN_FIT_CANDIDATES``): :func:`fit_skew_normal`, :func:`skew_normal_exposure` and
:func:`~fastunlearn.exposure.measure_exposure` then warn (``UserWarning``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsFloat, cast

import numpy as np
import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._numbers import as_float, as_int, check_int, is_finite, is_flag, is_integer, is_real

__all__ = [
    "SkewNormalFit",
    "exposure_from_rank",
    "fit_skew_normal",
    "rank_exposure",
    "skew_normal_exposure",
]

_LN2 = math.log(2.0)

#: Fewest sampled candidates a skew-normal fit is trusted with; fewer draw a warning.
#: Measured on the default ``fastunlearn exposure`` model (|R| = 10**4, 2 insertions and 200
#: steps so that the canary sits in the tail: exact exposure 8.6 bits, 5.7 bits from a fit to
#: all of R), refitting 40 seeded uniform samples per size: the fitted exposure's 10th..90th
#: percentiles were 4.1..13.3 bits (the cap log2 |R|) from 3 candidates, 4.9..13.3 from
#: 10, 5.0..8.4 from 30, 5.3..7.0 from 100, 5.4..6.2 from 300 and 5.5..6.0 from 1,000
#: (standard deviation 4.1, 3.4, 1.6, 1.4, 0.35, 0.20 bits), and 20-38 % of the fits to 3 to
#: 10 candidates put the canary at infinite exposure. Below 100 the value says little more
#: than "somewhere between the sampled rank and the cap"; 1,000 keeps it within about
#: +-0.3 bit, which is what the warning recommends.
_MIN_FIT_CANDIDATES = 100
_RECOMMENDED_FIT_CANDIDATES = 1_000


def _warn_few_candidates(n: int, advice: str, stacklevel: int) -> None:
    """Warn that a skew-normal fit rests on only ``n`` sampled candidates.

    ``stacklevel`` is what :func:`warnings.warn` would be given in this helper's caller.
    """
    warnings.warn(
        f"the skew-normal exposure is fitted to only {n} sampled candidates; its value is "
        f"unreliable below {_MIN_FIT_CANDIDATES} ({advice})",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


def _as_scores(values: object, arg: str, *, min_size: int = 1) -> np.ndarray:
    """1-D finite float64 array from a tensor, array or sequence (not bool or complex)."""
    if isinstance(values, Tensor):
        if values.dtype == torch.bool or values.is_complex():  # True/False are no scores
            raise TypeError(f"'{arg}' must hold real numbers, got a {values.dtype} tensor")
        values = values.detach().cpu().double().numpy()
    elif isinstance(values, np.ndarray) and values.dtype.kind in "bcOSUV":
        raise TypeError(f"'{arg}' must hold real numbers, got an array of {values.dtype}")
    elif not isinstance(values, (np.ndarray, Sequence)) or isinstance(values, (str, bytes)):
        raise TypeError(f"'{arg}' must be a 1-D array of numbers, got {type(values).__name__}")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"'{arg}' must hold numbers") from None
    if array.ndim != 1:
        raise ValueError(f"'{arg}' must be 1-D, got shape {array.shape}")
    if not isinstance(values, np.ndarray):
        # np.asarray reads True as 1.0 and '0.5' as 0.5: a bool or a str is no score (as a
        # bool array or tensor is not)
        bad = next((v for v in values if not _is_score(v)), None)
        if bad is not None:
            raise TypeError(f"'{arg}' must hold real numbers, got {type(bad).__name__} "
                            f"{bad!r}")
    if array.size < min_size:
        raise ValueError(f"'{arg}' needs at least {min_size} value(s), got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError(f"'{arg}' must be finite (NaN or inf found)")
    return array


def _is_score(value: object) -> bool:
    """Whether a sequence entry is a real number (a 0-d real tensor too; no bool or str)."""
    if isinstance(value, Tensor):
        return value.dim() == 0 and value.dtype != torch.bool and not value.is_complex()
    return is_real(value) and not is_flag(value)


def _as_canaries(values: object) -> tuple[np.ndarray, bool]:
    """Canary scores as a 1-D array, and whether a single number was given."""
    if is_real(values):
        if not is_finite(values):
            raise ValueError(f"'canary' must be finite, got {values}")
        return np.array([float(cast(SupportsFloat, values))]), True
    if isinstance(values, Tensor) and values.dim() == 0:
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"'canary' must be a real number, got a {values.dtype} tensor")
        return _as_canaries(float(values))
    if isinstance(values, np.ndarray) and values.ndim == 0:
        return _as_canaries(values.item())
    return _as_scores(values, "canary"), False


def exposure_from_rank(rank: int | np.integer, space_size: int | np.integer) -> float:
    """Return ``log2(space_size) - log2(rank)``.

    Raises:
        ValueError: If ``space_size < 1`` or ``rank`` is not in ``1..space_size``.
        TypeError: If an argument is not an int.

    """
    rank = check_int("rank", rank)
    space_size = check_int("space_size", space_size, 1)
    if not 1 <= rank <= space_size:
        raise ValueError(f"'rank' must be in 1..space_size={space_size}, got {rank}")
    return math.log2(space_size) - math.log2(rank)


def rank_exposure(canary: object, candidates: object) -> float | np.ndarray:
    """Exposure of canaries by their rank among candidate secrets.

    The space ``R`` is the canary together with the candidates (every other secret of the
    space, or a uniform sample of them), so ``|R| = len(candidates) + 1`` and a canary
    scored below every candidate has exposure ``log2 |R|``.

    Args:
        canary: Log-perplexity of the inserted secret (a number), or a 1-D array of several
            canaries, each ranked against the same candidates.
        candidates: Log-perplexities of the other secrets, 1-D, finite, non-empty.

    Returns:
        ``log2(len(candidates) + 1) - log2(rank)`` with ``rank = 1 + #{c <= canary}``; a
        float for a single canary, an array otherwise.

    Raises:
        ValueError: If an input is empty, not 1-D or not finite.
        TypeError: If an input is not numeric (bool and complex arrays and tensors
            included).

    """
    scores, scalar = _as_canaries(canary)
    pool = np.sort(_as_scores(candidates, "candidates"))
    ranks = 1 + np.searchsorted(pool, scores, side="right")
    out = math.log2(pool.size + 1) - np.log2(ranks)
    return float(out[0]) if scalar else out


@dataclass(frozen=True)
class SkewNormalFit:
    """A skew-normal distribution fitted to candidate log-perplexities.

    Attributes:
        a: Shape (skewness) parameter, scipy's ``a``.
        loc: Location.
        scale: Scale, > 0; or 0 for the degenerate limit, a point mass at ``loc`` (what
            :func:`~fastunlearn.exposure.measure_exposure` records when every candidate
            has the same log-perplexity, e.g. a model that predicts a uniform
            distribution, and no distribution can be fitted).
        n: Number of values fitted.

    """

    a: float
    loc: float
    scale: float
    n: int

    #: a NaN field compares as on Python <= 3.12 (the same object is equal; 3.13's
    #: generated __eq__ compares fields one by one and calls such a record unequal to itself)
    __eq__ = dataclass_eq

    def __post_init__(self) -> None:
        for name in ("a", "loc", "scale"):
            value = getattr(self, name)
            if not is_real(value):
                raise TypeError(f"'{name}' must be a number, got {type(value).__name__}")
            if not is_finite(value):
                raise ValueError(f"'{name}' must be finite, got {value}")
            # frozen; a NumPy scalar is stored as the Python number (asdict / JSON)
            object.__setattr__(self, name, as_int(value) if is_integer(value) else as_float(value))
        if not is_integer(self.n):
            raise TypeError(f"'n' must be an int, got {type(self.n).__name__} {self.n!r}")
        if self.n < 1:
            raise ValueError(f"'n' must be >= 1 (the number of values fitted), got {self.n}")
        object.__setattr__(self, "n", as_int(self.n))
        if self.scale < 0:
            raise ValueError(f"'scale' must be >= 0, got {self.scale}")

    def exposure(
        self,
        canary: object,
        space_size: int | np.integer | float | np.floating | None = None,
    ) -> float | np.ndarray:
        """Return ``-log2 F(canary)``, capped to ``[0, log2 space_size]`` when given.

        Far in the lower tail ``F`` underflows even on the log scale; exposure is then
        ``inf``, or the cap when ``space_size`` is given. For a point mass (``scale == 0``)
        ``F`` is a step: 0 bits at or above ``loc`` (a tie counts against the canary, as
        in :func:`rank_exposure`), ``inf`` (or the cap) below it.
        """
        from scipy.stats import skewnorm

        scores, scalar = _as_canaries(canary)
        if self.scale == 0.0:
            bits = np.where(scores < self.loc, np.inf, 0.0)
        else:
            bits = -skewnorm.logcdf(scores, self.a, loc=self.loc, scale=self.scale) / _LN2
        bits = np.maximum(bits, 0.0)
        if space_size is not None:
            bits = np.minimum(bits, _max_exposure(space_size))
        return float(bits[0]) if scalar else bits


def _max_exposure(space_size: int | np.integer | float | np.floating) -> float:
    if not is_real(space_size):
        raise TypeError(f"'space_size' must be a number, got {type(space_size).__name__}")
    if not space_size >= 1:
        raise ValueError(f"'space_size' must be >= 1, got {space_size}")
    return math.log2(space_size)


def fit_skew_normal(candidates: object) -> SkewNormalFit:
    """Fit a skew-normal distribution to candidate log-perplexities by maximum likelihood.

    Fewer than 100 values give an unreliable fit (its extrapolated exposure varies by
    several bits, up to infinity, between samples): the fit is returned with a
    ``UserWarning``.

    Args:
        candidates: 1-D finite values, at least 3, not all equal.

    Returns:
        The fitted :class:`SkewNormalFit`.

    Raises:
        ValueError: If there are fewer than 3 values, they are all equal, or no
            skew-normal can be fitted to them (their range overflows).
        TypeError: If the values are not real numbers (a bool or complex array or tensor).

    """
    return _fit_skew_normal(candidates, warn_stacklevel=2)


def _fit_skew_normal(candidates: object, *, warn_stacklevel: int | None) -> SkewNormalFit:
    """:func:`fit_skew_normal`; warns about few values at ``warn_stacklevel`` (None: never)."""
    from scipy.stats import FitError, skewnorm

    values = _as_scores(candidates, "candidates", min_size=3)
    if np.ptp(values) == 0.0:
        raise ValueError("'candidates' are all equal: no distribution to fit")
    if warn_stacklevel is not None and values.size < _MIN_FIT_CANDIDATES:
        _warn_few_candidates(values.size, f"fit at least {_RECOMMENDED_FIT_CANDIDATES} values",
                             warn_stacklevel + 1)
    try:
        a, loc, scale = skewnorm.fit(values)
    except FitError:
        # values whose spread is a few rounding steps of their size (a model that predicts
        # almost every character alike: log-perplexities 17.28... +- 1e-15) or near the
        # ends of the float range leave scipy's optimiser outside the allowed parameters;
        # the skew-normal is a location-scale family, so fit the values shifted and scaled
        # to a unit range and map the fit back
        center, spread = float(np.median(values)), float(np.ptp(values))
        try:
            if not math.isfinite(spread):
                raise FitError("the range of the values overflows")
            a, loc, scale = skewnorm.fit((values - center) / spread)
        except FitError as exc:
            raise ValueError(f"'candidates' cannot be fitted with a skew-normal: {exc}") from None
        loc, scale = center + spread * loc, spread * scale
    return SkewNormalFit(float(a), float(loc), float(scale), int(values.size))


def skew_normal_exposure(
    canary: object,
    candidates: object,
    space_size: int | np.integer | float | np.floating | None = None,
) -> float | np.ndarray:
    """Exposure extrapolated from a skew-normal fit to sampled candidates.

    Fewer than 100 candidates give an unreliable value (it varies by several bits, up to
    the cap, between samples): it is returned with a ``UserWarning``, except when
    ``space_size`` shows that the candidates are the whole rest of the space
    (``len(candidates) >= space_size - 1``, scored exhaustively): the fit then describes
    every secret rather than a sample, and the exact :func:`rank_exposure` is at hand.

    Args:
        canary: Log-perplexity of the canary (a number) or a 1-D array of them.
        candidates: Log-perplexities of secrets drawn uniformly from the space (the
            reference scores 10^5 of them; at least 1,000 are advised).
        space_size: ``|R|``; caps the exposure at ``log2 |R|``. ``None``: no cap.

    Returns:
        ``-log2 F(canary)`` for the fitted CDF ``F`` (float, or array for several
        canaries).

    Raises:
        ValueError: If the inputs are empty, not finite, constant, or ``space_size < 1``.
        TypeError: If an input is not numeric (bool and complex arrays and tensors
            included).

    """
    if space_size is not None:
        _max_exposure(space_size)
    _as_canaries(canary)
    values = _as_scores(candidates, "candidates", min_size=3)
    whole_space = space_size is not None and values.size + 1 >= space_size
    fit = _fit_skew_normal(values, warn_stacklevel=None if whole_space else 2)
    return fit.exposure(canary, space_size)
