import math

import numpy as np
import pytest
import torch

from bench import _metrics_reference as ref
from fastunlearn._extension import has_kernel
from fastunlearn.metrics import (
    competition,
    competition_epsilons,
    competition_score,
    final_score,
    forget_score,
    logit_scaled_confidence,
    score_bins,
    split_slots,
)
from fastunlearn.metrics.competition import _first_above_rows, _numpy_linspace, epsilon_table
from tests.helpers import DEVICES


def test_bins_follow_ceil_log():
    # ceil(ln(511)) = 7 -> 14 bins; ceil(ln(79)) = 5 -> 10; ceil(ln(39)) = 4 -> 8
    assert len(score_bins(512)) == 14 and score_bins(512)[-1][1] == 7.0
    assert len(score_bins(80)) == 10
    assert len(score_bins(40)) == 8
    assert score_bins(80)[:3] == [(0.0, 0.5, 1.0), (0.5, 1.0, 0.5), (1.0, 1.5, 0.25)]
    with pytest.raises(ValueError, match="'num_models'"):
        score_bins(2)


def test_forget_score_hand_case():
    eps = [0.2, 0.5, 0.7, 1.2, 4.99, 5.0, 50.0, float("nan")]
    # points: 1, 1/2 (0.5 is in [0.5, 1)), 1/2, 1/4, 2^-9, 0 (beyond 10 bins), 0, 0
    expected = (1 + 0.5 + 0.5 + 0.25 + 2.0 ** -9) / 8
    assert forget_score(eps, 80) == pytest.approx(expected, rel=1e-15)
    assert forget_score(torch.tensor(eps), 80) == pytest.approx(
        ref.competition_forget_score(np.array(eps), 80), rel=1e-15)


def test_final_score_hand_case():
    assert final_score(0.5, 0.9, 1.0, 0.8, 0.9) == pytest.approx(0.5 * 0.9 * (0.8 / 0.9))
    assert final_score(0.5, 1.0, 0.9, 1.0, 0.9) > 0.5  # ratios are not capped
    with pytest.raises(ValueError, match="'ra_r'"):
        final_score(0.5, 0.9, 0.0, 0.8, 0.9)


def test_perfect_separation_gives_the_cap():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, 50, generator=g, dtype=torch.float64)
    u = torch.randn(6, 50, generator=g, dtype=torch.float64) * 1.5 + 20
    eps = competition_epsilons(r, u)
    assert (eps == 50).all()
    assert forget_score(eps, 50) == 0.0


def test_peaky_group_gives_the_cap():
    r = torch.linspace(0, 5, 30, dtype=torch.float64).repeat(2, 1)
    u = 2.0 + torch.linspace(0, 0.04, 30, dtype=torch.float64).repeat(2, 1)  # range 0.04/5
    assert (competition_epsilons(r, u) == 50).all()


def test_identical_values_give_zero():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(10, 40, generator=g, dtype=torch.float64) * 3
    eps = competition_epsilons(r, r.clone())
    # every threshold predicts both groups alike (FPR = TPR): the log terms are < 0, clip 0
    assert (eps == 0).all()
    assert forget_score(eps, 40) == 1.0


def test_same_distribution_stays_at_the_noise_floor():
    # with N = 512 models the max over thresholds of noisy rates sits around 1-2.5 (the
    # metric's noise floor, far below the last bin at ln(511) ~ 6.2); a shift is seen
    g = torch.Generator().manual_seed(2)
    r = torch.randn(20, 512, generator=g, dtype=torch.float64) * 2
    u = torch.randn(20, 512, generator=g, dtype=torch.float64) * 2
    same = competition_epsilons(r, u)
    shifted = competition_epsilons(r, u + 3.0)
    assert float(same.max()) < 3.0
    assert float(shifted.min()) > float(same.max())
    assert forget_score(same, 512) > 2 * forget_score(shifted, 512)


def _random_case(seed, S=6, N=24):
    rng = np.random.default_rng(seed)
    r = rng.normal(0, rng.uniform(0.3, 3, (S, 1)), (S, N))
    u = rng.normal(rng.uniform(-2, 2, (S, 1)), rng.uniform(0.3, 3, (S, 1)), (S, N))
    u[0] = np.round(u[0], 1)  # ties
    r[0] = np.round(r[0], 1)
    u[1] = r[1][::-1] + 0.0  # equal ranges: the swap rule
    return r, u


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_matches_the_official_algorithm_on_random_data(seed, device):
    r, u = _random_case(seed)
    expected = ref.competition_epsilons(r, u)
    got = competition_epsilons(torch.from_numpy(r).to(device), torch.from_numpy(u).to(device))
    # the rates and logs are float32 as in the official code; torch's and numpy's float32 log
    # may differ by one unit in the last place, hence rtol = 1e-6 (nan and 50 compare equal)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-6, atol=0)


def test_unequal_group_sizes_run():
    r, u = _random_case(5, N=30)
    got = competition_epsilons(torch.from_numpy(r), torch.from_numpy(u[:, :20]))
    assert got.shape == (6,) and ((got >= 0) & (got <= 50)).all()
    # the reference takes each group's own size for its rates (N = 30, M = 20), and the
    # other way round (N = 20, M = 30); nan compares equal to nan
    np.testing.assert_allclose(got.numpy(), ref.competition_epsilons(r, u[:, :20]),
                               rtol=1e-6, atol=0)
    got = competition_epsilons(torch.from_numpy(r[:, :20]), torch.from_numpy(u))
    np.testing.assert_allclose(got.numpy(), ref.competition_epsilons(r[:, :20], u),
                               rtol=1e-6, atol=0)


def test_fixture_subset_matches_the_official_algorithm(fixture_arrays):
    """Real fixture confidences: agreement with the official algorithm (float32 rtol 1e-6)."""
    retain, methods = fixture_arrays
    S = 8
    r, y = split_slots(retain[:S])
    u, _ = split_slots(methods["prune_complex"][:S])
    cr, cu = logit_scaled_confidence(r, y), logit_scaled_confidence(u, y)
    expected = ref.competition_epsilons(cr.numpy(), cu.numpy())
    np.testing.assert_allclose(competition_epsilons(cr, cu).numpy(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_statistic_matches_the_official_code(fixture_arrays, device):
    """The official code's own statistic on real float32 logits, every model of 12 examples."""
    retain, methods = fixture_arrays
    logits, y = split_slots(methods["finetune"][30:42])
    expected = np.stack([ref.logit_scaled_confidence(logits[:, m].numpy().copy(), y.numpy())
                         for m in range(logits.shape[1])], axis=1)
    got = logit_scaled_confidence(logits.to(device), y.to(device)).cpu().numpy()
    # on the CPU the float32 exponentials are numpy's, as the official code's: only the
    # float64 normalisation's order differs; torch.exp on a GPU is within ~1 float32 ulp
    atol = 1e-13 if device == "cpu" else 1e-6
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def test_fixture_epsilons_match_the_official_pipeline(fixture_arrays):
    """Logits to per-example epsilons, each side with its own statistic (CPU).

    Example 38 of ``finetune`` sits on a threshold: with torch's float32 exp its epsilon was
    2.944, with numpy's (the official code's) 2.996.
    """
    retain, methods = fixture_arrays
    rows = slice(34, 42)
    r, y = split_slots(retain[rows])
    u, _ = split_slots(methods["finetune"][rows])

    def official(logits):
        return np.stack([ref.logit_scaled_confidence(logits[:, m].numpy().copy(), y.numpy())
                         for m in range(logits.shape[1])], axis=1)

    expected = ref.competition_epsilons(official(r), official(u))
    got = competition_epsilons(logit_scaled_confidence(r, y), logit_scaled_confidence(u, y))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=0)


def test_numpy_linspace_is_bit_identical():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 10, 50)
    b = a + rng.uniform(0.1, 30, 50)
    n = np.ceil((b - a) * 100).astype(int)
    got = _numpy_linspace(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(n),
                          int(n.max()))
    for i in range(50):
        np.testing.assert_array_equal(got[i, : n[i]].numpy(), np.linspace(a[i], b[i], n[i]))
        assert torch.isinf(got[i, n[i]:]).all()


def test_first_above_rows_equals_searchsorted():
    rng = np.random.default_rng(1)
    start = torch.from_numpy(rng.normal(0, 3, (4, 7)))
    stop = start + 4.0
    L = 400
    grid = _numpy_linspace(start, stop, L, L)
    # values on grid points exactly, next to them, and outside the rows
    picks = grid[..., rng.integers(0, L, 30)]
    values = torch.cat([picks, torch.nextafter(picks, picks + 1), torch.nextafter(picks, picks - 1),
                        start[..., None] - 1, stop[..., None] + 1], -1)
    expected = torch.searchsorted(grid.reshape(-1, L).contiguous(),
                                  values.reshape(-1, values.shape[-1]).contiguous(), right=True)
    got = _first_above_rows(start, stop, L, values)
    assert torch.equal(got.reshape(-1, values.shape[-1]).long(), expected)
    # the float32 path (values relative to a per-row origin) gives the same answer
    got32 = _first_above_rows(start, stop, L, values, origin=start[..., :1] + 1.0)
    assert got32.dtype == torch.float32
    assert torch.equal(got32.reshape(-1, values.shape[-1]).long(), expected)


def test_competition_score_with_accuracies():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 12, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    res = competition_score(z, z.clone(), y, accuracies={"ra_u": 0.9, "ra_r": 1.0,
                                                         "ta_u": 0.8, "ta_r": 0.8})
    assert res.forget_score == 1.0
    assert res.final_score == pytest.approx(0.9)
    assert res.num_models == 12
    with pytest.raises(ValueError, match="'accuracies' lacks"):
        competition_score(z, z, y, accuracies={"ra_u": 1.0})


def test_bad_input():
    r = torch.randn(4, 10)
    with pytest.raises(ValueError, match="same number of examples"):
        competition_epsilons(r, torch.randn(3, 10))
    with pytest.raises(ValueError, match="'retrained' has non-finite"):
        competition_epsilons(torch.full((4, 10), math.inf), torch.randn(4, 10))
    with pytest.raises(ValueError, match="'labels'.*outside"):
        competition_score(torch.randn(3, 5, 4), torch.randn(3, 5, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="must agree"):
        competition_score(torch.randn(3, 5, 4), torch.randn(2, 5, 4), torch.tensor([0, 1, 1]))


def test_constant_statistics_have_no_usable_threshold():
    # both groups constant (ranges 0/0: not peaky); every threshold puts all of both
    # groups on one side (FPR or FNR zero): discarded, nan, 0 points
    r = torch.full((2, 10), 3.0, dtype=torch.float64)
    eps = competition_epsilons(r, r.clone())
    assert torch.isnan(eps).all()
    assert forget_score(eps, 10) == 0.0


def test_empty_forget_set():
    # an empty set is refused where it enters, naming the caller's argument
    with pytest.raises(ValueError, match="'retrained' has no examples"):
        competition_epsilons(torch.zeros(0, 5), torch.zeros(0, 5))
    with pytest.raises(ValueError, match="'retrain_logits' has no examples"):
        competition_score(torch.zeros(0, 5, 3), torch.zeros(0, 5, 3), torch.zeros(0).long())
    with pytest.raises(ValueError, match="'unlearn_logits' has no examples"):
        competition_score(torch.randn(2, 5, 3), torch.zeros(0, 5, 3), torch.zeros(2).long())
    with pytest.raises(ValueError, match="'epsilons' is empty"):
        forget_score(torch.zeros(0), 5)


def test_too_few_unlearned_models_name_the_argument():
    r, u, y = torch.randn(4, 5, 3), torch.randn(4, 2, 3), torch.zeros(4).long()
    with pytest.raises(ValueError, match="'unlearn_logits' holds 2 model.*at least 3"):
        competition_score(r, u, y)
    with pytest.raises(ValueError, match="'retrain_logits' holds 1 model.*at least 2"):
        competition_score(r[:, :1], torch.randn(4, 3, 3), y)


# ---- the compiled op and the vectorised torch path -------------------------------------

needs_op = pytest.mark.skipif(not has_kernel("competition_epsilons", "cpu"),
                              reason="the compiled competition_epsilons op is not available")


def _assert_identical(a, b):
    a, b = a.cpu(), b.cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    assert torch.equal(a[~torch.isnan(a)], b[~torch.isnan(b)])


def _hard_case(seed, S=10, N=24, M=24):
    r, u = _random_case(seed, S=S, N=N)  # row 0: ties, row 1: equal ranges
    if M != N:
        u = _random_case(seed + 50, S=S, N=M)[1]
    rng = np.random.default_rng(seed + 100)
    if M == N:
        u[2] = r[2] + 0.75  # equal ranges, shifted
    u[3] = r[3].mean() + 1e-3 * rng.normal(size=M)  # peaky
    r[4], u[4] = 1.0, 1.0  # constant: nan
    u[5] = r[5, 3]  # one group constant at a value of the other
    r[6] = np.round(r[6] * 4) / 4  # coarse lattice: many ties across the groups
    u[6] = np.round(u[6] * 4) / 4
    return torch.from_numpy(r), torch.from_numpy(u)


@needs_op
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("seed", "M"), [(0, 24), (1, 24), (2, 17), (3, 40)])
def test_op_and_torch_paths_agree_on_random_data(seed, M, device):
    r, u = _hard_case(seed, M=M)
    r, u = r.to(device), u.to(device)
    got = competition.competition_epsilons(r, u)
    _assert_identical(got, competition._epsilons_torch(r, u, 1e-5))
    _assert_identical(got, competition._epsilons_op(r, u, 1e-5))
    assert got[3] == 50.0 and torch.isnan(got[4].cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("seed", "M"), [(0, 24), (1, 24), (2, 17), (3, 40)])
def test_hard_cases_match_the_official_algorithm(seed, M, device):
    """Ties, equal ranges, peaky and constant groups, lattices, unequal N / M vs the reference.

    Whichever path the dispatch takes (op or torch). rtol 1e-6: the float32 log of torch
    and numpy may differ by an ulp (as in the random-data test); nan compares equal.
    """
    r, u = _hard_case(seed, M=M)
    expected = ref.competition_epsilons(r.numpy(), u.numpy())
    got = competition_epsilons(r.to(device), u.to(device)).cpu().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(competition._epsilons_torch(r.to(device), u.to(device), 1e-5)
                               .cpu().numpy(), expected, rtol=1e-6, atol=0)


@needs_op
@pytest.mark.parametrize("method", ["finetune", "prune_complex", "poison"])
def test_op_and_torch_paths_agree_on_the_fixture(fixture_arrays, method):
    retain, methods = fixture_arrays
    S = 150
    r, y = split_slots(retain[:S])
    u, _ = split_slots(methods[method][:S])
    cr, cu = logit_scaled_confidence(r, y), logit_scaled_confidence(u, y)
    _assert_identical(competition._epsilons_op(cr, cu, 1e-5),
                      competition._epsilons_torch(cr, cu, 1e-5))


def test_dispatch_falls_back_to_torch(monkeypatch):
    r, u = _hard_case(5)
    expected = competition._epsilons_torch(r, u, 1e-5)
    calls = []
    monkeypatch.setattr(competition, "has_kernel", lambda op, dev: calls.append((op, dev)))
    _assert_identical(competition.competition_epsilons(r, u), expected)
    assert calls == [("competition_epsilons", "cpu")]


def test_dispatch_falls_back_when_the_library_predates_the_op(monkeypatch):
    def missing(op, dev):
        raise RuntimeError(f"operator fastunlearn::{op} does not exist")

    r, u = _hard_case(7)
    monkeypatch.setattr(competition, "has_kernel", missing)
    _assert_identical(competition.competition_epsilons(r, u),
                      competition._epsilons_torch(r, u, 1e-5))


@needs_op
def test_dispatch_uses_the_op_when_compiled(monkeypatch):
    r, u = _hard_case(6)

    def spy(*args):
        spy.calls += 1
        return real(*args)

    spy.calls, real = 0, competition._epsilons_op
    monkeypatch.setattr(competition, "_epsilons_op", spy)
    competition.competition_epsilons(r, u)
    assert spy.calls == 1


def test_epsilon_table_hand_values():
    # 2 positives, 2 negatives: FPR, FNR in {0, 1/2, 1}
    t = epsilon_table(2, 2, 1e-5)
    assert t.shape == (3, 3) and t.dtype == torch.float32
    assert t[0, 0] == math.inf and t[0, 1] == -math.inf and t[1, 0] == -math.inf
    a = np.float32(1 - 1e-5)
    half = np.float32(0.5)
    assert t[1, 1] == max(np.log(a - half) - np.log(half), 0)
