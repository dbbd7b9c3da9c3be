"""The registry and ``run_method`` of :mod:`fastunlearn.forget.base`: error paths, overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from hand_sgd import assert_models_equal
from tiny_problem import tiny_forget_retain, tiny_linear
from torch.utils.data import TensorDataset

from fastunlearn.forget import (
    ForgetConfig,
    as_dataset,
    available_methods,
    get_method,
    register,
    run_method,
)
from fastunlearn.forget.finetune import FinetuneConfig


@pytest.fixture(scope="module")
def data():
    return tiny_forget_retain()


# --- as_dataset -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_as_dataset_rejects_non_finite_inputs(bad):
    x = torch.zeros(4, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"^forget: inputs contain NaN or inf$"):
        as_dataset((x, torch.zeros(4, dtype=torch.long)), "forget")
    # the same tensors with finite inputs are accepted, as a TensorDataset of those rows
    x[2, 1] = 0.5
    ds = as_dataset((x, torch.arange(4)), "forget")
    assert isinstance(ds, TensorDataset) and len(ds) == 4
    assert torch.equal(ds[2][0], x[2]) and int(ds[2][1]) == 2


def test_non_finite_inputs_are_rejected_before_any_work(data):
    forget, retain = data
    model = tiny_linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xr = retain[0].clone()
    xr[0, 0] = float("nan")
    with pytest.raises(ValueError, match="retain: inputs contain NaN or inf"):
        run_method("finetune", model, forget, (xr, retain[1]), epochs=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_integer_inputs_skip_the_finiteness_check():
    # the check applies to floating inputs only (integer tensors cannot hold NaN)
    ds = as_dataset((torch.arange(6).reshape(3, 2), torch.arange(3)), "retain")
    assert len(ds) == 3


def test_integer_settings_beyond_int64_are_refused_up_front():
    # `fastunlearn forget --set finetune.batch_size=99999999999999999999` passed validation
    # and failed at run time inside the loader
    with pytest.raises(ValueError, match=r"'batch_size' must be <= 2\*\*63 - 1"):
        FinetuneConfig(batch_size=2**63)
    assert FinetuneConfig(batch_size=2**63 - 1).batch_size == 2**63 - 1


# --- register ---------------------------------------------------------------------------


def test_register_refuses_a_duplicate_name():
    fn_before, cls_before = get_method("finetune")
    names = available_methods()

    def impostor(model, forget, retain, config):  # pragma: no cover - never registered
        return model

    with pytest.raises(ValueError, match=r"^forgetting method 'finetune' is already registered$"):
        register("finetune", FinetuneConfig)(impostor)
    # the registry is unchanged: the original method still answers to the name
    assert get_method("finetune") == (fn_before, cls_before)
    assert available_methods() == names


class _NotADataclass:
    pass


@dataclass
class _PlainDataclass:  # a dataclass, but not a ForgetConfig
    lr: float = 0.1


@pytest.mark.parametrize("cls", [_NotADataclass, _PlainDataclass, int])
def test_register_refuses_a_config_that_is_not_a_forget_config_dataclass(cls):
    names = available_methods()
    with pytest.raises(TypeError, match=r"^'config_cls' must be a ForgetConfig dataclass$"):
        register("test_base_api_never_registered", cls)
    assert available_methods() == names
    assert "test_base_api_never_registered" not in available_methods()


def test_get_method_errors():
    with pytest.raises(ValueError, match=r"unknown forgetting method 'nope'; known methods: "):
        get_method("nope")
    with pytest.raises(TypeError, match="'method' must be a str"):
        get_method(3)


# --- run_method(config=..., **overrides) ------------------------------------------------


def test_run_method_overrides_replace_config_fields(data):
    forget, retain = data
    model = tiny_linear()
    cfg = FinetuneConfig(lr=0.05, epochs=2, batch_size=8, seed=3)
    got = run_method("finetune", model, forget, retain, config=cfg, lr=0.2, seed=4)
    want = run_method(
        "finetune", model, forget, retain, config=dataclasses.replace(cfg, lr=0.2, seed=4)
    )
    assert_models_equal(got, want)
    # the caller's config is not modified
    assert (cfg.lr, cfg.seed, cfg.epochs, cfg.batch_size) == (0.05, 3, 2, 8)
    # the overrides took effect: the config as given trains to other weights
    plain = run_method("finetune", model, forget, retain, config=cfg)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(got.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    # without a config, the overrides build the method's config from its defaults
    from_defaults = run_method(
        "finetune", model, forget, retain, lr=0.2, seed=4, epochs=2, batch_size=8
    )
    assert_models_equal(got, from_defaults)


def test_run_method_override_errors(data):
    forget, retain = data
    model = tiny_linear()
    cfg = FinetuneConfig(epochs=1)
    # replace() re-runs the config's validation
    with pytest.raises(ValueError, match="'lr' must be finite and >= 0"):
        run_method("finetune", model, forget, retain, config=cfg, lr=-1.0)
    with pytest.raises(TypeError, match="no_such_field"):
        run_method("finetune", model, forget, retain, config=cfg, no_such_field=1)
    with pytest.raises(TypeError, match=r"config for 'finetune' must be a FinetuneConfig, got"):
        run_method("finetune", model, forget, retain, config=ForgetConfig())
