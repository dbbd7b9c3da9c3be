"""Regression tests of the metrics audit (December 2): evaluation of a logits folder whose
metrics.csv misses values or records a zero retrained accuracy, errors naming the set, and
the forget_set.txt reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastunlearn.metrics import (
    accuracy_report,
    evaluate_logits_dir,
    load_logits_dir,
    svc_mia_efficacy,
    write_logits_dir,
)

S, N, C = 6, 4, 3


def _logits_dir(tmp_path: Path, method_cols: dict, retrain_cols: dict) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "logits"
    write_logits_dir(folder, torch.tensor(rng.normal(size=(S, N, C))),
                     torch.tensor(rng.integers(0, C, S)),
                     {"m": torch.tensor(rng.normal(size=(S, N, C)))}, {"m": method_cols},
                     retrain_metrics=retrain_cols)
    return folder


def _blank_cells(csv_path: Path, row: int, columns: tuple[str, ...]) -> None:
    """Empty the given columns of data row ``row`` (a value that was not recorded)."""
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    for col in columns:
        cells[header.index(col)] = ""
    lines[row + 1] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")


def test_evaluate_means_a_metrics_csv_over_its_recorded_values(tmp_path: Path) -> None:
    # one model's retain accuracy and wall time not recorded: the NaN cell made the time
    # ratio raise ValueError("'seconds' must be finite ...") and stopped the evaluation of
    # the whole folder (and the final score came out NaN)
    folder = _logits_dir(
        tmp_path,
        {"retain_accuracy": [0.9, 0.5, 0.8, 0.7], "test_accuracy": [0.7] * 4,
         "wall_time_s": [1.0, 9.0, 2.0, 3.0]},
        {"retain_accuracy": [0.95] * 4, "test_accuracy": [0.8] * 4,
         "wall_time_s": [10.0, 10.0, 10.0, float("nan")]})
    _blank_cells(folder / "m" / "metrics.csv", 1, ("retain_accuracy", "wall_time_s"))
    result = evaluate_logits_dir(folder, baseline=False, per_example=False)
    entry = result["methods"]["m"]
    assert "error" not in entry
    assert entry["csv"]["retain_accuracy"] == pytest.approx(0.8)  # (0.9 + 0.8 + 0.7) / 3
    assert entry["csv"]["wall_time_s"] == pytest.approx(2.0)
    assert result["retrain"]["csv"]["wall_time_s"] == pytest.approx(10.0)
    assert entry["time_ratio"] == pytest.approx(0.2)
    expected = entry["competition_forget_score"] * (0.8 / 0.95) * (0.7 / 0.8)
    assert entry["competition_final_score"] == pytest.approx(expected)


def test_evaluate_skips_the_time_ratio_of_a_negative_wall_time(tmp_path: Path) -> None:
    folder = _logits_dir(tmp_path, {"wall_time_s": [-1.0] * 4},
                         {"wall_time_s": [10.0] * 4})
    entry = evaluate_logits_dir(folder, baseline=False, per_example=False)["methods"]["m"]
    assert "time_ratio" not in entry and "epsilon_hat" in entry


def test_evaluate_keeps_the_privacy_scores_when_a_retrained_accuracy_is_zero(
        tmp_path: Path) -> None:
    # the retrained test accuracy 0 made final_score raise; the method's entry became that
    # error and its epsilon-hat and forget score F were lost
    folder = _logits_dir(tmp_path, {"retain_accuracy": [0.9] * 4, "test_accuracy": [0.7] * 4},
                         {"retain_accuracy": [0.95] * 4, "test_accuracy": [0.0] * 4})
    entry = evaluate_logits_dir(folder, baseline=False, per_example=False)["methods"]["m"]
    assert "error" not in entry
    assert math.isfinite(entry["epsilon_hat"])
    assert 0.0 <= entry["competition_forget_score"] <= 1.0
    assert math.isnan(entry["competition_final_score"])
    assert "(metrics.csv) mean test accuracy is 0" in entry["privacy_note"]


def test_svc_mia_and_accuracy_report_errors_name_the_set() -> None:
    z = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    bad = torch.tensor([0, 1, 7, 0, 1])
    with pytest.raises(ValueError, match="^'test': 'labels' has labels outside"):
        svc_mia_efficacy((z, y), (z, bad), (z, y))
    with pytest.raises(ValueError, match="^'forget': 'logits' has non-finite"):
        svc_mia_efficacy((z, y), (z, y), (torch.full((5, 3), math.nan), y))
    with pytest.raises(TypeError, match="^'retain': 'labels' must be integer"):
        svc_mia_efficacy((z, y.float()), (z, y), (z, y))
    with pytest.raises(ValueError, match="^'test': 'labels' has labels outside"):
        accuracy_report(forget=(z, y), test=(z, bad))
    with pytest.raises(ValueError, match="^'retain': 'logits' has no examples"):
        accuracy_report(retain=(z[:0], y[:0]))


def test_forget_set_txt_separated_by_spaces_and_a_bad_entry(tmp_path: Path) -> None:
    folder = _logits_dir(tmp_path, {}, {})
    (folder / "forget_set.txt").write_text("4 8\n15,16, 23\n")
    assert load_logits_dir(folder).forget_set == [4, 8, 15, 16, 23]
    # numpy.savetxt's default format: int() failed with a message naming neither the file
    # nor the entry
    (folder / "forget_set.txt").write_text("4.000000000000000000e+00\n")
    with pytest.raises(ValueError, match=r"forget_set\.txt: '4\.0+e\+00' is not an integer"):
        load_logits_dir(folder)
