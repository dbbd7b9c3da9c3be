"""Edge cases of the op contract that the per-family tests do not reach (CPU).

* A meta tensor mixed with CPU tensors: the fake kernel runs in eager mode and must raise the
  device error the real kernels raise, not return uninitialised memory or write nothing.
* cg_update_ with a written argument that shares memory with another argument.
* glm_cg on right-hand sides far from 1 in magnitude (float32 dot products underflow or
  overflow): the solve must be scale-equivariant.
* competition_epsilons on statistics whose magnitude makes the interval family's right-edge
  count explode: refused at once instead of running for hours.
"""

import time

import pytest
import test_certified_commit as commit_case
import test_certified_start as start_case
import test_certified_step as step_case
import test_certified_tail as tail_case
import test_certified_woodbury as woodbury_case
import test_cg_update as cg_case
import torch

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.metrics.competition import epsilon_table
from fastunlearn.ops import competition_epsilons, glm_cg, reference

F32, F64 = torch.float32, torch.float64
OPS = torch.ops.fastunlearn


def _snapshot(args):
    return {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and not v.is_meta}


def _assert_unchanged(args, before):
    for k, v in before.items():
        assert torch.equal(args[k].nan_to_num(), v.nan_to_num()), k


# ---- a meta argument among CPU tensors -----------------------------------------------------


def _glm_args():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(6, 3, generator=g, dtype=F64)
    S = torch.rand(6, 2, generator=g, dtype=F64)
    V = torch.randn(3, 2, generator=g, dtype=F64)
    return X, S, V


def _cg_update_args():
    A = cg_case.spd_operators(4, 2, F64, "cpu")
    b = torch.randn(4, 2, dtype=F64)
    x, r, p, rz, rr, active, iterations, threshold_sq = cg_case.initial_state(A, b, None, 1e-8)
    return dict(x=x, r=r, p=p, Ap=cg_case.apply(A, p), inv_diag=None, rz=rz, rr=rr,
                active=active, iterations=iterations, threshold_sq=threshold_sq)  # fmt: skip


def _competition_args():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(3, 5, generator=g, dtype=F64)
    u = torch.randn(3, 5, generator=g, dtype=F64) + 0.5
    grid = torch.linspace(-1.0, 1.0, 7, dtype=F64).repeat(3)
    return dict(retrained=r, unlearned=u, grid=grid, grid_offsets=torch.tensor([0, 7, 14, 21]),
                table_r=epsilon_table(5, 5, 1e-5, r.device),
                table_u=epsilon_table(5, 5, 1e-5, r.device))  # fmt: skip


def _certified_step_args():
    names = ("X", "Y", "A", "Z", "W", "n_rem", "eig", "row_sq", "M_inv", "M_out", "weights",
             "U_buf", "slot", "row", "lam", "gamma", "row_norm_max", "cg_tol", "max_iter")
    return dict(zip(names, step_case._args(step_case._model()), strict=True))


def _glm_case(op, names):
    def make():
        X, S, V = _glm_args()
        full = dict(X=X, S=S, V=V, B=V.clone(), lam=0.5)
        args = {k: full[k] for k in names}
        if op == "glm_cg":
            args.update(x0=None, precond=None, tol=1e-8, maxiter=20)
        return args

    return make


# (op, argument factory, argument put on meta, error type the real kernels raise)
META_CASES = [
    ("glm_hvp", _glm_case("glm_hvp", ("X", "S", "V", "lam")), "X", ValueError),
    ("glm_hvp", _glm_case("glm_hvp", ("X", "S", "V", "lam")), "V", ValueError),
    ("glm_hvp_margins", _glm_case("glm_hvp_margins", ("X", "S", "V", "lam")), "S", ValueError),
    ("glm_hessian", _glm_case("glm_hessian", ("X", "S", "lam")), "S", ValueError),
    ("glm_cg", _glm_case("glm_cg", ("X", "S", "B", "lam")), "B", ValueError),
    ("cg_update_", _cg_update_args, "Ap", ValueError),
    ("cg_update_", _cg_update_args, "threshold_sq", ValueError),
    ("competition_epsilons", _competition_args, "unlearned", ValueError),
    ("competition_epsilons", _competition_args, "table_u", ValueError),
    ("certified_cg_step", _certified_step_args, "M_inv", ValueError),
    ("certified_start_", start_case._args, "eig", ValueError),
    ("certified_cg_tail_", tail_case._args, "Delta", ValueError),
    ("certified_woodbury_row_", woodbury_case._args, "L21", ValueError),
    ("certified_commit_", commit_case._args, "XV", ValueError),
]


@pytest.mark.parametrize(
    ("op", "make", "name", "error"), META_CASES, ids=[f"{c[0]}-{c[2]}" for c in META_CASES]
)
def test_a_meta_argument_among_cpu_tensors_is_refused(op, make, name, error):
    args = make()
    args[name] = args[name].to("meta")
    before = _snapshot(args)
    with pytest.raises(error, match=rf"{op}: argument '\w+' is on (meta|cpu) but"):
        getattr(OPS, op).default(*args.values())
    _assert_unchanged(args, before)


def test_all_meta_arguments_still_give_shapes():
    X, S, V = (t.to("meta") for t in _glm_args())
    assert OPS.glm_hvp.default(X, S, V, 0.5).shape == (3, 2)
    out, margins = OPS.glm_hvp_margins.default(X, S, V, 0.5)
    assert (out.shape, margins.shape, out.device.type) == ((3, 2), (6, 2), "meta")
    assert OPS.glm_hessian.default(X, S, 0.5).shape == (2, 3, 3)
    solution, iterations, residual = OPS.glm_cg.default(X, S, V, 0.5, None, None, 1e-6, 5)
    assert (solution.shape, iterations.shape, iterations.dtype) == ((3, 2), (2,), torch.int64)
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v)
            for k, v in _cg_update_args().items()}  # fmt: skip
    OPS.cg_update_.default(*meta.values())


# ---- cg_update_: written arguments sharing memory ------------------------------------------


@pytest.mark.parametrize(
    ("written", "other"),
    [("r", "x"), ("rr", "rz"), ("rr", "threshold_sq"), ("r", "inv_diag"), ("x", "Ap"),
     ("active", "active_view")],
)  # fmt: skip
def test_cg_update_refuses_written_arguments_that_share_memory(written, other):
    args = _cg_update_args()
    if other == "active_view":  # iterations and active: two views of one byte buffer
        args["active"] = args["iterations"].view(torch.bool)[: args["active"].numel()]
    elif other == "inv_diag":
        args["inv_diag"] = args["r"]
    else:
        args[written] = args[other]
    before = _snapshot(args)
    with pytest.raises(ValueError, match=r"cg_update_: argument '\w+' \(written in place\) "
                                           r"shares memory with argument '\w+'"):
        OPS.cg_update_.default(*args.values())
    _assert_unchanged(args, before)


def test_cg_update_partially_overlapping_views_are_refused():
    args = _cg_update_args()
    buffer = torch.zeros(5, 2, dtype=F64)
    buffer[:4] = args["x"]
    args["x"], args["r"] = buffer[:4], buffer[1:5]
    before = _snapshot(args)
    with pytest.raises(ValueError, match="argument 'x' .* shares memory with argument 'r'"):
        OPS.cg_update_.default(*args.values())
    _assert_unchanged(args, before)


def test_cg_update_accepts_ap_aliasing_p_as_for_the_identity_operator():
    # A = I: Ap is p itself. One step must match the float64 oracle run on separate copies.
    d, K = 5, 3
    b = torch.randn(d, K, dtype=F64)
    state = cg_case.initial_state(torch.eye(d, dtype=F64).expand(K, d, d), b, None, 1e-10)
    ours = cg_case.clone_state(state)
    want = cg_case.clone_state(state)
    x, r, p, rz, rr, active, iterations, threshold_sq = ours
    OPS.cg_update_.default(x, r, p, p, None, rz, rr, active, iterations, threshold_sq)
    wx, wr, wp, wrz, wrr, wactive, witerations, wth = want
    reference.cg_update_(wx, wr, wp, wp.clone(), None, wrz, wrr, wactive, witerations, wth)
    cg_case.assert_states_close(ours, want, F64)
    # CG on the identity converges in one step: x = b
    torch.testing.assert_close(x, b, rtol=1e-14, atol=0)


# ---- glm_cg: right-hand sides far from 1 ---------------------------------------------------


def _glm_problem(dtype):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 5, generator=g).to(dtype)
    S = torch.rand(30, 2, generator=g).to(dtype)
    B = torch.randn(5, 2, generator=g).to(dtype)
    return X, S, B


def _exact_solution(X, S, B, lam):
    H = reference.glm_hessian(X.double(), S.double(), lam)
    return torch.linalg.solve(H, B.double().T.unsqueeze(-1)).squeeze(-1).T


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(F32, 1e-22), (F32, 1e-26), (F32, 1e-36), (F32, 1e20), (F32, 1e30),
     (F64, 1e-300), (F64, 1e-300 * 2.0**-40), (F64, 1e300)],
)  # fmt: skip
def test_glm_cg_solves_right_hand_sides_of_any_magnitude(dtype, scale):
    X, S, B = _glm_problem(dtype)
    B_scaled = (B.double() * scale).to(dtype)
    assert B_scaled.abs().max() > 0 and torch.isfinite(B_scaled).all()
    result = glm_cg(X, S, B_scaled, 0.1, tol=1e-5 if dtype == F32 else 1e-12)
    # the float64 oracle in units of `scale` (its own norms would under- or overflow)
    unit = B_scaled.double() / scale
    exact = _exact_solution(X, S, unit, 0.1)
    got = result.solution.double() / scale
    error = (got - exact).norm(dim=0) / exact.norm(dim=0)
    assert (error < (1e-4 if dtype == F32 else 1e-6)).all(), error
    assert (result.iterations > 0).all()
    # the reported residual norms are the true ones, relative to ||B||: not 0, inf or nan
    true_residual = (unit - reference.glm_hvp(X.double(), S.double(), got, 0.1)).norm(dim=0)
    reported = result.residual_norms.double() / scale
    b_norm = unit.norm(dim=0)
    assert torch.isfinite(reported).all()
    assert (reported <= 10 * true_residual + 1e-3 * b_norm).all()
    assert (true_residual <= (1e-3 if dtype == F32 else 1e-9) * b_norm).all()


@pytest.mark.parametrize("precond", [None, "jacobi", "cholesky"])
def test_glm_cg_is_exactly_scale_equivariant(precond):
    # Scaling a column of B by a power of two scales its solution by the same power, bit for
    # bit, also across the rescaling band (2^-100 in float32 underflowed r.r before).
    X, S, B = _glm_problem(F32)
    if precond == "cholesky":
        precond = torch.linalg.cholesky(reference.glm_hessian(X.double(), S.double(), 0.1)).float()
    base = glm_cg(X, S, B, 0.1, precond=precond, tol=1e-5, maxiter=30)
    factor = torch.tensor([2.0**-100, 2.0**90], dtype=F64)
    scaled = glm_cg(X, S, (B.double() * factor).float(), 0.1, precond=precond, tol=1e-5,
                    maxiter=30)  # fmt: skip
    assert torch.equal(scaled.iterations, base.iterations)
    assert torch.equal(scaled.solution.double(), base.solution.double() * factor)
    assert torch.equal(scaled.residual_norms.double(), base.residual_norms.double() * factor)


def test_glm_cg_warm_start_is_scaled_with_its_column():
    X, S, B = _glm_problem(F32)
    B_tiny = (B.double() * 1e-30).float()
    exact = _exact_solution(X, S, B_tiny, 0.1)
    x0 = (exact * 0.9).float()
    result = glm_cg(X, S, B_tiny, 0.1, x0=x0, tol=1e-5)
    error = (result.solution.double() - exact).norm(dim=0) / exact.norm(dim=0)
    assert (error < 1e-4).all(), error


def test_glm_cg_without_rows_solves_lam_x_equals_b():
    _, _, B = _glm_problem(F64)
    result = glm_cg(torch.zeros(0, 5, dtype=F64), torch.zeros(0, 2, dtype=F64), B, 0.25)
    torch.testing.assert_close(result.solution, B / 0.25, rtol=1e-14, atol=0)
    assert result.iterations.tolist() == [1, 1]


# ---- competition_epsilons: huge magnitudes -------------------------------------------------


def _competition(r, u):
    r = torch.tensor([r], dtype=F64)
    u = torch.tensor([u], dtype=F64)
    N, M = r.shape[1], u.shape[1]
    return competition_epsilons(
        r, u, torch.zeros(0, dtype=F64), torch.tensor([0, 0]),
        epsilon_table(N, M, 1e-5, r.device), epsilon_table(M, N, 1e-5, r.device))  # fmt: skip


@pytest.mark.parametrize("magnitude", [1e22, 1e30, 1e300])
def test_competition_refuses_magnitudes_whose_interval_family_explodes(magnitude):
    # min + (max - min) rounds to 0 here, so the interval family would need about
    # 100 * max right edges (1e22: 18 s before; 1e30: years).
    r = [-magnitude, 0.0, 1.0, magnitude * 5e-17]
    u = [-magnitude, 1.0, 2.0, magnitude * 5e-17]
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"competition_epsilons: argument 'retrained' of "
                                           r"example 0 spans .* right edges"):
        _competition(r, u)
    assert time.perf_counter() - start < 5.0


def test_competition_keeps_large_but_harmless_magnitudes():
    # Sterbenz: min + (max - min) == max for values of one sign within a factor of 2, so the
    # right-edge count stays about 400 however large the values are.
    s = 2.0**70
    r = [s, 1.25 * s, 1.5 * s, 1.75 * s]
    u = [1.1 * s, 1.3 * s, 1.6 * s, 1.9 * s]
    eps = _competition(r, u)
    assert eps.shape == (1,) and (torch.isnan(eps) | ((eps >= 0) & (eps <= 50))).all()
