"""Regression tests for suspected items confirmed in the dec02b audit.

* metrics labels: uint64 labels >= 2**63 (and Python ints beyond int64) were reported as
  negative labels or as "not a tensor";
* forget labels: uint16/32/64 label tensors crashed every method (torch has no min/max for
  them), and ``poison_full`` could not batch them with its int64 random labels;
* competition: the torch fallback path disagreed with the compiled op and the official
  algorithm for statistics far from 0 (the left-edge counts assumed grid entries at their
  arithmetic positions);
* plot_bounds: a budget near 1e300 overflowed matplotlib's axis limits (RuntimeWarnings,
  or an error near 1.8e308);
* count settings: a float ``forget_batch_size`` or milestone was a ValueError, while every
  other count of the forget configs gives a TypeError for a wrong type.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from bench import _metrics_reference as ref
from fastunlearn.forget import get_method, run_method
from fastunlearn.forget.gradient_ascent import NegGradPlusConfig
from fastunlearn.metrics import accuracy, competition, competition_score, per_class_accuracy
from fastunlearn.metrics.competition import _first_above_rows, _numpy_linspace

# ---- 1. metrics: labels beyond int64 -------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (np.array([0, 1, 2**63], dtype=np.uint64), "min 0, max 9223372036854775808"),
        (np.array([0, 1, 2**64 - 1], dtype=np.uint64), "min 0, max 18446744073709551615"),
        (
            np.array([2**63, 2**64 - 1, 2**63 + 5], dtype=np.uint64),
            "min 9223372036854775808, max 18446744073709551615",
        ),
        (torch.tensor([0, 2, 2**63 + 1], dtype=torch.uint64), "min 0, max 9223372036854775809"),
    ],
)
def test_uint64_labels_are_reported_as_given(labels, shown):
    # old: "min -9223372036854775808, max 1" / "min -1, max 1" (wrapped to int64)
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=f"'labels' has labels outside \\[0, 4\\): {shown}"):
        accuracy(z, labels)


def test_uint64_labels_in_range_still_work():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = np.array([0, 3, 1, 2, 3], dtype=np.uint64)
    assert accuracy(z, y) == accuracy(z, y.astype(np.int64))
    torch.testing.assert_close(
        per_class_accuracy(z, y), per_class_accuracy(z, y.astype(np.int64)), equal_nan=True
    )


@pytest.mark.parametrize("big", [2**63, 2**64, -(2**63) - 1])
def test_python_int_labels_beyond_int64_are_out_of_range(big):
    # old: TypeError "'labels' must be a tensor or array, got list"
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=f"'labels' has labels outside \\[0, 4\\): {big}"):
        accuracy(z, [0, 1, big])


def test_competition_score_names_a_wrapped_uint64_label():
    r, u = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    y = np.array([0, 1, 2**64 - 2], dtype=np.uint64)
    with pytest.raises(ValueError, match="max 18446744073709551614"):
        competition_score(r, u, y)


# ---- 2. forget: unsigned label tensors ---------------------------------------------------


def _sets(dtype: torch.dtype) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = (torch.arange(60) % 3).to(dtype)
    return TensorDataset(x[:12], y[:12]), TensorDataset(x[12:], y[12:])


def _run(name: str, dtype: torch.dtype, **kw: Any) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    forget, retain = _sets(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_method(name, model, forget, retain, seed=1, **kw)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
@pytest.mark.parametrize("name", ["finetune", "neggrad", "fisher", "poison_full"])
def test_unsigned_labels_train_as_int64_labels(name, dtype):
    # old: NotImplementedError '"min_all" not implemented for UInt32' (every method), and
    # for poison_full a RuntimeError batching the int64 random labels with the retain set's
    kw = {} if name == "fisher" else {"epochs": 1}
    got = _run(name, dtype, **kw)
    want = _run(name, torch.int64, **kw)
    for (k, a), b in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_uint64_label_beyond_int64_is_named_as_given():
    forget, retain = _sets(torch.uint64)
    y = retain.tensors[1].clone()
    y[-1] = 2**63 + 1
    retain = TensorDataset(retain.tensors[0], y)
    with pytest.raises(ValueError, match="retain: label 9223372036854775809 is out of range"):
        run_method("finetune", nn.Linear(5, 3), forget, retain, epochs=1)


# ---- 3. competition: torch fallback path far from 0 ----------------------------------------


@pytest.mark.parametrize("offset", [1e10, 1e12, -1e12, 1e14, 1e15])
def test_first_above_rows_equals_searchsorted_far_from_zero(offset):
    # old: off by one grid entry from 1e10 (float64 path) and 1e12 (float32 path) on
    rng = np.random.default_rng(1)
    start = torch.from_numpy(rng.normal(0, 3, (4, 7)) + offset)
    stop = start + 4.0
    L = 400
    grid = _numpy_linspace(start, stop, L, L)
    picks = grid[..., rng.integers(0, L, 30)]
    values = torch.cat(
        [
            picks,
            torch.nextafter(picks, picks + 1),
            torch.nextafter(picks, picks - 1),
            start[..., None] - 1,
            stop[..., None] + 1,
        ],
        -1,
    )
    expected = torch.searchsorted(
        grid.reshape(-1, L).contiguous(),
        values.reshape(-1, values.shape[-1]).contiguous(),
        right=True,
    )
    got = _first_above_rows(start, stop, L, values)
    assert torch.equal(got.reshape(expected.shape).long(), expected)
    got32 = _first_above_rows(start, stop, L, values, origin=start[..., :1] + 1.0)
    assert torch.equal(got32.reshape(expected.shape).long(), expected)


def _far_case(seed: int, offset: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    r = offset + scale * rng.normal(size=(4, 10))
    u = offset + scale * rng.normal(size=(4, 9)) + 0.5 * scale
    return torch.from_numpy(r), torch.from_numpy(u)


@pytest.mark.parametrize(
    ("seed", "offset", "scale"),
    [(0, 1e12, 0.1), (1, 1e12, 0.01), (2, -1e12, 0.1), (3, 1e12, 0.001), (4, 1e11, 0.1)],
)
def test_torch_path_matches_the_official_algorithm_far_from_zero(seed, offset, scale):
    # old: e.g. 1.8405 instead of 1.6864, or 0.0 where no threshold is usable (nan)
    r, u = _far_case(seed, offset, scale)
    expected = ref.competition_epsilons(r.numpy(), u.numpy())
    got = competition._epsilons_torch(r, u, 1e-5).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


@pytest.mark.skipif(
    not competition._op_available("cpu"),
    reason="the compiled competition_epsilons op is not available",
)
@pytest.mark.parametrize("offset", [1e8, 1e10, 1e12, -1e12, 3e13])
def test_torch_path_and_op_are_identical_far_from_zero(offset):
    for seed in range(6):
        for scale in (0.001, 0.01, 0.1, 1.0):
            r, u = _far_case(seed, offset, scale)
            a = competition._epsilons_op(r, u, 1e-5)
            b = competition._epsilons_torch(r, u, 1e-5)
            assert torch.equal(torch.isnan(a), torch.isnan(b)), (seed, scale)
            assert torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)]), (seed, scale)


# ---- 4. plot_bounds: a budget near the float range -----------------------------------------


@pytest.mark.parametrize("budget", [1e300, 1.7e308])
def test_plot_bounds_draws_a_huge_budget_without_overflow(tmp_path, monkeypatch, budget):
    pytest.importorskip("matplotlib")
    from fastunlearn.report import plot_bounds
    from fastunlearn.report import plots as plots_mod

    saved: list[Any] = []
    real = plots_mod._save
    monkeypatch.setattr(
        plots_mod, "_save", lambda fig, path: (saved.append(fig), real(fig, path))[1]
    )
    records = [
        {
            "n_removed": i,
            "bound": 1e-3 * i,
            "cumulative": 1e-3 * i * (i + 1) / 2,
            "retrained": i == 3,
        }
        for i in range(1, 6)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # old: RuntimeWarning overflow (1e300), ValueError
        out = plot_bounds(records, budget, tmp_path / "b.png")  # "Axis limits ..." (1.7e308)
    assert out.stat().st_size > 0
    ax = saved[0].axes[0]
    lo, hi = ax.get_ylim()
    assert 0 < lo < hi < float("inf")
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("budget"))
    assert line.get_label() == f"budget {budget:.3g}"  # the value itself, in the legend
    assert list(line.get_ydata()) == [1e100, 1e100]  # drawn at the axis's ceiling
    assert any("budget(s) above 1e+100 drawn at 1e+100" in t.get_text() for t in ax.texts)


# ---- 5. count settings of the wrong type ---------------------------------------------------


@pytest.mark.parametrize("value", [32.0, True, "32"])
def test_neggrad_plus_forget_batch_size_of_the_wrong_type_is_a_type_error(value):
    # old: ValueError; ScrubConfig's forget_batch_size and every other count: TypeError
    with pytest.raises(TypeError, match="'forget_batch_size' must be an int"):
        NegGradPlusConfig(forget_batch_size=value)
    _, scrub = get_method("scrub")
    with pytest.raises(TypeError, match="'forget_batch_size' must be an int"):
        scrub(forget_batch_size=value)


@pytest.mark.parametrize("value", [0, -1, 2**63])
def test_neggrad_plus_forget_batch_size_out_of_range_stays_a_value_error(value):
    with pytest.raises(ValueError, match="'forget_batch_size' must be"):
        NegGradPlusConfig(forget_batch_size=value)


def test_neggrad_plus_forget_batch_size_numpy_int_is_a_python_int():
    cfg = NegGradPlusConfig(forget_batch_size=np.int64(8))
    assert cfg.forget_batch_size == 8 and type(cfg.forget_batch_size) is int


@pytest.mark.parametrize(
    ("value", "exc"),
    [(3.0, TypeError), (True, TypeError), ("3", TypeError), (0, ValueError), (2**63, ValueError)],
)
def test_milestones_are_checked_as_counts(value, exc):
    # old: ValueError for every bad entry (TypeError for scrub's lr_decay_epochs), and a
    # milestone of 2**63 was accepted where every other count stops at 2**63 - 1
    _, finetune = get_method("finetune")
    with pytest.raises(exc, match="'milestones' must"):
        finetune(scheduler="multistep", milestones=(value,))
    assert finetune(scheduler="multistep", milestones=(np.int64(2),)).milestones == (2,)
