"""NumPy scalars as numbers: forget, harness, exposure, data and models (sweep B).

Wherever a Python int is accepted a NumPy integer is too, a NumPy real wherever a float is,
``np.bool_`` wherever a bool flag is; the value is stored and used as the plain Python
one (configs compare equal, serialise to the same JSON, seed the same generators). Bools
are still refused as numbers, floats (even ``2.0``) as ints.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from fastunlearn.data import parse_forget_spec
from fastunlearn.data.age_folder import age_bins
from fastunlearn.data.digits import load_digits_dataset
from fastunlearn.exposure import (
    CanaryConfig,
    CharLM,
    CharVocab,
    SkewNormalFit,
    exposure_from_rank,
    generate_corpus,
    greedy_completion,
    insert_canary,
    sequence_log_perplexity,
    skew_normal_exposure,
    train_char_lm,
)
from fastunlearn.forget import ForgetConfig, get_method, run_method
from fastunlearn.forget._training import SGDConfig
from fastunlearn.forget.antisamples import generate_antisamples
from fastunlearn.forget.unsir import error_maximizing_noise
from fastunlearn.harness.config import HarnessConfig, TrainSettings
from fastunlearn.harness.data import HarnessData
from fastunlearn.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

I64, I32, U8, F32, F64, F16 = np.int64, np.int32, np.uint8, np.float32, np.float64, np.float16


def _plain(value: object) -> bool:
    """Whether ``value`` (recursively) holds only plain Python scalars."""
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return not isinstance(value, np.generic)


def _same_config(a: object, b: object, fields: dict[str, object]) -> None:
    assert a == b
    assert repr(a) == repr(b)
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    assert json.dumps(da, sort_keys=True, default=str) == json.dumps(db, sort_keys=True,
                                                                     default=str)
    assert _plain(da)
    for name, py in fields.items():
        assert type(getattr(a, name)) is type(py), name


# --- forget: ForgetConfig and method configs ------------------------------------------

_CONFIG_CASES = [
    ("forget", {"epochs": I64(2), "batch_size": U8(16), "lr": F32(0.5), "momentum": F64(0.25),
                "weight_decay": F16(0.5), "seed": I32(-3), "check_overlap": np.bool_(False),
                "progress": np.bool_(False)}),
    ("finetune", {"epochs": I64(1), "lr": F32(0.25), "nesterov": np.bool_(False),
                  "gamma": F32(0.5), "milestones": (I64(1), np.int16(2)),
                  "scheduler": "multistep"}),
    ("random_labels", {"seed": I64(7), "other_classes": np.bool_(True)}),
    ("two_stage", {"forget_epochs": I64(2), "forget_lr": F32(0.125)}),
    ("scrub", {"forget_batch_size": I64(4), "max_steps": I32(1), "alpha": F32(0.5),
               "temperature": F64(2.0), "lr_decay_epochs": (I64(2), 3)}),
    ("bad_teacher", {"temperature": F32(2.0), "retain_fraction": F32(0.5),
                     "incompetent_seed": I64(5)}),
    ("neggrad_plus", {"beta": F32(0.5), "forget_batch_size": I64(8)}),
    ("unsir", {"repair_epochs": I64(1), "noise_size": I32(3), "noise_lr": F32(0.5)}),
    ("salun", {"mask_ratio": F32(0.5), "redraw_labels": np.bool_(False)}),
    ("fisher", {"alpha": F32(1e-6), "max_var": F64(2.0), "forget_class_rows": np.bool_(True)}),
    ("l1_sparse", {"alpha": F32(1e-4), "include_bias": np.bool_(True)}),
    ("influence", {"num_params": I64(1), "damping": F32(0.5), "maxiter": I64(5),
                   "hvp_batch_size": I32(64), "retain_fraction": F64(0.5)}),
    ("antisamples", {"lr_scale": F32(2.0), "tail_randomized": I64(3), "p": F32(0.5),
                     "size_multiplier": I64(2), "n_generated": I32(4),
                     "convex_combination": np.bool_(False)}),
]


def _config_cls(name: str) -> type:
    return ForgetConfig if name == "forget" else get_method(name)[1]


def _py(value: object) -> object:
    if isinstance(value, tuple):
        return tuple(_py(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.parametrize(("name", "kwargs"), _CONFIG_CASES, ids=[c[0] for c in _CONFIG_CASES])
def test_forget_configs_take_numpy_scalars(name, kwargs):
    cls = _config_cls(name)
    py_kwargs = {k: _py(v) for k, v in kwargs.items()}
    a, b = cls(**kwargs), cls(**py_kwargs)
    _same_config(a, b, {k: v for k, v in py_kwargs.items() if not isinstance(v, tuple)})
    for k, v in py_kwargs.items():
        if isinstance(v, tuple):
            assert all(type(x) is int for x in getattr(a, k)), k


def test_ints_given_as_reals_become_floats():
    a, b = ForgetConfig(lr=I64(1), momentum=np.uint16(0)), ForgetConfig(lr=1, momentum=0)
    assert a == b == ForgetConfig(lr=1.0, momentum=0.0)
    assert (type(a.lr), type(a.momentum), type(b.lr)) == (float, float, float)


def test_config_changed_after_construction_is_converted():
    cfg = SGDConfig(nesterov=False)
    cfg.epochs, cfg.lr, cfg.check_overlap = I64(3), F32(0.5), np.bool_(True)
    cfg.__post_init__()  # what every method runs before training
    assert (type(cfg.epochs), type(cfg.lr), type(cfg.check_overlap)) == (int, float, bool)
    assert cfg == SGDConfig(nesterov=False, epochs=3, lr=0.5)


@pytest.mark.parametrize(("field", "value", "exc"), [
    ("epochs", F64(2.0), TypeError),
    ("epochs", 2.0, TypeError),
    ("batch_size", np.bool_(True), TypeError),
    ("seed", True, TypeError),
    ("seed", F32(1.0), TypeError),
    ("lr", np.bool_(True), TypeError),
    ("lr", True, TypeError),
    ("momentum", F32("nan"), ValueError),
    ("check_overlap", I64(1), TypeError),
    ("check_overlap", 1, TypeError),
])
def test_forget_config_still_refuses(field, value, exc):
    with pytest.raises(exc, match=field):
        ForgetConfig(**{field: value})


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("finetune", {"nesterov": 1}, "nesterov"),
    ("scrub", {"lr_decay_epochs": (F64(2.0),)}, "lr_decay_epochs"),
    ("bad_teacher", {"retain_fraction": np.bool_(True)}, "retain_fraction"),
    ("bad_teacher", {"incompetent_seed": F64(2.0)}, "incompetent_seed"),
    ("antisamples", {"convex_combination": I64(0)}, "convex_combination"),
    ("antisamples", {"n_generated": F64(4.0)}, "n_generated"),
])
def test_method_configs_still_refuse(name, kwargs, match):
    with pytest.raises(TypeError, match=match):
        _config_cls(name)(**kwargs)


def _tiny_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = torch.arange(40) % 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, (x[:8], y[:8]), (x[8:], y[8:])


@pytest.mark.parametrize("method", ["finetune", "random_labels", "neggrad_plus"])
def test_methods_seeded_with_numpy_give_identical_weights(method):
    model, forget, retain = _tiny_problem()
    kw = {"epochs": 1, "batch_size": 8, "lr": 0.05}
    a = run_method(method, model, forget, retain, seed=I64(3), **{
        "epochs": I64(1), "batch_size": I32(8), "lr": F64(0.05)})
    b = run_method(method, model, forget, retain, seed=3, **kw)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


# --- anti-sample generation and UNSIR noise ---------------------------------------------

def test_generate_antisamples_takes_numpy_options():
    g = torch.Generator().manual_seed(1)
    forget, retain = torch.randn(3, 5, generator=g), torch.randn(30, 5, generator=g)
    labels = torch.arange(30) % 3
    np_kw = {"retain_fraction": F32(0.5), "n_generated": I64(4), "tail_randomized": I32(2),
             "local_variance": F32(0.5), "p": F64(0.75), "eps": F32(0.125),
             "size_multiplier": U8(2), "convex_combination": np.bool_(True), "seed": I64(9),
             "return_weights": np.bool_(True), "chunk_size": I64(16)}
    a = generate_antisamples(forget, retain, retain_labels=labels, **np_kw)
    b = generate_antisamples(forget, retain, retain_labels=labels,
                             **{k: _py(v) for k, v in np_kw.items()})
    for fa, fb in zip(dataclasses.astuple(a), dataclasses.astuple(b), strict=True):
        if isinstance(fa, torch.Tensor):
            assert torch.equal(fa, fb)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": True}, "seed"),
    ({"n_generated": F64(4.0)}, "n_generated"),
    ({"p": np.bool_(True)}, "^'p' must be a real number"),
    ({"return_weights": 1}, "return_weights"),
])
def test_generate_antisamples_still_refuses(kwargs, match):
    forget, retain = torch.zeros(2, 3), torch.ones(10, 3)
    with pytest.raises(TypeError, match=match):
        generate_antisamples(forget, retain, **kwargs)


def test_error_maximizing_noise_takes_numpy_sizes():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    kw = {"n": 4, "steps": 2, "lr": 0.1, "l2_weight": 0.01, "seed": 5}
    a = error_maximizing_noise(model, I64(1), (I64(4),), n=I64(4), steps=I32(2), lr=F32(0.1),
                               l2_weight=F64(0.01), seed=I64(5))
    b = error_maximizing_noise(model, 1, (4,), **kw)
    assert torch.equal(a, b)


# --- harness ---------------------------------------------------------------------------

def test_train_settings_take_numpy_scalars():
    a = TrainSettings(epochs=I64(2), lr=F32(0.5), batch_size=U8(8), momentum=F64(0.5),
                      weight_decay=I64(0))
    b = TrainSettings(epochs=2, lr=0.5, batch_size=8, momentum=0.5, weight_decay=0)
    _same_config(a, b, {"epochs": 2, "lr": 0.5, "batch_size": 8, "momentum": 0.5,
                        "weight_decay": 0.0})  # a real given as an int is a float


def test_harness_config_takes_numpy_scalars():
    # a random forget set: its seed is used (with class:3 it would warn)
    kw = {"methods": ("finetune",), "cache_dir": None, "forget": "random:0.1"}
    a = HarnessConfig(**kw, forget_seed=I64(1), seeds=I32(2), oracles=U8(1),
                      train_seed=I64(3), mia=np.bool_(False), progress=np.bool_(False),
                      digits_defaults=np.bool_(True), device=I64(0),
                      overrides={"finetune": {"epochs": I64(2), "lr": F32(0.5)}})
    b = HarnessConfig(**kw, forget_seed=1, seeds=2, oracles=1, train_seed=3, mia=False,
                      progress=False, digits_defaults=True, device=0,
                      overrides={"finetune": {"epochs": 2, "lr": 0.5}})
    _same_config(a, b, {"forget_seed": 1, "seeds": 2, "oracles": 1, "train_seed": 3,
                        "mia": False, "progress": False, "digits_defaults": True,
                        "device": "cuda:0"})
    assert a.overrides == {"finetune": {"epochs": 2, "lr": 0.5}}
    assert a.method_settings() == b.method_settings()


@pytest.mark.parametrize(("cls", "kwargs", "exc", "match"), [
    (TrainSettings, {"epochs": F64(2.0)}, TypeError, "epochs"),
    (TrainSettings, {"lr": np.bool_(True)}, TypeError, "lr"),
    (HarnessConfig, {"seeds": True}, TypeError, "seeds"),
    (HarnessConfig, {"train_seed": F32(1.0)}, TypeError, "train_seed"),
    (HarnessConfig, {"mia": I64(1)}, TypeError, "mia"),
    (HarnessConfig, {"overrides": {"finetune": {"epochs": F64(2.0)}}}, TypeError, "epochs"),
])
def test_harness_settings_still_refuse(cls, kwargs, exc, match):
    if cls is HarnessConfig:
        kwargs = {"methods": ("finetune",), "cache_dir": None, **kwargs}
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_harness_data_num_classes():
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    a = HarnessData(x, y, x, y, I64(2))
    assert type(a.num_classes) is int and a == HarnessData(x, y, x, y, 2)
    with pytest.raises(TypeError, match="num_classes"):  # a float count: the wrong type
        HarnessData(x, y, x, y, F64(2.0))


# --- exposure --------------------------------------------------------------------------

def test_canary_config_takes_numpy_scalars():
    np_kw = {"n_sentences": I64(20), "secret_length": I32(3), "insertions": I64(2),
             "control": np.bool_(False), "embed_dim": U8(4), "hidden": I64(8),
             "layers": I64(1), "steps": I64(3), "seq_len": I32(8), "batch_size": I64(2),
             "lr": F32(0.01), "weight_decay": I64(0), "n_candidates": I64(10),
             "enumerate_limit": I64(100), "seed": np.uint64(2**64 - 1),
             "progress": np.bool_(False)}
    py_kw = {k: _py(v) for k, v in np_kw.items()}
    # a real given as an int (weight_decay) is stored as a float
    _same_config(CanaryConfig(**np_kw), CanaryConfig(**py_kw), {**py_kw, "weight_decay": 0.0})


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"seed": True}, TypeError, "seed"),
    ({"seed": F64(2.0)}, TypeError, "seed"),
    ({"hidden": F64(8.0)}, TypeError, "hidden"),
    ({"lr": np.bool_(True)}, TypeError, "lr"),
    ({"steps": np.bool_(True)}, TypeError, "steps"),
])
def test_canary_config_still_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CanaryConfig(**kwargs)


def test_text_functions_take_numpy_scalars():
    text = generate_corpus(I64(30), seed=I32(4))
    assert text == generate_corpus(30, seed=4)
    assert insert_canary(text, "my pin 12.", I64(3), seed=np.uint8(2)) \
        == insert_canary(text, "my pin 12.", 3, seed=2)
    with pytest.raises(TypeError, match="seed"):
        generate_corpus(5, seed=F64(1.0))
    with pytest.raises(TypeError, match="insertions"):
        insert_canary(text, "x", np.bool_(True))


def test_exposure_functions_take_numpy_scalars():
    assert exposure_from_rank(I32(5), np.uint16(40)) == exposure_from_rank(5, 40)
    with pytest.raises(TypeError, match="rank"):
        exposure_from_rank(F64(5.0), 40)
    fit = SkewNormalFit(a=F32(0.5), loc=F64(1.0), scale=I64(2), n=I64(5))
    assert fit == SkewNormalFit(a=0.5, loc=1.0, scale=2, n=5)
    assert _plain(dataclasses.asdict(fit))
    assert json.dumps(dataclasses.asdict(fit)) == json.dumps(dataclasses.asdict(
        SkewNormalFit(a=0.5, loc=1.0, scale=2, n=5)))
    with pytest.raises(TypeError, match="scale"):
        SkewNormalFit(a=0.5, loc=1.0, scale=np.bool_(True), n=5)
    # 200: at least the 100 values a skew-normal fit is trusted with (fewer are warned about)
    cands = np.linspace(0.0, 3.0, 200) ** 1.5
    assert skew_normal_exposure(F32(0.5), cands, space_size=F32(1000.0)) \
        == skew_normal_exposure(0.5, cands, space_size=1000.0)


def test_char_lm_and_training_take_numpy_scalars():
    vocab = CharVocab("ab ")
    ids = vocab.encode("ab ab a ba ab ba ab a " * 3)
    out = []
    for np_args in (True, False):
        c = (lambda v: v) if np_args else _py
        torch.manual_seed(0)
        model = CharLM(c(I64(3)), embed_dim=c(I32(4)), hidden=c(U8(6)), layers=c(I64(1)))
        losses = train_char_lm(model, ids, steps=c(I64(2)), seq_len=c(I32(5)),
                               batch_size=c(I64(2)), lr=c(F32(0.01)),
                               weight_decay=c(F64(0.0)), seed=c(I64(1)))
        lp = sequence_log_perplexity(model, vocab.encode("ab"), vocab.encode(["a ", "b "]),
                                     batch_size=c(I64(1)))
        out.append((losses, lp, greedy_completion(model, vocab, "ab", c(I64(3))),
                    model.state_dict()))
    assert out[0][0] == out[1][0] and torch.equal(out[0][1], out[1][1])
    assert out[0][2] == out[1][2]
    for pa, pb in zip(out[0][3].values(), out[1][3].values(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(TypeError, match="seed"):
        train_char_lm(CharLM(3), ids, steps=1, seed=True)
    with pytest.raises(TypeError, match="hidden"):
        CharLM(3, hidden=F64(4.0))


# --- data ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [I64(7), I32(7), U8(7), np.uint64(7)])
def test_parse_forget_spec_seed(seed):
    labels = torch.arange(50) % 5
    a = parse_forget_spec("random:0.2", labels, seed=seed)
    b = parse_forget_spec("random:0.2", labels, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("seed", [True, np.bool_(False), F64(7.0), 7.0])
def test_parse_forget_spec_refuses_non_int_seed(seed):
    with pytest.raises(TypeError, match="seed"):
        parse_forget_spec("random:0.2", torch.arange(10) % 2, seed=seed)


def test_age_bins_and_digits_take_numpy_scalars():
    ages = torch.tensor([3, 17, 42, 99])
    assert torch.equal(age_bins(ages, I64(10), num_bins=I32(5)), age_bins(ages, 10, 5))
    with pytest.raises(TypeError, match="bin_width"):
        age_bins(ages, F64(10.0))
    a = load_digits_dataset(binary=(I64(3), U8(8)), test_fraction=F32(0.25), seed=I64(2))
    b = load_digits_dataset(binary=(3, 8), test_fraction=0.25, seed=2)
    assert a == b and all(type(c) is int for c in a.classes)
    with pytest.raises(TypeError, match="seed"):
        load_digits_dataset(seed=np.bool_(True))


# --- models ----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kwargs"), [
    ("mlp", {"in_features": I64(6), "num_classes": I32(3), "hidden": (I64(5), U8(4))}),
    ("small_cnn", {"in_channels": I64(1), "num_classes": I64(3), "width": I32(2),
                   "side": I64(8)}),
    ("svhn_dp", {"num_filters": I64(2), "num_classes": I32(3), "in_channels": U8(1),
                 "side": I64(16), "kernel_size": I64(3)}),
    ("allcnn", {"num_classes": I64(3), "in_channels": I64(1), "width": I32(2),
                "dropout": np.bool_(False)}),
])
def test_model_builders_take_numpy_sizes(name, kwargs):
    out = []
    for k in (kwargs, {k: _py(v) for k, v in kwargs.items()}):
        torch.manual_seed(0)
        out.append(build_model(name, **k))
    assert repr(out[0]) == repr(out[1])
    assert type(out[0].feature_dim) is int
    for pa, pb in zip(out[0].state_dict().values(), out[1].state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("mlp", {"in_features": F64(6.0)}, "in_features"),
    ("mlp", {"num_classes": np.bool_(True)}, "num_classes"),
    ("allcnn", {"dropout": I64(1)}, "dropout"),
    ("small_cnn", {"width": True}, "width"),
])
def test_model_builders_still_refuse(name, kwargs, match):
    with pytest.raises(TypeError, match=match):
        build_model(name, **kwargs)
