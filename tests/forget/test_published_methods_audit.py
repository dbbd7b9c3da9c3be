"""FT, GA, NegGrad+, l1-sparse, Fisher, RL, SalUn, SCRUB, retrain and IU against the papers.

Every method is run on a tiny float64 softmax-regression problem with full batches (so
the shuffling order cannot matter) and compared with an independent computation: a
hand-written loop of the published algorithm with a hand-written SGD update (PyTorch's
convention: ``d = g + wd * theta``, ``buf = mu * buf + d``, Nesterov ``d + mu * buf``), a
closed form (the Fisher diagonal and the saliency gradient of a linear model, the Newton
step of influence unlearning) or a brute force over the possible random labels (SalUn).
The reference is ``/work/shared/reference/forgetting_and_evaluation.md`` sections 1 and 6.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastunlearn.forget as fg
from fastunlearn.forget import get_method, run_method
from fastunlearn.forget.fisher import fisher_diagonal

TOL = {"rtol": 1e-10, "atol": 1e-12}

# --- data and a functional linear model --------------------------------------------------


def _problem(n: int = 30, d: int = 5, k: int = 3, n_forget: int = 6, seed: int = 0):
    """Float64 rows; the first ``n_forget`` are the forget set."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)  # every class present
    return (x[:n_forget], y[:n_forget]), (x[n_forget:], y[n_forget:])


def _linear(d: int = 5, k: int = 3, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(0.5 * torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(0.1 * torch.randn(k, generator=g, dtype=torch.float64))
    return lin


def _ce(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(x @ w.T + b, y)


class HandSGD:
    """SGD written out (no ``torch.optim``), over a list of leaf tensors."""

    def __init__(self, params: Sequence[Tensor], *, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = False) -> None:
        self.params = list(params)
        self.momentum, self.wd, self.nesterov = momentum, weight_decay, nesterov
        self.bufs: list[Tensor | None] = [None] * len(self.params)

    def step(self, loss: Tensor, lr: float,
             masks: Sequence[Tensor] | None = None) -> None:
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
                d = g + self.wd * p
                buf = self.bufs[i]
                buf = d.clone() if buf is None else self.momentum * buf + d
                self.bufs[i] = buf
                step = d + self.momentum * buf if self.nesterov else buf
                if masks is not None:  # SalUn: only salient weights (and momentum) move
                    step = step * masks[i]
                p -= lr * step


def _leaves(model: nn.Linear) -> tuple[Tensor, Tensor]:
    return (model.weight.detach().clone().requires_grad_(True),
            model.bias.detach().clone().requires_grad_(True))


def _hand_train(model: nn.Linear, loss_of_epoch: Callable[[Tensor, Tensor, int], Tensor],
                lrs: Sequence[float], *, nesterov: bool, steps_per_epoch: int = 1,
                momentum: float = 0.9, weight_decay: float = 5e-4) -> tuple[Tensor, Tensor]:
    w, b = _leaves(model)
    opt = HandSGD([w, b], momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for epoch, lr in enumerate(lrs):
        for _ in range(steps_per_epoch):
            opt.step(loss_of_epoch(w, b, epoch), lr)
    return w.detach(), b.detach()


def _assert_weights(new: nn.Module, w: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(new.weight.detach(), w, **TOL)
    torch.testing.assert_close(new.bias.detach(), b, **TOL)


def _far(new: nn.Module, w: Tensor, b: Tensor) -> bool:
    return bool((new.weight.detach() - w).abs().max() > 1e-6
                or (new.bias.detach() - b).abs().max() > 1e-6)


def _defaults(name: str):
    """The config a method runs with when none is given (its published settings)."""
    return get_method(name)[1]()


BIG = 1024  # a batch larger than every set: one full batch per pass


# --- FT -----------------------------------------------------------------------------------


def test_finetune_is_nesterov_sgd_on_the_retain_set_only():
    forget, retain = _problem()
    model = _linear()
    new = run_method("finetune", model, forget, retain, lr=0.2, epochs=4, batch_size=BIG)
    w, b = _hand_train(model, lambda w, b, e: _ce(w, b, *retain), [0.2] * 4, nesterov=True)
    _assert_weights(new, w, b)
    # the forget set is not used: other forget rows give the same model
    other = (forget[0] + 3.0, forget[1])
    _assert_weights(run_method("finetune", model, other, retain, lr=0.2, epochs=4,
                               batch_size=BIG), w, b)
    # Seed A's finetune: lr 1e-3, 5 epochs, SGD momentum 0.9 Nesterov, wd 5e-4, batch 128
    c = _defaults("finetune")
    assert (c.lr, c.epochs, c.momentum, c.nesterov, c.weight_decay, c.batch_size,
            c.scheduler) == (1e-3, 5, 0.9, True, 5e-4, 128, "none")


# --- GA / NegGrad / NegGrad+ ----------------------------------------------------------------


def test_neggrad_is_gradient_ascent_on_the_forget_set_only():
    forget, retain = _problem()
    model = _linear()
    new = run_method("neggrad", model, forget, retain, lr=0.1, epochs=3, batch_size=BIG)
    w, b = _hand_train(model, lambda w, b, e: -_ce(w, b, *forget), [0.1] * 3, nesterov=False)
    _assert_weights(new, w, b)
    # descending instead of ascending gives another model (the sign is tested)
    wd, bd = _hand_train(model, lambda w, b, e: _ce(w, b, *forget), [0.1] * 3, nesterov=False)
    assert _far(new, wd, bd)
    # the retain set is not used
    other = (retain[0] - 2.0, retain[1])
    _assert_weights(run_method("neggrad", model, forget, other, lr=0.1, epochs=3,
                               batch_size=BIG), w, b)
    # Unlearn-Sparse GA: lr 1e-4, 5 epochs, batch 256, SGD momentum 0.9 (no Nesterov), wd 5e-4
    c = _defaults("neggrad")
    assert (c.lr, c.epochs, c.batch_size, c.momentum, c.nesterov, c.weight_decay) == (
        1e-4, 5, 256, 0.9, False, 5e-4)


def test_neggrad_plus_descends_beta_retain_minus_one_minus_beta_forget():
    forget, retain = _problem()
    model = _linear()
    beta = 0.7
    new = run_method("neggrad_plus", model, forget, retain, lr=0.1, epochs=3, beta=beta,
                     batch_size=BIG, forget_batch_size=BIG)

    def loss(w: Tensor, b: Tensor, _: int) -> Tensor:
        return beta * _ce(w, b, *retain) - (1 - beta) * _ce(w, b, *forget)

    w, b = _hand_train(model, loss, [0.1] * 3, nesterov=False)
    _assert_weights(new, w, b)


def test_neggrad_plus_cycles_the_forget_loader_once_per_retain_step():
    # 24 retain rows in batches of 12: 2 steps per epoch, each with the whole forget set
    forget, retain = _problem()
    model = _linear()
    beta = 0.5
    new = run_method("neggrad_plus", model, forget, retain, lr=0.1, epochs=1, beta=beta,
                     batch_size=24, forget_batch_size=BIG)

    def loss(w: Tensor, b: Tensor, _: int) -> Tensor:
        return beta * _ce(w, b, *retain) - (1 - beta) * _ce(w, b, *forget)

    w, b = _hand_train(model, loss, [0.1], nesterov=False)
    _assert_weights(new, w, b)


# --- l1-sparse -----------------------------------------------------------------------------


@pytest.mark.parametrize("include_bias", [True, False])
def test_l1_sparse_full_batch_loop_with_linearly_decayed_gamma(include_bias):
    forget, retain = _problem()
    model = _linear()
    alpha, epochs, lr = 0.05, 4, 0.1
    new = run_method("l1_sparse", model, forget, retain, lr=lr, epochs=epochs, alpha=alpha,
                     include_bias=include_bias, batch_size=BIG)

    def hand(with_bias: bool) -> tuple[Tensor, Tensor]:
        def loss(w: Tensor, b: Tensor, t: int) -> Tensor:
            gamma_t = alpha * (1 - t / epochs)  # alpha at t = 0, -> 0 linearly
            l1 = w.abs().sum() + (b.abs().sum() if with_bias else 0.0)
            return _ce(w, b, *retain) + gamma_t * l1

        # l1-sparse inherits the shared SGD config (Nesterov on)
        return _hand_train(model, loss, [lr] * epochs, nesterov=True)

    _assert_weights(new, *hand(include_bias))
    assert _far(new, *hand(not include_bias))  # the bias switch matters
    c = _defaults("l1_sparse")
    assert (c.lr, c.epochs, c.scheduler) == (0.01, 10, "none")  # OPTML FT_prune / FT_l1


# --- random labels (Seed A's poison, poison_full, two_stage) -------------------------------
# With two classes and ``other_classes=True`` the random label is forced: 1 - y.


def _two_class_problem():
    return _problem(n=24, d=4, k=2, n_forget=6, seed=3)


def test_random_labels_trains_on_the_relabelled_forget_set_only():
    forget, retain = _two_class_problem()
    model = _linear(4, 2)
    new = run_method("random_labels", model, forget, retain, lr=0.3, epochs=3,
                     other_classes=True, batch_size=BIG)
    flipped = (forget[0], 1 - forget[1])
    w, b = _hand_train(model, lambda w, b, e: _ce(w, b, *flipped), [0.3] * 3, nesterov=True)
    _assert_weights(new, w, b)
    c = _defaults("random_labels")
    assert (c.lr, c.epochs, c.other_classes) == (7e-4, 1, False)


def test_poison_full_trains_on_retain_and_relabelled_forget_with_cosine_lr():
    forget, retain = _two_class_problem()
    model = _linear(4, 2)
    lr, epochs = 0.3, 4
    new = run_method("poison_full", model, forget, retain, lr=lr, epochs=epochs,
                     other_classes=True, batch_size=BIG)
    x = torch.cat([retain[0], forget[0]])
    y = torch.cat([retain[1], 1 - forget[1]])
    lrs = [lr * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    w, b = _hand_train(model, lambda w, b, e: _ce(w, b, x, y), lrs, nesterov=True)
    _assert_weights(new, w, b)
    assert _far(new, *_hand_train(model, lambda w, b, e: _ce(w, b, x, y), [lr] * epochs,
                                  nesterov=True))
    c = _defaults("poison_full")
    assert (c.lr, c.epochs, c.scheduler) == (2e-3, 5, "cosine")


def test_two_stage_is_relabelled_forget_stage_then_a_fresh_retain_stage():
    forget, retain = _two_class_problem()
    model = _linear(4, 2)
    new = run_method("two_stage", model, forget, retain, forget_lr=0.3, forget_epochs=2,
                     lr=0.1, epochs=3, other_classes=True, batch_size=BIG)
    flipped = (forget[0], 1 - forget[1])
    w1, b1 = _hand_train(model, lambda w, b, e: _ce(w, b, *flipped), [0.3] * 2, nesterov=True)
    stage1 = _linear(4, 2)
    with torch.no_grad():
        stage1.weight.copy_(w1)
        stage1.bias.copy_(b1)
    # stage 2 starts a new optimiser (no momentum carried over from stage 1)
    w, b = _hand_train(stage1, lambda w, b, e: _ce(w, b, *retain), [0.1] * 3, nesterov=True)
    _assert_weights(new, w, b)
    c = _defaults("two_stage")
    assert (c.forget_lr, c.forget_epochs, c.lr, c.epochs) == (1e-2, 1, 1e-3, 5)


# --- retrain -------------------------------------------------------------------------------


def test_retrain_is_a_seeded_reinit_then_multistep_sgd_on_retain():
    forget, retain = _problem()
    model = _linear()
    lr, gamma = 0.2, 0.5
    new = run_method("retrain", model, forget, retain, lr=lr, epochs=3, milestones=(1, 2),
                     gamma=gamma, batch_size=BIG, seed=4)
    fresh = nn.Linear(5, 3).double()
    with torch.random.fork_rng():
        torch.manual_seed(4)
        fresh.reset_parameters()
    w, b = _hand_train(fresh, lambda w, b, e: _ce(w, b, *retain), [lr, lr * gamma,
                                                                    lr * gamma**2],
                       nesterov=True)
    _assert_weights(new, w, b)
    c = _defaults("retrain")
    assert (c.lr, c.epochs, c.scheduler, c.milestones, c.gamma) == (
        0.1, 100, "multistep", (35, 70, 90), 0.1)


# --- Fisher forgetting ---------------------------------------------------------------------


def _closed_form_fisher(model: nn.Linear, x: Tensor, y: Tensor, kind: str):
    """Summed diagonal Fisher of softmax regression: d log p(c|x) / dW[j] = (1[j=c] - p_j) x."""
    with torch.no_grad():
        p = torch.softmax(x @ model.weight.T + model.bias, 1)  # [n, K]
        k = p.shape[1]
        eye = torch.eye(k, dtype=p.dtype)
        # r[i, c, j] = (1[j = c] - p_ij)^2 for the label c
        r = (eye.unsqueeze(0) - p.unsqueeze(1)) ** 2  # [n, c, j]
        if kind == "empirical":
            coef = r[torch.arange(len(y)), y]  # [n, j]
        else:
            coef = (p.unsqueeze(2) * r).sum(1)  # sum_c p_ic (1[j=c] - p_ij)^2
        fw = torch.einsum("ij,id->jd", coef, x**2)
        fb = coef.sum(0)
    return fw, fb


@pytest.mark.parametrize("kind", ["empirical", "expected"])
def test_fisher_diagonal_matches_the_softmax_regression_closed_form(kind):
    _, retain = _problem()
    model = _linear()
    got = fisher_diagonal(model, torch.utils.data.TensorDataset(*retain), batch_size=7,
                             kind=kind)
    fw, fb = _closed_form_fisher(model, *retain, kind)
    torch.testing.assert_close(got["weight"], fw, **TOL)
    torch.testing.assert_close(got["bias"], fb, **TOL)
    assert model.training  # the mode is restored


@pytest.mark.parametrize("kind", ["empirical", "expected"])
def test_fisher_noise_per_weight_variance_over_seeds(kind):
    # forget = class 2, absent from retain: its head row is zeroed and gets class_row_var
    _, (xr, yr) = _problem(n=40, n_forget=0)
    drop = yr == 2
    forget, retain = (xr[drop], yr[drop]), (xr[~drop], yr[~drop])
    model = _linear()
    fw, fb = _closed_form_fisher(model, *retain, kind)
    fisher = torch.cat([fw, fb.unsqueeze(1)], 1)
    max_var = 2e-3
    alpha = float(fisher.median()) * max_var  # about half of the entries are capped
    var = (alpha / (fisher + 1e-8)).clamp(max=max_var)
    row_var = 3e-4
    var[2] = row_var
    mean = torch.cat([model.weight, model.bias.unsqueeze(1)], 1).detach().clone()
    mean[2] = 0.0
    assert bool((var[:2] == max_var).any()) and bool((var[:2] < max_var).any())
    n = 300
    draws = []
    for seed in range(n):
        new = run_method("fisher", model, forget, retain, alpha=alpha, max_var=max_var,
                         fisher=kind, class_row_var=row_var, seed=seed)
        draws.append(torch.cat([new.weight, new.bias.unsqueeze(1)], 1).detach())
    d = torch.stack(draws)
    z = (d - mean) / var.sqrt()
    # mean 0 (5 standard errors), variance 1 (chi-square, n = 300: sd of the ratio ~0.08)
    assert float(z.mean(0).abs().max()) < 5 / math.sqrt(n)
    ratio = (z**2).mean(0)
    assert float(ratio.min()) > 0.6 and float(ratio.max()) < 1.5, ratio
    # the same seed gives the same noise
    a = run_method("fisher", model, forget, retain, alpha=alpha, seed=7)
    b = run_method("fisher", model, forget, retain, alpha=alpha, seed=7)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


# --- SalUn ---------------------------------------------------------------------------------


def _saliency(model: nn.Linear, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """|gradient of the summed CE| of softmax regression: sum_i (p_i - e_yi) [x_i, 1]."""
    with torch.no_grad():
        p = torch.softmax(x @ model.weight.T + model.bias, 1)
        r = p - F.one_hot(y, p.shape[1]).to(p.dtype)
        return (r.T @ x).abs(), r.sum(0).abs()


def test_saliency_mask_is_the_top_ratio_of_the_forget_gradient():
    forget, _ = _problem()
    model = _linear()
    gw, gb = _saliency(model, *forget)
    flat = torch.cat([gw.flatten(), gb])
    for ratio in (0.2, 0.5, 0.8):
        masks = fg.saliency_mask(model, forget, ratio, batch_size=4)
        k = round(ratio * flat.numel())
        want = torch.zeros_like(flat, dtype=torch.bool)
        want[torch.argsort(flat, descending=True)[:k]] = True
        got = torch.cat([masks["weight"].flatten(), masks["bias"]])
        assert torch.equal(got, want), ratio


def test_saliency_mask_keeps_the_ratio_when_many_gradients_are_zero():
    # a feature that is 0 in every forget row gives its 3 weights a zero gradient; with
    # mask_ratio 0.9 the threshold falls on those zeros, and keeping every tie made all
    # 18 weights salient
    forget, _ = _problem()
    x = forget[0].clone()
    x[:, 0] = 0.0
    model = _linear()
    masks = fg.saliency_mask(model, (x, forget[1]), 0.9)
    gw, gb = _saliency(model, x, forget[1])
    flat = torch.cat([gw.flatten(), gb])
    got = torch.cat([masks["weight"].flatten(), masks["bias"]])
    assert int((flat == 0).sum()) == 3
    assert int(got.sum()) == round(0.9 * 18)  # 16, not 18
    assert bool(got[flat > 0].all())  # every weight with a gradient is salient


@pytest.mark.parametrize("redraw", [True, False])
def test_salun_is_masked_random_label_training_on_forget_and_retain(redraw):
    # 2 forget rows, 3 classes, 3 epochs: the random labels of an epoch are one of 9
    # assignments; of the 9**3 hand-written runs with a free assignment per epoch exactly
    # one must give SalUn's model, and it keeps one assignment throughout unless the labels
    # are redrawn every epoch (the published loop)
    forget, retain = _problem(n=20, n_forget=2, seed=5)
    model = _linear()
    lr, epochs, ratio = 0.2, 3, 0.5
    new = run_method("salun", model, forget, retain, lr=lr, epochs=epochs, mask_ratio=ratio,
                     batch_size=BIG, seed=1, redraw_labels=redraw)
    gw, gb = _saliency(model, *forget)
    flat = torch.cat([gw.flatten(), gb])
    keep = torch.zeros_like(flat)
    keep[torch.argsort(flat, descending=True)[:round(ratio * flat.numel())]] = 1.0
    masks = [keep[:15].view(3, 5), keep[15:]]
    x = torch.cat([forget[0], retain[0]])

    def hand(per_epoch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        w, b = _leaves(model)
        opt = HandSGD([w, b], nesterov=False)
        for labels in per_epoch:
            opt.step(_ce(w, b, x, torch.cat([labels, retain[1]])), lr, masks)
        return w.detach(), b.detach()

    nw, nb = new.weight.detach(), new.bias.detach()
    assignments = [torch.tensor([a, c]) for a in range(3) for c in range(3)]
    errors = []
    for per_epoch in itertools.product(assignments, repeat=epochs):
        w, b = hand(per_epoch)
        err = max(float((nw - w).abs().max()), float((nb - b).abs().max()))
        errors.append((err, per_epoch))
    errors.sort(key=lambda e: e[0])
    assert errors[0][0] < 1e-10 and errors[1][0] > 1e-6, [e[0] for e in errors[:2]]
    drawn = errors[0][1]
    same_throughout = all(torch.equal(drawn[0], d) for d in drawn)
    assert same_throughout is not redraw, drawn
    # non-salient weights are exactly the originals
    assert torch.equal(new.weight.detach()[masks[0] == 0], model.weight.detach()[masks[0] == 0])
    c = _defaults("salun")
    assert (c.lr, c.epochs, c.mask_ratio, c.momentum, c.weight_decay, c.redraw_labels) == (
        0.013, 10, 0.5, 0.9, 5e-4, True)


# --- SCRUB ---------------------------------------------------------------------------------


def _kl_t_s(s: Tensor, t: Tensor, T: float) -> Tensor:
    """T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T)), written out."""
    pt = torch.softmax(t / T, 1)
    return T**2 * (pt * (pt.log() - torch.log_softmax(s / T, 1))).sum(1).mean()


def _kl_s_t(s: Tensor, t: Tensor, T: float) -> Tensor:
    return _kl_t_s(t, s, T)


def test_scrub_full_batch_loop_of_max_then_min_steps():
    forget, retain = _problem()
    model = _linear()
    cfg = {"epochs": 3, "max_steps": 2, "lr": 0.1, "alpha": 0.5, "gamma": 0.8,
           "temperature": 2.0, "lr_decay_epochs": (10,), "batch_size": BIG,
           "forget_batch_size": BIG}
    new = run_method("scrub", model, forget, retain, **cfg)
    w0, b0 = model.weight.detach(), model.bias.detach()

    def hand(kl: Callable[[Tensor, Tensor, float], Tensor], max_steps: int):
        w, b = _leaves(model)
        opt = HandSGD([w, b], nesterov=False)
        T = cfg["temperature"]
        for epoch in range(1, cfg["epochs"] + 1):
            if epoch <= max_steps:  # max step: forget set, minimise -KL to the teacher
                xf = forget[0]
                opt.step(-kl(xf @ w.T + b, xf @ w0.T + b0, T), cfg["lr"])
            xr, yr = retain  # min step: retain set, gamma * CE + alpha * KL
            s = xr @ w.T + b
            loss = cfg["gamma"] * F.cross_entropy(s, yr) + cfg["alpha"] * kl(
                s, xr @ w0.T + b0, T)
            opt.step(loss, cfg["lr"])
        return w.detach(), b.detach()

    _assert_weights(new, *hand(_kl_t_s, 2))
    assert _far(new, *hand(_kl_s_t, 2))  # the KL direction matters
    assert _far(new, *hand(_kl_t_s, 3))  # max steps only in the first max_steps epochs


# --- the caller's model, mode and RNG; seeds -----------------------------------------------

SMALL: dict[str, dict] = {
    "finetune": {"epochs": 1},
    "neggrad": {"epochs": 1, "lr": 0.01},
    "neggrad_plus": {"epochs": 1},
    "l1_sparse": {"epochs": 1},
    "random_labels": {"epochs": 1},
    "poison_full": {"epochs": 1},
    "two_stage": {"epochs": 1},
    "retrain": {"epochs": 1},
    "fisher": {},
    "salun": {"epochs": 1},
    "scrub": {"epochs": 1, "lr": 0.05},
    "influence": {"on_divergence": "keep"},
}


def _dropout_mlp() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_caller_model_mode_and_rng_are_untouched_and_the_seed_decides(name, training):
    forget, retain = _problem()
    forget, retain = (forget[0].float(), forget[1]), (retain[0].float(), retain[1])
    model = _dropout_mlp().train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    a = run_method(name, model, forget, retain, seed=3, **SMALL[name])
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's generator did not move
    assert all(m.training == training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m.training for m in a.modules())
    torch.manual_seed(999)  # another global state: the method's own seed decides
    b = run_method(name, model, forget, retain, seed=3, **SMALL[name])
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


# --- bad config values name the field ------------------------------------------------------


@pytest.mark.parametrize(
    "name,field,value,exc",
    [
        ("finetune", "nesterov", "x", TypeError),
        ("random_labels", "other_classes", "no", TypeError),
        ("poison_full", "other_classes", 1, TypeError),
        ("two_stage", "other_classes", "yes", TypeError),
        ("l1_sparse", "include_bias", "yes", TypeError),
        ("l1_sparse", "alpha", -1.0, ValueError),
        ("fisher", "forget_class_rows", 1, TypeError),
        ("fisher", "fisher", "true", ValueError),
        ("neggrad_plus", "forget_batch_size", True, TypeError),
        ("neggrad_plus", "beta", 1.5, ValueError),
        ("influence", "retain_fraction", "0.5", TypeError),
        ("influence", "retain_fraction", None, TypeError),
        ("influence", "retain_fraction", 0.0, ValueError),
        ("salun", "mask_ratio", 1.5, ValueError),
        ("scrub", "max_steps", -1, ValueError),
    ],
)
def test_bad_config_values_are_refused_naming_the_field(name, field, value, exc):
    _, cls = get_method(name)
    with pytest.raises(exc, match=field):
        cls(**{field: value})


# --- influence unlearning ------------------------------------------------------------------


def _trained_linear(forget, retain) -> nn.Linear:
    model = _linear()
    x, y = torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + 1e-3 * model.weight.pow(2).sum()).backward()
        opt.step()
    return model


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_influence_is_one_damped_newton_step_on_the_retain_loss(solver):
    forget, retain = _problem()
    model = _trained_linear(forget, retain)
    damping, scale = 0.3, 0.7
    tight = {"tol": 1e-12} if solver == "cg" else {}  # direct has no tolerance (it warns)
    new = run_method("influence", model, forget, retain, solver=solver, damping=damping,
                     scale=scale, loss_tolerance=100.0, **tight)
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])

    def summed(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
        w, b = th[:15].view(3, 5), th[15:]
        return F.cross_entropy(x @ w.T + b, y, reduction="sum")

    H = torch.autograd.functional.hessian(lambda th: summed(th, *retain), theta)
    g = torch.autograd.functional.jacobian(lambda th: summed(th, *forget), theta)
    want = theta + scale * torch.linalg.solve(H + damping * torch.eye(18, dtype=H.dtype), g)
    got = torch.cat([new.weight.detach().flatten(), new.bias.detach()])
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    assert new.unlearning_info["applied"] is True
    # the sign: removing the forget set raises its loss
    assert float(summed(got, *forget)) > float(summed(theta, *forget))
