"""glm_hvp's one-pass CUDA kernel (``FASTUNLEARN_GLM_HVP=onepass``) vs the float64 reference.

The kernel takes float64 calls with d <= 832 and K <= 16 on cards of compute capability 8.0,
9.0 or 10.0 (full-rate float64 tensor cores); every other call takes the two GEMMs, with or
without the variable. Its steps also run on the host in the C++
unit tests (``ctest -R glm_hvp_onepass``); these tests run the kernel itself (GPU only), and
check on the CPU that the variable changes nothing there.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.ops import glm_hvp, glm_hvp_margins, reference

ENV = "FASTUNLEARN_GLM_HVP"


def problem(n, d, K, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(max(d, 1))
    S = torch.rand(n, K, generator=gen, dtype=torch.float64) * 0.25
    V = torch.randn(d, K, generator=gen, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (X, S, V)]


@pytest.fixture
def onepass(monkeypatch):
    monkeypatch.setenv(ENV, "onepass")


def card_takes_onepass() -> bool:
    """Whether the current card is one the kernel runs on (full-rate float64 tensor cores)."""
    return torch.cuda.get_device_capability() in ((8, 0), (9, 0), (10, 0))


def kernels_run(fn) -> list[str]:
    """Names of the CUDA kernels ``fn()`` launched (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [event.name for event in prof.events()
            if event.device_type == torch.autograd.DeviceType.CUDA]


def test_the_variable_changes_nothing_on_the_cpu(monkeypatch):
    X, S, V = problem(300, 40, 10)
    monkeypatch.delenv(ENV, raising=False)
    want, want_margins = glm_hvp(X, S, V, 0.3), glm_hvp_margins(X, S, V, 0.3)[1]
    monkeypatch.setenv(ENV, "onepass")
    assert torch.equal(glm_hvp(X, S, V, 0.3), want)
    assert torch.equal(glm_hvp_margins(X, S, V, 0.3)[1], want_margins)


# shapes: one tile, a short last tile, one and two halves of the classes, the largest d,
# MNIST's d and K with more tiles than blocks
SHAPES = [(8, 1, 1), (37, 17, 3), (100, 65, 8), (300, 200, 9), (1001, 832, 16), (20000, 784, 10)]


@pytest.mark.cuda
@pytest.mark.parametrize("n, d, K", SHAPES)
@pytest.mark.parametrize("lam", [0.3, 0.0])
def test_onepass_matches_reference(onepass, n, d, K, lam):
    X, S, V = problem(n, d, K, device="cuda")
    want = reference.glm_hvp(X, S, V, lam)
    got = glm_hvp(X, S, V, lam)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    out, margins = glm_hvp_margins(X, S, V, lam)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    want_margins = X @ V
    torch.testing.assert_close(margins, want_margins, rtol=1e-12,
                               atol=1e-12 * want_margins.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("value", ["one-pass", "ONEPASS", "1"])
def test_a_misspelt_value_raises_on_cuda(monkeypatch, value):
    X, S, V = problem(20, 5, 2, device="cuda")
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match="FASTUNLEARN_GLM_HVP must be 'gemm' or 'onepass'"):
        glm_hvp(X, S, V, 0.1)
    monkeypatch.setenv(ENV, "gemm")
    torch.testing.assert_close(glm_hvp(X, S, V, 0.1), reference.glm_hvp(X, S, V, 0.1))


@pytest.mark.cuda
def test_onepass_is_run_to_run_identical_and_differs_from_the_gemms_only_in_rounding(
        monkeypatch):
    X, S, V = problem(20000, 784, 10, device="cuda")
    monkeypatch.delenv(ENV, raising=False)
    gemms = glm_hvp(X, S, V, 0.1)
    monkeypatch.setenv(ENV, "onepass")
    first, second = glm_hvp(X, S, V, 0.1), glm_hvp(X, S, V, 0.1)
    assert torch.equal(first, second)  # fixed summation order, no atomics
    torch.testing.assert_close(first, gemms, rtol=1e-12, atol=1e-12 * gemms.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["float32", "K=17", "d=833"])
def test_calls_the_kernel_does_not_take_still_give_the_right_answer(onepass, case):
    n, d, K, dtype = {"float32": (500, 100, 10, torch.float32), "K=17": (500, 100, 17, None),
                      "d=833": (500, 833, 4, None)}[case]
    X, S, V = problem(n, d, K, dtype or torch.float64, device="cuda")
    want = reference.glm_hvp(X, S, V, 0.2)
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(glm_hvp(X, S, V, 0.2).double(), want, rtol=tol,
                               atol=tol * want.abs().max().item())


@pytest.mark.cuda
def test_onepass_takes_non_contiguous_inputs(onepass):
    X, S, V = problem(300, 64, 5, device="cuda")
    Xt, St, Vt = (t.T.contiguous().T for t in (X, S, V))
    assert not Xt.is_contiguous()
    torch.testing.assert_close(glm_hvp(Xt, St, Vt, 0.5), reference.glm_hvp(X, S, V, 0.5),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
def test_onepass_copies_rows_of_an_unaligned_x_one_double_at_a_time(onepass):
    # even d copies rows two doubles (16 bytes) at a time only where X is 16-byte aligned; one
    # double into a buffer, it is not (the kernel must then copy single doubles)
    X, S, V = problem(300, 784, 10, device="cuda")
    buffer = torch.empty(X.numel() + 1, dtype=torch.float64, device="cuda")
    Xu = buffer[1:].view(300, 784).copy_(X)
    assert Xu.is_contiguous() and Xu.data_ptr() % 16 == 8
    want = reference.glm_hvp(X, S, V, 0.2)
    torch.testing.assert_close(glm_hvp(Xu, S, V, 0.2), want, rtol=1e-12,
                               atol=1e-12 * want.abs().max().item())


@pytest.mark.cuda
def test_onepass_propagates_nan_like_the_reference(onepass):
    X, S, V = problem(90, 30, 4, device="cuda")
    X[17, 3] = float("nan")
    out, margins = glm_hvp_margins(X, S, V, 0.1)
    want = reference.glm_hvp(X, S, V, 0.1)
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(margins.isnan(), (X @ V).isnan())


@pytest.mark.cuda
def test_onepass_in_a_cuda_graph(onepass):
    X, S, V = problem(5000, 784, 10, device="cuda")
    want = reference.glm_hvp(X, S, V, 0.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        glm_hvp_margins(X, S, V, 0.0)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, margins = glm_hvp_margins(X, S, V, 0.0)
    V.mul_(2.0)  # the replay reads the new V
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, 2 * want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    torch.testing.assert_close(margins, X @ V, rtol=1e-12, atol=1e-10)


@pytest.mark.cuda
def test_onepass_runs_its_kernel_exactly_where_it_should(monkeypatch):
    """The variable selects the one-pass kernel on the cards and shapes it takes (and the
    results above are its results, not the GEMMs' under another name); elsewhere the GEMMs."""
    X, S, V = problem(2000, 784, 10, device="cuda")
    monkeypatch.setenv(ENV, "onepass")
    names = kernels_run(lambda: glm_hvp(X, S, V, 0.1))
    ran = any("glm_hvp_onepass_kernel" in name for name in names)
    assert ran == card_takes_onepass(), names
    if ran:  # two launches: the kernel and the fixed-order reduction
        assert any("glm_hvp_onepass_reduce_kernel" in name for name in names), names
    for args in ((X.float(), S.float(), V.float()), problem(100, 833, 4, device="cuda")):
        names = kernels_run(lambda args=args: glm_hvp(*args, 0.1))
        assert not any("onepass" in name for name in names), names
    monkeypatch.setenv(ENV, "gemm")
    names = kernels_run(lambda: glm_hvp(X, S, V, 0.1))
    assert not any("onepass" in name for name in names), names


@pytest.mark.cuda
def test_onepass_first_call_inside_a_cuda_graph_capture():
    """The kernel's one-time setup (its shared-memory attribute, the check of the loaded
    image) also works when the process's first call is being captured: run in a fresh
    process, so nothing was set up before."""
    script = textwrap.dedent("""
        import torch, fastunlearn
        from fastunlearn.ops import glm_hvp, reference
        gen = torch.Generator().manual_seed(0)
        X = (torch.randn(3000, 784, generator=gen, dtype=torch.float64) / 28).cuda()
        S = (0.25 * torch.rand(3000, 10, generator=gen, dtype=torch.float64)).cuda()
        V = torch.randn(784, 10, generator=gen, dtype=torch.float64).cuda()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = glm_hvp(X, S, V, 0.5)
        graph.replay()
        torch.cuda.synchronize()
        want = reference.glm_hvp(X, S, V, 0.5)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
        print("ok")
    """)
    env = dict(os.environ, FASTUNLEARN_GLM_HVP="onepass")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
