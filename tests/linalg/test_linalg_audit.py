"""Audit tests for fastunlearn.linalg: bad inputs, silent wrong answers, stale caches,
train-mode models and operation counts, each checked against an independent float64 solve."""

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fastunlearn.linalg import (
    CGInverseOperator,
    CGNotConvergedError,
    DenseOperator,
    GLMHessianOperator,
    LissaDivergenceError,
    NetworkHessianOperator,
    ScaledIdentityPlus,
    cg,
    cholesky_solve,
    damped,
    dense_hessian,
    lissa,
)


def _spd_with_eigenvalues(eig):
    d = eig.numel()
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    H = (Q * eig) @ Q.T
    return 0.5 * (H + H.T)


def _autograd_hessian(model, loss_fn, x, y, names):
    """Independent oracle: torch.autograd.functional.hessian over a hand-split vector."""
    named = dict(model.named_parameters())
    sizes = [named[n].numel() for n in names]
    shapes = [named[n].shape for n in names]
    buffers = {k: v.clone() for k, v in model.named_buffers()}

    def f(flat):
        state = {k: v.detach() for k, v in named.items()}
        state.update(buffers)
        for name, chunk, shape in zip(names, flat.split(sizes), shapes, strict=True):
            state[name] = chunk.reshape(shape)
        return loss_fn(functional_call(model, state, (x,)), y)

    flat = torch.cat([named[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(f, flat)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- CG: inputs


def test_cg_rejects_non_finite_rhs_and_guess():
    H = _spd_with_eigenvalues(torch.linspace(1.0, 10.0, 6, dtype=torch.float64))
    b = torch.randn(6, 2, dtype=torch.float64)
    for bad in (float("nan"), float("inf")):
        B = b.clone()
        B[3, 1] = bad
        # inf used to come back as zeros with converged=True, NaN as zeros silently
        with pytest.raises(ValueError, match="'B'.*finite"):
            cg(DenseOperator(H), B)
        with pytest.raises(ValueError, match="'B'.*finite"):
            cg(lambda V: H @ V, B, precond=lambda R: R)
        with pytest.raises(ValueError, match="'x0'.*finite"):
            cg(DenseOperator(H), b, x0=B)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cg_rejects_low_precision_rhs_with_type_error(dtype):
    with pytest.raises(TypeError, match="'B'.*float32 or float64"):
        cg(lambda V: 2 * V, torch.ones(4, dtype=dtype))


def test_cg_operator_or_preconditioner_returning_another_dtype_is_named():
    H = _spd_with_eigenvalues(torch.linspace(1.0, 5.0, 5, dtype=torch.float64))
    b = torch.randn(5, dtype=torch.float32)
    with pytest.raises(TypeError, match="'A'.*dtype"):
        cg(lambda V: H @ V.double(), b)
    with pytest.raises(TypeError, match="'precond'.*dtype"):
        cg(lambda V: H.float() @ V, b, precond=lambda R: R.double())


def test_cg_zero_rhs_column_with_warm_start_is_exactly_zero():
    H = _spd_with_eigenvalues(torch.logspace(0, 2, 20, dtype=torch.float64))
    B = torch.zeros(20, 2, dtype=torch.float64)
    B[:, 1] = torch.randn(20, dtype=torch.float64)
    x0 = torch.randn(20, 2, dtype=torch.float64)
    x0_before = x0.clone()
    res = cg(DenseOperator(H), B, x0=x0, tol=1e-10, check_every=1)
    assert torch.equal(res.solution[:, 0], torch.zeros(20, dtype=torch.float64))
    assert res.iterations[0].item() == 0 and res.residual_norms[0].item() == 0.0
    assert res.converged.tolist() == [True, True]
    torch.testing.assert_close(res.solution[:, 1], torch.linalg.solve(H, B[:, 1]))
    # the zero column used to run to maxiter (10 d) against a threshold of 0
    assert res.num_matvecs == 2 * (int(res.iterations.max()) + 2) < 2 * 10 * 20
    assert torch.equal(x0, x0_before)
    vector = cg(DenseOperator(H), torch.zeros(20, dtype=torch.float64), x0=x0[:, 0])
    assert bool(vector.converged.all()) and vector.iterations.tolist() == [0]
    assert torch.equal(vector.solution, torch.zeros(20, dtype=torch.float64))


def test_cg_jacobi_on_operator_without_diagonal_is_a_value_error():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (5,))
    op = damped(NetworkHessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), x, y), 1.0)
    with pytest.raises(ValueError, match="jacobi.*diagonal"):
        cg(op, torch.ones(op.shape[0], dtype=torch.float64), precond="jacobi")


def test_cg_solution_is_detached_and_inputs_untouched():
    H = _spd_with_eigenvalues(torch.linspace(1.0, 8.0, 8, dtype=torch.float64))
    B = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    before = B.detach().clone()
    res = cg(DenseOperator(H), B, tol=1e-12)
    assert res.solution.grad_fn is None and res.residual_norms.grad_fn is None
    torch.testing.assert_close(res.solution, torch.linalg.solve(H, before))
    assert torch.equal(B.detach(), before)


# ---------------------------------------------------------------- CG on a network Hessian


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_cg_on_eval_batchnorm_network_matches_dense_solve_and_counts_hvps(mode):
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(24, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    model(x)  # non-trivial running statistics
    model.eval()
    state = _state(model)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    names = ["1.weight", "1.bias", "3.weight", "3.bias"]
    H = _autograd_hessian(model, loss_fn, x, y, names)
    lam = max(0.0, -float(torch.linalg.eigvalsh(H).min())) + 1.0
    op = NetworkHessianOperator(model, loss_fn, x, y, params=names, mode=mode, damping=lam,
                                batch_size=12)
    B = torch.randn(op.shape[0], 3, dtype=torch.float64)
    res = cg(op, B, tol=1e-11)
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    expected = torch.linalg.solve(H + lam * eye, B)
    torch.testing.assert_close(res.solution, expected, rtol=1e-8, atol=1e-9)
    assert bool(res.converged.all())
    true = torch.linalg.vector_norm(B - (H + lam * eye) @ res.solution, dim=0)
    torch.testing.assert_close(res.residual_norms, true, rtol=1e-6, atol=1e-12)
    assert op.num_hvps == res.num_matvecs
    assert _same_state(model, state) and all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- network operator: modes


def _bn_problem():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, nn.CrossEntropyLoss(reduction="sum"), x, y


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(5), nn.Dropout(0.3), nn.RReLU()])
def test_train_mode_random_or_stateful_layers_are_rejected(layer):
    model = nn.Sequential(nn.Linear(4, 5), layer, nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    state = _state(model)
    op = NetworkHessianOperator(model, loss_fn, x, y)
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    # BatchNorm used to crash with an opaque torch.func RuntimeError, dropout to give a
    # different random "Hessian" product at every call
    with pytest.raises(ValueError, match="'model'.*training mode.*eval"):
        op @ V
    with pytest.raises(ValueError, match="'model'.*training mode"):
        cg(op, V)
    with pytest.raises(ValueError, match="'model'.*training mode"):
        dense_hessian(model, loss_fn, x, y)
    assert _same_state(model, state)
    model.eval()
    H = _autograd_hessian(model, loss_fn, x, y, [n for n, _ in model.named_parameters()])
    torch.testing.assert_close(op @ V, H @ V)
    if not isinstance(layer, nn.RReLU):  # torch.func.hessian cannot vmap rrelu
        torch.testing.assert_close(dense_hessian(model, loss_fn, x, y), H)
    assert _same_state(model, state)


def test_train_mode_layers_that_are_deterministic_are_allowed():
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.0),
                          nn.BatchNorm1d(5, track_running_stats=False), nn.Tanh(),
                          nn.Linear(5, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    op = NetworkHessianOperator(model, loss_fn, x, y)
    H = _autograd_hessian(model, loss_fn, x, y, [n for n, _ in model.named_parameters()])
    V = torch.randn(op.shape[0], 3, dtype=torch.float64)
    torch.testing.assert_close(op @ V, H @ V)
    torch.testing.assert_close(op @ V, op @ V, rtol=0, atol=0)


# ---------------------------------------------------------------- rev-rev graph cache


def _mlp():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    return model, nn.CrossEntropyLoss(reduction="sum"), x, y


def test_rev_rev_cache_follows_unselected_parameters():
    model, loss_fn, x, y = _mlp()
    names = ["2.weight", "2.bias"]
    op = NetworkHessianOperator(model, loss_fn, x, y, params=names, mode="rev-rev")
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(op @ V, _autograd_hessian(model, loss_fn, x, y, names) @ V)
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # not selected, but it shapes the last layer's inputs
    torch.testing.assert_close(op @ V, _autograd_hessian(model, loss_fn, x, y, names) @ V)


def test_rev_rev_cache_follows_in_place_data_changes():
    model, loss_fn, x, y = _mlp()
    names = [n for n, _ in model.named_parameters()]
    op = NetworkHessianOperator(model, loss_fn, x, y, mode="rev-rev")
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    before = op @ V
    with torch.no_grad():
        x.mul_(2.0)
    y.copy_((y + 1) % 3)
    after = op @ V
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _autograd_hessian(model, loss_fn, x, y, names) @ V)


def test_rev_rev_cache_follows_module_mode():
    class TrainScale(nn.Module):
        """Doubles its input in training mode only (not one of the rejected layer types)."""

        def forward(self, t):
            return 2.0 * t if self.training else t

    model = nn.Sequential(nn.Linear(4, 5), TrainScale(), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    names = [n for n, _ in model.named_parameters()]
    op = NetworkHessianOperator(model, loss_fn, x, y, mode="rev-rev")
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    torch.testing.assert_close(op @ V, _autograd_hessian(model, loss_fn, x, y, names) @ V)
    model.eval()
    torch.testing.assert_close(op @ V, _autograd_hessian(model, loss_fn, x, y, names) @ V)


def test_rev_rev_cache_follows_replaced_parameter_objects():
    model, loss_fn, x, y = _mlp()
    names = [n for n, _ in model.named_parameters()]
    op = NetworkHessianOperator(model, loss_fn, x, y, mode="rev-rev")
    V = torch.randn(op.shape[0], 2, dtype=torch.float64)
    op @ V
    model[0].weight = nn.Parameter(2.0 * model[0].weight.detach())
    torch.testing.assert_close(op @ V, _autograd_hessian(model, loss_fn, x, y, names) @ V)


# ---------------------------------------------------------------- LiSSA


def test_lissa_rejects_non_finite_rhs():
    op = DenseOperator(_spd_with_eigenvalues(torch.linspace(1.0, 4.0, 4, dtype=torch.float64)))
    for bad in (float("nan"), float("inf")):
        b = torch.ones(4, 2, dtype=torch.float64)
        b[1, 0] = bad
        # used to surface as a LissaDivergenceError advising a larger 'scale'
        with pytest.raises(ValueError, match="'b'.*finite"):
            lissa(op, b, scale=10.0, depth=20)


def test_lissa_names_b_on_dtype_mismatch_with_operator():
    op = DenseOperator(_spd_with_eigenvalues(torch.linspace(1.0, 4.0, 4, dtype=torch.float64)))
    with pytest.raises(TypeError, match="'b'.*dtype"):
        lissa(op, torch.ones(4, dtype=torch.float32), scale=10.0, depth=20)


def test_lissa_slow_divergence_is_not_returned_silently():
    # lambda_max = 20.8 > (2 - damping) * scale = 20: the error grows by ~1.08 per step, too
    # slowly for the 1000x growth test within 50 steps; the estimate was returned, wrong.
    H = _spd_with_eigenvalues(torch.linspace(1.0, 20.8, 8, dtype=torch.float64))
    b = torch.randn(8, dtype=torch.float64)
    with pytest.raises(LissaDivergenceError, match="'scale'"):
        lissa(DenseOperator(H), b, scale=10.0, depth=50)
    with pytest.raises(LissaDivergenceError):
        lissa(lambda v: H @ v, torch.randn(8, 3, dtype=torch.float64), scale=10.0, depth=50)


@pytest.mark.parametrize("damping", [0.0, 0.02])
def test_lissa_near_the_stability_edge_converges_without_false_alarm(damping):
    # T = (1 - damping) I - H / scale has eigenvalues down to about -0.95: slow but convergent.
    H = _spd_with_eigenvalues(torch.linspace(1.0, 19.5 - 10.0 * damping, 8,
                                             dtype=torch.float64))
    b = torch.randn(8, 2, dtype=torch.float64)
    res = lissa(DenseOperator(H), b, damping=damping, scale=10.0, depth=1500, check_every=1)
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(res.solution, torch.linalg.solve(H + damping * 10.0 * eye, b),
                               rtol=1e-9, atol=1e-10)


def test_lissa_does_not_build_a_graph_through_the_recursion():
    H = _spd_with_eigenvalues(torch.linspace(1.0, 5.0, 6, dtype=torch.float64))
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    res = lissa(DenseOperator(H), b, scale=5.0, depth=400)
    assert res.solution.grad_fn is None and not res.solution.requires_grad
    torch.testing.assert_close(res.solution, torch.linalg.solve(H, b.detach()))


def test_lissa_on_network_batches_counts_hvps_and_matches_mean_batch_solve():
    model, loss_fn, x, y = _mlp()
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    H = _autograd_hessian(model, loss_fn, x, y, names)
    eig = torch.linalg.eigvalsh(H)
    lam = 2.0 * float(eig.abs().max()) + 1.0  # eig(H + lam I) in [lam / 2, 3 lam / 2]
    op = NetworkHessianOperator(model, loss_fn, x, y, damping=lam)
    # one batch holding all rows: E[H_j] is the full damped Hessian, every eigenvalue of
    # which lies in (0, scale); the recursion contracts by at least 2/3 per step
    scale = 1.5 * lam
    b = torch.randn(op.shape[0], 2, dtype=torch.float64)
    state = _state(model)
    res = lissa(op, b, scale=scale, depth=150, batches=[(x, y)])
    assert res.num_hvps == 150 * 2 == op.num_hvps
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    expected = torch.linalg.solve(H + lam * eye, b)
    torch.testing.assert_close(res.solution, expected, rtol=1e-6, atol=1e-8)
    assert _same_state(model, state)


# ---------------------------------------------------------------- operators and Cholesky


def test_glm_operator_rejects_negative_or_non_finite_weights():
    X = torch.randn(10, 3, dtype=torch.float64)
    for bad in (-0.5, float("nan"), float("inf")):
        S = torch.rand(10, 2, dtype=torch.float64)
        S[4, 1] = bad
        with pytest.raises(ValueError, match="'S'"):
            GLMHessianOperator(X, S, 0.1)


def test_scaled_identity_plus_names_its_argument():
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="'c'"):
        ScaledIdentityPlus(op, -1.0)
    with pytest.raises(ValueError, match="'c'"):
        ScaledIdentityPlus(op, float("nan"))


def test_cholesky_solve_rejects_non_finite_inputs():
    H = _spd_with_eigenvalues(torch.linspace(1.0, 3.0, 4, dtype=torch.float64))
    b = torch.ones(4, dtype=torch.float64)
    bad_b = b.clone()
    bad_b[2] = float("nan")
    with pytest.raises(ValueError, match="'B'.*finite"):  # used to return NaN silently
        cholesky_solve(H, bad_b)
    bad_H = H.clone()
    bad_H[3, 0] = float("inf")
    with pytest.raises(ValueError, match="'H'.*finite"):
        cholesky_solve(bad_H, b)


# ---------------------------------------------------------------- CGInverseOperator


def _ill_conditioned(d: int = 40) -> torch.Tensor:
    """SPD with eigenvalues 1e-6 .. 1: CG needs far more than 3 steps."""
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)))
    return q @ torch.diag(torch.logspace(-6, 0, d, dtype=torch.float64)) @ q.T


def test_cg_inverse_operator_does_not_return_an_unconverged_product_silently():
    H = _ill_conditioned()
    V = torch.randn(40, 2, dtype=torch.float64)
    inv = CGInverseOperator(DenseOperator(H), tol=1e-10, maxiter=3)
    with pytest.warns(RuntimeWarning, match=r"did not converge on 2 of 2 column"):
        X = inv @ V
    # the reported worst relative residual is the true one
    relative = torch.linalg.vector_norm(V - H @ X, dim=0) / torch.linalg.vector_norm(V, dim=0)
    message = f"{float(relative.max()):.3g}"
    with pytest.warns(RuntimeWarning, match=rf"worst relative residual {message}"):
        inv @ V
    strict = CGInverseOperator(DenseOperator(H), on_unconverged="raise", tol=1e-10, maxiter=3)
    with pytest.raises(CGNotConvergedError, match="inexact inverse"):
        strict @ V
    assert not bool(strict.last_result.converged.any())  # the outcome is still recorded
    quiet = CGInverseOperator(DenseOperator(H), on_unconverged="ignore", tol=1e-10, maxiter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "ignore" must not warn
        torch.testing.assert_close(quiet @ V, X)  # the same iterate
    with pytest.raises(ValueError, match="on_unconverged"):
        CGInverseOperator(DenseOperator(H), on_unconverged="sometimes")


def test_cg_inverse_operator_converged_products_stay_quiet(recwarn):
    H = _ill_conditioned(8) + torch.eye(8, dtype=torch.float64)
    V = torch.randn(8, 3, dtype=torch.float64)
    X = CGInverseOperator(DenseOperator(H), tol=1e-12) @ V
    torch.testing.assert_close(X, torch.linalg.solve(H, V))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
