"""Audit of PerSampleGradients: configurations against a float64 per-sample autograd loop."""

import copy

import pytest
import torch
from torch import nn

from fastunlearn.grad import PerSampleGradients
from tests.helpers import per_sample_loop as reference

B = 4


def mse_sum(out, y):
    return (out - y).pow(2).sum()


class Seq3d(nn.Module):
    """Linear on [B, T, in] inputs, then a per-token head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5, bias=False)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class Twice(nn.Module):
    """One Linear used twice in a row."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def conv_net(conv, norm):
    return nn.Sequential(conv, norm, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))


# (model factory, input shape, output shape)
CASES = {
    "linear_3d": (Seq3d, (B, 3, 4), (B, 3, 3)),
    "linear_twice": (Twice, (B, 4), (B, 4)),
    "conv1d_dil_reflect": (
        lambda: conv_net(nn.Conv1d(3, 4, 3, dilation=2, padding=2, padding_mode="reflect"),
                         nn.GroupNorm(2, 4)), (B, 3, 9), (B, 3)),
    "conv1d_same_nobias": (
        lambda: conv_net(nn.Conv1d(3, 8, 4, padding="same", bias=False), nn.LayerNorm(9)),
        (B, 3, 9), (B, 3)),
    "conv2d_circular_stride": (
        lambda: conv_net(nn.Conv2d(2, 9, 3, stride=2, padding=1, padding_mode="circular"),
                         nn.GroupNorm(3, 9, affine=False)), (B, 2, 7, 6), (B, 3)),
    "conv2d_replicate_groups": (
        lambda: conv_net(nn.Conv2d(4, 6, (2, 3), groups=2, padding=(1, 0),
                                   padding_mode="replicate"),
                         nn.LayerNorm([6, 7, 4], bias=False)), (B, 4, 6, 6), (B, 3)),
    "conv3d": (
        lambda: conv_net(nn.Conv3d(2, 3, 2), nn.GroupNorm(1, 3)), (B, 2, 3, 4, 3), (B, 3)),
    "conv_transpose2d": (
        lambda: conv_net(nn.ConvTranspose2d(2, 3, 3, stride=2), nn.Identity()),
        (B, 2, 3, 3), (B, 3)),
}


def _build(case):
    factory, xshape, yshape = CASES[case]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(xshape)
    model(x)  # materialise lazy layers
    model = model.double()
    return model, x.double(), torch.randn(yshape, dtype=torch.float64)


@pytest.mark.parametrize("case", list(CASES))
def test_all_quantities_match_per_sample_loop(case):
    model, x, y = _build(case)
    engine = PerSampleGradients(model)
    names = list(engine.param_names)
    ref = reference(model, x, y, mse_sum, names)
    flat = torch.cat([ref[n].flatten(1) for n in names], 1)

    got = engine.per_sample(x, y, mse_sum)
    for n in names:
        torch.testing.assert_close(got[n], ref[n], msg=n)
    torch.testing.assert_close(engine.sq_norms(x, y, mse_sum), flat.pow(2).sum(1))
    v = torch.randn(flat.shape[1], dtype=torch.float64)
    torch.testing.assert_close(engine.dots(x, y, mse_sum, v), flat @ v)
    C = float(flat.norm(dim=1).median())
    w = torch.clamp(C / (flat.norm(dim=1) + 1e-6), max=1.0)
    summed = engine.clipped_sum(x, y, mse_sum, C)
    for n in names:
        torch.testing.assert_close(summed[n], torch.tensordot(w, ref[n], dims=1), msg=n)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.att(x, x, x, need_weights=False)[0]


def test_parameters_used_without_calling_their_layer_are_refused():
    # MultiheadAttention reads out_proj.weight/bias without calling out_proj: they used to
    # get silently zero per-sample gradients.
    torch.manual_seed(0)
    model = Attention().double()
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    ref = reference(model, x, y, mse_sum, ["att.out_proj.weight"])
    assert ref["att.out_proj.weight"].abs().sum() > 0  # the loss does depend on it
    with pytest.raises(ValueError, match="att.out_proj"):
        PerSampleGradients(model).per_sample(x, y, mse_sum)
    # Selecting only the parameters the engine can capture still matches the loop.
    names = ["att.in_proj_weight", "att.in_proj_bias"]
    got = PerSampleGradients(model, params=names).per_sample(x, y, mse_sum)
    ref = reference(model, x, y, mse_sum, names)
    for n in names:
        torch.testing.assert_close(got[n], ref[n])


class TiedButIdleHead(nn.Module):
    """A head tied to the embedding's weight but not called in this forward."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
        self.out = nn.Linear(4, 3)

    def forward(self, t):
        return self.out(self.emb(t).mean(1))


def test_a_weight_tied_to_a_layer_that_ran_is_not_refused():
    """The uncalled-layer check must not flag a tied parameter its other owner used."""
    torch.manual_seed(0)
    model = TiedButIdleHead().double()
    t, y = torch.randint(0, 10, (4, 6)), torch.randn(4, 3, dtype=torch.float64)
    got = PerSampleGradients(model).per_sample(t, y, mse_sum)
    names = [n for n, _ in model.named_parameters()]
    ref = reference(model, t, y, mse_sum, names)
    assert set(got) == set(names)
    for n in names:
        torch.testing.assert_close(got[n], ref[n])


class DirectTied(nn.Module):
    """Embedding whose weight is also used directly (not through a module) as the head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)

    def forward(self, t):
        return self.emb(t) @ self.emb.weight.T


def test_weight_also_used_outside_its_module_is_refused():
    # the engine would give emb.weight only the embedding's share of its gradient
    torch.manual_seed(0)
    model = DirectTied().double()
    t, y = torch.randint(0, 7, (3, 5)), torch.randn(3, 5, 7, dtype=torch.float64)
    ref = reference(model, t, y, mse_sum, ["emb.weight"])["emb.weight"]
    engine = PerSampleGradients(model)
    with pytest.raises(ValueError, match=r"\['emb.weight'\] are read outside"):
        engine.per_sample(t, y, mse_sum)
    with pytest.raises(ValueError, match="emb.weight"):
        engine.sq_norms(t, y, mse_sum)  # a refusal is not remembered as a pass
    # the same model with the head as a tied module is captured whole
    tied = TiedModuleHead().double()
    tied.emb.weight.data.copy_(model.emb.weight.data)
    got = PerSampleGradients(tied).per_sample(t, y, mse_sum)
    torch.testing.assert_close(got["emb.weight"], ref)


class TiedModuleHead(nn.Module):
    """DirectTied with its head as an nn.Linear sharing the embedding's weight."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, t):
        return self.head(self.emb(t))


class OwnAndChildParams(nn.Module):
    """A module with a parameter of its own around a child layer, read only in its calls."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x * self.scale) * self.scale.sum()


class ReadsChildWeight(nn.Module):
    """A parent that reads its child layer's weight in its own forward, besides the call."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) + x @ self.lin.weight


def test_parameters_read_only_inside_their_layers_calls_pass_the_check():
    torch.manual_seed(0)
    model = nn.Sequential(OwnAndChildParams(), nn.ReLU(inplace=True), OwnAndChildParams()).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    engine = PerSampleGradients(model)
    got = engine.per_sample(x, y, mse_sum)
    ref = reference(model, x, y, mse_sum, list(engine.param_names))
    for n in engine.param_names:
        torch.testing.assert_close(got[n], ref[n], msg=n)


def test_parent_reading_its_childs_weight_is_refused_unless_left_out():
    torch.manual_seed(0)
    model = ReadsChildWeight().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\['lin.weight'\]"):
        PerSampleGradients(model).per_sample(x, y, mse_sum)
    got = PerSampleGradients(model, params=["lin.bias"]).per_sample(x, y, mse_sum)
    torch.testing.assert_close(got["lin.bias"],
                               reference(model, x, y, mse_sum, ["lin.bias"])["lin.bias"])


class EmbMaxNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4, max_norm=0.5, padding_idx=2)
        self.head = nn.Linear(4, 3)

    def forward(self, t):
        return self.head(self.emb(t))


def test_embedding_max_norm_and_padding_idx():
    torch.manual_seed(0)
    model = EmbMaxNorm().double()
    t = torch.randint(0, 7, (B, 6))
    t[0, :2] = 2
    y = torch.randn(B, 6, 3, dtype=torch.float64)
    model(t)  # renormalise once, so the loop and the engine see the same weights
    engine = PerSampleGradients(model)
    ref = reference(model, t, y, mse_sum, list(engine.param_names))
    got = engine.per_sample(t, y, mse_sum)
    for n in engine.param_names:
        torch.testing.assert_close(got[n], ref[n], msg=n)
    flat = torch.cat([ref[n].flatten(1) for n in engine.param_names], 1)
    torch.testing.assert_close(engine.sq_norms(t, y, mse_sum), flat.pow(2).sum(1))


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("inf"), float("nan"), True, "1",
                                 torch.tensor(1.0)])
def test_clipped_sum_rejects_bad_max_norm(bad):
    model, x, y = _build("linear_3d")
    with pytest.raises(ValueError, match="max_norm"):
        PerSampleGradients(model).clipped_sum(x, y, mse_sum, bad)


def test_clipped_sum_norm_equal_to_max_norm_and_huge_max_norm():
    model, x, y = _build("linear_twice")
    engine = PerSampleGradients(model)
    names = list(engine.param_names)
    ref = reference(model, x, y, mse_sum, names)
    norms = torch.cat([ref[n].flatten(1) for n in names], 1).norm(dim=1)
    for C in (float(norms[1]), 1e30):  # one sample exactly at the threshold; no clipping
        w = torch.clamp(C / (norms + 1e-6), max=1.0)
        got = engine.clipped_sum(x, y, mse_sum, C)
        for n in names:
            torch.testing.assert_close(got[n], torch.tensordot(w, ref[n], dims=1), msg=n)


def test_model_state_left_unchanged_and_mean_reduction():
    model, x, y = _build("conv2d_circular_stride")
    model.eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = copy.deepcopy(model.state_dict())
    engine = PerSampleGradients(model, loss_reduction="mean")
    names = list(engine.param_names)
    got = engine.per_sample(x, y, lambda o, t: mse_sum(o, t) / t.shape[0])
    ref = reference(model, x, y, mse_sum, names)
    for n in names:
        torch.testing.assert_close(got[n], ref[n], msg=n)
    assert not model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
