"""PerSampleGradients against torch.func vmap(grad) and Opacus GradSampleModule."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, DTYPES, tolerances
from torch import nn
from torch.func import functional_call, grad, vmap

from fastunlearn.grad import (
    ConvRule,
    EmbeddingRule,
    FunctorchRule,
    GroupNormRule,
    LayerNormRule,
    LinearRule,
    PerSampleGradients,
    find_rule,
    layers,
)

B = 5


# ---- models, data and losses ---------------------------------------------------------------


def ce_sum(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")


def ce_mean(out, y):
    # Per-sample loss is the sum over a sample's tokens; "mean" is the mean over the batch.
    return ce_sum(out, y) / y.shape[0]


class SeqModel(nn.Module):
    """Embedding + LayerNorm + per-token Linear head, optionally tied to the embedding."""

    def __init__(self, vocab=11, dim=6, classes=4, tied=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab if tied else classes)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.norm(self.emb(tokens))))


def mlp():
    return nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)
    )


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(16, 3),
    )


def unsupported():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, groups=2), nn.PReLU(4), nn.Flatten(), nn.Linear(64, 3)
    )


def data(kind, batch=B, T=5):
    if kind == "mlp":
        return torch.randn(batch, 6), torch.randint(0, 3, (batch,))
    if kind in ("cnn", "unsupported"):
        return torch.randn(batch, 2, 6, 6), torch.randint(0, 3, (batch,))
    tokens = torch.randint(0, 11, (batch, T))
    tokens[0, :2] = 0  # padding positions get no embedding gradient
    return tokens, torch.randint(0, 4, (batch, T))


MODELS = {"mlp": mlp, "cnn": cnn, "seq": SeqModel, "unsupported": unsupported}


def make(kind, dtype=torch.float64, batch=B):
    model = MODELS[kind]().to(dtype)
    x, y = data(kind, batch)
    return model, (x.to(dtype) if x.is_floating_point() else x), y


# ---- oracles ------------------------------------------------------------------------------


def func_per_sample(model, x, y, names=None):
    """vmap(grad) of the per-sample summed loss, in float64."""
    model = copy.deepcopy(model).double()
    x = x.double() if x.is_floating_point() else x
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params) if names is None else names

    def loss(sel, xb, yb):
        return ce_sum(functional_call(model, {**params, **sel}, (xb[None],)), yb[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))({n: params[n] for n in names}, x, y)


def opacus_per_sample(model, x, y, reduction):
    from opacus import GradSampleModule

    model = copy.deepcopy(model)
    # GradSampleModule is the "hooks" mode (grad_sample_mode="hooks" in make_private).
    gsm = GradSampleModule(model, loss_reduction=reduction)
    (ce_sum if reduction == "sum" else ce_mean)(gsm(x), y).backward()
    out = {n: p.grad_sample for n, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            # Opacus 1.6 does not mask padding_idx; autograd (and torch.func) give it no
            # gradient, which test_matches_torch_func checks.
            out[f"{name}.weight"][:, module.padding_idx] = 0
    return out


def sq_norms_of(ps):
    return sum(g.flatten(1).pow(2).sum(1) for g in ps.values())


def dots_of(ps, vec):
    return sum(g.flatten(1) @ vec[n].flatten().to(g.dtype) for n, g in ps.items())


def clipped_of(ps, max_norm):
    # Opacus' clipping factor, which fastunlearn.ops.clip_weights follows.
    c = (max_norm / (sq_norms_of(ps).sqrt() + 1e-6)).clamp(max=1.0)
    return {n: torch.tensordot(c, g, dims=1) for n, g in ps.items()}


def assert_dicts_close(got, want, **tol):
    assert list(got) == list(want)
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n].double(), **tol, msg=n)


# ---- agreement with the oracles -----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(MODELS))
def test_matches_torch_func(kind, dtype, device):
    model, x, y = make(kind, dtype)
    model, x, y = model.to(device), x.to(device), y.to(device)
    ref = func_per_sample(model, x, y)
    tol = tolerances(dtype)
    eng = PerSampleGradients(model)
    assert eng.param_names == tuple(ref)

    assert_dicts_close(eng.per_sample(x, y, ce_sum), ref, **tol)
    torch.testing.assert_close(eng.sq_norms(x, y, ce_sum).double(), sq_norms_of(ref), **tol)

    vec = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    want = dots_of(ref, vec)
    torch.testing.assert_close(eng.dots(x, y, ce_sum, vec).double(), want, **tol)
    flat = torch.cat([v.flatten() for v in vec.values()])
    torch.testing.assert_close(eng.dots(x, y, ce_sum, flat).double(), want, **tol)

    # Threshold at the median norm: some samples are clipped, some are not.
    max_norm = sq_norms_of(ref).sqrt().median().item()
    assert_dicts_close(eng.clipped_sum(x, y, ce_sum, max_norm), clipped_of(ref, max_norm), **tol)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_matches_opacus(kind, reduction, dtype):
    model, x, y = make(kind, dtype)
    want = opacus_per_sample(model, x, y, reduction)
    loss = ce_sum if reduction == "sum" else ce_mean
    eng = PerSampleGradients(model, loss_reduction=reduction)
    tol = tolerances(dtype)
    assert_dicts_close(eng.per_sample(x, y, loss), want, **tol)
    torch.testing.assert_close(eng.sq_norms(x, y, loss), sq_norms_of(want), **tol)
    assert_dicts_close(eng.clipped_sum(x, y, loss, 0.5), clipped_of(want, 0.5), **tol)


@pytest.mark.parametrize("kind", list(MODELS))
def test_mean_reduction_equals_sum(kind):
    model, x, y = make(kind)
    tol = tolerances(torch.float64)
    by_sum = PerSampleGradients(model, loss_reduction="sum")
    by_mean = PerSampleGradients(model, loss_reduction="mean")
    want = by_sum.sq_norms(x, y, ce_sum)
    torch.testing.assert_close(by_mean.sq_norms(x, y, ce_mean), want, **tol)
    assert_dicts_close(by_mean.per_sample(x, y, ce_mean), by_sum.per_sample(x, y, ce_sum), **tol)
    # Without the B scaling the mean's gradients would be 1/B of these: the mismatch is
    # refused (tests/grad/test_reduction_check.py)
    with pytest.raises(ValueError, match="loss_reduction: declared 'sum'"):
        PerSampleGradients(model, loss_reduction="sum").sq_norms(x, y, ce_mean)


def test_per_sample_losses_vector():
    model, x, y = make("mlp")
    eng = PerSampleGradients(model, loss_reduction="mean")  # ignored for a [B] loss

    def per_sample_loss(out, t):
        return F.cross_entropy(out, t, reduction="none")

    torch.testing.assert_close(
        eng.sq_norms(x, y, per_sample_loss), sq_norms_of(func_per_sample(model, x, y))
    )


@pytest.mark.parametrize(
    "names",
    [["2.weight"], ["0.bias", "4.weight"], ["0.weight", "2.bias", "4.bias"]],
)
def test_parameter_subset(names):
    model, x, y = make("mlp")
    ref = func_per_sample(model, x, y, names)
    params = dict(model.named_parameters())
    for selection in (names, [params[n] for n in names]):
        eng = PerSampleGradients(model, params=selection)
        assert eng.param_names == tuple(n for n in params if n in names)
        assert_dicts_close(eng.per_sample(x, y, ce_sum), {n: ref[n] for n in eng.param_names})
        torch.testing.assert_close(eng.sq_norms(x, y, ce_sum), sq_norms_of(ref))
        assert_dicts_close(eng.clipped_sum(x, y, ce_sum, 0.3), clipped_of(ref, 0.3))


def test_frozen_parameters_are_not_selected():
    model, x, y = make("cnn")
    model[1].requires_grad_(False)
    eng = PerSampleGradients(model)
    assert "1.weight" not in eng.param_names
    ref = func_per_sample(model, x, y, list(eng.param_names))
    torch.testing.assert_close(eng.sq_norms(x, y, ce_sum), sq_norms_of(ref))


@pytest.mark.parametrize("kind", list(MODELS))
def test_batch_of_one(kind):
    model, x, y = make(kind, batch=1)
    ref = func_per_sample(model, x, y)
    eng = PerSampleGradients(model, loss_reduction="mean")
    assert_dicts_close(eng.per_sample(x, y, ce_mean), ref)
    torch.testing.assert_close(eng.sq_norms(x, y, ce_mean), sq_norms_of(ref))
    assert_dicts_close(eng.clipped_sum(x, y, ce_mean, 0.1), clipped_of(ref, 0.1))


def test_model_left_unchanged():
    model, x, y = make("unsupported")
    model.train()
    model[1].eval()  # a mixed state must survive too
    params = dict(model.named_parameters())
    sentinel = torch.full_like(params["0.weight"], 7.0)
    params["0.weight"].grad = sentinel
    before = {n: p.detach().clone() for n, p in params.items()}
    modes = [m.training for m in model.modules()]
    eng = PerSampleGradients(model)
    eng.sq_norms(x, y, ce_sum)
    eng.dots(x, y, ce_sum, {n: torch.ones_like(p) for n, p in params.items()})
    eng.clipped_sum(x, y, ce_sum, 1.0)
    eng.per_sample(x, y, ce_sum)
    assert params["0.weight"].grad is sentinel and bool((sentinel == 7.0).all())
    assert all(p.grad is None for n, p in params.items() if n != "0.weight")
    assert [m.training for m in model.modules()] == modes
    assert_dicts_close({n: p.detach() for n, p in params.items()}, before, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_hooks_removed_when_forward_fails():
    model, x, y = make("mlp")
    eng = PerSampleGradients(model)
    with pytest.raises(RuntimeError):
        eng.sq_norms(x[:, :4], y, ce_sum)  # wrong feature size
    assert all(not m._forward_hooks for m in model.modules())


def test_runs_under_no_grad():
    model, x, y = make("mlp")
    with torch.no_grad():
        got = PerSampleGradients(model).sq_norms(x, y, ce_sum)
    torch.testing.assert_close(got, sq_norms_of(func_per_sample(model, x, y)))


# ---- layer coverage -----------------------------------------------------------------------


def test_rule_selection():
    assert isinstance(find_rule(nn.Linear(2, 3)), LinearRule)
    assert isinstance(find_rule(nn.Conv2d(2, 4, 3)), ConvRule)
    assert isinstance(find_rule(nn.Conv1d(2, 4, 3)), ConvRule)
    assert isinstance(find_rule(nn.Embedding(5, 2)), EmbeddingRule)
    assert isinstance(find_rule(nn.LayerNorm(3)), LayerNormRule)
    assert isinstance(find_rule(nn.GroupNorm(2, 4)), GroupNormRule)
    assert find_rule(nn.Conv2d(2, 4, 3, groups=2)) is None
    assert find_rule(nn.PReLU()) is None

    class MyLinear(nn.Linear):  # a subclass may change forward: no inherited rule
        pass

    assert find_rule(MyLinear(2, 3)) is None


def test_native_layers_do_not_use_the_fallback(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("fallback used")

    monkeypatch.setattr(FunctorchRule, "compute_per_sample", fail)
    for kind in ("mlp", "cnn", "seq"):
        model, x, y = make(kind)
        eng = PerSampleGradients(model)
        eng.sq_norms(x, y, ce_sum)
        eng.clipped_sum(x, y, ce_sum, 1.0)
        eng.per_sample(x, y, ce_sum)
    model, x, y = make("unsupported")
    with pytest.raises(AssertionError, match="fallback used"):
        PerSampleGradients(model).sq_norms(x, y, ce_sum)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv1d(3, 4, 3, padding="same", dilation=2), (B, 3, 9)),
        (nn.Conv1d(3, 4, 2, stride=2, padding=1, bias=False), (B, 3, 9)),
        (nn.Conv2d(3, 4, (2, 3), padding="same", padding_mode="reflect"), (B, 3, 5, 6)),
        (nn.Conv2d(3, 4, 3, stride=(2, 1), dilation=(1, 2), padding=(1, 2)), (B, 3, 7, 7)),
        (nn.Conv2d(3, 4, 2, padding=1, padding_mode="circular"), (B, 3, 4, 4)),
    ],
)
def test_conv_variants(conv, shape):
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.randn(shape, dtype=torch.float64)
    model(x)  # materialise the lazy layer
    y = torch.randint(0, 3, (B,))
    ref = func_per_sample(model, x, y)
    eng = PerSampleGradients(model)
    assert_dicts_close(eng.per_sample(x, y, ce_sum), ref)
    torch.testing.assert_close(eng.sq_norms(x, y, ce_sum), sq_norms_of(ref))
    vec = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    torch.testing.assert_close(eng.dots(x, y, ce_sum, vec), dots_of(ref, vec))
    assert_dicts_close(eng.clipped_sum(x, y, ce_sum, 0.2), clipped_of(ref, 0.2))


@pytest.mark.parametrize("gram_max_t", [256, 0])  # 0: segment-sum path for long sequences
def test_embedding_paths_and_tied_weights(monkeypatch, gram_max_t):
    monkeypatch.setattr(layers, "EMBEDDING_GRAM_MAX_T", gram_max_t)
    model = SeqModel(tied=True).double()
    assert model.head.weight is model.emb.weight
    tokens = torch.randint(0, 11, (B, 7))
    tokens[:, 3] = tokens[:, 1]  # repeated tokens inside a sample
    y = torch.randint(0, 11, (B, 7))
    ref = func_per_sample(model, tokens, y)
    eng = PerSampleGradients(model)
    assert eng.param_names == tuple(ref)
    assert_dicts_close(eng.per_sample(tokens, y, ce_sum), ref)
    torch.testing.assert_close(eng.sq_norms(tokens, y, ce_sum), sq_norms_of(ref))
    vec = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    torch.testing.assert_close(eng.dots(tokens, y, ce_sum, vec), dots_of(ref, vec))
    assert_dicts_close(eng.clipped_sum(tokens, y, ce_sum, 1.0), clipped_of(ref, 1.0))
    # The embedding alone (untied model), through the chosen norm path.
    untied = SeqModel().double()
    y4 = torch.randint(0, 4, (B, 7))
    ref = func_per_sample(untied, tokens, y4, ["emb.weight"])
    eng = PerSampleGradients(untied, params=["emb.weight"])
    torch.testing.assert_close(eng.sq_norms(tokens, y4, ce_sum), sq_norms_of(ref))


class TwoStep(nn.Module):
    """One Linear applied twice (shared over steps), a Bilinear and a kwargs-called LayerNorm."""

    def __init__(self):
        super().__init__()
        self.step = nn.Linear(4, 4)
        self.mix = nn.Bilinear(4, 4, 3)  # two inputs: fallback
        self.norm = nn.LayerNorm(3, bias=False)
        self.rms = nn.RMSNorm(3)

    def forward(self, x, z):
        h = torch.tanh(self.step(torch.tanh(self.step(x))))
        return self.rms(self.norm(input=self.mix(h, z)))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_shared_module_multi_input_fallback_and_norms():
    model = TwoStep().double()
    x, z, y = torch.randn(B, 4).double(), torch.randn(B, 4).double(), torch.randint(0, 3, (B,))
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(sel, xb, zb, yb):
        return ce_sum(functional_call(model, {**params, **sel}, (xb[None], zb[None])), yb[None])

    ref = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, z, y)
    eng = PerSampleGradients(model)
    assert_dicts_close(eng.per_sample((x, z), y, ce_sum), ref)
    torch.testing.assert_close(eng.sq_norms((x, z), y, ce_sum), sq_norms_of(ref))
    torch.testing.assert_close(eng.sq_norms({"x": x, "z": z}, y, ce_sum), sq_norms_of(ref))
    vec = {n: torch.randn_like(p) for n, p in params.items()}
    torch.testing.assert_close(eng.dots((x, z), y, ce_sum, vec), dots_of(ref, vec))
    assert_dicts_close(eng.clipped_sum((x, z), y, ce_sum, 0.5), clipped_of(ref, 0.5))


def test_inplace_op_after_layer():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).double()
    x, y = torch.randn(B, 6).double(), torch.randint(0, 3, (B,))
    ref = func_per_sample(model, x, y)
    assert_dicts_close(PerSampleGradients(model).per_sample(x, y, ce_sum), ref)


def test_unused_layer_has_zero_gradient():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            self.unused(x)  # called, but the loss does not depend on it
            return self.used(x)

    model = Partly().double()
    x, y = torch.randn(B, 4).double(), torch.randint(0, 3, (B,))
    ps = PerSampleGradients(model).per_sample(x, y, ce_sum)
    assert not ps["unused.weight"].any() and not ps["unused.bias"].any()
    assert_dicts_close(
        {n: ps[n] for n in ("used.weight", "used.bias")},
        func_per_sample(model, x, y, ["used.weight", "used.bias"]),
    )


def test_batchnorm_eval_uses_fallback_train_is_refused():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).double()
    x, y = torch.randn(B, 4).double(), torch.randint(0, 3, (B,))
    eng = PerSampleGradients(model)
    with pytest.raises(ValueError, match="model: batch-norm layer '1'"):
        eng.sq_norms(x, y, ce_sum)
    model.eval()
    assert_dicts_close(eng.per_sample(x, y, ce_sum), func_per_sample(model, x, y))


# ---- validation ---------------------------------------------------------------------------


def test_bad_constructor_arguments():
    model = mlp()
    with pytest.raises(TypeError, match="model"):
        PerSampleGradients(lambda x: x)
    with pytest.raises(ValueError, match="loss_reduction"):
        PerSampleGradients(model, loss_reduction="none")
    with pytest.raises(ValueError, match="params: 'nope'"):
        PerSampleGradients(model, params=["nope"])
    with pytest.raises(ValueError, match="params"):
        PerSampleGradients(model, params=[nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="params"):
        PerSampleGradients(model, params=[])
    with pytest.raises(ValueError, match="params"):
        PerSampleGradients(model, params="0.weight")
    model[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="params: '0.bias' does not require grad"):
        PerSampleGradients(model, params=["0.bias"])
    emb = nn.Sequential(nn.Embedding(5, 2, scale_grad_by_freq=True))
    with pytest.raises(ValueError, match="scale_grad_by_freq"):
        PerSampleGradients(emb).sq_norms(torch.tensor([[1, 2]]), None, lambda o, t: o.sum())


def test_bad_call_arguments():
    model, x, y = make("mlp")
    eng = PerSampleGradients(model)
    with pytest.raises(ValueError, match="targets"):
        eng.sq_norms(x, y[:-1], ce_sum)
    with pytest.raises(ValueError, match="inputs"):
        eng.sq_norms(x[:0], y[:0], ce_sum)
    with pytest.raises(ValueError, match="inputs"):
        eng.sq_norms([1, 2], y, ce_sum)
    with pytest.raises(ValueError, match="loss_fn"):
        eng.sq_norms(x, y, lambda o, t: F.cross_entropy(o, t, reduction="none")[:-1])
    with pytest.raises(ValueError, match="loss_fn"):
        eng.sq_norms(x, y, lambda o, t: 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        eng.clipped_sum(x, y, ce_sum, 0.0)
    with pytest.raises(ValueError, match="max_norm"):
        eng.clipped_sum(x, y, ce_sum, float("nan"))
    vec = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="vector: keys"):
        eng.dots(x, y, ce_sum, {k: v for k, v in vec.items() if k != "0.bias"})
    with pytest.raises(ValueError, match="vector: keys"):
        eng.dots(x, y, ce_sum, {**vec, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="vector: '0.bias'"):
        eng.dots(x, y, ce_sum, {**vec, "0.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="vector"):
        eng.dots(x, y, ce_sum, torch.zeros(7))
    with pytest.raises(ValueError, match="vector"):
        eng.dots(x, y, ce_sum, [1.0])


def test_layer_input_without_batch_first():
    class TimeFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):  # x [B, T, 4] handed to the layer as [T, B, 4]
            return self.lin(x.transpose(0, 1)).sum(0)

    eng = PerSampleGradients(TimeFirst())
    with pytest.raises(ValueError, match="model: layer 'lin'"):
        eng.sq_norms(torch.randn(B, 2, 4), torch.randint(0, 3, (B,)), ce_sum)


def test_input_modified_in_place_after_layer():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return x + self.b

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.shift = nn.Linear(4, 4), Shift()

        def forward(self, x):
            h = self.first(x)
            out = self.shift(h)
            h.mul_(2)  # legal for autograd (x + b saves nothing), but changes the capture
            return out

    eng = PerSampleGradients(Model(), params=["shift.b"])
    with pytest.raises(ValueError, match="layer 'shift' was modified in place"):
        eng.sq_norms(torch.randn(B, 4), torch.randint(0, 4, (B,)), ce_sum)
