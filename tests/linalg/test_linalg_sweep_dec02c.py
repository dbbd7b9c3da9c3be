"""Regression tests of the dec02c linalg/influence sweep: models with structured outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastunlearn.influence import GGNOperator, influence_update
from fastunlearn.influence.gradients import check_sum_reduction


class _Net(nn.Module):
    """A small float64 network whose outputs are a dict, a tuple or a plain tensor."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 3)
        self.register_buffer("shift", torch.tensor(0.1))

    def forward(self, x: Tensor) -> object:
        logits = self.l2(torch.tanh(self.l1(x) + self.shift))
        if self.kind == "dict":
            return {"logits": logits}
        if self.kind == "tuple":
            return logits, x.sum()  # an output the parameters do not reach
        return logits


def _logits(out: object) -> Tensor:
    if isinstance(out, dict):
        return out["logits"]
    return out[0] if isinstance(out, tuple) else out


def _loss(out: object, y: Tensor) -> Tensor:
    return F.cross_entropy(_logits(out), y, reduction="sum")


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    return X, y


def _flat_loss(model: _Net, X: Tensor, y: Tensor):
    """Loss of the plain (tensor-output) network as a function of its flat parameters."""
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(flat: Tensor) -> Tensor:
        w1, b1, w2, b2 = (c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True))
        h = torch.tanh(F.linear(X, w1, b1) + model.shift)
        return F.cross_entropy(F.linear(h, w2, b2), y, reduction="sum")

    return f


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("solver", ["cg", "direct"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_influence_update_takes_structured_outputs(kind: str, solver: str, curvature: str) -> None:
    # check_sum_reduction concatenated the outputs (torch.cat of a dict: TypeError), and the
    # GGN's kept graph took zeros_like of them: a model returning a dict or a tuple failed
    torch.manual_seed(0)
    model = _Net(kind).double()
    X, y = _data()
    y_new = y.clone()
    y_new[:2] = (y[:2] + 1) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    damping = 20.0  # makes H + damping I positive definite
    result = influence_update(
        model,
        X[:2],
        y[:2],
        None,
        y_new[:2],
        train_data=(X, y_new),
        loss_fn=_loss,
        solver=solver,
        curvature=curvature,
        damping=damping,
        apply=False,
        **({"tol": 1e-10} if solver == "cg" else {}),
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if curvature == "hessian":
        H = torch.autograd.functional.hessian(_flat_loss(model, X, y_new), flat)
    else:  # J^T H_out J with the Jacobian of the logits

        def logits(v: Tensor) -> Tensor:
            sizes = [p.numel() for p in model.parameters()]
            w1, b1, w2, b2 = (
                c.view(p.shape) for c, p in zip(v.split(sizes), model.parameters(), strict=True)
            )
            return F.linear(torch.tanh(F.linear(X, w1, b1) + model.shift), w2, b2)

        J = torch.autograd.functional.jacobian(logits, flat).reshape(60, -1)
        Hout = torch.autograd.functional.hessian(
            lambda o: F.cross_entropy(o.view(20, 3), y_new, reduction="sum"),
            logits(flat).reshape(-1),
        )
        H = J.T @ Hout @ J
    G = torch.autograd.grad(
        _flat_loss(model, X[:2], y_new[:2])(flat.requires_grad_())
        - _flat_loss(model, X[:2], y[:2])(flat),
        flat,
    )[0]
    expected = torch.linalg.solve(H + damping * torch.eye(H.shape[0], dtype=H.dtype), G)
    torch.testing.assert_close(result.step, expected, rtol=1e-6, atol=1e-8)


def test_check_sum_reduction_structured_outputs_still_refuses_a_mean() -> None:
    model = _Net("dict").double()
    X, y = _data()
    check_sum_reduction(model, _loss, X, y)  # a summed loss passes

    def mean_loss(out: object, t: Tensor) -> Tensor:
        return F.cross_entropy(_logits(out), t)

    with pytest.raises(ValueError, match="reduction='sum'"):
        check_sum_reduction(model, mean_loss, X, y)


def test_ggn_operator_dict_outputs_equals_hessian_of_last_layer() -> None:
    # the stored data in one batch keeps a graph; building it failed on a dict of outputs.
    # Linear in the last layer's parameters, the GGN there is the Hessian.
    torch.manual_seed(1)
    model = _Net("dict").double()
    plain = _Net("plain").double()
    plain.load_state_dict(model.state_dict())
    X, y = _data()
    names = ["l2.weight", "l2.bias"]
    op = GGNOperator(model, _loss, X, y, params=names)
    got = op.to_dense()
    w1, b1 = model.l1.weight.detach(), model.l1.bias.detach()
    h = torch.tanh(F.linear(X, w1, b1) + model.shift)

    def f(flat: Tensor) -> Tensor:
        w2, b2 = flat[:12].view(3, 4), flat[12:]
        return F.cross_entropy(F.linear(h, w2, b2), y, reduction="sum")

    flat = torch.cat([model.l2.weight.detach().reshape(-1), model.l2.bias.detach()])
    expected = torch.autograd.functional.hessian(f, flat)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # again (the kept graph) and against the plain-output model
    torch.testing.assert_close(op.to_dense(), got)
    torch.testing.assert_close(GGNOperator(plain, _loss, X, y, params=names).to_dense(), got)
