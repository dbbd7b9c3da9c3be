"""NumPy scalars as numbers: linalg, influence, metrics, grad, report, ops and certified.

Wherever a Python int, real or bool is accepted, the NumPy scalar of the same value is too
(``np.int64`` from ``np.arange``, ``np.float32`` from a computation, ``np.bool_``), with
bit-for-bit the same result, and configs store the plain Python value. Bools are still no
numbers and floats (even 2.0) still no ints.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import fastunlearn.influence as fi
import fastunlearn.linalg as fl
import fastunlearn.metrics as fm
import fastunlearn.ops as fo
import fastunlearn.report as fr
from fastunlearn.certified.experiment import ExperimentConfig
from fastunlearn.grad import PerSampleGradients
from fastunlearn.influence.experiment import RepairConfig

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _is_time(name: object) -> bool:
    """Whether a result field holds wall times (they differ between two identical runs)."""
    return isinstance(name, str) and (name in ("timings", "seconds", "elapsed")
                                      or name.endswith("time_s"))


def _py(value: Any) -> Any:
    """The equal Python value of a NumPy scalar (recursively in lists and tuples)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_py(v) for v in value)
    return value


def _keep(value: Any) -> Any:
    return value


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (NaN payloads and signed zeros compared too)."""
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().cpu().reshape(-1))
    return flat.view(torch.uint8) if t.numel() and t.dtype != torch.bool else flat


def _same(a: Any, b: Any, where: str = "result") -> None:
    """Assert ``a`` and ``b`` are identical: tensors bit for bit, numbers of the same type."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(_bits(a), _bits(b)), where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if not _is_time(f.name):
                _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if not _is_time(k):
                _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == b, f"{where}: {a} vs {b}"
        assert math.copysign(1.0, a) == math.copysign(1.0, b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


# --------------------------------------------------------------------------------------
# tiny problems

_A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=F64)
_OP = fl.DenseOperator(_A)
_B = torch.tensor([1.0, -2.0, 0.5], dtype=F64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, dtype=F64, generator=gen), torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])


def _sum_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets, reduction="sum")


def _update(n: Callable[[Any], Any], **kwargs: Any) -> Any:
    model = _model()
    X, y = _data()
    new_y = 1 - y[:2]
    return fi.influence_update(model, X[:2], y[:2], X[:2], new_y,
                               train_data=(X, torch.cat([new_y, y[2:]])),
                               **{k: n(v) for k, v in kwargs.items()})


def _lissa_settings(n: Callable[[Any], Any]) -> fi.LissaSettings:
    return fi.LissaSettings(batch_size=n(np.int64(4)), damping=n(np.float32(0.01)),
                            scale=n(np.float64(50.0)), depth=n(np.int64(8)),
                            repetitions=n(np.uint8(2)), seed=n(np.uint64(3)),
                            check_every=n(np.int16(3)))


def _linear_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(12, 3, dtype=F64, generator=gen)
    return X, (X[:, 0] > 0).to(F64)


def _records() -> list[dict[str, Any]]:
    return [{"n_removed": i + 1, "bound": 0.01 * (i + 1), "cumulative": 0.02 * (i + 1),
             "retrained": i == 2, "seconds": 0.1 + 0.01 * i} for i in range(4)]


def _png(path_fn: Callable[[], Any]) -> bytes:
    return path_fn().read_bytes()


def _logits(seed: int, models: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, models, 3, dtype=F64, generator=gen)


_LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


# --------------------------------------------------------------------------------------
# cases: each calls one entry point with ``n(numpy scalar)`` (n is _keep or _py)

CASES: dict[str, Callable[[Callable[[Any], Any], Any], Any]] = {
    # linalg
    "cg": lambda n, tmp: fl.cg(_OP, _B, tol=n(np.float32(1e-6)), atol=n(np.float64(0.0)),
                               maxiter=n(np.int64(10)), check_every=n(np.int32(2))),
    "lissa": lambda n, tmp: fl.lissa(_OP, _B, damping=n(np.float32(0.25)), scale=n(np.int64(8)),
                                     depth=n(np.int64(30)), repetitions=n(np.uint8(2)),
                                     check_every=n(np.int16(5)), progress=n(np.False_)),
    "CGInverseOperator": lambda n, tmp: fl.CGInverseOperator(
        _OP, tol=n(np.float32(1e-8)), maxiter=n(np.int64(20)),
        check_every=n(np.uint16(1))).matmat(_B[:, None]),
    "damped": lambda n, tmp: fl.damped(_OP, n(np.float32(0.5))).matmat(_B[:, None]),
    "NetworkHessianOperator": lambda n, tmp: fl.NetworkHessianOperator(
        _model(), _sum_ce, *_data(), damping=n(np.float32(0.5)),
        batch_size=n(np.int64(3))).matmat(torch.ones(26, 1, dtype=F64)),
    # influence
    "influence_update_cg": lambda n, tmp: _update(
        n, order=np.int64(2), damping=np.float32(0.5), tol=np.float64(1e-9),
        maxiter=np.int64(40), restarts=np.int8(1), chunk_size=np.int64(3),
        hvp_batch_size=np.uint32(5), loss_tolerance=np.float32(0.5), apply=np.False_,
        check_loss=np.True_, compute_residual=np.True_, progress=np.False_),
    "influence_update_first_order": lambda n, tmp: _update(
        n, order=np.int64(1), tau=np.float32(0.125), apply=np.False_),
    "influence_update_direct": lambda n, tmp: _update(
        n, solver="direct", damping=np.int64(1), max_direct_params=np.int64(100),
        curvature_subsample=np.int64(6), subsample_seed=np.uint64(7), apply=np.False_),
    "influence_update_lissa": lambda n, tmp: _update(
        n, solver="lissa", damping=np.float32(0.25), lissa=_lissa_settings(n),
        apply=np.False_),
    "check_update_options": lambda n, tmp: fi.check_update_options(
        _model(), order=n(np.int64(1)), tau=n(np.float32(0.5)), chunk_size=n(np.int64(2))),
    "repair_labels": lambda n, tmp: fi.repair_labels(
        _model(), *_data(), [0, 1], [1, 0], order=n(np.int64(2)), damping=n(np.float32(1.0)),
        apply=n(np.False_)),
    "iterative_label_repair": lambda n, tmp: fi.iterative_label_repair(
        _model(), *_data(), steps=n(np.int64(2)), batch_size=n(np.int64(3)),
        seed=n(np.uint64(5)), chunk_size=n(np.int32(4)), damping=n(np.float32(2.0))),
    "predict": lambda n, tmp: fi.predict(_model(), _data()[0], chunk_size=n(np.int64(3))),
    "replace_features": lambda n, tmp: fi.replace_features(_data()[0], [0, 2],
                                                           values=n(np.float32(0.5))),
    "unlearn_features": lambda n, tmp: fi.unlearn_features(
        _model(), *_data(), [1], values=n(np.float16(0.25)), damping=n(np.float32(1.0)),
        apply=n(np.False_)),
    "last_parameters": lambda n, tmp: fi.last_parameters(_model(), n(np.int64(2))),
    "loss_gradient": lambda n, tmp: fi.loss_gradient(_model(), _sum_ce, *_data(),
                                                     chunk_size=n(np.int64(3))),
    "GGNOperator": lambda n, tmp: fi.GGNOperator(
        _model(), _sum_ce, *_data(), damping=n(np.float32(0.5)),
        batch_size=n(np.int64(3))).matmat(torch.ones(26, 1, dtype=F64)),
    "fit_logistic": lambda n, tmp: fi.fit_logistic(
        *_linear_data(), n(np.float32(0.5)), sigma=n(np.float32(0.1)), seed=n(np.int64(3))),
    "linear_influence_update": lambda n, tmp: fi.linear_influence_update(
        *_linear_data(), torch.full((3,), 0.1, dtype=F64), [0, 1], lam=n(np.float32(0.5)),
        order=n(np.int64(1)), tau=n(np.float32(0.25)), epsilon=n(np.float64(0.5)),
        delta=n(np.float32(0.01)), gamma=n(np.int64(0))),
    "required_sigma": lambda n, tmp: fi.required_sigma(n(np.float32(0.5)), n(np.float64(0.1)),
                                                       n(np.float32(0.01))),
    # grad
    "clipped_sum": lambda n, tmp: PerSampleGradients(_model()).clipped_sum(
        *_data(), _sum_ce, n(np.float32(0.5))),
    # metrics
    "time_ratio": lambda n, tmp: fm.time_ratio(n(np.float32(3.0)), n(np.int64(12))),
    "lira_epsilons": lambda n, tmp: fm.lira_epsilons(
        _logits(1, 4)[:, :, 0], _logits(2, 4)[:, :, 0], delta=n(np.float32(0.25))),
    "epsilon_hat": lambda n, tmp: fm.epsilon_hat(_logits(1, 4), _logits(2, 4), _LABELS,
                                                 delta=n(np.float32(0.25))),
    "competition_score": lambda n, tmp: fm.competition_score(
        _logits(1, 4), _logits(2, 4), _LABELS, delta=n(np.float64(1e-5))),
    "evaluate_logits": lambda n, tmp: fm.evaluate_logits(
        _logits(1, 4), _logits(2, 4), _LABELS, delta=n(np.float32(0.25)),
        competition_delta=n(np.float64(1e-5))),
    "per_class_accuracy": lambda n, tmp: fm.per_class_accuracy(
        _logits(1, 1)[:, 0], _LABELS, num_classes=n(np.int64(4))),
    "forget_score": lambda n, tmp: fm.forget_score(torch.tensor([0.1, 0.7, 2.0]),
                                                   n(np.int64(40))),
    "score_bins": lambda n, tmp: fm.score_bins(n(np.uint16(40))),
    "final_score": lambda n, tmp: fm.final_score(n(np.float32(0.5)), n(np.float64(0.9)), 0.95,
                                                 n(np.float32(0.8)), 0.85),
    "svc_mia_efficacy": lambda n, tmp: fm.svc_mia_efficacy(
        (_logits(3, 1)[:, 0], _LABELS), (_logits(4, 1)[:, 0], _LABELS),
        (_logits(5, 1)[:, 0], _LABELS), C=n(np.int64(3))),
    "Stopwatch": lambda n, tmp: fm.Stopwatch(cuda_sync=n(np.False_)).cuda_sync,
    # report
    "plot_bounds": lambda n, tmp: _png(lambda: fr.plot_bounds(
        _records(), n(np.float32(0.25)), tmp / "b.png", worst_case=n(np.float64(0.05)))),
    "plot_times": lambda n, tmp: _png(lambda: fr.plot_times(_records(), n(np.int64(3)),
                                                            tmp / "t.png")),
    "plot_accuracy": lambda n, tmp: _png(lambda: fr.plot_accuracy(
        [{"n_removed": n(np.int64(i)), "test_accuracy": n(np.float32(0.9))} for i in range(3)],
        tmp / "a.png", retrains=[n(np.int64(2))])),
    # ops
    "glm_hvp": lambda n, tmp: fo.glm_hvp(_A, torch.ones(3, 2, dtype=F64),
                                         torch.ones(3, 2, dtype=F64), n(np.float32(0.5))),
    "glm_hessian": lambda n, tmp: fo.glm_hessian(_A, torch.ones(3, 2, dtype=F64),
                                                 n(np.int64(2))),
    "jacobi_inverse_diagonal": lambda n, tmp: fo.jacobi_inverse_diagonal(
        _A, torch.ones(3, 2, dtype=F64), n(np.float16(0.5))),
    "glm_cg": lambda n, tmp: fo.glm_cg(_A, torch.ones(3, 2, dtype=F64),
                                       torch.ones(3, 2, dtype=F64), n(np.float32(0.5)),
                                       tol=n(np.float32(1e-6)), maxiter=n(np.int64(7))),
    "knn_extreme": lambda n, tmp: fo.knn_extreme(_A, _A.T.contiguous(), n(np.int64(2)),
                                                 largest=n(np.True_)),
    "per_sample_grad": lambda n, tmp: fo.per_sample_grad(
        torch.ones(2, 3, dtype=F64), torch.full((2, 4), 0.5, dtype=F64), bias=n(np.True_)),
    "per_sample_sq_norm": lambda n, tmp: fo.per_sample_sq_norm(
        torch.ones(2, 3, dtype=F64), torch.full((2, 4), 0.5, dtype=F64), bias=n(np.True_)),
    "per_sample_weighted_sum": lambda n, tmp: fo.per_sample_weighted_sum(
        torch.ones(2, 3, dtype=F64), torch.full((2, 4), 0.5, dtype=F64),
        torch.tensor([1.0, 2.0], dtype=F64), bias=n(np.False_)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_scalar_gives_the_python_result(name, tmp_path):
    (tmp_path / "np").mkdir()
    (tmp_path / "py").mkdir()
    with_numpy = CASES[name](_keep, tmp_path / "np")
    with_python = CASES[name](_py, tmp_path / "py")
    _same(with_numpy, with_python)


# --------------------------------------------------------------------------------------
# configs and settings: equal, same asdict / JSON, plain Python fields

CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "LissaSettings": (fi.LissaSettings, {
        "batch_size": np.int64(4), "damping": np.float32(0.01), "scale": np.float64(50.0),
        "depth": np.int64(8), "repetitions": np.uint8(2), "seed": np.uint64(2**64 - 1),
        "check_every": np.int16(3)}),
    "RepairConfig": (RepairConfig, {
        "budget": np.int64(20), "seed": np.int64(2), "epochs": np.int32(3),
        "lr": np.float32(1e-3), "order": np.int64(1), "damping": np.float64(10.0),
        "tau": np.float32(0.5), "steps": np.int64(2), "hvp_batch_size": np.int64(64),
        "cg_tol": np.float32(1e-4), "lissa_depth": np.uint16(5), "progress": np.True_}),
    "CanaryUnlearnConfig": (fi.CanaryUnlearnConfig, {
        "seq_len": np.int64(8), "stride": np.int64(2), "order": np.int64(2),
        "damping": np.float32(3.0), "cg_maxiter": np.int64(5), "hvp_windows": np.int32(16),
        "retrain": np.False_, "seed": np.uint64(9), "progress": np.bool_(False)}),
    "FeatureConfig": (fi.FeatureConfig, {
        "columns": (np.int64(3), np.int64(5)), "top_k": np.int64(2), "n_rows": np.int64(10),
        "value": np.float32(0.5), "l2": np.float64(2.0), "steps": np.int8(2),
        "tau": np.float32(0.25), "test_fraction": np.float32(0.25), "seed": np.int64(4),
        "linear": np.True_, "binary": (np.int64(1), np.int64(7)),
        "delta": np.float64(0.05), "epsilon": np.float32(0.5)}),
    "certified.ExperimentConfig": (ExperimentConfig, {
        "lam": np.float32(1e-3), "std": np.int64(5), "epsilon": np.float64(0.5),
        "delta": np.float32(1e-4), "num_steps": np.int64(10), "num_removes": np.int64(3),
        "batch": np.int32(2), "seed": np.uint32(1), "cg_tol": np.float32(0.01),
        "target_epsilon": np.float64(2.0), "retrain": np.False_, "plots": np.False_}),
}


# every field is set (to a NumPy scalar), some of them pointless together: said, not tested
@pytest.mark.filterwarnings("ignore:.* no effect with :UserWarning")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_built_with_numpy_equals_the_python_one(name):
    cls, values = CONFIGS[name]
    with_numpy, with_python = cls(**values), cls(**_py(values))
    assert with_numpy == with_python
    assert dataclasses.asdict(with_numpy) == dataclasses.asdict(with_python)
    dump = json.dumps(dataclasses.asdict(with_numpy), sort_keys=True, default=repr)
    assert dump == json.dumps(dataclasses.asdict(with_python), sort_keys=True, default=repr)
    assert repr(with_numpy) == repr(with_python)
    for field, value in values.items():
        stored = getattr(with_numpy, field)
        expected = _py(value)
        assert type(stored) is type(expected), field
        if isinstance(stored, tuple):
            assert all(type(s) is type(e) for s, e in zip(stored, expected, strict=True))
    if hasattr(with_numpy, "validate"):
        with_numpy.validate()


def test_config_field_set_later_is_plain_after_validate():
    config = RepairConfig()
    config.seed = np.int64(3)
    config.damping = np.float32(2.0)
    config.validate()
    assert type(config.seed) is int and type(config.damping) is float
    assert json.dumps(dataclasses.asdict(config))


def test_lissa_settings_used_by_influence_update_are_plain():
    settings = _lissa_settings(_keep)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        assert type(value) in (int, float, str), f.name
    assert settings.step_scale(np.int64(9)) == 3


def test_update_options_hold_python_values():
    opts = fi.check_update_options(_model(), order=np.int64(1), tau=np.float32(0.5))
    assert type(opts.order) is int and type(opts.tau) is float


# --------------------------------------------------------------------------------------
# still refused: bools as numbers, floats as ints, ints as flags

REFUSED: dict[str, tuple[str, Callable[[], Any]]] = {
    "lissa depth True": ("depth", lambda: fl.lissa(_OP, _B, depth=True)),
    "lissa depth np.bool_": ("depth", lambda: fl.lissa(_OP, _B, depth=np.True_)),
    "lissa depth np.float64(2.0)": ("depth", lambda: fl.lissa(_OP, _B, depth=np.float64(2.0))),
    "lissa progress np.int64(1)": ("progress", lambda: fl.lissa(_OP, _B,
                                                                progress=np.int64(1))),
    "cg maxiter np.float64(2.0)": ("maxiter", lambda: fl.cg(_OP, _B,
                                                            maxiter=np.float64(2.0))),
    "cg tol np.bool_": ("tol", lambda: fl.cg(_OP, _B, tol=np.True_)),
    "influence damping np.bool_": ("damping", lambda: _update(_keep, damping=np.True_)),
    "influence restarts np.float64": ("restarts", lambda: _update(_keep,
                                                                  restarts=np.float64(1.0))),
    "influence apply np.int64": ("apply", lambda: _update(_keep, apply=np.int64(1))),
    "influence order np.float64": ("order", lambda: _update(_keep, order=np.float64(2.0))),
    "lissa settings depth np.float64": ("lissa.depth", lambda: _update(
        _keep, solver="lissa", lissa=fi.LissaSettings(depth=np.float64(2.0)))),
    "last_parameters np.bool_": ("count", lambda: fi.last_parameters(_model(), np.True_)),
    "fit_logistic seed np.float64": ("seed", lambda: fi.fit_logistic(
        *_linear_data(), 0.5, seed=np.float64(2.0))),
    "time_ratio np.bool_": ("seconds", lambda: fm.time_ratio(np.True_, 1.0)),
    "lira delta True": ("delta", lambda: fm.lira_epsilons(
        _logits(1, 4)[:, :, 0], _logits(2, 4)[:, :, 0], delta=True)),
    "plot_times np.bool_": ("retrain_seconds", lambda: fr.plot_times(
        _records(), np.True_, "unused.png")),
    "glm_cg maxiter np.float64": ("maxiter", lambda: fo.glm_cg(
        _A, torch.ones(3, 2, dtype=F64), torch.ones(3, 2, dtype=F64), 0.5,
        maxiter=np.float64(2.0))),
    "glm_hvp lam np.bool_": ("lam", lambda: fo.glm_hvp(
        _A, torch.ones(3, 2, dtype=F64), torch.ones(3, 2, dtype=F64), np.True_)),
    "knn k np.bool_": ("'k'", lambda: fo.knn_extreme(_A, _A, np.True_)),
    "knn k np.float64": ("'k'", lambda: fo.knn_extreme(_A, _A, np.float64(2.0))),
    "knn largest np.int64": ("largest", lambda: fo.knn_extreme(_A, _A, 1,
                                                               largest=np.int64(1))),
    "per_sample_grad bias np.int64": ("bias", lambda: fo.per_sample_grad(
        torch.ones(2, 3, dtype=F64), torch.ones(2, 4, dtype=F64), bias=np.int64(1))),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bools_as_numbers_and_floats_as_ints_still_refused(name):
    argument, call = REFUSED[name]
    with pytest.raises(TypeError, match=argument):
        call()


def test_clipped_sum_refuses_numpy_bool():
    with pytest.raises(ValueError, match="max_norm"):
        PerSampleGradients(_model()).clipped_sum(*_data(), _sum_ce, np.True_)


def test_copies_of_models_unchanged_by_numpy_runs():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    X, y = _data()
    fi.repair_labels(model, X, y, [0], [1], damping=np.float32(1.0), apply=np.False_)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
