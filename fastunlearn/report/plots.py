"""PNG plots of a certified-removal run (matplotlib, Agg canvas, no global pyplot state).

Every function takes plain Python data (the ``records`` / ``evaluations`` lists of
:class:`~fastunlearn.certified.experiment.ExperimentResult` or of its JSON file), writes one
PNG and returns its path. The figures are drawn on a :class:`matplotlib.figure.Figure`
attached to an Agg canvas directly, so importing this module never changes the matplotlib
backend of the calling program and works on machines without a display.

Record fields used (dicts, or objects with these attributes):

* ``n_removed``: removals done after this record (its x position);
* ``bound``: the record's data-dependent gradient-residual bound (for a retrain: the bound
  that would have exceeded the budget);
* ``worst_case`` (optional): the worst-case (Theorem 1) bound of the record;
* ``cumulative``: the used budget after the record (training residual + bounds since the
  last retrain);
* ``retrained``: whether the model was retrained before this removal;
* ``seconds``: wall time of the removal (including a retrain when there was one).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic_files import save_figure
from .._json_data import NON_FINITE_STRINGS
from .._numbers import as_float, is_flag, is_real
from .._numbers import is_finite as _finite
from .._paths import check_output_file

if TYPE_CHECKING:
    import numpy as np

__all__ = ["plot_accuracy", "plot_bounds", "plot_times"]

#: Smallest value drawn on a log axis (zero bounds, e.g. a residual of exactly 0).
_LOG_FLOOR = 1e-16
#: Largest value drawn on a log axis: larger ones are drawn at it (and named in a note), as
#: matplotlib's autoscale margin overflows near the float range (1e300).
_LOG_CEIL = 1e100

_RETRAIN_COLOR = "tab:red"
#: More retrains than this are drawn as short ticks at the top of the axes, not as
#: full-height lines (which would swamp the figure).
_MAX_RETRAIN_LINES = 20
#: Labels of the used-budget line of :func:`plot_bounds`.
_USED_LABEL = "used budget (cumulative bound)"


def _field(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def _number(value: Any, what: str = "records") -> float:
    """``value`` as a float; None (a value not measured) becomes NaN.

    The strings ``"inf"``, ``"-inf"`` and ``"nan"`` (how a result's JSON file stores
    non-finite floats, :mod:`fastunlearn._json_data`) become those floats, so records read
    back from the file plot as the in-memory ones. An int too large for a float becomes
    +-inf.

    Raises:
        TypeError: naming ``what`` if ``value`` is not None, a real number or one of those
            strings.

    """
    if value is None:
        return math.nan
    if isinstance(value, str) and value in NON_FINITE_STRINGS:
        return float(value)
    if is_flag(value) or not hasattr(value, "__float__"):  # np.bool_ is no number either
        raise TypeError(f"'{what}': expected a number or None, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError) as exc:  # a tensor of several numbers, a complex
        raise TypeError(f"'{what}': expected a number or None, got {value!r}") from exc


def _check_records(records: Any, what: str = "records") -> Sequence[Any]:
    """Refuse ``records`` that are not a sequence of mappings or objects with fields."""
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise TypeError(f"'{what}' must be a list of records, got {type(records).__name__}")
    for i, r in enumerate(records):
        if r is None or isinstance(r, (numbers.Number, str, bytes, list, tuple)):
            raise TypeError(f"'{what}[{i}]' must be a mapping or an object with fields, "
                            f"got {type(r).__name__}")
    return records


def _optional_number(value: Any, what: str) -> float | None:
    """None, or ``value`` as a float (see :func:`_number`)."""
    return None if value is None else _number(value, what)


def _positions(records: Sequence[Any]) -> list[float]:
    """Return the x of each record: its ``n_removed``, else its 1-based position."""
    xs = []
    for i, r in enumerate(records):
        x = _field(r, "n_removed", None)
        xs.append(float(i + 1) if x is None else _number(x))
    return xs


def _retrain_positions(records: Sequence[Any]) -> list[float]:
    xs = _positions(records)
    return [x for x, r in zip(xs, records, strict=True) if _field(r, "retrained", False)]


def _positive(values: Iterable[float], notes: list[str] | None = None,
              what: str = "value") -> list[float]:
    """Values for a log axis: clipped to [_LOG_FLOOR, _LOG_CEIL], non-finite ones NaN.

    Infinite and clipped values are counted into ``notes`` (one line each kind), so the
    figure says what it could not draw instead of dropping it silently.
    """
    parsed = [_number(v) for v in values]
    if notes is not None:
        n_inf = sum(1 for v in parsed if math.isinf(v))
        n_big = sum(1 for v in parsed if math.isfinite(v) and v > _LOG_CEIL)
        if n_inf:
            notes.append(f"{n_inf} infinite {what}(s) not drawn")
        if n_big:
            notes.append(f"{n_big} {what}(s) above {_LOG_CEIL:.0e} drawn at {_LOG_CEIL:.0e}")
    return [min(max(v, _LOG_FLOOR), _LOG_CEIL) if math.isfinite(v) else math.nan
            for v in parsed]


def _add_notes(ax: Any, notes: Sequence[str]) -> None:
    """Write ``notes`` (what the axes could not show) in the lower right corner."""
    if notes:
        ax.text(0.99, 0.02, "\n".join(notes), transform=ax.transAxes, ha="right",
                va="bottom", fontsize=7, color="tab:red",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})


def _new_figure(size: tuple[float, float] = (7.0, 4.2)) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is an optional dependency
        raise ImportError(
            "fastunlearn.report plots need matplotlib (pip install matplotlib)"
        ) from exc
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _mark_retrains(ax: Any, xs: Sequence[float], label: bool = True) -> None:
    """Mark the retrains at ``xs``: dotted full-height lines, or top ticks if there are many.

    Up to :data:`_MAX_RETRAIN_LINES` retrains get a dotted vertical line each; more would
    hide the data behind a curtain of lines, so they become one short tick each at the top
    of the axes (one artist; the legend entry says how many).
    """
    if len(xs) > _MAX_RETRAIN_LINES:
        ax.set_ymargin(0.1)  # room under the ticks: the highest data stay clear of them
        ax.plot(xs, [0.98] * len(xs), transform=ax.get_xaxis_transform(), linestyle="none",
                marker="|", markersize=7, markeredgewidth=1.0, color=_RETRAIN_COLOR,
                label=f"retrain ({len(xs)}, ticks at top)" if label else None)
        return
    for j, x in enumerate(xs):
        ax.axvline(x, color=_RETRAIN_COLOR, linestyle=":", linewidth=1.0,
                   label="retrain" if label and j == 0 else None)


def _integer_x(ax: Any) -> None:
    """Tick the x axis (removal counts) at whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(ax: Any, ncol: int = 3, handles: Sequence[Any] | None = None,
                  labels: Sequence[str] | None = None) -> Any:
    """Put the legend of ``ax`` below it, in the figure, where it cannot cover data.

    Uses ``ax``'s labelled artists unless ``handles`` and ``labels`` are given; the number
    of columns drops from ``ncol`` until the legend fits the figure's width. :func:`_layout`
    keeps room for it. Returns the legend, or None when nothing is labelled.
    """
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    for n in range(max(1, min(ncol, len(handles))), 0, -1):
        legend = fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                            ncol=n, fontsize=8, frameon=False)
        if n == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return legend
        legend.remove()
    return None  # pragma: no cover - the loop returns at n == 1


def _layout(fig: Any) -> None:
    """``tight_layout`` that keeps the bottom strip of a :func:`_legend_below` legend free."""
    bottom = 0.0
    if fig.legends:
        renderer = fig.canvas.get_renderer()
        bottom = max(leg.get_window_extent(renderer).height for leg in fig.legends)
        bottom = min(0.5, bottom / fig.bbox.height + 0.01)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))


def _isolated(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    """Finite points of a line whose neighbours are NaN or absent (a line draws no dot there)."""
    def ok(i: int) -> bool:
        return 0 <= i < len(ys) and math.isfinite(ys[i])

    return [(xs[i], ys[i]) for i in range(len(ys)) if ok(i) and not ok(i - 1) and not ok(i + 1)]


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _layout(fig)
    return save_figure(fig, out)


def _worst_case_running(records: Sequence[Any], default: float | None) -> list[float] | None:
    """Sum each record's worst case (or ``default``) since the last retrain; None if none."""
    running, out, seen = 0.0, [], False
    for r in records:
        if _field(r, "retrained", False):  # the retrained model starts afresh
            running = 0.0
            out.append(math.nan)
            continue
        value = _optional_number(_field(r, "worst_case", None), "records")
        if value is None or not math.isfinite(value) or value <= 0:
            value = default
        if value is None or not math.isfinite(value) or value <= 0:
            out.append(math.nan)
            continue
        seen = True
        running += float(value)
        out.append(running)
    return out if seen else None


def plot_bounds(
    records: Sequence[Any],
    budget: float | np.floating,
    path: str | os.PathLike[str],
    *,
    worst_case: float | np.floating | None = None,
    title: str | None = None,
) -> Path:
    """Cumulative gradient-residual bound against the budget, log scale, with retrains.

    The used-budget line breaks at each retrain: there it restarts at the retrained model's
    residual (about 1e-14), which is left below the axis. Many retrains are marked by ticks
    at the top instead of full-height lines; the legend sits below the axes.

    Args:
        records: Removal records in order (see the module docstring).
        budget: The budget ``sigma * epsilon / c`` (a horizontal line; 0 when ``sigma`` is
            0, named in the legend only). Like the data, one above 1e100 is drawn at 1e100
            with a note (the legend gives its value).
        path: PNG file to write (folders are created).
        worst_case: Worst-case (data-independent) bound of one removal, for records
            without a ``worst_case`` field of their own; the running sum since the last
            retrain is drawn for comparison.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ValueError: If ``budget`` is negative or not a finite number, or ``path`` is empty,
            a folder, or below a file.
        TypeError: If ``records`` is not a list of records, a record field or
            ``worst_case`` is not a number, or ``path`` is not a path.
        ImportError: If matplotlib is not installed.

    """
    check_output_file(path, create_parents=True)
    _check_records(records)
    if not (is_real(budget) and _finite(budget) and budget >= 0):  # NumPy reals too
        raise ValueError(f"'budget' must be a finite number >= 0, got {budget!r}")
    budget = as_float(budget)
    worst_case = _optional_number(worst_case, "worst_case")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    xs = _positions(records)
    notes: list[str] = []
    # the budget line is clipped to the log axis's range like the data (near 1e300 the
    # axis limits overflowed: RuntimeWarnings, or an error for a budget near 1.8e308)
    shown = _positive([budget], notes, "budget")[0] if budget > 0 else 0.0
    retrained_flags = [bool(_field(r, "retrained", False)) for r in records]
    used_handle = None
    # lowest value drawn on purpose: the y axis starts just below it (see the end)
    drawn: list[float] = [shown] if budget > 0 else []
    if records:
        used = _positive((_field(r, "cumulative", None) for r in records), notes,
                         "cumulative bound")
        # one dot per record; the line through them breaks at every retrain, where the used
        # budget restarts at the new model's residual (~1e-14, below the axis): a line down
        # to it and back up would draw a full-height spike per retrain (a comb)
        ax.plot(xs, used, linestyle="none", marker="o", markersize=2.5, color="tab:blue",
                label=_USED_LABEL)
        broken = [math.nan if flag else y for flag, y in zip(retrained_flags, used, strict=True)]
        (used_handle,) = ax.plot(xs, broken, color="tab:blue", linewidth=1.6,
                                 label="_used budget between retrains")
        drawn += [y for y in broken if math.isfinite(y)]
        if records and all(retrained_flags):
            notes.append("used budget ~0 after every retrain (below the axis)")
        for retrained, style in ((False, {"s": 6, "color": "tab:gray", "alpha": 0.6,
                                          "label": "bound of each removal"}),
                                 (True, {"s": 30, "marker": "x", "color": _RETRAIN_COLOR,
                                         "label": "bound that did not fit (retrain)"})):
            points = [(x, _number(_field(r, "bound", None)))
                      for x, r in zip(xs, records, strict=True)
                      if bool(_field(r, "retrained", False)) == retrained]
            points = [(x, b) for x, b in points if not math.isfinite(b) or b > 0]
            ys = _positive((b for _, b in points), notes, "bound")
            points = [(x, y) for (x, _), y in zip(points, ys, strict=True) if math.isfinite(y)]
            if points:
                ax.scatter(*zip(*points, strict=True), **style)
                drawn += [y for _, y in points]
        worst = _worst_case_running(records, worst_case)
        if worst is not None:
            worst_ys = _positive(worst, notes, "worst-case sum")
            ax.plot(xs, worst_ys, color="tab:orange", linestyle="--", linewidth=1.2,
                    label="worst-case bound (cumulative)")
            drawn += [y for y in worst_ys if math.isfinite(y)]
            # a sum right after a retrain and before the next has no neighbour to join
            lone = _isolated(xs, worst_ys)
            if lone:
                ax.scatter(*zip(*lone, strict=True), s=10, color="tab:orange",
                           label="_worst-case bound (single removal)")
    if budget > 0:
        ax.axhline(shown, color="black", linewidth=1.2, label=f"budget {budget:.3g}")
    else:  # sigma = 0: nothing fits, every removal retrains; no line on a log axis
        ax.plot([], [], color="black", linewidth=1.2, label="budget 0 (every removal retrains)")
    _mark_retrains(ax, _retrain_positions(records))
    ax.set_yscale("log")
    # a fresh model's residual (~1e-14) would stretch the axis over many empty decades:
    # start the axis just below the lowest value drawn on purpose
    low, high = ax.get_ylim()
    if drawn:
        low = min(drawn) / 2.0
    if budget > 0:
        low = max(low, shown * 1e-6)
        high = max(high, shown * 2.0)  # the budget line clear of the top frame
    if drawn or budget > 0:
        ax.set_ylim(low, high)
    _integer_x(ax)
    ax.set_xlabel("removals")
    ax.set_ylabel("gradient-residual norm bound")
    ax.set_title(title or "Certified removal: used budget")
    ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if used_handle is not None:  # the legend shows the line, not a lone dot
        handles[labels.index(_USED_LABEL)] = used_handle
    _legend_below(ax, 3, handles, labels)
    _add_notes(ax, notes)
    return _save(fig, path)


def plot_accuracy(
    evaluations: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    retrains: Sequence[float] = (),
    title: str | None = None,
) -> Path:
    """Test accuracy against the number of removals.

    Args:
        evaluations: Points with ``n_removed`` and ``test_accuracy`` (a fraction in [0, 1]).
        path: PNG file to write.
        retrains: Removal counts at which the model was retrained (dotted lines; ticks at
            the top when there are more than 20).
        title: Figure title.

    Returns:
        The path written.

    Raises:
        TypeError: If ``evaluations`` is not a list of records, a field or ``retrains`` is
            not a number, or ``path`` is not a path.
        ValueError: If ``path`` is empty, a folder, or below a file.
        ImportError: If matplotlib is not installed.

    """
    check_output_file(path, create_parents=True)
    _check_records(evaluations, "evaluations")
    if not isinstance(retrains, Iterable) or isinstance(retrains, (str, bytes)):
        raise TypeError(f"'retrains' must be a list of numbers, got {type(retrains).__name__}")
    retrains = [_number(x, "retrains") for x in retrains]
    xs = [float(i) if _field(e, "n_removed", None) is None
          else _number(_field(e, "n_removed"), "evaluations") for i, e in enumerate(evaluations)]
    ys = [100.0 * _number(_field(e, "test_accuracy", None), "evaluations") for e in evaluations]
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, ys, marker="o", markersize=3, color="tab:green", label="test accuracy")
    _mark_retrains(ax, retrains)
    _integer_x(ax)
    ax.set_xlabel("removals")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy during removals")
    ax.grid(True, alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def plot_times(
    records: Sequence[Any],
    retrain_seconds: float | np.floating | None,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Wall time of every removal against the time of a full retraining, log scale.

    Args:
        records: Removal records (``seconds``, ``retrained``, ``n_removed``).
        retrain_seconds: Time of one full retraining on the remaining data (a horizontal
            line), or None to leave it out.
        path: PNG file to write.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        TypeError: If ``records`` is not a list of records, a field or
            ``retrain_seconds`` is not a number, or ``path`` is not a path.
        ValueError: If ``path`` is empty, a folder, or below a file.
        ImportError: If matplotlib is not installed.

    """
    check_output_file(path, create_parents=True)
    _check_records(records)
    retrain_seconds = _optional_number(retrain_seconds, "retrain_seconds")
    xs = _positions(records)
    notes: list[str] = []
    secs = _positive((_field(r, "seconds", None) for r in records), notes, "time")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    plain = [(x, s) for x, s, r in zip(xs, secs, records, strict=True)
             if not _field(r, "retrained", False)]
    retrained = [(x, s) for x, s, r in zip(xs, secs, records, strict=True)
                 if _field(r, "retrained", False)]
    if plain:
        ax.scatter(*zip(*plain, strict=True), s=8, color="tab:blue", label="Newton removal")
    if retrained:
        ax.scatter(*zip(*retrained, strict=True), s=30, marker="x", color=_RETRAIN_COLOR,
                   label="removal with automatic retrain")
    # the height of the full-retraining line, None when there is no line to draw
    line_y = (min(retrain_seconds, _LOG_CEIL) if retrain_seconds is not None
              and math.isfinite(retrain_seconds) and retrain_seconds > 0 else None)
    if line_y is not None:
        ax.axhline(line_y, color="black", linestyle="--",
                   linewidth=1.2, label=f"full retraining {retrain_seconds:.3g} s")
    elif retrain_seconds is not None and not math.isnan(retrain_seconds):
        # 0 s or infinite: no line on a log axis, but the time is said
        notes.append(f"full retraining {retrain_seconds:.3g} s (not drawn)")
    ax.set_yscale("log")
    if line_y is not None:  # keep the retraining line clear of the frame, not on it
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, line_y / 2.0), max(high, line_y * 2.0))
    _integer_x(ax)
    ax.set_xlabel("removals")
    ax.set_ylabel("wall time per removal (s)")
    ax.set_title(title or "Time per removal vs full retraining")
    ax.grid(True, which="major", alpha=0.3)
    _legend_below(ax)
    _add_notes(ax, notes)
    return _save(fig, path)
