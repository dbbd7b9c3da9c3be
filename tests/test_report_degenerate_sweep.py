"""Degenerate results through the plot and report writers (one test per defect fixed).

Edge cases of real runs: infinite or huge (1e300) values on log axes, a retraining time of
0 s, a NaN or missing accuracy, a method whose name holds ``|``, an empty error message,
a greedy completion holding ``|`` or a line break, NaN inside tensors of a result.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402

from fastunlearn.harness import report as harness_report  # noqa: E402
from fastunlearn.influence import canary as canary_mod  # noqa: E402
from fastunlearn.influence import experiment as repair_mod  # noqa: E402
from fastunlearn.influence import feature_experiment as feature_mod  # noqa: E402
from fastunlearn.report import plots as report_plots  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _strict_json(path: str | Path) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _png(path: str | Path) -> None:
    assert mpimg.imread(str(path)).size > 0


def _cells(row: str) -> int:
    """Cells of a Markdown table row (an escaped ``\\|`` does not split)."""
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def _capture(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list:
    """Record every figure ``module.name(fig, path)`` saves."""
    figures: list = []
    save = getattr(module, name)

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(module, name, keep)
    return figures


def _texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts)


def _rec(n: int, bound: float, cumulative: float, seconds: float = 0.01) -> dict:
    return {"n_removed": n, "bound": bound, "cumulative": cumulative, "retrained": False,
            "seconds": seconds}


# ---- fastunlearn.report.plots -------------------------------------------------------------


def test_bounds_plot_draws_1e300_next_to_1e_300(tmp_path: Path) -> None:
    # old: RuntimeWarning "overflow encountered in exp" from the log autoscale (an error
    # under -W error)
    recs = [_rec(1, 1e300, 1e300), _rec(2, 1e-300, 1e-300)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _png(report_plots.plot_bounds(recs, 0.5, tmp_path / "b.png"))


def test_times_plot_draws_1e300_seconds(tmp_path: Path) -> None:
    # old: RuntimeWarning "overflow encountered in exp" from the log autoscale
    recs = [_rec(1, 0.1, 0.1, seconds=1e300), _rec(2, 0.1, 0.2, seconds=1e-300)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _png(report_plots.plot_times(recs, 0.5, tmp_path / "t.png"))


def test_bounds_plot_names_an_infinite_bound(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # old: the infinite cumulative bound and bound were dropped without a word
    figures = _capture(monkeypatch, report_plots, "_save")
    recs = [_rec(1, 0.1, 0.1), _rec(2, math.inf, math.inf)]
    _png(report_plots.plot_bounds(recs, 0.5, tmp_path / "b.png"))
    assert "infinite cumulative bound" in _texts(figures[0])
    assert "infinite bound" in _texts(figures[0])


def test_times_plot_says_a_retraining_of_0_s(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # old: a retraining time of 0 s (or inf) had no line and no word on the figure
    figures = _capture(monkeypatch, report_plots, "_save")
    _png(report_plots.plot_times([_rec(1, 0.1, 0.1)], 0.0, tmp_path / "t.png"))
    assert "full retraining 0 s (not drawn)" in _texts(figures[0])


# ---- fastunlearn.harness.report ------------------------------------------------------------


def _scores(**kw: object) -> dict:
    out = {"unlearning_accuracy": 0.5, "retain_accuracy": 0.9, "test_accuracy": 0.8,
           "mia_efficacy": 0.4, "forget_accuracy": 0.5, "seconds": 1.0}
    out.update(kw)
    return out


def _harness_result(**method: object) -> dict:
    entry = {**_scores(), "status": "ok", "num_ok": 1, "time_ratio": 1.0, "avg_gap": 0.0,
             "runs": [{"seed": 0, "status": "ok", **_scores()}]}
    entry.update(method)
    return {
        "config": {"model": "mlp", "forget": "class:3", "seeds": 1, "oracles": 1},
        "data": {"dataset": "digits", "num_train": 10, "num_test": 5, "num_classes": 2,
                 "num_forget": 2, "num_retain": 8, "test_classes_dropped": [],
                 "forget_indices": [0, 1]},
        "original": _scores(),
        "oracles": {**_scores(), "per_model": [_scores()], "seconds": [1.0],
                    "mean_seconds": 1.0},
        "methods": {"a|b": entry},
        "timing": {"total_seconds": 2.0},
        "cache": {"hits": 0, "misses": 1},
    }


def test_harness_table_escapes_a_bar_in_a_method_name() -> None:
    # old: "| a|b | ok | ..." had 14 cells in a 13-column table
    text = harness_report.render_table(_harness_result())
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {_cells(row) for row in rows} == {13}
    assert "| a\\|b |" in text


def test_harness_table_takes_an_empty_error_message() -> None:
    # old: IndexError from "".splitlines()[0]
    result = _harness_result()
    result["methods"]["bad"] = {"status": "error", "num_ok": 0, "error": "",
                                "runs": [{"seed": 0, "status": "error", "error": ""}]}
    text = harness_report.render_table(result)
    assert "- `bad`: -" in text


def test_harness_table_writes_1e300_seconds_in_short_form() -> None:
    # old: a 300-digit fixed-point cell ("1000000000000000052504760255204420248704...")
    text = harness_report.render_table(_harness_result(seconds=1e300))
    assert "| 1e+300 |" in text
    assert "0000000000" not in text


def test_harness_oracle_ratio_is_unknown_for_a_retraining_of_0_s() -> None:
    # old: the oracles' row showed ratio 1.000 for 0 s / 0 s
    result = _harness_result()
    result["oracles"]["mean_seconds"] = 0.0
    row = next(line for line in harness_report.render_table(result).splitlines()
               if line.startswith("| retrain (oracles)"))
    assert row.endswith("| 0.00 | - |")


def test_harness_outputs_take_missing_and_infinite_values(tmp_path: Path) -> None:
    # old: TypeError float(None) in plot_accuracies; RuntimeWarning "invalid value
    # encountered in dot" for an infinite bar or retraining line
    result = _harness_result(test_accuracy=None, seconds=math.inf)
    result["oracles"]["mean_seconds"] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        paths = harness_report.write_outputs(result, tmp_path / "out")
    for key in ("accuracy", "time"):
        _png(paths[key])
    data = _strict_json(paths["json"])
    assert data["oracles"]["mean_seconds"] == "nan"  # the module's convention: strings
    assert "(mean - s each)" in Path(paths["markdown"]).read_text()


# ---- fastunlearn.influence (repair, features, canary) -----------------------------------


def _repair_result(speedup: float, steps: list | None = None) -> dict:
    return {
        "config": {"model": "mlp", "seed": 0, "order": 1},
        "data": {"dataset": "digits", "flipped": 3, "n_train": 30, "updated_params": 10,
                 "num_params": 10},
        "training": {"acc_clean": 0.9, "retrain_seconds": 0.0, "acc_poisoned": 0.7,
                     "poisoned_train_seconds": 0.1, "residual_poisoned": 1.0},
        "protocols": {"one-shot": {"acc_after": 0.8, "restored": 0.5, "residual": 0.1,
                                   "seconds": 0.0, "speedup_vs_retrain": speedup,
                                   "num_gradients": 1, "num_hvps": 0, "any_diverged": False,
                                   "steps": steps or []}},
    }


def test_repair_report_has_no_dash_x_for_an_unknown_speedup() -> None:
    # old: "| -x |" for a repair time of 0 s (speed-up NaN) and "| infx |" for inf
    for speedup in (math.nan, math.inf):
        text = repair_mod.render_report(_repair_result(speedup))
        assert "-x |" not in text and "infx" not in text
    assert "| 2.5x |" in repair_mod.render_report(_repair_result(2.5))


def test_repair_json_is_strict_with_nan_inside_a_tensor(tmp_path: Path) -> None:
    # old: a tensor's NaN went through .tolist() unconverted: a NaN token in the JSON
    steps = [{"step": 1, "batch": 3, "eval": 0.8, "delta": torch.tensor([1.0, math.nan]),
              "reason": "a|b"}]
    files = repair_mod.write_outputs(_repair_result(1.0, steps), tmp_path, plots=False)
    data = _strict_json(files["json"])
    assert data["protocols"]["one-shot"]["steps"][0]["delta"] == [1.0, "nan"]
    row = next(line for line in Path(files["markdown"]).read_text().splitlines()
               if line.startswith("| 1 |"))
    assert _cells(row) == 8  # the reason's "|" escaped


def _feature_result(first_residual: object, second_residual: object,
                    speedup: object) -> dict:
    update = {"num_gradients": 1, "num_hvps": 0, "solver_iterations": 0, "tau": 0.1,
              "applied": True}
    method = {"residual": first_residual, "distance_retrained": 0.1, "acc": 0.9,
              "seconds": 0.0, "speedup_vs_retrain": speedup, "update": update}
    return {
        "config": {"mode": "remove", "value": 0.0, "n_rows": 0, "l2": 1e-3, "steps": 1},
        "data": {"dataset": "digits", "column_names": ["c0"], "num_params": 10,
                 "n_train": 30, "n_features": 4, "num_classes": 2, "columns": [0],
                 "num_affected": 3},
        "original": {"residual": 1.0, "distance_retrained": 1.0, "acc": 0.9, "seconds": 0.1},
        "retrained": {"residual": 1e-9, "distance_retrained": 0.0, "acc": 0.9,
                      "seconds": 0.1},
        "methods": {"first_order": method,
                    "second_order": {**method, "residual": second_residual}},
    }


def test_feature_report_has_no_dash_x_for_an_unknown_speedup() -> None:
    # old: "| first-order | -x |" when the update took 0 s (speed-up NaN, stored as None)
    text = feature_mod.render_feature_report(_feature_result(0.1, 0.1, None))
    assert "-x |" not in text
    assert "| first-order | - |" in text


def test_feature_plot_does_not_draw_a_missing_residual_as_1e_16(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # old: a None (NaN or inf) residual was drawn as a 1e-16 bar, and a 1e300 one raised
    # RuntimeWarning "overflow encountered in exp" in the log autoscale
    figures = _capture(monkeypatch, feature_mod, "_save_png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _png(feature_mod._plot(_feature_result(None, 1e300, 1.0), tmp_path / "f.png"))
    ax = figures[0].axes[0]
    heights = [patch.get_height() for patch in ax.patches]
    assert math.isnan(heights[1])  # first order: not drawn
    assert "n/a" in _texts(figures[0]) and "(cut)" in _texts(figures[0])


def test_canary_table_keeps_a_completion_with_a_bar_and_a_line_break() -> None:
    # old: a completion "1|2\n3" split its cell and ended the table row
    def measured(completion: str) -> dict:
        return {"log_perplexity": 1.0, "rank": 1, "rank_exposure": 2.0,
                "skew_normal_exposure": 2.0, "completion": completion}

    result = {"config": {"order": 1, "seq_len": 8}, "secret": "123", "replacement": "456",
              "num_canaries": 1, "num_affected": 2,
              "update": {"tau": 0.1, "applied": True, "num_gradients": 1, "num_hvps": 0,
                         "solver_iterations": 0},
              "before": {**measured("1|2\n3"), "max_exposure": 9.97},
              "after": measured("a`b"), "update_seconds": 0.1}
    text = canary_mod.render_canary_report(result)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 4 and {_cells(row) for row in rows} == {7}
    assert "`1\\|2\\n3`" in text and "`` a`b ``" in text


def _evaluation(per_example: list, name: str = "fine|tune") -> dict:
    method = {"forget_accuracy": 0.5, "epsilon_hat": math.inf,
              "per_example": {"epsilon": per_example},
              "error": "Traceback (most recent call last):\n  File x\nValueError: boom"}
    return {"path": "logits", "num_examples": 3, "num_models": 4, "num_classes": 10,
            "delta": 0.05, "competition_delta": 0.01, "methods": {name: method}}


def test_evaluation_markdown_escapes_names_and_keeps_notes_to_one_line():
    # old: a '|' in a method name split its row into an extra cell; a traceback in an
    # error note ran over several lines of the list
    from fastunlearn.metrics.report import render_evaluation_markdown

    md = render_evaluation_markdown(_evaluation([1.0]))
    rows = [line for line in md.splitlines() if line.startswith("| fine")]
    assert len(rows) == 1
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    cells = re.split(r"(?<!\\)\|", rows[0])
    assert len(cells) == len(header.split("|"))
    notes = [line for line in md.splitlines() if line.startswith("- `fine")]
    assert notes == ["- `fine\\|tune`: Traceback (most recent call last): ..."]


def test_epsilon_histogram_reads_reloaded_results_and_names_all_infinite_methods(tmp_path):
    # old: TypeError from math.isfinite on the "inf"/"nan" strings of a reloaded
    # evaluation.json (or None), and a method with only infinite epsilons left no trace
    from fastunlearn.metrics.report import json_ready, plot_epsilon_histogram

    result = json.loads(json.dumps(json_ready(_evaluation([math.inf, math.inf, math.nan]))))
    assert result["methods"]["fine|tune"]["per_example"]["epsilon"] == ["inf", "inf", "nan"]
    result["methods"]["other"] = {"epsilon_hat": 1.0,
                                  "per_example": {"epsilon": [0.5, None, "1.5", 2.0]}}
    seen = []
    original = matplotlib.axes.Axes.text

    def spy(self, *args, **kwargs):
        seen.append(args[2])
        return original(self, *args, **kwargs)

    matplotlib.axes.Axes.text = spy
    try:
        path = plot_epsilon_histogram(result, tmp_path / "eps.png")
    finally:
        matplotlib.axes.Axes.text = original
    _png(path)
    assert seen == ["fine|tune: no finite epsilon (2 inf, 1 nan)"]


@pytest.mark.parametrize(("value", "text"), [(10**400, "1.000e+400"),
                                             (-(10**20) - 1, "-1.000e+20"),
                                             (123456789012345, "123456789012345")])
def test_format_value_writes_huge_ints_in_scientific_notation(value, text):
    # old: 10**400 filled the cell with 401 digits
    from fastunlearn.report.markdown import format_value

    assert format_value(value) == text
