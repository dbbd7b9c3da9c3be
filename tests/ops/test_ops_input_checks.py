"""Bad input to the GLM / CG / clipping ops is refused with an error naming the argument.

Each case here was accepted before (a silent wrong answer) or failed deep inside torch (a
RuntimeError naming nothing the caller passed).
"""

import math

import numpy as np
import pytest
import torch

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.ops import cg_update_, glm_cg, jacobi_inverse_diagonal, reference
from fastunlearn.ops.per_sample import clip_weights

F64 = torch.float64


def problem(n=40, d=5, K=2, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=F64)
    S = 0.25 * torch.rand(n, K, generator=gen, dtype=F64)
    B = torch.randn(d, K, generator=gen, dtype=F64)
    return X.to(dtype), S.to(dtype), B.to(dtype)


# ---- glm_cg: a preconditioner must be one --------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_glm_cg_refuses_an_inverse_diagonal_that_is_no_preconditioner(bad):
    # a zero inverse diagonal made CG stop at once and return zeros, 0 iterations, no error
    X, S, B = problem()
    precond = jacobi_inverse_diagonal(X, S, 0.1)
    precond[2, 1] = bad
    with pytest.raises(ValueError, match=r"'precond' \(Jacobi inverse diagonal\) must be finite"):
        glm_cg(X, S, B, 0.1, precond=precond)
    with pytest.raises(ValueError, match="'precond'"):  # the raw op checks too
        torch.ops.fastunlearn.glm_cg.default(X, S, B, 0.1, None, precond, 1e-10, 50)


@pytest.mark.parametrize("where", ["diagonal zero", "diagonal negative", "lower nan"])
def test_glm_cg_refuses_cholesky_factors_that_are_not_factors(where):
    X, S, B = problem()
    H = reference.glm_hessian(X, S, 0.1)
    L = torch.linalg.cholesky(H)
    if where == "diagonal zero":
        L[1, 3, 3] = 0.0
    elif where == "diagonal negative":
        L[0, 0, 0] = -L[0, 0, 0]
    else:
        L[1, 4, 2] = math.nan
    with pytest.raises(ValueError, match=r"'precond' \(lower Cholesky factors\) must be finite"):
        glm_cg(X, S, B, 0.1, precond=L)


def test_glm_cg_takes_factors_whose_unread_upper_triangle_holds_anything():
    X, S, B = problem()
    H = reference.glm_hessian(X, S, 0.1)
    L = torch.linalg.cholesky(H)
    L[:, 0, 3] = math.nan  # above the diagonal: never read by the triangular solves
    x, iterations, _ = glm_cg(X, S, B, 0.1, precond=L, tol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(H, B.T.unsqueeze(-1)).squeeze(-1).T)
    assert int(iterations.max()) <= 2


def test_a_positive_inverse_diagonal_is_still_taken():
    X, S, B = problem()
    precond = jacobi_inverse_diagonal(X, S, 0.1)
    x, _, _ = glm_cg(X, S, B, 0.1, precond=precond, tol=1e-12)
    H = reference.glm_hessian(X, S, 0.1)
    torch.testing.assert_close(x, torch.linalg.solve(H, B.T.unsqueeze(-1)).squeeze(-1).T)


# ---- jacobi_inverse_diagonal: dtypes checked before any arithmetic -------------------------


@pytest.mark.parametrize("precond_jacobi", [False, True])
def test_jacobi_refuses_integer_and_mixed_dtypes_by_name(precond_jacobi):
    X, S, B = problem()

    def call(X, S):
        if precond_jacobi:
            return glm_cg(X, S, B, 0.1, precond="jacobi")
        return jacobi_inverse_diagonal(X, S, 0.1)

    with pytest.raises(TypeError, match="argument 'X' must be float32 or float64"):
        call(X.long(), S)
    with pytest.raises(TypeError, match=r"'S' \(torch.float32\) and 'X' \(torch.float64\)"):
        call(X, S.float())


def test_jacobi_gives_one_where_the_inverse_overflows():
    # a positive diagonal below float32's smallest normal number: its inverse is inf
    X = torch.ones(3, 2)
    S = torch.full((3, 1), 1e-39)
    S[:, 0] = torch.tensor([1e-39, 0.0, 0.0])
    inverse = jacobi_inverse_diagonal(X, S, 0.0)
    assert torch.isfinite(inverse).all() and (inverse > 0).all()
    assert torch.equal(inverse, torch.ones_like(inverse))


# ---- cg_update_: arguments written in place --------------------------------------------------


def cg_state(d=4, K=3):
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(d, K, dtype=F64)
    r = torch.randn(d, K, generator=gen, dtype=F64)
    p = r.clone()
    Ap = 2.0 * p
    rz = (r * r).sum(0)
    rr = rz.clone()
    active = torch.ones(K, dtype=torch.bool)
    iterations = torch.zeros(K, dtype=torch.long)
    threshold_sq = torch.zeros(K, dtype=F64)
    return dict(x=x, r=r, p=p, Ap=Ap, inv_diag=None, rz=rz, rr=rr, active=active,
                iterations=iterations, threshold_sq=threshold_sq)


@pytest.mark.parametrize("name", ["x", "rz", "rr", "active", "iterations"])
def test_cg_update_refuses_an_expanded_argument_written_in_place(name):
    state = cg_state()
    expanded = state[name][:1].expand_as(state[name]) if state[name].dim() == 1 else \
        state[name][:, :1].expand_as(state[name])
    assert expanded.stride(-1) == 0
    state[name] = expanded
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=f"argument '{name}' \\(written in place\\) has elements"):
        cg_update_(**state)
    for key, value in before.items():
        assert torch.equal(state[key], value), key  # nothing written


@pytest.mark.parametrize("name", ["x", "Ap", "rz", "threshold_sq", "inv_diag"])
@pytest.mark.parametrize("bad", [1.0, np.ones(3), [0.0]])
def test_cg_update_refuses_a_non_tensor_by_name(name, bad):
    state = cg_state()
    state[name] = bad
    with pytest.raises(TypeError, match=f"argument '{name}' must be a torch.Tensor"):
        cg_update_(**state)


# ---- clip_weights: max_norm is a real number -------------------------------------------------


@pytest.mark.parametrize("bad", [True, "2", torch.tensor(2.0), None, np.bool_(True)])
def test_clip_weights_refuses_a_max_norm_that_is_not_a_number(bad):
    with pytest.raises(TypeError, match="clip_weights: argument 'max_norm' must be a real number"):
        clip_weights(torch.ones(3), bad)


@pytest.mark.parametrize("bad", [10**400, -1, 0, math.inf, math.nan])
def test_clip_weights_refuses_a_max_norm_out_of_range(bad):
    with pytest.raises(ValueError, match="clip_weights: argument 'max_norm' must be finite"):
        clip_weights(torch.ones(3), bad)


@pytest.mark.parametrize("max_norm", [2, 2.0, np.float32(2.0), np.int64(2)])
def test_clip_weights_takes_python_and_numpy_numbers(max_norm):
    sq = torch.tensor([0.0, 1.0, 16.0])
    want = torch.tensor([1.0, 1.0, 2.0 / (4.0 + 1e-6)])
    torch.testing.assert_close(clip_weights(sq, max_norm), want)
