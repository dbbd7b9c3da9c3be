"""Every JSON result writes non-finite numbers the same way: ``"inf"``, ``"-inf"``, ``"nan"``.

Before, ``remove``, ``repair``, ``unlearn-features``, ``exposure`` and the canary
experiment wrote ``null`` for them (so an infinite epsilon, no privacy at all, read like a
value never computed) while ``evaluate`` and ``forget`` wrote the strings: one helper,
:func:`fastunlearn._json_data.json_ready`, now serves them all. ``None`` stays ``null``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fastunlearn._json_data import NON_FINITE_STRINGS, json_ready
from fastunlearn.cli import main
from fastunlearn.metrics import report as metrics_report
from fastunlearn.report import format_value


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_strings_that_float_reads_back():
    value = {"inf": math.inf, "neg": -math.inf, "nan": math.nan, "one": 1.5, "none": None}
    ready = json_ready(value)
    assert ready == {"inf": "inf", "neg": "-inf", "nan": "nan", "one": 1.5, "none": None}
    assert [float(ready[k]) for k in ("inf", "neg")] == [math.inf, -math.inf]
    assert math.isnan(float(ready["nan"]))
    assert tuple(sorted(NON_FINITE_STRINGS)) == ("-inf", "inf", "nan")
    json.dumps(ready, allow_nan=False)


def test_tensors_arrays_and_numpy_scalars_become_plain_json():
    value = {1: torch.tensor([1.0, math.inf]), "a": np.array([[math.nan, 2.0]]),
             "f32": np.float32(math.inf), "f64": np.float64(-math.inf), "i": np.int64(7),
             "b": np.bool_(True), "t": (torch.tensor(3), "x")}
    ready = json_ready(value)
    assert ready == {"1": [1.0, "inf"], "a": [["nan", 2.0]], "f32": "inf", "f64": "-inf",
                     "i": 7, "b": True, "t": [3, "x"]}
    assert type(ready["i"]) is int and type(ready["b"]) is bool
    json.dumps(ready, allow_nan=False)


def test_the_input_is_not_changed():
    value = {"x": [math.inf, {"y": math.nan}]}
    json_ready(value)
    assert value["x"][0] == math.inf and math.isnan(value["x"][1]["y"])


def test_the_metrics_module_keeps_its_public_name():
    assert metrics_report.json_ready is json_ready


@pytest.mark.parametrize(("value", "text"), [("inf", "inf"), ("-inf", "-inf"), ("nan", "-"),
                                             (math.nan, "-"), (None, "-"), ("other", "other")])
def test_reports_read_the_strings_as_the_floats(value, text):
    assert format_value(value) == text


def test_remove_with_no_noise_writes_an_infinite_epsilon_as_inf(tmp_path, capsys):
    # --std 0: no budget, every removal retrains and the training residual (> 0) alone
    # spends an infinite epsilon; no removal ran without a retrain, so no median time
    with pytest.warns(UserWarning, match="every removal will retrain"):
        assert main(["remove", "--std", "0", "--num-removes", "2", "--no-plots",
                     "--no-progress", "--out", str(tmp_path), "--json"]) == 0
    document = _strict(capsys.readouterr().out)
    (written,) = tmp_path.glob("*.json")
    assert _strict(written.read_text()) == document
    assert document["privacy"]["epsilon_spent"] == "inf"
    assert document["timings"]["removal_seconds_median"] is None  # not measured: null
