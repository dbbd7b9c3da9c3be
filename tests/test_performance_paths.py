"""Code paths introduced by performance fixes: results must match the straightforward forms."""

import numpy as np
import pytest
import torch
from torch import nn

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.certified.math import _normalize_rows, normalize_rows
from fastunlearn.influence import influence_update
from fastunlearn.linalg import cg
from fastunlearn.metrics._checks import float_tensor

# ---- metrics: the finiteness check of every input ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 7, -1])
def test_float_tensor_rejects_any_non_finite_entry(dtype, bad, where):
    t = torch.randn(4, 3, 5).to(dtype).transpose(0, 2)  # a non-contiguous view
    flat = t.reshape(-1).clone()
    flat[where] = bad
    with pytest.raises(ValueError, match="'x' has non-finite entries"):
        float_tensor(flat.reshape(5, 3, 4), "x")
    assert float_tensor(t, "x") is t  # finite: accepted as is


def test_float_tensor_finite_extremes_and_empty():
    big = torch.tensor([torch.finfo(torch.float64).max, -torch.finfo(torch.float64).max],
                       dtype=torch.float64)
    assert torch.equal(float_tensor(big, "x"), big)
    assert float_tensor(torch.empty(0, 3), "x").shape == (0, 3)


# ---- certified: row normalisation and prediction features -----------------------------------


def _old_normalize(X):
    tiny = torch.finfo(X.dtype).tiny
    scaled = X / X.abs().amax(dim=1, keepdim=True).clamp_min(tiny)
    return scaled / torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp_min(tiny)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_rows_bitwise_as_abs_amax_form(dtype):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 13, generator=gen, dtype=torch.float64).to(dtype)
    X[3] = 0.0
    X[4] = -0.0
    X[5, :] = -1e-200 if dtype == torch.float64 else -1e-30
    X[6, 2] = 1e200 if dtype == torch.float64 else 1e30
    X[7] = -X[7].abs()  # largest magnitude negative
    before = X.clone()
    want = _old_normalize(X)
    got = normalize_rows(X)
    assert torch.equal(got, want)
    assert torch.equal(X, before)  # normalize_rows leaves its input alone
    inplace = _normalize_rows(X, inplace=True)
    assert inplace.data_ptr() == X.data_ptr() and torch.equal(inplace, want)


def test_predict_features_do_not_touch_caller_arrays():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = rng.integers(0, 3, 120)
    model = CertifiedLogisticRegression(lam=1e-2, sigma=0.1).fit(X, y)
    W = model._W
    expected = (normalize_rows(torch.from_numpy(X.copy())) @ W).numpy()
    inputs = {
        "float64": X.copy(),
        "float32": X.astype(np.float32),
        "fortran": np.asfortranarray(X),
        "strided": np.repeat(X, 2, axis=0)[::2],
        "readonly": X.copy(),
        "tensor64": torch.from_numpy(X.copy()),
        "tensor32": torch.from_numpy(X.astype(np.float32)),
        "list": X.tolist(),
    }
    inputs["readonly"].flags.writeable = False
    for name, value in inputs.items():
        snapshot = value.clone() if isinstance(value, torch.Tensor) else np.array(value)
        Z = model.decision_function(value)
        if name.endswith("32"):
            ref = (normalize_rows(torch.from_numpy(X.astype(np.float32).astype(np.float64)))
                   @ W).numpy()
        else:
            ref = expected
        np.testing.assert_array_equal(Z, ref, err_msg=name)
        after = value if isinstance(value, torch.Tensor) else np.array(value)
        if isinstance(value, torch.Tensor):
            assert torch.equal(after, snapshot), name
        else:
            np.testing.assert_array_equal(after, snapshot, err_msg=name)
    # the same model without normalisation: features are the caller's values, still copied
    raw = CertifiedLogisticRegression(lam=1e-2, sigma=0.1, normalize=False).fit(X, y)
    X32 = X.astype(np.float32)
    feats = raw._features(X32)
    feats.mul_(2.0)  # writing to the returned features must not reach the caller's array
    np.testing.assert_array_equal(X32, X.astype(np.float32))


# ---- influence: CG stops right after the product that ends it --------------------------------


_COEF = [1.0, 2.0, 3.0, -1.5]


class _Quadratic(nn.Module):
    """A model whose summed loss has an indefinite Hessian (CG breaks down early)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64))

    def forward(self, x):
        return x * self.w


def _indefinite_loss(out, target):
    # diag Hessian with entries +1, +2, +3, -1.5 per row
    coef = torch.tensor(_COEF, dtype=out.dtype)
    return (0.5 * coef * (out - target) ** 2).sum()


def test_influence_cg_runs_no_product_after_breakdown():
    torch.manual_seed(0)
    n = 8
    X = torch.ones(n, 4, dtype=torch.float64)
    y = torch.zeros(n, 4, dtype=torch.float64)
    model = _Quadratic()
    new_y = y.clone()
    new_y[:2] = 1.0
    res = influence_update(model, X[:2], y[:2], new_targets=new_y[:2], train_data=(X, new_y),
                           loss_fn=_indefinite_loss, restarts=0, check_loss=False, apply=False)
    assert res.reason is not None and "breakdown" in res.reason
    # every product counted is needed: one per completed CG iteration, the one that broke
    # down and the final true residual (a host check every 10 products ran up to 9 more)
    assert res.solver_iterations >= 1
    assert res.num_hvps == (res.solver_iterations + 2) * n
    # the step is the one of a CG with the default host-check period
    H = torch.diag(torch.tensor(_COEF, dtype=torch.float64)) * n
    G = torch.autograd.grad(
        _indefinite_loss(model(X[:2]), new_y[:2]) - _indefinite_loss(model(X[:2]), y[:2]),
        model.w)[0]
    want = cg(lambda V: H @ V, G.detach(), tol=1e-6, maxiter=40)
    assert torch.equal(res.step, want.solution)
