"""Chunked metrics: bit-identical to the one-shot computation, with bounded working memory.

The statistics (:func:`hinge_logit`, :func:`logit_scaled_confidence`,
:func:`true_class_confidence`), the LiRA scores and epsilons (so :func:`epsilon_hat`) and the
competition epsilons of the compiled op (so :func:`competition_score`) run over chunks of
examples. Each test compares against the same function with its chunk budget patched huge
(one chunk: the former one-shot computation) and, for memory, measures the CPU peak with
``bench.common.peak_memory`` at a moderate size with the budget patched small.
"""

from __future__ import annotations

import pytest
import torch

from bench.common import peak_memory
from fastunlearn.metrics import (
    competition,
    competition_epsilons,
    competition_score,
    epsilon,
    epsilon_hat,
    hinge_logit,
    lira_epsilons,
    lira_scores,
    logit_scaled_confidence,
    statistics,
    true_class_confidence,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
HUGE = 1 << 60
STATS = (hinge_logit, logit_scaled_confidence, true_class_confidence)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _budgets(monkeypatch, stats: int, lira: int, grid: int) -> None:
    monkeypatch.setattr(statistics, "_CHUNK_ELEMENTS", stats)
    monkeypatch.setattr(epsilon, "_CHUNK_ELEMENTS", lira)
    monkeypatch.setattr(competition, "_GRID_CHUNK_ELEMENTS", grid)


def _both(monkeypatch, fn, small: tuple[int, int, int]):
    """``fn()`` with the chunk budgets patched huge (one chunk) and patched ``small``."""
    _budgets(monkeypatch, HUGE, HUGE, HUGE)
    ref = fn()
    _budgets(monkeypatch, *small)
    return ref, fn()


def _same(a, b) -> bool:
    """Bitwise equality of tensors, floats or result dataclasses, nan equal to nan."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.device == b.device and torch.equal(
            a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    if isinstance(a, float):
        return (a != a and b != b) or a == b
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)
    return a == b


def _logits(shape: tuple[int, ...], dtype: torch.dtype, kind: str) -> torch.Tensor:
    z = torch.randn(shape, dtype=torch.float64) * 4
    if kind == "ties":  # many equal logits, also at the label
        z = z.round()
    elif kind == "extreme":
        big = 6e4 if dtype == torch.float16 else 1e30  # large for each dtype
        pick = torch.rand(shape, dtype=torch.float64)
        z = torch.where(pick < 0.1, big, torch.where(pick > 0.9, -big, z))
    return z.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["plain", "ties", "extreme"])
def test_statistics_chunked_equal(monkeypatch, dtype, kind):
    S, N, C = 53, 6, 11  # 53 examples in chunks of 4 (the last one shorter)
    z = _logits((S, N, C), dtype, kind)
    y = torch.randint(0, C, (S,))
    for fn in STATS:
        ref, got = _both(monkeypatch, lambda f=fn: f(z, y), (4 * N * C + 5, HUGE, HUGE))
        assert got.dtype == ref.dtype == torch.float64 and got.device == ref.device
        assert torch.equal(got.isnan(), ref.isnan()), fn.__name__
        assert torch.equal(got.nan_to_num(), ref.nan_to_num()), fn.__name__
        # chunks of a single example too
        _budgets(monkeypatch, 1, HUGE, HUGE)
        assert torch.equal(fn(z, y).nan_to_num(), ref.nan_to_num()), fn.__name__


@pytest.mark.parametrize("shape", [(37, 9), (7, 3, 4, 9)])
def test_statistics_chunked_other_shapes(monkeypatch, shape):
    z = _logits(shape, torch.float32, "ties")
    y = torch.randint(0, shape[-1], shape[:-1])
    for fn in STATS:
        ref, got = _both(monkeypatch, lambda f=fn: f(z, y), (20, HUGE, HUGE))
        assert got.shape == shape[:-1] and torch.equal(got, ref), fn.__name__


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_statistics_chunked_non_contiguous(monkeypatch, dtype):
    z = _logits((6, 11, 23), dtype, "ties").permute(1, 0, 2)  # [11, 6, 23], strided
    y = torch.randint(0, 23, (11,))
    for fn in STATS:
        ref, got = _both(monkeypatch, lambda f=fn: f(z, y), (2 * 6 * 23, HUGE, HUGE))
        assert _same(got, ref), fn.__name__
    zt = _logits((23, 13, 6), dtype, "plain").transpose(0, 2)  # classes not contiguous
    y = torch.randint(0, 23, (6,))
    for fn in STATS:
        ref, got = _both(monkeypatch, lambda f=fn: f(zt, y), (2 * 13 * 23, HUGE, HUGE))
        assert _same(got, ref), fn.__name__


@pytest.mark.parametrize("kind", ["plain", "ties", "extreme"])
def test_lira_chunked_equal(monkeypatch, kind):
    S, N, M = 61, 8, 7
    r = torch.randn(S, N, dtype=torch.float64)
    u = torch.randn(S, M, dtype=torch.float64) + 0.7
    if kind == "ties":
        r, u = r.round(), u.round()
        r[:5] = 1.0  # zero spread: nan
    elif kind == "extreme":  # rows rescaled (huge and tiny magnitudes), underflowing densities
        r[::3] *= 1e200
        u[::3] *= 1e200
        r[1::3] *= 1e-200
        u[1::3] *= 1e-200
        r[2::6] = r[2::6] * 1e30
    for fn in (lambda: lira_epsilons(r, u), lambda: lira_scores(r, u)):
        ref, got = _both(monkeypatch, fn, (HUGE, 3 * (N + M) + 2, HUGE))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(ref, got, strict=True):
            assert a.dtype == b.dtype == torch.float64
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["plain", "ties", "extreme"])
def test_epsilon_hat_and_competition_score_chunked_equal(monkeypatch, dtype, kind):
    S, N, C = 29, 5, 7
    r = _logits((S, N, C), dtype, kind)
    u = _logits((S, N, C), dtype, kind)
    y = torch.randint(0, C, (S,))
    small = (3 * N * C + 1, 4 * 2 * N + 3, 700)
    ref, got = _both(monkeypatch, lambda: epsilon_hat(r, u, y), small)
    assert _same(got, ref)
    ref, got = _both(monkeypatch, lambda: competition_score(r, u, y), small)
    assert _same(got, ref)
    assert got.per_example.dtype == torch.float64 and got.per_example.device == CPU


@pytest.mark.parametrize("kind", ["plain", "ties", "peaky"])
def test_competition_epsilons_chunked_equal(monkeypatch, kind):
    S, N, M = 47, 9, 8
    r = torch.randn(S, N, dtype=torch.float64) * 3
    u = torch.randn(S, M, dtype=torch.float64) * 3 + 1
    if kind == "ties":
        r, u = r.round(), u.round()
    elif kind == "peaky":  # no grid for these examples
        r[::4] = 2.0
    ref, got = _both(monkeypatch, lambda: competition_epsilons(r, u), (HUGE, HUGE, 1000))
    assert got.dtype == torch.float64 and torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(got.nan_to_num(), ref.nan_to_num())
    _budgets(monkeypatch, HUGE, HUGE, 1)  # one example per chunk
    assert torch.equal(competition_epsilons(r, u).nan_to_num(), ref.nan_to_num())


def _peak(fn) -> float:
    fn()  # warm-up
    return peak_memory(fn, CPU)


# Memory: moderate sizes, budgets patched small. The bound is 2x the float64 output plus a
# generous multiple of the budget; the one-shot computation measured >= 4x the logits.
SMALL_STATS, SMALL_LIRA, SMALL_GRID = 1 << 15, 1 << 13, 1 << 14


def test_statistics_memory_bounded(monkeypatch):
    S, N, C = 400, 32, 100
    z = torch.randn(S, N, C) * 3  # float32, 5.1 MB
    y = torch.randint(0, C, (S,))
    out_bytes = S * N * 8
    _budgets(monkeypatch, SMALL_STATS, SMALL_LIRA, SMALL_GRID)
    bound = 2 * out_bytes + 40 * SMALL_STATS
    # old: hinge 22.0 MB, lsc 32.2 MB, true class 20.5 MB vs new 0.65, 0.62, 0.61 MB
    # (logits 5.1 MB, output 0.1 MB)
    for fn in STATS:
        assert _peak(lambda f=fn: f(z, y)) < bound, fn.__name__


def test_epsilon_hat_and_competition_score_memory_bounded(monkeypatch):
    S, N, C = 400, 32, 100
    r = torch.randn(S, N, C) * 3
    u = torch.randn(S, N, C) * 3
    y = torch.randint(0, C, (S,))
    out_bytes = S * N * 8
    _budgets(monkeypatch, SMALL_STATS, SMALL_LIRA, SMALL_GRID)
    bound = 2 * (2 * out_bytes) + 40 * SMALL_STATS + 40 * SMALL_LIRA + 20 * SMALL_GRID
    # old: epsilon_hat 22.1 MB, competition_score 32.9 MB vs new 1.24, 0.72 MB
    assert _peak(lambda: epsilon_hat(r, u, y)) < bound
    assert _peak(lambda: competition_score(r, u, y)) < bound


def test_competition_epsilons_memory_bounded(monkeypatch):
    S, N = 4000, 64
    r = torch.randn(S, N, dtype=torch.float64) * 2  # 2 MB each
    u = torch.randn(S, N, dtype=torch.float64) * 2 + 0.5
    _budgets(monkeypatch, SMALL_STATS, SMALL_LIRA, SMALL_GRID)
    # the output is float64 [S]; a few [S] vectors and twice a chunk's grid are expected
    bound = 16 * S * 8 + 32 * SMALL_GRID
    # old: 67.1 MB (the grid of all examples at once) vs new 0.40 MB
    assert _peak(lambda: competition_epsilons(r, u)) < bound
