"""Fairness of the reported ratios: failed peers, correctness checks of both sides, warm-up.

Run with ``pytest bench/`` (not ``--benchmark-only``: these tests use no benchmark fixture).
Each test pins a defect found in an audit of the benchmarks (tiny sizes, CPU, seconds).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
import torch

from bench import (
    bench_certified,
    bench_glm_cg,
    bench_glm_hvp,
    bench_influence,
    bench_knn,
    bench_metrics,
    bench_per_sample,
)
from bench.common import (
    GLM_HVP_KERNEL_ENV,
    CorrectnessError,
    OpUnavailable,
    ratio,
    timing_options,
)
from bench.test_benchmarks import _need

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """Correctness of the harness, not speed: one thread keeps OpenMP from spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- ratios: direction, failed peers --------------------------------------------------------


def test_ratio_is_peer_over_ours_and_undefined_for_a_failed_peer():
    assert ratio(3.0, 1.5) == 2.0  # > 1: ours faster
    assert math.isnan(ratio(math.inf, 1.0))  # peer out of memory: not an infinite speed-up
    assert math.isnan(ratio(math.nan, 1.0))  # peer not measured
    assert math.isnan(ratio(0.0, 1.0))
    assert math.isnan(ratio(1.0, math.inf)) and math.isnan(ratio(1.0, 0.0))


def test_a_peer_out_of_memory_is_recorded_as_such_not_as_a_ratio(monkeypatch):
    _need("glm_hvp")
    real = bench_glm_hvp.torch_hvp
    calls = []

    def peer_that_runs_out_of_memory(X, S, V, lam):
        calls.append(1)
        if len(calls) > 1:  # the correctness check passes, the timed calls fail
            raise torch.OutOfMemoryError("out of memory")
        return real(X, S, V, lam)

    monkeypatch.setattr(bench_glm_hvp, "torch_hvp", peer_that_runs_out_of_memory)
    rec = bench_glm_hvp.run_case(1000, 64, 4, CPU, **timing_options("tiny"))
    assert math.isinf(rec["torch_ms"])
    assert math.isfinite(rec["ours_ms"]) and rec["ours_ms"] > 0
    assert math.isnan(rec["ratio_torch"])


def test_ratio_in_a_record_is_peer_time_over_ours():
    _need("glm_hvp")
    rec = bench_glm_hvp.run_case(1000, 64, 8, CPU, **timing_options("tiny"))
    assert rec["ratio_torch"] == pytest.approx(rec["torch_ms"] / rec["ours_ms"], rel=1e-9)


def test_influence_ratio_is_lissa_over_cg_and_undefined_without_a_time():
    rec = bench_influence._pair("p", {"seconds": 0.5}, {"seconds": 2.0}, {})
    assert rec["ratio_lissa"] == pytest.approx(4.0)
    assert math.isnan(bench_influence._pair("p", {"seconds": 0.0}, {"seconds": 2.0},
                                            {})["ratio_lissa"])


# ---- certified: a removal that does nothing must not pass --------------------------------


class _Fitted:
    """Stands for a fitted model: only ``coef_`` ([K, d], as scikit-learn) is read."""

    def __init__(self, W: torch.Tensor) -> None:
        self.coef_ = W.T.numpy().copy()


def test_certified_check_refuses_a_removal_that_left_the_weights_unchanged():
    gen = torch.Generator().manual_seed(0)
    W0 = torch.randn(64, 10, generator=gen, dtype=torch.float64)
    # what a few removals do at MNIST scale: move the weights by under WEIGHT_RTOL
    update = 5e-4 * W0.abs().max() * torch.randn(64, 10, generator=gen, dtype=torch.float64)
    W_ref = (W0.float() + update.float())  # the reference's float32 weights after removing
    assert float(update.abs().max()) < bench_certified.WEIGHT_RTOL * float(W0.abs().max())

    rel = bench_certified._check_weights(_Fitted(W0 + update), W_ref, W0, "right removal")
    assert rel < 1e-6
    with pytest.raises(CorrectnessError, match="change from the fitted weights"):
        bench_certified._check_weights(_Fitted(W0), W_ref, W0, "no-op removal")
    with pytest.raises(CorrectnessError, match="change from the fitted weights"):
        bench_certified._check_weights(_Fitted(W0 + 0.5 * update), W_ref, W0, "half step")


def test_certified_benchmark_refuses_our_removals_when_they_do_nothing(monkeypatch):
    _need("glm_hvp", "glm_hessian", "glm_cg")
    from fastunlearn.certified import CertifiedLogisticRegression

    real = CertifiedLogisticRegression.remove

    def remove_then_forget(self, *args, **kwargs):
        before = np.array(self.coef_, copy=True)
        report = real(self, *args, **kwargs)
        self.coef_ = before  # the weights the benchmark reads did not move
        return report

    monkeypatch.setattr(CertifiedLogisticRegression, "remove", remove_then_forget)
    with pytest.raises(CorrectnessError, match="certified synthetic auto"):
        bench_certified.run_case("synthetic", 400, 32, 3, 4, 2, CPU)


def test_certified_benchmark_accepts_the_real_removals():
    _need("glm_hvp", "glm_hessian", "glm_cg")
    rec = bench_certified.run_case("synthetic", 400, 32, 3, 4, 2, CPU)
    assert rec["weight_rel_diff"] < bench_certified.WEIGHT_RTOL
    assert rec["ratio_reference"] == pytest.approx(rec["reference_ms"] / rec["ours_ms"])


def test_certified_reference_rebuilds_and_inverts_the_float32_hessian_per_class(monkeypatch):
    """The reference pays what Guo et al.'s loop pays: one d x d inverse per removal and class."""
    X, labels = bench_certified.synthetic_data(300, 16, 3)
    X32 = torch.from_numpy(X).float()
    Y32 = bench_certified._ovr_signs(labels, 3).float()
    W = torch.zeros(16, 3)
    state = {"gram": X32.T @ X32, "gen": torch.Generator().manual_seed(0)}
    inverted = []
    real_inverse = torch.Tensor.inverse

    def counting_inverse(self):
        inverted.append((tuple(self.shape), self.dtype))
        return real_inverse(self)

    monkeypatch.setattr(torch.Tensor, "inverse", counting_inverse)
    bench_certified.reference_remove(X32, Y32, W, 1e-3, 0, 4, state)
    assert inverted == [((16, 16), torch.float32)] * (4 * 3)


# ---- knn: the torch peer's answer is checked too -----------------------------------------


def test_knn_refuses_a_wrong_torch_peer(monkeypatch):
    _need("knn_extreme")

    def nearest_instead(Q, P, k):
        dist, idx = torch.cdist(Q, P).topk(k, dim=1, largest=False)
        return dist.square(), idx

    monkeypatch.setattr(bench_knn, "torch_farthest", nearest_instead)
    with pytest.raises(CorrectnessError, match="torch peer"):
        bench_knn.run("cpu", preset="tiny")


# ---- metrics: the once-timed references are warm -----------------------------------------


def test_metrics_reference_is_timed_after_a_warm_up(monkeypatch):
    try:
        bench_metrics.fixture_dir()
    except OpUnavailable as exc:
        pytest.skip(str(exc))
    real = bench_metrics.ref.seed_a_epsilons
    sizes = []
    cold_s = 3.0

    def cold_first_call(retain, unlearn, delta=0.05):
        sizes.append(retain.shape[0])
        if len(sizes) == 1:  # stands for the imports of the first call
            time.sleep(cold_s)
        return real(retain, unlearn, delta)

    monkeypatch.setattr(bench_metrics.ref, "seed_a_epsilons", cold_first_call)
    records = bench_metrics.run("cpu", preset="tiny")
    eps = next(r for r in records if r["metric"] == "epsilon_hat")
    assert sizes[0] < sizes[1] == eps["examples"]  # a small untimed call came first
    assert eps["reference_ms"] < cold_s * 1e3


# ---- quick presets: the full presets' code paths at smaller sizes -------------------------


def test_quick_presets_keep_the_full_presets_shapes_that_pick_code_paths():
    # same dtype-independent switches: d and K pick solvers and kernels, n only sizes the work
    def shape(cases):
        return sorted((c[0], c[2], c[3]) for c in cases)

    assert shape(bench_certified.CASES["quick"]) == shape(bench_certified.CASES["full"])
    assert bench_glm_hvp.SIZES["quick"] == bench_glm_hvp.SIZES["full"]
    assert bench_per_sample.SIZES["quick"] == bench_per_sample.SIZES["full"]
    assert bench_knn.SIZES["quick"][2] == bench_knn.SIZES["full"][2]
    assert set(bench_glm_cg.SIZES["quick"]) & set(bench_glm_cg.SIZES["full"])
    assert timing_options("quick")["warmup"] >= 1


# ---- glm_hvp's one-pass column --------------------------------------------------------------


def test_glm_hvp_onepass_column_checks_times_and_restores_the_environment(monkeypatch):
    """The one-pass column (a CUDA kernel; on the CPU the variable changes nothing) is checked
    like the others, timed in the same round-robin, and leaves the variable as it was."""
    _need("glm_hvp")
    name, value = GLM_HVP_KERNEL_ENV
    monkeypatch.setenv(name, "kept")
    rec = bench_glm_hvp.run_case(600, 40, 10, CPU, torch.float64, onepass=True,
                                 **timing_options("tiny"))
    assert rec["dtype"] == "float64"
    assert rec["onepass_max_abs_err"] < 1e-12 and rec["max_abs_err"] < 1e-12
    assert rec["onepass_ms"] > 0 and rec["ratio_onepass_torch"] > 0
    assert os.environ[name] == "kept"
    monkeypatch.delenv(name)
    rec = bench_glm_hvp.run_case(600, 40, 2, CPU, **timing_options("tiny"))
    assert "onepass_ms" not in rec and name not in os.environ

    # a wrong one-pass answer is refused, not timed, and the variable is still restored
    from fastunlearn import ops

    real = ops.glm_hvp

    def wrong_when_onepass(X, S, V, lam):
        out = real(X, S, V, lam)
        return out + 1 if os.environ.get(name) == value else out

    monkeypatch.setattr(ops, "glm_hvp", wrong_when_onepass)
    with pytest.raises(CorrectnessError, match="one-pass"):
        bench_glm_hvp.run_case(600, 40, 3, CPU, torch.float64, onepass=True,
                               **timing_options("tiny"))
    assert name not in os.environ
