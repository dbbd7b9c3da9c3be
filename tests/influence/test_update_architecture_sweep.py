"""influence_update beyond image CNNs: tabular MLP, Embedding + LSTM/GRU text classifiers,
LayerNorm + GELU, float64, a frozen embedding and eval-mode batch norm.

Every solver x curvature is checked against an independent dense float64 computation
(``torch.autograd.functional.hessian`` / ``jacobian`` over ``functional_call``, ``G`` from
``torch.autograd.grad``); refusals must be a named ValueError/TypeError with the model
untouched, and divergence must be reported with the model untouched.
"""

import copy
import functools

import pytest
import torch
from small_nets import ce_sum, flat_function, same_state, state_of
from torch import nn
from torch.func import functional_call

from fastunlearn.influence import (
    LissaSettings,
    influence_update,
    iterative_label_repair,
    repair_labels,
    unlearn_features,
)

D64 = torch.float64
N, T, VOCAB, K = 30, 5, 15, 3
ROWS = torch.tensor([0, 4, 9])
DEPTH = 60  # LiSSA steps (contraction <= ~0.6 per step with the damping of _label_case)


pytestmark = pytest.mark.usefixtures("one_thread")


class TextNet(nn.Module):
    """``Embedding -> LSTM/GRU (batch_first) -> last step -> Linear`` on int64 tokens [N, T]."""

    def __init__(self, rnn: type = nn.LSTM, freeze: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 2)
        self.emb.weight.requires_grad_(not freeze)
        self.rnn = rnn(2, 3, batch_first=True)
        self.fc = nn.Linear(3, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(x))
        return self.fc(out[:, -1])


def _bn_net() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, K))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.3, 0.3)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


BUILDERS = {
    "mlp": lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, K)),
    "lstm": lambda: TextNet(nn.LSTM),
    "gru": lambda: TextNet(nn.GRU),
    "layernorm-gelu": lambda: nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.GELU(),
                                            nn.Linear(5, K)),
    "float64": lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, K)).double(),
    "frozen-embedding": lambda: TextNet(nn.LSTM, freeze=True),
    "batchnorm-eval": _bn_net,
}
ARCHS = list(BUILDERS)
TOKENS = {"lstm", "gru", "frozen-embedding"}


def _problem(arch: str, double: bool = False):
    """``(model, X, y, y_new)``: a seeded model, its training set and corrected labels."""
    torch.manual_seed(0)
    model = BUILDERS[arch]()
    if double:
        model = model.double()
    gen = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    if arch in TOKENS:
        X = torch.randint(0, VOCAB, (N, T), generator=gen)
    else:
        X = torch.randn(N, 4, generator=gen, dtype=dtype)
    y = torch.randint(0, K, (N,), generator=gen)
    y_new = y.clone()
    y_new[ROWS] = (y[ROWS] + 1) % K
    return model, X, y, y_new


def _names(model, params=None):
    return [n for n, p in model.named_parameters() if p.requires_grad
            and (params is None or n in params)]


def _flat(model, names):
    named = dict(model.named_parameters())
    return torch.cat([named[n].detach().reshape(-1) for n in names])


def _reference(model, X_train, y_train, x_old, y_old, x_new, y_new, names):
    """Dense float64 ``(theta, G, H, GGN)`` of the summed cross-entropy (independent)."""
    model = copy.deepcopy(model).double().eval()
    X_train, x_old, x_new = (x.double() if x.is_floating_point() else x
                             for x in (X_train, x_old, x_new))

    def loss_on(X, y):
        return lambda s: ce_sum(functional_call(model, s, (X,)), y)

    f, theta = flat_function(model, names, loss_on(X_train, y_train))
    H = torch.autograd.functional.hessian(f, theta, vectorize=True)
    out_of, _ = flat_function(model, names, lambda s: functional_call(model, s, (X_train,)))
    J = torch.autograd.functional.jacobian(out_of, theta, vectorize=True)  # [N, K, P]
    p = torch.softmax(out_of(theta).detach(), dim=1)
    H_out = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    GGN = torch.einsum("nkp,nkl,nlq->pq", J, H_out, J)
    leaf = theta.clone().requires_grad_(True)
    f_new, _ = flat_function(model, names, loss_on(x_new, y_new))
    f_old, _ = flat_function(model, names, loss_on(x_old, y_old))
    G = torch.autograd.grad(f_new(leaf) - f_old(leaf), leaf)[0]
    return theta, G, H, GGN


@functools.cache
def _label_case(arch: str):
    """The label-repair problem of ``arch`` in float64 and its dense reference."""
    model, X, y, y_new = _problem(arch, double=True)
    names = _names(model)
    theta, G, H, GGN = _reference(model, X, y_new, X[ROWS], y[ROWS], X[ROWS], y_new[ROWS],
                                  names)
    e_min, e_max = (float(e) for e in torch.linalg.eigvalsh(H)[[0, -1]])
    # H + lam I positive definite with eigenvalues >= e_max: CG and LiSSA converge fast
    lam = max(1.0, -e_min) + max(1.0, e_max)
    return theta, G, {"hessian": H, "ggn": GGN}, lam


def _expected_newton(theta, G, C, lam):
    return theta - torch.linalg.solve(C + lam * torch.eye(C.shape[0], dtype=D64), G)


SOLVES = [(s, c) for s in ("cg", "direct", "lissa") for c in ("hessian", "ggn")]


def _solver_kwargs(solver, curvature, C, lam):
    if solver == "cg":
        return {"damping": lam, "tol": 1e-12}
    if solver == "direct":
        return {"damping": lam}
    scale = float(torch.linalg.eigvalsh(C)[-1]) + lam
    # one batch of all N rows (k = 1): LiSSA targets (C + d s I)^{-1} G with d s = lam
    return {"lissa": LissaSettings(batch_size=N, damping=lam / scale, scale=scale, depth=DEPTH,
                                   check_every=20, hessian="full")}


# ---- the solver x curvature sweep against the dense float64 reference ---------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_label_repair_every_solver_and_curvature_matches_the_dense_float64_step(arch):
    theta, G, curv, lam = _label_case(arch)
    P = theta.numel()
    for solver, curvature in SOLVES:
        model, X, y, y_new = _problem(arch, double=True)
        res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver=solver,
                            curvature=curvature, check_loss=False,
                            **_solver_kwargs(solver, curvature, curv[curvature], lam))
        expected = _expected_newton(theta, G, curv[curvature], lam)
        assert res.applied and not res.diverged, (solver, curvature, res.reason)
        assert res.num_params == P and res.num_gradients == 2 * len(ROWS)
        torch.testing.assert_close(_flat(model, res.param_names), expected, rtol=1e-6,
                                   atol=1e-8, msg=lambda m, s=solver, c=curvature: f"{s} {c}: {m}")
        assert res.residual < 1e-6 and res.damping == pytest.approx(lam)
        if solver == "cg":
            assert res.converged
            assert res.num_hvps % N == 0 and res.num_hvps >= res.solver_iterations * N > 0
        elif solver == "direct":
            assert res.num_hvps == N * P
        else:  # depth products on all N rows, plus one full-data product for the residual
            assert res.num_hvps == DEPTH * N + N and res.step_scale == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_first_order_is_theta_minus_tau_G(arch):
    theta, G, _, _ = _label_case(arch)
    model, X, y, y_new = _problem(arch, double=True)
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=1, tau=0.01, check_loss=False)
    assert res.applied and res.num_hvps == 0 and res.num_gradients == 2 * len(ROWS)
    torch.testing.assert_close(_flat(model, res.param_names), theta - 0.01 * G, rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "float64"])
def test_float32_models_match_the_float64_step_to_float32_precision(arch):
    """A float32 LSTM on the CPU runs oneDNN's RNN kernel (no forward-mode AD, no double
    backward): the update must switch to the native kernels, not crash."""
    model, X, y, y_new = _problem(arch)
    assert next(model.parameters()).dtype == torch.float32
    names = _names(model)
    theta, G, H, GGN = _reference(model, X, y_new, X[ROWS], y[ROWS], X[ROWS], y_new[ROWS],
                                  names)
    lam = max(1.0, 1.0 - float(torch.linalg.eigvalsh(H)[0]))
    mkldnn_before = torch.backends.mkldnn.enabled
    for solver, curvature in (("direct", "hessian"), ("cg", "ggn")):
        model = _problem(arch)[0]
        res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver=solver,
                            curvature=curvature, damping=lam, tol=1e-6, check_loss=False)
        assert res.applied and not res.diverged
        step = theta - _flat(model, names).double()
        expected = theta - _expected_newton(theta, G, H if curvature == "hessian" else GGN, lam)
        assert float(torch.linalg.vector_norm(step - expected)) \
            <= 1e-3 * float(torch.linalg.vector_norm(expected))
    assert torch.backends.mkldnn.enabled == mkldnn_before  # restored


# ---- feature changes ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in TOKENS])
@pytest.mark.parametrize(("solver", "curvature"), [("direct", "hessian"), ("cg", "ggn")])
def test_feature_change_matches_the_dense_float64_step(arch, solver, curvature):
    model, X, y, _ = _problem(arch, double=True)
    rows, cols = [1, 5, 8], [0, 2]
    values = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.3, 1.2]], dtype=D64)
    X_new = X.clone()
    X_new[torch.tensor(rows).unsqueeze(1), torch.tensor(cols)] = values
    names = _names(model)
    r = torch.tensor(rows)
    theta, G, H, GGN = _reference(model, X_new, y, X[r], y[r], X_new[r], y[r], names)
    C = H if curvature == "hessian" else GGN
    lam = max(1.0, 1.0 - float(torch.linalg.eigvalsh(H)[0]))
    res = unlearn_features(model, X, y, cols, rows=rows, values=values, order=2, solver=solver,
                           curvature=curvature, damping=lam, tol=1e-12, check_loss=False)
    assert res.applied and res.num_affected == 3 and res.num_gradients == 6
    torch.testing.assert_close(_flat(model, names), _expected_newton(theta, G, C, lam),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("arch", sorted(TOKENS))
def test_feature_unlearning_on_token_inputs_is_refused_and_model_untouched(arch):
    model, X, y, _ = _problem(arch)
    before = state_of(model)
    with pytest.raises(TypeError, match="'inputs' must be floating point features.*token"):
        unlearn_features(model, X, y, [0, 2], rows=[1, 5], values=3.0, order=1, tau=0.1)
    assert same_state(model, before)


def test_a_token_change_through_new_inputs_is_handled_exactly():
    model, X, y, _ = _problem("gru", double=True)
    X_new = X.clone()
    X_new[ROWS, 2] = (X[ROWS, 2] + 3) % VOCAB
    names = _names(model)
    theta, G, H, _ = _reference(model, X_new, y, X[ROWS], y[ROWS], X_new[ROWS], y[ROWS], names)
    lam = max(1.0, 1.0 - float(torch.linalg.eigvalsh(H)[0]))
    res = influence_update(model, X[ROWS], y[ROWS], X_new[ROWS], train_data=(X_new, y),
                           order=2, solver="direct", damping=lam, check_loss=False)
    assert res.applied
    torch.testing.assert_close(_flat(model, names), _expected_newton(theta, G, H, lam),
                               rtol=1e-6, atol=1e-8)


# ---- parameter subsets, chunking, modes ------------------------------------------------


@pytest.mark.parametrize("arch", ["lstm", "batchnorm-eval"])
def test_parameter_subset_by_name_matches_the_subset_reference(arch):
    model, X, y, y_new = _problem(arch, double=True)
    subset = ["fc.weight", "fc.bias"] if arch == "lstm" else ["1.weight", "1.bias", "3.bias"]
    before = state_of(model)
    theta, G, H, _ = _reference(model, X, y_new, X[ROWS], y[ROWS], X[ROWS], y_new[ROWS], subset)
    lam = max(0.5, 0.5 - float(torch.linalg.eigvalsh(H)[0]))  # CG needs H + lam I > 0
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver="cg", damping=lam,
                        tol=1e-12, params=subset, check_loss=False)
    assert res.param_names == subset and res.num_params == theta.numel() and res.converged
    torch.testing.assert_close(_flat(model, subset), _expected_newton(theta, G, H, lam),
                               rtol=1e-6, atol=1e-8)
    for name, value in model.state_dict().items():
        if name not in subset:
            assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(("arch", "params", "match"), [
    ("lstm", ["fc.wieght"], "unknown parameter name 'fc.wieght'"),
    ("mlp", "0.weight.extra", "unknown parameter name"),
    ("frozen-embedding", ["emb.weight"], "emb.weight"),
])
def test_unknown_or_frozen_parameter_names_are_refused(arch, params, match):
    model, X, y, y_new = _problem(arch)
    before = state_of(model)
    with pytest.raises(ValueError, match=match):
        repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, damping=1.0, params=params)
    assert same_state(model, before)


def test_frozen_embedding_is_not_selected_and_stays_unchanged():
    model, X, y, y_new = _problem("frozen-embedding")
    emb = model.emb.weight.detach().clone()
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, curvature="ggn", damping=1.0,
                        check_loss=False)
    assert res.applied and "emb.weight" not in res.param_names
    assert torch.equal(model.emb.weight, emb)


@pytest.mark.parametrize("arch", ["lstm", "batchnorm-eval", "layernorm-gelu"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_chunking_and_hvp_batches_do_not_change_the_step(arch, curvature):
    """hvp_batch_size < N switches the Hessian products to forward-over-reverse."""
    _, _, _, lam = _label_case(arch)
    steps = []
    for chunk, hvp in ((None, None), (2, 7)):
        model, X, y, y_new = _problem(arch, double=True)
        res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver="cg", damping=lam,
                            curvature=curvature, tol=1e-12, chunk_size=chunk,
                            hvp_batch_size=hvp, apply=False, check_loss=False)
        assert res.converged
        steps.append(res.step)
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-9, atol=1e-11)


def test_batchnorm_running_statistics_and_training_flag_are_preserved():
    model, X, y, y_new = _problem("batchnorm-eval")
    model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver="cg", damping=1.0,
                        curvature="ggn", check_loss=False)
    assert res.applied and model.training and model[1].training
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_apply_false_leaves_the_lstm_untouched_and_returns_the_step():
    theta, G, curv, lam = _label_case("lstm")
    model, X, y, y_new = _problem("lstm", double=True)
    before = state_of(model)
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver="direct", damping=lam,
                        apply=False, check_loss=False)
    assert not res.applied and same_state(model, before)
    torch.testing.assert_close(theta - res.step, _expected_newton(theta, G, curv["hessian"], lam),
                               rtol=1e-6, atol=1e-8)


def test_iterative_label_repair_on_a_gru_counts_its_work():
    model, X, y, y_new = _problem("gru")
    out = iterative_label_repair(model, X, y_new, steps=2, batch_size=4, order=2, solver="cg",
                                 curvature="ggn", damping=1.0, check_loss=False)
    assert len(out.results) == len(out.steps) == 2
    assert out.num_gradients == sum(r.num_gradients for r in out.results) == 2 * 2 * 4
    assert out.num_hvps == sum(r.num_hvps for r in out.results) > 0


# ---- refusals and divergence -------------------------------------------------------------


def _bad_token(X, row, value):
    X = X.clone()
    X[row, 1] = value
    return X


@pytest.mark.parametrize(("case", "error", "match"), [
    ("token-out-of-vocab-in-a-later-row", ValueError, r"'train_data\[0\]' holds rows the model"),
    ("negative-token", ValueError, r"'train_data\[0\]' holds rows the model"),
    ("affected-token-out-of-vocab", ValueError, "'new_inputs' holds rows the model"),
    ("float-tokens", ValueError, "do not fit the model"),
])
def test_bad_token_inputs_are_named_and_the_model_untouched(case, error, match):
    model, X, y, y_new = _problem("lstm")
    before = state_of(model)
    x_new = X[ROWS]
    if case == "token-out-of-vocab-in-a-later-row":
        X = _bad_token(X, 20, VOCAB)
    elif case == "negative-token":
        X = _bad_token(X, 25, -1)
    elif case == "affected-token-out-of-vocab":
        x_new = _bad_token(X[ROWS], 2, VOCAB + 3)
    else:
        X = X.float()
        x_new = X[ROWS]
    with pytest.raises(error, match=match):
        influence_update(model, X[ROWS], y[ROWS], x_new, y_new[ROWS], train_data=(X, y_new),
                         order=2, solver="cg", damping=1.0)
    assert same_state(model, before)


def test_integer_features_for_a_float_model_are_named():
    model, X, y, y_new = _problem("mlp")
    before = state_of(model)
    with pytest.raises(ValueError, match="do not fit the model"):
        repair_labels(model, X.round().long(), y, ROWS, y_new[ROWS], order=1, tau=0.1)
    assert same_state(model, before)


def test_lissa_divergence_on_an_lstm_is_reported_and_the_model_untouched():
    model, X, y, y_new = _problem("lstm")
    before = state_of(model)
    mkldnn_before = torch.backends.mkldnn.enabled
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, solver="lissa",
                        lissa=LissaSettings(batch_size=8, damping=0.0, scale=0.05, depth=200,
                                            check_every=5))
    assert res.diverged and not res.applied and "LiSSA diverged" in res.reason
    assert res.num_hvps > 0 and same_state(model, before)
    assert torch.backends.mkldnn.enabled == mkldnn_before


def test_non_finite_gradient_is_divergence_and_the_model_untouched():
    model, X, y, _ = _problem("layernorm-gelu")
    before = state_of(model)
    X_new = X.clone()
    X_new[ROWS] = 3e38  # finite inputs whose first layer overflows float32
    res = influence_update(model, X[ROWS], y[ROWS], X_new[ROWS], train_data=(X_new, y),
                           order=2, solver="cg", damping=1.0)
    assert res.diverged and not res.applied and "non-finite" in res.reason
    assert same_state(model, before)


@pytest.mark.parametrize("arch", ["gru", "mlp"])
def test_a_growing_loss_is_divergence_and_the_model_untouched(arch):
    model, X, y, y_new = _problem(arch)
    before = state_of(model)
    res = repair_labels(model, X, y, ROWS, y_new[ROWS], order=1, tau=1e3)
    assert res.diverged and not res.applied and "grew" in res.reason
    assert res.num_loss_evals == 2 * N and same_state(model, before)


def test_mkldnn_flag_is_restored_when_the_update_raises():
    model, X, y, y_new = _problem("lstm")
    assert torch.backends.mkldnn.enabled
    with pytest.raises(ValueError, match="damping"):
        repair_labels(model, X, y, ROWS, y_new[ROWS], order=2, damping=-1.0)
    with pytest.raises(ValueError, match="holds rows the model"):
        influence_update(model, X[ROWS], y[ROWS], _bad_token(X[ROWS], 0, 99),
                         train_data=(X, y_new), order=2, damping=1.0)
    assert torch.backends.mkldnn.enabled
