"""fastunlearn.report: PNG plots and the Markdown report, on synthetic removal records."""

import math
import struct
from dataclasses import dataclass

import pytest

from fastunlearn.report import (
    format_value,
    plot_accuracy,
    plot_bounds,
    plot_times,
    render_markdown,
    write_markdown,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_valid_png(path):
    width, height = png_size(path)
    assert width > 100 and height > 100
    mpl_image = pytest.importorskip("matplotlib.image")
    pixels = mpl_image.imread(path)  # decodes every chunk: a truncated file fails here
    assert pixels.shape[:2] == (height, width)
    # a drawn figure, not a blank canvas
    assert float(pixels.std()) > 0.01


def synthetic_records(count=30, retrain_at=(12, 25), bound=0.02):
    records, cumulative = [], 1e-12
    for i in range(1, count + 1):
        retrained = i in retrain_at
        b = 0.0 if retrained else bound * (1 + 0.1 * (i % 3))
        cumulative = 1e-12 if retrained else cumulative + b
        records.append({"step": i, "indices": [100 + i], "n_removed": i, "bound": b,
                        "cumulative": cumulative, "budget_left": 0.25 - cumulative,
                        "retrained": retrained, "seconds": 0.2 if retrained else 1e-3})
    return records


def synthetic_result(records=None):
    records = synthetic_records() if records is None else records
    return {
        "config": {"dataset": "digits", "train_mode": "binary", "lam": 0.01, "std": 1.0,
                   "gamma": "paper", "solver": "auto", "device": "cpu", "batch": 0,
                   "seed": 3, "extractor": "none"},
        "data": {"dataset": "digits", "train_mode": "binary", "classes": ["3", "8"],
                 "n_train": 285, "n_test": 72, "n_features": 64, "extractor": "none"},
        "training": {"seconds": 0.05, "residual": 3.2e-12, "train_accuracy": 0.9719,
                     "test_accuracy": 0.9722},
        "final": {"test_accuracy": 0.9583, "retrained_test_accuracy": 0.9722},
        "records": records,
        "evaluations": [{"n_removed": i, "test_accuracy": 0.97 - 0.001 * i} for i in (0, 10, 30)],
        "privacy": {"epsilon": 1.0, "delta": 1e-4, "c": 4.3854, "budget": 0.228,
                    "training_residual": 3.2e-12, "removals": len(records), "retrains": 2,
                    "removals_supported": 11, "removals_supported_is_estimate": False,
                    "mean_bound": 0.0213, "worst_case_bound": 35.21, "budget_used": 0.1,
                    "budget_left": 0.128, "stopped_early": False, "stop_reason": None,
                    "extractor": {"name": "dp_x", "private": True, "epsilon": 0.1,
                                  "delta": 1e-5, "composed": {"removals": 30, "epsilon": 4.0,
                                                              "delta": 0.5}}},
        "fairness": {
            "before": {"per_class": {"3": 0.973, "8": 0.9714}, "worst_class": "8",
                       "worst_accuracy": 0.9714, "largest_gap": 0.0016},
            "after": {"per_class": {"3": 0.9459, "8": 0.9714}, "worst_class": "3",
                      "worst_accuracy": 0.9459, "largest_gap": 0.0255},
        },
        "timings": {"fit_seconds": 0.05, "retrain_seconds": 0.04,
                    "removal_seconds_median": 0.001, "removal_seconds_mean": 0.014,
                    "removals_per_second": 70.0, "speedup": 40.0},
    }


# ---- plots ------------------------------------------------------------------------------


def test_bounds_plot_is_a_png(tmp_path):
    out = plot_bounds(synthetic_records(), 0.228, tmp_path / "sub" / "bounds.png",
                      worst_case=35.2, title="t")
    assert out == tmp_path / "sub" / "bounds.png"
    assert_valid_png(out)


def test_accuracy_and_time_plots_are_pngs(tmp_path):
    result = synthetic_result()
    assert_valid_png(plot_accuracy(result["evaluations"], tmp_path / "acc.png", retrains=[12]))
    assert_valid_png(plot_times(result["records"], 0.04, tmp_path / "time.png"))
    assert_valid_png(plot_times(result["records"], None, tmp_path / "time2.png"))


def test_plots_accept_record_objects_and_empty_runs(tmp_path):
    @dataclass
    class Rec:
        n_removed: int
        bound: float
        cumulative: float
        retrained: bool
        seconds: float

    recs = [Rec(1, 0.01, 0.01, False, 1e-3), Rec(2, 0.0, 1e-13, True, 0.1)]
    assert_valid_png(plot_bounds(recs, 1.0, tmp_path / "a.png"))
    assert_valid_png(plot_times(recs, 0.5, tmp_path / "b.png"))
    # no removal at all: still a figure (budget line, axes)
    for path in (plot_bounds([], 1.0, tmp_path / "c.png"),
                 plot_times([], None, tmp_path / "d.png"),
                 plot_accuracy([], tmp_path / "e.png")):
        assert png_size(path)[0] > 100


@pytest.mark.parametrize("budget", [-1.0, math.inf, math.nan])
def test_bounds_plot_rejects_a_bad_budget(tmp_path, budget):
    with pytest.raises(ValueError, match="'budget'"):
        plot_bounds(synthetic_records(), budget, tmp_path / "x.png")


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.rcParams["backend"]
    plot_bounds(synthetic_records(), 0.2, tmp_path / "x.png")
    assert matplotlib.rcParams["backend"] == before


# ---- markdown ---------------------------------------------------------------------------


def test_markdown_reports_privacy_fairness_and_timings():
    text = render_markdown(synthetic_result())
    assert text.startswith("# Certified removal: digits binary")
    for needle in ("## Privacy", "## Fairness", "## Timings", "## Removals", "| epsilon | 1 |",
                   "| delta | 0.0001 |", "| budget sigma * epsilon / c | 0.228 |",
                   "| removals supported by one budget | 11 |", "| automatic retrains | 2 |",
                   "| 3 | 97.30 % | 94.59 % |", "| after removals | 3 | 94.59 % | 2.55 % |",
                   "40.0x", "Automatic retrains at removal(s) 12, 25.",
                   "| feature extractor dp_x (DP) | (0.1, 1e-05) |",
                   "| extractor + head after 30 removals (epsilon, delta) | (4, 0.5) |"):
        assert needle in text, needle


def test_markdown_warns_about_a_non_private_extractor():
    result = synthetic_result()
    result["privacy"]["extractor"] = {"name": "standard_small_cnn", "private": False,
                                      "note": "not private"}
    assert "| feature extractor standard_small_cnn | not private |" in render_markdown(result)


def test_markdown_tables_are_well_formed():
    text = render_markdown(synthetic_result())
    table = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:  # every row of a table has the header's number of cells
            widths = {row.count("|") for row in table}
            assert len(widths) == 1, table
            assert set(table[1].replace("|", "")) == {"-"}
            table = []


def test_markdown_shortens_long_removal_tables():
    text = render_markdown(synthetic_result(synthetic_records(count=40, retrain_at=())))
    assert "| 10 | 110 |" in text and "| 36 | 136 |" in text and "| 20 | 120 |" not in text
    assert "| ... |" in text


def test_markdown_embeds_plots_relative_to_the_report(tmp_path):
    result = synthetic_result()
    plots = {"bounds_plot": str(tmp_path / "out" / "b.png"),
             "time_plot": str(tmp_path / "out" / "t.png")}
    path = write_markdown(result, tmp_path / "out" / "report.md", plots=plots)
    text = path.read_text()
    assert "](b.png)" in text and "](t.png)" in text and "accuracy" not in text.split(
        "## Plots")[1]


def test_markdown_of_a_partial_result():
    text = render_markdown({"records": [], "privacy": {"epsilon": 2.0, "removals_supported": 7,
                                                       "removals_supported_is_estimate": True}})
    assert "No removal was made." in text
    assert "~7 (projected" in text
    assert "## Fairness" not in text and "## Plots" not in text


def test_format_value():
    assert format_value(None) == "-" and format_value(math.nan) == "-"
    assert format_value(True) == "yes" and format_value(3) == "3"
    assert format_value(0.000123456) == "0.0001235"
    assert format_value([1, 2.5]) == "1, 2.5" and format_value(math.inf) == "inf"
