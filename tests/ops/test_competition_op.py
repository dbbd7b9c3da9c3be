"""competition_epsilons (the competition metric's per-example epsilon) vs brute force."""

import math

import numpy as np
import pytest
import torch
from helpers import DEVICES, DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st

from fastunlearn.metrics.competition import _single_grids, epsilon_table
from fastunlearn.ops import competition_epsilons, reference

OP = torch.ops.fastunlearn.competition_epsilons.default


def _args(r, u, delta=1e-5):
    """The op's inputs for statistics r [S, N], u [S, M]: grids for every example."""
    skip = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    grid, offsets = _single_grids(r.double(), u.double(), skip)
    N, M = r.shape[1], u.shape[1]
    return (r, u, grid, offsets, epsilon_table(N, M, delta, r.device),
            epsilon_table(M, N, delta, r.device))


def _cases(seed, S=8, N=12, M=12):
    """Random statistics with ties, equal ranges, a peaky row and a constant row."""
    rng = np.random.default_rng(seed)
    r = rng.normal(0, rng.uniform(0.1, 2, (S, 1)), (S, N))
    u = rng.normal(rng.uniform(-1.5, 1.5, (S, 1)), rng.uniform(0.1, 2, (S, 1)), (S, M))
    r[0], u[0] = np.round(r[0], 1), np.round(u[0], 1)  # ties within and across groups
    if N == M:
        u[1] = r[1][::-1] + 0.0  # equal ranges (the swap rule), identical multisets
        u[2] = r[2] + 0.5  # equal ranges, shifted
    u[3] = 1e-3 * u[3]  # peaky: tiny range against a normal one
    r[4], u[4] = 3.0, 3.0  # both constant: 0/0, no usable threshold
    u[5] = r[5, 0]  # one group constant at a value of the other
    r[6] = np.round(r[6] * 4) / 4  # values on a coarse lattice
    u[6] = np.round(u[6] * 4) / 4 + 0.25
    return torch.from_numpy(r), torch.from_numpy(u)


def _assert_same(got, expected):
    assert got.dtype == torch.float64
    got, expected = got.cpu(), expected.cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(expected))
    ok = ~torch.isnan(expected)
    assert torch.equal(got[ok], expected[ok]), (got, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force(device, dtype, seed):
    r, u = _cases(seed)
    r, u = r.to(dtype).to(device), u.to(dtype).to(device)
    args = _args(r, u)
    got = competition_epsilons(*args)
    assert got.device == r.device and got.shape == (r.shape[0],)
    _assert_same(got, reference.competition_epsilons(*args))
    assert got[3] == 50.0 and torch.isnan(got[4].cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("N", "M"), [(12, 7), (5, 16), (1, 3), (2, 1)])
def test_unequal_group_sizes(device, N, M):
    r, u = _cases(7, S=8, N=N, M=M)
    args = _args(r.to(device), u.to(device))
    _assert_same(competition_epsilons(*args), reference.competition_epsilons(*args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("offset", [-3e6, 2e7])
def test_large_magnitudes_take_the_exact_path(device, offset):
    # |values| >= 1e6: the kernel's multiply-and-round shortcut is off, every count exact
    r, u = _cases(8, N=9, M=9)
    args = _args(r.to(device) + offset, u.to(device) + offset)
    _assert_same(competition_epsilons(*args), reference.competition_epsilons(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_values_on_the_threshold_grids(device):
    # Statistics placed exactly on interval edges (and one ulp either side), where only
    # exact float64 comparisons with numpy's grid entries give the right counts.
    rng = np.random.default_rng(11)
    rows_r, rows_u = [], []
    for _ in range(6):
        a = rng.normal(0, 0.3, 10)
        w = a.max() - a.min()
        lo, hi = a.min() + w - 2.0, a.max() + 2.0
        right = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
        ri = right[rng.integers(0, len(right), 3)]
        left = np.linspace(ri[0] - w - 2.0, ri[0] - w + 2.0, 400)
        lj = left[rng.integers(0, 400, 3)]
        picks = np.concatenate([ri, lj])
        b = np.concatenate([picks, np.nextafter(picks, np.inf)[:2],
                            np.nextafter(picks, -np.inf)[:2]])
        # a is peakier (range w < range of b) and keeps the larger median
        rows_r.append(a + 0.0)
        rows_u.append(b[:10] if len(b) >= 10 else np.resize(b, 10))
    r = torch.from_numpy(np.stack(rows_r)).to(device)
    u = torch.from_numpy(np.stack(rows_u)).to(device)
    for x, y in ((r, u), (u, r)):
        args = _args(x, y)
        _assert_same(competition_epsilons(*args), reference.competition_epsilons(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_fixture_confidences(device, fixture_confidences):
    r, u = fixture_confidences
    args = _args(r.to(device), u.to(device))
    _assert_same(competition_epsilons(*args), reference.competition_epsilons(*args))


@pytest.fixture(scope="module")
def fixture_confidences():
    from pathlib import Path

    from fastunlearn.metrics import logit_scaled_confidence, split_slots

    root = Path("/work/shared/fixtures/forget_with_precision")
    here = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "forget_with_precision"
    root = here if here.is_dir() else root
    if not (root / "logits_retain.npy").is_file():
        pytest.skip("forget_with_precision fixture not found")
    sel = slice(0, 6)
    r, y = split_slots(np.load(root / "logits_retain.npy")[sel])
    u, _ = split_slots(np.load(root / "poison" / "logits_unlearn.npy")[sel])
    return logit_scaled_confidence(r, y)[:, :40], logit_scaled_confidence(u, y)[:, :40]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty(device, dtype):
    r = torch.empty(0, 5, dtype=dtype, device=device)
    u = torch.empty(0, 4, dtype=dtype, device=device)
    got = competition_epsilons(*_args(r, u))
    assert got.shape == (0,) and got.dtype == torch.float64


@settings(max_examples=30, deadline=None)
@given(
    S=st.integers(0, 4),
    N=st.integers(1, 6),
    M=st.integers(1, 6),
    scale=st.sampled_from([0.05, 0.5, 2.0]),
    decimals=st.sampled_from([1, 2, 8]),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(S, N, M, scale, decimals, double, seed):
    rng = np.random.default_rng(seed)
    r = np.round(rng.normal(0, scale, (S, N)), decimals)
    u = np.round(rng.normal(rng.normal(0, 1), scale, (S, M)), decimals)
    dtype = torch.float64 if double else torch.float32
    args = _args(torch.from_numpy(r).to(dtype), torch.from_numpy(u).to(dtype))
    got = competition_epsilons(*args)
    _assert_same(got, reference.competition_epsilons(*args))
    ok = ~torch.isnan(got)
    assert bool(((got[ok] >= 0) & (got[ok] <= 50)).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(device, dtype):
    r, u = _cases(1, N=6, M=6)
    keep = [0, 1, 2, 3, 5, 6, 7]  # row 4 gives nan, which opcheck's comparison rejects
    args = _args(r[keep].to(dtype).to(device), u[keep].to(dtype).to(device))
    torch.library.opcheck(OP, args)
    torch.library.opcheck(OP, (args[0].clone().requires_grad_(),) + args[1:])


def test_output_is_not_differentiable():
    r, u = _cases(2, N=5, M=5)
    args = _args(r.requires_grad_(), u)
    assert not competition_epsilons(*args).requires_grad


def test_torch_compile_fullgraph():
    r, u = _cases(3, N=6, M=6)
    args = _args(r, u)
    compiled = torch.compile(competition_epsilons, fullgraph=True)
    _assert_same(compiled(*args), competition_epsilons(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_naming_the_argument(device):
    r, u = _cases(4, N=5, M=6)
    r, u, grid, off, tr, tu = _args(r.to(device), u.to(device))
    with pytest.raises(ValueError, match="'retrained'"):
        OP(r[0], u, grid, off, tr, tu)
    with pytest.raises(ValueError, match="'unlearned'"):
        OP(r, u[:3], grid, off, tr, tu)
    with pytest.raises(TypeError, match="'retrained'.*'unlearned'"):
        OP(r, u.float(), grid, off, tr, tu)
    with pytest.raises(TypeError, match="'retrained'"):
        OP(r.int(), u.int(), grid, off, tr, tu)
    with pytest.raises(TypeError, match="'grid'"):
        OP(r, u, grid.float(), off, tr, tu)
    with pytest.raises(ValueError, match="'grid_offsets'"):
        OP(r, u, grid, off[:-1], tr, tu)
    with pytest.raises(ValueError, match="'grid_offsets'"):
        OP(r, u, grid, off.flip(0), tr, tu)
    with pytest.raises(ValueError, match="'table_r'"):
        OP(r, u, grid, off, tu, tr)
    with pytest.raises(TypeError, match="'table_u'"):
        OP(r, u, grid, off, tr, tu.double())
    # a table of the shape no retrained example needs (epsilon_table refuses 0 examples)
    empty_table = torch.zeros(7, 1, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match="'retrained'"):
        OP(r[:, :0], u, grid, off, empty_table, tu)
    bad = r.clone()
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="'retrained'"):
        OP(bad, u, grid, off, tr, tu)
    bad = u.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="'unlearned'"):
        OP(r, bad, grid, off, tr, tu)
    with pytest.raises(TypeError, match="'grid'"):
        competition_epsilons(r, u, grid.tolist(), off, tr, tu)


@pytest.mark.cuda
def test_mixed_devices_raise():
    r, u = _cases(5, N=4, M=4)
    args = list(_args(r, u))
    with pytest.raises(ValueError, match="'retrained'.*'unlearned'"):
        OP(args[0], args[1].cuda(), *args[2:])
    with pytest.raises(ValueError, match="'table_r'"):
        OP(*args[:4], args[4].cuda(), args[5])
