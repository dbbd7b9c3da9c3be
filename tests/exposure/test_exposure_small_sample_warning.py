"""A skew-normal fit to too few sampled candidates, or a point mass, is said, not hidden.

Before, ``fastunlearn exposure --candidates 3`` reported a skew-normal exposure fitted to
3 log-perplexities without a word, although such a fit put the same canary anywhere
from 4 bits to the cap (or infinity) depending on the sampling seed. Below 100 sampled
candidates the library now warns; an exhaustively scored space, however small, does not.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from fastunlearn.exposure import (
    CharLM,
    CharVocab,
    fit_skew_normal,
    measure_exposure,
    skew_normal_exposure,
)

PREFIX = "code "
FEW = "fitted to only"


def _sample(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(4.0, 2.0, n) + 5.0


def _model(seed: int = 1) -> tuple[CharLM, CharVocab]:
    torch.manual_seed(seed)
    vocab = CharVocab.from_texts(PREFIX)
    return CharLM(vocab.size, embed_dim=8, hidden=16), vocab


def _silent(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


# ---- fit_skew_normal / skew_normal_exposure --------------------------------------------------


@pytest.mark.parametrize("n", [3, 10, 99])
def test_a_fit_to_fewer_than_100_values_warns_at_the_caller(n):
    with pytest.warns(UserWarning, match=rf"skew-normal exposure is fitted to only {n} "
                      r"sampled candidates; its value is unreliable below 100 "
                      r"\(fit at least 1000 values\)") as record:
        fit = fit_skew_normal(_sample(n))
    assert len(record) == 1 and record[0].filename == __file__
    assert fit.n == n  # still fitted and returned


@pytest.mark.parametrize("n", [100, 1000])
def test_a_fit_to_100_values_or_more_is_silent(n):
    assert _silent(lambda: fit_skew_normal(_sample(n))).n == n


def test_bad_input_is_refused_before_any_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="all equal"):
            fit_skew_normal([2.0, 2.0, 2.0])
        with pytest.raises(ValueError, match="at least 3"):
            fit_skew_normal([1.0, 2.0])


def test_skew_normal_exposure_warns_once_at_the_caller():
    with pytest.warns(UserWarning, match="fitted to only 20 sampled") as record:
        skew_normal_exposure([1.0, 2.0], _sample(20), space_size=10_000)
    assert len(record) == 1 and record[0].filename == __file__
    with pytest.warns(UserWarning, match="fitted to only 20 sampled"):
        skew_normal_exposure(1.0, _sample(20))  # no space size: a sample


@pytest.mark.parametrize(("n", "space"), [(9, 10), (3, 4), (99, 100), (20, 5)])
def test_skew_normal_exposure_is_silent_on_the_whole_space(n, space):
    # as many candidates as the rest of the space: scored exhaustively, not a sample
    bits = _silent(lambda: skew_normal_exposure(0.0, _sample(n), space_size=space))
    assert 0.0 <= bits <= np.log2(space)


def test_skew_normal_exposure_is_silent_on_a_large_sample():
    _silent(lambda: skew_normal_exposure(1.0, _sample(500), space_size=10**10))


# ---- measure_exposure --------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 20, 99])
def test_a_small_sample_warns_once_for_all_secrets(n):
    model, vocab = _model()
    with pytest.warns(UserWarning, match=FEW) as record:
        out = measure_exposure(model, vocab, PREFIX, ["123", "456"], n_candidates=n, seed=1)
    ours = [w for w in record if FEW in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__
    message = str(ours[0].message)
    fitted = min(m.n_scored for m in out)
    assert f"fitted to only {fitted} sampled candidates" in message
    assert "use 'n_candidates' >= 1000, or 'n_candidates' >= |R| = 1000 to score every " \
           "secret exactly" in message
    assert all(not m.exhaustive for m in out)


@pytest.mark.parametrize("kwargs", [{"n_candidates": 100}, {"n_candidates": 400}, {}])
def test_a_large_sample_or_the_whole_space_is_silent(kwargs):
    model, vocab = _model()
    out = _silent(lambda: measure_exposure(model, vocab, PREFIX, ["123", "456"], seed=1,
                                           **kwargs))
    assert out[0].exhaustive is (not kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"n_candidates": 5000}, {"alphabet": "0123"}])
def test_a_small_space_scored_exhaustively_is_silent(kwargs):
    # 10**2 or 4**2 secrets, all scored: the fit is to the whole space (exact rank next to it)
    model, vocab = _model()
    out = _silent(lambda: measure_exposure(model, vocab, PREFIX, ["12", "03"], **kwargs))
    assert all(m.exhaustive and m.n_scored < 100 for m in out)


def test_a_point_mass_warns_when_sampling_only():
    model, vocab = _model()
    with torch.no_grad():  # uniform predictions: every secret has the same log-perplexity
        model.out.weight.zero_()
        model.out.bias.zero_()
    with pytest.warns(UserWarning, match="point mass") as record:
        out = measure_exposure(model, vocab, PREFIX, ["123", "456"], n_candidates=200, seed=0)
    masses = [w for w in record if "point mass" in str(w.message)]
    assert len(masses) == 1 and masses[0].filename == __file__
    message = str(masses[0].message)
    assert "'123' (" in message and "'456' (" in message and "log2 |R| = 9.97 bits" in message
    assert not [w for w in record if FEW in str(w.message)]  # no fit, nothing unreliable
    assert all(m.fit.scale == 0.0 for m in out)
    exact = _silent(lambda: measure_exposure(model, vocab, PREFIX, ["12"]))[0]
    assert exact.exhaustive and exact.fit.scale == 0.0


# ---- the command ---------------------------------------------------------------------------


def test_the_command_prints_the_warning_once(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "fastunlearn", "exposure", "--n-sentences", "60",
         "--secret-length", "3", "--insertions", "4", "--hidden", "8", "--embed-dim", "4",
         "--seq-len", "16", "--batch-size", "4", "--steps", "2", "--candidates", "3",
         "--no-plots", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if FEW in line]
    assert len(lines) == 1
    assert lines[0].startswith("fastunlearn exposure: warning: the skew-normal exposure is "
                               "fitted to only ")
    assert lines[0].endswith("its value is unreliable below 100 (use '--candidates' >= 1000, "
                             "or '--candidates' >= |R| = 1000 to score every secret exactly)")
    assert "UserWarning" not in run.stderr and ".py:" not in run.stderr
