"""pytest-benchmark entry points: ``pytest bench/ --benchmark-only``.

The same kernels and peers as the ``bench_*`` modules at small sizes, one benchmark per
implementation, grouped per kernel so pytest-benchmark's table compares them directly.
Every test checks its result against the float64 reference or the peer before timing.
Tests of an op that is not compiled for the CPU are skipped.
"""

from __future__ import annotations

import pytest
import torch

from bench import bench_glm_cg, bench_glm_hvp, bench_knn, bench_per_sample
from bench.common import OpUnavailable, check_close, require_op, scaled_atol

CPU = torch.device("cpu")


def _need(*ops: str) -> None:
    for op in ops:
        try:
            require_op(op, CPU)
        except OpUnavailable as exc:
            pytest.skip(str(exc))


# ---- glm_hvp ------------------------------------------------------------------------------


@pytest.mark.benchmark(group="glm_hvp n=8192 d=784 K=8 float32")
@pytest.mark.parametrize("impl", ["ours", "torch"])
def test_glm_hvp(benchmark, impl):
    _need("glm_hvp")
    from fastunlearn.ops import glm_hvp, reference

    X, S, V = bench_glm_hvp.make_inputs(8192, 784, 8, CPU)
    fn = {"ours": glm_hvp, "torch": bench_glm_hvp.torch_hvp}[impl]
    expected = reference.glm_hvp(X, S, V, 1e-3)
    out = benchmark(fn, X, S, V, 1e-3)
    check_close(out, expected, rtol=1e-3, atol=scaled_atol(expected, 1e-4), what=impl)


# ---- glm_cg -------------------------------------------------------------------------------


@pytest.mark.benchmark(group="glm_cg d=128 n=512 K=10 float64")
@pytest.mark.parametrize("impl", ["ours", "torch_cg", "cholesky"])
def test_glm_cg(benchmark, impl):
    _need("glm_cg")
    from fastunlearn.ops import reference

    X, S, B = bench_glm_cg.make_problem(128, CPU)
    tol, maxiter, lam = bench_glm_cg.TOL, 1280, bench_glm_cg.LAM
    if impl == "cholesky":
        def solve():
            return bench_glm_cg.cholesky_solve(bench_glm_cg.torch_hessian(X, S, lam), B)
    else:
        cg = {"ours": bench_glm_cg.ours_cg, "torch_cg": bench_glm_cg.torch_cg}[impl]

        def solve():
            return cg(X, S, B, lam, tol, maxiter)[0]
    out = benchmark(solve)
    expected = reference.glm_cg(X, S, B, lam)
    check_close(out, expected, rtol=1e-5, atol=scaled_atol(expected, 1e-5), what=impl)


# ---- per-sample gradients -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(0)
    model = bench_per_sample.make_model("mlp", 28, tiny=False)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    vector = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    return model, x, y, vector


@pytest.mark.benchmark(group="per-sample sq norms, MLP 784-512-256-10, B=64")
@pytest.mark.parametrize("impl", ["ours", "opacus", "ghost", "func", "plain"])
def test_per_sample_norms(benchmark, impl, mlp_case):
    _need("per_sample_sq_norm")
    model, x, y, vector = mlp_case
    func = bench_per_sample.FuncPeer(model)
    expected = func(x, y, "norms", vector, 1.0)
    if impl == "plain":
        plain = bench_per_sample.Plain(model)
        benchmark.pedantic(plain, args=(x, y), setup=plain.clear, rounds=20)
        return
    peer = {"ours": bench_per_sample.Ours, "opacus": bench_per_sample.OpacusPeer,
            "ghost": bench_per_sample.OpacusGhostPeer,
            "func": bench_per_sample.FuncPeer}[impl](model)
    if impl in ("opacus", "ghost"):
        def call():
            peer.clear()
            return peer(x, y, "norms", vector, 1.0)
    else:
        def call():
            return peer(x, y, "norms", vector, 1.0)
    out = benchmark(call)
    check_close(out, expected, rtol=1e-3, atol=scaled_atol(expected, 1e-5), what=impl)


# ---- farthest-k ---------------------------------------------------------------------------


@pytest.mark.benchmark(group="farthest-k k=10, m=200 n=2000 d=512")
@pytest.mark.parametrize("impl", ["ours", "sklearn", "torch"])
def test_farthest_k(benchmark, impl):
    _need("knn_extreme")
    from fastunlearn.ops import farthest_k

    Q, P = bench_knn.make_inputs(200, 2000, 512, CPU)
    if impl == "sklearn":
        Qn, Pn = Q.numpy(), P.numpy()
        dist, idx = benchmark(bench_knn.sklearn_farthest, Qn, Pn, bench_knn.K)
        dist, idx = torch.from_numpy(dist), torch.from_numpy(idx)
    else:
        fn = {"ours": farthest_k, "torch": bench_knn.torch_farthest}[impl]
        dist, idx = benchmark(fn, Q, P, bench_knn.K)
    bench_knn.check_farthest(Q, P, dist, idx, impl)
