"""The exposure figure: where the canary falls among the secrets it was ranked against.

A histogram (density) of the log-perplexities of the scored secrets, the skew-normal fitted
to them, and a line per measured secret (the canary, and the never-inserted control) with
its exposure in the legend. A memorised canary sits far left of the bulk; a control sits
inside it. Drawn on an Agg canvas (no global pyplot state, no display needed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._numbers import check_int
from ..report.plots import _legend_below, _new_figure, _save
from .experiment import ExposureMeasurement

__all__ = ["plot_exposure"]

_COLORS = ("tab:red", "tab:gray", "tab:purple", "tab:green", "tab:orange")
_LABELS = ("canary", "control")


def _label(m: ExposureMeasurement, kind: str) -> str:
    rank = f"rank {m.rank} of {m.n_scored + 1}"
    sampled = "" if m.exhaustive else " sampled"
    return (
        f"{kind} {m.secret}: {m.rank_exposure:.2f} bits ({rank}{sampled}), "
        f"skew-normal {m.skew_normal_exposure:.2f} bits"
    )


def plot_exposure(
    measurements: ExposureMeasurement | Sequence[ExposureMeasurement],
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    bins: int | np.integer = 60,
) -> Path:
    """Write the exposure figure of one or more secrets to ``path`` (PNG).

    The histogram and the fit are those of the first measurement (secrets measured together
    by :func:`~fastunlearn.exposure.measure_exposure` share the scored set); every
    measurement adds a vertical line at its log-perplexity.

    Args:
        measurements: One measurement, or several (e.g. canary then control), each with
            ``others`` (the scored log-perplexities; kept by ``measure_exposure``).
        path: The PNG to write (its folder is created).
        labels: Names in the legend (default ``"canary"``, ``"control"``, then
            ``"secret 3"``, ...).
        bins: Histogram bins, >= 1.

    Returns:
        The path written.

    Raises:
        ValueError: no measurement, a first measurement whose ``others`` is missing,
            empty, not 1-D or not finite, a non-finite log-perplexity, ``labels`` of the
            wrong length, or ``bins`` < 1.
        TypeError: a measurement that is not an :class:`ExposureMeasurement`, ``labels``
            a single str, or ``bins`` not an int (a bool or a float).

    """
    if labels is not None and isinstance(labels, (str, bytes)):  # list("ab") would be 2 names
        raise TypeError(f"'labels' must be a list of str, got {type(labels).__name__} {labels!r}")
    items = [measurements] if isinstance(measurements, ExposureMeasurement) else list(measurements)
    if not items:
        raise ValueError("'measurements' must hold at least one ExposureMeasurement")
    for m in items:
        if not isinstance(m, ExposureMeasurement):
            raise TypeError(
                f"'measurements' must hold ExposureMeasurement, got {type(m).__name__}"
            )
    if items[0].others is None:
        raise ValueError(
            "'measurements' lacks the scored log-perplexities ('others' is None); measure "
            "with fastunlearn.exposure.measure_exposure"
        )
    others = np.asarray(items[0].others, dtype=np.float64)
    if others.ndim != 1 or others.size == 0 or not np.isfinite(others).all():
        raise ValueError(
            "'measurements': the first measurement's 'others' must be a non-empty 1-D array "
            f"of finite log-perplexities, got shape {others.shape}"
            + ("" if others.size == 0 or np.isfinite(others).all() else " with NaN or inf")
        )
    bad = [m.secret for m in items if not math.isfinite(m.log_perplexity)]
    if bad:
        raise ValueError(f"'measurements': the log-perplexity of {bad} is not finite")
    names = list(labels) if labels is not None else [
        _LABELS[i] if i < len(_LABELS) else f"secret {i + 1}" for i in range(len(items))
    ]
    if len(names) != len(items):
        raise ValueError(f"'labels' must have {len(items)} entries, got {len(names)}")
    bins = check_int("bins", bins, 1)  # a bool or a float is the wrong type

    first = items[0]
    points = np.concatenate([others, [m.log_perplexity for m in items]])
    lo, hi = float(points.min()), float(points.max())
    # a spread of a few rounding steps (a model that predicts every character alike:
    # 17.2877... +- 1e-15) cannot be cut into bins: it is drawn like a single value
    size = max(1.0, abs(lo), abs(hi))
    pad = 0.05 * (hi - lo) if hi - lo > 1e-9 * size else max(1.0, 1e-6 * size)
    grid = np.linspace(lo - pad, hi + pad, 400)

    fig = _new_figure((7.5, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    kind = "the whole space" if first.exhaustive else "a uniform sample"
    ax.hist(others, bins=bins, range=(lo - pad, hi + pad), density=True, color="tab:blue",
            alpha=0.35, label=f"{others.size} other secrets ({kind})")
    fit = first.fit
    if fit.scale > 0:
        from scipy.stats import skewnorm

        ax.plot(grid, skewnorm.pdf(grid, fit.a, loc=fit.loc, scale=fit.scale),
                color="tab:blue", linewidth=1.5, label="skew-normal fit")
    for j, (m, name) in enumerate(zip(items, names, strict=True)):
        ax.axvline(m.log_perplexity, color=_COLORS[j % len(_COLORS)], linewidth=2.0,
                   linestyle="-" if j == 0 else "--", label=_label(m, name))
    ax.set_xlabel("log-perplexity after the prefix (bits; lower = more likely)")
    ax.set_ylabel("density")
    ax.set_title(f"Canary exposure (max log2|R| = {first.max_exposure:.2f} bits)")
    _legend_below(ax, ncol=2)  # inside, it covered the bulk of the histogram
    return _save(fig, path)
