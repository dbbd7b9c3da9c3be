"""Regression tests of the benchmarks' method: what their checks can see, how they time.

Each test fails on the code before its fix (2026-12-02 audit of ``bench/``).
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `bench` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import bench_glm_hvp, bench_influence, bench_per_sample, common  # noqa: E402

CPU = torch.device("cpu")
FAST = {"warmup": 1, "repeat": 3, "max_time_s": 0.05}
#: Batch calls shorter than 50 ms (default 2 ms): the tiny calls are batched on any machine
BATCHING = {**FAST, "min_block_s": 0.05}

pytestmark = pytest.mark.usefixtures("one_thread")


def _require(op):
    try:
        common.require_op(op, CPU)
    except common.OpUnavailable as exc:
        pytest.skip(str(exc))


def _norms_case(impls):
    """One ``per_sample`` "norms" record of a 3-row MLP case with ``impls``."""
    return bench_per_sample.run_case(
        "mlp", impls, torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), "norms", {},
        1.0, CPU, **FAST,
    )


@pytest.mark.parametrize(
    ("K", "wrong_lam"),
    [
        (1, lambda lam: 0.0),  # the ``+ lam V`` term dropped
        (1, lambda lam: lam * lam),  # mis-scaled
    ],
)
def test_glm_hvp_check_sees_the_lam_term(monkeypatch, K, wrong_lam):
    """At the benchmark's lam = 1e-3 the term ``lam V`` is under the float32 tolerance: the
    check must also run at a lam where a kernel that drops or mis-scales it fails."""
    _require("glm_hvp")
    import fastunlearn.ops

    real = fastunlearn.ops.glm_hvp
    # the wrong op still differs from the right one by far more than rounding at LAM
    X, S, V = bench_glm_hvp.make_inputs(1000, 64, K, CPU)
    wrong = real(X, S, V, wrong_lam(bench_glm_hvp.LAM))
    assert float((wrong - real(X, S, V, bench_glm_hvp.LAM)).abs().max()) > 1e-4
    monkeypatch.setattr(
        fastunlearn.ops, "glm_hvp", lambda X, S, V, lam: real(X, S, V, wrong_lam(lam))
    )
    with pytest.raises(common.CorrectnessError, match="glm_hvp"):
        bench_glm_hvp.run_case(1000, 64, K, CPU, **FAST)


def test_glm_hvp_right_op_passes_both_checks():
    _require("glm_hvp")
    rec = bench_glm_hvp.run_case(1000, 64, 4, CPU, onepass=True, **FAST)
    assert rec["max_abs_err"] < 1e-3 and rec["onepass_max_abs_err"] < 1e-3


def _spy_compare(monkeypatch, module):
    """Wrap ``module.compare`` and return the list its results are appended to."""
    results = []
    real = module.compare

    def spy(*args, **kwargs):
        res = real(*args, **kwargs)
        results.append(res)
        return res

    monkeypatch.setattr(module, "compare", spy)
    return results


def test_glm_hvp_onepass_rows_time_the_peer_one_call_per_sample_too(monkeypatch):
    """With the one-pass column, ours and the one-pass variant need a set-up per call (one
    call per sample, a synchronize before each on CUDA): the peer must not be batched alone."""
    _require("glm_hvp")
    results = _spy_compare(monkeypatch, bench_glm_hvp)
    bench_glm_hvp.run_case(1000, 64, 8, CPU, onepass=True, **BATCHING)
    (res,) = results
    assert set(res) == {"ours", "onepass", "torch"}
    assert {name: m.timing.number for name, m in res.items()} == {
        "ours": 1,
        "onepass": 1,
        "torch": 1,
    }


def test_per_sample_times_every_implementation_alike(monkeypatch):
    """The Opacus peers and the plain backward run one call per sample (their gradients are
    cleared before each): ours and torch.func must not be batched while they are not."""
    for op in ("per_sample_sq_norm", "per_sample_dot", "per_sample_weighted_sum"):
        _require(op)
    pytest.importorskip("opacus")
    results = _spy_compare(monkeypatch, bench_per_sample)
    torch.manual_seed(0)
    records = bench_per_sample._run_model("mlp", 8, True, (16,), CPU, **BATCHING)
    assert len(records) == len(bench_per_sample.QUANTITIES) == len(results)
    for res in results:
        numbers = {name: m.timing.number for name, m in res.items()}
        assert set(numbers) >= {"ours", "func", "plain", "opacus"}
        assert set(numbers.values()) == {1}, numbers


class _Fake:
    """A peer returning a fixed answer (the same as torch.func's)."""

    def __init__(self, value):
        self.value = value
        self.model = nn.Linear(2, 2)

    def clear(self):
        pass

    def __call__(self, *args):
        return self.value


def test_per_sample_memory_ratio_is_nan_when_the_plain_backward_ran_out(monkeypatch):
    """``ours / plain`` memory with the plain backward out of memory (``inf``) was 0.0: a
    failure read as no memory at all. Like every ratio over a failed measurement: nan."""
    value = torch.tensor([1.0, 2.0, 3.0])
    impls = {name: _Fake(value) for name in ("ours", "opacus", "ghost", "func", "plain")}
    ok = common.Measurement(common.Timing(1e-3, 1e-3, 1e-3, 3, 1), 2.0**20)

    def fake_compare(calls, device, **kwargs):
        out = {name: ok for name in calls}
        out["plain"] = common.Measurement(common.Timing.failed(), math.inf)
        return out

    monkeypatch.setattr(bench_per_sample, "compare", fake_compare)
    rec = _norms_case(impls)
    for key in ("ours_mem_x", "opacus_mem_x", "ghost_mem_x", "func_mem_x"):
        assert math.isnan(rec[key]), (key, rec[key])
    assert math.isnan(rec["ours_vs_plain"])
    # a finite plain peak still gives the ratio
    monkeypatch.setattr(
        bench_per_sample, "compare", lambda calls, device, **kw: {name: ok for name in calls}
    )
    rec = _norms_case(impls)
    assert rec["ours_mem_x"] == 1.0


@pytest.mark.parametrize("part", bench_influence.PARTS)
def test_influence_runs_in_full_float32(monkeypatch, part):
    """README: every benchmark runs with TF32 off (cuDNN allows it by default); influence
    did not turn it off, so its convolutions would run in TF32 on a GPU."""
    seen = []

    def spy(*args, **kwargs):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return {"part": part, "seed": 42}

    monkeypatch.setattr(bench_influence, "_solver_part", spy)
    monkeypatch.setattr(bench_influence, "_digits", spy)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        bench_influence.run("cpu", preset="tiny", parts=(part,))
        assert seen and all(flags == (False, False) for flags in seen)
        assert torch.backends.cudnn.allow_tf32 is True  # restored afterwards
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
