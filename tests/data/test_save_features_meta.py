"""``save_features``' ``meta``: a mapping, written as strict JSON (found by an API probe: a
list of pairs was taken through ``dict()``, and NaN was written as the token ``NaN``)."""

import json
import math

import pytest
import torch

from fastunlearn.data.vision import load_features, save_features


def _data():
    return torch.randn(4, 3), torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("meta", [[("a", 1)], "extractor=dp", 3])
def test_meta_that_is_not_a_mapping_is_refused_and_nothing_written(tmp_path, meta):
    X, y = _data()
    with pytest.raises(TypeError, match="'meta' must be a mapping or None"):
        save_features(tmp_path / "f.safetensors", X, y, meta)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_meta_is_written_as_strings_read_back_by_float(tmp_path):
    X, y = _data()
    path = save_features(tmp_path / "f.safetensors", X, y,
                         {"epsilon": math.inf, "delta": math.nan, "note": "dp"})
    meta = load_features(path)[2]
    assert meta == {"delta": "nan", "epsilon": "inf", "note": "dp"}
    assert float(meta["epsilon"]) == math.inf and math.isnan(float(meta["delta"]))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        json.loads(f.metadata()["meta"], parse_constant=lambda token: pytest.fail(token))
