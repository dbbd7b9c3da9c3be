"""Bad-argument sweep of ``fastunlearn.forget`` and ``fastunlearn.harness``.

Every case is refused with a ValueError or TypeError naming the argument or setting,
before anything changes: the caller's model (parameters, buffers, train/eval mode,
``.grad``) and tensors are compared with copies afterwards. Tiny CPU problems only.
"""

from __future__ import annotations

import pytest
import torch
from helpers import used_settings
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fastunlearn.forget import (
    AntiSampleConfig,
    BadTeacherConfig,
    ForgetConfig,
    SalUnConfig,
    ScrubConfig,
    UnsirConfig,
    error_maximizing_noise,
    generate_antisamples,
    get_method,
    run_method,
    saliency_mask,
)
from fastunlearn.forget.finetune import FinetuneConfig
from fastunlearn.forget.gradient_ascent import NegGradPlusConfig
from fastunlearn.forget.influence_method import InfluenceConfig
from fastunlearn.harness import HarnessConfig, TrainSettings

NAN = float("nan")
HUGE = 2**64


def _problem() -> tuple[nn.Module, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A 4-feature, 3-class MLP; forget = class 0 (6 rows), retain = classes 1, 2 (12)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(18, 4, generator=g)
    y = torch.arange(18) % 3
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, (x[y == 0], y[y == 0]), (x[y != 0], y[y != 0])


class _Items(Dataset):
    """A map-style data set of arbitrary items (labels not exposed)."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):  # noqa: ANN204
        return self.items[i]


def _snapshot(model: nn.Module, *tensors: Tensor) -> tuple:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [t.clone() for t in tensors])


def _assert_unchanged(model: nn.Module, snap: tuple, *tensors: Tensor) -> None:
    state, modes, grads, copies = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], v) for k, v in state.items()), "model parameters changed"
    assert [m.training for m in model.modules()] == modes, "model mode changed"
    for g, p in zip(grads, model.parameters(), strict=True):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad), ".grad changed"
    for t, c in zip(tensors, copies, strict=True):
        assert torch.equal(t, c) or (t.isnan() == c.isnan()).all(), "caller's tensor changed"


def _model_with_state() -> tuple[nn.Module, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """:func:`_problem` with gradients set and the model in train mode (state to keep)."""
    model, forget, retain = _problem()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    model.train()
    return model, forget, retain


# ---------------------------------------------------------------------------------------
# config fields: huge ints, and settings that only failed (or hung) at run time

CONFIG_CASES = [
    (ForgetConfig, "seed", HUGE, ValueError),
    (ForgetConfig, "seed", -HUGE, ValueError),
    (FinetuneConfig, "momentum", 10**400, ValueError),
    (ScrubConfig, "forget_batch_size", HUGE, ValueError),
    (UnsirConfig, "noise_size", HUGE, ValueError),
    (UnsirConfig, "noise_lambda", 10**400, ValueError),
    (AntiSampleConfig, "n_generated", HUGE, ValueError),
    (AntiSampleConfig, "lr_scale", 10**400, ValueError),
    (NegGradPlusConfig, "forget_batch_size", HUGE, ValueError),
    (InfluenceConfig, "damping", 10**400, ValueError),
    (InfluenceConfig, "damping", "0.1", TypeError),  # a wrong type is a TypeError (was Value)
    (InfluenceConfig, "num_params", 2.0, TypeError),
    (InfluenceConfig, "num_params", 2**63, ValueError),
    (InfluenceConfig, "maxiter", -1, ValueError),
    (InfluenceConfig, "maxiter", 1.5, TypeError),
    (InfluenceConfig, "hvp_batch_size", 0, ValueError),
    (InfluenceConfig, "hvp_batch_size", "64", TypeError),
]


@pytest.mark.parametrize(("cls", "field", "value", "exc"), CONFIG_CASES,
                         ids=[f"{c.__name__}.{f}={v!r:.12}" for c, f, v, _ in CONFIG_CASES])
def test_config_refuses_bad_field(cls: type, field: str, value: object, exc: type) -> None:
    with pytest.raises(exc, match=field):
        cls(**{field: value})


@pytest.mark.parametrize(("cls", "field"), [(FinetuneConfig, "lr"), (SalUnConfig, "weight_decay"),
                                             (ScrubConfig, "temperature"),
                                             (BadTeacherConfig, "temperature")])
def test_config_takes_an_int_beyond_int64_as_a_float(cls: type, field: str) -> None:
    # torch cannot take such an int as a scalar; the float it becomes is fine
    value = getattr(cls(**{field: HUGE}), field)
    assert type(value) is float and value == float(HUGE)


def test_train_settings_take_an_int_beyond_int64_as_a_float() -> None:
    settings = TrainSettings(lr=HUGE, momentum=HUGE)
    assert (settings.lr, type(settings.momentum)) == (float(HUGE), float)


@pytest.mark.parametrize("seed", [-1, 2**63 - 1, -(2**63)])
def test_config_accepts_64_bit_seeds(seed: int) -> None:
    assert ForgetConfig(seed=seed).seed == seed


# ---------------------------------------------------------------------------------------
# a config changed after construction (the SGD methods re-check it; these did not)

@pytest.mark.parametrize(("name", "field", "value"), [
    ("salun", "lr", NAN), ("scrub", "lr", NAN), ("scrub", "alpha", -1.0),
    ("salun", "mask_ratio", 0.0),
])
def test_mutated_config_is_rechecked(name: str, field: str, value: float) -> None:
    model, forget, retain = _model_with_state()
    fn, cls = get_method(name)
    cfg = cls(epochs=1, batch_size=4)
    setattr(cfg, field, value)
    snap = _snapshot(model, *forget, *retain)
    with pytest.raises(ValueError, match=field):
        fn(model, forget, retain, cfg)
    _assert_unchanged(model, snap, *forget, *retain)


# ---------------------------------------------------------------------------------------
# malformed data sets given to the methods

def _nan_forget(forget: tuple, retain: tuple) -> tuple:
    x = forget[0].clone()
    x[0, 0] = NAN
    return TensorDataset(x, forget[1]), retain


def _wide_retain(forget: tuple, retain: tuple) -> tuple:
    return forget, (torch.randn(retain[0].shape[0], 5), retain[1])


def _one_tuples(forget: tuple, retain: tuple) -> tuple:
    return _Items([(x,) for x in forget[0]]), retain


def _triples(forget: tuple, retain: tuple) -> tuple:
    return _Items([(x, y, y) for x, y in zip(*forget, strict=True)]), retain


def _float_labels(forget: tuple, retain: tuple) -> tuple:
    return TensorDataset(forget[0], forget[1].float()), retain


def _hidden_bad_labels(forget: tuple, retain: tuple) -> tuple:
    return _Items([(x, y + 7) for x, y in zip(*forget, strict=True)]), retain


DATA_CASES = [
    ("finetune", _nan_forget, ValueError, "forget: inputs contain NaN"),
    ("scrub", _nan_forget, ValueError, "forget: inputs contain NaN"),
    ("finetune", _wide_retain, TypeError, "retain"),
    ("neggrad", _wide_retain, TypeError, "retain"),
    ("bad_teacher", _wide_retain, TypeError, "retain"),
    ("salun", _one_tuples, ValueError, "forget: every item must be an \\(input, label\\)"),
    ("unsir", _one_tuples, ValueError, "forget: every item"),
    ("bad_teacher", _triples, ValueError, "forget: every item"),
    ("antisamples", _triples, ValueError, "forget: every item"),
    ("finetune", _float_labels, TypeError, "forget: labels must be integers"),
    ("fisher", _float_labels, TypeError, "forget: labels must be integers"),
    ("fisher", _hidden_bad_labels, ValueError, "forget: label 7 is out of range"),
]


@pytest.mark.parametrize(("name", "make", "exc", "match"), DATA_CASES,
                         ids=[f"{n}-{m.__name__}" for n, m, _, _ in DATA_CASES])
def test_method_refuses_malformed_data(name: str, make, exc: type, match: str) -> None:
    model, forget, retain = _model_with_state()
    bad_forget, bad_retain = make(forget, retain)
    snap = _snapshot(model, *forget, *retain)
    with pytest.raises(exc, match=match):
        run_method(name, model, bad_forget, bad_retain,
                   **used_settings(name, epochs=1, batch_size=4))
    _assert_unchanged(model, snap, *forget, *retain)


def test_valid_tensor_dataset_still_runs() -> None:
    model, forget, retain = _model_with_state()
    snap = _snapshot(model)
    new = run_method("finetune", model, TensorDataset(*forget), TensorDataset(*retain),
                     epochs=1, batch_size=4)
    assert not new.training
    _assert_unchanged(model, snap)


# ---------------------------------------------------------------------------------------
# saliency_mask

def _frozen() -> nn.Module:
    model = _problem()[0]
    for p in model.parameters():
        p.requires_grad_(False)
    return model


SALIENCY_CASES = [
    ("batch_size=None", lambda m, f: saliency_mask(m, f, 0.5, batch_size=None),
     TypeError, "batch_size"),
    ("batch_size=str", lambda m, f: saliency_mask(m, f, 0.5, batch_size="8"),
     TypeError, "batch_size"),
    ("batch_size=huge", lambda m, f: saliency_mask(m, f, 0.5, batch_size=HUGE),
     ValueError, "batch_size"),
    ("labels out of range", lambda m, f: saliency_mask(m, (f[0], f[1] + 5), 0.5),
     ValueError, "forget_ds: label 5"),
    ("hidden labels out of range",
     lambda m, f: saliency_mask(m, _Items([(x, y - 4) for x, y in zip(*f, strict=True)]), 0.5),
     ValueError, "forget_ds: label -4"),
    ("float64 data", lambda m, f: saliency_mask(m, (f[0].double(), f[1]), 0.5),
     TypeError, "forget_ds: model cannot run"),
    ("float labels", lambda m, f: saliency_mask(m, TensorDataset(f[0], f[1].float()), 0.5),
     TypeError, "forget_ds: labels"),
    ("nan inputs", lambda m, f: saliency_mask(m, TensorDataset(f[0] * NAN, f[1]), 0.5),
     ValueError, "forget_ds: inputs contain NaN"),
    ("model=None", lambda m, f: saliency_mask(None, f, 0.5), TypeError, "model"),
]


@pytest.mark.parametrize(("case", "call", "exc", "match"), SALIENCY_CASES,
                         ids=[c[0] for c in SALIENCY_CASES])
def test_saliency_mask_refuses(case: str, call, exc: type, match: str) -> None:
    model, forget, _ = _model_with_state()
    snap = _snapshot(model, *forget)
    with pytest.raises(exc, match=match):
        call(model, forget)
    _assert_unchanged(model, snap, *forget)


def test_saliency_mask_refuses_frozen_model() -> None:
    model = _frozen()
    _, forget, _ = _problem()
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        saliency_mask(model, forget, 0.5)
    _assert_unchanged(model, snap)


# ---------------------------------------------------------------------------------------
# error_maximizing_noise

NOISE_CASES = [
    ("shape does not fit", dict(shape=(5,)), TypeError, "shape \\(5,\\)"),
    ("dtype does not fit", dict(dtype=torch.float64), TypeError, "dtype torch.float64"),
    ("shape huge", dict(shape=(HUGE,)), ValueError, "shape"),
    ("n huge", dict(n=HUGE), ValueError, "'n' must"),
    ("seed huge", dict(seed=HUGE), ValueError, "seed"),
]


@pytest.mark.parametrize(("case", "kw", "exc", "match"), NOISE_CASES,
                         ids=[c[0] for c in NOISE_CASES])
def test_error_maximizing_noise_refuses(case: str, kw: dict, exc: type, match: str) -> None:
    model, _, _ = _model_with_state()
    args = {"shape": (4,), "n": 2, "steps": 1, **kw}
    shape = args.pop("shape")
    snap = _snapshot(model)
    with pytest.raises(exc, match=match):
        error_maximizing_noise(model, 0, shape, **args)
    _assert_unchanged(model, snap)


# ---------------------------------------------------------------------------------------
# generate_antisamples

XF, XR = torch.randn(3, 4), torch.randn(10, 4)
ANTI_CASES = [
    ("complex inputs", (XF.to(torch.complex64), XR.to(torch.complex64)), {}, TypeError,
     "'forget' must be a real tensor"),
    ("zero features", (torch.randn(3, 0), torch.randn(10, 0)), {}, ValueError,
     "'forget' must have shape"),
    ("bool labels", (XF, XR), dict(retain_labels=torch.ones(10, dtype=torch.bool)),
     ValueError, "retain_labels"),
    ("return_weights str", (XF, XR), dict(return_weights="no"), TypeError, "return_weights"),
    ("n_generated huge", (XF, XR), dict(n_generated=HUGE), ValueError, "n_generated"),
    ("tail_randomized huge", (XF, XR), dict(tail_randomized=HUGE), ValueError,
     "tail_randomized"),
    ("seed huge", (XF, XR), dict(seed=HUGE), ValueError, "seed"),
]


@pytest.mark.parametrize(("case", "args", "kw", "exc", "match"), ANTI_CASES,
                         ids=[c[0] for c in ANTI_CASES])
def test_generate_antisamples_refuses(case: str, args: tuple, kw: dict, exc: type,
                                      match: str) -> None:
    copies = [a.clone() for a in args]
    with pytest.raises(exc, match=match):
        generate_antisamples(*args, **kw)
    assert all(torch.equal(a, c) for a, c in zip(args, copies, strict=True))


# ---------------------------------------------------------------------------------------
# harness settings

HARNESS_CASES = [
    ("TrainSettings lr huge", lambda: TrainSettings(lr=10**400), ValueError, "'lr'"),
    ("TrainSettings lr 0", lambda: TrainSettings(lr=0), ValueError, "'lr' must be finite and > 0"),
    ("TrainSettings epochs huge", lambda: TrainSettings(epochs=HUGE), ValueError, "'epochs'"),
    ("TrainSettings batch huge", lambda: TrainSettings(batch_size=HUGE), ValueError,
     "'batch_size'"),
    ("methods None", lambda: HarnessConfig(methods=None), TypeError, "'methods'"),
    ("methods nested", lambda: HarnessConfig(methods=[["finetune"]]), TypeError, "'methods'"),
    ("model list", lambda: HarnessConfig(model=["mlp"]), ValueError, "'model'"),
    ("overrides not dict", lambda: HarnessConfig(overrides={"finetune": 3}), TypeError,
     "'overrides' for 'finetune'"),
    ("train_seed huge", lambda: HarnessConfig(train_seed=2**63 - 1), ValueError,
     "'train_seed'"),
    ("forget_seed huge", lambda: HarnessConfig(forget_seed=HUGE), ValueError, "'forget_seed'"),
    ("mia str", lambda: HarnessConfig(mia="no"), TypeError, "'mia'"),
    ("progress str", lambda: HarnessConfig(progress="no"), TypeError, "'progress'"),
]


@pytest.mark.parametrize(("case", "call", "exc", "match"), HARNESS_CASES,
                         ids=[c[0] for c in HARNESS_CASES])
def test_harness_settings_refused(case: str, call, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_harness_config_accepts_largest_train_seed() -> None:
    from fastunlearn.harness.config import ORACLE_SEED_OFFSET

    top = 2**63 - 1 - ORACLE_SEED_OFFSET - 3
    assert HarnessConfig(train_seed=top, oracles=4).train_seed == top
