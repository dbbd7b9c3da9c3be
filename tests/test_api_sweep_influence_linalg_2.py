"""Bad-argument sweep of ``fastunlearn.influence`` and ``fastunlearn.linalg``, second part.

Each bad argument raises ValueError/TypeError naming it, before anything changes. The
comments give what the code did before.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastunlearn.influence as fi
import fastunlearn.linalg as fl
from fastunlearn.influence.feature_experiment import FeatureConfig, load_feature_data
from fastunlearn.influence.gradients import check_sum_reduction

F64 = torch.float64
_EYE = 2.0 * torch.eye(3, dtype=F64)


# --------------------------------------------------------------------------------------
# CGInverseOperator: cg's options checked at construction (before: only at the first
# product, so a broken operator was built and passed around)

@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(tol=-1), ValueError, "'tol'"),
    (dict(atol=math.nan), ValueError, "'atol'"),
    (dict(tol=10**400), ValueError, "'tol'"),
    (dict(maxiter="x"), TypeError, "'maxiter'"),
    (dict(maxiter=-1), ValueError, "'maxiter'"),
    (dict(check_every=0), ValueError, "'check_every'"),
    (dict(callback=5), TypeError, "'callback'"),
    (dict(precond="ilu"), ValueError, "'precond'"),
    (dict(precond=5), TypeError, "'precond'"),
    (dict(precond=torch.ones(3, dtype=torch.long)), TypeError, "'precond'"),
], ids=["tol<0", "atol nan", "tol big", "maxiter str", "maxiter<0", "check_every 0",
        "callback int", "precond str", "precond int", "precond int tensor"])
def test_cg_inverse_operator_checks_cg_kwargs_at_construction(kwargs, exc, match) -> None:
    A = fl.DenseOperator(_EYE)
    with pytest.raises(exc, match=match):
        fl.CGInverseOperator(A, **kwargs)
    # cg itself says the same
    with pytest.raises(exc, match=match):
        fl.cg(A, torch.ones(3, dtype=F64), **kwargs)


def test_cg_inverse_operator_valid_kwargs_still_work() -> None:
    A = fl.DenseOperator(_EYE)
    seen = []
    for kwargs in (dict(), dict(tol=0, atol=1e-12, maxiter=None, check_every=None),
                   dict(precond="jacobi", callback=lambda *a: seen.append(a[0])),
                   dict(precond=torch.full((3,), 0.5, dtype=F64)),
                   dict(precond=fl.DenseOperator(0.5 * torch.eye(3, dtype=F64))),
                   dict(precond=lambda R: 0.5 * R, maxiter=10)):
        inv = fl.CGInverseOperator(A, on_unconverged="raise", **kwargs)
        assert torch.allclose(inv @ torch.ones(3, dtype=F64), torch.full((3,), 0.5, dtype=F64))
    assert seen  # the callback ran


# --------------------------------------------------------------------------------------
# DenseOperator: non-finite H (before: accepted; CG then returned NaN solutions)

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dense_operator_refuses_non_finite(bad) -> None:
    H = _EYE.clone()
    H[0, 1] = bad
    with pytest.raises(ValueError, match="'H'"):
        fl.DenseOperator(H)


# --------------------------------------------------------------------------------------
# lissa(progress=...) (before: any truthy value showed a bar, "no" included)

@pytest.mark.parametrize("progress", ["no", 1, None])
def test_lissa_progress_must_be_bool(progress) -> None:
    with pytest.raises(TypeError, match="'progress'"):
        fl.lissa(fl.DenseOperator(_EYE), torch.ones(3, dtype=F64), depth=2, progress=progress)


# --------------------------------------------------------------------------------------
# FeatureConfig.validate: seed range and negative columns (before: accepted; a seed
# beyond 2**64 - 1 failed in torch.Generator.manual_seed in replace mode, a negative
# column only against the data inside run_feature_experiment)

@pytest.mark.parametrize(("config", "match"), [
    (FeatureConfig(seed=2**64, dataset="wine"), "'seed'"),
    (FeatureConfig(seed=2**70, mode="replace"), "'seed'"),
    # the digits split seeds seed * 16 + digit: before, accepted here and refused by the
    # loader once the run had started
    (FeatureConfig(seed=2**60), r"'seed' must be an int in \[0, 2\*\*60 - 1\]"),
    (FeatureConfig(columns=(-1,)), "'columns'"),
    (FeatureConfig(columns=[3, -2]), "'columns'"),
], ids=["seed 2**64", "seed 2**70 replace", "digits seed 2**60", "columns -1",
        "columns 3,-2"])
def test_feature_config_validate(config, match) -> None:
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_feature_config_valid_edges() -> None:
    cfg = FeatureConfig(seed=2**64 - 1, columns=(0, 5), dataset="wine")
    assert cfg.validate() is cfg
    digits = FeatureConfig(seed=2**60 - 1)
    assert digits.validate() is digits


@pytest.mark.parametrize(("dataset", "seed"), [("digits", 2**60 - 1), ("wine", 2**64 - 1)])
def test_feature_data_loads_at_the_largest_seed(dataset: str, seed: int) -> None:
    data = load_feature_data(dataset, seed=seed)
    assert data.X_train.shape[0] > 0 and data.X_test.shape[0] > 0
    with pytest.raises(ValueError, match="'seed' must be an int in"):
        load_feature_data(dataset, seed=seed + 1)


# --------------------------------------------------------------------------------------
# render_feature_report / write_feature_outputs on a malformed result (before: KeyError)

@pytest.mark.parametrize(("result", "exc", "match"), [
    ({}, ValueError, "'config'"),
    (None, TypeError, "'result'"),
    ({"config": {}, "data": {}, "original": {}, "retrained": {}}, ValueError, "'methods'"),
    ({"config": {}, "data": {}, "original": {}, "retrained": {}, "methods": {}},
     ValueError, "'dataset'"),
], ids=["empty", "None", "no methods", "no dataset"])
def test_feature_report_malformed_result(result, exc, match, tmp_path) -> None:
    with pytest.raises(exc, match=match):
        fi.render_feature_report(result)
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        fi.write_feature_outputs(result, out)
    assert not out.exists()  # nothing written


# --------------------------------------------------------------------------------------
# influence_update: targets the loss cannot take (before: a raw torch RuntimeError from
# cross_entropy inside check_sum_reduction)

def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    return model


@pytest.mark.parametrize("given", ["targets", "new_targets"])
def test_influence_update_loss_cannot_take_targets(given) -> None:
    model = _model()
    X = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(4, 2, dtype=torch.long)  # 2-D integer targets: not for cross-entropy
    new_y = 1 - y[:2] if given == "new_targets" else None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"'loss_fn'.*'{given}'") as info:
        fi.influence_update(model, X[:2], y[:2], None, new_y, train_data=(X, y), damping=1.0)
    assert isinstance(info.value.__cause__, RuntimeError)  # the loss's error, chained
    assert str(info.value.__cause__) in str(info.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert model.training


def test_check_sum_reduction_model_errors_unchanged() -> None:
    # a model that cannot run raises its own error, as before (not reworded as 'loss_fn')
    model = _model()
    with pytest.raises(RuntimeError):
        check_sum_reduction(model, fi.default_loss, torch.ones(1, 5, dtype=F64),
                            torch.zeros(1, dtype=torch.long))
    check_sum_reduction(model, fi.default_loss, torch.ones(1, 3, dtype=F64),
                        torch.zeros(1, dtype=torch.long))  # a summed loss passes
