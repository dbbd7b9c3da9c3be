"""Numeric-extremes sweep: valid but extreme inputs give correct numbers or a clear ValueError."""

import math

import numpy as np
import pytest
import torch
from helpers import per_sample_loop
from torch import nn

from fastunlearn.grad import PerSampleGradients
from fastunlearn.metrics import (
    competition_epsilons,
    epsilon_hat,
    lira_epsilons,
    logit_scaled_confidence,
    true_class_confidence,
)


def _stats(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(5, 8, generator=g, dtype=torch.float64)
    u = torch.randn(5, 8, generator=g, dtype=torch.float64) + 0.7
    return r, u


@pytest.mark.parametrize("scale", [2.0 ** 1000, 2.0 ** -1000, 1e300, 1e-300])
def test_lira_epsilons_scale_invariant_at_extremes(scale):
    # Old: the population std overflowed (1e300: var = inf) or underflowed (1e-300: var = 0)
    # and every example's epsilon was nan ("zero spread").
    r, u = _stats()
    want = lira_epsilons(r, u)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(lira_epsilons(r * scale, u * scale), want, rtol=1e-12, atol=0)


def test_epsilon_hat_logits_1e300():
    # Old: per_example all nan (the hinge logits ~1e300 overflowed the std).
    g = torch.Generator().manual_seed(3)
    r = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    u = torch.randn(4, 6, 3, generator=g, dtype=torch.float64) + 0.5
    y = torch.tensor([0, 1, 2, 0])
    want = epsilon_hat(r, u, y).per_example
    got = epsilon_hat(r * 1e300, u * 1e300, y).per_example
    assert not torch.isnan(want).any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("scale", [1e150, 1e300])
def test_competition_epsilons_huge_span_is_value_error(scale):
    # Old: int64 overflow of the grid size, then an internal error about 'grid_offsets'.
    r, u = _stats()
    with pytest.raises(ValueError, match="'retrained' and 'unlearned' span"):
        competition_epsilons(r * scale, u * scale)


def test_competition_epsilons_infinite_span_is_value_error():
    # Old: 1.7e308 - (-1.7e308) = inf grid steps; silently returned the cap 50.
    r = torch.tensor([[1.7e308, -1.7e308]], dtype=torch.float64)
    u = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="span inf"):
        competition_epsilons(r, u)


@pytest.mark.parametrize(("scale", "dtype"), [(1e4, torch.float32), (1e30, torch.float32),
                                              (1e300, torch.float64)])
def test_confidences_against_float64_reference(scale, dtype):
    # Guard: stable softmax statistics at extreme logits (numpy float64 reference).
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(6, 4, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    zz = z.double().numpy()
    e = np.exp(zz - zz.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    py = p[np.arange(6), y.numpy()]
    torch.testing.assert_close(true_class_confidence(z, y), torch.from_numpy(py))
    want = np.log(py + 1e-45) - np.log(1 - py + 1e-45)
    got = logit_scaled_confidence(z, y)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert math.isclose(float(got.abs().max()), -math.log(1e-45), rel_tol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_per_sample_norms_extreme_inputs(dtype, scale):
    # Guard: norms and clipped sums at inputs scaled by 1e+-20 match a per-sample loop.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)
    x = torch.randn(6, 4, dtype=dtype) * scale
    y = torch.randint(0, 3, (6,))

    def ce(o, t):
        return nn.functional.cross_entropy(o, t, reduction="sum")

    psg = PerSampleGradients(model)
    ref64 = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    ref64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref = per_sample_loop(ref64, x.double(), y, ce, psg.param_names)
    sq = sum(ref[n].flatten(1).square().sum(1) for n in psg.param_names)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(psg.sq_norms(x, y, ce).double(), sq, **tol)
    w = (1.0 / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    got = psg.clipped_sum(x, y, ce, 1.0)
    for n in psg.param_names:
        want = (w.view(-1, *[1] * (ref[n].dim() - 1)) * ref[n]).sum(0)
        torch.testing.assert_close(got[n].double(), want, **{**tol, "atol": 1e-6})


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e30), (torch.float32, 1e-30),
                                              (torch.float64, 1e150), (torch.float64, 1e-150)])
def test_cg_solves_systems_scaled_with_their_right_hand_side(dtype, scale):
    # old: the squared norms overflowed or underflowed, CG stopped at iteration 0 and
    # float32 reported the zero solution as converged (float64: not converged, breakdown)
    from fastunlearn.linalg import DenseOperator, cg

    gen = torch.Generator().manual_seed(3)
    Q = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    A = Q @ Q.T + 6 * torch.eye(6, dtype=torch.float64)
    B = torch.randn(6, 2, dtype=torch.float64, generator=gen)
    reference = torch.linalg.solve(A, B)
    seen = []
    result = cg(DenseOperator((A * scale).to(dtype)), (B * scale).to(dtype),
                callback=lambda it, x, rr: seen.append(x.clone()))
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert bool(result.converged.all()) and not bool(result.breakdown.any())
    torch.testing.assert_close(result.solution.double(), reference, rtol=rtol, atol=0)
    # the callback sees the iterate in the caller's units
    torch.testing.assert_close(seen[-1].double(), reference, rtol=rtol, atol=0)
    assert float(result.residual_norms.max()) <= 1e-6 * float((B * scale).norm(dim=0).max())


def test_cg_scales_only_the_extreme_columns():
    from fastunlearn.linalg import DenseOperator, cg

    gen = torch.Generator().manual_seed(4)
    Q = torch.randn(5, 5, dtype=torch.float32, generator=gen)
    A = Q @ Q.T + 5 * torch.eye(5)
    B = torch.randn(5, 2, generator=gen)
    plain = cg(DenseOperator(A), B)
    B2 = B.clone()
    B2[:, 1] *= 1e-30
    mixed = cg(DenseOperator(A), B2)
    # the ordinary column is solved exactly as before (bit for bit), the tiny one correctly
    assert torch.equal(mixed.solution[:, 0], plain.solution[:, 0])
    torch.testing.assert_close(mixed.solution[:, 1] * 1e30, plain.solution[:, 1], rtol=1e-5,
                               atol=1e-6)
    assert bool(mixed.converged.all())


def _lissa_system(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, float]:
    gen = torch.Generator().manual_seed(seed)
    Q = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    A = Q @ Q.T / 6 + torch.eye(6, dtype=torch.float64)
    B = torch.randn(6, 2, dtype=torch.float64, generator=gen)
    return A, B, float(torch.linalg.eigvalsh(A).max())


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e30), (torch.float32, 1e-30),
                                              (torch.float64, 1e150), (torch.float64, 1e-150)])
@pytest.mark.parametrize("vector", [False, True])
def test_lissa_solves_systems_scaled_with_their_right_hand_side(dtype, scale, vector):
    # old: float32 x 1e-30 returned an answer 100x off without an error (H h underflowed),
    # float32 x 1e30 raised LissaDivergenceError (H h overflowed), float64 x 1e-150 reported
    # history entries of 0 as it converged (the update norms underflowed)
    from fastunlearn.linalg import DenseOperator, lissa

    A, B, largest = _lissa_system()
    if vector:
        B = B[:, 0]
    reference = torch.linalg.solve(A, B)
    plain = lissa(DenseOperator(A.to(dtype)), B.to(dtype), scale=largest, depth=300)
    result = lissa(DenseOperator((A * scale).to(dtype)), (B * scale).to(dtype),
                   scale=largest * scale, depth=300)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(result.solution.double(), reference, rtol=rtol, atol=0)
    # the history is the change of the estimate in the caller's units: that of the unscaled
    # run (compared above the rounding floor, where the two runs' round-off differs)
    # (the change of h = scale * estimate is rounded relative to h)
    floor = 1e3 * torch.finfo(dtype).eps * float(plain.solution.double().norm())
    above_floor = plain.history > floor
    assert int(above_floor.sum()) >= 2
    torch.testing.assert_close(result.history[above_floor], plain.history[above_floor],
                               rtol=1e-2, atol=0)
    assert float(result.history[0, 0]) > 0


def test_lissa_scales_only_the_extreme_columns():
    from fastunlearn.linalg import DenseOperator, lissa

    A, B, largest = _lissa_system(4)
    A, B = A.float(), B.float()
    plain = lissa(DenseOperator(A), B, scale=largest, depth=200)
    B2 = B.clone()
    B2[:, 1] *= 1e-30
    mixed = lissa(DenseOperator(A), B2, scale=largest, depth=200)
    one_column = lissa(DenseOperator(A), B[:, 0], scale=largest, depth=200)
    # the ordinary column is computed exactly as before (bit for bit), the tiny one correctly
    assert torch.equal(mixed.solution[:, 0], plain.solution[:, 0])
    torch.testing.assert_close(mixed.solution[:, 1] * 1e30, plain.solution[:, 1], rtol=1e-5,
                               atol=0)
    # the history's norm covers both columns in the caller's units: the ordinary one dominates
    floor = 1e3 * torch.finfo(torch.float32).eps * float(one_column.solution.double().norm())
    above_floor = one_column.history > floor
    assert int(above_floor.sum()) >= 2
    torch.testing.assert_close(mixed.history[above_floor], one_column.history[above_floor],
                               rtol=1e-2, atol=0)


def test_lissa_divergence_reports_caller_units():
    from fastunlearn.linalg import DenseOperator, LissaDivergenceError, lissa

    A, B, largest = _lissa_system(5)
    A32, B32 = (A * 1e-30).float(), (B[:, 0] * 1e-30).float()
    with pytest.raises(LissaDivergenceError) as info:
        lissa(DenseOperator(A32), B32, scale=largest * 1e-30 / 4, depth=200)
    with pytest.raises(LissaDivergenceError) as plain:
        lissa(DenseOperator(A.float()), B[:, 0].float(), scale=largest / 4, depth=200)
    assert info.value.step == plain.value.step
    np.testing.assert_allclose(info.value.history, plain.value.history, rtol=1e-3)
