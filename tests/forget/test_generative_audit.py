"""Audit of the methods that generate or use synthetic samples: UNSIR, Bad Teacher, anti-samples.

Each method is checked against a hand-written loop of the published algorithm (reference
note, sections 4-6) on a tiny float64 model, run full-batch so that the shuffling order
cannot matter: UNSIR's noise objective ``-CE(f(N), c) + lambda * mean_i ||N_i||^2``
(Adam) and its impair / repair phases (which data, which learning rate, fresh Adam each);
Bad Teacher's ``KL(teacher_T || student_T)`` with the incompetent teacher on forget rows and
the competent one on retain rows; the anti-sample fine-tune (Adam at ``lr * lr_scale`` on
anti-samples labelled with their forget class plus the retain subset). Further tests check
that the caller's global RNG, model, mode and data are left alone, that the seed alone
fixes the result (also for a model with dropout) and that bad arguments of
:func:`error_maximizing_noise` are refused with an error naming them.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastunlearn.forget.antisamples as antisamples_mod
import fastunlearn.forget.unsir as unsir_mod
from fastunlearn.forget import (
    AntiSampleConfig,
    BadTeacherConfig,
    UnsirConfig,
    error_maximizing_noise,
    generate_antisamples,
    run_method,
)
from fastunlearn.forget._common_b import reinitialize, train_ce
from fastunlearn.forget.antisamples import antisamples_multi_class, antisamples_single_class
from fastunlearn.forget.bad_teacher import bad_teacher
from fastunlearn.forget.unsir import unsir

D, K = 4, 3
DT = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-10}

#: What ``Tiny.reset_parameters`` sets: a fixed, known "incompetent" network.
RESET_W = torch.tensor([[0.3, -0.2, 0.1, 0.0], [-0.1, 0.4, 0.0, 0.2], [0.0, 0.1, -0.3, 0.5]],
                       dtype=DT)


class Tiny(nn.Module):
    """A float64 linear classifier whose ``reset_parameters`` is deterministic (``RESET_W``)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(K, D, generator=g, dtype=DT))
        self.bias = nn.Parameter(torch.randn(K, generator=g, dtype=DT))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(RESET_W)
            self.bias.fill_(0.05)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def _data(n: int = 36, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.randn(n, D, generator=g, dtype=DT) + 1.5 * F.one_hot(y, D).to(DT)
    return x, y


def _split(x: Tensor, y: Tensor, classes: tuple[int, ...]):
    m = torch.isin(y, torch.tensor(classes))
    return (x[m], y[m]), (x[~m], y[~m])


def _params(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_params_close(a: nn.Module, b: nn.Module, **tol) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.detach(), pb.detach(), **(tol or TOL))


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max(float((pa - pb).detach().abs().max()) for pa, pb in pairs)


def _adam_full_batch(model: nn.Module, x: Tensor, y: Tensor, lr: float, epochs: int) -> None:
    """Published fine-tune: fresh Adam, mean cross-entropy, here one full batch per epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# --------------------------------------------------------------------------------------
# UNSIR
# --------------------------------------------------------------------------------------


def _hand_noise(model: nn.Module, c: int, n: int, steps: int, lr: float, lam: float,
                seed: int, sign: float = 1.0) -> Tensor:
    """UNSIR step 1 by hand: N ~ N(0, 1), Adam on -CE(f(N), c) + lam * mean_i ||N_i||^2."""
    noise = torch.randn((n, D), generator=torch.Generator().manual_seed(seed), dtype=DT)
    noise.requires_grad_(True)
    opt = torch.optim.Adam([noise], lr=lr)
    target = torch.full((n,), c)
    for _ in range(steps):
        reg = (noise * noise).sum(dim=1).mean()
        loss = -F.cross_entropy(model(noise), target) + sign * lam * reg
        opt.zero_grad()
        loss.backward()
        opt.step()
    return noise.detach()


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.0])
def test_error_maximizing_noise_is_the_published_adam_loop(lam):
    model = Tiny()
    got = error_maximizing_noise(model, 1, (D,), n=16, steps=25, lr=0.1, l2_weight=lam, seed=3,
                                 dtype=DT)
    want = _hand_noise(model, 1, 16, 25, 0.1, lam, seed=3)
    torch.testing.assert_close(got, want, **TOL)
    if lam > 0:  # the regulariser is really there and has the published sign
        wrong = _hand_noise(model, 1, 16, 25, 0.1, lam, seed=3, sign=-1.0)
        assert float((got - wrong).abs().max()) > 1e-3
        none = _hand_noise(model, 1, 16, 25, 0.1, 0.0, seed=3)
        assert float((got - none).abs().max()) > 1e-3


def test_error_maximizing_noise_uses_eval_mode_and_leaves_the_model_alone():
    # batch norm: in train mode the batch statistics (and running stats) would be used
    model = nn.Sequential(nn.Linear(D, 5, dtype=DT), nn.BatchNorm1d(5, dtype=DT),
                          nn.Linear(5, K, dtype=DT))
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model.train()
    before = copy.deepcopy(model.state_dict())
    got = error_maximizing_noise(model, 2, (D,), n=8, steps=10, lr=0.1, l2_weight=0.1, seed=0,
                                 dtype=DT)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())
    ref = copy.deepcopy(model).eval()
    torch.testing.assert_close(got, _hand_noise(ref, 2, 8, 10, 0.1, 0.1, seed=0), **TOL)


@pytest.mark.parametrize(
    "kw,exc,name",
    [
        ({"l2_weight": float("nan")}, ValueError, "l2_weight"),
        ({"l2_weight": -0.1}, ValueError, "l2_weight"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"lr": "fast"}, TypeError, "lr"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": True}, TypeError, "seed"),
        ({"dtype": torch.long}, TypeError, "dtype"),
        ({"target_class": 3}, ValueError, "target_class"),
        ({"shape": (0,)}, ValueError, "shape"),
        ({"shape": "ab"}, TypeError, "shape"),
    ],
)
def test_error_maximizing_noise_rejects_bad_arguments(kw, exc, name):
    args = {"target_class": 1, "shape": (D,), "n": 4, "steps": 2, "dtype": DT, **kw}
    target, shape = args.pop("target_class"), args.pop("shape")
    with pytest.raises(exc, match=name):
        error_maximizing_noise(Tiny(), target, shape, **args)


@pytest.mark.parametrize("classes", [(0,), (0, 2)])
def test_unsir_is_noise_then_impair_then_repair(monkeypatch, classes):
    x, y = _data()
    forget, retain = _split(x, y, classes)
    model = Tiny()
    cfg = UnsirConfig(noise_size=6, noise_steps=7, noise_lr=0.05, noise_lambda=0.3, lr=0.03,
                      repair_lr=0.007, epochs=3, repair_epochs=2, batch_size=256,
                      retain_per_class=1000, seed=4)
    calls = []
    real = unsir_mod.error_maximizing_noise

    def spy(m, c, shape, **kw):
        out = real(m, c, shape, **kw)
        calls.append((c, shape, kw, out.clone()))
        return out

    monkeypatch.setattr(unsir_mod, "error_maximizing_noise", spy)
    new = unsir(model, forget, retain, cfg)

    assert [c for c, *_ in calls] == list(classes)
    for c, shape, kw, noise in calls:
        assert shape == (D,)
        assert (kw["n"], kw["steps"], kw["lr"], kw["l2_weight"]) == (6, 7, 0.05, 0.3)
        # the noise is error-maximising for the class it is labelled with, from the model
        torch.testing.assert_close(
            noise, _hand_noise(model, c, 6, 7, 0.05, 0.3, seed=kw["seed"]), **TOL)
    assert len({kw["seed"] for *_, kw, _ in calls}) == len(classes)

    hand = copy.deepcopy(model)
    noise_x = torch.cat([nz for *_, nz in calls])
    noise_y = torch.cat([torch.full((6,), c) for c, *_ in calls])
    xr, yr = retain  # retain_per_class above every class count: the whole retain set
    _adam_full_batch(hand, torch.cat([noise_x, xr]), torch.cat([noise_y, yr]), 0.03, 3)
    _adam_full_batch(hand, xr, yr, 0.007, 2)  # repair: a fresh Adam on retain only
    _assert_params_close(new, hand)

    # the test can tell the published noise labels from the notebook's bug (label 0)
    if classes != (0,):
        bug = copy.deepcopy(model)
        _adam_full_batch(bug, torch.cat([noise_x, xr]),
                         torch.cat([torch.zeros_like(noise_y), yr]), 0.03, 3)
        _adam_full_batch(bug, xr, yr, 0.007, 2)
        assert _max_diff(new, bug) > 1e-4


def test_unsir_subset_keeps_retain_per_class_of_every_class(monkeypatch):
    x, y = _data(n=60)
    forget, retain = _split(x, y, (1,))
    seen = {}
    real = unsir_mod.train_ce

    def spy(model, inputs, labels, opt, **kw):
        seen.setdefault(kw["desc"], (inputs.clone(), labels.clone(), opt.param_groups[0]["lr"],
                                     kw["epochs"]))
        return real(model, inputs, labels, opt, **kw)

    monkeypatch.setattr(unsir_mod, "train_ce", spy)
    unsir(Tiny(), forget, retain, UnsirConfig(noise_size=5, noise_steps=1, retain_per_class=7))
    xr_sub, yr_sub, lr, epochs = seen["unsir repair"]
    assert (lr, epochs) == (0.01, 1)
    assert torch.bincount(yr_sub, minlength=K).tolist() == [7, 0, 7]
    # distinct rows of the caller's retain set, with their own labels
    rows = [int(torch.nonzero((retain[0] == r).all(1)).flatten()[0]) for r in xr_sub]
    assert len(set(rows)) == 14 and torch.equal(retain[1][rows], yr_sub)
    xi, yi, lr_i, ep_i = seen["unsir impair"]
    assert (lr_i, ep_i) == (0.02, 1)
    assert torch.equal(xi[5:], xr_sub) and torch.equal(yi, torch.cat([torch.ones(5).long(),
                                                                      yr_sub]))


# --------------------------------------------------------------------------------------
# Bad Teacher
# --------------------------------------------------------------------------------------


def _hand_bad_teacher(model: nn.Module, xf: Tensor, xr: Tensor, *, lr: float, epochs: int,
                      T: float, reverse: bool = False) -> nn.Module:
    """Published Bad Teacher, full batch: KL(teacher_T || student_T), teacher by flag."""
    student, good = copy.deepcopy(model), copy.deepcopy(model)
    bad = copy.deepcopy(model)
    bad.reset_parameters()  # Tiny: the known incompetent network
    x = torch.cat([xf, xr])
    is_forget = torch.cat([torch.ones(xf.shape[0]), torch.zeros(xr.shape[0])]).bool()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for _ in range(epochs):
        with torch.no_grad():
            p_t = torch.where(is_forget[:, None], torch.softmax(bad(x) / T, 1),
                              torch.softmax(good(x) / T, 1))
        log_s = torch.log_softmax(student(x) / T, 1)
        if reverse:
            kl = (log_s.exp() * (log_s - p_t.log())).sum(1)
        else:
            kl = (p_t * (p_t.log() - log_s)).sum(1)
        opt.zero_grad()
        kl.mean().backward()
        opt.step()
    return student


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_bad_teacher_is_the_published_distillation(T):
    x, y = _data()
    forget, retain = (x[:8], y[:8]), (x[8:], y[8:])
    model = Tiny(seed=1)
    cfg = BadTeacherConfig(lr=0.05, epochs=4, batch_size=64, temperature=T, retain_fraction=1.0)
    new = bad_teacher(model, forget, retain, cfg)
    want = _hand_bad_teacher(model, forget[0], retain[0], lr=0.05, epochs=4, T=T)
    _assert_params_close(new, want, rtol=1e-7, atol=1e-9)
    # the comparison can fail: the reverse KL, or another temperature, gives another model
    rev = _hand_bad_teacher(model, forget[0], retain[0], lr=0.05, epochs=4, T=T, reverse=True)
    assert _max_diff(new, rev) > 1e-4
    other_t = _hand_bad_teacher(model, forget[0], retain[0], lr=0.05, epochs=4, T=T + 1.5)
    assert _max_diff(new, other_t) > 1e-4


def test_bad_teacher_retain_fraction_uses_a_subset():
    # with a 0.5 subset, the run equals the hand loop on *some* 14 of the 28 retain rows,
    # which differs from the run on all of them
    x, y = _data()
    forget, retain = (x[:8], y[:8]), (x[8:], y[8:])
    model = Tiny(seed=1)
    half = bad_teacher(model, forget, retain, BadTeacherConfig(
        lr=0.05, epochs=3, batch_size=64, retain_fraction=0.5))
    full = _hand_bad_teacher(model, forget[0], retain[0], lr=0.05, epochs=3, T=1.0)
    assert _max_diff(half, full) > 1e-5


def test_bad_teacher_incompetent_seed_defaults_to_seed_plus_one():
    # nn.Linear: the incompetent teacher is a random re-draw, so its seed changes the result
    x, y = _data()
    forget, retain = (x[:8], y[:8]), (x[8:], y[8:])
    model = nn.Linear(D, K, dtype=DT)

    def run(**kw):
        return bad_teacher(model, forget, retain, BadTeacherConfig(
            lr=0.05, epochs=2, batch_size=64, seed=5, **kw))

    default, explicit, other = run(), run(incompetent_seed=6), run(incompetent_seed=9)
    _assert_params_close(default, explicit, rtol=0, atol=0)
    assert _max_diff(default, other) > 1e-4


# --------------------------------------------------------------------------------------
# Anti-samples
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("single", [True, False])
def test_antisample_unlearning_is_generate_then_adam_finetune(monkeypatch, single):
    x, y = _data(n=45)
    classes = (1,) if single else (0, 2)
    forget, retain = _split(x, y, classes)
    model = Tiny(seed=2)
    cfg = AntiSampleConfig(epochs=3, lr=1e-3, lr_scale=20.0, batch_size=512, retain_fraction=1.0,
                           tail_randomized=3, local_variance=0.5, p=0.8, eps=0.02, seed=1)
    calls = []
    real = antisamples_mod.generate_antisamples

    def spy(f, r, **kw):
        out = real(f, r, **kw)
        calls.append((f.clone(), r.clone(), kw, out.samples.clone()))
        return out

    monkeypatch.setattr(antisamples_mod, "generate_antisamples", spy)
    fn = antisamples_single_class if single else antisamples_multi_class
    new = fn(model, forget, retain, cfg)

    xf, yf = forget
    xr, yr = retain
    assert len(calls) == len(classes)
    per_class = xr.shape[0] // (K - len(classes))  # balanced retain classes
    anti_x, anti_y = [], []
    for c, (f, r, kw, samples) in zip(classes, calls, strict=True):
        torch.testing.assert_close(f, xf[yf == c], rtol=0, atol=0)
        # single-class: the other classes of the subset (here all of retain); multi: all
        torch.testing.assert_close(r, xr, rtol=0, atol=0)
        assert kw["n_generated"] == per_class and samples.shape == (per_class, D)
        assert (kw["tail_randomized"], kw["local_variance"], kw["p"], kw["eps"]) == (
            3, 0.5, 0.8, 0.02)
        assert kw["size_multiplier"] == 1 and kw["convex_combination"] is True
        anti_x.append(samples)
        anti_y.append(torch.full((per_class,), c))

    hand = copy.deepcopy(model)
    _adam_full_batch(hand, torch.cat([*anti_x, xr]), torch.cat([*anti_y, yr]), 20.0 * 1e-3, 3)
    _assert_params_close(new, hand, rtol=1e-7, atol=1e-9)
    slow = copy.deepcopy(model)  # the lr scale is applied
    _adam_full_batch(slow, torch.cat([*anti_x, xr]), torch.cat([*anti_y, yr]), 1e-3, 3)
    assert _max_diff(new, slow) > 1e-3


def test_antisample_default_count_is_the_retain_subset_per_class(monkeypatch):
    x, y = _data(n=60)
    forget, retain = _split(x, y, (0,))
    counts = []
    real = antisamples_mod.generate_antisamples

    def spy(f, r, **kw):
        counts.append((r.shape[0], kw["n_generated"]))
        return real(f, r, **kw)

    monkeypatch.setattr(antisamples_mod, "generate_antisamples", spy)
    antisamples_single_class(Tiny(), forget, retain, AntiSampleConfig(epochs=1,
                                                                      retain_fraction=0.3))
    # 20 per retain class, floor(0.3 * 20) = 6 kept of each: pool 12, 6 anti-samples
    assert counts == [(12, 6)]


def test_generator_draws_are_brute_force_far_neighbours_and_pool_rows():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, D, generator=g, dtype=DT)
    r = torch.randn(17, D, generator=g, dtype=DT)
    out = generate_antisamples(f, r, tail_randomized=4, convex_combination=False, n_generated=40,
                               size_multiplier=3, seed=2)
    d = ((f[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    top4 = d.argsort(1, descending=True)[:, :4]
    for s, j in zip(out.source.tolist(), out.neighbours.tolist(), strict=True):
        assert j in top4[s].tolist()
    # without convex combination, n_generated draws rows of the pool
    pool = out.pool
    for row in out.samples:
        assert bool((pool == row).all(1).any())


# --------------------------------------------------------------------------------------
# RNG, seeds, modes and the caller's objects
# --------------------------------------------------------------------------------------


class DropNet(nn.Module):
    """A float64 MLP with dropout: its training draws from the global generator."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.l1 = nn.Linear(D, 8, dtype=DT)
        self.drop = nn.Dropout(0.5)
        self.l2 = nn.Linear(8, K, dtype=DT)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=DT))

    def forward(self, x: Tensor) -> Tensor:
        return self.l2(self.drop(torch.relu(self.l1(x.flatten(1)))))


TINY_RUNS = {
    "unsir": {"noise_size": 6, "noise_steps": 3, "retain_per_class": 50, "batch_size": 8},
    "bad_teacher": {"batch_size": 8, "lr": 0.01},
    "antisamples": {"n_generated": 6, "epochs": 2, "batch_size": 8, "lr_scale": 10.0},
    "antisamples_multiclass": {"n_generated": 6, "epochs": 2, "batch_size": 8},
}


@pytest.mark.parametrize("name", sorted(TINY_RUNS))
def test_dropout_model_seed_fixes_the_result_and_global_rng_is_untouched(name):
    x, y = _data()
    forget, retain = _split(x, y, (0,))
    model = DropNet().eval()
    xs = [t.clone() for t in (*forget, *retain)]
    state = copy.deepcopy(model.state_dict())

    torch.manual_seed(11)
    rng = torch.get_rng_state()
    a = run_method(name, model, forget, retain, seed=3, **TINY_RUNS[name])
    assert torch.equal(torch.get_rng_state(), rng), "the caller's global RNG was advanced"
    torch.manual_seed(12)  # another global state: the same seed must give the same model
    b = run_method(name, model, forget, retain, seed=3, **TINY_RUNS[name])
    _assert_params_close(a, b, rtol=0, atol=0)
    c = run_method(name, model, forget, retain, seed=4, **TINY_RUNS[name])
    assert _max_diff(a, c) > 0

    # the caller's model (state and eval mode) and data are untouched; the result is in eval
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for before, now in zip(xs, (*forget, *retain), strict=True):
        assert torch.equal(before, now)
    assert not any(m.training for m in a.modules())


def test_train_ce_leaves_the_global_rng_alone():
    model = DropNet()
    x, y = _data()
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_ce(model, x, y, opt, epochs=2, batch_size=8, seed=1, progress=False, desc="t")
    assert torch.equal(torch.get_rng_state(), rng)


def test_reinitialize_is_seeded_and_leaves_the_global_rng_alone():
    a = nn.Linear(D, K)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    reinitialize(a, 7)
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's documented init after the seed
        torch.manual_seed(7)
        want = nn.Linear(D, K)
    torch.testing.assert_close(a.weight, want.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.bias, want.bias, rtol=0, atol=0)


@pytest.mark.cuda
def test_reinitialize_on_cuda_leaves_the_cuda_rng_alone():
    a, b = nn.Linear(D, K).cuda(), nn.Linear(D, K).cuda()
    torch.cuda.manual_seed(0)
    rng = torch.cuda.get_rng_state()
    reinitialize(a, 7)
    reinitialize(b, 7)
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


@pytest.mark.cuda
def test_bad_teacher_on_cuda_leaves_the_cuda_rng_alone():
    x, y = _data()
    model = DropNet().cuda()
    torch.cuda.manual_seed(0)
    rng = torch.cuda.get_rng_state()
    run_method("bad_teacher", model, (x[:8].cuda(), y[:8].cuda()), (x[8:].cuda(), y[8:].cuda()),
               batch_size=8)
    assert torch.equal(torch.cuda.get_rng_state(), rng)
