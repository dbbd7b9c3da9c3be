import pytest
import torch
from helpers import DEVICES, DTYPES, tolerances

from fastunlearn.linalg import (
    DenseOperator,
    GLMHessianOperator,
    LinearOperator,
    ScaledIdentityPlus,
    damped,
)
from fastunlearn.ops import reference


def _glm_problem(n, d, K, dtype, device):
    X = torch.randn(n, d, dtype=dtype, device=device)
    S = torch.rand(n, K, dtype=dtype, device=device)
    S[::3] = 0.0  # removed rows carry weight zero
    return X, S


def _dense_glm(X, S_col, lam):
    X64, s = X.double(), S_col.double()
    return X64.T @ (s[:, None] * X64) + lam * torch.eye(X.shape[1], dtype=torch.float64,
                                                          device=X.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_glm_operator_single_hessian_matches_dense(device, dtype):
    X, S = _glm_problem(30, 7, 1, dtype, device)
    op = GLMHessianOperator(X, S[:, 0], lam=0.3)
    H = _dense_glm(X, S[:, 0], 0.3)
    V = torch.randn(7, 4, dtype=dtype, device=device)
    torch.testing.assert_close((op @ V).double(), H @ V.double(), **tolerances(dtype))
    v = torch.randn(7, dtype=dtype, device=device)
    out = op @ v
    assert out.shape == (7,)
    torch.testing.assert_close(out.double(), H @ v.double(), **tolerances(dtype))
    torch.testing.assert_close(op.to_dense().double(), H, **tolerances(dtype))
    torch.testing.assert_close(op.diagonal().double(), H.diagonal(), **tolerances(dtype))
    assert op.shape == (7, 7) and op.dtype == dtype


@pytest.mark.parametrize("device", DEVICES)
def test_glm_operator_one_hessian_per_column(device):
    X, S = _glm_problem(25, 5, 3, torch.float64, device)
    op = GLMHessianOperator(X, S, lam=0.1)
    V = torch.randn(5, 3, dtype=torch.float64, device=device)
    expected = torch.stack([_dense_glm(X, S[:, k], 0.1) @ V[:, k] for k in range(3)], dim=1)
    torch.testing.assert_close(op @ V, expected)
    torch.testing.assert_close(op @ V, reference.glm_hvp(X, S, V, 0.1))
    dense = op.to_dense()
    assert dense.shape == (3, 5, 5)
    torch.testing.assert_close(dense, reference.glm_hessian(X, S, 0.1))
    diag = op.diagonal()
    assert diag.shape == (5, 3)
    torch.testing.assert_close(diag, torch.diagonal(dense, dim1=1, dim2=2).T)
    with pytest.raises(ValueError, match="'V'"):
        op @ torch.randn(5, 2, dtype=torch.float64, device=device)


def test_glm_operator_noncontiguous_inputs():
    X, S = _glm_problem(20, 6, 1, torch.float64, "cpu")
    Xt = X.T.contiguous().T  # same values, transposed strides
    V = torch.randn(3, 6, dtype=torch.float64).T
    torch.testing.assert_close(GLMHessianOperator(Xt, S, 0.5) @ V,
                               _dense_glm(X, S[:, 0], 0.5) @ V)


def test_dense_operator():
    H = torch.randn(6, 6, dtype=torch.float64)
    op = DenseOperator(H)
    V = torch.randn(6, 2, dtype=torch.float64)
    torch.testing.assert_close(op @ V, H @ V)
    torch.testing.assert_close(op.diagonal(), H.diagonal())
    assert op.to_dense() is H
    # the generic to_dense of the base class, through matmat
    torch.testing.assert_close(LinearOperator.to_dense(op), H)


def test_damped_adds_identity():
    H = torch.randn(5, 5, dtype=torch.float64)
    op = damped(DenseOperator(H), 0.7)
    assert isinstance(op, ScaledIdentityPlus)
    V = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(op @ V, (H + 0.7 * torch.eye(5, dtype=torch.float64)) @ V)
    torch.testing.assert_close(op.diagonal(), H.diagonal() + 0.7)
    base = DenseOperator(H)
    assert damped(base, 0.0) is base


def test_damped_glm_folds_into_lam():
    X, S = _glm_problem(20, 4, 1, torch.float64, "cpu")
    op = damped(GLMHessianOperator(X, S[:, 0], 0.2), 0.5)
    assert isinstance(op, GLMHessianOperator) and op.lam == pytest.approx(0.7)
    torch.testing.assert_close(op.to_dense(), _dense_glm(X, S[:, 0], 0.7))


def test_abstract_matmat():
    class Bare(LinearOperator):
        shape = (2, 2)
        dtype = torch.float64
        device = torch.device("cpu")

    with pytest.raises(NotImplementedError):
        Bare() @ torch.ones(2, dtype=torch.float64)


def test_bad_inputs():
    X, S = _glm_problem(10, 3, 2, torch.float64, "cpu")
    with pytest.raises(ValueError, match="'X'"):
        GLMHessianOperator(X[0], S, 0.0)
    with pytest.raises(ValueError, match="'S'"):
        GLMHessianOperator(X, S[:5], 0.0)
    with pytest.raises(TypeError, match="'S'"):
        GLMHessianOperator(X, S.float(), 0.0)
    with pytest.raises(TypeError, match="'X'"):
        GLMHessianOperator(X.long(), S, 0.0)
    with pytest.raises(ValueError, match="'lam'"):
        GLMHessianOperator(X, S, -1.0)
    with pytest.raises(ValueError, match="'lam'"):
        GLMHessianOperator(X, S, float("nan"))
    with pytest.raises(ValueError, match="'H'"):
        DenseOperator(torch.randn(3, 4, dtype=torch.float64))
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="'V'"):
        op.matmat(torch.ones(4, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="'V'"):
        op.matmat(torch.ones(3, 1, dtype=torch.float32))
    with pytest.raises(ValueError, match="'v'"):
        op @ torch.ones(3, 1, 1, dtype=torch.float64)
    with pytest.raises(TypeError, match="'v'"):
        op @ [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="'damping'"):
        damped(op, -0.1)
    with pytest.raises(TypeError, match="'op'"):
        damped(torch.eye(3), 0.1)
