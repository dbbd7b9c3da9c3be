"""Regression tests of the December 2 audit of ``fastunlearn.report``.

- The plots take "the records / evaluations lists of an ExperimentResult or of its JSON
  file", but the JSON file stores non-finite floats as ``"inf"``, ``"-inf"`` and ``"nan"``
  (``fastunlearn._json_data``): every plot raised a TypeError on them.
- ``fastunlearn html a.md a.markdown`` wrote both pages to ``a.html``: the second silently
  replaced the first (and "wrote a.html" was printed twice).
"""

import json
import math

import matplotlib.axes
import pytest

from fastunlearn._json_data import json_ready
from fastunlearn.report import plot_accuracy, plot_bounds, plot_times
from fastunlearn.report.cli import main

RECORDS = [
    {"n_removed": 1, "bound": 1e-3, "cumulative": 1e-3, "retrained": False, "seconds": 0.01,
     "worst_case": math.inf},
    {"n_removed": 2, "bound": math.inf, "cumulative": math.nan, "retrained": True,
     "seconds": 0.5},
    {"n_removed": 3, "bound": 2e-3, "cumulative": 3e-3, "retrained": False, "seconds": 0.02},
]


def _reloaded(value):
    return json.loads(json.dumps(json_ready(value), allow_nan=False))


@pytest.fixture
def notes(monkeypatch):
    """The texts written on the axes (the plots' notes of what they could not draw)."""
    seen = []
    original = matplotlib.axes.Axes.text

    def spy(self, *args, **kwargs):
        seen.append(args[2])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", spy)
    return seen


def test_plots_read_records_reloaded_from_the_json_file(tmp_path, notes):
    reloaded = _reloaded(RECORDS)
    assert reloaded[1]["bound"] == "inf" and reloaded[1]["cumulative"] == "nan"
    plot_bounds(RECORDS, 1.0, tmp_path / "a.png")
    plot_bounds(reloaded, 1.0, tmp_path / "b.png")
    assert len(notes) == 2 and notes[0] == notes[1] and "infinite bound" in notes[0]
    notes.clear()
    assert plot_times(reloaded, "inf", tmp_path / "t.png").is_file()
    assert notes == ["full retraining inf s (not drawn)"]
    evaluations = _reloaded([{"n_removed": 0, "test_accuracy": 0.9},
                             {"n_removed": 1, "test_accuracy": math.nan}])
    assert evaluations[1]["test_accuracy"] == "nan"
    assert plot_accuracy(evaluations, tmp_path / "acc.png").is_file()


def test_plots_still_refuse_other_strings(tmp_path):
    with pytest.raises(TypeError, match="'records': expected a number or None"):
        plot_times([{"seconds": "0.5"}], None, tmp_path / "t.png")


def test_html_refuses_two_reports_that_would_share_one_page(tmp_path, capsys):
    first, second = tmp_path / "a.md", tmp_path / "a.markdown"
    first.write_text("# First\n", encoding="utf-8")
    second.write_text("# Second\n", encoding="utf-8")
    assert main([str(first), str(second)]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "a.html").exists()  # checked before anything is written
    assert main([str(first)]) == 0 and main([str(first), str(first)]) == 0
    assert "<title>First</title>" in (tmp_path / "a.html").read_text(encoding="utf-8")
