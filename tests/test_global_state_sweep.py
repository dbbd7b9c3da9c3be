"""Nothing lost, reproducible: a sweep over the public entry points on tiny inputs.

Every entry point is called with seeded global RNGs and checked to leave them as they were
(torch, numpy and Python ``random``; where it takes a ``seed`` it must use that), to leave
torch's global flags and the caller's objects (model weights, buffers, modes,
``requires_grad``, ``.grad``, input tensors and arrays) as promised, also when it raises
on bad input, and to give bitwise-identical results for the same seed and different
results for different seeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from helpers import used_settings
from torch import Tensor, nn

import fastunlearn.influence as inf
from fastunlearn import exposure, metrics
from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.certified.extractors import fgsm_attack, pgd_attack
from fastunlearn.data import digits_images, load_digits_dataset, parse_forget_spec
from fastunlearn.forget import available_methods, get_method, run_method
from fastunlearn.harness import HarnessConfig, HarnessData, TrainSettings, run_harness
from fastunlearn.influence.canary import CanaryUnlearnConfig, unlearn_canary
from fastunlearn.influence.experiment import RepairConfig, run_repair_experiment
from fastunlearn.influence.feature_experiment import FeatureConfig, run_feature_experiment
from tests.helpers import canonical

# --- global state ----------------------------------------------------------------------


def _flags() -> dict[str, Any]:
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "num_threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "mkldnn": torch.backends.mkldnn.enabled,
        "grad_enabled": torch.is_grad_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "anomaly": torch.is_anomaly_enabled(),
    }


def _set_flags(f: dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(f["deterministic"],
                                       warn_only=f["deterministic_warn_only"])
    torch.set_num_threads(f["num_threads"])
    torch.set_default_dtype(f["default_dtype"])
    torch.backends.cuda.matmul.allow_tf32 = f["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = f["cudnn_tf32"]
    torch.backends.cudnn.deterministic = f["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = f["cudnn_benchmark"]
    torch.backends.mkldnn.enabled = f["mkldnn"]
    torch.set_grad_enabled(f["grad_enabled"])
    torch.set_float32_matmul_precision(f["float32_matmul_precision"])
    torch.autograd.set_detect_anomaly(f["anomaly"])


@pytest.fixture(autouse=True)
def _caller_flags():
    """Run every test with TF32 allowed (certified code switches it off) on one thread (the
    problems are tiny; the certified tests use two, their removals one), restoring the flags
    and the numpy / Python RNGs after."""
    saved, np_state, py_state = _flags(), np.random.get_state(), random.getstate()
    torch.backends.cuda.matmul.allow_tf32 = True  # also sets float32_matmul_precision "high"
    torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(1)
    yield
    _set_flags(saved)
    np.random.set_state(np_state)
    random.setstate(py_state)


#: The opposite settings: an entry point that sets a flag instead of restoring it fails here.
OTHER_FLAGS = {
    "deterministic": True, "deterministic_warn_only": True, "num_threads": 1,
    "default_dtype": torch.float64, "matmul_tf32": False, "cudnn_tf32": False,
    "cudnn_deterministic": True, "cudnn_benchmark": True, "mkldnn": False,
    "grad_enabled": True, "float32_matmul_precision": "highest", "anomaly": False,
}


def _rng_state() -> tuple[Tensor, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _assert_rng_equal(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0]), "torch's global RNG state changed"
    (kind0, keys0, pos0, *rest0), (kind1, keys1, pos1, *rest1) = before[1], after[1]
    assert kind0 == kind1 and np.array_equal(keys0, keys1) and pos0 == pos1 \
        and rest0 == rest1, "numpy's global RNG state changed"
    assert before[2] == after[2], "Python's random state changed"


@contextlib.contextmanager
def state_kept() -> Iterator[None]:
    """Seed the three global RNGs, run the body, and check they and every flag are as before."""
    torch.manual_seed(20240601)
    np.random.seed(20240601)
    random.seed(20240601)
    rng, flags = _rng_state(), _flags()
    yield
    _assert_rng_equal(rng, _rng_state())
    assert _flags() == flags


# --- caller's objects ------------------------------------------------------------------


def _model_state(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                     + len(m._backward_hooks) for m in model.modules()),
    }


def _assert_model_kept(model: nn.Module, before: dict[str, Any], *, weights: bool = True
                       ) -> None:
    after = _model_state(model)
    if weights:
        for k, v in before["state"].items():
            assert torch.equal(after["state"][k], v), f"{k} changed"
    for key in ("modes", "requires_grad", "hooks"):
        assert after[key] == before[key], f"the model's {key} changed"
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None) == (g1 is None), ".grad set or cleared"
        assert g0 is None or torch.equal(g0, g1), ".grad changed"


def _copies(*objects: Any) -> list[Any]:
    return [o.clone() if isinstance(o, Tensor) else o.copy() for o in objects]


def _assert_unchanged(originals: list[Any], objects: tuple[Any, ...]) -> None:
    for i, (a, b) in enumerate(zip(originals, objects, strict=True)):
        same = torch.equal(a, b) if isinstance(a, Tensor) else np.array_equal(a, b)
        assert same, f"input {i} was modified in place"




def _same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


# --- data ------------------------------------------------------------------------------

_DIGITS = load_digits_dataset(dtype=torch.float32)
_X, _Y = _DIGITS.X_train[:200].clone(), _DIGITS.y_train[:200].clone()
_BINARY = load_digits_dataset(binary=(3, 8))
_XB, _YB = _BINARY.X_train[:60].clone(), _BINARY.y_train[:60].clone()


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# --- forgetting methods ------------------------------------------------------------------

_FORGET_SETTINGS: dict[str, dict[str, Any]] = {
    "retrain": {"milestones": ()},
    "scrub": {"max_steps": 1, "lr_decay_epochs": ()},
    "unsir": {"noise_steps": 2, "noise_size": 8, "retain_per_class": 3},
    "antisamples": {"tail_randomized": 2},
    "antisamples_multiclass": {"tail_randomized": 2},
    "prune_last_layer": {"overfit_epochs": 1},
    "selective_pruning": {"overfit_epochs": 1},
    "pruning_complex": {"overfit_epochs": 1},
    "influence": {"maxiter": 5, "retain_fraction": 0.5},  # a seeded curvature subsample
}


def _forget_model() -> nn.Module:
    """BatchNorm, dropout, a frozen first layer, eval mode and stale ``.grad`` fields."""
    model = _seeded(1, lambda: nn.Sequential(
        nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)))
    model[0].requires_grad_(False)
    model.eval()
    model(_X[:4]).square().sum().backward()
    return model


def _forget_sets() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    whole_class = _Y == 0  # UNSIR and single-class anti-samples forget whole classes
    return (_X[whole_class], _Y[whole_class]), (_X[~whole_class], _Y[~whole_class])


def _forget_config(name: str, seed: int = 0) -> Any:
    _, cls = get_method(name)
    return cls(**used_settings(name, epochs=1, batch_size=32), seed=seed,
               **_FORGET_SETTINGS.get(name, {}))


@pytest.mark.parametrize("name", available_methods())
def test_forget_method_keeps_caller_state_and_is_reproducible(name):
    model = _forget_model()
    (fx, fy), (rx, ry) = _forget_sets()
    inputs = (fx, fy, rx, ry)
    saved_inputs, saved_model = _copies(*inputs), _model_state(model)
    config = _forget_config(name)
    with state_kept():
        out = run_method(name, model, (fx, fy), (rx, ry), config)
    _assert_model_kept(model, saved_model)
    _assert_unchanged(saved_inputs, inputs)
    assert not out.training
    assert all(p.grad is None for p in out.parameters()), "the new model carries gradients"
    caller = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not any(t.data_ptr() in caller for t in [*out.parameters(), *out.buffers()])
    assert not out[0].weight.requires_grad and torch.equal(out[0].weight, model[0].weight)

    with state_kept():
        again = run_method(name, model, (fx, fy), (rx, ry), config)
    assert _same(out, again), "the same seed gave a different model"
    other = run_method(name, model, (fx, fy), (rx, ry), _forget_config(name, seed=1))
    assert not _same(out, other), "a different seed gave the same model"

    # called from evaluation code: the method still trains, and the mode is kept
    with torch.no_grad(), state_kept():
        quiet = run_method(name, model, (fx, fy), (rx, ry), config)
        assert not torch.is_grad_enabled()
    assert _same(out, quiet)


@pytest.mark.parametrize("name", available_methods())
def test_forget_method_refuses_bad_labels_and_keeps_everything(name):
    model = _forget_model()
    (fx, fy), (rx, ry) = _forget_sets()
    bad = fy + 100
    saved_model = _model_state(model)
    with state_kept(), pytest.raises(ValueError, match="out of range"):
        run_method(name, model, (fx, bad), (rx, ry), _forget_config(name))
    _assert_model_kept(model, saved_model)


def test_forget_method_keeps_the_other_flags():
    model = _forget_model().double()
    _set_flags(OTHER_FLAGS)
    (fx, fy), (rx, ry) = _forget_sets()
    with state_kept():
        run_method("scrub", model, (fx.double(), fy), (rx.double(), ry), _forget_config("scrub"))
    assert _flags() == OTHER_FLAGS


# --- influence -------------------------------------------------------------------------


def _influence_model() -> nn.Module:
    model = _seeded(2, lambda: nn.Sequential(
        nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 2)
    ).double())
    model.train()
    model(_XB[:4]).sum().backward()
    return model


_FLIP = [0, 1, 2]
_FIXED = torch.cat([1 - _YB[:3], _YB[3:]])  # the corrected training labels
_KW = {"damping": 0.1, "loss_tolerance": 10.0}


def _new_labels() -> list[int]:
    return (1 - _YB[_FLIP]).tolist()


def _lissa(seed: int) -> inf.LissaSettings:
    return inf.LissaSettings(batch_size=16, depth=5, repetitions=1, scale=100.0,
                             damping=0.01, seed=seed)


#: name -> (call(model, seed), whether the model is updated in place, whether seed matters)
INFLUENCE_CASES: dict[str, tuple[Callable[[nn.Module, int], Any], bool, bool]] = {
    "influence_update cg": (lambda m, s: inf.influence_update(
        m, _XB[:3], _YB[:3], None, 1 - _YB[:3], train_data=(_XB, _FIXED), **_KW), True, False),
    "influence_update lissa": (lambda m, s: inf.influence_update(
        m, _XB[:3], _YB[:3], None, 1 - _YB[:3], train_data=(_XB, _FIXED), solver="lissa",
        lissa=_lissa(s), loss_tolerance=10.0), True, True),
    "influence_update direct": (lambda m, s: inf.influence_update(
        m, _XB[:3], _YB[:3], None, 1 - _YB[:3], train_data=(_XB, _FIXED), solver="direct",
        params=inf.last_parameters(m, 1), **_KW), True, False),
    "influence_update order 1": (lambda m, s: inf.influence_update(
        m, _XB[:3], _YB[:3], None, 1 - _YB[:3], train_data=(_XB, _FIXED), order=1, tau=0.05,
        loss_tolerance=10.0), True, False),
    "influence_update subsample": (lambda m, s: inf.influence_update(
        m, _XB[:3], _YB[:3], None, 1 - _YB[:3], train_data=(_XB, _FIXED), curvature="ggn",
        curvature_subsample=20, subsample_seed=s, **_KW), True, True),
    "influence_update apply=False": (lambda m, s: inf.influence_update(
        m, _XB[:3], _YB[:3], None, 1 - _YB[:3], train_data=(_XB, _FIXED), apply=False,
        **_KW), False, False),
    "repair_labels": (lambda m, s: inf.repair_labels(
        m, _XB, _YB, _FLIP, _new_labels(), **_KW), True, False),
    "iterative_label_repair": (lambda m, s: inf.iterative_label_repair(
        m, _XB, 1 - _YB, steps=2, batch_size=4, seed=s, **_KW), True, True),
    "unlearn_features": (lambda m, s: inf.unlearn_features(
        m, _XB, _YB, [10, 20], rows=[0, 1, 2], **_KW), True, False),
    "replace_features": (lambda m, s: inf.replace_features(_XB, [10, 20]), False, False),
    "predict": (lambda m, s: inf.predict(m, _XB), False, False),
}


@pytest.mark.parametrize("case", list(INFLUENCE_CASES))
def test_influence_keeps_caller_state_and_is_reproducible(case):
    call, in_place, seeded = INFLUENCE_CASES[case]
    model = _influence_model()
    saved_inputs, saved_model = _copies(_XB, _YB), _model_state(model)
    with state_kept():
        result = call(model, 0)
    _assert_unchanged(saved_inputs, (_XB, _YB))
    # the weights change in place (documented) where the update applies; nothing else does
    _assert_model_kept(model, saved_model, weights=not in_place)
    if in_place:
        assert not _same(model.state_dict(), saved_model["state"]), "no update was applied"
    again_model = _influence_model()
    with state_kept():
        again = call(again_model, 0)
    assert _same(result, again) and _same(model, again_model)
    if seeded:
        other_model = _influence_model()
        other = call(other_model, 1)
        assert not (_same(result, other) and _same(model, other_model))


def test_influence_refuses_bad_input_and_keeps_everything():
    model = _influence_model()
    saved = _model_state(model)
    with state_kept():
        with pytest.raises(ValueError, match="new_labels"):
            inf.repair_labels(model, _XB, _YB, _FLIP, [5, 5, 5], **_KW)
        with pytest.raises(ValueError, match="damping"):
            inf.repair_labels(model, _XB, _YB, _FLIP, _new_labels(), damping=-1.0)
        with pytest.raises(ValueError, match="seed"):
            inf.iterative_label_repair(model, _XB, _YB, seed=-1)
    _assert_model_kept(model, saved)


class _TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.rnn = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(self.embed(x))
        return self.head(h[:, -1])


@pytest.mark.parametrize("mkldnn", [True, False])
def test_influence_on_an_rnn_restores_the_kernel_flags(mkldnn):
    torch.backends.mkldnn.enabled = mkldnn  # the update switches oneDNN off while it runs
    model = _seeded(0, lambda: _TokenModel().double())
    gen = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 5, (20, 6), generator=gen), torch.randint(0, 2, (20,),
                                                                                generator=gen)
    with state_kept():
        result = inf.repair_labels(model, tokens, labels, [0], [1 - int(labels[0])],
                                   damping=1.0, loss_tolerance=10.0)
        with pytest.raises(ValueError, match="new_labels"):
            inf.repair_labels(model, tokens, labels, [0], [7], damping=1.0)
    assert result.applied


def test_linear_influence_update_and_fit_logistic():
    X, y = _XB, _YB
    saved = _copies(X, y)
    with state_kept():
        w, b = inf.fit_logistic(X, y, 1e-2, sigma=0.5, seed=3)
        res = inf.linear_influence_update(X, y, w, [0, 1], new_y=1 - y[:2], lam=1e-2, b=b,
                                          sigma=0.5)
        first = inf.linear_influence_update(X, y, w, [0, 1], new_y=1 - y[:2], lam=1e-2, b=b,
                                            order=1, tau=0.1)
        with pytest.raises(ValueError, match="rows"):
            inf.linear_influence_update(X, y, w, [1000], lam=1e-2)
    _assert_unchanged(saved, (X, y))
    w2, b2 = inf.fit_logistic(X, y, 1e-2, sigma=0.5, seed=3)
    res2 = inf.linear_influence_update(X, y, w2, [0, 1], new_y=1 - y[:2], lam=1e-2, b=b2,
                                       sigma=0.5)
    assert torch.equal(w, w2) and torch.equal(b, b2) and _same(res, res2)
    w3, b3 = inf.fit_logistic(X, y, 1e-2, sigma=0.5, seed=4)
    assert not torch.equal(b, b3) and not torch.equal(w, w3)
    assert not torch.equal(first.weights, res.weights)


def _repair_config(seed: int) -> RepairConfig:
    return RepairConfig(model="mlp", epochs=1, n_train=200, steps=1, batch=16, cg_maxiter=5,
                        hvp_batch_size=None, seed=seed)


def test_repair_experiment_leaves_the_global_rng_alone():
    # it seeded the model with torch.manual_seed(config.seed), resetting the caller's stream
    with state_kept():
        first = run_repair_experiment(_repair_config(1))
    assert _same(first, run_repair_experiment(_repair_config(1)))
    assert not _same(first, run_repair_experiment(_repair_config(2)))


def test_feature_experiment_leaves_the_global_rng_alone():
    # its nn.Linear drew a discarded random initialisation from the caller's generator
    config = FeatureConfig(top_k=2, train_rounds=2, cg_maxiter=5, mode="replace", n_rows=20)
    with state_kept():
        first = run_feature_experiment(config)
    assert _same(first, run_feature_experiment(config))
    assert not _same(first, run_feature_experiment(dataclasses.replace(config, seed=1)))


# --- exposure and canary unlearning -------------------------------------------------------

_CANARY = exposure.CanaryConfig(n_sentences=40, secret_length=2, insertions=3, hidden=8,
                                embed_dim=4, steps=3, seq_len=12, batch_size=4)


def test_canary_experiment_keeps_caller_state_and_is_reproducible():
    with state_kept():
        first = exposure.run_canary_experiment(_CANARY)
    with state_kept():
        again = exposure.run_canary_experiment(_CANARY)
    assert _same(first.to_dict(), again.to_dict()) and _same(first.model, again.model)
    other = exposure.run_canary_experiment(dataclasses.replace(_CANARY, seed=1))
    assert not _same(first.to_dict(), other.to_dict())

    model = first.model.train()
    saved = _model_state(model)
    # a sample of |R| = 100 is smaller than 100: each sampled fit is warned about
    few = r"fitted to only \d+ sampled candidates"
    with state_kept():
        with pytest.warns(UserWarning, match=few):
            sampled = exposure.measure_exposure(model, first.vocab, _CANARY.prefix, ["12"],
                                                n_candidates=20, seed=3)
        exposure.measure_exposure(model, first.vocab, _CANARY.prefix, ["12"])
        exposure.greedy_completion(model, first.vocab, _CANARY.prefix, 3)
        with pytest.raises(ValueError, match="alphabet"):
            exposure.measure_exposure(model, first.vocab, _CANARY.prefix, ["1x"])
    _assert_model_kept(model, saved)
    with pytest.warns(UserWarning, match=few):
        again_sampled = exposure.measure_exposure(model, first.vocab, _CANARY.prefix, ["12"],
                                                  n_candidates=20, seed=3)
    with pytest.warns(UserWarning, match=few):
        other_sampled = exposure.measure_exposure(model, first.vocab, _CANARY.prefix, ["12"],
                                                  n_candidates=20, seed=4)
    assert _same(sampled, again_sampled)
    assert not _same(sampled, other_sampled)

    with state_kept():
        unlearned = unlearn_canary(first, CanaryUnlearnConfig(cg_maxiter=3, hvp_windows=8))
    assert _same(unlearned, unlearn_canary(first, CanaryUnlearnConfig(cg_maxiter=3,
                                                                      hvp_windows=8)))
    _assert_model_kept(model, saved)


def test_exposure_metrics_keep_their_inputs():
    # 200: at least the 100 values a skew-normal fit is trusted with (fewer are warned about)
    candidates = np.random.default_rng(0).normal(size=200)
    canaries = np.array([0.1, -1.0])
    saved = _copies(candidates, canaries)
    with state_kept():
        ranks = exposure.rank_exposure(canaries, candidates)
        skew = exposure.skew_normal_exposure(canaries, candidates, 100)
        with pytest.raises(ValueError, match="all equal"):
            exposure.skew_normal_exposure(0.1, [1.0, 1.0, 1.0], 100)
    _assert_unchanged(saved, (candidates, canaries))
    assert _same(ranks, exposure.rank_exposure(canaries, candidates))
    assert _same(skew, exposure.skew_normal_exposure(canaries, candidates, 100))


# --- certified removal -----------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_certified_model_keeps_caller_state_and_is_reproducible(solver):
    torch.set_num_threads(2)  # removals on small problems switch to one thread and back
    X, y = _DIGITS.X_train[:150].numpy().astype(np.float64), _DIGITS.y_train[:150].numpy()
    Xt, yt = torch.from_numpy(X.copy()), torch.from_numpy(y.copy())
    saved = _copies(X, y, Xt, yt)

    def run(seed: int, inputs: tuple[Any, Any]) -> CertifiedLogisticRegression:
        model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, subsample_ratio=0.5,
                                            solver=solver, seed=seed).fit(*inputs)
        model.remove([0, 3])
        model.remove([4, 5], batch=True)
        return model

    with state_kept():
        model = run(0, (X, y))
        outputs = (model.predict(X), model.predict_proba(Xt), model.score(X, y),
                   model.decision_function(Xt))
        model.retrain_now()
        model.remove([6])
    _assert_unchanged(saved, (X, y, Xt, yt))
    again = run(0, (Xt, yt))
    assert _same(outputs, (again.predict(X), again.predict_proba(Xt), again.score(X, y),
                           again.decision_function(Xt)))
    assert np.array_equal(again.b_, run(0, (X, y)).b_)
    other = run(1, (X, y))
    assert not np.array_equal(other.b_, again.b_) and not np.array_equal(other.coef_,
                                                                         again.coef_)


def test_certified_model_refuses_bad_input_and_keeps_everything():
    X, y = _XB.numpy(), _YB.numpy()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0).fit(X, y)
    coef, n_removed = model.coef_.copy(), model.n_removed_
    with state_kept():
        with pytest.raises(ValueError, match="unknown index"):
            model.remove([1000])
        with pytest.raises(ValueError, match="lam"):
            CertifiedLogisticRegression(lam=-1.0).fit(X, y)
        with pytest.raises(ValueError, match="NaN"):
            model.fit(np.full_like(X, np.nan), y)
    assert np.array_equal(model.coef_, coef) and model.n_removed_ == n_removed


def test_certified_model_keeps_the_other_flags():
    _set_flags({**OTHER_FLAGS, "num_threads": 2})
    with state_kept():
        model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0).fit(_XB.numpy(), _YB.numpy())
        model.remove([0, 1])
        model.predict(_XB.numpy())
    assert _flags() == {**OTHER_FLAGS, "num_threads": 2}


@pytest.mark.parametrize("attack", [fgsm_attack, pgd_attack])
def test_attacks_draw_their_random_start_from_the_generator(attack):
    model = _seeded(0, lambda: nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.1),
                                             nn.Linear(8, 10)))
    model.eval()
    model(_X[:2]).sum().backward()
    x, y = _X[:8].clone(), _Y[:8].clone()
    saved, saved_model = _copies(x, y), _model_state(model)
    kw = {"epsilon": 0.1, "input_range": None}
    with state_kept():
        adv = attack(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    _assert_unchanged(saved, (x, y))
    _assert_model_kept(model, saved_model)
    assert torch.equal(adv, attack(model, x, y, generator=torch.Generator().manual_seed(0),
                                   **kw))
    assert not torch.equal(adv, attack(model, x, y,
                                       generator=torch.Generator().manual_seed(1), **kw))
    # without a generator the start is drawn from the global RNG, as documented
    torch.manual_seed(5)
    global_draw = attack(model, x, y, **kw)
    moved = torch.get_rng_state()
    torch.manual_seed(5)
    assert not torch.equal(moved, torch.get_rng_state())
    assert torch.equal(global_draw, attack(model, x, y, **kw))


# --- metrics ---------------------------------------------------------------------------


def _logits() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    S, N, C = 12, 6, 4
    return {
        "retrain": torch.randn(S, N, C, generator=gen, dtype=torch.float64),
        "unlearn": torch.randn(S, N, C, generator=gen).numpy(),
        "labels": torch.randint(0, C, (S,), generator=gen),
        "retain": (torch.randn(30, C, generator=gen).requires_grad_(True),
                   torch.randint(0, C, (30,), generator=gen)),
        "test": (torch.randn(20, C, generator=gen).numpy(),
                 torch.randint(0, C, (20,), generator=gen).numpy()),
        "forget": (torch.randn(10, C, generator=gen), torch.randint(0, C, (10,), generator=gen)),
    }


METRIC_CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    # the SVC's fit drew a seed from numpy's global RNG (random_state=None)
    "svc_mia_efficacy": lambda d: metrics.svc_mia_efficacy(d["retain"], d["test"], d["forget"]),
    "epsilon_hat": lambda d: metrics.epsilon_hat(d["retrain"], d["unlearn"], d["labels"]),
    "competition_score": lambda d: metrics.competition_score(d["retrain"], d["unlearn"],
                                                             d["labels"]),
    "evaluate_logits": lambda d: metrics.evaluate_logits(d["retrain"], d["unlearn"],
                                                         d["labels"]),
    "accuracy": lambda d: (metrics.accuracy_report(forget=d["forget"], test=d["test"],
                                                   retain=d["retain"]),
                           metrics.class_fairness(d["unlearn"][:, 0], d["labels"])),
}


@pytest.mark.parametrize("case", list(METRIC_CASES))
def test_metric_keeps_caller_state_and_is_reproducible(case):
    data = _logits()
    watched = (data["retrain"], data["unlearn"], data["labels"], data["retain"][0].detach(),
               data["test"][0], data["forget"][0])
    saved = _copies(*watched)
    with state_kept():
        first = METRIC_CASES[case](data)
        again = METRIC_CASES[case](data)
    _assert_unchanged(saved, watched)
    assert _same(first, again)


def test_metrics_refuse_bad_input_and_evaluate_a_logits_folder(tmp_path):
    data = _logits()
    with state_kept():
        with pytest.raises(ValueError, match="labels outside"):
            metrics.svc_mia_efficacy(data["retain"], data["test"],
                                     (data["forget"][0], data["forget"][1] + 10))
        with pytest.raises(ValueError, match="delta"):
            metrics.epsilon_hat(data["retrain"], data["unlearn"], data["labels"], delta=2.0)
        with pytest.raises(ValueError, match="at least 3"):
            metrics.competition_score(data["retrain"], data["unlearn"][:, :2], data["labels"])
        metrics.write_logits_dir(tmp_path / "logits", data["retrain"], data["labels"],
                                 {"m": data["unlearn"]})
        first = metrics.evaluate_logits_dir(tmp_path / "logits")
    assert _same(first, metrics.evaluate_logits_dir(tmp_path / "logits"))


def test_mia_keeps_the_other_flags():
    _set_flags(OTHER_FLAGS)
    data = _logits()
    with state_kept():
        metrics.svc_mia_efficacy(data["retain"], data["test"], data["forget"])
        metrics.competition_score(data["retrain"], data["unlearn"], data["labels"])
    assert _flags() == OTHER_FLAGS


# --- harness ---------------------------------------------------------------------------


def _harness_data() -> HarnessData:
    images, labels = digits_images()  # the bundled order cycles through the classes
    return HarnessData(images[:300], labels[:300], images[300:400], labels[300:400], 10,
                       "tiny")


def _harness_config(**kw: Any) -> HarnessConfig:
    opts: dict[str, Any] = dict(methods=("finetune", "fisher"), seeds=2, oracles=2,
                                train=TrainSettings(epochs=1), cache_dir=None,
                                overrides={"finetune": {"epochs": 1}}, forget="random:0.1")
    opts.update(kw)
    return HarnessConfig(**opts)


def test_harness_keeps_caller_state_and_is_reproducible():
    data = _harness_data()
    watched = (data.x_train, data.y_train, data.x_test, data.y_test)
    saved = _copies(*watched)
    with state_kept():
        first = run_harness(_harness_config(), data)
    _assert_unchanged(saved, watched)
    assert _same(first, run_harness(_harness_config(), data))
    runs = first["methods"]["finetune"]["runs"]
    assert all(r["status"] == "ok" for r in runs)
    # the method's seeds 0 and 1 give different models
    logits = first["logits"]["finetune"]
    assert not torch.equal(logits[0]["test"], logits[1]["test"])
    other = run_harness(_harness_config(forget_seed=1), data)
    assert other["data"]["forget_indices"] != first["data"]["forget_indices"]
    with state_kept(), pytest.raises(ValueError, match="random"):
        run_harness(_harness_config(forget="random:2"), data)


def test_harness_keeps_the_other_flags():
    _set_flags({**OTHER_FLAGS, "default_dtype": torch.float32})
    with state_kept():
        run_harness(_harness_config(methods=("finetune",), seeds=1), _harness_data())
    assert _flags() == {**OTHER_FLAGS, "default_dtype": torch.float32}


# --- data ------------------------------------------------------------------------------


def test_data_loaders_are_seeded_and_keep_caller_state():
    labels = _Y.clone()
    as_numpy = labels.numpy().copy()
    with state_kept():
        split = load_digits_dataset(seed=3)
        forget, _ = parse_forget_spec("random:0.1", labels, seed=3)
        forget_np, _ = parse_forget_spec("random:0.1", as_numpy, seed=3)
        images, _ = digits_images()
    _assert_unchanged([_Y], (labels,))
    _assert_unchanged([_Y.numpy()], (as_numpy,))
    assert torch.equal(forget, forget_np)
    assert _same(split, load_digits_dataset(seed=3))
    assert not _same(split, load_digits_dataset(seed=4))
    assert not torch.equal(forget, parse_forget_spec("random:0.1", labels, seed=4)[0])
    assert torch.equal(images, digits_images()[0])


def test_sanity_of_the_state_checks():
    # the checks themselves can fail: a draw from each global RNG, or a flag left set
    for touch in (lambda: torch.rand(1), lambda: np.random.rand(), lambda: random.random(),
                  lambda: torch.set_num_threads(2), lambda: torch.set_grad_enabled(False)):
        with pytest.raises(AssertionError), state_kept():
            touch()
        torch.set_num_threads(1)
        torch.set_grad_enabled(True)
    model = _forget_model()
    saved = _model_state(model)
    model.train()
    with pytest.raises(AssertionError):
        _assert_model_kept(model, saved)
    assert not _same({"a": math.nan, "b": torch.ones(2)}, {"a": math.nan, "b": torch.zeros(2)})
    assert _same({"a": math.nan, "seconds": 1.0}, {"a": math.nan, "seconds": 2.0})
