"""fastunlearn.report audit: what the plots draw and the Markdown says, checked against the data.

The plots are inspected through the figure they save (the lines, points and marks drawn
are compared with the records), and the Markdown tables are parsed back into numbers and
compared with the result they were rendered from.
"""

import json
import math
import os
import re

import numpy as np
import pytest

from fastunlearn.report import (
    plot_accuracy,
    plot_bounds,
    plot_times,
    render_markdown,
    write_markdown,
)
from fastunlearn.report import plots as plots_module

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_decodable_png(path):
    """The file is a PNG that decodes in full and shows a drawn figure."""
    from matplotlib import image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels.std()) > 0.01


@pytest.fixture
def figures(monkeypatch):
    """Capture every figure the plot functions save (they are still written)."""
    saved = []
    real_save = plots_module._save

    def capture(fig, path):
        saved.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots_module, "_save", capture)
    return saved


def line_by_label(ax, label):
    lines = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(lines) == 1, [line.get_label() for line in ax.get_lines()]
    return lines[0]


def labelled_lines(ax, prefix):
    return [line for line in ax.get_lines() if str(line.get_label()).startswith(prefix)]


def vertical_marks(ax):
    """x of every vertical line (retrain marks): lines whose two x values are equal."""
    xs = []
    for line in ax.get_lines():
        xdata = np.asarray(line.get_xdata(), dtype=float)
        if xdata.size == 2 and xdata[0] == xdata[1] and line.get_linestyle() == ":":
            xs.append(float(xdata[0]))
    return xs


def scatter_points(ax, label):
    hits = [c for c in ax.collections if c.get_label() == label]
    assert len(hits) == 1, [c.get_label() for c in ax.collections]
    return np.asarray(hits[0].get_offsets(), dtype=float)


def make_records(count=12, retrain_at=(5,), seed=0):
    """Records as the experiment writes them: bounds add up until a retrain resets them."""
    rng = np.random.default_rng(seed)
    residual = 1e-12
    records, cumulative = [], residual
    for i in range(1, count + 1):
        bound = float(rng.uniform(0.01, 0.05))
        retrained = i in retrain_at
        cumulative = residual if retrained else cumulative + bound
        records.append({"step": i, "indices": [200 + i], "n_removed": i, "bound": bound,
                        "cumulative": cumulative, "budget_left": 0.3 - cumulative,
                        "retrained": retrained, "seconds": float(rng.uniform(1e-4, 1e-2)),
                        "worst_case": float(rng.uniform(1.0, 2.0))})
    return records


# ---- plots: what is drawn -------------------------------------------------------------


def test_bounds_plot_draws_the_records_budget_retrains_and_worst_case(tmp_path, figures):
    records = make_records(count=12, retrain_at=(5, 9))
    budget = 0.3
    assert_decodable_png(plot_bounds(records, budget, tmp_path / "b.png"))
    ax = figures[-1].axes[0]
    used = line_by_label(ax, "used budget (cumulative bound)")
    np.testing.assert_allclose(used.get_xdata(), [r["n_removed"] for r in records])
    np.testing.assert_allclose(used.get_ydata(), [max(r["cumulative"], 1e-16) for r in records])
    (budget_line,) = labelled_lines(ax, "budget ")
    assert set(np.asarray(budget_line.get_ydata(), dtype=float)) == {budget}
    assert sorted(vertical_marks(ax)) == [5.0, 9.0]
    # the bounds that did not fit are the retrain crosses, the others grey points
    np.testing.assert_allclose(scatter_points(ax, "bound that did not fit (retrain)"),
                               [[r["n_removed"], r["bound"]] for r in records if r["retrained"]])
    np.testing.assert_allclose(scatter_points(ax, "bound of each removal"),
                               [[r["n_removed"], r["bound"]] for r in records
                                if not r["retrained"]])
    # worst case summed since the last retrain, computed here independently
    expected, running = [], 0.0
    for r in records:
        if r["retrained"]:
            running = 0.0
            expected.append(math.nan)
        else:
            running += r["worst_case"]
            expected.append(running)
    worst = line_by_label(ax, "worst-case bound (cumulative)")
    np.testing.assert_allclose(worst.get_ydata(), expected, equal_nan=True)


def test_times_plot_draws_each_removal_and_the_retraining(tmp_path, figures):
    records = make_records(count=8, retrain_at=(3,))
    assert_decodable_png(plot_times(records, 0.25, tmp_path / "t.png"))
    ax = figures[-1].axes[0]
    np.testing.assert_allclose(scatter_points(ax, "Newton removal"),
                               [[r["n_removed"], r["seconds"]] for r in records
                                if not r["retrained"]])
    np.testing.assert_allclose(scatter_points(ax, "removal with automatic retrain"),
                               [[3.0, records[2]["seconds"]]])
    (line,) = labelled_lines(ax, "full retraining")
    assert set(np.asarray(line.get_ydata(), dtype=float)) == {0.25}


def test_accuracy_plot_draws_percentages_and_retrain_marks(tmp_path, figures):
    evaluations = [{"n_removed": n, "test_accuracy": acc}
                   for n, acc in ((0, 0.97), (4, 0.955), (8, 0.9), (10, 0.91))]
    assert_decodable_png(plot_accuracy(evaluations, tmp_path / "a.png", retrains=[6]))
    ax = figures[-1].axes[0]
    line = line_by_label(ax, "test accuracy")
    np.testing.assert_allclose(line.get_xdata(), [0, 4, 8, 10])
    np.testing.assert_allclose(line.get_ydata(), [97.0, 95.5, 90.0, 91.0])
    assert vertical_marks(ax) == [6.0]


def json_records(records):
    """The records as the JSON file stores them: NaN and inf become null."""
    def ready(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    text = json.dumps([{k: ready(v) for k, v in r.items()} for r in records])
    return json.loads(text)


def test_plots_read_records_from_the_json_file_with_nulls(tmp_path, figures):
    """The JSON file stores NaN/inf as null: the plots must draw such records, not crash."""
    records = make_records(count=6, retrain_at=(4,))
    records[1]["bound"] = math.inf          # a bound that overflowed
    records[2]["seconds"] = math.nan        # a removal that was not timed
    records[4]["worst_case"] = math.nan     # no worst case for this step
    loaded = json_records(records)
    assert loaded[1]["bound"] is None and loaded[2]["seconds"] is None
    assert_decodable_png(plot_bounds(loaded, 0.3, tmp_path / "b.png", worst_case=1.5))
    points = scatter_points(figures[-1].axes[0], "bound of each removal")
    assert 2.0 not in points[:, 0]  # the null bound is left out, the others drawn
    assert len(points) == 4
    assert_decodable_png(plot_times(loaded, 0.1, tmp_path / "t.png"))
    evaluations = json.loads(json.dumps([{"n_removed": 0, "test_accuracy": 0.9},
                                         {"n_removed": 3, "test_accuracy": None}]))
    assert_decodable_png(plot_accuracy(evaluations, tmp_path / "a.png"))
    ys = line_by_label(figures[-1].axes[0], "test accuracy").get_ydata()
    assert ys[0] == pytest.approx(90.0) and math.isnan(ys[1])


@pytest.mark.parametrize("case", ["empty", "single", "all_nan", "only_retrains", "zero_bounds"])
def test_plots_of_edge_cases_are_whole_pngs(tmp_path, case):
    nan = math.nan
    records = {
        "empty": [],
        "single": [{"n_removed": 1, "bound": 0.01, "cumulative": 0.01, "retrained": False,
                    "seconds": 1e-3}],
        "all_nan": [{"n_removed": i, "bound": nan, "cumulative": nan, "retrained": False,
                     "seconds": nan} for i in (1, 2)],
        "only_retrains": [{"n_removed": i, "bound": 0.5, "cumulative": 1e-13,
                           "retrained": True, "seconds": 0.1} for i in (1, 2, 3)],
        "zero_bounds": [{"n_removed": i, "bound": 0.0, "cumulative": 0.0, "retrained": False,
                         "seconds": 0.0} for i in (1, 2)],
    }[case]
    evaluations = [{"n_removed": r["n_removed"], "test_accuracy": 0.5} for r in records]
    assert_decodable_png(plot_bounds(records, 0.2, tmp_path / "b.png", worst_case=1.0))
    assert_decodable_png(plot_times(records, None, tmp_path / "t.png"))
    assert_decodable_png(plot_times(records, nan, tmp_path / "t2.png"))
    assert_decodable_png(plot_accuracy(evaluations, tmp_path / "a.png"))


def test_times_plot_without_anything_labelled_draws_no_empty_legend(tmp_path, figures,
                                                                   recwarn):
    plot_times([], math.nan, tmp_path / "t.png")
    assert figures[-1].axes[0].get_legend() is None
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_bounds_plot_takes_a_numpy_budget_and_refuses_a_bool(tmp_path, figures):
    plot_bounds(make_records(), np.float32(0.25), tmp_path / "b.png")
    (line,) = labelled_lines(figures[-1].axes[0], "budget ")
    assert float(np.asarray(line.get_ydata(), dtype=float)[0]) == pytest.approx(0.25)
    for bad in (True, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="'budget'"):
            plot_bounds(make_records(), bad, tmp_path / "c.png")


def test_bounds_plot_of_a_zero_budget_names_it_without_a_line(tmp_path, figures):
    """sigma = 0: the budget is 0, nothing fits; a log axis cannot draw it, the legend says it."""
    assert_decodable_png(plot_bounds(make_records(), 0.0, tmp_path / "z.png"))
    ax = figures[-1].axes[0]
    (entry,) = labelled_lines(ax, "budget ")
    assert entry.get_label() == "budget 0 (every removal retrains)"
    assert len(entry.get_ydata()) == 0


# ---- markdown: parsed back and compared -------------------------------------------------


def split_cells(row):
    """Cells of one Markdown table row; ``\\|`` is a pipe inside a cell."""
    inner = row.strip()
    assert inner.startswith("|") and inner.endswith("|"), row
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner[1:-1])]


def tables(text):
    """Every table of the page: {first header cell + section title: [rows of cells]}."""
    found, section, current = [], None, None
    for line in [*text.splitlines(), ""]:
        if line.startswith("## "):
            section = line[3:]
        if line.startswith("|"):
            current = current if current is not None else []
            current.append(split_cells(line))
            continue
        if current is not None:
            found.append((section, current))
            current = None
    return found


def kv(text, section):
    """The quantity -> value table of a section."""
    for name, rows in tables(text):
        if name == section and rows[0] == ["quantity", "value"]:
            return {row[0]: row[1] for row in rows[2:]}
    raise AssertionError(f"no quantity table in {section}")


def result_dict(records=None, batch=0):
    records = make_records() if records is None else records
    return {
        "config": {"dataset": "digits", "train_mode": "ovr", "lam": 0.0125, "std": 2.5,
                   "gamma": "tight", "solver": "cg", "device": "cpu", "batch": batch,
                   "seed": 7, "extractor": "none"},
        "data": {"dataset": "digits", "train_mode": "ovr", "classes": ["0", "1", "2"],
                 "n_train": 1438, "n_test": 359, "n_features": 64, "extractor": "none"},
        "training": {"train_accuracy": 0.98765, "test_accuracy": 0.96432},
        "final": {"test_accuracy": 0.95123},
        "records": records,
        "privacy": {"epsilon": 0.75, "delta": 3e-5, "c": 4.7018, "budget": 0.39877,
                    "training_residual": 1.234e-12, "removals": len(records), "retrains": 1,
                    "removals_supported": 4, "removals_supported_is_estimate": False,
                    "mean_bound": 0.03141, "worst_case_bound": 12.345, "budget_used": 0.2718,
                    "budget_left": 0.1269, "stopped_early": False, "stop_reason": None},
        "fairness": {
            "before": {"per_class": {"0": 0.99, "1": 0.95, "2": 0.9375}, "worst_class": "2",
                       "worst_accuracy": 0.9375, "largest_gap": 0.0525},
            "after": {"per_class": {"0": 0.98, "1": 0.925, "2": 0.95}, "worst_class": "1",
                      "worst_accuracy": 0.925, "largest_gap": 0.055},
        },
        "timings": {"fit_seconds": 0.125, "retrain_seconds": 0.0625,
                    "removal_seconds_median": 0.0025, "removal_seconds_mean": 0.0075,
                    "removals_per_second": 133.3, "speedup": 25.0},
    }


def number(cell):
    return float(cell.rstrip(" %x"))


def test_markdown_numbers_equal_the_result():
    result = result_dict()
    text = render_markdown(result)
    setup, privacy = kv(text, "Setup"), kv(text, "Privacy")
    assert number(setup["lambda"]) == pytest.approx(0.0125)
    assert number(setup["sigma (std of b)"]) == pytest.approx(2.5)
    assert setup["solver / device"] == "cg / cpu" and setup["seed"] == "7"
    assert setup["train / test rows"] == "1438 / 359"
    for key, label in (("epsilon", "epsilon"), ("delta", "delta"), ("budget",
                       "budget sigma * epsilon / c"), ("c", "c = sqrt(2 ln(1.5/delta))"),
                       ("mean_bound", "mean data-dependent bound per removal"),
                       ("worst_case_bound", "worst-case bound per removal")):
        assert number(privacy[label]) == pytest.approx(result["privacy"][key], rel=1e-3), label
    used, left = privacy["budget used / left at the end"].split(" / ")
    assert (number(used), number(left)) == pytest.approx((0.2718, 0.1269), rel=1e-3)
    accuracy = kv(text, "Accuracy")
    assert number(accuracy["test accuracy after fit"]) == pytest.approx(96.432, abs=0.005)
    assert number(accuracy["test accuracy after the removals"]) == pytest.approx(95.123,
                                                                                abs=0.005)
    timings = kv(text, "Timings")
    assert number(timings["speed-up: retraining / median removal"]) == pytest.approx(25.0)
    assert number(timings["fit (s)"]) == pytest.approx(0.125)
    (per_class,) = [rows for name, rows in tables(text)
                    if name.startswith("Fairness") and rows[0][0] == "class"]
    for cls, before, after in per_class[2:]:
        assert number(before) == pytest.approx(100 * result["fairness"]["before"]["per_class"][
            cls], abs=0.005)
        assert number(after) == pytest.approx(100 * result["fairness"]["after"]["per_class"][
            cls], abs=0.005)


def test_markdown_removal_table_shows_the_first_and_last_records_with_their_values():
    records = make_records(count=23, retrain_at=(7, 20))
    text = render_markdown(result_dict(records))
    (table,) = [rows for name, rows in tables(text) if name == "Removals"]
    header, body = table[0], table[2:]
    assert header == ["#", "rows", "bound", "cumulative", "budget left", "retrain", "seconds"]
    assert all(len(row) == len(header) for row in body)
    shown = [row for row in body if row[0] != "..."]
    assert [int(row[0]) for row in shown] == [*range(1, 11), *range(19, 24)]
    assert [row[0] for row in body].count("...") == 1
    by_n = {r["n_removed"]: r for r in records}
    for row in shown:
        rec = by_n[int(row[0])]
        assert row[1] == str(rec["indices"][0])
        assert float(row[2]) == pytest.approx(rec["bound"], rel=1e-3)
        assert float(row[3]) == pytest.approx(rec["cumulative"], rel=1e-3)
        assert float(row[4]) == pytest.approx(rec["budget_left"], rel=1e-3)
        assert (row[5] == "retrain") == rec["retrained"]
        assert float(row[6]) == pytest.approx(rec["seconds"], rel=1e-2)
    assert "Automatic retrains at removal(s) 7, 20." in text


def test_markdown_projection_without_a_number_is_a_plain_dash():
    result = result_dict(records=[])
    result["privacy"].update(removals=0, removals_supported=None,
                             removals_supported_is_estimate=True)
    privacy = kv(render_markdown(result), "Privacy")
    assert privacy["removals supported by one budget"] == "-"
    result["privacy"]["removals_supported"] = 9
    privacy = kv(render_markdown(result), "Privacy")
    assert privacy["removals supported by one budget"].startswith("~9 (projected")


def test_markdown_of_a_batch_run_gives_bounds_per_batch():
    records = make_records(count=3, retrain_at=())
    for r in records:
        r["indices"] = [r["indices"][0], r["indices"][0] + 1000]
        r["n_removed"] *= 2
    text = render_markdown(result_dict(records, batch=2))
    privacy = kv(text, "Privacy")
    assert "mean data-dependent bound per batch of 2 rows" in privacy
    assert "worst-case bound per batch of 2 rows" in privacy
    assert not any(key.endswith("per removal") for key in privacy)
    assert kv(text, "Setup")["batch size"] == "2"


def test_markdown_tables_survive_pipes_and_line_breaks_in_values():
    result = result_dict()
    result["config"]["extractor"] = result["data"]["extractor"] = "feat|v2"
    result["privacy"].update(stopped_early=True, stop_reason="budget exhausted\nat 3 | 4")
    result["privacy"]["extractor"] = {"name": "feat|v2", "private": False, "note": "a | b"}
    text = render_markdown(result)
    for _, rows in tables(text):
        assert len({len(row) for row in rows}) == 1, rows
    privacy = kv(text, "Privacy")
    assert privacy["stopped"] == "budget exhausted at 3 | 4"
    assert privacy["feature extractor feat|v2"] == "a | b"
    assert kv(text, "Setup")["features"] == "feat|v2"


def test_markdown_speedup_that_is_not_a_number_is_a_dash():
    result = result_dict()
    result["timings"]["speedup"] = math.nan
    timings = kv(render_markdown(result), "Timings")
    assert timings["speed-up: retraining / median removal"] == "-"


def test_markdown_links_resolve_to_the_plots_from_another_folder(tmp_path):
    plot = tmp_path / "plots" / "b.png"
    plot.parent.mkdir()
    plot.write_bytes(PNG_SIGNATURE)
    md = write_markdown(result_dict(), tmp_path / "reports" / "r.md",
                        plots={"bounds_plot": str(plot)})
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text())
    assert len(links) == 1 and not os.path.isabs(links[0])
    assert (md.parent / links[0]).resolve() == plot.resolve()


def test_a_stopped_run_says_so_before_any_number():
    result = result_dict()
    result["privacy"].update(stopped_early=True,
                             stop_reason="stopped on request after 60 of 1000 removals")
    lines = render_markdown(result).splitlines()
    partial = lines.index("**Partial results:** stopped on request after 60 of 1000 removals.")
    assert partial < min(i for i, line in enumerate(lines) if line.startswith("## "))
    assert "automatic retrain(s) at (epsilon, delta)" in lines[partial - 2]  # the summary
    result["privacy"].update(stopped_early=False, stop_reason=None)
    assert "Partial results" not in render_markdown(result)
