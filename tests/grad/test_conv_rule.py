"""ConvRule strategies (unfold, conv, auto) against torch.func vmap(grad)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, DTYPES, tolerances
from torch import nn
from torch.func import functional_call, grad, vmap

from fastunlearn.grad import LAYER_RULES, CapturedLayer, ConvRule, LayerCall, PerSampleGradients
from fastunlearn.grad import conv as conv_mod

B = 4
STRATEGIES = ["unfold", "conv", "auto"]

CONVS = {
    "1d-stride-pad-dil": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), (3, 11)),
    "1d-reflect-nobias": (
        lambda: nn.Conv1d(3, 2, 4, padding=2, padding_mode="reflect", bias=False), (3, 9)
    ),
    "2d-stride-pad-dil": (
        lambda: nn.Conv2d(3, 4, (2, 3), stride=2, padding=1, dilation=2), (3, 9, 10)
    ),
    "2d-mixed-reflect-nobias": (
        lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                          padding_mode="reflect", bias=False),
        (3, 8, 7),
    ),
    "2d-same-reflect": (
        lambda: nn.Conv2d(2, 3, (3, 2), padding="same", dilation=2, padding_mode="reflect"),
        (2, 7, 6),
    ),
    # more output than input elements: the weighted sum scales x rather than g
    "2d-same-zeros": (lambda: nn.Conv2d(2, 6, (2, 4), padding="same"), (2, 5, 6)),
    # 4 positions of a wider layer: norms take the Gram form in the unfold family
    "2d-gram": (lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1), (8, 4, 4)),
}


class Shared(nn.Module):
    """One convolution used twice: its per-sample gradient is the sum over both calls."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.head = nn.LazyLinear(3)

    def forward(self, x):
        a = torch.tanh(self.conv(x))
        b = torch.tanh(self.conv(x.flip(-1) * 0.5))
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], 1))


def make(name, dtype, shared=False, device="cpu"):
    torch.manual_seed(0)
    factory, shape = CONVS[name]
    conv = factory()
    model = Shared(conv) if shared else nn.Sequential(conv, nn.Tanh(), nn.Flatten(),
                                                      nn.LazyLinear(3))
    x = torch.randn(B, *shape)
    model(x)  # materialise the lazy layer
    y = torch.randint(0, 3, (B,))
    return model.to(device, dtype), x.to(device, dtype), y.to(device)


def ce_sum(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def func_per_sample(model, x, y):
    """vmap(grad) of the per-sample loss, in float64 on the CPU."""
    model = model.to("cpu", torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xb, yb):
        return ce_sum(functional_call(model, p, (xb[None],)), yb[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x.cpu().double(), y.cpu())


@pytest.fixture
def use_strategy(monkeypatch):
    """Install a ConvRule with a forced strategy for Conv1d and Conv2d."""

    def install(strategy):
        rule = ConvRule(strategy)
        monkeypatch.setitem(LAYER_RULES, nn.Conv1d, rule)
        monkeypatch.setitem(LAYER_RULES, nn.Conv2d, rule)
        return rule

    return install


def check_all(model, x, y, dtype):
    ref = func_per_sample(copy.deepcopy(model), x, y)
    tol = tolerances(dtype)

    def close(got, expected):
        torch.testing.assert_close(got.cpu().double(), expected, **tol)

    eng = PerSampleGradients(model)
    got = eng.per_sample(x, y, ce_sum)
    for n in ref:
        close(got[n], ref[n])
    sq = sum(g.flatten(1).pow(2).sum(1) for g in ref.values())
    close(eng.sq_norms(x, y, ce_sum), sq)
    gen = torch.Generator().manual_seed(1)
    vec = {n: torch.randn(p.shape, generator=gen, dtype=dtype).to(x.device)
           for n, p in model.named_parameters()}
    dots = sum(g.flatten(1) @ vec[n].flatten().cpu().double() for n, g in ref.items())
    close(eng.dots(x, y, ce_sum, vec), dots)
    max_norm = float(sq.sqrt().median())
    c = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    clipped = eng.clipped_sum(x, y, ce_sum, max_norm)
    for n, g in ref.items():
        close(clipped[n], torch.tensordot(c, g, dims=1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_matches_torch_func(use_strategy, strategy, name, dtype, device):
    use_strategy(strategy)
    check_all(*make(name, dtype, device=device), dtype)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "name", ["1d-reflect-nobias", "2d-stride-pad-dil", "2d-gram", "2d-same-zeros"]
)
def test_chunks_and_shared_layer(use_strategy, monkeypatch, strategy, name, shared):
    use_strategy(strategy)
    # 1-byte budgets: every sample is its own chunk and no per-sample gradient is kept.
    monkeypatch.setattr(conv_mod, "CONV_CHUNK_BYTES", 1)
    monkeypatch.setattr(conv_mod, "keep_bytes", lambda calls: 1)
    check_all(*make(name, torch.float64, shared=shared), torch.float64)


def test_forced_strategy_is_used(use_strategy, monkeypatch):
    model, x, y = make("2d-stride-pad-dil", torch.float64)
    for strategy, forbidden in (("unfold", "_weight_grads"), ("conv", "_unfolded")):
        use_strategy(strategy)

        def fail(*args, **kwargs):
            raise AssertionError("wrong strategy")

        with monkeypatch.context() as m:
            m.setattr(ConvRule, forbidden, fail)
            eng = PerSampleGradients(model)
            eng.sq_norms(x, y, ce_sum)
            eng.clipped_sum(x, y, ce_sum, 1.0)
            eng.per_sample(x, y, ce_sum)
            eng.dots(x, y, ce_sum, torch.ones(sum(p.numel() for p in model.parameters()),
                                               dtype=torch.float64))


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation",
    [
        ((2, 3, 7, 8), (2, 3), (1, 1), (0, 0), (1, 1)),
        ((2, 3, 9, 10), (3, 2), (2, 3), (1, 2), (2, 1)),
        ((1, 1, 1, 12), (1, 4), (1, 2), (0, 1), (1, 3)),
    ],
)
def test_im2col_matches_unfold(shape, kernel, stride, padding, dilation):
    x = torch.randn(shape[0], shape[2], shape[3], shape[1], dtype=torch.float64)
    x = x.permute(0, 3, 1, 2)  # non-contiguous
    got = conv_mod.im2col(x, kernel, stride=stride, padding=padding, dilation=dilation)
    ref = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def captured(conv, x, g):
    return CapturedLayer("conv", conv, x.shape[0], [LayerCall((x,), {}, {0: g})])


@pytest.mark.parametrize("groups", [2, 3])
def test_conv_strategy_handles_groups(groups):
    # Grouped convolutions are routed to the torch.func fallback by supports(); the conv
    # family is nevertheless exact for them (called directly here).
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 3 * groups, (3, 2), stride=2, padding=1, groups=groups).double()
    x = torch.randn(B, 6, 7, 6, dtype=torch.float64)
    g = torch.randn_like(conv(x))
    params = {n: p.detach() for n, p in conv.named_parameters()}

    def inner(p, xb, gb):  # per-sample <output, g_b>: its gradient is the weight gradient
        return (functional_call(conv, p, (xb[None],)) * gb[None]).sum()

    ref = vmap(grad(inner), in_dims=(None, 0, 0))(params, x, g)
    rule = ConvRule("auto")
    layer = captured(conv, x, g)
    assert rule.choose(layer, "sq_norm") == "conv"
    got = rule.per_sample(layer, {"weight", "bias"})
    for n in ref:
        torch.testing.assert_close(got[n], ref[n])
    sq = sum(r.flatten(1).pow(2).sum(1) for r in ref.values())
    torch.testing.assert_close(rule.sq_norm(layer, {"weight", "bias"}), sq)
    vec = {n: torch.randn_like(p) for n, p in params.items()}
    dots = sum(r.flatten(1) @ vec[n].flatten() for n, r in ref.items())
    torch.testing.assert_close(rule.dot(layer, vec), dots)
    w = torch.rand(B, dtype=torch.float64)
    sums = rule.weighted_sum(layer, {"weight", "bias"}, w)
    for n, r in ref.items():
        torch.testing.assert_close(sums[n], torch.tensordot(w, r, dims=1))


@pytest.mark.parametrize(
    "conv, in_shape, norm_choice, per_sample_choice",
    [
        # benchmark CNN, first layer: one input channel -> im2col + GEMM
        (nn.Conv2d(1, 16, 5), (1, 28, 28), "unfold", "unfold"),
        (nn.Conv2d(3, 16, 3), (3, 32, 32), "unfold", "unfold"),
        # benchmark CNN, second layer: 16 channels -> grouped weight-gradient convolution
        (nn.Conv2d(16, 32, 5), (16, 12, 12), "conv", "conv"),
        (nn.Conv1d(8, 8, 3), (8, 50), "conv", "conv"),
        # 4 positions of a wide layer: the Gram form is cheaper for norms
        (nn.Conv2d(64, 64, 3), (64, 4, 4), "unfold", "conv"),
    ],
)
def test_cost_model_choices(conv, in_shape, norm_choice, per_sample_choice):
    x = torch.randn(2, *in_shape)
    layer = captured(conv, x, torch.randn_like(conv(x)).detach())
    rule = ConvRule()
    assert rule.choose(layer, "sq_norm") == norm_choice
    assert rule.choose(layer, "per_sample") == per_sample_choice
    assert rule.choose(layer, "dot") == "conv"
    assert rule.choose(layer, "weighted_sum") == "conv"
    assert ConvRule("unfold").choose(layer, "dot") == "unfold"


def test_bad_strategy():
    with pytest.raises(ValueError, match="strategy"):
        ConvRule("im2col")
