"""Exposure metric and canary pipeline against independent computations.

Brute-force ranks, a numerical integral of the skew-normal density, a hand-written
likelihood, a bigram model whose log-perplexities have a closed form, and full-forward
argmax decoding; plus the argument checks and the state left after an error.
"""

import copy
import itertools
import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import log_ndtr, ndtr
from scipy.stats import skewnorm
from torch import nn

from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    SkewNormalFit,
    exposure_from_rank,
    fit_skew_normal,
    generate_corpus,
    greedy_completion,
    insert_canary,
    measure_exposure,
    rank_exposure,
    sequence_log_perplexity,
    skew_normal_exposure,
    train_char_lm,
)

LN2 = math.log(2.0)

# --- the metric ---------------------------------------------------------------------------


def _brute_rank_exposure(canary: float, candidates: list[float]) -> float:
    rank = 1 + sum(1 for c in candidates if c <= canary)
    return math.log2(len(candidates) + 1) - math.log2(rank)


def test_rank_exposure_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(5)
    candidates = rng.integers(0, 20, size=300).astype(float)  # heavy ties
    canaries = np.concatenate([np.arange(-1.0, 21.0, 0.5), candidates[:10]])
    expected = [_brute_rank_exposure(c, candidates.tolist()) for c in canaries]
    for form in (canaries, canaries.tolist(), torch.tensor(canaries)):
        got = rank_exposure(form, candidates)
        assert isinstance(got, np.ndarray) and got.shape == canaries.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    for c, e in zip(canaries[:5], expected[:5], strict=True):
        single = rank_exposure(float(c), torch.tensor(candidates))
        assert isinstance(single, float) and single == pytest.approx(e, abs=1e-12)
    # exposure never increases as the canary's log-perplexity grows
    assert np.all(np.diff(rank_exposure(np.sort(canaries), candidates)) <= 0)


def test_zero_dim_array_canary_is_a_scalar_like_a_zero_dim_tensor():
    candidates = [5.0, 1.0, 3.0]
    expected = math.log2(4) - math.log2(2)  # one candidate (1.0) at or below 2.0
    by_array = rank_exposure(np.array(2.0), candidates)
    assert isinstance(by_array, float) and by_array == pytest.approx(expected)
    assert rank_exposure(torch.tensor(2.0), candidates) == pytest.approx(expected)
    fit = SkewNormalFit(0.0, 0.0, 1.0, 3)
    assert fit.exposure(np.array(-1.0)) == pytest.approx(-math.log2(ndtr(-1.0)), rel=1e-12)


def test_exposure_from_rank_closed_form_and_checks():
    assert exposure_from_rank(1, 10**30) == pytest.approx(30 * math.log2(10), rel=1e-15)
    assert exposure_from_rank(np.int64(5), np.int64(40)) == pytest.approx(3.0)
    assert exposure_from_rank(7, 7) == 0.0
    # agrees with a candidate set built to put the canary at that rank
    for rank, size in ((1, 9), (4, 9), (9, 9), (3, 1000)):
        candidates = [0.0] * (rank - 1) + [2.0] * (size - rank)
        assert exposure_from_rank(rank, size) == pytest.approx(rank_exposure(1.0, candidates))
    with pytest.raises(ValueError, match="rank"):
        exposure_from_rank(0, 8)
    with pytest.raises(TypeError, match="rank"):
        exposure_from_rank(True, 8)
    with pytest.raises(TypeError, match="space_size"):
        exposure_from_rank(1, 8.0)


def _skewnorm_cdf_by_quadrature(x: float, a: float, loc: float, scale: float) -> float:
    def density(t: float) -> float:
        z = (t - loc) / scale
        return 2.0 / scale * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * ndtr(a * z)

    lo = loc - 40 * scale
    value, _ = integrate.quad(density, lo, x, epsabs=0, epsrel=1e-11, limit=200)
    return value


@pytest.mark.parametrize("a", [-4.0, -0.7, 0.0, 0.93, 5.0])
def test_fit_exposure_is_minus_log2_of_the_integrated_density(a):
    loc, scale = 118.6, 19.1  # the reference notebook's fit, other shapes
    fit = SkewNormalFit(a, loc, scale, 100)
    xs = np.array([loc - 2.5 * scale, loc - scale, loc, loc + 0.7 * scale, loc + 3 * scale])
    got = fit.exposure(xs)
    assert isinstance(got, np.ndarray) and got.shape == xs.shape
    for x, g in zip(xs, got, strict=True):
        cdf = _skewnorm_cdf_by_quadrature(float(x), a, loc, scale)
        assert g == pytest.approx(-math.log2(cdf), rel=1e-7, abs=1e-9)
        assert fit.exposure(float(x)) == pytest.approx(g, rel=1e-12)
    assert np.all(np.diff(got) <= 0)  # higher log-perplexity, less exposure


def test_fit_exposure_deep_lower_tail_has_the_gaussian_asymptote():
    # a = 0 is the normal distribution: log Phi(z) = -z^2/2 - log(-z) - log(2 pi)/2
    # + log(1 - 1/z^2 + 3/z^4 - 15/z^6 + ...), far below anything a CDF ratio resolves
    fit = SkewNormalFit(0.0, 10.0, 2.0, 50)
    for z in (-12.0, -20.0, -30.0):
        series = 1 - 1 / z**2 + 3 / z**4 - 15 / z**6 + 105 / z**8
        log_phi = -0.5 * z * z - math.log(-z) - 0.5 * math.log(2 * math.pi) + math.log(series)
        assert fit.exposure(10.0 + 2.0 * z) == pytest.approx(-log_phi / LN2, rel=1e-9)
        assert fit.exposure(10.0 + 2.0 * z, space_size=2**40) == pytest.approx(40.0)
    # beyond double precision (F < 1e-308) the documented result: inf, or the cap
    assert fit.exposure(10.0 - 2.0 * 200) == math.inf
    assert fit.exposure(10.0 - 2.0 * 200, space_size=10**10) == pytest.approx(10 * math.log2(10))
    # and the upper tail is never negative
    assert fit.exposure(1e6) == 0.0


def _skewnorm_loglik(x: np.ndarray, a: float, loc: float, scale: float) -> float:
    z = (x - loc) / scale
    return float(
        np.sum(math.log(2.0) - 0.5 * z * z - 0.5 * math.log(2 * math.pi) - math.log(scale))
        + np.sum(log_ndtr(a * z))
    )


def test_fit_is_a_maximum_of_the_hand_written_likelihood():
    sample = skewnorm.rvs(2.5, loc=40.0, scale=8.0, size=4000, random_state=11)
    fit = fit_skew_normal(torch.tensor(sample))
    assert fit.n == 4000 and fit.scale > 0
    best = _skewnorm_loglik(sample, fit.a, fit.loc, fit.scale)
    assert best >= _skewnorm_loglik(sample, 2.5, 40.0, 8.0) - 1e-6
    for da, dl, ds in itertools.product((-0.05, 0.0, 0.05), repeat=3):
        if (da, dl, ds) == (0.0, 0.0, 0.0):
            continue
        other = _skewnorm_loglik(
            sample, fit.a * (1 + da), fit.loc + dl * fit.scale, fit.scale * (1 + ds)
        )
        assert best >= other - 1e-6, (da, dl, ds)


def test_skew_normal_exposure_cap_is_min_with_log2_space():
    sample = skewnorm.rvs(1.0, loc=100.0, scale=15.0, size=2000, random_state=3)
    canaries = np.array([0.0, 40.0, 70.0, 100.0, 160.0])
    free = skew_normal_exposure(canaries, sample)
    for space in (2, 1000, 10.0**10, 10**40):
        capped = skew_normal_exposure(canaries, sample, space_size=space)
        np.testing.assert_allclose(capped, np.minimum(free, math.log2(space)), rtol=1e-12)
    assert skew_normal_exposure(canaries, sample, space_size=1) == pytest.approx(np.zeros(5))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"space_size": True}, TypeError, "space_size"),
        ({"space_size": "100"}, TypeError, "space_size"),
        ({"space_size": float("nan")}, ValueError, "space_size"),
        ({"space_size": 0.5}, ValueError, "space_size"),
        ({"canary": float("nan")}, ValueError, "canary"),
        ({"canary": [1.0, float("-inf")]}, ValueError, "canary"),
        ({"canary": "1.0"}, TypeError, "canary"),
        ({"canary": np.ones((2, 2))}, ValueError, "canary"),
        ({"candidates": [1.0, 2.0, float("inf")]}, ValueError, "candidates"),
        ({"candidates": [[1.0, 2.0, 3.0]]}, ValueError, "candidates"),
    ],
)
def test_skew_normal_exposure_rejects_bad_input(kwargs, error, match):
    args = {"canary": 1.0, "candidates": [1.0, 2.0, 4.0, 7.0]} | kwargs
    with pytest.raises(error, match=match):
        skew_normal_exposure(**args)


# --- a bigram model with closed-form log-perplexities -------------------------------------


class Bigram(nn.Module):
    """Next-token logits depend only on the current token: ``logits = table[token]``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)
        self.vocab_size = table.shape[0]

    def forward(self, tokens: torch.Tensor, state: object = None) -> tuple:
        return self.table[tokens], torch.zeros(1, tokens.shape[0], 1)


def _bigram(vocab: CharVocab, seed: int) -> tuple[Bigram, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab.size, vocab.size, generator=g, dtype=torch.float64) * 2
    logits = table.numpy()
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return Bigram(table), logp


def _bigram_bits(logp: np.ndarray, vocab: CharVocab, prefix: str, secret: str) -> float:
    index = {c: i for i, c in enumerate(vocab.chars)}
    prev, total = index[prefix[-1]], 0.0
    for c in secret:
        total += logp[prev, index[c]]
        prev = index[c]
    return -total / LN2


def test_sequence_log_perplexity_of_a_bigram_is_its_closed_form():
    vocab = CharVocab.from_texts("key: xyz")
    model, logp = _bigram(vocab, 0)
    secrets = ["".join(p) for p in itertools.product("xyz9", repeat=3)]
    got = sequence_log_perplexity(
        model, vocab.encode("key: x"), vocab.encode(secrets), batch_size=7
    )
    assert got.dtype == torch.float64 and got.shape == (len(secrets),)
    for s, g in zip(secrets, got.tolist(), strict=True):
        assert g == pytest.approx(_bigram_bits(logp, vocab, "key: x", s), rel=1e-12)
    # one-character secrets: only the prefix's last prediction
    one = sequence_log_perplexity(model, vocab.encode("key: y"), vocab.encode(["x", "z"]))
    assert one.tolist() == pytest.approx(
        [_bigram_bits(logp, vocab, "y", "x"), _bigram_bits(logp, vocab, "y", "z")], rel=1e-12
    )


def test_exhaustive_measure_exposure_matches_brute_force_on_a_bigram():
    vocab = CharVocab.from_texts("id-abc")
    model, logp = _bigram(vocab, 3)
    every = ["".join(p) for p in itertools.product("abc", repeat=3)]  # |R| = 27
    bits = {s: _bigram_bits(logp, vocab, "id-", s) for s in every}
    chosen = ["cab", "aaa", "bcb"]
    out = measure_exposure(model, vocab, "id-", chosen, alphabet="abc", batch_size=5)
    assert [m.secret for m in out] == chosen
    for m in out:
        others = np.array([v for s, v in bits.items() if s != m.secret])
        own = bits[m.secret]
        rank = 1 + int(np.sum(others <= own))
        assert m.exhaustive and m.space_size == 27 and m.n_scored == 26
        assert m.max_exposure == pytest.approx(math.log2(27))
        assert m.log_perplexity == pytest.approx(own, rel=1e-12)
        assert m.rank == rank
        assert m.rank_exposure == pytest.approx(math.log2(27) - math.log2(rank), abs=1e-12)
        a, loc, scale = skewnorm.fit(others)
        expected = min(-skewnorm.logcdf(own, a, loc=loc, scale=scale) / LN2, math.log2(27))
        assert m.skew_normal_exposure == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert m.fit.n == 26
    # the secret with the lowest log-perplexity has the maximal rank exposure
    lowest = min(bits, key=bits.get)
    best = measure_exposure(model, vocab, "id-", lowest, alphabet="abc")[0]
    assert best.rank == 1 and best.rank_exposure == pytest.approx(math.log2(27))


def test_sampled_measure_exposure_is_seeded_and_counts_its_draws():
    vocab = CharVocab.from_texts("id-abc")
    model, logp = _bigram(vocab, 4)
    every = ["".join(p) for p in itertools.product("abc", repeat=3)]
    bits = {s: _bigram_bits(logp, vocab, "id-", s) for s in every}
    # 26 draws: a sample must be smaller than |R| = 27 (else the space is scored whole)
    kwargs = {"alphabet": "abc", "n_candidates": 26}
    # a sample of |R| = 27 is too small for a trusted fit: each draw is warned about
    few = r"fitted to only \d+ sampled candidates"
    with pytest.warns(UserWarning, match=few):
        first = measure_exposure(model, vocab, "id-", ["abc", "ccc"], seed=9, **kwargs)
    with pytest.warns(UserWarning, match=few):
        again = measure_exposure(model, vocab, "id-", ["abc", "ccc"], seed=9, **kwargs)
    with pytest.warns(UserWarning, match=few):
        other = measure_exposure(model, vocab, "id-", ["abc", "ccc"], seed=10, **kwargs)
    assert [m.to_dict() for m in first] == [m.to_dict() for m in again]
    assert [m.to_dict() for m in first] != [m.to_dict() for m in other]
    for m in first:
        assert not m.exhaustive and m.space_size == 27
        # each of the 26 draws is the secret with probability 1/27: removed ~ Bin(26, 1/27)
        removed = 26 - m.n_scored
        assert abs(removed - 26 / 27) <= 5 * math.sqrt(26 / 27 * 26 / 27)
        # the sampled rank counts draws scored at or below the secret: Bin(N, c / 26)
        c = sum(1 for s, v in bits.items() if s != m.secret and v <= bits[m.secret])
        mu = m.n_scored * c / 26
        sd = math.sqrt(m.n_scored * (c / 26) * (1 - c / 26))
        assert abs((m.rank - 1) - mu) <= 5 * sd + 1e-9
        assert m.rank_exposure == pytest.approx(math.log2(m.n_scored + 1) - math.log2(m.rank))


def test_measure_exposure_rejects_bad_counts():
    vocab = CharVocab.from_texts("ab ")
    model, _ = _bigram(vocab, 0)
    with pytest.raises(TypeError, match="n_candidates"):
        measure_exposure(model, vocab, "ab", "12", n_candidates=10.0)
    with pytest.raises(ValueError, match="n_candidates"):
        measure_exposure(model, vocab, "ab", "12", n_candidates=2)
    with pytest.raises(TypeError, match="n_candidates"):  # a bool is the wrong type
        measure_exposure(model, vocab, "ab", "12", n_candidates=True)
    with pytest.raises(TypeError, match="enumerate_limit"):
        measure_exposure(model, vocab, "ab", "12", enumerate_limit=None)
    with pytest.raises(ValueError, match="prefix"):
        measure_exposure(model, vocab, "", "12")
    with pytest.raises(ValueError, match="secrets"):
        measure_exposure(model, vocab, "ab", [])
    with pytest.raises(ValueError, match="alphabet"):
        measure_exposure(model, vocab, "ab", "11", alphabet="1231")


# --- greedy decoding ----------------------------------------------------------------------


def test_greedy_completion_of_a_bigram_follows_the_argmax_chain():
    vocab = CharVocab.from_texts("pq ")
    model, logp = _bigram(vocab, 8)
    index = {c: i for i, c in enumerate(vocab.chars)}
    prev, expected = index["q"], ""
    for _ in range(9):
        prev = int(np.argmax(logp[prev]))
        expected += vocab.chars[prev]
    assert greedy_completion(model, vocab, "p q", 9) == expected
    assert greedy_completion(model, vocab, "p q", 0) == ""


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_greedy_completion_matches_full_forward_argmax(cell):
    torch.manual_seed(2)
    vocab = CharVocab.from_texts("my number is ")
    model = CharLM(vocab.size, embed_dim=8, hidden=16, layers=2, cell=cell).train()
    got = greedy_completion(model, vocab, "my number is ", 6)
    assert model.training
    model.eval()
    ids = vocab.encode("my number is ").tolist()
    with torch.no_grad():
        for _ in range(6):  # re-run the whole sequence each step: no state reuse
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    assert got == vocab.decode(torch.tensor(ids[-6:]))


def test_greedy_completion_rejects_bad_input_and_keeps_training_mode():
    vocab = CharVocab.from_texts("ab ")
    model = CharLM(vocab.size, embed_dim=4, hidden=8).train()
    with pytest.raises(ValueError, match="vocabulary"):
        greedy_completion(model, vocab, "zz", 3)
    assert model.training  # not left in eval mode by the failed call
    with pytest.raises(ValueError, match="length"):
        greedy_completion(model, vocab, "ab", -1)
    with pytest.raises(TypeError, match="length"):
        greedy_completion(model, vocab, "ab", 2.0)
    with pytest.raises(ValueError, match="prefix"):
        greedy_completion(model, vocab, "", 2)
    assert model.training
    model.eval()
    greedy_completion(model, vocab, "ab", 2)
    assert not model.training


# --- training -----------------------------------------------------------------------------


def _cross_entropy(model: nn.Module, window: torch.Tensor) -> float:
    with torch.no_grad():
        logits, _ = model(window[:-1].unsqueeze(0))
        logp = torch.log_softmax(logits[0].double(), -1)
    return float(-logp[torch.arange(len(window) - 1), window[1:]].mean())


def test_train_char_lm_first_loss_is_the_untrained_window_loss():
    vocab = CharVocab.from_texts("abcd ")
    torch.manual_seed(0)
    base = CharLM(vocab.size, embed_dim=4, hidden=8)
    ids = vocab.encode("abcd dcba ab")  # 12 tokens
    # seq_len = T - 1: the only window is the whole text
    model = copy.deepcopy(base)
    losses = train_char_lm(model, ids, steps=1, seq_len=11, batch_size=3)
    assert losses[0] == pytest.approx(_cross_entropy(base, ids), rel=1e-5)
    # seq_len = T - 2: windows start at 0 or 1; both occur over seeds, and nothing else
    candidates = [_cross_entropy(base, ids[:11]), _cross_entropy(base, ids[1:])]
    assert abs(candidates[0] - candidates[1]) > 1e-4
    seen = set()
    for seed in range(24):
        model = copy.deepcopy(base)
        first = train_char_lm(model, ids, steps=1, seq_len=10, batch_size=1, seed=seed)[0]
        match = [i for i, c in enumerate(candidates) if first == pytest.approx(c, rel=1e-5)]
        assert len(match) == 1, (seed, first, candidates)
        seen.add(match[0])
    assert seen == {0, 1}


def test_train_char_lm_is_seeded_and_learns_a_periodic_text():
    vocab = CharVocab.from_texts("abc")
    ids = vocab.encode("abc" * 40)
    torch.manual_seed(1)
    base = CharLM(vocab.size, embed_dim=4, hidden=16)
    runs = []
    for _ in range(2):
        model = copy.deepcopy(base)
        runs.append((train_char_lm(model, ids, steps=60, seq_len=12, lr=3e-2, seed=4), model))
    (loss_a, model_a), (loss_b, model_b) = runs
    assert loss_a == loss_b
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p, q)
    # every character is determined by the one before: the loss falls towards 0
    assert loss_a[0] > 0.8 and np.mean(loss_a[-5:]) < 0.1
    untouched = copy.deepcopy(base)
    assert train_char_lm(untouched, ids, steps=0, seq_len=12) == []
    for p, q in zip(untouched.parameters(), base.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 2.0}, TypeError, "steps"),
        ({"steps": -1}, ValueError, "steps"),
        ({"seq_len": 0}, ValueError, "seq_len"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"seq_len": 20}, ValueError, "ids"),
        ({"ids": "abcabc"}, TypeError, "ids"),
        ({"ids": torch.zeros(20)}, TypeError, "ids"),
    ],
)
def test_train_char_lm_rejects_bad_input_before_touching_the_model(kwargs, error, match):
    vocab = CharVocab.from_texts("abc")
    model = CharLM(vocab.size, embed_dim=4, hidden=8)
    before = copy.deepcopy(model.state_dict())
    args = {"ids": vocab.encode("abc" * 5), "steps": 2, "seq_len": 4} | kwargs
    with pytest.raises(error, match=match):
        train_char_lm(model, **args)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


# --- text and vocabulary ------------------------------------------------------------------


def test_generated_corpus_statistics():
    n = 3000
    text = generate_corpus(n, seed=1)
    sentences = re.findall(r"[A-Z][^.!?]*[.!?]", text)
    assert len(sentences) == n
    assert " ".join(sentences) == text
    rooms = [int(m) for m in re.findall(r"in room (\d+)[.!?]", text)]
    assert all(1 <= r <= 999 for r in rooms)
    # one sentence in six mentions a room number; five endings in seven are a period
    assert abs(len(rooms) - n / 6) <= 5 * math.sqrt(n / 6 * 5 / 6)
    periods = sum(s.endswith(".") for s in sentences)
    assert abs(periods - n * 5 / 7) <= 5 * math.sqrt(n * 5 / 7 * 2 / 7)
    assert generate_corpus(40, seed=2) != generate_corpus(40, seed=3)


def test_insert_canary_uses_sentence_starts_only():
    text = generate_corpus(30, seed=4)
    n_starts = 1 + len(re.findall(r"[.!?] ", text))
    canary = "my pin is 4321."
    new, offsets = insert_canary(text, canary, n_starts, seed=2)  # every start
    assert offsets == sorted(offsets) and len(set(offsets)) == n_starts
    for o in offsets:
        assert new[o : o + len(canary) + 1] == canary + " "
        assert o == 0 or new[o - 2 : o] in (". ", "! ", "? ")
    assert new == " ".join(canary + " " + s for s in re.findall(r"[A-Z][^.!?]*[.!?]", text))
    with pytest.raises(ValueError, match="insertions"):
        insert_canary(text, canary, n_starts + 1)
    same = insert_canary(text, canary, 5, seed=7)
    assert same == insert_canary(text, canary, 5, seed=7)
    assert insert_canary(text, canary, 0) == (text, [])


def test_vocab_decode_rejects_ids_outside_the_vocabulary():
    vocab = CharVocab("ab c")
    assert vocab.decode(torch.arange(vocab.size)) == "ab c"
    assert vocab.decode(torch.tensor([], dtype=torch.int64)) == ""
    for bad in ([-1], [vocab.size], [0, 7]):
        with pytest.raises(ValueError, match="ids"):
            vocab.decode(torch.tensor(bad))
    with pytest.raises(ValueError, match="1-D"):
        vocab.decode(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="text"):
        vocab.encode([])


# --- configuration and CLI ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_candidates": 2}, "n_candidates"),
        ({"lr": float("inf")}, "lr"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"steps": -1}, "steps"),
        ({"secret": ""}, "secret"),
    ],
)
def test_config_rejects_bad_settings_up_front(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CanaryConfig(**kwargs)


@pytest.mark.parametrize("value", [50.0, True])
def test_config_rejects_a_count_of_the_wrong_type(value):
    # a float or a bool where an int count is expected is the wrong type
    with pytest.raises(TypeError, match="n_candidates"):
        CanaryConfig(n_candidates=value)


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_cli_rejects_bad_weight_decay(value, capsys):
    import argparse

    from fastunlearn.exposure.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["exposure", "--weight-decay", value])
    assert "weight-decay" in capsys.readouterr().err
