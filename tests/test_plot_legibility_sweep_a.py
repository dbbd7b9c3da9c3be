"""Plot legibility sweep: what a reader sees in the PNGs of remove, repair, features, exposure.

Every test draws a figure with the library's own plotting function on small synthetic inputs
(Agg canvas), captures the figure it saves and checks one legibility property: retrain marks
that do not swamp the figure, a used-budget line without a comb of spikes, legends that do
not cover the data, lines clear of the frame, whole-number removal ticks, titles and labels
that name what is drawn, and text that stays inside the figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from fastunlearn.exposure import ExposureMeasurement, SkewNormalFit  # noqa: E402
from fastunlearn.exposure import plot as exposure_plot  # noqa: E402
from fastunlearn.influence import experiment as repair_mod  # noqa: E402
from fastunlearn.influence import feature_experiment as feature_mod  # noqa: E402
from fastunlearn.report import plot_accuracy, plot_bounds, plot_times  # noqa: E402
from fastunlearn.report import plots as plots_mod  # noqa: E402

USED = "used budget (cumulative bound)"


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every figure the plotting functions save (they are still written)."""
    saved: list[Any] = []
    for module, name in ((plots_mod, "_save"), (exposure_plot, "_save"),
                         (repair_mod, "_save_png"), (feature_mod, "_save_png")):
        real = getattr(module, name)

        def capture(fig: Any, path: Any, real: Any = real) -> Any:
            saved.append(fig)
            return real(fig, path)

        monkeypatch.setattr(module, name, capture)
    return saved


def make_records(count: int, retrain_every: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Records as ``fastunlearn remove`` writes them; a retrain every ``retrain_every``."""
    rng = np.random.default_rng(seed)
    records, cumulative = [], 1e-13
    for i in range(1, count + 1):
        bound = float(rng.uniform(0.3, 0.9))
        retrained = retrain_every > 0 and i % retrain_every == 0
        cumulative = 1e-14 if retrained else cumulative + bound
        records.append({"n_removed": i, "bound": bound, "cumulative": cumulative,
                        "retrained": retrained, "worst_case": float(rng.uniform(5e3, 9e3)),
                        "seconds": float(rng.uniform(2e-4, 4e-4)) + (0.04 if retrained else 0)})
    return records


def full_height_lines(ax: Any) -> list[Any]:
    """Vertical lines spanning the whole axes (``axvline`` without ymin/ymax)."""
    found = []
    for line in ax.get_lines():
        xs = np.asarray(line.get_xdata(), dtype=float)
        ys = np.asarray(line.get_ydata(), dtype=float)
        if xs.size == 2 and xs[0] == xs[1] and list(ys) == [0.0, 1.0]:
            found.append(line)
    return found


def legend_labels(fig: Any) -> list[str]:
    legends = list(fig.legends) + [a.get_legend() for a in fig.axes if a.get_legend()]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def assert_text_inside(fig: Any) -> None:
    """Titles, axis and tick labels, notes and legends all lie inside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    legends = list(fig.legends) + [a.get_legend() for a in fig.axes if a.get_legend()]
    # an axes' tight box holds the ticks labels drawn, its title, axis labels and texts
    extents = [(f"axes {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in fig.axes]
    extents += [(f"legend {legend_labels(fig)}", leg.get_window_extent(renderer))
                for leg in legends]
    for what, ext in extents:
        assert (ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1
                and ext.y1 <= box.y1 + 1), f"{what} is cut off: {ext} vs {box}"


def assert_legend_outside_axes(fig: Any) -> None:
    """Legends sit beside the axes, never over them (where they hid the data), uniquely named."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [a.get_legend() for a in fig.axes if a.get_legend()]
    assert legends, "no legend"
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            frame = ax.get_window_extent(renderer)
            overlap_h = min(box.x1, frame.x1) - max(box.x0, frame.x0)
            overlap_v = min(box.y1, frame.y1) - max(box.y0, frame.y0)
            assert overlap_h <= 0 or overlap_v <= 0, f"legend {box} covers axes {frame}"
    labels = legend_labels(fig)
    assert len(labels) == len(set(labels)), labels
    assert_text_inside(fig)


def repair_result() -> dict[str, Any]:
    steps = [{"step": i, "eval": 0.95 + 0.002 * (i % 3)} for i in range(1, 8)]
    return {"config": {"model": "small_cnn"}, "data": {"dataset": "digits"},
            "training": {"acc_clean": 0.958, "acc_poisoned": 0.9499},
            "protocols": {"iterative": {"steps": steps},
                          "one-shot": {"steps": [{"step": 1, "eval": 0.964}]}}}


def feature_result() -> dict[str, Any]:
    method = {"residual": 1.0, "seconds": 0.00894}
    return {"data": {"dataset": "digits"},
            "original": {"residual": 400.0}, "retrained": {"residual": 8e-6, "seconds": 0.582},
            "methods": {"first_order": method,
                        "second_order": {"residual": 50.0, "seconds": 0.0643}}}


def measurements() -> list[ExposureMeasurement]:
    rng = np.random.default_rng(0)
    others = rng.normal(30.0, 5.0, 999)
    fit = SkewNormalFit(0.0, 30.0, 5.0, 999)
    canary = ExposureMeasurement("042", 0.5, 1, 9.97, 13.29, 9.97, 1000, 999, True, fit,
                                 others=others)
    control = ExposureMeasurement("917", 30.2, 440, 1.18, 1.13, 9.97, 1000, 999, True, fit,
                                  others=others)
    return [canary, control]


# ---- remove: many retrains -------------------------------------------------------------


def test_bounds_plot_marks_many_retrains_with_ticks_not_a_curtain_of_lines(
        tmp_path: Path, figures: list[Any]) -> None:
    # `remove --num-removes 200 --batch 0` (ovr) retrains ~80 times: 80 dotted full-height
    # lines hid the data; now short ticks at the top, one legend entry with the count
    records = make_records(200, retrain_every=3)
    plot_bounds(records, 2.28, tmp_path / "b.png", worst_case=7e3)
    fig = figures[-1]
    ax = fig.axes[0]
    assert len(full_height_lines(ax)) <= plots_mod._MAX_RETRAIN_LINES
    retrain_entries = [t for t in legend_labels(fig) if t.startswith("retrain")]
    assert retrain_entries == ["retrain (66, ticks at top)"]


def test_accuracy_plot_marks_many_retrains_with_ticks(tmp_path: Path,
                                                      figures: list[Any]) -> None:
    evaluations = [{"n_removed": n, "test_accuracy": 0.6 + 0.001 * n} for n in range(0, 201, 10)]
    plot_accuracy(evaluations, tmp_path / "a.png", retrains=list(range(3, 200, 3)))
    fig = figures[-1]
    assert len(full_height_lines(fig.axes[0])) <= plots_mod._MAX_RETRAIN_LINES
    assert [t for t in legend_labels(fig) if t.startswith("retrain")] == [
        "retrain (66, ticks at top)"]
    # the highest accuracy stays below the ticks (they sit in the top 4 % of the axes)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert (max(e["test_accuracy"] for e in evaluations) * 100 - low) / (high - low) < 0.95


def test_few_retrains_keep_their_dotted_lines(tmp_path: Path, figures: list[Any]) -> None:
    plot_bounds(make_records(40, retrain_every=15), 0.5, tmp_path / "b.png")
    assert len(full_height_lines(figures[-1].axes[0])) == 2


# ---- remove: the used-budget line ------------------------------------------------------


def test_used_budget_line_has_no_spike_down_at_each_retrain(tmp_path: Path,
                                                           figures: list[Any]) -> None:
    # the used budget restarts at ~1e-14 after a retrain: a line through it dropped to the
    # axis floor (budget * 1e-6) and back after every retrain, a comb over the figure
    records = make_records(60, retrain_every=4)
    plot_bounds(records, 2.28, tmp_path / "b.png", worst_case=7e3)
    ax = figures[-1].axes[0]
    low, _ = ax.get_ylim()
    for line in ax.get_lines():
        if line.get_linestyle() in ("None", "none", "") or line.get_transform() != ax.transData:
            continue
        ys = np.asarray(line.get_ydata(), dtype=float)
        assert np.all(ys[np.isfinite(ys)] >= low), line.get_label()
    # the axis starts near the lowest value drawn, not six decades below the budget
    lowest = min(min(r["cumulative"], r["bound"]) for r in records if not r["retrained"])
    assert low >= lowest / 10


def test_bounds_plot_names_a_used_budget_it_cannot_draw(tmp_path: Path,
                                                        figures: list[Any]) -> None:
    # `--batch 10`: every batch retrains, the used budget is ~0 throughout (off the log
    # axis); the legend named a line that was nowhere to be seen
    records = make_records(10, retrain_every=1)
    plot_bounds(records, 2.28, tmp_path / "b.png")
    texts = [t.get_text() for t in figures[-1].axes[0].texts]
    assert any("used budget ~0 after every retrain" in t for t in texts), texts


def test_single_removals_between_retrains_are_drawn(tmp_path: Path,
                                                    figures: list[Any]) -> None:
    # `--num-removes 5`: retrains at 2 and 4 leave lone points that a line does not draw;
    # the worst-case sum was in the legend but nowhere in the axes
    records = make_records(5, retrain_every=2)
    plot_bounds(records, 2.28, tmp_path / "b.png")
    ax = figures[-1].axes[0]
    dots: set[tuple[float, float]] = set()
    for c in ax.collections:
        dots |= {(float(x), float(y)) for x, y in np.asarray(c.get_offsets(), dtype=float)}
    for line in ax.get_lines():
        if line.get_marker() not in (None, "None", "none", ""):
            dots |= {(float(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata(),
                                                          strict=True)}
    def drawn(x: float, y: float) -> bool:
        return any(dx == x and math.isclose(dy, y, rel_tol=1e-9) for dx, dy in dots)

    for r in records:
        if not r["retrained"]:
            assert drawn(r["n_removed"], r["worst_case"]), r
            assert drawn(r["n_removed"], r["cumulative"]), r


# ---- remove: axes, lines clear of the frame --------------------------------------------


@pytest.mark.parametrize("kind", ["bounds", "accuracy", "times"])
def test_removal_counts_are_ticked_at_whole_numbers(tmp_path: Path, figures: list[Any],
                                                    kind: str) -> None:
    records = make_records(5, retrain_every=2)
    if kind == "bounds":
        plot_bounds(records, 2.28, tmp_path / "p.png")
    elif kind == "accuracy":
        plot_accuracy([{"n_removed": r["n_removed"], "test_accuracy": 0.9} for r in records],
                      tmp_path / "p.png", retrains=[2, 4])
    else:
        plot_times(records, 0.05, tmp_path / "p.png")
    ax = figures[-1].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_retraining_time_line_is_clear_of_the_frame(tmp_path: Path,
                                                    figures: list[Any]) -> None:
    # binary digits: the full-retraining line (3.25 ms) was drawn on the top frame
    records = make_records(40, retrain_every=15)
    for r in records:
        r["seconds"] = 2.8e-3 if r["retrained"] else 4e-5
    plot_times(records, 3.25e-3, tmp_path / "t.png")
    fig = figures[-1]
    ax = fig.axes[0]
    fig.canvas.draw()
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("full retraining")]
    y = ax.transData.transform((1.0, 3.25e-3))[1]
    frame = ax.get_window_extent()
    assert frame.y0 + 10 < y < frame.y1 - 10, (y, frame)
    assert line.get_ydata()[0] == pytest.approx(3.25e-3)


def test_budget_line_is_clear_of_the_frame(tmp_path: Path, figures: list[Any]) -> None:
    records = make_records(5)
    for r in records:
        r["cumulative"] = r["bound"] = 1e-3
    plot_bounds(records, 2.0, tmp_path / "b.png")
    fig = figures[-1]
    ax = fig.axes[0]
    fig.canvas.draw()
    y = ax.transData.transform((1.0, 2.0))[1]
    frame = ax.get_window_extent()
    assert frame.y0 + 10 < y < frame.y1 - 10, (y, frame)


# ---- legends that cover data -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["bounds", "accuracy", "times", "repair", "exposure"])
def test_legends_sit_outside_the_axes(tmp_path: Path, figures: list[Any], kind: str) -> None:
    # bounds (lower left over the used budget), repair (lower right over the poisoned
    # line), exposure (upper left over the histogram and the control line): 'best' still
    # put the legend over data; below the axes it covers nothing
    records = make_records(40, retrain_every=15)
    if kind == "bounds":
        plot_bounds(records, 2.28, tmp_path / "p.png", worst_case=7e3)
    elif kind == "accuracy":
        plot_accuracy([{"n_removed": n, "test_accuracy": 0.95 + 0.01 * (n % 3)}
                       for n in range(0, 41, 2)], tmp_path / "p.png", retrains=[15, 30])
    elif kind == "times":
        plot_times(records, 0.05, tmp_path / "p.png")
    elif kind == "repair":
        repair_mod._plot(repair_result(), tmp_path / "p.png")
    else:
        exposure_plot.plot_exposure(measurements(), tmp_path / "p.png")
    assert_legend_outside_axes(figures[-1])


def test_times_plot_without_data_still_has_no_legend(tmp_path: Path,
                                                     figures: list[Any]) -> None:
    plot_times([], None, tmp_path / "t.png")
    assert not figures[-1].legends and figures[-1].axes[0].get_legend() is None


# ---- titles, labels, units -------------------------------------------------------------


def test_repair_title_names_the_data_set_and_model(tmp_path: Path,
                                                   figures: list[Any]) -> None:
    repair_mod._plot(repair_result(), tmp_path / "r.png")
    assert figures[-1].axes[0].get_title() == "Label-poisoning repair: digits / small_cnn"
    # a result without them keeps the plain title
    repair_mod._plot({k: v for k, v in repair_result().items() if k not in ("config", "data")},
                     tmp_path / "r2.png")
    assert figures[-1].axes[0].get_title() == "Label-poisoning repair"


def test_exposure_legend_gives_both_exposures_in_bits(tmp_path: Path,
                                                      figures: list[Any]) -> None:
    exposure_plot.plot_exposure(measurements(), tmp_path / "e.png")
    labels = [t for t in legend_labels(figures[-1]) if t.startswith(("canary", "control"))]
    assert labels == [
        "canary 042: 9.97 bits (rank 1 of 1000), skew-normal 13.29 bits",
        "control 917: 1.18 bits (rank 440 of 1000), skew-normal 1.13 bits"]


def test_feature_time_bars_state_their_seconds(tmp_path: Path, figures: list[Any]) -> None:
    # a 9 ms update next to a 0.58 s retraining was a bar too thin to read
    feature_mod._plot(feature_result(), tmp_path / "f.png")
    fig = figures[-1]
    texts = {t.get_text() for t in fig.axes[1].texts}
    assert {"0.00894 s", "0.0643 s", "0.582 s"} <= texts
    assert_text_inside(fig)


def test_times_axis_label_names_the_quantity_and_unit(tmp_path: Path,
                                                      figures: list[Any]) -> None:
    plot_times(make_records(5), 0.05, tmp_path / "t.png")
    assert figures[-1].axes[0].get_ylabel() == "wall time per removal (s)"


def test_exposure_legend_of_a_sampled_long_secret_fits_the_figure(
        tmp_path: Path, figures: list[Any]) -> None:
    # long labels (6-digit secret, sampled ranks) fall back to fewer columns, all inside
    rng = np.random.default_rng(1)
    others = rng.normal(40.0, 6.0, 5000)
    fit = SkewNormalFit(-2.0, 45.0, 8.0, 5000)
    ms = [ExposureMeasurement(s, lp, rank, 12.3, 14.56, 19.93, 10**6, 5000, False, fit,
                              others=others)
          for s, lp, rank in (("604211", 1.0, 1), ("876455", 41.0, 2700))]
    exposure_plot.plot_exposure(ms, tmp_path / "e.png")
    assert_legend_outside_axes(figures[-1])
    assert not math.isnan(figures[-1].axes[0].get_ylim()[1])
