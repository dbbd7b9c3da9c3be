"""Audit of the canary exposure package against independent computations.

Ranks over the whole space from log-perplexities summed in base 2 by a hand loop over a
float64 copy of the model, ``scipy.stats.skewnorm.fit`` for the approximation, exact ties
kept against the canary, degenerate (uniform) models, argument checks that name the
argument, the caller's RNG stream and strict JSON from the CLI.
"""

import argparse
import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import skewnorm

from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    SkewNormalFit,
    format_report,
    measure_exposure,
    run_canary_experiment,
)
from fastunlearn.exposure.cli import add_parser

TINY = dict(
    n_sentences=60,
    secret_length=2,
    insertions=4,
    embed_dim=8,
    hidden=16,
    steps=3,
    seq_len=16,
    batch_size=4,
)


def _hand_bits(model: CharLM, vocab: CharVocab, prefix: str, secrets: list[str]) -> np.ndarray:
    """-sum_i log2 p(s_i | prefix, s_<i): a full float64 forward, summed by a hand loop."""
    ref = copy.deepcopy(model).double().eval()
    index = {c: i for i, c in enumerate(vocab.chars)}
    ids = torch.tensor([[index[c] for c in prefix + s] for s in secrets])
    with torch.no_grad():
        logits, _ = ref(ids)
        probs = torch.softmax(logits, -1).tolist()
    out = []
    for row, s in zip(probs, secrets, strict=True):
        total = 0.0
        for j, c in enumerate(s):
            total -= math.log2(row[len(prefix) - 1 + j][index[c]])
        out.append(total)
    return np.array(out)


def _tied_model(seed: int, vocab: CharVocab) -> CharLM:
    """A CharLM to which the characters '1' and '2' are the same token (exact ties)."""
    torch.manual_seed(seed)
    model = CharLM(vocab.size, embed_dim=8, hidden=32)
    i1, i2 = vocab.chars.index("1"), vocab.chars.index("2")
    with torch.no_grad():
        model.embed.weight[i2] = model.embed.weight[i1]
        model.out.weight[i2] = model.out.weight[i1]
        model.out.bias[i2] = model.out.bias[i1]
    return model


# --- the exhaustive rank against brute force ----------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_exhaustive_exposure_equals_brute_force_over_the_whole_space(cell):
    vocab = CharVocab.from_texts("key: xyz")
    torch.manual_seed(4)
    model = CharLM(vocab.size, embed_dim=6, hidden=12, layers=2, cell=cell).train()
    every = ["".join(p) for p in itertools.product("xzy", repeat=4)]  # alphabet order "xzy"
    bits = dict(zip(every, _hand_bits(model, vocab, "key: ", every), strict=True))
    chosen = ["zxyy", "xxxx", "yzyx", min(bits, key=bits.get), max(bits, key=bits.get)]
    out = measure_exposure(model, vocab, "key: ", chosen, alphabet="xzy", batch_size=13)
    assert model.training  # mode restored
    for s, m in zip(chosen, out, strict=True):
        own = bits[s]
        others = np.array([v for t, v in bits.items() if t != s])
        assert m.secret == s and m.exhaustive and m.space_size == 81 and m.n_scored == 80
        # float32 model, float64 hand loop: the scores agree to float32 precision
        assert m.log_perplexity == pytest.approx(own, rel=1e-5)
        assert np.min(np.abs(others - own)) > 1e-4  # no near-tie: the rank is unambiguous
        rank = 1 + int(np.sum(others < own))
        assert m.rank == rank
        assert m.rank_exposure == pytest.approx(math.log2(81) - math.log2(rank), abs=1e-12)
        a, loc, scale = skewnorm.fit(others)
        expected = min(-skewnorm.logcdf(own, a, loc=loc, scale=scale) / math.log(2), math.log2(81))
        assert m.skew_normal_exposure == pytest.approx(expected, rel=2e-3, abs=1e-3)
    assert out[3].rank == 1 and out[3].rank_exposure == pytest.approx(math.log2(81))
    assert out[4].rank == 81 and out[4].rank_exposure == 0.0


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_exact_ties_rank_ahead_of_the_canary(seed):
    # '1' and '2' are one token to the model: the 8 secrets of {1,2}^3 have the same
    # log-perplexity, so each ranks behind the 7 others (ties count against the canary).
    # Scored apart from the pool (a batch of one), the canary used to come out a few
    # ulps lower than its ties and jump ahead of them (seed 3: rank 20 instead of 27).
    vocab = CharVocab.from_texts("ab ")
    model = _tied_model(seed, vocab)
    every = ["".join(p) for p in itertools.product("0123456789", repeat=3)]
    bits = dict(zip(every, _hand_bits(model, vocab, "ab ", every), strict=True))
    tied = ["".join(p) for p in itertools.product("12", repeat=3)]
    level = bits["121"]
    assert max(abs(bits[t] - level) for t in tied) < 1e-9
    below = sum(1 for s, v in bits.items() if s not in tied and v < level)
    assert all(abs(v - level) > 1e-5 for s, v in bits.items() if s not in tied)
    expected_rank = 1 + below + 7
    for m in measure_exposure(model, vocab, "ab ", ["121", "222"]):
        assert m.rank == expected_rank, (m.secret, m.rank, expected_rank)
        assert m.rank_exposure == pytest.approx(math.log2(1000) - math.log2(expected_rank))
    # sampled: the canary's duplicates are left out, its ties among the draws are not
    # (999 draws: a sample must be smaller than |R| = 1000, else the space is scored whole)
    sampled = measure_exposure(model, vocab, "ab ", "121", n_candidates=999, seed=seed)[0]
    assert not sampled.exhaustive
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(10, (999, 3), generator=g)
    drawn = ["".join(str(int(d)) for d in row) for row in draws]
    others = [s for s in drawn if s != "121"]
    assert sampled.n_scored == len(others)
    assert sampled.rank == 1 + sum(1 for s in others if s in tied or bits[s] < level)


# --- degenerate models ---------------------------------------------------------------------


def test_uniform_model_has_zero_exposure_instead_of_a_fit_error():
    vocab = CharVocab.from_texts("ab ")
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    expected_bits = 3 * math.log2(vocab.size)  # every character has probability 1 / V
    for kwargs in ({}, {"n_candidates": 500, "seed": 2}):
        if kwargs:  # sampled: the point-mass fit is warned about (exhaustive: it is not)
            with pytest.warns(UserWarning, match="the skew-normal fit is a point mass"):
                measured = measure_exposure(model, vocab, "ab", ["007", "123"], **kwargs)
        else:
            measured = measure_exposure(model, vocab, "ab", ["007", "123"], **kwargs)
        for m in measured:
            assert m.log_perplexity == pytest.approx(expected_bits, rel=1e-12)
            # every other secret ties with the canary: last place, no exposure
            assert m.rank == m.n_scored + 1
            assert m.rank_exposure == 0.0 and m.skew_normal_exposure == 0.0
            assert m.fit.scale == 0.0 and m.fit.loc == pytest.approx(expected_bits)
            json.dumps(m.to_dict(), allow_nan=False)


def test_point_mass_fit_is_a_step_and_fits_are_validated():
    fit = SkewNormalFit(0.0, 10.0, 0.0, 5)
    np.testing.assert_array_equal(fit.exposure(np.array([11.0, 10.0])), [0.0, 0.0])
    assert fit.exposure(9.999) == math.inf
    assert fit.exposure(9.999, space_size=1024) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="scale"):
        SkewNormalFit(0.0, 10.0, -1.0, 5)
    with pytest.raises(ValueError, match="loc"):
        SkewNormalFit(0.0, float("nan"), 1.0, 5)
    with pytest.raises(TypeError, match="a"):
        SkewNormalFit("1", 0.0, 1.0, 5)


def test_non_finite_model_is_named():
    vocab = CharVocab.from_texts("ab ")
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    with torch.no_grad():
        model.out.bias[vocab.chars.index("0")] = float("nan")
    with pytest.raises(ValueError, match="'model'"):
        measure_exposure(model, vocab, "ab", "01")


# --- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"secrets": "0", "alphabet": "01"}, ValueError, "'alphabet'.*only 2"),
        ({"secrets": "000", "alphabet": "0"}, ValueError, "'alphabet'.*only 1"),
        ({"secrets": "000", "alphabet": "0", "n_candidates": 50}, ValueError, "'alphabet'"),
        ({"alphabet": list("0123")}, TypeError, "'alphabet'"),
        ({"alphabet": "01z"}, ValueError, "'alphabet'.*vocabulary"),
        ({"prefix": "zz"}, ValueError, "'prefix'.*vocabulary"),
        ({"secrets": 12}, TypeError, "'secrets'"),
        ({"vocab": "0123456789ab "}, TypeError, "'vocab'"),
        ({"seed": 1.5, "n_candidates": 10}, TypeError, "'seed'"),
        ({"enumerate_limit": -1}, ValueError, "'enumerate_limit'"),
    ],
)
def test_measure_exposure_names_the_bad_argument(kwargs, error, match):
    vocab = CharVocab.from_texts("ab ")
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    args = {"model": model, "vocab": vocab, "prefix": "ab", "secrets": "01"} | kwargs
    with pytest.raises(error, match=match):
        measure_exposure(**args)


def test_too_few_sampled_others_is_a_clear_error_not_a_fit_crash():
    # 4 secrets, 3 draws: whenever a draw is the secret, fewer than 3 others remain
    vocab = CharVocab.from_texts("ab ")
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    failed = 0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        hits = int((torch.randint(2, (3, 2), generator=g) == 0).all(dim=1).sum())
        if hits:
            with pytest.raises(ValueError, match="'n_candidates'"):
                measure_exposure(model, vocab, "ab", "00", alphabet="01", n_candidates=3, seed=seed)
            failed += 1
        else:
            with pytest.warns(UserWarning, match="fitted to only 3 sampled candidates"):
                m = measure_exposure(
                    model, vocab, "ab", "00", alphabet="01", n_candidates=3, seed=seed
                )
            assert m[0].n_scored == 3
    assert 0 < failed < 12


# --- the experiment and its CLI -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.* no effect with :UserWarning")  # TINY's training settings
def test_experiment_keeps_the_callers_rng_and_seeds_its_own_init():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    cfg = CanaryConfig(**(TINY | {"steps": 0, "seed": 5}))
    result = run_canary_experiment(cfg)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    # the model is the seeded initialisation (steps = 0), as a retraining would rebuild it
    torch.manual_seed(5)
    fresh = CharLM(result.vocab.size, cfg.embed_dim, cfg.hidden, cfg.layers, cfg.cell)
    for p, q in zip(result.model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    # no training step: the loss is undefined, and the JSON and the report say so
    assert math.isnan(result.final_loss)
    assert result.to_dict()["final_loss"] == "nan"  # strict JSON; float() reads it back
    json.dumps(result.to_dict(), allow_nan=False)
    assert "final loss n/a" in format_report(result)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def _tiny_flags() -> list[str]:
    return ["--n-sentences", "60", "--secret-length", "2", "--insertions", "4", "--hidden",
            "8", "--embed-dim", "4", "--seq-len", "16", "--batch-size", "4"]


@pytest.mark.filterwarnings("ignore:.* no effect with :UserWarning")  # the tiny --batch-size
def test_cli_steps_zero_writes_strict_json(tmp_path, capsys):
    args = _parser().parse_args(["exposure", *_tiny_flags(), "--steps", "0", "--out",
                                 str(tmp_path)])
    assert args.func(args) == 0

    def refuse(token: str) -> float:
        raise AssertionError(f"non-JSON token {token}")

    data = json.loads((tmp_path / "exposure.json").read_text(), parse_constant=refuse)
    assert data["final_loss"] == "nan"
    for key in ("canary", "control"):
        m = data[key]
        assert 1 <= m["rank"] <= 100 and m["space_size"] == 100 and m["n_scored"] == 99
        assert m["rank_exposure"] == pytest.approx(math.log2(100) - math.log2(m["rank"]))
    assert "n/a" in (tmp_path / "exposure.md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize("device", ["bogus", "cuda:0"])
def test_cli_bad_device_is_a_clean_error(device, capsys):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    args = _parser().parse_args(["exposure", *_tiny_flags(), "--steps", "1", "--device", device])
    assert args.func(args) == 2
    assert "'--device'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'device'"):
        CanaryConfig(device=device)


@pytest.mark.filterwarnings("ignore:.* no effect with :UserWarning")  # TINY's training settings
def test_report_says_how_many_secrets_were_drawn_and_ranked_against():
    cfg = CanaryConfig(**(TINY | {"steps": 0, "n_candidates": 40}))
    # a sample of |R| = 100 is smaller than 100: its fit is warned about
    with pytest.warns(UserWarning, match=r"fitted to only \d+ sampled candidates"):
        result = run_canary_experiment(cfg)
    m = result.canary
    assert not m.exhaustive and m.n_scored <= 40
    report = format_report(result)
    assert (f"40 uniform draws (with replacement) from |R| = {m.space_size}; the secret "
            f"ranked among the {m.n_scored} that differ from it") in report
    exhaustive = format_report(run_canary_experiment(CanaryConfig(**(TINY | {"steps": 0}))))
    assert f"all {m.space_size} of |R|" in exhaustive
