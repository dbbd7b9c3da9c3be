"""Dtype sweep of influence, certified, linalg: defects found and fixed (one test each).

Each test names the old behaviour in a ``# old:`` comment; results are compared with an
independent float64 computation, refusals with the exception type, the argument's name and
an untouched model.
"""

import numpy as np
import pytest
import torch
from torch import nn

from fastunlearn.certified import newton_fit, normalize_rows
from fastunlearn.influence import (
    fit_logistic,
    influence_update,
    iterative_label_repair,
    linear_influence_update,
    repair_labels,
    required_sigma,
    unlearn_features,
)
from fastunlearn.linalg import DenseOperator, lissa

pytestmark = pytest.mark.usefixtures("one_thread")

N, D, K = 16, 3, 3
CG = dict(order=2, solver="cg", damping=0.1, curvature="ggn", check_loss=False)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (N,), generator=g)
    return X, y


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 4), nn.Tanh(), nn.Linear(4, K)).to(dtype)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8])
def test_repair_labels_accepts_narrow_integer_labels(dtype):
    # old: ValueError "'loss_fn' cannot be evaluated ... expected target dtype to be Long or
    # Byte, but got Int" (the default cross-entropy refused int32/int16/int8 labels)
    X, y = _data()
    ref, model = _model(), _model()
    repair_labels(ref, X, y, [0, 1], [2, 0], **CG)
    result = repair_labels(model, X, y.to(dtype), [0, 1], [2, 0], **CG)
    assert result.applied
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_influence_update_and_iterative_repair_accept_int32_targets():
    # old: ValueError wrapping "expected target dtype to be Long or Byte, but got Int"
    X, y = _data()
    ref, model = _model(), _model()
    new = torch.tensor([2, 0])
    influence_update(ref, X[:2], y[:2], new_targets=new, train_data=(X, y), **CG)
    influence_update(model, X[:2], y[:2].int(), new_targets=new.int(),
                     train_data=(X, y.int()), **CG)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    out = iterative_label_repair(_model(), X, y.to(torch.int16), steps=1, batch_size=4, **CG)
    assert out is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["cg", "lissa", "direct"])
def test_second_order_update_refuses_half_precision_model(dtype, solver):
    # old: TypeError "'B' must be float32 or float64" (an internal argument of cg), a raw
    # KeyError: torch.float16 from LiSSA, or "'H' must be float32 or float64" (direct)
    X, y = _data()
    model = _model(dtype)
    before = _params(model)
    kwargs = dict(order=2, solver=solver, check_loss=False)
    with pytest.raises(TypeError, match="'model'.*float32 or float64.*" + str(dtype)):
        repair_labels(model, X.to(dtype), y, [0, 1], [2, 0], **kwargs)
    with pytest.raises(TypeError, match="'model'"):
        unlearn_features(model, X.to(dtype), y, [1], **kwargs)
    with pytest.raises(TypeError, match="'model'"):
        influence_update(model, X[:2].to(dtype), y[:2], new_targets=torch.tensor([2, 0]),
                         train_data=(X.to(dtype), y), **kwargs)
    for a, b in zip(model.parameters(), before, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lissa_refuses_half_precision_right_hand_side(dtype):
    # old: KeyError: torch.float16 (from the column scaling's exponent table)
    H = torch.eye(3, dtype=dtype) * 2
    with pytest.raises(TypeError, match="'b' must be float32 or float64"):
        lissa(DenseOperator(H), torch.ones(3, dtype=dtype), scale=10.0, depth=5)
    with pytest.raises(TypeError, match="'b' must be float32 or float64"):
        lissa(lambda v: 2 * v, torch.ones(3, dtype=dtype), scale=10.0, depth=5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_normalize_rows_accepts_integer_and_bool_features(dtype):
    # old: TypeError "torch.finfo() requires a floating point input type" from inside torch
    X = torch.tensor([[3, 4, 0], [0, 0, 0], [1, 1, 1]]).to(dtype)
    out = normalize_rows(X)
    ref = X.to(torch.float64)
    ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(1e-300)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-15, atol=0)
    assert X.dtype == dtype  # the caller's tensor is untouched


def test_newton_fit_refuses_mixed_dtypes_by_name():
    # old: RuntimeError "expected m1 and m2 to have the same dtype, but got: float != double"
    # (float32 X, float64 Y/A/b) and "glm_hessian: argument 'X' must be float32 or float64"
    X, y = _data()
    Y = torch.where(y[:, None] > 0, 1.0, -1.0).double()
    A, b = torch.ones_like(Y), torch.zeros(D, 1, dtype=torch.float64)
    with pytest.raises(TypeError, match="argument 'Y' must have the dtype of 'X'"):
        newton_fit(X.float(), Y, A, b, 0.1)
    with pytest.raises(TypeError, match="argument 'b' must have the dtype of 'X'"):
        newton_fit(X, Y, A, b.float(), 0.1)
    with pytest.raises(TypeError, match="argument 'X' must be a float32 or float64"):
        newton_fit(X.half(), Y.half(), A.half(), b.half(), 0.1)
    assert newton_fit(X, Y, A, b, 0.1).converged  # float64 as before


@pytest.mark.parametrize("kind", [np.float32, np.float16, np.int32])
def test_linear_influence_accepts_numpy_scalars(kind):
    # old: required_sigma(np.float32(0.5)) -> ValueError "'residual' must be finite and >= 0,
    # got np.float32(0.5)"; fit_logistic(lam=np.float32(0.1)) -> "'lam' must be finite and
    # > 0"; linear_influence_update(tau=np.float32(...)) -> TypeError "must be a real number"
    value = kind(2)
    assert required_sigma(value, kind(1)) == required_sigma(2.0, 1.0)
    X, y = _data()
    y = (y > 0).long()
    w, b = fit_logistic(X, y, value)
    w_ref, b_ref = fit_logistic(X, y, 2.0)
    assert torch.equal(w, w_ref) and torch.equal(b, b_ref)
    new_y = 1 - y[:2]
    got = linear_influence_update(X, y, w, [0, 1], new_y=new_y, lam=value, order=1,
                                  tau=kind(1), gamma=kind(0))
    ref = linear_influence_update(X, y, w, [0, 1], new_y=new_y, lam=2.0, order=1, tau=1.0,
                                  gamma=0.0)
    assert torch.equal(got.weights, ref.weights)
    assert got.residual == ref.residual



@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_predict_names_inputs_of_another_dtype(dtype):
    # old: torch's "mat1 and mat2 must have the same dtype", naming neither argument
    from fastunlearn.influence import predict

    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=rf"'inputs' is {dtype} but the model's parameters "
                                        r"are torch.float32"):
        predict(model, torch.randn(4, 3).to(dtype))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training  # eval mode restored
    # the same inputs in the model's dtype run
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(predict(model.double(), x), model(x).argmax(-1))
