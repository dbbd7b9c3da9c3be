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
    # secret at [20, 24), windows of 8 inputs + 1: starts 12..22 have a secret target,
    # start 23 has the secret's last character as its first input
    got = canary_windows(ids, [(20, 24)], seq_len=8).tolist()
    assert got == list(range(12, 24))
    for s in got:
        assert set(range(s, s + 9)) & set(range(20, 24))
    for s in (11, 24):  # the neighbouring windows do not touch the secret
        assert not set(range(s, s + 9)) & set(range(20, 24))
    assert canary_windows(ids, [(20, 24)], seq_len=8, stride=4).tolist() == [12, 16, 20, 23]
    # clipped at both ends of the text (training starts are 0 .. 40 - 8 - 1)
    assert canary_windows(ids, [(1, 3)], seq_len=8).tolist() == [0, 1, 2]
    assert canary_windows(ids, [(37, 40)], seq_len=8).tolist() == list(range(29, 32))


def _touching_training_windows(n, seq_len, spans):
    """Brute force: every training start (0 .. n - seq_len - 1, as train_char_lm draws them)
    whose window of seq_len + 1 characters shares a character with a secret."""
    secret = set().union(*(range(a, b) for a, b in spans))
    return [s for s in range(n - seq_len) if secret & set(range(s, s + seq_len + 1))]


@pytest.mark.parametrize("seq_len", [1, 5, 8, 30])
def test_canary_windows_equal_brute_force_enumeration(seq_len):
    ids = torch.arange(60)
    spans = [(0, 3), (10, 14), (17, 20), (55, 60)]  # at the start, close together, at the end
    got = canary_windows(ids, spans, seq_len).tolist()
    assert got == _touching_training_windows(60, seq_len, spans)


def test_unlearn_canary_uses_exactly_the_training_windows_touching_the_secret(monkeypatch):
    from fastunlearn.influence import canary as canary_module

    res = _tiny(2)
    seen = {}
    real = canary_module.influence_update

    def spy(model, x_old, y_old, x_new, y_new, **kwargs):
        seen.update(x_old=x_old, y_old=y_old, x_new=x_new, y_new=y_new,
                    train_data=kwargs["train_data"])
        return real(model, x_old, y_old, x_new, y_new, **kwargs)

    monkeypatch.setattr(canary_module, "influence_update", spy)
    hvp_windows = 4
    out = unlearn_canary(res, CanaryUnlearnConfig(order=1, tau=1e-4, retrain=False,
                                                  hvp_windows=hvp_windows))
    seq_len = res.config.seq_len  # the training window length (16), not a default
    assert CanaryUnlearnConfig().seq_len is None and out["config"]["seq_len"] == seq_len
    a0 = len(res.config.prefix)
    secret, replacement = res.canary.secret, out["replacement"]
    spans = [(off + a0, off + a0 + len(secret)) for off in res.canary_offsets]
    ids = res.vocab.encode(res.text)
    starts = _touching_training_windows(ids.numel(), seq_len, spans)
    assert out["num_affected"] == len(starts) == seen["x_old"].shape[0]
    windows = torch.stack([ids[s:s + seq_len + 1] for s in starts])
    assert torch.equal(seen["x_old"].cpu(), windows[:, :-1])
    assert torch.equal(seen["y_old"].cpu(), windows[:, 1:])

    # the corrected text, built by hand: the replacement put into every secret span
    assert len(replacement) == len(secret)
    assert all(r != c for r, c in zip(replacement, secret, strict=True))  # every char changes
    text = res.text
    for a, b in spans:
        assert text[a:b] == secret
        text = text[:a] + replacement + text[b:]
    new_ids = res.vocab.encode(text)
    new_windows = torch.stack([new_ids[s:s + seq_len + 1] for s in starts])
    assert torch.equal(seen["x_new"].cpu(), new_windows[:, :-1])
    assert torch.equal(seen["y_new"].cpu(), new_windows[:, 1:])

    # the corrected windows differ exactly at the secret's characters
    secret_pos = set().union(*(range(a, b) for a, b in spans))
    inside = torch.tensor([[s + j in secret_pos for j in range(seq_len + 1)] for s in starts])
    assert torch.equal(seen["x_new"].cpu() != seen["x_old"].cpu(), inside[:, :-1])
    assert torch.equal(seen["y_new"].cpu() != seen["y_old"].cpu(), inside[:, 1:])

    # the Hessian's data: hvp_windows training windows of the corrected text, then the
    # corrected affected windows
    train_x, train_y = (t.cpu() for t in seen["train_data"])
    assert train_x.shape == (hvp_windows + len(starts), seq_len)
    assert torch.equal(train_x[hvp_windows:], new_windows[:, :-1])
    assert torch.equal(train_y[hvp_windows:], new_windows[:, 1:])
    all_windows = {tuple(new_ids[s:s + seq_len + 1].tolist())
                   for s in range(new_ids.numel() - seq_len)}
    for x, y in zip(train_x[:hvp_windows], train_y[:hvp_windows], strict=True):
        assert torch.equal(x[1:], y[:-1])
        assert tuple(x.tolist()) + (int(y[-1]),) in all_windows


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
    torch.manual_seed(1234)
    caller = torch.random.get_rng_state()
    out = unlearn_canary(res, CanaryUnlearnConfig(cg_maxiter=10, hvp_windows=64))
    # the retraining seeds its own initialisation; the caller's stream is left where it was
    assert torch.equal(torch.random.get_rng_state(), caller)
    b, a, r = out["before"], out["after"], out["retrained"]
    assert out["update"]["applied"] and out["update"]["order"] == 2
    assert out["num_canaries"] == 8
    # 8 canaries x the training windows (24-char inputs) touching their 4-digit secret
    assert out["config"]["seq_len"] == 24 and out["num_affected"] == 8 * (24 + 4)
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
    # 10 canaries x (32 + 4) affected windows: their summed loss needs more damping than
    # the default (tuned for the smaller test above)
    out = unlearn_canary(res, CanaryUnlearnConfig(cg_maxiter=20, hvp_windows=128,
                                                  damping=800.0))
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


# ---- damping="auto": a starting damping scaled to the affected windows, doubled on rejection


@pytest.fixture(scope="module")
def small_canary():
    """The small experiment of test_second_order_update_lowers_exposure_small (224 windows):
    at cg_maxiter=10, hvp_windows=64 its step is rejected at damping 75 and 150, accepted at
    300 (measured)."""
    return run_canary_experiment(CanaryConfig(n_sentences=150, steps=250, hidden=48,
                                              embed_dim=16, insertions=8, seq_len=24,
                                              secret_length=4))


def _spy_dampings(monkeypatch):
    from fastunlearn.influence import canary as canary_module

    seen = []
    real = canary_module.influence_update

    def spy(model, *args, **kwargs):
        seen.append(kwargs.get("damping"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(canary_module, "influence_update", spy)
    return seen


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_auto_damping_start_scales_with_the_affected_windows():
    from fastunlearn.influence.canary import auto_damping

    assert CanaryUnlearnConfig().damping == "auto"
    assert auto_damping(224) == pytest.approx(300.0)  # the small test's windows
    assert auto_damping(360) == pytest.approx(300.0 * (360 / 224) ** 2)  # about 775
    assert auto_damping(648) == pytest.approx(300.0 * (648 / 224) ** 2)  # about 2,510


def test_auto_damping_retries_a_rejected_step_with_a_larger_damping(small_canary, monkeypatch,
                                                                    tmp_path):
    from fastunlearn.influence import canary as canary_module

    res = small_canary
    original = _params(res.model)
    # start too small (75 instead of 300): rejected at 75 and 150, applied at 300
    monkeypatch.setattr(canary_module, "AUTO_DAMPING_BASE", 75.0)
    seen = _spy_dampings(monkeypatch)
    cfg = CanaryUnlearnConfig(cg_maxiter=10, hvp_windows=64, retrain=False)
    out = unlearn_canary(res, cfg)
    assert out["num_affected"] == 224 and seen == [75.0, 150.0, 300.0]
    tries = out["damping_tries"]
    assert [t["damping"] for t in tries] == [75.0, 150.0, 300.0]
    assert [t["applied"] for t in tries] == [False, False, True]
    for t in tries[:2]:  # rejected by the divergence check: the corrected loss grew
        assert t["diverged"] and t["loss_after"] > 1.01 * t["loss_before"]
        assert "loss grew" in t["reason"]
    assert tries[2]["loss_after"] <= tries[2]["loss_before"] and not tries[2]["diverged"]
    assert all(t["residual"] is not None and t["seconds"] > 0 for t in tries)
    assert out["damping"] == out["update"]["damping"] == 300.0 and out["update"]["applied"]
    assert out["config"]["damping"] == "auto"
    assert out["update_seconds"] >= sum(t["seconds"] for t in tries) * 0.99
    # the result is the numeric damping's: the rejected tries left no trace on the model
    monkeypatch.undo()
    fixed = unlearn_canary(res, CanaryUnlearnConfig(cg_maxiter=10, hvp_windows=64,
                                                    damping=300.0, retrain=False))
    assert all(torch.equal(a, b) for a, b in zip(_params(out["model"]),
                                                 _params(fixed["model"]), strict=True))
    assert out["after"] == fixed["after"]
    assert out["after"]["rank_exposure"] < out["before"]["rank_exposure"] - 5
    assert all(torch.equal(a, p) for a, p in zip(original, res.model.parameters(), strict=True))
    write_canary_outputs(out, tmp_path)
    md = (tmp_path / "canary_unlearning.md").read_text()
    assert "damping auto: 75 (rejected), 150 (rejected), 300 (applied)" in md
    saved = json.loads((tmp_path / "canary_unlearning.json").read_text())
    assert [t["damping"] for t in saved["damping_tries"]] == [75.0, 150.0, 300.0]


def test_auto_damping_every_try_rejected_leaves_the_model_unchanged(small_canary, monkeypatch):
    from fastunlearn.influence import canary as canary_module

    res = small_canary
    original = _params(res.model)
    monkeypatch.setattr(canary_module, "AUTO_DAMPING_BASE", 40.0)
    monkeypatch.setattr(canary_module, "AUTO_DAMPING_TRIES", 2)
    seen = _spy_dampings(monkeypatch)
    out = unlearn_canary(res, CanaryUnlearnConfig(cg_maxiter=10, hvp_windows=64,
                                                  retrain=False))
    assert seen == [40.0, 80.0]
    assert [(t["damping"], t["applied"], t["diverged"]) for t in out["damping_tries"]] == [
        (40.0, False, True), (80.0, False, True)]
    assert not out["update"]["applied"] and out["damping"] == 80.0
    # neither the caller's model nor the returned copy was changed
    assert all(torch.equal(a, p) for a, p in zip(original, res.model.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(original, out["model"].parameters(),
                                                 strict=True))
    assert out["after"] == out["before"]


def test_numeric_damping_makes_exactly_one_try(small_canary, monkeypatch):
    res = small_canary
    original = _params(res.model)
    seen = _spy_dampings(monkeypatch)
    # rejected at 75 (see small_canary): a number is not escalated
    out = unlearn_canary(res, CanaryUnlearnConfig(cg_maxiter=10, hvp_windows=64, damping=75,
                                                  retrain=False))
    assert seen == [75.0]
    (t,) = out["damping_tries"]
    assert t["damping"] == out["damping"] == out["update"]["damping"] == 75.0
    assert not t["applied"] and t["diverged"] and not out["update"]["applied"]
    assert all(torch.equal(a, p) for a, p in zip(original, out["model"].parameters(),
                                                 strict=True))
    # first order: one try, no damping
    seen.clear()
    out = unlearn_canary(res, CanaryUnlearnConfig(order=1, tau=1e-4, retrain=False))
    assert seen == [None] and out["damping"] is None and len(out["damping_tries"]) == 1


@pytest.mark.parametrize("damping", ["Auto", "", "300", -1.0, float("nan"), float("inf"), True,
                                     None, [300.0]])
def test_bad_damping_is_refused_naming_it(damping, monkeypatch):
    import numpy as np

    res = _tiny(2)
    before = _params(res.model)
    seen = _spy_dampings(monkeypatch)
    # a string other than "auto" or a bad number is a bad value; a bool, None or list a
    # wrong type
    exc = ValueError if isinstance(damping, (str, float)) else TypeError
    with pytest.raises(exc, match="'damping'"):
        unlearn_canary(res, CanaryUnlearnConfig(damping=damping, retrain=False))
    assert seen == []
    assert all(torch.equal(a, p) for a, p in zip(before, res.model.parameters(), strict=True))
    # NumPy and int values are numbers
    assert CanaryUnlearnConfig(damping=np.float64(12.5)).validate().damping == 12.5
    assert CanaryUnlearnConfig(damping=0).validate().damping == 0
