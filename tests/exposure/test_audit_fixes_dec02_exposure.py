"""Regression tests of the December 2 audit of ``fastunlearn.exposure``.

A skew-normal fit to log-perplexities that differ by a few rounding steps (a model that
predicts almost every character alike) or that lie near the ends of the float range made
``scipy.stats.skewnorm.fit`` raise its ``FitError`` (a RuntimeError) out of
``fit_skew_normal`` and ``measure_exposure``.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import skewnorm

from fastunlearn.exposure import CharLM, CharVocab, fit_skew_normal, measure_exposure

PREFIX = "my number is "


def _near_uniform_model() -> tuple[CharLM, CharVocab]:
    vocab = CharVocab.from_texts(PREFIX)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CharLM(vocab.size, 8, 8)
    with torch.no_grad():  # logits ~1e-15: every secret scores 17.2877... +- a few ulps
        model.out.weight.mul_(1e-15)
        model.out.bias.zero_()
    return model, vocab


def test_measure_exposure_of_a_near_uniform_model_does_not_raise_a_fit_error():
    model, vocab = _near_uniform_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy: "nearly identical" data
        (m,) = measure_exposure(model, vocab, PREFIX, "1234")
        others = m.others
        assert others is not None and 0.0 < np.ptp(others) < 1e-13
        with pytest.raises(RuntimeError):  # what escaped measure_exposure before
            skewnorm.fit(others)
    assert m.exhaustive and m.n_scored == 9999
    # scores alike to the last bits: the point mass at the lowest (a fit to the rounding
    # noise was a spike that put the secret, tied with most of R, at log2 |R|; see
    # test_exposure_audit_dec02b.py)
    assert m.fit.scale == 0 and m.fit.loc == others.min()
    expected = math.log2(10**4) if m.log_perplexity < others.min() else 0.0
    assert m.skew_normal_exposure == expected


def test_fit_of_values_a_rounding_step_apart():
    values = [1.0, 1.0, 1.0 + 2**-52]
    with pytest.raises(RuntimeError):
        skewnorm.fit(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few candidates; scipy's precision warning
        fit = fit_skew_normal(values)
    assert fit.n == 3 and fit.scale > 0 and fit.loc == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("factor", [1e-300, 1e300])
def test_fit_is_equivariant_near_the_ends_of_the_float_range(factor):
    sample = skewnorm.rvs(2.0, loc=0.3, scale=1.0, size=300, random_state=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in scipy's moments
        with pytest.raises(RuntimeError):
            skewnorm.fit(sample * factor)
        base = fit_skew_normal(sample)
        scaled = fit_skew_normal(sample * factor)
    assert scaled.a == pytest.approx(base.a, rel=1e-2)
    assert scaled.loc == pytest.approx(base.loc * factor, rel=1e-2)
    assert scaled.scale == pytest.approx(base.scale * factor, rel=1e-2)
    canary = float(sample.min()) - 0.5
    assert scaled.exposure(canary * factor) == pytest.approx(base.exposure(canary), rel=2e-2)
