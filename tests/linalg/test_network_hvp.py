import pytest
import torch
from helpers import DEVICES
from torch import nn
from torch.func import functional_call

import fastunlearn.linalg.network as network_module
from fastunlearn.linalg import (
    NetworkHessianOperator,
    cg,
    damped,
    dense_hessian,
    flatten_params,
    params_vector,
    selected_parameter_names,
    unflatten_like,
)

LAST_LAYER = ["2.weight", "2.bias"]


def _problem(device="cpu", dtype=torch.float64, n=12):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(device, dtype)
    x = torch.randn(n, 4, dtype=dtype, device=device)
    y = torch.randint(0, 3, (n,), device=device)
    return model, nn.CrossEntropyLoss(reduction="sum"), x, y


def _reference_hessian(model, loss_fn, x, y, names):
    """Independent oracle: torch.autograd.functional.hessian over a hand-split vector."""
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]

    def f(flat):
        state = {k: v.detach() for k, v in named.items()}
        for name, chunk, shape in zip(names, flat.split(sizes), shapes, strict=True):
            state[name] = chunk.reshape(shape)
        return loss_fn(functional_call(model, state, (x,)), y)

    flat = torch.cat([named[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("params", [None, LAST_LAYER])
def test_hvp_matches_dense_hessian(device, mode, batch_size, params):
    model, loss_fn, x, y = _problem(device)
    names = [n for n, _ in model.named_parameters()] if params is None else params
    H = _reference_hessian(model, loss_fn, x, y, names)
    op = NetworkHessianOperator(model, loss_fn, x, y, params=params, mode=mode,
                                batch_size=batch_size)
    P = H.shape[0]
    assert op.shape == (P, P) and op.param_names == names
    V = torch.randn(P, 3, dtype=torch.float64, device=device)
    torch.testing.assert_close(op @ V, H @ V)
    v = torch.randn(P, dtype=torch.float64, device=device)
    torch.testing.assert_close(op @ v, H @ v)
    assert op.num_hvps == 4
    torch.testing.assert_close(op.to_dense(), H)
    torch.testing.assert_close(dense_hessian(model, loss_fn, x, y, params=params), H)


def test_float32_hvp():
    model, loss_fn, x, y = _problem(dtype=torch.float32)
    H = _reference_hessian(model.double(), loss_fn, x.double(), y,
                           [n for n, _ in model.named_parameters()])
    model.float()
    op = NetworkHessianOperator(model, loss_fn, x, y)
    V = torch.randn(op.shape[0], 2)
    assert op.dtype == torch.float32
    torch.testing.assert_close((op @ V).double(), H @ V.double(), rtol=1e-4, atol=1e-4)


def test_subset_is_block_of_full_hessian_in_model_order():
    model, loss_fn, x, y = _problem()
    full = dense_hessian(model, loss_fn, x, y)
    # Selection order does not matter: flattening follows named_parameters().
    sub = dense_hessian(model, loss_fn, x, y, params=["2.bias", "0.weight"])
    idx = torch.cat([torch.arange(0, 20), torch.arange(full.shape[0] - 3, full.shape[0])])
    torch.testing.assert_close(sub, full[idx][:, idx])
    # Parameters given as objects select the same thing as their names.
    by_obj = NetworkHessianOperator(model, loss_fn, x, y, params=[model[2].weight, model[2].bias])
    by_name = NetworkHessianOperator(model, loss_fn, x, y, params=LAST_LAYER)
    V = torch.randn(by_obj.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(by_obj @ V, by_name @ V)


def test_frozen_parameters_are_excluded_and_held_fixed():
    model, loss_fn, x, y = _problem()
    model[0].weight.requires_grad_(False)
    assert selected_parameter_names(model) == ["0.bias", "2.weight", "2.bias"]
    op = NetworkHessianOperator(model, loss_fn, x, y)
    H = _reference_hessian(model, loss_fn, x, y, ["0.bias", "2.weight", "2.bias"])
    torch.testing.assert_close(op.to_dense(), H)


def test_explicitly_selected_frozen_parameter_raises():
    model, loss_fn, x, y = _problem()
    model[0].weight.requires_grad_(False)
    for params in (["0.weight"], [model[0].weight, model[2].bias], "0.weight"):
        with pytest.raises(ValueError, match="'params'.*'0.weight'.*requires_grad=False"):
            selected_parameter_names(model, params)
        with pytest.raises(ValueError, match="requires_grad=False"):
            NetworkHessianOperator(model, loss_fn, x, y, params=params)
    assert selected_parameter_names(model, ["0.bias", "2.weight"]) == ["0.bias", "2.weight"]


def test_damping_and_cg_solve_damped_system():
    model, loss_fn, x, y = _problem()
    H = dense_hessian(model, loss_fn, x, y)
    lam = max(0.0, -torch.linalg.eigvalsh(H).min().item()) + 0.5  # make H + lam I SPD
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    B = torch.randn(H.shape[0], 2, dtype=torch.float64)
    for op in (NetworkHessianOperator(model, loss_fn, x, y, damping=lam),
               damped(NetworkHessianOperator(model, loss_fn, x, y, mode="rev-rev"), lam)):
        torch.testing.assert_close(op.to_dense(), H + lam * eye)
        res = cg(op, B, tol=1e-10)
        assert bool(res.converged.all())
        residual = torch.linalg.vector_norm(B - (H + lam * eye) @ res.solution, dim=0)
        assert bool((residual <= 1e-8 * torch.linalg.vector_norm(B, dim=0)).all())


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_operator_follows_in_place_parameter_updates(mode):
    model, loss_fn, x, y = _problem()
    op = NetworkHessianOperator(model, loss_fn, x, y, mode=mode)
    before = op.to_dense()
    # rev-rev on one batch of the stored data keeps the gradient's graph between calls
    assert (op._vjp_cache is not None) == (mode == "rev-rev")
    torch.testing.assert_close(op.to_dense(), before, rtol=0, atol=0)
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    after = op.to_dense()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, dense_hessian(model, loss_fn, x, y))
    # other data, or several batches: nothing is kept
    op.matmat_on(torch.ones(op.shape[0], 1, dtype=torch.float64), x[:4], y[:4])
    assert op._vjp_cache is None


def test_loop_fallback_when_vmap_fails(monkeypatch):
    model, loss_fn, x, y = _problem()
    H = dense_hessian(model, loss_fn, x, y)

    def broken_vmap(*args, **kwargs):
        raise RuntimeError("vmap: not supported by this model")

    monkeypatch.setattr(network_module, "vmap", broken_vmap)
    for mode in ("fwd-rev", "rev-rev"):
        op = NetworkHessianOperator(model, loss_fn, x, y, mode=mode)
        V = torch.randn(H.shape[0], 3, dtype=torch.float64)
        torch.testing.assert_close(op @ V, H @ V)
        assert not op.vectorized


def test_matmat_on_other_data_and_empty_block():
    model, loss_fn, x, y = _problem()
    op = NetworkHessianOperator(model, loss_fn, x, y, batch_size=4)
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(op.matmat_on(V, x[:6], y[:6]),
                               dense_hessian(model, loss_fn, x[:6], y[:6]) @ V)
    empty = op @ torch.zeros(op.shape[0], 0, dtype=torch.float64)
    assert empty.shape == (op.shape[0], 0)


def test_param_vector_helpers():
    model, _, _, _ = _problem()
    vec = params_vector(model, LAST_LAYER)
    assert vec.shape == (18,)
    torch.testing.assert_close(vec, torch.cat([model[2].weight.reshape(-1), model[2].bias]))
    vec[0] = 123.0  # a copy: the model is untouched
    assert model[2].weight[0, 0].item() != 123.0
    like = [model[2].weight, model[2].bias]
    parts = unflatten_like(flatten_params(like), like)
    assert [p.shape for p in parts] == [(3, 5), (3,)]
    torch.testing.assert_close(parts[0], model[2].weight.detach())
    with pytest.raises(ValueError, match="'vector'"):
        unflatten_like(torch.zeros(17), like)
    with pytest.raises(ValueError, match="'tensors'"):
        flatten_params([])


def test_bad_inputs():
    model, loss_fn, x, y = _problem()
    with pytest.raises(ValueError, match="'params'.*'9.weight'"):
        NetworkHessianOperator(model, loss_fn, x, y, params=["9.weight"])
    with pytest.raises(ValueError, match="'params'"):
        NetworkHessianOperator(model, loss_fn, x, y, params=[nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="'params'"):
        NetworkHessianOperator(model, loss_fn, x, y, params=[])
    with pytest.raises(TypeError, match="'params'"):
        NetworkHessianOperator(model, loss_fn, x, y, params=[3])
    with pytest.raises(ValueError, match="'mode'"):
        NetworkHessianOperator(model, loss_fn, x, y, mode="fwd-fwd")
    with pytest.raises(ValueError, match="'damping'"):
        NetworkHessianOperator(model, loss_fn, x, y, damping=-1.0)
    with pytest.raises(ValueError, match="'batch_size'"):
        NetworkHessianOperator(model, loss_fn, x, y, batch_size=0)
    with pytest.raises(TypeError, match="'batch_size'"):
        NetworkHessianOperator(model, loss_fn, x, y, batch_size=2.0)
    with pytest.raises(ValueError, match="'inputs'"):
        NetworkHessianOperator(model, loss_fn, x, y[:-1])
    with pytest.raises(TypeError, match="'inputs'"):
        NetworkHessianOperator(model, loss_fn, x.tolist(), y)
    with pytest.raises(TypeError, match="'model'"):
        NetworkHessianOperator(lambda t: t, loss_fn, x, y)
    with pytest.raises(TypeError, match="'loss_fn'"):
        NetworkHessianOperator(model, "ce", x, y)
    op = NetworkHessianOperator(model, loss_fn, x, y)
    with pytest.raises(ValueError, match="'V'"):
        op.matmat(torch.zeros(op.shape[0] + 1, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="'V'"):
        op.matmat(torch.zeros(op.shape[0], 1, dtype=torch.float32))
    with pytest.raises(ValueError, match="'params'"):
        dense_hessian(model, loss_fn, x, y, params=["nope"])
