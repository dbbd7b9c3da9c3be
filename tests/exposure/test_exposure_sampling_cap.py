"""Sampled exposure never exceeds ``log2 |R|``; a sample as large as the space is exact.

Before the fix, ``n_candidates >= |R|`` drew that many secrets with replacement and ranked
the canary among ``n_scored`` draws, so ``log2 (n_scored + 1) - log2 rank`` reached e.g.
11.5 bits for |R| = 100 (``log2 |R|`` = 6.64 bits), an impossible exposure. Every expected
value here is recomputed in float64 numpy from the model's scores of the whole space (and the
sampled draws reproduced from the seed), not taken from the code under test.
"""

import argparse
import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch

from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    format_report,
    measure_exposure,
    run_canary_experiment,
    sequence_log_perplexity,
)
from fastunlearn.exposure.cli import add_parser

PREFIX = "code "
EVERY = ["".join(p) for p in itertools.product("0123456789", repeat=2)]  # |R| = 100
LOG2_R = math.log2(100)


def _model(seed: int = 1) -> tuple[CharLM, CharVocab]:
    torch.manual_seed(seed)
    vocab = CharVocab.from_texts(PREFIX)
    return CharLM(vocab.size, embed_dim=8, hidden=16), vocab


def _space_scores(model: CharLM, vocab: CharVocab) -> dict[str, float]:
    """The model's log-perplexity of every secret of the space, as float64."""
    scores = sequence_log_perplexity(model, vocab.encode(PREFIX), vocab.encode(EVERY))
    return dict(zip(EVERY, scores.double().tolist(), strict=True))


def _hand_bits(model: CharLM, vocab: CharVocab, secret: str) -> float:
    """-sum log2 p(s_i | prefix, s_<i) from a float64 copy of the model, by a hand loop."""
    ref = copy.deepcopy(model).double().eval()
    index = {c: i for i, c in enumerate(vocab.chars)}
    with torch.no_grad():
        logits, _ = ref(torch.tensor([[index[c] for c in PREFIX + secret]]))
        logp = torch.log_softmax(logits[0], -1).numpy()
    return float(-sum(logp[len(PREFIX) - 1 + j, index[c]] for j, c in enumerate(secret))
                 / math.log(2.0))


def _exact(scores: dict[str, float], secret: str) -> tuple[int, float]:
    """Exact rank (ties against the secret) and exposure over the whole space, in numpy."""
    others = np.array([v for s, v in scores.items() if s != secret], dtype=np.float64)
    rank = 1 + int(np.sum(others <= scores[secret]))
    return rank, float(np.log2(100.0) - np.log2(float(rank)))


@pytest.mark.parametrize("n", [100, 101, 150, 3000, 100_000])
def test_a_sample_at_least_as_large_as_the_space_is_scored_exactly(n):
    model, vocab = _model()
    scores = _space_scores(model, vocab)
    lowest = min(scores, key=scores.get)
    chosen = [lowest, "42", max(scores, key=scores.get)]
    for m in measure_exposure(model, vocab, PREFIX, chosen, n_candidates=n, seed=3):
        rank, exposure = _exact(scores, m.secret)
        assert m.exhaustive and m.n_scored == 99 and m.space_size == 100
        assert m.rank == rank
        assert m.rank_exposure == pytest.approx(exposure, abs=1e-12)
        assert m.max_exposure == pytest.approx(LOG2_R)
        assert 0.0 <= m.rank_exposure <= m.max_exposure
        assert 0.0 <= m.skew_normal_exposure <= m.max_exposure
        assert m.log_perplexity == pytest.approx(_hand_bits(model, vocab, m.secret), rel=1e-5)
    # the lowest secret reaches the maximum exactly, and no more
    top = measure_exposure(model, vocab, PREFIX, lowest, n_candidates=n, seed=3)[0]
    assert top.rank == 1 and top.rank_exposure == pytest.approx(LOG2_R, abs=1e-12)


def test_default_sample_is_not_drawn_for_a_space_smaller_than_it():
    # n_candidates None with |R| > enumerate_limit used to draw 10,000 secrets from a space
    # of 100 and report 13.3 bits for the lowest secret
    model, vocab = _model()
    scores = _space_scores(model, vocab)
    lowest = min(scores, key=scores.get)
    m = measure_exposure(model, vocab, PREFIX, lowest, enumerate_limit=10)[0]
    assert m.exhaustive and m.n_scored == 99 and m.rank == 1
    assert m.rank_exposure == pytest.approx(LOG2_R, abs=1e-12)


@pytest.mark.parametrize(("n", "seed"), [(3, 0), (50, 1), (90, 2), (99, 3), (99, 4)])
def test_sampled_estimate_is_the_add_one_fraction_and_stays_below_log2_r(n, seed):
    model, vocab = _model()
    scores = _space_scores(model, vocab)
    by_score = sorted(scores, key=scores.get)
    chosen = [by_score[0], by_score[1], by_score[37], by_score[-1]]
    # reproduce the draws: n uniform secrets, with replacement, from the seed
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(10, (n, 2), generator=g).tolist()
    drawn = ["".join(str(d) for d in row) for row in draws]
    # every sample of |R| = 100 is smaller than 100: its fit is warned about
    with pytest.warns(UserWarning, match=r"fitted to only \d+ sampled candidates"):
        out = measure_exposure(model, vocab, PREFIX, chosen, n_candidates=n, seed=seed)
    for m in out:
        others = np.array([scores[s] for s in drawn if s != m.secret], dtype=np.float64)
        if others.size < 3:  # too few draws differ from the secret: refused, checked elsewhere
            continue
        big_n = others.size
        c = int(np.sum(others <= scores[m.secret]))
        expected = -np.log2((1.0 + c) / (1.0 + big_n))
        assert not m.exhaustive and m.n_scored == big_n < 100
        assert m.rank == 1 + c
        assert m.rank_exposure == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= m.rank_exposure <= math.log2(big_n + 1) <= m.max_exposure
        assert 0.0 <= m.skew_normal_exposure <= m.max_exposure
    # the lowest secret: no other secret at or below it, the sample's full resolution
    lowest = out[0]
    assert lowest.rank == 1
    assert lowest.rank_exposure == pytest.approx(math.log2(lowest.n_scored + 1), abs=1e-12)
    assert lowest.rank_exposure <= LOG2_R


def test_point_mass_model_caps_the_skew_normal_exposure_at_log2_r():
    # a uniform model scores every secret alike: the fit is a point mass, below which the
    # exposure is infinite before the cap and log2 |R| after it (exact and sampled)
    vocab = CharVocab.from_texts(PREFIX)
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    for kwargs in ({}, {"n_candidates": 99, "seed": 5}, {"n_candidates": 5000, "seed": 5}):
        if kwargs.get("n_candidates", 100) < 100:
            # sampled (fewer draws than |R|): the point-mass fit is warned about; exact: not
            with pytest.warns(UserWarning, match="the skew-normal fit is a point mass"):
                m = measure_exposure(model, vocab, PREFIX, "00", **kwargs)[0]
        else:
            m = measure_exposure(model, vocab, PREFIX, "00", **kwargs)[0]
        # a uniform model ties every secret: last place, no exposure
        assert m.rank == m.n_scored + 1 and m.rank_exposure == 0.0
        assert m.skew_normal_exposure == 0.0 and m.fit.scale == 0.0
        assert m.fit.exposure(m.fit.loc - 1.0, m.space_size) == pytest.approx(LOG2_R)


TINY = dict(
    n_sentences=60,
    secret_length=2,
    insertions=8,
    embed_dim=8,
    hidden=16,
    steps=0,
    seq_len=16,
    batch_size=4,
)


@pytest.mark.filterwarnings("ignore:.* no effect with :UserWarning")  # TINY's training settings
def test_report_says_a_large_sample_was_scored_exactly():
    result = run_canary_experiment(CanaryConfig(**(TINY | {"n_candidates": 500})))
    m = result.canary
    assert m.exhaustive and m.n_scored == 99 and m.rank_exposure <= m.max_exposure
    report = format_report(result)
    assert "all 100 of |R| (exact: the 500 draws asked for are at least |R|)" in report
    assert "with replacement" not in report
    with pytest.warns(UserWarning, match=r"fitted to only \d+ sampled candidates"):
        sampled_result = run_canary_experiment(CanaryConfig(**(TINY | {"n_candidates": 60})))
    sampled = format_report(sampled_result)
    assert "60 uniform draws (with replacement) from |R| = 100" in sampled
    assert "sampled rank exposure at most log2(" in sampled


@pytest.mark.filterwarnings("ignore:.* no effect with :UserWarning")  # TINY's training settings
def test_cli_candidates_above_the_space_size_give_exact_bounded_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["exposure", "--n-sentences", "60", "--secret-length", "2", "--insertions", "4",
         "--hidden", "8", "--embed-dim", "4", "--seq-len", "16", "--batch-size", "4",
         "--steps", "0", "--candidates", "3000", "--out", str(tmp_path)]
    )
    assert args.func(args) == 0
    data = json.loads((tmp_path / "exposure.json").read_text())
    assert data["config"]["n_candidates"] == 3000
    for key in ("canary", "control"):
        m = data[key]
        assert m["exhaustive"] is True and m["n_scored"] == 99 and m["space_size"] == 100
        assert m["rank_exposure"] == pytest.approx(LOG2_R - math.log2(m["rank"]))
        assert 0.0 <= m["rank_exposure"] <= m["max_exposure"] == pytest.approx(LOG2_R)
        assert 0.0 <= m["skew_normal_exposure"] <= m["max_exposure"]
    assert "exact: the 3000 draws asked for are at least |R|" in capsys.readouterr().out
