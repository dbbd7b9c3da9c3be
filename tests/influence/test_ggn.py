"""GGNOperator on parameter subsets and the GGN with LiSSA, against dense autograd matrices."""

import pytest
import torch
import torch.nn.functional as F
from small_nets import flat_function, net_data, small_net

from fastunlearn.influence import (
    GGNOperator,
    LissaSettings,
    gradient_difference,
    influence_update,
)

D64 = torch.float64
HEAD = ["2.weight", "2.bias"]  # the last Linear layer: the outputs are linear in it


def ce_sum(out, t):
    return F.cross_entropy(out, t, reduction="sum")


def _dense_hessian(model, X, y, names):
    """Hessian of the summed cross-entropy w.r.t. ``names`` (autograd, flat function)."""
    f, theta = flat_function(
        model, names, lambda s: ce_sum(torch.func.functional_call(model, s, (X,)), y))
    return torch.autograd.functional.hessian(f, theta, vectorize=True)


def _dense_ggn(model, X, names):
    """``sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i``, J the output Jacobian w.r.t. ``names``."""
    f, theta = flat_function(model, names,
                              lambda s: torch.func.functional_call(model, s, (X,)))
    J = torch.autograd.functional.jacobian(f, theta, vectorize=True)  # [n, C, P]
    p = torch.softmax(f(theta), dim=1)
    Hout = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return torch.einsum("ncp,ncd,ndq->pq", J, Hout, J)


# ---- parameter subsets --------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 7])
def test_ggn_of_the_last_layer_equals_its_hessian(batch_size):
    model = small_net()
    X, y = net_data(20)
    H = _dense_hessian(model, X, y, HEAD)
    op = GGNOperator(model, ce_sum, X, y, params=HEAD, batch_size=batch_size)
    assert op.param_names == HEAD and op.shape == (6 * 3 + 3,) * 2
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-10, atol=1e-10)
    # None: one batch, the forward pass is kept; 7 rows: three batches, nothing kept
    assert (op._vjp_cache is not None) == (batch_size is None)
    # a single parameter tensor of the head: the matching block of that Hessian
    weight = GGNOperator(model, ce_sum, X, y, params="2.weight", batch_size=batch_size)
    torch.testing.assert_close(weight.to_dense(), H[:18, :18], rtol=1e-10, atol=1e-10)
    # damping adds lambda on the diagonal
    damped = GGNOperator(model, ce_sum, X, y, params=HEAD, damping=0.3, batch_size=batch_size)
    torch.testing.assert_close(damped.to_dense(), H + 0.3 * torch.eye(21, dtype=D64),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_ggn_of_a_nonlinear_subset_is_the_subset_gauss_newton(batch_size):
    model = small_net()
    X, y = net_data(20)
    names = ["0.weight", "2.weight"]  # the outputs are bilinear in these: GGN != Hessian
    op = GGNOperator(model, ce_sum, X, y, params=[model[0].weight, model[2].weight],
                     batch_size=batch_size)
    assert op.param_names == names
    GGN = _dense_ggn(model, X, names)
    torch.testing.assert_close(op.to_dense(), GGN, rtol=1e-10, atol=1e-10)
    H = _dense_hessian(model, X, y, names)
    assert float((GGN - H).abs().max()) > 0.1 * float(H.abs().max())


# ---- LiSSA on the GGN ---------------------------------------------------------------------


@pytest.mark.parametrize(("params", "hvp_batch_size"), [(None, None),
                                                        (["0.weight", "2.weight"], 7)])
def test_ggn_lissa_single_batch_equals_the_damped_ggn_solve(params, hvp_batch_size):
    model = small_net()
    X, y = net_data(20)
    rows = torch.arange(5)
    y_new = y.clone()
    y_new[rows] = (y[rows] + 1) % 3
    names = params or [n for n, _ in model.named_parameters()]
    GGN = _dense_ggn(model, X, names)
    top = float(torch.linalg.eigvalsh(GGN)[-1])
    # d = lam / s: the error contracts by 1 - d - eig / s, within [-0.48, 0.48]
    scale, lam = 1.05 * top, 0.55 * top
    # N = 20 <= batch_size: one batch per pass, k = 1 (LissaSettings.step_scale)
    settings = LissaSettings(batch_size=64, damping=lam / scale, scale=scale, depth=40)
    assert settings.step_scale(X.shape[0]) == 1
    G = gradient_difference(model, ce_sum, X[rows], y[rows], X[rows], y_new[rows],
                            params=names)
    res = influence_update(model, X[rows], y[rows], new_targets=y_new[rows],
                           train_data=(X, y_new), loss_fn=ce_sum, params=params,
                           curvature="ggn", solver="lissa", lissa=settings,
                           hvp_batch_size=hvp_batch_size, check_loss=False, apply=False)
    # the GGN at the corrected labels is the same matrix: it does not depend on the labels
    eye = torch.eye(GGN.shape[0], dtype=D64)
    expected = torch.linalg.solve(GGN + lam * eye, G)
    assert not res.diverged and res.param_names == names
    torch.testing.assert_close(res.step, expected, rtol=1e-8, atol=1e-10)
    assert res.damping == pytest.approx(lam) and res.step_scale == 1
    assert res.residual < 1e-8
    assert res.solver_iterations == 40
    # 40 steps on one batch of 20 rows, plus one full-data product for the residual
    assert res.num_hvps == 40 * X.shape[0] + X.shape[0]
    # not the Hessian's damped step
    H = _dense_hessian(model, X, y_new, names)
    other = torch.linalg.solve(H + lam * eye, G)
    assert float((res.step - other).norm()) > 0.1 * float(other.norm())
