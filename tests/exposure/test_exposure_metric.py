"""Exposure metric: rank by hand, skew-normal against rank on large samples, errors."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import skewnorm

from fastunlearn.exposure import (
    exposure_from_rank,
    fit_skew_normal,
    rank_exposure,
    skew_normal_exposure,
)


def test_lowest_canary_has_log2_n():
    rng = np.random.default_rng(0)
    for n in (2, 10, 1000, 4096):
        candidates = rng.normal(50.0, 5.0, size=n - 1)
        canary = candidates.min() - 0.5
        assert rank_exposure(canary, candidates) == pytest.approx(math.log2(n), abs=1e-12)


def test_rank_by_hand():
    candidates = [5.0, 1.0, 3.0, 8.0, 2.0, 9.0, 7.0]  # |R| = 8
    # 2.5: below it 1, 2 -> rank 3 -> 3 - log2 3
    assert rank_exposure(2.5, candidates) == pytest.approx(3 - math.log2(3))
    # a tie counts against the canary: 3.0 ranks behind 1, 2, 3 -> rank 4 -> 1 bit
    assert rank_exposure(3.0, candidates) == pytest.approx(1.0)
    # highest: rank 8 -> 0 bits
    assert rank_exposure(100.0, candidates) == 0.0
    many = rank_exposure(np.array([0.0, 2.5, 100.0]), torch.tensor(candidates))
    np.testing.assert_allclose(many, [3.0, 3 - math.log2(3), 0.0])
    assert exposure_from_rank(4, 8) == 1.0
    assert rank_exposure(np.float32(2.5), candidates) == pytest.approx(3 - math.log2(3))
    assert rank_exposure(torch.tensor(2.5), candidates) == pytest.approx(3 - math.log2(3))


@pytest.mark.parametrize("quantile", [1 / 16, 1 / 128, 1 / 1024])
def test_skew_normal_agrees_with_rank_on_large_sample(quantile):
    a, loc, scale = 4.0, 60.0, 12.0
    sample = skewnorm.rvs(a, loc=loc, scale=scale, size=100_000, random_state=1)
    canary = skewnorm.ppf(quantile, a, loc=loc, scale=scale)
    truth = -math.log2(quantile)
    by_rank = rank_exposure(canary, sample)
    by_fit = skew_normal_exposure(canary, sample)
    # the rank estimate: binomial error of about 1/sqrt(count) relative, < 0.1 bit here
    assert by_rank == pytest.approx(truth, abs=0.12)
    assert by_fit == pytest.approx(truth, abs=0.12)
    assert by_fit == pytest.approx(by_rank, abs=0.15)


def test_fit_recovers_parameters_and_extrapolates():
    sample = skewnorm.rvs(-3.0, loc=120.0, scale=20.0, size=50_000, random_state=2)
    fit = fit_skew_normal(sample)
    assert fit.n == 50_000
    assert fit.a == pytest.approx(-3.0, rel=0.15)
    assert fit.loc == pytest.approx(120.0, abs=2.0)
    assert fit.scale == pytest.approx(20.0, rel=0.05)
    # beyond the sample the rank saturates at log2 |R|; the fit keeps going
    deep = skewnorm.ppf(1e-9, -3.0, loc=120.0, scale=20.0)
    assert rank_exposure(deep, sample) == pytest.approx(math.log2(50_001))
    assert fit.exposure(deep) == pytest.approx(-math.log2(1e-9), abs=1.5)
    # the cap log2 |R|
    assert fit.exposure(deep, space_size=1000) == pytest.approx(math.log2(1000))
    assert fit.exposure(-1e6, space_size=10**10) == pytest.approx(10 * math.log2(10))
    assert fit.exposure(-1e6) == math.inf


def test_errors():
    with pytest.raises(ValueError, match="candidates"):
        rank_exposure(1.0, [])
    with pytest.raises(ValueError, match="finite"):
        rank_exposure(1.0, [1.0, float("nan")])
    with pytest.raises(ValueError, match="canary"):
        rank_exposure(float("inf"), [1.0, 2.0])
    with pytest.raises(ValueError, match="1-D"):
        rank_exposure(1.0, np.ones((2, 2)))
    with pytest.raises(TypeError, match="candidates"):
        rank_exposure(1.0, "abc")
    with pytest.raises(TypeError, match="candidates"):
        rank_exposure(1.0, [1.0, "x"])
    with pytest.raises(ValueError, match="all equal"):
        fit_skew_normal([2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="at least 3"):
        fit_skew_normal([1.0, 2.0])
    with pytest.raises(ValueError, match="space_size"):
        skew_normal_exposure(1.0, [1.0, 2.0, 4.0], space_size=0)
    with pytest.raises(ValueError, match="rank"):
        exposure_from_rank(9, 8)
    with pytest.raises(TypeError, match="rank"):
        exposure_from_rank(1.5, 8)
    values = np.array([3.0, 1.0, 2.0])
    rank_exposure(0.0, values)
    np.testing.assert_array_equal(values, [3.0, 1.0, 2.0])  # input left unchanged
