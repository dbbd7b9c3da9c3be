import pytest
import torch
from helpers import DEVICES, DTYPES

from fastunlearn.linalg import (
    CGInverseOperator,
    DenseOperator,
    GLMHessianOperator,
    LissaDivergenceError,
    NetworkHessianOperator,
    cg,
    cholesky_solve,
    damped,
    lissa,
)
from fastunlearn.ops import reference


def _spd(d, dtype=torch.float64, device="cpu", cond=50.0):
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), d, dtype=torch.float64)
    return ((Q * eig) @ Q.T).to(dtype=dtype, device=device)


def _rel_err(x, ref):
    return (torch.linalg.vector_norm(x.double() - ref) / torch.linalg.vector_norm(ref)).item()


# ---------------------------------------------------------------- CG: answers


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [None, 1, 4])
@pytest.mark.parametrize("precond", [None, "jacobi"])
def test_cg_matches_solve(device, dtype, K, precond):
    d = 30
    H = _spd(d, dtype, device)
    B = torch.randn(d, dtype=dtype, device=device) if K is None else torch.randn(
        d, K, dtype=dtype, device=device)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    res = cg(DenseOperator(H), B, tol=tol, precond=precond)
    ref = torch.linalg.solve(H.double(), B.double())
    assert res.solution.shape == B.shape and res.solution.dtype == dtype
    assert _rel_err(res.solution, ref) < (1e-3 if dtype == torch.float32 else 1e-8)
    ncols = 1 if K is None else K
    assert res.iterations.shape == (ncols,) and res.iterations.dtype == torch.int64
    assert bool(res.converged.all()) and not bool(res.breakdown.any())
    assert bool((res.iterations > 0).all()) and bool((res.iterations <= 3 * d).all())
    true_res = torch.linalg.vector_norm((B.double() - H.double() @ res.solution.double())
                                        .reshape(d, -1), dim=0)
    torch.testing.assert_close(res.residual_norms.double(), true_res, rtol=1e-2, atol=1e-5)


def test_cg_iterations_bounded_by_distinct_eigenvalues():
    d = 40
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    eig = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64).repeat_interleave(
        torch.tensor([10, 15, 15]))
    H = (Q * eig) @ Q.T
    res = cg(DenseOperator(H), torch.randn(d, 3, dtype=torch.float64), tol=1e-10)
    # Exact arithmetic needs exactly 3 steps; allow one for rounding.
    assert bool((res.iterations >= 3).all()) and bool((res.iterations <= 4).all())
    assert bool(res.converged.all())


def test_jacobi_solves_diagonal_system_in_one_step():
    diag = torch.logspace(0, 4, 25, dtype=torch.float64)
    b = torch.randn(25, dtype=torch.float64)
    op = DenseOperator(torch.diag(diag))
    plain = cg(op, b, tol=1e-12)
    jac = cg(op, b, tol=1e-12, precond="jacobi")
    jac_tensor = cg(op, b, tol=1e-12, precond=1.0 / diag)
    assert jac.iterations.tolist() == [1] and jac_tensor.iterations.tolist() == [1]
    assert plain.iterations.item() > 5
    torch.testing.assert_close(jac.solution, b / diag)
    torch.testing.assert_close(jac_tensor.solution, b / diag)


def test_callable_preconditioner_unfused_path_matches():
    d = 30
    scales = torch.logspace(0, 2, d, dtype=torch.float64)
    H = scales[:, None] * _spd(d) * scales[None, :]  # badly scaled SPD
    B = torch.randn(d, 3, dtype=torch.float64)
    ref = torch.linalg.solve(H, B)
    fused = cg(DenseOperator(H), B, tol=1e-12, precond="jacobi")
    unfused = cg(DenseOperator(H), B, tol=1e-12, precond=lambda R: R / H.diagonal()[:, None])
    as_operator = cg(DenseOperator(H), B, tol=1e-12,
                     precond=DenseOperator(torch.diag(1.0 / H.diagonal())))
    for res in (fused, unfused, as_operator):
        assert _rel_err(res.solution, ref) < 1e-8 and bool(res.converged.all())
    torch.testing.assert_close(unfused.iterations, fused.iterations, atol=1, rtol=0)
    torch.testing.assert_close(as_operator.solution, unfused.solution)


def test_cg_plain_callable_operator():
    H = _spd(12)
    B = torch.randn(12, 2, dtype=torch.float64)
    res = cg(lambda V: H @ V, B, tol=1e-12)
    torch.testing.assert_close(res.solution, torch.linalg.solve(H, B))


@pytest.mark.parametrize("precond", [None, "jacobi"])
def test_check_every_does_not_change_the_answer(precond):
    H = _spd(25)
    B = torch.randn(25, 3, dtype=torch.float64)
    every = cg(DenseOperator(H), B, tol=1e-9, precond=precond, check_every=1)
    tenth = cg(DenseOperator(H), B, tol=1e-9, precond=precond, check_every=10)
    assert torch.equal(every.solution, tenth.solution)
    assert torch.equal(every.iterations, tenth.iterations)
    # Checking rarely costs at most check_every - 1 extra operator calls.
    assert every.num_matvecs <= tenth.num_matvecs <= every.num_matvecs + 9 * 3


def test_num_matvecs_counts_columns():
    H = _spd(10)
    B = torch.randn(10, 2, dtype=torch.float64)
    res = cg(DenseOperator(H), B, tol=1e-10, check_every=1)
    # One call per iteration plus the true residual; x0 costs one more.
    assert res.num_matvecs == 2 * (int(res.iterations.max()) + 1)
    warm = cg(DenseOperator(H), B, x0=torch.zeros_like(B), tol=1e-10, check_every=1)
    assert warm.num_matvecs == res.num_matvecs + 2


def test_warm_start():
    H = _spd(30)
    B = torch.randn(30, 2, dtype=torch.float64)
    exact = torch.linalg.solve(H, B)
    at_solution = cg(DenseOperator(H), B, x0=exact, tol=1e-8)
    assert at_solution.iterations.tolist() == [0, 0]
    assert bool(at_solution.converged.all())
    cold = cg(DenseOperator(H), B, tol=1e-10)
    warm = cg(DenseOperator(H), B, x0=exact + 1e-6 * torch.randn_like(exact), tol=1e-10)
    torch.testing.assert_close(warm.solution, exact)
    assert bool((warm.iterations <= cold.iterations).all())
    x0 = torch.randn(30, dtype=torch.float64)  # vector warm start for a vector RHS
    vec = cg(DenseOperator(H), B[:, 0], x0=x0, tol=1e-10)
    torch.testing.assert_close(vec.solution, exact[:, 0])


def test_zero_rhs():
    H = _spd(8)
    B = torch.zeros(8, 2, dtype=torch.float64)
    B[:, 1] = torch.randn(8, dtype=torch.float64)
    res = cg(DenseOperator(H), B, tol=1e-10)
    assert res.iterations[0].item() == 0
    assert torch.equal(res.solution[:, 0], torch.zeros(8, dtype=torch.float64))
    assert bool(res.converged.all())
    torch.testing.assert_close(res.solution[:, 1], torch.linalg.solve(H, B[:, 1]))
    no_columns = cg(DenseOperator(H), torch.zeros(8, 0, dtype=torch.float64))
    assert no_columns.solution.shape == (8, 0) and no_columns.converged.shape == (0,)
    empty = cg(DenseOperator(torch.zeros(0, 0, dtype=torch.float64)),
               torch.zeros(0, dtype=torch.float64))
    assert empty.solution.shape == (0,) and bool(empty.converged.all())


def test_maxiter_stops_without_convergence():
    H = _spd(40, cond=1e4)
    res = cg(DenseOperator(H), torch.randn(40, dtype=torch.float64), tol=1e-12, maxiter=3)
    assert res.iterations.tolist() == [3]
    assert not bool(res.converged.any()) and not bool(res.breakdown.any())
    zero = cg(DenseOperator(H), torch.ones(40, dtype=torch.float64), maxiter=0)
    assert zero.iterations.tolist() == [0]
    assert torch.equal(zero.solution, torch.zeros(40, dtype=torch.float64))


def test_non_spd_reports_breakdown_not_nan():
    H = _spd(10)
    B = torch.randn(10, 2, dtype=torch.float64)
    res = cg(DenseOperator(-H), B)
    assert bool(res.breakdown.all()) and not bool(res.converged.any())
    assert bool(torch.isfinite(res.solution).all())
    # An operator producing NaN is also a breakdown, not a NaN solution.
    nan = cg(lambda V: torch.full_like(V, float("nan")), B)
    assert bool(nan.breakdown.all()) and bool(torch.isfinite(nan.solution).all())
    # A mixed block: one SPD column system, one breaking down, both handled per column.
    mixed = cg(lambda V: torch.stack([H @ V[:, 0], -H @ V[:, 1]], dim=1), B, tol=1e-10)
    assert mixed.converged.tolist() == [True, False]
    assert mixed.breakdown.tolist() == [False, True]
    torch.testing.assert_close(mixed.solution[:, 0], torch.linalg.solve(H, B[:, 0]))


def test_cg_on_multi_head_glm_operator():
    n, d, K = 60, 6, 3
    X = torch.randn(n, d, dtype=torch.float64)
    S = torch.rand(n, K, dtype=torch.float64)
    B = torch.randn(d, K, dtype=torch.float64)
    for precond in (None, "jacobi"):
        res = cg(GLMHessianOperator(X, S, 0.1), B, tol=1e-11, precond=precond)
        torch.testing.assert_close(res.solution, reference.glm_cg(X, S, B, 0.1))


def test_callback_sees_every_iteration():
    H = _spd(15)
    seen = []
    res = cg(DenseOperator(H), torch.randn(15, dtype=torch.float64), tol=1e-10, check_every=1,
             callback=lambda it, x, rr: seen.append((it, x.shape, rr.shape)))
    assert [s[0] for s in seen] == list(range(1, res.iterations.item() + 1))
    assert seen[0][1:] == ((15, 1), (1,))


def test_cg_bad_inputs():
    op = DenseOperator(_spd(5))
    b = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="'tol'"):
        cg(op, b, tol=-1.0)
    with pytest.raises(ValueError, match="'atol'"):
        cg(op, b, atol=-1.0)
    with pytest.raises(ValueError, match="'maxiter'"):
        cg(op, b, maxiter=-1)
    with pytest.raises(TypeError, match="'maxiter'"):
        cg(op, b, maxiter=2.5)
    with pytest.raises(ValueError, match="'check_every'"):
        cg(op, b, check_every=0)
    with pytest.raises(ValueError, match="'B'"):
        cg(op, torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="'B'"):
        cg(op, torch.ones(5, 1, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="'B'"):
        cg(op, torch.ones(5, dtype=torch.float32))
    with pytest.raises(TypeError, match="'B'"):
        cg(op, torch.ones(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="'x0'"):
        cg(op, b, x0=torch.zeros(5, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="'x0'"):
        cg(op, b, x0=torch.zeros(5, dtype=torch.float32))
    with pytest.raises(ValueError, match="'precond'"):
        cg(op, b, precond=torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="'precond'"):
        cg(op, b, precond=-torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="'precond'"):
        cg(op, b, precond="ilu")
    with pytest.raises(TypeError, match="'precond'"):
        cg(op, b, precond=3)
    with pytest.raises(ValueError, match="diagonal"):
        cg(lambda V: V, b, precond="jacobi")
    with pytest.raises(TypeError, match="'A'"):
        cg(torch.eye(5), b)
    with pytest.raises(ValueError, match="'A'"):
        cg(lambda V: V[:-1], b)
    with pytest.raises(TypeError, match="'callback'"):
        cg(op, b, callback=1)


# ---------------------------------------------------------------- CG inverse operator


def test_cg_inverse_operator():
    H = _spd(12)
    inv = CGInverseOperator(DenseOperator(H), tol=1e-12, precond="jacobi")
    b = torch.randn(12, dtype=torch.float64)
    torch.testing.assert_close(inv @ b, torch.linalg.solve(H, b))
    assert inv.last_result is not None and bool(inv.last_result.converged.all())
    torch.testing.assert_close(inv.to_dense(), torch.linalg.inv(H), rtol=1e-8, atol=1e-8)
    assert inv.num_matvecs > 12
    with pytest.raises(TypeError, match="'cg_kwargs'"):
        CGInverseOperator(DenseOperator(H), rtol=1e-3)
    with pytest.raises(TypeError, match="'A'"):
        CGInverseOperator(H)


# ---------------------------------------------------------------- LiSSA


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(8,), (8, 3)])
def test_lissa_converges_to_damped_solve(device, shape):
    H = _spd(8, device=device, cond=20.0)  # eigenvalues in [1, 20]
    b = torch.randn(*shape, dtype=torch.float64, device=device)
    damping, scale = 0.01, 15.0  # eig(damping + H/scale) in (0.076, 1.35), inside (0, 2)
    res = lissa(DenseOperator(H), b, damping=damping, scale=scale, depth=600)
    eye = torch.eye(8, dtype=torch.float64, device=device)
    expected = torch.linalg.solve(H + damping * scale * eye, b)
    torch.testing.assert_close(res.solution, expected, rtol=1e-9, atol=1e-9)
    # The effective damping is damping * scale, not damping.
    assert (res.solution - torch.linalg.solve(H + damping * eye, b)).abs().max() > 1e-3
    K = 1 if len(shape) == 1 else shape[1]
    assert res.num_hvps == 600 * K
    assert res.history.shape == (1, 60) and res.steps[-1].item() == 600
    assert res.history[0, -1] < 1e-10 * res.history[0, 0]


def test_lissa_callable_and_repetitions():
    H = _spd(6, cond=5.0)
    b = torch.randn(6, dtype=torch.float64)
    calls = []

    def hvp(v):
        calls.append(v.shape)
        return H @ v

    res = lissa(hvp, b, scale=5.0, depth=300, repetitions=2, check_every=7)
    torch.testing.assert_close(res.solution, torch.linalg.solve(H, b))
    assert len(calls) == 600 and calls[0] == (6,)
    assert res.num_hvps == 600 and res.history.shape == (2, 43)


def test_lissa_batches_are_cycled():
    H = _spd(5, cond=4.0)
    b = torch.randn(5, dtype=torch.float64)
    order = []

    def hvp(v, batch):
        order.append(batch)
        return batch * H @ v  # batch Hessians 0.5 H and 1.5 H, mean H

    res = lissa(hvp, b, scale=10.0, depth=400, batches=[0.5, 1.5])
    assert order[:5] == [0.5, 1.5, 0.5, 1.5, 0.5] and len(order) == 400
    assert bool(torch.isfinite(res.solution).all())
    # the exact limit of this cycle: test_lissa_two_batch_cycle_reaches_the_closed_form_...
    with pytest.raises(ValueError, match="'batches'"):
        lissa(hvp, b, batches=[])


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_lissa_two_batch_cycle_reaches_the_closed_form_fixed_point(damping):
    # h_j = b + A_j h_{j-1}, A_j = (1 - damping) I - H_j / scale, H_j cycling H_1, H_2, ...
    # Two steps from an even step: h <- (b + A_2 b) + A_2 A_1 h, so after an even number of
    # steps h -> h_even = (I - A_2 A_1)^{-1} (I + A_2) b, and one step later
    # h_odd = b + A_1 h_even; the estimate is h / scale.
    d, scale = 6, 10.0
    H = _spd(d, cond=4.0)  # eigenvalues in [1, 4]
    b = torch.randn(d, 2, dtype=torch.float64)
    weights = (0.5, 1.5)
    eye = torch.eye(d, dtype=torch.float64)
    A1, A2 = ((1.0 - damping) * eye - w * H / scale for w in weights)
    h_even = torch.linalg.solve(eye - A2 @ A1, b + A2 @ b)
    h_odd = b + A1 @ h_even
    # contraction per pair: the spectral radius of A_2 A_1 is at most 0.95 * 0.85
    assert float(torch.linalg.eigvals(A2 @ A1).abs().max()) < 0.81

    def hvp(v, batch):
        return batch * H @ v

    for depth, h in ((400, h_even), (401, h_odd)):
        res = lissa(hvp, b, damping=damping, scale=scale, depth=depth, batches=list(weights))
        torch.testing.assert_close(res.solution, h / scale, rtol=1e-10, atol=1e-12)
    # the two limits differ from each other, and from the mean-Hessian solve, by far more
    mean_solve = torch.linalg.solve(H + damping * scale * eye, b)
    assert _rel_err(h_odd / scale, h_even / scale) > 1e-2
    assert _rel_err(h_even / scale, mean_solve) > 1e-2


def test_lissa_too_small_scale_diverges():
    H = _spd(8, cond=20.0)  # lambda_max = 20: needs scale > 10
    b = torch.randn(8, dtype=torch.float64)
    with pytest.raises(LissaDivergenceError, match="'scale'") as info:
        lissa(DenseOperator(H), b, scale=5.0, depth=2000)
    assert info.value.step < 2000
    with pytest.raises(LissaDivergenceError):
        lissa(lambda v: torch.full_like(v, float("inf")), b, depth=20)
    # Negative curvature beyond -damping*scale diverges as well.
    with pytest.raises(LissaDivergenceError):
        lissa(DenseOperator(-H), b, scale=50.0, damping=0.001, depth=3000)


def test_lissa_progress_bar(capsys):
    H = _spd(4, cond=2.0)
    res = lissa(DenseOperator(H), torch.ones(4, dtype=torch.float64), scale=4.0, depth=50,
                progress=True)
    assert "LiSSA" in capsys.readouterr().err
    assert res.num_hvps == 50


def test_lissa_bad_inputs():
    op = DenseOperator(_spd(4))
    b = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="'damping'"):
        lissa(op, b, damping=-0.1)
    with pytest.raises(ValueError, match="'scale'"):
        lissa(op, b, scale=0.0)
    with pytest.raises(TypeError, match="'scale'"):
        lissa(op, b, scale="10")
    with pytest.raises(ValueError, match="'depth'"):
        lissa(op, b, depth=0)
    with pytest.raises(ValueError, match="'repetitions'"):
        lissa(op, b, repetitions=0)
    with pytest.raises(ValueError, match="'b'"):
        lissa(op, torch.ones(4, 1, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="'b'"):
        lissa(op, torch.ones(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="'hvp'"):
        lissa(3, b)
    with pytest.raises(ValueError, match="'hvp'"):
        lissa(lambda v: v[:-1], b)
    with pytest.raises(TypeError, match="'hvp'"):
        lissa(op, b, batches=[1, 2])


# ---------------------------------------------------------------- Cholesky


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_solve(dtype):
    H = torch.stack([_spd(6, dtype) for _ in range(3)])
    B = torch.randn(3, 6, 2, dtype=dtype)
    b = torch.randn(3, 6, dtype=dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(cholesky_solve(H, B), torch.linalg.solve(H, B), **tol)
    torch.testing.assert_close(cholesky_solve(H, b), torch.linalg.solve(H, b), **tol)
    torch.testing.assert_close(cholesky_solve(H[0], B[0]), torch.linalg.solve(H[0], B[0]), **tol)
    torch.testing.assert_close(cholesky_solve(H[0], b[0]), torch.linalg.solve(H[0], b[0]), **tol)


def test_cholesky_solve_bad_inputs():
    H = _spd(4)
    bad = H.clone()
    bad[1, 1] = -5.0
    with pytest.raises(ValueError, match="'H'.*positive definite"):
        cholesky_solve(torch.stack([H, bad]), torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="'H'"):
        cholesky_solve(torch.ones(4, 3, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="'B'"):
        cholesky_solve(H, torch.ones(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="'B'"):
        cholesky_solve(H, torch.ones(4, dtype=torch.float32))


def test_cg_checks_every_product_of_a_costly_operator_by_default():
    # a network product is a pass over the data: the default check period is 1 there, so
    # no product runs after the last column stopped (the answer does not depend on it)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    op = NetworkHessianOperator(model, torch.nn.CrossEntropyLoss(reduction="sum"), x, y,
                                damping=0.5)
    assert op.costly_products and damped(op, 0.1).costly_products
    b = torch.randn(op.shape[0], dtype=torch.float64)
    by_default = cg(op, b, tol=1e-6)
    every_ten = cg(op, b, tol=1e-6, check_every=10)
    iterations = int(by_default.iterations.max())
    assert iterations % 10 != 0  # otherwise the two would coincide
    assert torch.equal(by_default.solution, every_ten.solution)
    assert by_default.num_matvecs < every_ten.num_matvecs
    assert not DenseOperator(torch.eye(3, dtype=torch.float64)).costly_products
