"""Bad-argument sweep of ``fastunlearn.influence`` and ``fastunlearn.linalg``.

Every bad argument must raise ValueError/TypeError naming it, before anything changes: the
model's parameters, buffers, mode and ``.grad`` and the caller's tensors stay as they were.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastunlearn.influence as fi
import fastunlearn.linalg as fl
from fastunlearn.influence.canary import CanaryUnlearnConfig
from fastunlearn.influence.feature_experiment import FeatureConfig

BIG = 10**400  # an int beyond the float range
F64 = torch.float64


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    model = model.double().train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, dtype=F64, generator=gen), torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])


def _snapshot(model: nn.Module, *tensors: torch.Tensor) -> tuple:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    return state, grads, modes, [t.clone() for t in tensors]


def _assert_unchanged(before: tuple, model: nn.Module, *tensors: torch.Tensor) -> None:
    state, grads, modes, copies = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == modes
    for t, c in zip(tensors, copies, strict=True):
        assert torch.equal(t, c)


# --------------------------------------------------------------------------------------
# fastunlearn.linalg

_OP = fl.DenseOperator(2.0 * torch.eye(3, dtype=F64))
_B = torch.ones(3, dtype=F64)
_X8, _Y8 = _data()

LINALG_CASES = [
    # an int beyond the float range: OverflowError before
    ("damped big", lambda: fl.damped(_OP, BIG), ValueError, "damping"),
    ("ScaledIdentityPlus big", lambda: fl.ScaledIdentityPlus(_OP, BIG), ValueError, "'c'"),
    ("GLM lam big", lambda: fl.GLMHessianOperator(_X8, torch.ones(8, dtype=F64), BIG),
     ValueError, "lam"),
    ("cg tol big", lambda: fl.cg(_OP, _B, tol=BIG), ValueError, "tol"),
    ("cg atol big", lambda: fl.cg(_OP, _B, atol=BIG), ValueError, "atol"),
    ("lissa damping big", lambda: fl.lissa(_OP, _B, damping=BIG), ValueError, "damping"),
    ("lissa scale big", lambda: fl.lissa(_OP, _B, scale=BIG), ValueError, "scale"),
    ("NHO damping big", lambda: fl.NetworkHessianOperator(
        _model().eval(), fi.default_loss, _X8, _Y8, damping=BIG), ValueError, "damping"),
    ("GGN damping big", lambda: fi.GGNOperator(
        _model().eval(), fi.default_loss, _X8, _Y8, damping=BIG), ValueError, "damping"),
    # int64 step counts: RuntimeError (or a hang) before
    ("lissa repetitions huge", lambda: fl.lissa(_OP, _B, depth=1, repetitions=2**64),
     ValueError, "repetitions"),
    ("lissa batches int", lambda: fl.lissa(lambda v, b: v, _B, depth=2, batches=5),
     TypeError, "batches"),
    # GLM: dtypes of the fused op, non-finite features
    ("GLM X float16", lambda: fl.GLMHessianOperator(
        torch.ones(2, 2, dtype=torch.float16), torch.ones(2, dtype=torch.float16)),
     TypeError, "'X'"),
    ("GLM X nan", lambda: fl.GLMHessianOperator(
        torch.full((2, 2), math.nan, dtype=F64), torch.ones(2, dtype=F64)), ValueError, "'X'"),
    # cholesky_solve: NotImplementedError / RuntimeError before
    ("cholesky float16", lambda: fl.cholesky_solve(
        torch.eye(2, dtype=torch.float16), torch.ones(2, dtype=torch.float16)),
     TypeError, "'H'"),
    ("cholesky bfloat16", lambda: fl.cholesky_solve(
        torch.eye(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.bfloat16)),
     TypeError, "'H'"),
    ("cholesky batch vector", lambda: fl.cholesky_solve(
        torch.eye(2, dtype=F64).expand(3, 2, 2), torch.ones(4, 2, dtype=F64)),
     ValueError, "'B'"),
    ("cholesky batch matrix", lambda: fl.cholesky_solve(
        torch.eye(2, dtype=F64).expand(3, 2, 2), torch.ones(5, 2, 1, dtype=F64)),
     ValueError, "'B'"),
    # parameter vectors: AttributeError / unnamed TypeError before
    ("params_vector None", lambda: fl.params_vector(None), TypeError, "model"),
    ("flatten_params floats", lambda: fl.flatten_params([1.0, 2.0]), TypeError, "tensors"),
    ("flatten_params None", lambda: fl.flatten_params(None), TypeError, "tensors"),
    ("unflatten_like floats", lambda: fl.unflatten_like(torch.ones(2), [1.0, 2.0]),
     TypeError, "like"),
    ("unflatten_like None", lambda: fl.unflatten_like(torch.ones(2), None), TypeError, "like"),
    ("selected names int", lambda: fl.selected_parameter_names(_model(), 5),
     TypeError, "params"),
    ("selected names module", lambda: fl.selected_parameter_names(_model(), nn.Linear(2, 2)),
     TypeError, "params"),
]


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in LINALG_CASES],
                         ids=[c[0] for c in LINALG_CASES])
def test_linalg_bad_argument(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_linalg_valid_edges_still_work() -> None:
    # LiSSA's checked steps: every check_every-th step and the last one
    for depth, every, steps in ((25, 10, [10, 20, 25]), (20, 10, [10, 20]), (5, 10, [5])):
        result = fl.lissa(_OP, _B, depth=depth, check_every=every, scale=10.0)
        assert result.steps.tolist() == steps
    # broadcasting leading dimensions still solve
    H = (2.0 * torch.eye(2, dtype=F64)).expand(3, 2, 2)
    X = fl.cholesky_solve(H, torch.ones(1, 2, 1, dtype=F64))
    assert X.shape == (3, 2, 1) and torch.allclose(X, torch.full_like(X, 0.5))
    assert torch.allclose(fl.cholesky_solve(H, torch.ones(3, 2, dtype=F64)),
                          torch.full((3, 2), 0.5, dtype=F64))
    # a large but representable damping is accepted
    assert fl.damped(_OP, 10**300).c == 1e300
    assert fl.params_vector(_model()).shape == (34,)
    assert fl.flatten_params((torch.ones(2), torch.zeros(1))).tolist() == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------------------
# influence_update and its options (checked before anything changes)

UPDATE_CASES = [
    ("tau big", dict(order=1, tau=BIG), ValueError, "tau"),
    ("damping big", dict(damping=BIG), ValueError, "damping"),
    ("tol big", dict(tol=BIG), ValueError, "tol"),
    ("loss_tolerance big", dict(loss_tolerance=BIG), ValueError, "loss_tolerance"),
    ("lissa scale big", dict(solver="lissa", lissa=fi.LissaSettings(scale=BIG)),
     ValueError, "lissa.scale"),
    ("lissa damping big", dict(solver="lissa", lissa=fi.LissaSettings(damping=BIG)),
     ValueError, "lissa.damping"),
    ("lissa seed str", dict(solver="lissa", lissa=fi.LissaSettings(seed="a")),
     TypeError, "lissa.seed"),
    ("lissa seed huge", dict(solver="lissa", lissa=fi.LissaSettings(seed=2**70)),
     ValueError, "lissa.seed"),
    ("lissa seed negative", dict(solver="lissa", lissa=fi.LissaSettings(seed=-1)),
     ValueError, "lissa.seed"),
    ("subsample_seed huge", dict(curvature_subsample=4, subsample_seed=2**70),
     ValueError, "subsample_seed"),
    ("max_direct_params str", dict(solver="direct", max_direct_params="x"),
     TypeError, "max_direct_params"),
    ("max_direct_params None", dict(solver="direct", max_direct_params=None),
     TypeError, "max_direct_params"),
    ("max_direct_params nan", dict(solver="direct", max_direct_params=math.nan),
     TypeError, "max_direct_params"),
    ("apply str", dict(damping=1.0, apply="no"), TypeError, "apply"),
    ("apply None", dict(damping=1.0, apply=None), TypeError, "apply"),
    ("check_loss int", dict(damping=1.0, check_loss=0), TypeError, "check_loss"),
    ("compute_residual str", dict(damping=1.0, compute_residual="yes"),
     TypeError, "compute_residual"),
    ("progress str", dict(damping=1.0, progress="no"), TypeError, "progress"),
]


@pytest.mark.parametrize(("options", "exc", "match"), [c[1:] for c in UPDATE_CASES],
                         ids=[c[0] for c in UPDATE_CASES])
def test_influence_update_bad_option(options, exc, match) -> None:
    model = _model()
    X, y = _data()
    new_y = 1 - y[:2]
    before = _snapshot(model, X, y, new_y)
    with pytest.raises(exc, match=match):
        fi.influence_update(model, X[:2], y[:2], None, new_y, train_data=(X, y), **options)
    _assert_unchanged(before, model, X, y, new_y)
    with pytest.raises(exc, match=match):  # the drivers' option check says the same
        fi.check_update_options(model, **options)


@pytest.mark.parametrize(("driver", "options", "exc", "match"), [
    ("repair", dict(max_direct_params="x"), TypeError, "max_direct_params"),
    ("features", dict(apply="no"), TypeError, "apply"),
    ("iterative", dict(tau=BIG, order=1), ValueError, "tau"),
], ids=["repair_labels", "unlearn_features", "iterative_label_repair"])
def test_drivers_bad_option_leave_state(driver, options, exc, match) -> None:
    model = _model()
    X, y = _data()
    before = _snapshot(model, X, y)
    with pytest.raises(exc, match=match):
        if driver == "repair":
            fi.repair_labels(model, X, y, [1], [0], **options)
        elif driver == "features":
            fi.unlearn_features(model, X, y, [0], **options)
        else:
            fi.iterative_label_repair(model, X, y, steps=1, **options)
    _assert_unchanged(before, model, X, y)


def test_iterative_label_repair_seed_too_large() -> None:
    model = _model()
    X, y = _data()
    before = _snapshot(model, X, y)
    with pytest.raises(ValueError, match="seed"):
        fi.iterative_label_repair(model, X, y, steps=1, seed=2**70, damping=1.0)
    _assert_unchanged(before, model, X, y)


# --------------------------------------------------------------------------------------
# gradients, predict and feature replacement

def _gradient_cases() -> list:
    X, y = _data()
    L = fi.default_loss
    return [
        ("loss_value model None", lambda m: fi.loss_value(None, L, X, y), TypeError, "model"),
        ("loss_value loss None", lambda m: fi.loss_value(m, None, X, y), TypeError, "loss_fn"),
        ("loss_value values tensor", lambda m: fi.loss_value(
            m, L, X, y, names=["0.bias"], values=torch.zeros(4, dtype=F64)),
         ValueError, "values"),
        ("loss_value values float32", lambda m: fi.loss_value(
            m, L, X, y, names=["0.bias"], values=[torch.zeros(4)]), TypeError, "values"),
        ("loss_gradient loss None", lambda m: fi.loss_gradient(m, None, X, y),
         TypeError, "loss_fn"),
        ("gradient_difference loss str", lambda m: fi.gradient_difference(
            m, "ce", X, y, X, y), TypeError, "loss_fn"),
        ("predict model None", lambda m: fi.predict(None, X), TypeError, "model"),
        ("predict inputs None", lambda m: fi.predict(m, None), TypeError, "inputs"),
        ("predict inputs numpy", lambda m: fi.predict(m, X.numpy()), TypeError, "inputs"),
        ("predict inputs scalar", lambda m: fi.predict(m, torch.tensor(1.0, dtype=F64)),
         ValueError, "inputs"),
        ("predict chunk 0", lambda m: fi.predict(m, X, chunk_size=0), ValueError,
         "chunk_size"),
        ("predict chunk -1", lambda m: fi.predict(m, X, chunk_size=-1), ValueError,
         "chunk_size"),
        ("predict chunk bool", lambda m: fi.predict(m, X, chunk_size=True), TypeError,
         "chunk_size"),
        ("predict chunk float", lambda m: fi.predict(m, X, chunk_size=1.5), TypeError,
         "chunk_size"),
    ]


GRADIENT_CASES = _gradient_cases()


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in GRADIENT_CASES],
                         ids=[c[0] for c in GRADIENT_CASES])
def test_gradients_and_predict_bad_argument(call, exc, match) -> None:
    model = _model()
    before = _snapshot(model)
    with pytest.raises(exc, match=match):
        call(model)
    _assert_unchanged(before, model)


def test_predict_and_loss_value_valid_edges() -> None:
    model = _model()
    X, y = _data()
    assert fi.predict(model, X[:0]).shape == (0,)
    assert fi.predict(model, X, chunk_size=3).shape == (8,)
    assert model.training  # mode restored
    bias = dict(model.named_parameters())["0.bias"].detach()
    assert math.isfinite(fi.loss_value(model, fi.default_loss, X, y, names=("0.bias",),
                                       values=(bias + 1.0,)))


@pytest.mark.parametrize(("inputs", "kwargs", "exc"), [
    (torch.ones(2, 3), dict(values=1e300), ValueError),  # inf in float32
    (torch.ones(2, 3, dtype=F64), dict(values=BIG), ValueError),
    (torch.ones(2, 3, dtype=F64), dict(values=-BIG), ValueError),
    (torch.ones(2, 3, dtype=F64), dict(rows=[0], values=torch.ones(1, 1, dtype=torch.cfloat)),
     TypeError),
], ids=["1e300 float32", "huge int", "huge negative int", "complex tensor"])
def test_replace_features_bad_values(inputs, kwargs, exc) -> None:
    copy = inputs.clone()
    with pytest.raises(exc, match="values"):
        fi.replace_features(inputs, [0], **kwargs)
    assert torch.equal(inputs, copy)


def test_replace_features_valid_edges() -> None:
    X = torch.ones(2, 3, dtype=F64)
    new, rows = fi.replace_features(X, [1], values=10**300)  # finite in float64
    assert rows.tolist() == [0, 1] and float(new[0, 1]) == 1e300
    model = _model()
    zeros = torch.zeros(4, 3, dtype=F64)
    result = fi.unlearn_features(model, zeros, torch.tensor([0, 1, 0, 1]), [0], damping=1.0)
    assert not result.applied and result.num_affected == 0


# --------------------------------------------------------------------------------------
# certified linear variant

def _linear_cases() -> list:
    X, y = _data()
    yb = (2 * y - 1).to(F64)
    w = torch.zeros(3, dtype=F64)

    def update(**kw):
        args = dict(X=X, y=yb, w=w, rows=[0], new_y=-yb[:1], lam=1.0)
        args.update(kw)
        return fi.linear_influence_update(**args)

    return [
        ("required_sigma residual big", lambda: fi.required_sigma(BIG), ValueError,
         "residual"),
        ("required_sigma epsilon big", lambda: fi.required_sigma(1.0, epsilon=BIG),
         ValueError, "epsilon"),
        ("fit_logistic lam big", lambda: fi.fit_logistic(X, yb, BIG), ValueError, "lam"),
        ("fit_logistic sigma big", lambda: fi.fit_logistic(X, yb, 1.0, sigma=BIG),
         ValueError, "sigma"),
        ("fit_logistic no rows", lambda: fi.fit_logistic(X[:0], yb[:0], 1.0), ValueError,
         "'X'"),
        ("update w int", lambda: update(w=w.long()), TypeError, "'w'"),
        ("update tau big", lambda: update(order=1, tau=BIG), ValueError, "tau"),
        ("update gamma big", lambda: update(gamma=BIG), ValueError, "gamma"),
        ("update lam big", lambda: update(lam=BIG), ValueError, "lam"),
    ]


LINEAR_CASES = _linear_cases()


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in LINEAR_CASES],
                         ids=[c[0] for c in LINEAR_CASES])
def test_linear_bad_argument(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_linear_update_float_weights_still_work() -> None:
    X, y = _data()
    yb = (2 * y - 1).to(F64)
    w, _ = fi.fit_logistic(X, yb, 1.0)
    result = fi.linear_influence_update(X, yb, w.float(), [0], new_y=-yb[:1], lam=1.0)
    assert result.weights.dtype == torch.float32


# --------------------------------------------------------------------------------------
# settings and experiment configurations

CONFIG_CASES = [
    ("step_scale batch_size 0", lambda: fi.LissaSettings(batch_size=0).step_scale(10),
     ValueError, "batch_size"),
    ("step_scale batch_size str", lambda: fi.LissaSettings(batch_size="a").step_scale(10),
     TypeError, "batch_size"),
    ("canary order float", lambda: CanaryUnlearnConfig(order=1.0).validate(), TypeError,
     "order"),
    ("canary damping inf", lambda: CanaryUnlearnConfig(damping=math.inf).validate(),
     ValueError, "damping"),
    ("canary damping big", lambda: CanaryUnlearnConfig(damping=BIG).validate(), ValueError,
     "damping"),
    ("canary seed negative", lambda: CanaryUnlearnConfig(seed=-1).validate(), ValueError,
     "seed"),
    ("canary seed str", lambda: CanaryUnlearnConfig(seed="a").validate(), TypeError, "seed"),
    ("canary replacement int", lambda: CanaryUnlearnConfig(replacement=5).validate(),
     TypeError, "replacement"),
    ("unlearn_canary config int", lambda: fi.unlearn_canary(None, config=5), TypeError,
     "config"),
    ("feature delta str", lambda: FeatureConfig(delta="a").validate(), TypeError, "delta"),
    ("feature delta None", lambda: FeatureConfig(delta=None).validate(), TypeError, "delta"),
    ("feature test_fraction str", lambda: FeatureConfig(test_fraction="a").validate(),
     TypeError, "test_fraction"),
    ("feature tau inf", lambda: FeatureConfig(tau=math.inf).validate(), ValueError, "tau"),
    ("feature l2 big", lambda: FeatureConfig(l2=BIG).validate(), ValueError, "l2"),
    ("feature value big", lambda: FeatureConfig(value=BIG).validate(), ValueError, "value"),
    ("feature binary None", lambda: FeatureConfig(binary=None).validate(), TypeError,
     "binary"),
    ("feature binary int", lambda: FeatureConfig(binary=5).validate(), TypeError, "binary"),
    ("run_feature_experiment None", lambda: fi.run_feature_experiment(None), TypeError,
     "config"),
]


@pytest.mark.parametrize(("call", "exc", "match"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])
def test_config_bad_argument(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_configs_valid_edges() -> None:
    assert fi.LissaSettings(batch_size=4).step_scale(10) == 3
    assert CanaryUnlearnConfig(order=1, damping=0, seed=2**64 - 1).validate().order == 1
    cfg = FeatureConfig(delta=0.5, test_fraction=0.25, tau=2, binary=[1, 7], value=-3.0,
                        mode="replace")
    assert cfg.validate() is cfg
