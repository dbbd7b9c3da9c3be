"""Regression tests of the second December 2 audit of ``fastunlearn.exposure``.

- A near-uniform model (logits ~1e-15) scores every secret 17.2877... +- 1 ulp: the
  skew-normal fitted to that rounding noise is a spike (a ~ 6e6, scale ~ 7e-16) that put a
  secret tied with 96 % of the space at the maximum log2 |R| (its rank: 0.06 bit), and
  ``plot_exposure`` of it raised numpy's "Too many bins for data range".
- ``plot_exposure`` drew an empty ``others`` (with a RuntimeWarning), failed on NaN/inf
  with matplotlib's "supplied range of [nan, nan]" and split a str ``labels`` into letters.
- ``CanaryConfig(device=torch.device(...))`` made ``CanaryResult.to_dict()`` not JSON.
- A ``prefix``, ``secrets`` element or ``canary`` of the wrong type was a ValueError, and
  ``format_report`` of anything else an AttributeError.
- Scoring the secrets (minutes for 10**6 of them) showed no progress bar.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    ExposureMeasurement,
    SkewNormalFit,
    format_report,
    greedy_completion,
    insert_canary,
    measure_exposure,
    plot_exposure,
    run_canary_experiment,
    sequence_log_perplexity,
)

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


def _small_model() -> tuple[CharLM, CharVocab]:
    vocab = CharVocab.from_texts(PREFIX)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = CharLM(vocab.size, 8, 16)
    return model, vocab


def _expected_point_mass_bits(p: float, others: np.ndarray, space: int) -> float:
    """The limit of the fit for scores alike: 0 bits unless below every other, else the cap."""
    return math.log2(space) if p < others.min() else 0.0


@pytest.mark.parametrize("kwargs", [{}, {"n_candidates": 500, "seed": 3}])
def test_a_near_uniform_model_gets_the_point_mass_not_a_spike(kwargs):
    model, vocab = _near_uniform_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the point-mass warning when sampling
        measured = measure_exposure(model, vocab, PREFIX, ["1234", "0000", "9876"], **kwargs)
    for m in measured:
        others = m.others
        assert others is not None and np.ptp(others) < 1e-13  # rounding noise only
        # independent: rank among the others, ties against the secret
        rank = 1 + int(np.sum(others <= m.log_perplexity))
        assert m.rank == rank
        assert m.rank_exposure == pytest.approx(math.log2(others.size + 1) - math.log2(rank))
        assert m.fit.scale == 0.0 and m.fit.loc == others.min()
        expected = _expected_point_mass_bits(m.log_perplexity, others, m.space_size)
        assert m.skew_normal_exposure == expected
    # the secrets tie with most of the space: neither estimate calls them exposed
    assert measured[0].rank_exposure < 1.0 and measured[0].skew_normal_exposure == 0.0


def test_a_trained_like_model_is_still_fitted():
    model, vocab = _small_model()
    (m,) = measure_exposure(model, vocab, PREFIX, "1234")
    assert m.others is not None and np.ptp(m.others) > 1e-3
    assert m.fit.scale > 0


def test_the_plot_of_a_near_uniform_model_is_drawn(tmp_path):
    model, vocab = _near_uniform_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = measure_exposure(model, vocab, PREFIX, ["1234", "0000"])
    out = plot_exposure(measured, tmp_path / "near.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _measurement(**changes: object) -> ExposureMeasurement:
    others = np.linspace(4.0, 8.0, 99)
    fields: dict = dict(
        secret="12",
        log_perplexity=3.0,
        rank=1,
        rank_exposure=6.64,
        skew_normal_exposure=6.64,
        max_exposure=6.64,
        space_size=100,
        n_scored=99,
        exhaustive=True,
        fit=SkewNormalFit(1.0, 5.0, 1.0, 99),
        others=others,
    )
    fields.update(changes)
    return ExposureMeasurement(**fields)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"others": np.array([])}, "'measurements'.*'others'.*non-empty"),
        ({"others": np.array([4.0, np.nan, 5.0])}, "'measurements'.*NaN or inf"),
        ({"others": np.array([4.0, np.inf, 5.0])}, "'measurements'.*NaN or inf"),
        ({"others": np.ones((3, 3))}, "'measurements'.*1-D"),
        ({"log_perplexity": float("nan")}, "'measurements'.*log-perplexity.*'12'"),
        ({"log_perplexity": float("-inf")}, "'measurements'.*log-perplexity.*'12'"),
    ],
)
def test_plot_refuses_empty_or_non_finite_scores_by_name(changes, match, tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match=match):
        plot_exposure(_measurement(**changes), path)
    assert not path.exists()


def test_plot_of_a_finite_measurement_still_works_and_labels_must_be_a_list(tmp_path):
    good = _measurement()
    assert plot_exposure(
        [good, _measurement(secret="34", log_perplexity=6.0)],
        tmp_path / "ok.png",
        labels=["a", "b"],
    ).is_file()
    with pytest.raises(TypeError, match="'labels'"):
        plot_exposure([good, _measurement(secret="34")], tmp_path / "s.png", labels="ab")


def test_a_torch_device_config_gives_json_results():
    cfg = CanaryConfig(
        n_sentences=20, steps=1, hidden=4, embed_dim=4, secret_length=2, device=torch.device("cpu")
    )
    assert cfg.device == "cpu" and isinstance(cfg.device, str)
    result = run_canary_experiment(cfg)
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["config"]["device"] == "cpu"
    assert CanaryConfig(device="cpu").device == "cpu"


def test_arguments_of_the_wrong_type_are_type_errors_by_name():
    model, vocab = _small_model()
    with pytest.raises(TypeError, match="'prefix' must be a str"):
        measure_exposure(model, vocab, 5, "12")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'secrets'.*element int 1"):
        measure_exposure(model, vocab, PREFIX, [1, 2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="'secrets'.*element int 3"):
        measure_exposure(model, vocab, PREFIX, ["12", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="'prefix' must be a str"):
        greedy_completion(model, vocab, b"my", 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'canary' must be a str"):
        insert_canary("A b. C d.", 5, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'result' must be a CanaryResult"):
        format_report({})  # type: ignore[arg-type]
    # empty values stay ValueErrors
    with pytest.raises(ValueError, match="'prefix'"):
        measure_exposure(model, vocab, "", "12")
    with pytest.raises(ValueError, match="'secrets'"):
        measure_exposure(model, vocab, PREFIX, ["12", ""])
    with pytest.raises(ValueError, match="'canary'"):
        insert_canary("A b. C d.", "", 1)


def test_scoring_shows_a_bar_when_asked_and_scores_the_same(capsys):
    model, vocab = _small_model()
    quiet = measure_exposure(model, vocab, PREFIX, "123")
    assert "score" not in capsys.readouterr().err
    loud = measure_exposure(model, vocab, PREFIX, "123", progress=True)
    err = capsys.readouterr().err
    assert "score" in err and "/1000" in err  # exhaustive: the whole space of 10**3
    assert loud[0].log_perplexity == quiet[0].log_perplexity
    np.testing.assert_array_equal(loud[0].others, quiet[0].others)
    ids = vocab.encode(["12", "34"])
    assert torch.equal(
        sequence_log_perplexity(model, vocab.encode(PREFIX), ids, progress=True),
        sequence_log_perplexity(model, vocab.encode(PREFIX), ids),
    )
    with pytest.raises(TypeError, match="'progress'"):
        measure_exposure(model, vocab, PREFIX, "123", progress="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'progress'"):
        sequence_log_perplexity(model, vocab.encode(PREFIX), ids, progress=1)  # type: ignore[arg-type]


def test_the_experiment_shows_the_scoring_bar_with_progress(capsys):
    cfg = CanaryConfig(
        n_sentences=20, steps=1, hidden=4, embed_dim=4, secret_length=2, progress=True
    )
    run_canary_experiment(cfg)
    err = capsys.readouterr().err
    assert "train" in err and "score" in err
