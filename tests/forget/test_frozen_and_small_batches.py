"""Frozen parameters and one-example batches, for every registered forgetting method.

Frozen parameters (``requires_grad=False``, e.g. a pretrained backbone) must come back
bit-identical from every method, with their flags, including from ``retrain``, whose
re-initialisation used to re-draw them although its training never touches them.

A model with BatchNorm1d cannot train on a batch of one example ("Expected more than 1
value per channel when training"); a last batch of one (retain of 129 with batch 128) used
to crash most methods mid-run. Now such a batch is skipped, and data that would only give
one-example batches (a set of one example, batch size 1) is refused up front with a
ValueError naming the argument.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from digits_b import same_state, state_copy
from test_inputs_all import TINY, no_costly_work  # noqa: F401  (a fixture)
from torch import nn
from torch.utils.data import TensorDataset

from fastunlearn.forget import available_methods, run_method
from fastunlearn.forget._common_b import SkipSingleBatches
from fastunlearn.forget._training import make_optimizer
from fastunlearn.forget.base import batches, make_loader
from fastunlearn.forget.finetune import FinetuneConfig
from fastunlearn.forget.retrain import reinitialize

METHODS = available_methods()
NO_TRAINING = {"fisher", "influence"}
D, K = 6, 3
FROZEN = ("0.weight", "0.bias", "1.weight", "1.bias")  # first linear layer and its BatchNorm


def _kw(name: str, **extra: object) -> dict:
    kw = dict(TINY.get(name, {"epochs": 1}))
    if name == "influence":
        kw["on_divergence"] = "keep"
    kw.update(extra)
    return kw


def _data(n_forget: int, n_retain: int, seed: int = 0):
    """Forget: class 0 only (whole class, for UNSIR); retain: classes 1 and 2."""
    g = torch.Generator().manual_seed(seed)
    xf = torch.randn(n_forget, D, generator=g)
    xr = torch.randn(n_retain, D, generator=g)
    return (xf, torch.zeros(n_forget, dtype=torch.long)), (xr, 1 + torch.arange(n_retain) % 2)


def _bn_mlp(seed: int = 123) -> nn.Sequential:
    """Linear-BN1d-ReLU twice and a head, BN affine and running statistics away from init."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(),
            nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K),
        )
        model.train()
        with torch.no_grad():
            model(torch.randn(32, D))
            for m in (model[1], model[4]):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _frozen_bn_mlp() -> nn.Sequential:
    model = _bn_mlp()
    for name, p in model.named_parameters():
        if name in FROZEN:
            p.requires_grad_(False)
    return model


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --- retrain and frozen parameters ------------------------------------------------------


def test_retrain_keeps_frozen_parameters_and_their_batchnorm_state():
    forget, retain = _data(8, 40)
    model = _frozen_bn_mlp()
    before = state_copy(model)
    # epochs=0: only the re-initialisation
    new = run_method("retrain", model, forget, retain, epochs=0)
    assert same_state(model, before)
    sd = new.state_dict()
    for key in (*FROZEN, "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(sd[key], before[key]), key  # kept bit for bit
    for name, p in new.named_parameters():
        assert p.requires_grad == (name not in FROZEN), name
    # trainable layers are re-drawn, exactly as they are when nothing is frozen
    full = run_method("retrain", _bn_mlp(), forget, retain, epochs=0).state_dict()
    for key in ("3.weight", "3.bias", "6.weight", "6.bias"):
        assert (sd[key] != before[key]).all(), key
        assert torch.equal(sd[key], full[key]), key
    # the trainable BatchNorm is reset: affine 1 / 0, statistics 0 / 1, no batch counted
    assert torch.equal(sd["4.weight"], torch.ones(8)) and torch.equal(sd["4.bias"], torch.zeros(8))
    assert torch.equal(sd["4.running_mean"], torch.zeros(8))
    assert torch.equal(sd["4.running_var"], torch.ones(8))
    assert int(sd["4.num_batches_tracked"]) == 0

    # with training: frozen values still bit-identical, trainable ones trained further
    trained = run_method("retrain", model, forget, retain, epochs=2, scheduler="none",
                         milestones=(), batch_size=16)
    assert same_state(model, before)
    for name, p in trained.named_parameters():
        if name in FROZEN:
            assert torch.equal(p, before[name]) and not p.requires_grad, name
        else:
            assert p.requires_grad and not torch.equal(p, sd[name]), name
    # BatchNorm statistics are buffers: train mode re-estimates them, frozen layer included
    assert int(trained.state_dict()["1.num_batches_tracked"]) == int(
        before["1.num_batches_tracked"]) + 2 * 3


def test_reinitialize_keeps_frozen_parameters_of_modules_without_reset_parameters():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = nn.Parameter(torch.full((4,), 3.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.s

    model = nn.Sequential(nn.Linear(4, 4), Scale())
    lin = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"cannot re-initialise parameter '1\.s'"):
        reinitialize(model)
    assert torch.equal(model[0].weight, lin)  # checked before anything is reset
    model[1].s.requires_grad_(False)
    reinitialize(model)
    assert torch.equal(model[1].s, torch.full((4,), 3.0)) and not model[1].s.requires_grad
    assert not torch.equal(model[0].weight, lin)


@pytest.mark.parametrize("name", METHODS)
def test_no_method_changes_a_frozen_parameter(name):
    forget, retain = _data(8, 40)
    model = _frozen_bn_mlp()
    for n, p in model.named_parameters():  # a stale gradient must not be applied either
        if n in FROZEN:
            p.grad = torch.ones_like(p)
    before = state_copy(model)
    kw = _kw(name, retain_fraction=1.0) if name == "pruning_complex" else _kw(name)
    new = run_method(name, model, forget, retain, **kw)
    assert same_state(model, before)
    got = _params(new)
    for n in FROZEN:
        assert torch.equal(got[n], before[n]), n
        assert not dict(new.named_parameters())[n].requires_grad, n
    changed = [n for n in got if n not in FROZEN and not torch.equal(got[n], before[n])]
    assert changed, "no trainable parameter changed"


# --- one-example batches ------------------------------------------------------------------

#: (forget size, retain size, config) per method, chosen so that every data set the method
#: trains on ends with a batch of one example (batch size 64).
SINGLE_TAIL: dict[str, tuple[int, int, dict]] = {
    "poison_full": (65, 64, {}),  # forget + retain: 129
    "salun": (65, 64, {}),
    "bad_teacher": (65, 64, {"retain_fraction": 1.0}),
    "antisamples": (4, 49, {"n_generated": 16, "retain_fraction": 1.0}),  # 16 + 49
    "antisamples_multiclass": (4, 49, {"n_generated": 16, "retain_fraction": 1.0}),
    "unsir": (4, 57, {"noise_size": 8}),  # 8 noise + 57 retain
    "pruning_complex": (65, 129, {"retain_fraction": 1.0}),
}


@pytest.mark.parametrize("name", METHODS)
def test_a_last_batch_of_one_example_does_not_crash_batchnorm_models(name):
    n_forget, n_retain, extra = SINGLE_TAIL.get(name, (65, 129, {}))
    forget, retain = _data(n_forget, n_retain)
    model = _bn_mlp()
    before = state_copy(model)
    kw = _kw(name, batch_size=64, **extra)
    if name == "scrub":
        kw["forget_batch_size"] = 64
    new = run_method(name, model, forget, retain, **kw)
    assert same_state(model, before)
    assert not any(m.training for m in new.modules())
    got = new.state_dict()
    assert any(not torch.equal(got[k], before[k]) for k in before if "weight" in k)
    assert all(torch.isfinite(v).all() for v in got.values() if v.is_floating_point())


def test_finetune_trains_on_the_full_batch_and_skips_the_single_one():
    forget, retain = _data(8, 129)
    model = _bn_mlp()
    config = FinetuneConfig(epochs=1, lr=0.05, batch_size=128, seed=3)
    new = run_method("finetune", model, forget, retain, config)
    # by hand: the same batches (same order), one SGD step on the full batch, none on the
    # batch of one
    order = list(batches(TensorDataset(*retain), 128, shuffle=True, seed=3))
    assert [len(b[0]) for b in order] == [128, 1]
    want = copy.deepcopy(model).train()
    opt = make_optimizer(want.parameters(), config, config.lr)
    x, y = order[0]
    opt.zero_grad()
    F.cross_entropy(want(x), y).backward()
    opt.step()
    want_state = want.state_dict()
    for k, v in new.state_dict().items():
        torch.testing.assert_close(v, want_state[k], rtol=1e-6, atol=1e-7, msg=k)
    assert int(new.state_dict()["1.num_batches_tracked"]) == int(
        model.state_dict()["1.num_batches_tracked"]) + 1


def test_the_skip_is_only_for_models_that_cannot_train_on_one_example():
    ds = TensorDataset(torch.randn(5, 2, 4, 4), torch.zeros(5, dtype=torch.long))
    loader = make_loader(ds, 2, shuffle=False)
    conv_bn = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten(),
                            nn.Linear(48, 2))
    assert [len(b[0]) for b in SkipSingleBatches(loader, conv_bn, "t")] == [2, 2, 1]
    pooled = nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(3),
                           nn.Flatten(), nn.Linear(3, 2))  # BatchNorm2d on a 1x1 map
    assert [len(b[0]) for b in SkipSingleBatches(loader, pooled, "t")] == [2, 2]
    plain = nn.Sequential(nn.Flatten(), nn.Linear(32, 2))
    assert [len(b[0]) for b in SkipSingleBatches(loader, plain, "t")] == [2, 2, 1]
    with pytest.raises(ValueError, match="every training batch holds one example"):
        list(SkipSingleBatches(make_loader(ds, 1, shuffle=False), pooled, "t"))
    # a BatchNorm2d on a 4x4 map trains on one example: batch_size=1 is not refused
    forget, retain = (ds.tensors[0][:2], ds.tensors[1][:2]), (ds.tensors[0][2:],
                                                              1 + ds.tensors[1][2:])
    new = run_method("finetune", conv_bn, forget, retain, epochs=1, batch_size=1)
    assert not torch.equal(new[0].weight, conv_bn[0].weight)


FORGET_TRAINED = ["neggrad", "neggrad_plus", "random_labels", "two_stage", "selective_pruning",
                  "prune_last_layer", "pruning_complex", "scrub"]


@pytest.mark.parametrize("name", FORGET_TRAINED)
def test_a_forget_set_of_one_example_is_refused_up_front(name, no_costly_work):  # noqa: F811
    forget, retain = _data(1, 129)
    model = _bn_mlp()
    before = state_copy(model)
    with pytest.raises(ValueError, match=r"^forget has a single example.*BatchNorm"):
        run_method(name, model, forget, retain, **_kw(name, retain_fraction=1.0)
                   if name == "pruning_complex" else _kw(name))
    assert same_state(model, before)


@pytest.mark.parametrize("name", sorted(set(METHODS) - set(FORGET_TRAINED) - {"unsir"}))
def test_methods_that_do_not_train_on_the_forget_set_accept_one_forget_example(name):
    forget, retain = _data(1, 40)
    model = _bn_mlp()
    new = run_method(name, model, forget, retain, **_kw(name))
    assert not same_state(new, state_copy(model))


@pytest.mark.parametrize("name", sorted(set(METHODS) - NO_TRAINING))
def test_batch_size_one_is_refused_up_front_naming_the_field(name, no_costly_work):  # noqa: F811
    forget, retain = _data(8, 40)
    model = _bn_mlp()
    before = state_copy(model)
    kw = _kw(name, batch_size=1)
    if name == "pruning_complex":
        kw["retain_fraction"] = 1.0
    with pytest.raises(ValueError, match=r"batch_size=1: every training batch"):
        run_method(name, model, forget, retain, **kw)
    assert same_state(model, before)


def test_scrub_names_forget_batch_size(no_costly_work):  # noqa: F811
    forget, retain = _data(8, 40)
    with pytest.raises(ValueError, match=r"^forget_batch_size=1: every training batch of forget"):
        run_method("scrub", _bn_mlp(), forget, retain, epochs=1, forget_batch_size=1)


@pytest.mark.parametrize("name", ["retrain", "finetune", "l1_sparse", "activation_reset"])
def test_a_retain_set_of_one_example_is_refused_up_front(name, no_costly_work):  # noqa: F811
    forget, retain = _data(8, 1)
    with pytest.raises(ValueError, match=r"^retain has a single example"):
        run_method(name, _bn_mlp(), forget, retain, **_kw(name))


def test_pruning_complex_names_a_retain_fraction_that_selects_one_example(no_costly_work):  # noqa: F811
    forget, retain = _data(8, 40)  # ceil(0.02 * 40) = 1
    with pytest.raises(ValueError, match=r"retain_fraction=0\.02 .*raise retain_fraction"):
        run_method("pruning_complex", _bn_mlp(), forget, retain, **_kw("pruning_complex"))


def test_the_callers_mixed_module_modes_are_kept():
    forget, retain = _data(8, 40)
    model = _bn_mlp().train()
    model[1].eval()  # e.g. a backbone BatchNorm the caller keeps in eval mode
    modes = [m.training for m in model.modules()]
    for name in ("scrub", "salun", "finetune"):
        run_method(name, model, forget, retain, **_kw(name))
        assert [m.training for m in model.modules()] == modes, name


def test_make_loader_takes_numpy_integers_and_names_bad_arguments():
    import numpy as np

    ds = TensorDataset(torch.arange(10.0), torch.zeros(10, dtype=torch.long))
    plain = [b[0].tolist() for b in make_loader(ds, 3, shuffle=True, seed=5)]
    numpy = [b[0].tolist() for b in make_loader(ds, np.int64(3), shuffle=True, seed=np.int64(5))]
    assert numpy == plain and len(plain) == 4
    with pytest.raises(TypeError, match="'batch_size' must be an int"):
        make_loader(ds, 3.0, shuffle=False)
    with pytest.raises(ValueError, match="'batch_size' must be >= 1"):
        make_loader(ds, 0, shuffle=False)
    with pytest.raises(TypeError, match="'seed' must be an int"):
        make_loader(ds, 3, shuffle=False, seed="1")
