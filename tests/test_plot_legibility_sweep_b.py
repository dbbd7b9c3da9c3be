"""Legibility of the plots and Markdown of ``fastunlearn forget`` and ``fastunlearn evaluate``.

Each figure is drawn with Agg and checked the way a reader would look at it: every text
inside the figure, tick labels that tell groups apart, legends that cover no data, notes
that say why a value is missing and histograms that do not pass a few values off as a
distribution.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from fastunlearn.harness import report as harness_report
from fastunlearn.metrics import report as metrics_report

matplotlib.use("Agg")

NOTE_1_SEED = ("epsilon-hat needs >= 2 oracles and >= 2 unlearned models (4, 1); the "
               "competition score needs >= 2 oracles and >= 3 unlearned models (4, 1)")
NOTE_BASELINE = "the competition score needs >= 2 oracles and >= 3 unlearned models (2, 2)"


def _scores(**kw: Any) -> dict[str, Any]:
    out = {"unlearning_accuracy": 1.0, "retain_accuracy": 0.95, "test_accuracy": 0.92,
           "mia_efficacy": 1.0, "forget_accuracy": 0.0, "seconds": 1.5}
    out.update(kw)
    return out


def _method(**kw: Any) -> dict[str, Any]:
    entry = {**_scores(), "status": "ok", "num_ok": 1, "time_ratio": 4.0, "avg_gap": 1.0,
             "privacy_note": NOTE_1_SEED, "runs": [{"seed": 0, "status": "ok", **_scores()}]}
    entry.update(kw)
    return entry


def _harness(names: list[str], baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``run_harness`` result as the seeds-1 run writes it (no eps / F per method)."""
    oracles: dict[str, Any] = {**_scores(), "per_model": [_scores()] * 4, "seconds": [0.4] * 4,
                               "mean_seconds": 0.38}
    if baseline is not None:
        oracles["baseline"] = baseline
    return {
        "config": {"model": "small_cnn", "forget": "class:3", "seeds": 1, "oracles": 4},
        "data": {"dataset": "digits", "num_train": 1438, "num_test": 322, "num_classes": 10,
                 "num_forget": 146, "num_retain": 1292, "test_classes_dropped": [3],
                 "forget_indices": [0, 1]},
        "original": _scores(unlearning_accuracy=0.034, mia_efficacy=0.13),
        "oracles": oracles,
        "methods": {n: _method() for n in names},
        "timing": {"total_seconds": 40.0},
        "cache": {"hits": 5, "misses": 0},
    }


def _baseline(eps: list[float]) -> dict[str, Any]:
    return {"epsilon_hat": math.inf, "privacy_note": NOTE_BASELINE,
            "per_example": {"epsilon": eps}}


def _draw(monkeypatch: pytest.MonkeyPatch, module: Any, plot: Any, *args: Any) -> Any:
    """Call ``plot(*args)``, return its figure drawn (the one handed to ``save_figure``)."""
    seen = []
    save = module.save_figure

    def spy(fig: Any, path: Any) -> Any:
        seen.append(fig)
        return save(fig, path)

    monkeypatch.setattr(module, "save_figure", spy)
    plot(*args)
    (fig,) = seen
    # the Text artists Agg really draws (tick labels outside the view limits are not)
    drawn: list[Text] = []
    draw = Text.draw

    def record(self: Text, renderer: Any) -> None:
        drawn.append(self)
        draw(self, renderer)

    monkeypatch.setattr(Text, "draw", record)
    fig.canvas.draw()
    monkeypatch.setattr(Text, "draw", draw)
    fig.drawn_texts = drawn
    return fig


def _texts_outside(fig: Any) -> list[str]:
    """The drawn texts of ``fig`` that stick out of it (by more than a pixel)."""
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for t in fig.drawn_texts:
        if not t.get_visible() or not t.get_text().strip():
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            out.append(t.get_text())
    return out


def _bars(ax: Any) -> list[Any]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]


# ---- fastunlearn forget: accuracy.png ----------------------------------------------------


def test_accuracy_plot_tells_the_oracles_from_a_method_named_retrain(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # old: two groups labelled "retrain" (the oracles and the method), unlike the table's
    # "retrain (oracles)"
    fig = _draw(monkeypatch, harness_report, harness_report.plot_accuracies,
                _harness(["finetune", "retrain", "scrub"]), tmp_path / "a.png")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:2] == ["original", "retrain (oracles)"]
    assert len(labels) == len(set(labels))
    assert "| retrain (oracles) |" in harness_report.render_table(
        _harness(["finetune", "retrain", "scrub"]))


@pytest.mark.parametrize("plot", ["plot_accuracies", "plot_times"])
def test_harness_legend_covers_no_bar(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      plot: str) -> None:
    # old: accuracy.png's legend (upper left) lay over the "original" bars
    result = _harness(["finetune", "neggrad", "retrain"])
    fig = _draw(monkeypatch, harness_report, getattr(harness_report, plot), result,
                tmp_path / "p.png")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = _bars(ax)
    assert bars
    assert not [b for b in bars if legend.overlaps(b.get_window_extent(renderer))]


@pytest.mark.parametrize("plot", ["plot_accuracies", "plot_times"])
@pytest.mark.parametrize("n", [1, 25])
def test_harness_bar_plots_keep_every_text_inside(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, plot: str, n: int) -> None:
    names = [f"method_with_a_long_name_{i:02d}" for i in range(n)]
    fig = _draw(monkeypatch, harness_report, getattr(harness_report, plot), _harness(names),
                tmp_path / "p.png")
    assert _texts_outside(fig) == []
    # 45-degree tick labels do not run into each other: the distance between neighbouring
    # (parallel) labels is at least their height
    ax = fig.axes[0]
    ticks = ax.get_xticklabels()
    assert len({t.get_text() for t in ticks}) == len(ticks)
    if len(ticks) > 1:
        xs = [ax.transData.transform((x, 0))[0] for x in ax.get_xticks()[:2]]
        height_px = ticks[0].get_fontsize() * fig.dpi / 72
        assert (xs[1] - xs[0]) * math.sin(math.radians(45)) >= height_px


# ---- fastunlearn forget: time.png --------------------------------------------------------


def test_time_plot_has_a_title_axis_labels_with_units_and_the_line_explained(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # old: no title and no x label
    fig = _draw(monkeypatch, harness_report, harness_report.plot_times,
                _harness(["finetune", "scrub"]), tmp_path / "t.png")
    ax = fig.axes[0]
    assert ax.get_title()
    assert ax.get_xlabel() == "method"
    assert "(s)" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "retraining (oracle mean): 0.38 s" in labels


# ---- fastunlearn forget: epsilon_hist.png ------------------------------------------------


def test_single_epsilon_panel_fits_its_title(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    # old: one panel made a 320 px figure; the suptitle was cut off on both sides
    result = _harness(["finetune"], baseline=_baseline([-0.1] * 2 + [math.inf] * 144))
    fig = _draw(monkeypatch, harness_report, harness_report.plot_epsilons, result,
                tmp_path / "e.png")
    assert _texts_outside(fig) == []


def test_epsilon_panels_say_when_few_values_are_finite(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    # old: 2 finite values of 146 drew a histogram of height 2 with no word of warning, and
    # an all-infinite panel kept 0..1 ticks that read as data
    result = _harness(["finetune", "scrub"],
                      baseline=_baseline([-0.1] * 2 + [math.inf] * 144))
    result["methods"]["finetune"]["per_example"] = {
        "epsilon": [0.9] * 4 + [math.inf] * 142}
    result["methods"]["scrub"]["per_example"] = {"epsilon": [math.inf] * 146}
    fig = _draw(monkeypatch, harness_report, harness_report.plot_epsilons, result,
                tmp_path / "e.png")
    titles = {ax.get_title().split(":")[0]: ax for ax in fig.axes}
    assert "only 4 finite" in titles["finetune"].get_title()
    assert "142/146 inf" in titles["finetune"].get_title()
    assert "only 2 finite" in titles["oracles vs oracles"].get_title()
    assert list(titles["scrub"].get_xticks()) == []
    assert _texts_outside(fig) == []


# ---- fastunlearn forget: results.md ------------------------------------------------------


def test_results_md_says_once_why_eps_and_f_are_missing() -> None:
    # old: "-" in eps / F / final for every method, the privacy_note nowhere
    md = harness_report.render_table(_harness(["finetune", "scrub", "salun"],
                                              baseline=_baseline([math.inf])))
    assert md.count(NOTE_1_SEED) == 1
    assert f"- all methods: {NOTE_1_SEED}" in md
    assert f"- retrain (oracles), half vs half: {NOTE_BASELINE}" in md
    assert md.index("| salun |") < md.index(NOTE_1_SEED)


def test_results_md_gives_each_method_its_own_privacy_note() -> None:
    result = _harness(["finetune", "scrub"])
    result["methods"]["scrub"]["privacy_note"] = "other note"
    del result["methods"]["finetune"]["privacy_note"]
    result["methods"]["broken"] = {"status": "error", "num_ok": 0, "error": "boom",
                                   "runs": [{"seed": 0, "status": "error", "error": "boom"}]}
    md = harness_report.render_table(result)
    assert "- `scrub`: other note" in md
    assert "all methods" not in md
    assert NOTE_1_SEED not in md


def test_results_md_has_no_privacy_section_when_everything_was_computed() -> None:
    result = _harness(["finetune", "scrub"])
    for e in result["methods"].values():
        del e["privacy_note"]
    assert "Not computed" not in harness_report.render_table(result)


# ---- fastunlearn evaluate: evaluation.md and epsilon_hist.png -----------------------------


def _evaluation(methods: dict[str, list[float]], note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": "logits", "num_examples": 146, "num_models": 4,
                           "num_classes": 10, "delta": 0.05, "competition_delta": 1e-5,
                           "methods": {}}
    for name, eps in methods.items():
        finite = [e for e in eps if math.isfinite(e)]
        m: dict[str, Any] = {"forget_accuracy": 0.0,
                             "epsilon_hat": float(np.median(finite)) if finite else math.inf,
                             "per_example": {"epsilon": eps}}
        if note:
            m["privacy_note"] = note
        out["methods"][name] = m
    return out


def test_evaluation_md_writes_a_shared_privacy_note_once() -> None:
    # old: the same two-sentence note repeated for each of the 20 methods
    result = _evaluation({f"m{i}": [] for i in range(20)}, note="needs >= 2 models, got 1")
    result["baseline"] = {"privacy_note": "competition needs 3, got 2"}
    md = metrics_report.render_evaluation_markdown(result)
    assert md.count("needs >= 2 models, got 1") == 1
    assert "- all methods: needs >= 2 models, got 1" in md
    assert "- `baseline (retrain vs retrain)`: competition needs 3, got 2" in md


def test_evaluation_md_keeps_different_notes_per_method() -> None:
    result = _evaluation({"a": [], "b": []}, note="same")
    result["methods"]["b"]["privacy_note"] = "different"
    md = metrics_report.render_evaluation_markdown(result)
    assert "- `a`: same" in md and "- `b`: different" in md


def test_evaluation_histogram_keeps_legend_and_notes_off_the_data(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # old: legend and the red "no finite epsilon" note inside the axes, over histograms
    rng = np.random.default_rng(0)
    methods = {f"method_{i}": rng.uniform(0, 4.3, 1000).tolist() for i in range(9)}
    methods["all_inf"] = [math.inf] * 10
    fig = _draw(monkeypatch, metrics_report, metrics_report.plot_epsilon_histogram,
                _evaluation(methods), tmp_path / "h.png")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    data_area = ax.get_window_extent(renderer)
    assert not ax.get_legend().get_window_extent(renderer).overlaps(data_area)
    notes = [t for t in ax.texts if "no finite epsilon" in t.get_text()]
    assert notes
    assert not notes[0].get_window_extent(renderer).overlaps(data_area)
    assert _texts_outside(fig) == []


def test_evaluation_histogram_uses_the_same_bins_for_every_method(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # old: 40 bins over each method's own range, so bar heights were counts per bins of
    # different widths (a narrow spread looked spiky next to a wide one)
    methods = {"narrow": np.linspace(0.0, 1.0, 200).tolist(),
               "wide": np.linspace(0.0, 4.0, 200).tolist()}
    fig = _draw(monkeypatch, metrics_report, metrics_report.plot_epsilon_histogram,
                _evaluation(methods), tmp_path / "h.png")
    widths = []
    for patch in fig.axes[0].patches:
        xs = np.unique(np.round(patch.get_xy()[:, 0], 9))
        widths.append(np.diff(xs).min())
    assert len(widths) == 2
    assert widths[0] == pytest.approx(widths[1])


def test_evaluation_histogram_says_when_few_values_are_finite(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # old: the baseline's 2 finite epsilons of 146 drew a histogram with no warning
    methods = {"baseline-like": [-0.1, -0.1] + [math.inf] * 144,
               "fine": np.linspace(0.0, 1.0, 50).tolist()}
    fig = _draw(monkeypatch, metrics_report, metrics_report.plot_epsilon_histogram,
                _evaluation(methods), tmp_path / "h.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(lb.startswith("baseline-like") and "only 2 finite" in lb for lb in labels)
    assert not any(lb.startswith("fine") and "only" in lb for lb in labels)
