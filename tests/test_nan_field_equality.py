"""Result records with a NaN field compare the same way on every supported Python.

Python 3.13's generated dataclass ``__eq__`` compares fields one by one instead of as
tuples, so a record holding a NaN (a removal whose bound came out NaN and retrained, an
exposure that could not be fitted) became unequal to itself and to its ``deepcopy``; the
records use :func:`fastunlearn._equality.dataclass_eq`, which keeps the tuple semantics
(the same object is equal) on 3.10 - 3.13.
"""

from __future__ import annotations

import copy
import math

import pytest

from fastunlearn.certified.extractors import ComposedPrivacy
from fastunlearn.certified.records import RemovalRecord
from fastunlearn.exposure.experiment import ExposureMeasurement
from fastunlearn.exposure.exposure import SkewNormalFit

NAN = float("nan")


def _measurement(exposure: float) -> ExposureMeasurement:
    fit = SkewNormalFit(a=-3.9, loc=40.0, scale=3.5, n=999)
    return ExposureMeasurement("042", 0.5, 1, exposure, NAN, 9.97, 1000, 999, True, fit)


@pytest.mark.parametrize("make", [
    lambda bound: RemovalRecord((4,), bound, 0.1, 0.2, True, 0.01, 1.0),
    lambda value: ComposedPrivacy(value, 1e-5, 3, 0.5, 1e-6),
    _measurement,
], ids=["RemovalRecord", "ComposedPrivacy", "ExposureMeasurement"])
def test_a_nan_field_is_equal_to_itself_and_its_deepcopy(make):
    record = make(NAN)
    twin = copy.deepcopy(record)
    assert record == record and record == twin and not record != twin  # noqa: PLR0124
    assert record != make(1.0) and make(1.0) == make(1.0)
    assert math.isnan(getattr(twin, [f for f in ("bound", "epsilon", "rank_exposure")
                                     if hasattr(twin, f)][0]))


def test_frozen_records_stay_hashable():
    record = RemovalRecord((4,), NAN, 0.1, 0.2, True, 0.01, 1.0)
    assert hash(record) == hash(copy.deepcopy(record))
    assert len({ComposedPrivacy(1.0, 1e-5, 3, 0.5, 1e-6),
                ComposedPrivacy(1.0, 1e-5, 3, 0.5, 1e-6)}) == 1
