"""December 2 audit of fastunlearn.linalg: curvature products of weight-normalised and
transformer models, and the GGN operator's named errors, each against an independent
float64 reference (finite differences of exact gradients, or a math-attention Hessian)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyEncoder, finite_difference_hessian
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrizations

from fastunlearn.influence import GGNOperator
from fastunlearn.linalg import NetworkHessianOperator, dense_hessian

D64 = torch.float64


def _ce(out, t):
    return F.cross_entropy(out, t, reduction="sum")


def _data(n=20, d=4, k=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=gen, dtype=D64), torch.randint(0, k, (n,), generator=gen)


def _weight_normed(kind, dim):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    if kind == "parametrization":
        parametrizations.weight_norm(model[0], dim=dim)
    else:
        with pytest.warns(FutureWarning):
            torch.nn.utils.weight_norm(model[0], dim=-1 if dim is None else dim)
    return model.eval()


def _fd_hessian(model, x, y):
    return finite_difference_hessian(model, _ce, x, y)


def _dense_ggn(model, x, y):
    """``sum_i J_i^T H_i J_i`` from first-order Jacobians (no second network derivative)."""
    named = dict(model.named_parameters())
    names = list(named)
    sizes = [p.numel() for p in named.values()]
    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def outputs(flat):
        state = dict(zip(names, [c.view(named[n].shape) for n, c in
                                 zip(names, flat.split(sizes), strict=True)], strict=True))
        return functional_call(model, state, (x,))

    J = torch.autograd.functional.jacobian(outputs, theta)
    out = outputs(theta).detach()
    H_out = torch.autograd.functional.hessian(lambda o: _ce(o, y), out)
    return torch.einsum("akp,akbl,blq->pq", J, H_out, J)


@pytest.mark.parametrize(("kind", "dim"), [("parametrization", 0), ("parametrization", 1),
                                           ("parametrization", None), ("legacy", 0)])
def test_weight_norm_curvature_matches_finite_differences(kind, dim):
    # torch's fused weight-norm kernel has a wrong double backward: the Hessian products
    # were 18-37 % off (rev-rev, dense), fwd-rev raised NotImplementedError
    model = _weight_normed(kind, dim)
    x, y = _data()
    H = _fd_hessian(model, x, y)
    V = torch.randn(H.shape[0], 3, dtype=D64)
    for mode in ("fwd-rev", "rev-rev"):
        for batch_size in (None, 7):
            op = NetworkHessianOperator(model, _ce, x, y, mode=mode, batch_size=batch_size)
            torch.testing.assert_close(op @ V, H @ V, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(dense_hessian(model, _ce, x, y), H, rtol=1e-7, atol=1e-8)
    G = _dense_ggn(model, x, y)
    torch.testing.assert_close(GGNOperator(model, _ce, x, y) @ V, G @ V)
    torch.testing.assert_close(GGNOperator(model, _ce, x, y, batch_size=7) @ V, G @ V)


def _sdpa_flags():
    cuda = torch.backends.cuda
    return (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(),
            cuda.cudnn_sdp_enabled(), cuda.math_sdp_enabled())


def test_transformer_curvature_runs_on_math_attention_and_restores_the_flags():
    # nn.TransformerEncoderLayer attends through scaled dot-product attention, whose
    # flash kernel has no double backward: every product raised RuntimeError /
    # NotImplementedError from inside torch
    torch.manual_seed(0)
    model = TinyEncoder().double().eval()
    x, y = torch.randn(8, 8, dtype=D64), torch.randint(0, 3, (8,))
    names = [n for n, _ in model.named_parameters()]
    named = dict(model.named_parameters())
    sizes = [named[n].numel() for n in names]

    def flat_loss(flat):
        state = {n: c.view(named[n].shape) for n, c in
                 zip(names, flat.split(sizes), strict=True)}
        return _ce(functional_call(model, state, (x,)), y)

    theta = torch.cat([named[n].detach().reshape(-1) for n in names])
    with sdpa_kernel(SDPBackend.MATH):
        H = torch.autograd.functional.hessian(flat_loss, theta)
    before = _sdpa_flags()
    V = torch.randn(theta.numel(), 2, dtype=D64)
    for mode in ("fwd-rev", "rev-rev"):
        torch.testing.assert_close(NetworkHessianOperator(model, _ce, x, y, mode=mode) @ V,
                                   H @ V)
    torch.testing.assert_close(dense_hessian(model, _ce, x, y), H)
    GGNOperator(model, _ce, x, y) @ V  # runs
    assert _sdpa_flags() == before


def test_ggn_operator_names_bad_labels_and_a_loss_that_is_not_one_number():
    # were a raw IndexError ("Target 7 is out of bounds") and a torch.func RuntimeError,
    # where NetworkHessianOperator names both
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = _data(10)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=D64)
    bad = y.clone()
    bad[3] = 7
    for batch_size in (None, 4):
        with pytest.raises(ValueError, match="'loss_fn' failed on 'targets'.*out of bounds"):
            GGNOperator(model, _ce, x, bad, batch_size=batch_size) @ V
    with pytest.raises(ValueError, match=r"'loss_fn' must return a scalar.*\[10\]"):
        GGNOperator(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), x, y) @ V
