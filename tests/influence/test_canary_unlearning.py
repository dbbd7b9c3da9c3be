"""Canary unlearning: influence update of a character model, exposure before/after/retrained."""

import json

import pytest
import torch

from fastunlearn.exposure import CanaryConfig, run_canary_experiment
from fastunlearn.influence.canary import (
    CanaryUnlearnConfig,
    NextCharModel,
    canary_windows,
    sequence_loss,
    unlearn_canary,
    write_canary_outputs,
)


def test_canary_windows_hand_computed():
    ids = torch.arange(40)
    # secret at [20, 24), windows of 8 inputs: starts 12..22 have a secret target
    got = canary_windows(ids, [(20, 24)], seq_len=8, stride=1).tolist()
    assert got == list(range(12, 23))
    for s in got:
        targets = set(range(s + 1, s + 9))
        assert targets & set(range(20, 24))
    for s in (11, 23):  # the neighbouring starts predict no secret character
        assert not set(range(s + 1, s + 9)) & set(range(20, 24))
    assert canary_windows(ids, [(20, 24)], seq_len=8, stride=4).tolist() == [12, 16, 20, 22]
    # clipped at both ends of the text
    assert canary_windows(ids, [(1, 3)], seq_len=8, stride=1).tolist() == [0, 1]
    assert canary_windows(ids, [(37, 40)], seq_len=8, stride=1).tolist() == list(range(29, 32))


def test_next_char_model_and_loss_match_charlm():
    from fastunlearn.exposure import CharLM

    torch.manual_seed(0)
    lm = CharLM(7, 4, 8)
    x = torch.randint(7, (3, 5))
    y = torch.randint(7, (3, 5))
    logits, _ = lm(x)
    wrapped = NextCharModel(lm)
    assert torch.allclose(wrapped(x), logits, atol=1e-6)
    expected = sum(-torch.log_softmax(logits[b, t], -1)[y[b, t]] for b in range(3)
                   for t in range(5))
    assert torch.allclose(sequence_loss(wrapped(x), y), expected, atol=1e-4)


def _tiny(steps):
    return run_canary_experiment(CanaryConfig(n_sentences=60, steps=steps, hidden=16,
                                              embed_dim=8, insertions=3, seq_len=16,
                                              secret_length=3))


def test_bad_input_raises_and_leaves_model_unchanged():
    res = _tiny(2)
    before = [p.detach().clone() for p in res.model.parameters()]
    with pytest.raises(ValueError, match="replacement"):
        unlearn_canary(res, CanaryUnlearnConfig(replacement="ab", retrain=False))
    with pytest.raises(ValueError, match="replacement"):
        unlearn_canary(res, CanaryUnlearnConfig(replacement="a\u00e9b", retrain=False))
    with pytest.raises(ValueError, match="order"):
        unlearn_canary(res, CanaryUnlearnConfig(order=3))
    with pytest.raises(TypeError, match="canary_result"):
        unlearn_canary(object())
    assert all(torch.equal(a, p) for a, p in zip(before, res.model.parameters(), strict=True))


def test_second_order_update_lowers_exposure_small(tmp_path):
    res = run_canary_experiment(CanaryConfig(n_sentences=150, steps=250, hidden=48,
                                             embed_dim=16, insertions=8, seq_len=24,
                                             secret_length=4))
    original = [p.detach().clone() for p in res.model.parameters()]
    out = unlearn_canary(res, CanaryUnlearnConfig(damping=100.0, cg_maxiter=10,
                                                  hvp_windows=64, seq_len=16))
    b, a, r = out["before"], out["after"], out["retrained"]
    assert out["update"]["applied"] and out["update"]["order"] == 2
    assert out["num_canaries"] == 8
    # 8 canaries x windows with a secret target (16-char inputs, stride 2)
    assert out["num_affected"] == 8 * len(range(0, 16 + 4 - 1, 2))
    # memorised before, forgotten by retraining on the corrected text
    assert b["rank_exposure"] > 10 and r["rank_exposure"] < 2
    assert r["log_perplexity"] > b["log_perplexity"] + 20
    # the update: log-perplexity (bits) well up, exposure well down
    assert a["log_perplexity"] > b["log_perplexity"] + 15
    assert a["rank_exposure"] < b["rank_exposure"] - 5
    assert all(torch.equal(o, p) for o, p in zip(original, res.model.parameters(), strict=True))
    files = write_canary_outputs(out, tmp_path)
    saved = json.loads((tmp_path / "canary_unlearning.json").read_text())
    assert saved["after"]["rank"] == a["rank"] and "model" not in saved
    md = (tmp_path / "canary_unlearning.md").read_text()
    assert out["secret"] in md and "retrained" in md and set(files) == {"json", "markdown"}


@pytest.mark.slow
def test_second_order_update_lowers_exposure_towards_retraining():
    res = run_canary_experiment(CanaryConfig(n_sentences=200, steps=300, hidden=64,
                                             embed_dim=16, insertions=10, seq_len=32,
                                             secret_length=4))
    out = unlearn_canary(res, CanaryUnlearnConfig(cg_maxiter=20, hvp_windows=128))
    b, a, r = out["before"], out["after"], out["retrained"]
    assert out["update"]["applied"] and out["num_canaries"] == 10
    # the trained model memorised the secret; retraining without it forgets it
    assert b["rank"] == 1 and r["log_perplexity"] > b["log_perplexity"] + 20
    # the update moves the secret's log-perplexity (bits) well up and its exposure down
    assert a["log_perplexity"] > b["log_perplexity"] + 10
    assert a["rank_exposure"] < b["rank_exposure"] - 1
    assert a["completion"] != out["secret"]
    # the original model is untouched
    assert out["model"] is not res.model
