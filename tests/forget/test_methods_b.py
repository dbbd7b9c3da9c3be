"""SCRUB, Bad Teacher, SalUn and UNSIR on digits class forgetting, against a retrained oracle."""

import pytest
import torch
import torch.nn.functional as F
from digits_b import accuracy, same_state, setup, state_copy

import fastunlearn.forget as fg
from fastunlearn.forget import get_method, run_method
from fastunlearn.forget._common_b import reinitialize
from fastunlearn.forget.scrub import tempered_kl
from fastunlearn.forget.unsir import unsir_noise_set

# How far the unlearned model may stay from the oracle on the forget set (the original is at
# ~0.99, the oracle at 0.0), and how much retain accuracy may be lost.
FORGET_SLACK = 0.25
RETAIN_MARGIN = 0.04

# The published defaults are for ResNets on CIFAR; on an 8x8-digits MLP some methods need a
# larger step (documented in the README section). SalUn and UNSIR run at their defaults.
DIGITS_OVERRIDES = {
    "scrub": {"lr": 0.01},
    "bad_teacher": {"lr": 3e-3, "epochs": 8, "batch_size": 64},
    "salun": {},
    "unsir": {},
}


@pytest.fixture(scope="module")
def one_class():
    return setup((3,))


def _check_forgets(s, model, forget_classes):
    orig_forget = accuracy(s.original, *s.forget)
    oracle_forget = accuracy(s.oracle, *s.forget)
    assert orig_forget > 0.95 and oracle_forget < 0.05  # the setup itself
    new_forget = accuracy(model, *s.forget)
    assert new_forget <= oracle_forget + FORGET_SLACK, new_forget
    for c in forget_classes:  # every forgotten class, not only the first
        xs, ys = s.forget
        assert accuracy(model, xs[ys == c], ys[ys == c]) <= oracle_forget + FORGET_SLACK + 0.1
    assert accuracy(model, *s.retain) >= accuracy(s.original, *s.retain) - RETAIN_MARGIN
    assert accuracy(model, *s.test_retain) >= accuracy(s.oracle, *s.test_retain) - RETAIN_MARGIN


@pytest.mark.parametrize("name", sorted(DIGITS_OVERRIDES))
def test_method_moves_forget_accuracy_to_oracle(one_class, name):
    s = one_class
    before = state_copy(s.original)
    new = run_method(name, s.original, s.forget, s.retain, **DIGITS_OVERRIDES[name])
    assert new is not s.original
    assert same_state(s.original, before)  # input model untouched
    _check_forgets(s, new, s.forget_classes)


@pytest.mark.parametrize("name", sorted(DIGITS_OVERRIDES))
def test_method_is_seeded(one_class, name):
    s = one_class
    kw = {**DIGITS_OVERRIDES[name], "epochs": 1}
    a = run_method(name, s.original, s.forget, s.retain, seed=5, **kw)
    b = run_method(name, s.original, s.forget, s.retain, seed=5, **kw)
    assert same_state(a, state_copy(b))
    # every one of these methods draws from the seed (the shuffling of every method, SalUn's
    # random forget labels, UNSIR's retain subset and noise, Bad Teacher's retain subset
    # and incompetent teacher): another seed gives another model
    c = run_method(name, s.original, s.forget, s.retain, seed=6, **kw)
    assert not same_state(a, state_copy(c))


def test_unsir_labels_every_forget_class():
    # two forget classes: with the published notebook's bug (noise of every class labelled
    # 0) class 8 would not be forgotten
    s = setup((3, 8))
    new = run_method("unsir", s.original, s.forget, s.retain)
    _check_forgets(s, new, (3, 8))


def test_unsir_noise_labels_each_class_with_its_own_label():
    s = setup((3, 8))
    cfg = fg.UnsirConfig(noise_size=32)
    noise, labels = unsir_noise_set(s.original, [3, 8], (1, 8, 8), cfg)
    assert noise.shape == (64, 1, 8, 8)
    assert torch.equal(labels, torch.tensor([3] * 32 + [8] * 32))
    with torch.no_grad():
        probs = torch.softmax(s.original(noise), 1)
    # each block is error-maximising for its own label
    assert probs[:32, 3].max() < 0.01 and probs[32:, 8].max() < 0.01


def test_unsir_reads_only_forget_labels(one_class):
    # zero-glance: replacing the forget images by noise gives the same model (distinct
    # rows: a forget set that repeats an example is refused)
    s = one_class
    xf, yf = s.forget
    noise = torch.rand(xf.shape, generator=torch.Generator().manual_seed(0))
    a = run_method("unsir", s.original, (xf, yf), s.retain, epochs=1)
    b = run_method("unsir", s.original, (noise, yf), s.retain, epochs=1)
    assert same_state(a, state_copy(b))


def test_error_maximizing_noise_raises_target_loss(one_class):
    s = one_class
    target = torch.full((64,), 3)
    g = torch.Generator().manual_seed(0)
    init = torch.randn((64, 1, 8, 8), generator=g)
    noise = fg.error_maximizing_noise(s.original, 3, (1, 8, 8), n=64, steps=40, seed=0)
    with torch.no_grad():
        ce0 = F.cross_entropy(s.original(init), target).item()
        ce1 = F.cross_entropy(s.original(noise), target).item()
    assert ce1 > ce0 + 1.0
    # the same draw as the documented N(0, 1) start
    zero_steps = fg.error_maximizing_noise(s.original, 3, (1, 8, 8), n=64, steps=0, seed=0)
    torch.testing.assert_close(zero_steps, init)


def test_tempered_kl_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.0, 1.0, 3.0]])
    T = 4.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    expected = T**2 * float((pt * (pt.log() - ps.log())).sum())
    assert tempered_kl(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    assert tempered_kl(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_saliency_mask_ratio_and_frozen_weights(one_class):
    s = one_class
    masks = fg.saliency_mask(s.original, s.forget, 0.3)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert abs(kept - round(0.3 * total)) <= 2  # ties at the threshold only
    # the mask ranks |sum of forget-set gradients| of the cross-entropy
    model = fg.clone_model(s.original).eval()
    x, y = s.forget
    F.cross_entropy(model(x), y, reduction="sum").backward()
    grads = {n: p.grad.abs() for n, p in model.named_parameters()}
    lowest_kept = min(float(grads[n][m].min()) for n, m in masks.items() if m.any())
    highest_dropped = max(float(grads[n][~m].max()) for n, m in masks.items() if (~m).any())
    assert lowest_kept >= highest_dropped * (1 - 1e-5)

    new = run_method("salun", s.original, s.forget, s.retain, mask_ratio=0.3, epochs=2)
    changed = 0
    for (n, p0), p1 in zip(s.original.named_parameters(), new.parameters(), strict=True):
        m = masks[n]
        assert torch.equal(p1[~m], p0[~m])  # non-salient weights never move
        changed += int((p1[m] != p0[m]).sum())
    assert changed > 0


def test_bad_teacher_incompetent_teacher_is_a_seeded_reinit(one_class):
    s = one_class
    a = reinitialize(fg.clone_model(s.original), 3)
    b = reinitialize(fg.clone_model(s.original), 3)
    assert same_state(a, state_copy(b))
    assert not torch.equal(a.head.weight, s.original.head.weight)
    assert accuracy(a, *s.retain) < 0.3  # incompetent


def test_defaults_are_the_published_settings():
    sc = fg.ScrubConfig()
    assert (sc.lr, sc.momentum, sc.weight_decay, sc.gamma, sc.alpha, sc.temperature) == (
        5e-4, 0.9, 5e-4, 0.99, 0.001, 4.0)
    assert (sc.epochs, sc.max_steps, sc.batch_size, sc.forget_batch_size) == (3, 2, 128, 32)
    bt = fg.BadTeacherConfig()
    assert (bt.lr, bt.epochs, bt.batch_size, bt.temperature) == (1e-4, 1, 256, 1.0)
    su = fg.SalUnConfig()
    assert (su.lr, su.epochs, su.mask_ratio) == (0.013, 10, 0.5)
    un = fg.UnsirConfig()
    assert (un.noise_size, un.noise_lambda, un.noise_lr, un.noise_steps) == (256, 0.1, 0.1, 40)
    assert (un.lr, un.repair_lr, un.batch_size, un.retain_per_class) == (0.02, 0.01, 256, 1000)
    for name in DIGITS_OVERRIDES:
        assert name in fg.available_methods()


@pytest.mark.parametrize(
    "name,field,value,exc",
    [
        ("scrub", "temperature", 0.0, ValueError),
        ("scrub", "forget_batch_size", 0, ValueError),
        ("scrub", "alpha", "x", TypeError),
        ("bad_teacher", "retain_fraction", 1.5, ValueError),
        ("bad_teacher", "incompetent_seed", 1.5, TypeError),
        ("salun", "mask_ratio", 0.0, ValueError),
        ("unsir", "noise_size", 0, ValueError),
        ("unsir", "noise_lambda", float("nan"), ValueError),
    ],
)
def test_bad_config_values(name, field, value, exc):
    _, cls = get_method(name)
    with pytest.raises(exc, match=field):
        cls(**{field: value})


@pytest.mark.parametrize("name", sorted(DIGITS_OVERRIDES))
def test_bad_inputs(one_class, name):
    s = one_class
    fn, cls = get_method(name)
    with pytest.raises(TypeError, match="config"):
        fn(s.original, torch.utils.data.TensorDataset(*s.forget),
           torch.utils.data.TensorDataset(*s.retain), fg.ForgetConfig())
    with pytest.raises(TypeError, match="model"):
        run_method(name, "not a model", s.forget, s.retain)
    xf, yf = s.forget
    with pytest.raises(ValueError, match="forget"):
        run_method(name, s.original, (xf, yf[:-1]), s.retain)
    with pytest.raises(ValueError, match="forget"):
        run_method(name, s.original, (xf[:0], yf[:0]), s.retain)


def test_unsir_rejects_out_of_range_forget_labels(one_class):
    s = one_class
    xf, yf = s.forget
    with pytest.raises(ValueError, match="forget: label 12 is out of range"):
        run_method("unsir", s.original, (xf, torch.full_like(yf, 12)), s.retain)



def test_progress_bar_is_opt_in(one_class, capfd):
    s = one_class
    run_method("scrub", s.original, s.forget, s.retain, epochs=1)
    assert "scrub" not in capfd.readouterr().err
    run_method("scrub", s.original, s.forget, s.retain, epochs=1, progress=True)
    assert "scrub" in capfd.readouterr().err


@pytest.mark.parametrize("name", sorted(DIGITS_OVERRIDES))
def test_registered_function_accepts_tensor_pairs(one_class, name):
    # the registered function itself (not only run_method) validates and converts its data
    s = one_class
    fn, cls = get_method(name)
    cfg = cls(**{**DIGITS_OVERRIDES[name], "epochs": 1})
    a = fn(s.original, s.forget, s.retain, cfg)
    b = run_method(name, s.original, s.forget, s.retain, config=cfg)
    assert same_state(a, state_copy(b))
    xf, yf = s.forget
    with pytest.raises(ValueError, match="forget"):
        fn(s.original, (xf, yf[:-1]), s.retain, cfg)
