"""cg_update_: fused CG step against the float64 reference, on CPU (and CUDA when present)."""

import pytest
import torch
from helpers import DEVICES, DTYPES, op_error, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.ops import cg_update_, reference

OP = torch.ops.fastunlearn.cg_update_.default


def spd_operators(d, K, dtype, device, negative=()):
    """K random SPD [d, d] matrices (negated for the columns in `negative`)."""
    g = torch.randn(K, d, d, dtype=torch.float64)
    A = g @ g.transpose(1, 2) / max(d, 1) + torch.eye(d, dtype=torch.float64)
    for k in negative:
        A[k] = -A[k]
    return A.to(dtype=dtype, device=device)


def apply(A, p):
    """Column k of the result is A[k] @ p[:, k]."""
    return torch.einsum("kij,jk->ik", A, p)


def initial_state(A, b, inv_diag, tol):
    """CG state for x0 = 0: r = b, z = M^-1 r, p = z."""
    d, K = b.shape
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if inv_diag is None else inv_diag * r
    p = z.clone()
    rz = (r * z).sum(0)
    rr = (r * r).sum(0)
    threshold_sq = (tol**2) * (b * b).sum(0)
    active = rr > threshold_sq
    iterations = torch.zeros(K, dtype=torch.int64, device=b.device)
    return [x, r, p, rz, rr, active, iterations, threshold_sq]


def clone_state(state):
    return [t.clone() for t in state]


def step(fn, A, state, inv_diag, Ap=None):
    x, r, p, rz, rr, active, iterations, threshold_sq = state
    Ap = apply(A, p) if Ap is None else Ap
    fn(x, r, p, Ap, inv_diag, rz, rr, active, iterations, threshold_sq)


def assert_states_close(got, want, dtype):
    names = ["x", "r", "p", "rz", "rr", "active", "iterations", "threshold_sq"]
    for name, g, w in zip(names, got, want, strict=True):
        if g.dtype in (torch.bool, torch.int64):
            assert torch.equal(g.cpu(), w.cpu()), name
        else:
            torch.testing.assert_close(
                g.double().cpu(),
                w.double().cpu(),
                **tolerances(dtype),
                msg=lambda m, n=name: f"{n}: {m}",
            )


def make_inv_diag(kind, A, d, K):
    if kind is None:
        return None
    diag = torch.diagonal(A, dim1=1, dim2=2).T.abs().contiguous()  # [d, K]
    return 1.0 / diag if kind == "full" else (1.0 / diag[:, :1]).contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precond", [None, "full", "column"])
def test_matches_reference_over_steps(device, dtype, precond):
    d, K = 12, 6
    # column 3 is negative definite (pAp < 0 at once), column 4 starts inactive (b = 0),
    # column 5 has a zero search direction after we zero it (pAp = 0).
    A = spd_operators(d, K, dtype, device, negative=(3,))
    b = torch.randn(d, K, dtype=dtype, device=device)
    b[:, 4] = 0
    inv_diag = make_inv_diag(precond, A, d, K)
    ours = initial_state(A, b, inv_diag, tol=1e-12)
    ours[2][:, 5] = 0
    ref = clone_state(ours)
    before = clone_state(ours)
    for _ in range(5):
        step(cg_update_, A, ours, inv_diag)
        step(reference.cg_update_, A, ref, inv_diag)
        assert_states_close(ours, ref, dtype)
    iterations, active = ours[6].cpu(), ours[5].cpu()
    assert iterations.tolist()[:3] == [5, 5, 5]
    assert iterations.tolist()[3:] == [0, 0, 0]
    assert not active[3:].any()
    for k in (3, 4, 5):  # broken-down and inactive columns are untouched
        for t, t0 in zip(ours[:5], before[:5], strict=True):
            assert torch.equal(
                t[:, k] if t.dim() == 2 else t[k], t0[:, k] if t0.dim() == 2 else t0[k]
            )


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_curvature_deactivates(device):
    d, K = 5, 3
    A = spd_operators(d, K, torch.float64, device)
    b = torch.randn(d, K, dtype=torch.float64, device=device)
    state = initial_state(A, b, None, tol=1e-12)
    Ap = apply(A, state[2])
    Ap[0, 1] = float("nan")
    Ap[0, 2] = float("inf")
    x_before = state[0].clone()
    step(cg_update_, A, state, None, Ap=Ap)
    assert state[5].cpu().tolist() == [True, False, False]
    assert state[6].cpu().tolist() == [1, 0, 0]
    assert torch.equal(state[0][:, 1:], x_before[:, 1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("precond", [None, "full", "column"])
def test_cg_loop_solves_spd_system(device, dtype, K, precond):
    d = 20
    A = spd_operators(d, K, torch.float64, device)
    b = torch.randn(d, K, dtype=torch.float64, device=device)
    want = torch.linalg.solve(A, b.T.unsqueeze(-1)).squeeze(-1).T
    A_, b_ = A.to(dtype), b.to(dtype)
    inv_diag = make_inv_diag(precond, A_, d, K)
    state = initial_state(A_, b_, inv_diag, tol=1e-5 if dtype == torch.float32 else 1e-12)
    for _ in range(3 * d):
        step(cg_update_, A_, state, inv_diag)
    assert not state[5].any()
    assert (state[6] <= 3 * d).all() and (state[6] > 0).all()
    rtol = 1e-3 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(state[0].double(), want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("precond", [None, "full", "column"])
def test_many_row_blocks(device, K, precond):
    # d spans several CPU row blocks (32K elements each); diagonal operators keep it cheap.
    d = 70_000
    diag = torch.rand(d, K, dtype=torch.float64, device=device) + 0.5
    b = torch.randn(d, K, dtype=torch.float64, device=device)
    inv_diag = None if precond is None else (1 / diag if precond == "full" else 1 / diag[:, :1])
    ours = initial_state(None, b, inv_diag, tol=1e-12)
    ref = clone_state(ours)
    for _ in range(2):
        for fn, state in ((cg_update_, ours), (reference.cg_update_, ref)):
            step(fn, None, state, inv_diag, Ap=diag * state[2])
    assert_states_close(ours, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_in_place(device):
    d, K = 9, 4
    A = spd_operators(d, K, torch.float64, device)
    b = torch.randn(d, K, dtype=torch.float64, device=device)
    inv_diag = make_inv_diag("full", A, d, K)
    ref = initial_state(A, b, inv_diag, tol=1e-12)
    # x, r, p as transposed views of [K, d] storage; rz, rr, ... strided slices.
    ours = []
    for t in ref:
        if t.dim() == 2:
            ours.append(torch.empty_like(t.T, memory_format=torch.contiguous_format).T.copy_(t))
        else:
            ours.append(torch.stack([t, t], dim=1)[:, 0])
    assert all(not t.is_contiguous() for t in ours)
    inv_nc = torch.empty_like(inv_diag.T, memory_format=torch.contiguous_format).T
    inv_nc.copy_(inv_diag)
    for _ in range(3):
        step(cg_update_, A, ours, inv_nc)
        step(reference.cg_update_, A, ref, inv_diag)
    assert_states_close(ours, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(d=st.integers(0, 17), K=st.integers(0, 5), precond=st.sampled_from([None, "full", "column"]))
def test_hypothesis_shapes(device, d, K, precond):
    torch.manual_seed(d * 10 + K)
    A = spd_operators(d, K, torch.float64, device)
    b = torch.randn(d, K, dtype=torch.float64, device=device)
    inv_diag = make_inv_diag(precond, A, d, K)
    if inv_diag is not None and K == 0 and precond == "column":
        inv_diag = torch.ones(d, 1, dtype=torch.float64, device=device)
    ours = initial_state(A, b, inv_diag, tol=1e-10)
    ref = clone_state(ours)
    for _ in range(2):
        step(cg_update_, A, ours, inv_diag)
        step(reference.cg_update_, A, ref, inv_diag)
    assert_states_close(ours, ref, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precond", [None, "full"])
def test_opcheck(device, dtype, precond):
    d, K = 7, 3
    A = spd_operators(d, K, dtype, device)
    b = torch.randn(d, K, dtype=dtype, device=device)
    inv_diag = make_inv_diag(precond, A, d, K)
    x, r, p, rz, rr, active, iterations, threshold_sq = initial_state(A, b, inv_diag, 1e-12)
    Ap = apply(A, p)
    torch.library.opcheck(
        OP,
        (x, r, p, Ap, inv_diag, rz, rr, active, iterations, threshold_sq),
        test_utils=("test_schema", "test_faketensor"),
    )


def _valid_args(d=4, K=3, dtype=torch.float64):
    A = spd_operators(d, K, dtype, "cpu")
    b = torch.randn(d, K, dtype=dtype)
    x, r, p, rz, rr, active, iterations, threshold_sq = initial_state(A, b, None, 1e-12)
    return dict(
        x=x,
        r=r,
        p=p,
        Ap=apply(A, p),
        inv_diag=None,
        rz=rz,
        rr=rr,
        active=active,
        iterations=iterations,
        threshold_sq=threshold_sq,
    )


@pytest.mark.parametrize(
    "name, bad",
    [
        ("x", torch.zeros(4, 3, dtype=torch.int64)),
        ("x", torch.zeros(4, 3, 1, dtype=torch.float64)),
        ("r", torch.zeros(5, 3, dtype=torch.float64)),
        ("p", torch.zeros(4, 2, dtype=torch.float64)),
        ("Ap", torch.zeros(4, 3, dtype=torch.float32)),
        ("inv_diag", torch.ones(4, 2, dtype=torch.float64)),
        ("inv_diag", torch.ones(3, 3, dtype=torch.float64)),
        ("inv_diag", torch.ones(4, 3, dtype=torch.float32)),
        ("rz", torch.zeros(4, dtype=torch.float64)),
        ("rr", torch.zeros(3, dtype=torch.float32)),
        ("active", torch.ones(3, dtype=torch.int64)),
        ("iterations", torch.zeros(3, dtype=torch.int32)),
        ("threshold_sq", torch.zeros(3, 1, dtype=torch.float64)),
    ],
)
def test_bad_inputs_name_the_argument(name, bad):
    args = _valid_args()
    good = args[name]
    error = op_error(bad, torch.float64 if good is None else good.dtype)
    args[name] = bad
    with pytest.raises(error, match=f"'{name}'"):
        OP(*args.values())


@pytest.mark.cuda
def test_mixed_devices_name_the_argument():
    args = _valid_args()
    args = {k: (v.cuda() if v is not None else None) for k, v in args.items()}
    args["rr"] = args["rr"].cpu()
    with pytest.raises(ValueError, match="'rr'"):
        OP(*args.values())
