"""load_digits_dataset: flags, types and test fractions that leave a class out."""

from __future__ import annotations

import pytest

from fastunlearn.data import load_digits_dataset


@pytest.mark.parametrize("value", ["no", 0, None])
def test_normalize_must_be_a_bool(value):
    with pytest.raises(TypeError, match="'normalize' must be a bool"):
        load_digits_dataset(normalize=value)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"binary": (True, 8)}, "binary"), ({"binary": (3, False)}, "binary"),
    ({"binary": "38"}, "binary"), ({"binary": 38}, "binary"),
    ({"test_fraction": True}, "test_fraction"), ({"test_fraction": None}, "test_fraction"),
])
def test_wrong_types_are_type_errors(kwargs, name):
    with pytest.raises(TypeError, match=f"'{name}'"):
        load_digits_dataset(**kwargs)


@pytest.mark.parametrize("fraction", [0.001, 0.002, 0.998, 0.999])
@pytest.mark.parametrize("binary", [None, (3, 8)])
def test_fractions_leaving_a_class_without_rows_are_refused(fraction, binary):
    """Old: the per-class count was clamped to 1 .. n-1 (0.001 gave 10 test rows)."""
    with pytest.raises(ValueError, match=r"'test_fraction'.*smallest class here has 1\d\d "
                                         r"rows.*about \(0\.00\d+, 0\.99\d+\)"):
        load_digits_dataset(test_fraction=fraction, binary=binary)


def test_the_extreme_valid_fractions_keep_one_row_per_class_on_each_side():
    low = load_digits_dataset(test_fraction=0.003)
    assert low.y_test.tolist().count(8) == 1 and len(set(low.y_test.tolist())) == 10
    high = load_digits_dataset(test_fraction=0.997)
    assert sorted(high.y_train.tolist()) == list(range(10))
