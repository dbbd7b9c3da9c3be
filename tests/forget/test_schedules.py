"""Learning-rate and penalty schedules, against hand-written loops that set them per epoch.

A tiny linear classifier is trained for a few epochs by a method and by the test's own
``torch.optim.SGD`` loop (same data order and seeds) in which every epoch's learning rate
(and penalty weight) is written out from the documented rule. The final weights must be
bit-identical; each test also checks that the schedule matters (a constant rate gives
other weights), so the comparison cannot pass by accident.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hand_sgd import assert_models_equal, sgd_loop
from tiny_problem import tiny_forget_retain, tiny_linear
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastunlearn.forget import run_method
from fastunlearn.forget.retrain import RetrainConfig
from fastunlearn.forget.scrub import tempered_kl

LR = 0.1
BATCH = 8  # 24 retain rows: 3 steps per epoch


@pytest.fixture(scope="module")
def data():
    return tiny_forget_retain()


def _differs(a: nn.Module, b: nn.Module) -> bool:
    return any(
        not torch.equal(va, vb)
        for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


# --- the shared training stage: scheduler "multistep" and "cosine" ----------------------


@pytest.mark.parametrize(
    "milestones,gamma,epochs",
    [((1,), 0.5, 3), ((2,), 0.5, 3), ((1, 2), 0.25, 3)],
)
def test_multistep_schedule_matches_a_hand_written_loop(data, milestones, gamma, epochs):
    forget, retain = data
    model = tiny_linear()
    seed = 4
    new = run_method(
        "finetune", model, forget, retain, lr=LR, epochs=epochs, batch_size=BATCH, seed=seed,
        scheduler="multistep", milestones=milestones, gamma=gamma,
    )
    # documented: the rate is multiplied by gamma at each milestone epoch (0-based epochs;
    # epoch e runs at LR * gamma ** #{m <= e})
    lrs, lr = [], LR
    for e in range(epochs):
        if e in milestones:
            lr *= gamma
        lrs.append(lr)
    hand = sgd_loop(copy.deepcopy(model), *retain, lrs=lrs, batch_size=BATCH, seed=seed)
    assert_models_equal(new, hand)
    constant = sgd_loop(copy.deepcopy(model), *retain, lrs=[LR] * epochs, batch_size=BATCH,
                        seed=seed)
    assert _differs(new, constant)
    # the default scheduler of finetune is "none": the constant rate
    plain = run_method("finetune", model, forget, retain, lr=LR, epochs=epochs,
                       batch_size=BATCH, seed=seed)
    assert_models_equal(plain, constant)


@pytest.mark.parametrize("epochs", [2, 3])
def test_cosine_schedule_matches_a_hand_written_loop(data, epochs):
    forget, retain = data
    model = tiny_linear()
    seed = 1
    new = run_method(
        "finetune", model, forget, retain, lr=LR, epochs=epochs, batch_size=BATCH, seed=seed,
        scheduler="cosine",
    )
    # cosine annealing over the run's epochs: epoch e at LR * (1 + cos(pi e / epochs)) / 2
    lrs = [LR * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    hand = sgd_loop(copy.deepcopy(model), *retain, lrs=lrs, batch_size=BATCH, seed=seed)
    assert_models_equal(new, hand)
    constant = sgd_loop(copy.deepcopy(model), *retain, lrs=[LR] * epochs, batch_size=BATCH,
                        seed=seed)
    assert _differs(new, constant)


def test_retrain_default_recipe_fires_every_milestone(data):
    # RetrainConfig's defaults (100 epochs at 0.1, divided by 10 at epochs 35, 70 and 90;
    # batch 128, so one step per epoch here), run in full on a tiny model
    forget, retain = data
    model = tiny_linear()
    cfg = RetrainConfig()
    new = run_method("retrain", model, forget, retain, config=cfg)

    def hand(milestones: tuple[int, ...]) -> nn.Module:
        fresh = copy.deepcopy(model)
        with torch.random.fork_rng():  # documented: re-initialised under the seed
            torch.manual_seed(cfg.seed)
            fresh.reset_parameters()
        lrs, lr = [], cfg.lr
        for e in range(cfg.epochs):
            if e in milestones:
                lr *= cfg.gamma
            lrs.append(lr)
        return sgd_loop(fresh, *retain, lrs=lrs, batch_size=cfg.batch_size, seed=cfg.seed,
                        momentum=cfg.momentum, nesterov=cfg.nesterov,
                        weight_decay=cfg.weight_decay)

    assert (cfg.epochs, cfg.lr, cfg.milestones, cfg.gamma) == (100, 0.1, (35, 70, 90), 0.1)
    assert (cfg.scheduler, cfg.batch_size, cfg.nesterov) == ("multistep", 128, True)
    assert_models_equal(new, hand((35, 70, 90)))
    # the last milestone (epoch 90) changes the result: it does fire
    assert _differs(new, hand((35, 70)))


# --- l1-sparse: gamma_t = alpha * (1 - t / epochs) ---------------------------------------


def test_l1_sparse_penalty_decays_linearly_per_epoch(data):
    forget, retain = data
    model = tiny_linear()
    alpha, epochs, seed = 0.05, 3, 5
    new = run_method(
        "l1_sparse", model, forget, retain,
        lr=LR, epochs=epochs, alpha=alpha, batch_size=BATCH, seed=seed,
    )

    def hand(weight_of_epoch) -> nn.Module:
        m = copy.deepcopy(model)
        params = list(m.parameters())  # include_bias=True: every parameter

        def penalty(t: int) -> torch.Tensor:
            return weight_of_epoch(t) * sum(p.abs().sum() for p in params)

        return sgd_loop(m, *retain, lrs=[LR] * epochs, batch_size=BATCH, seed=seed,
                        penalty=penalty)

    assert_models_equal(new, hand(lambda t: alpha * (1 - t / epochs)))
    assert _differs(new, hand(lambda t: alpha))  # an undecayed penalty differs


# --- SCRUB: epoch e (1-based) at lr * rate ** #{m : e > m} -------------------------------


def test_scrub_lr_decay_matches_a_hand_written_loop(data):
    forget, retain = data
    model = tiny_linear()
    lr, rate, decay_epochs = 0.05, 0.5, (1, 2)
    cfg = {
        "epochs": 3, "lr": lr, "lr_decay_epochs": decay_epochs, "lr_decay_rate": rate,
        "max_steps": 2, "alpha": 0.5, "gamma": 0.99, "temperature": 4.0,
        "batch_size": BATCH, "forget_batch_size": 4, "seed": 2,
    }
    new = run_method("scrub", model, forget, retain, **cfg)

    def hand(lrs: list[float]) -> nn.Module:
        # the published SCRUB epoch: a max pass over the forget set (epochs <= max_steps)
        # minimising -KL, then a min pass over the retain set on gamma * CE + alpha * KL;
        # SGD without Nesterov; forget shuffled with seed, retain with seed + 1
        teacher = copy.deepcopy(model).eval()
        student = copy.deepcopy(model)
        opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

        def loader(ds, bs, seed):
            g = torch.Generator().manual_seed(seed)
            return DataLoader(TensorDataset(*ds), batch_size=bs, shuffle=True, generator=g)

        forget_loader = loader(forget, cfg["forget_batch_size"], cfg["seed"])
        retain_loader = loader(retain, cfg["batch_size"], cfg["seed"] + 1)
        T = cfg["temperature"]
        for epoch, epoch_lr in enumerate(lrs, start=1):
            for group in opt.param_groups:
                group["lr"] = epoch_lr
            student.train()
            if epoch <= cfg["max_steps"]:
                for x, _ in forget_loader:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = -tempered_kl(student(x), t_out, T)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            for x, y in retain_loader:
                with torch.no_grad():
                    t_out = teacher(x)
                s_out = student(x)
                loss = cfg["gamma"] * F.cross_entropy(s_out, y) + cfg["alpha"] * tempered_kl(
                    s_out, t_out, T
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return student

    # epoch 1: no milestone passed; epoch 2: > 1; epoch 3: > 1 and > 2
    assert_models_equal(new, hand([lr, lr * rate, lr * rate**2]))
    assert _differs(new, hand([lr, lr, lr]))
    assert _differs(new, hand([lr, lr * rate, lr * rate]))  # the second decay fires too
