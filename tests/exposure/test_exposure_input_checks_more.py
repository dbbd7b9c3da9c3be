"""Bad inputs to the exposure API: a TypeError or ValueError naming the argument.

Before the fixes: ``"no"`` passed as the flags ``control`` / ``progress``, bools and strings
passed as candidate scores (``True`` read as 1.0), seeds out of torch's range were aliased
or overflowed unnamed, a str vocabulary gave a LookupError, another module than a CharLM a
raw dtype error, huge candidate counts an OverflowError, and several wrong types a
ValueError (or nothing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    SkewNormalFit,
    exposure_from_rank,
    greedy_completion,
    measure_exposure,
    plot_exposure,
    rank_exposure,
    sequence_log_perplexity,
    skew_normal_exposure,
    train_char_lm,
)


@pytest.fixture(scope="module")
def lm() -> tuple[CharLM, CharVocab]:
    torch.manual_seed(0)
    vocab = CharVocab("abc 0123456789")
    return CharLM(vocab.size, 4, 8), vocab


@pytest.mark.parametrize("name", ["control", "progress"])
@pytest.mark.parametrize("value", ["no", 0, None])
def test_canary_config_flags_are_bools(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=f"'{name}' must be a bool"):
        CanaryConfig(**{name: value})


def test_canary_config_flags_take_numpy_bools() -> None:
    config = CanaryConfig(control=np.bool_(False), progress=np.bool_(False))
    assert config.control is False and config.progress is False


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"insertions": True}, "insertions"),
    ({"insertions": 2.0}, "insertions"),
    ({"steps": True}, "steps"),
    ({"n_candidates": 5.0}, "n_candidates"),
    ({"n_candidates": True}, "n_candidates"),
    ({"enumerate_limit": True}, "enumerate_limit"),
    ({"prefix": 3}, "prefix"),
    ({"suffix": None}, "suffix"),
    ({"secret": 1234}, "secret"),
])
def test_canary_config_wrong_types_are_type_errors(kwargs: dict, name: str) -> None:
    with pytest.raises(TypeError, match=f"'{name}'"):
        CanaryConfig(**kwargs)


def test_canary_config_refuses_a_space_too_large_to_enumerate() -> None:
    # old: accepted; the run trained, then _all_secrets raised OverflowError
    with pytest.raises(ValueError, match=r"'n_candidates' must be <= 1000000000"):
        CanaryConfig(secret_length=25, n_candidates=10**25)
    with pytest.raises(ValueError, match="'enumerate_limit'"):
        CanaryConfig(enumerate_limit=10**20)


def test_measure_exposure_refuses_an_enumeration_it_cannot_make(lm) -> None:
    model, vocab = lm
    with pytest.raises(ValueError, match=r"'n_candidates' must be <= 1000000000"):
        measure_exposure(model, vocab, "abc ", "0" * 20, n_candidates=10**20)
    with pytest.raises(ValueError, match="'enumerate_limit'"):
        measure_exposure(model, vocab, "abc ", "0" * 20, enumerate_limit=10**20)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_measure_exposure_checks_the_seed_range(lm, seed: int) -> None:
    model, vocab = lm
    with pytest.raises(ValueError, match=r"'seed' must be an int in \[0, 2\*\*64 - 1\]"):
        measure_exposure(model, vocab, "abc ", "0123", n_candidates=50, seed=seed)


def test_measure_exposure_takes_the_largest_seed(lm) -> None:
    model, vocab = lm
    with pytest.warns(UserWarning):  # 50 candidates: the few-candidates warning
        out = measure_exposure(model, vocab, "abc ", "0123", n_candidates=50, seed=2**64 - 1)
    assert out[0].n_scored <= 50


def test_measure_exposure_bool_count_is_a_type_error(lm) -> None:
    model, vocab = lm
    with pytest.raises(TypeError, match="'n_candidates'"):
        measure_exposure(model, vocab, "abc ", "0123", n_candidates=True)


def test_greedy_completion_checks_the_vocab(lm) -> None:
    model, _ = lm
    with pytest.raises(TypeError, match="'vocab' must be a CharVocab"):
        greedy_completion(model, "abc", "abc", 2)  # type: ignore[arg-type]


def test_another_module_than_a_charlm_is_named(lm) -> None:
    _, vocab = lm
    other = torch.nn.Linear(2, 2)
    ids = vocab.encode("abc 0123 abc 0123 abc")
    with pytest.raises(TypeError, match="'model' must be a CharLM"):
        measure_exposure(other, vocab, "abc ", "0123")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'model' must be a CharLM"):
        sequence_log_perplexity(other, ids[:3], ids[None, 3:5])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'model' must be a CharLM"):
        train_char_lm(other, ids, steps=1, seq_len=4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'model' must be a CharLM"):
        greedy_completion(other, vocab, "abc", 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'model'"):
        train_char_lm("model", ids, steps=1, seq_len=4)  # type: ignore[arg-type]


def test_train_char_lm_progress_is_a_bool(lm) -> None:
    model, vocab = lm
    ids = vocab.encode("abc 0123 abc 0123 abc")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="'progress' must be a bool"):
        train_char_lm(model, ids, steps=1, seq_len=4, progress="no")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("candidates", [[True, False, True], ["0.5", "2", "3"],
                                        [1.0, True, 2.0], [np.bool_(True), 1.0, 2.0]])
def test_scores_must_be_real_numbers(candidates: list) -> None:
    # old: np.asarray read True as 1.0 and '0.5' as 0.5 (a bool array was refused)
    with pytest.raises(TypeError, match="'candidates' must hold real numbers"):
        rank_exposure(1.0, candidates)
    with pytest.raises(TypeError, match="'candidates' must hold real numbers"):
        skew_normal_exposure(1.0, candidates)


def test_canary_list_must_hold_real_numbers() -> None:
    with pytest.raises(TypeError, match="'canary' must hold real numbers"):
        rank_exposure([True], [1.0, 2.0])


def test_real_scores_of_every_kind_still_pass() -> None:
    got = rank_exposure(1.5, [1.0, np.float32(2.0), np.int64(3), 4, torch.tensor(5.0)])
    assert got == pytest.approx(np.log2(6) - np.log2(2))


def test_exposure_from_rank_names_the_space_size() -> None:
    with pytest.raises(ValueError, match="'space_size' must be >= 1"):
        exposure_from_rank(1, 0)


@pytest.mark.parametrize(("n", "error"), [(-5, ValueError), (0, ValueError),
                                          ("x", TypeError), (True, TypeError),
                                          (3.0, TypeError)])
def test_skew_normal_fit_checks_n(n: object, error: type) -> None:
    with pytest.raises(error, match="'n'"):
        SkewNormalFit(0.0, 0.0, 1.0, n)  # type: ignore[arg-type]


def test_plot_exposure_bins_bool_is_a_type_error(lm, tmp_path) -> None:
    model, vocab = lm
    m = measure_exposure(model, vocab, "abc ", "01", n_candidates=None)[0]
    with pytest.raises(TypeError, match="'bins'"):
        plot_exposure(m, tmp_path / "x.png", bins=True)
    assert not (tmp_path / "x.png").exists()


def test_char_vocab_of_a_non_str_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'chars' must be a str"):
        CharVocab(123)  # type: ignore[arg-type]
