"""Canary pipeline: text insertion, teacher-forced scoring, exhaustive exposure, experiment."""

import itertools
import json
import math

import pytest
import torch

from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    format_report,
    generate_corpus,
    insert_canary,
    measure_exposure,
    rank_exposure,
    run_canary_experiment,
    sequence_log_perplexity,
)
from fastunlearn.exposure.cli import add_parser, run


def test_corpus_and_insertion():
    text = generate_corpus(50, seed=3)
    assert text == generate_corpus(50, seed=3)
    assert any(c.isdigit() for c in generate_corpus(200, seed=0))
    canary = "my telephone number is 123."
    new, offsets = insert_canary(text, canary, 7, seed=1)
    assert len(offsets) == 7
    assert new.count(canary) == 7
    assert all(new[o : o + len(canary)] == canary for o in offsets)
    assert new.replace(canary + " ", "") == text
    with pytest.raises(ValueError, match="insertions"):
        insert_canary("One. Two.", canary, 5)
    with pytest.raises(ValueError, match="n_sentences"):
        generate_corpus(0)


def test_vocab():
    vocab = CharVocab.from_texts("ab c")
    assert set("0123456789") <= set(vocab.chars)
    ids = vocab.encode("c a9")
    assert vocab.decode(ids) == "c a9"
    assert vocab.encode(["ab", "ba"]).shape == (2, 2)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("z")
    with pytest.raises(ValueError, match="repeat"):
        CharVocab("aa")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_log_perplexity_matches_full_forward(cell):
    torch.manual_seed(0)
    vocab = CharVocab.from_texts("my number is ")
    model = CharLM(vocab.size, embed_dim=8, hidden=16, layers=2, cell=cell).train()
    prefix = vocab.encode("my number is ")
    secrets = vocab.encode(["123", "999", "070"])
    fast = sequence_log_perplexity(model, prefix, secrets, batch_size=2)
    assert model.training  # restored
    model.eval()
    for i in range(3):
        full = torch.cat([prefix, secrets[i]]).unsqueeze(0)
        with torch.no_grad():
            logits, _ = model(full)
        logp = torch.log_softmax(logits[0].double(), -1)
        p = len(prefix)
        bits = -sum(logp[p - 1 + j, secrets[i, j]] for j in range(3)) / math.log(2)
        assert float(fast[i]) == pytest.approx(float(bits), rel=1e-5)
    with pytest.raises(TypeError, match="secrets"):
        sequence_log_perplexity(model, prefix, secrets.float())
    with pytest.raises(ValueError, match="vocabulary"):
        sequence_log_perplexity(model, prefix, secrets + 100)


def test_exhaustive_measurement_matches_independent_ranking():
    torch.manual_seed(1)
    vocab = CharVocab.from_texts("code ")
    model = CharLM(vocab.size, embed_dim=8, hidden=16)
    a, b = measure_exposure(model, vocab, "code ", ["42", "07"])
    assert a.exhaustive and a.space_size == 100 and a.n_scored == 99
    # independent: score all 100 two-digit secrets one by one
    every = ["".join(p) for p in itertools.product("0123456789", repeat=2)]
    prefix = vocab.encode("code ")
    scores = {s: float(sequence_log_perplexity(model, prefix, vocab.encode([s]))[0]) for s in every}
    for m in (a, b):
        assert m.log_perplexity == pytest.approx(scores[m.secret], rel=1e-9)
        others = [v for s, v in scores.items() if s != m.secret]
        assert m.rank == 1 + sum(v <= scores[m.secret] for v in others)
        assert m.rank_exposure == pytest.approx(math.log2(100) - math.log2(m.rank))
        assert m.rank_exposure == pytest.approx(rank_exposure(m.log_perplexity, others))
        assert 0.0 <= m.skew_normal_exposure <= math.log2(100) + 1e-12
    # any sample of |R| = 100 is smaller than 100: its fit is warned about
    with pytest.warns(UserWarning, match=r"fitted to only \d+ sampled candidates"):
        sampled = measure_exposure(model, vocab, "code ", "42", n_candidates=50, seed=0)[0]
    assert not sampled.exhaustive and sampled.n_scored <= 50
    with pytest.raises(ValueError, match="alphabet"):
        measure_exposure(model, vocab, "code ", "4a")
    with pytest.raises(ValueError, match="same length"):
        measure_exposure(model, vocab, "code ", ["4", "42"])



def test_sampled_measurement_agrees_with_exhaustive_within_binomial_error():
    # 2-digit space (|R| = 100), n = 99 draws with replacement (a sample of n >= |R| draws
    # is replaced by the exact ranking, checked below). For a secret whose exact
    # rank is r, c = r - 1 of the 99 other secrets score at or below it. The sampled
    # "others" are the draws that are not the secret itself, each uniform over the 99
    # others, so with N of them the count C = (sampled rank - 1) is Binomial(N, c / 99),
    # and the secret's own draws, Binomial(n, 1 / 100), are the ones left out.
    torch.manual_seed(1)
    vocab = CharVocab.from_texts("code ")
    model = CharLM(vocab.size, embed_dim=8, hidden=16)
    every = ["".join(p) for p in itertools.product("0123456789", repeat=2)]
    scores = sequence_log_perplexity(model, vocab.encode("code "), vocab.encode(every))
    by_score = [every[i] for i in torch.argsort(scores).tolist()]
    chosen = by_score[::9]  # exact ranks 1, 10, 19, ..., 100: both tails and the middle
    assert len(chosen) == 12 and chosen[-1] == by_score[-1]
    exact = measure_exposure(model, vocab, "code ", chosen)
    # as many draws as secrets or more: the whole space is scored, exactly (3000 draws with
    # replacement used to rank among 2970 'others' and report up to log2 2971 > log2 100)
    for many in (100, 3000):
        assert [m.to_dict() for m in exact] == [
            m.to_dict()
            for m in measure_exposure(model, vocab, "code ", chosen, n_candidates=many, seed=7)
        ]
    n = 99
    with pytest.warns(UserWarning, match=r"fitted to only \d+ sampled candidates"):
        sampled = measure_exposure(model, vocab, "code ", chosen, n_candidates=n, seed=7)
    k = 5.0  # standard deviations allowed; every quantity is seeded (deterministic)
    for e, s in zip(exact, sampled, strict=True):
        assert e.exhaustive and not s.exhaustive and s.secret == e.secret
        assert s.space_size == 100 and s.max_exposure == pytest.approx(math.log2(100))
        assert s.log_perplexity == pytest.approx(e.log_perplexity, rel=1e-6)
        # the canary's own secret is excluded from the others, and only it
        removed = n - s.n_scored
        assert removed >= 0
        assert abs(removed - n / 100) <= k * math.sqrt(n * 0.01 * 0.99), (s.secret, removed)
        assert s.fit.n == s.n_scored
        # rank exposure: the exhaustive one gives c; the sampled count must be within k sd
        big_n = s.n_scored
        c = round(100 * 2.0 ** -e.rank_exposure) - 1
        assert c == e.rank - 1
        pi = c / 99
        mu, sd = big_n * pi, math.sqrt(big_n * pi * (1 - pi))
        count = s.rank - 1
        assert abs(count - mu) <= k * sd, (s.secret, count, mu, sd)
        # ... and so its exposure, log2 |R'| - log2 rank over |R'| = N + 1, lies within
        # log2(1 + k sd / (1 + min(C, mu))) of the one the exact fraction predicts
        predicted = math.log2(big_n + 1) - math.log2(1 + mu)
        tol = math.log2(1 + k * sd / (1 + min(count, mu)))
        assert abs(s.rank_exposure - predicted) <= tol + 1e-9, (s.secret, s.rank_exposure)
        # skew-normal: the sampled fit's CDF at the canary estimates the exhaustive fit's,
        # with at most the binomial error sqrt(F (1 - F) / N) of an empirical CDF
        f_exact = 2.0 ** -e.skew_normal_exposure
        f_sampled = 2.0 ** -s.skew_normal_exposure
        f_sd = math.sqrt(f_exact * (1 - f_exact) / big_n)
        assert abs(f_sampled - f_exact) <= k * f_sd, (s.secret, f_sampled, f_exact)
    # the lowest secret: none of the others is at or below it, so the exclusion of its own
    # draws (which would tie with it) leaves rank 1 and the largest sampled exposure
    lowest = sampled[0]
    assert exact[0].rank == 1 and lowest.rank == 1
    assert lowest.rank_exposure == pytest.approx(math.log2(lowest.n_scored + 1))
    # the highest: every other secret is at or below it
    assert sampled[-1].rank == sampled[-1].n_scored + 1 and sampled[-1].rank_exposure == 0.0


TINY = dict(
    n_sentences=60,
    secret_length=2,
    insertions=8,
    embed_dim=8,
    hidden=24,
    steps=25,
    seq_len=24,
    batch_size=8,
)


def test_tiny_experiment_runs_and_reports(tmp_path):
    result = run_canary_experiment(CanaryConfig(**TINY))
    assert result.text.count("my telephone number is " + result.canary.secret + ".") == 8
    assert result.control.secret != result.canary.secret
    for m in (result.canary, result.control):
        assert m.space_size == 100 and m.exhaustive
        assert 1 <= m.rank <= 100
        assert 0 <= m.rank_exposure <= m.max_exposure
    assert len(result.completion) == 2
    assert math.isfinite(result.final_loss)
    report = format_report(result)
    assert result.canary.secret in report and "exposure" in report
    json.dumps(result.to_dict())
    # the same seed gives the same run, bit for bit (timings aside)
    again = run_canary_experiment(CanaryConfig(**TINY))
    first, second = result.to_dict(), again.to_dict()
    for d in (first, second):
        del d["train_s"], d["measure_s"]
    assert first == second
    assert again.text == result.text and again.canary_offsets == result.canary_offsets
    for p, q in zip(result.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)
    # the offsets point at the inserted canaries, and the report's table holds the numbers
    canary = "my telephone number is " + result.canary.secret + "."
    assert all(result.text.startswith(canary, o) for o in result.canary_offsets)
    for m in (result.canary, result.control):
        assert f"| `{m.secret}` |" in report and f"| {m.rank} |" in report


def test_cli(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "exposure",
            "--secret",
            "07",
            "--n-sentences",
            "60",
            "--insertions",
            "4",
            "--hidden",
            "16",
            "--embed-dim",
            "8",
            "--steps",
            "5",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.func(args) == 0
    assert json.loads((tmp_path / "exposure.json").read_text())["canary"]["secret"] == "07"
    assert "`07`" in capsys.readouterr().out
    bad = parser.parse_args(["exposure", "--secret", "12", "--secret-length", "3"])
    assert run(bad) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["exposure", "--secret", "12a"])


def test_config_errors():
    with pytest.raises(ValueError, match="secret"):
        CanaryConfig(secret="12x")
    with pytest.raises(ValueError, match="hidden"):
        CanaryConfig(hidden=0)
    with pytest.raises(ValueError, match="insertions"):
        CanaryConfig(insertions=-1)
    with pytest.raises(ValueError, match="cell"):
        CanaryConfig(cell="rnn")
    with pytest.raises(TypeError, match="config"):
        run_canary_experiment({"steps": 1})


@pytest.mark.slow
def test_memorised_canary_is_exposed_and_control_is_not():
    result = run_canary_experiment(
        CanaryConfig(n_sentences=200, secret_length=3, insertions=10, hidden=64, steps=300)
    )
    assert result.completion == result.canary.secret
    assert result.canary.rank == 1
    assert result.canary.rank_exposure == pytest.approx(math.log2(1000))
    assert result.canary.skew_normal_exposure > 8.0
    assert result.control.rank_exposure < 5.0
