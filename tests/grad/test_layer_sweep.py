"""Sweep of layer types and layouts: every engine quantity against an independent reference.

Batch sizes are chosen both apart from and equal to the other dims (sequence length,
channels): a rule that takes "the dim of size B" as the batch is fooled by a coincidence,
and must then refuse rather than answer wrongly.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from fastunlearn.grad import PerSampleGradients, find_rule
from fastunlearn.grad.fallback import MultiheadAttentionRule, RNNRule

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")

D = torch.float64


def mse(out, y):
    return (out - y).pow(2).sum()


def _as_args(inputs):
    return inputs if isinstance(inputs, tuple) else (inputs,)


def vmap_reference(model, inputs, y, names):
    """torch.func vmap(grad) of each sample's loss through the whole model."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(sel, xs, yb):
        args = tree_map(lambda t: t.unsqueeze(0), xs)
        return mse(functional_call(model, ({**params, **sel}, buffers), args), yb[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))({n: params[n] for n in names},
                                                  _as_args(inputs), y)


def loop_reference(model, inputs, y, names):
    """One plain backward per sample (for modules torch.func cannot vmap: RNNs)."""
    params = dict(model.named_parameters())
    rows = {n: [] for n in names}
    for b in range(y.shape[0]):
        xb = tuple(t[b : b + 1] for t in _as_args(inputs))
        gs = torch.autograd.grad(mse(model(*xb), y[b : b + 1]), [params[n] for n in names])
        for n, g in zip(names, gs, strict=True):
            rows[n].append(g)
    return {n: torch.stack(v) for n, v in rows.items()}


def assert_all_match(model, inputs, y, reference=vmap_reference, params=None):
    engine = PerSampleGradients(model, params=params)
    names = list(engine.param_names)
    ref = reference(model, inputs, y, names)
    flat = torch.cat([ref[n].flatten(1) for n in names], 1)
    tol = {"rtol": 1e-6, "atol": 1e-9}
    got = engine.per_sample(inputs, y, mse)
    for n in names:
        torch.testing.assert_close(got[n], ref[n], **tol, msg=n)
    torch.testing.assert_close(engine.sq_norms(inputs, y, mse), flat.pow(2).sum(1), **tol)
    v = torch.randn(flat.shape[1], dtype=D)
    torch.testing.assert_close(engine.dots(inputs, y, mse, v), flat @ v, **tol)
    norms = flat.norm(dim=1)
    C = float(norms.median())
    w = torch.clamp(C / (norms + 1e-6), max=1.0)
    summed = engine.clipped_sum(inputs, y, mse, C)
    for n in names:
        torch.testing.assert_close(summed[n], torch.tensordot(w, ref[n], dims=1), **tol, msg=n)


# ---- recurrent layers: batch at dim 1 unless batch_first, hidden states [L*D, B, H] -------


class Recurrent(nn.Module):
    """[B, T, 3] -> RNN (time-first unless batch_first) -> head on output and h_n."""

    def __init__(self, cls, batch_first):
        super().__init__()
        self.rnn = cls(3, 4, num_layers=2, batch_first=batch_first, bidirectional=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        bf = self.rnn.batch_first
        out, h = self.rnn(x if bf else x.transpose(0, 1))
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h_n, c_n)
        last = out[:, -1] if bf else out[-1]
        return self.head(torch.cat([last, h[-1], h[-2]], -1))


@pytest.mark.parametrize("B, T", [(3, 5), (4, 4)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers(cls, batch_first, B, T):
    # These used to fail inside torch.func (or, with T == B or layers * directions == B,
    # split the time or layer dim as if it were the batch).
    torch.manual_seed(0)
    model = Recurrent(cls, batch_first).to(D)
    assert isinstance(find_rule(model.rnn), RNNRule)
    assert_all_match(model, torch.randn(B, T, 3, dtype=D), torch.randn(B, 2, dtype=D),
                     reference=loop_reference)


def test_recurrent_layer_with_dropout_in_training_is_refused():
    torch.manual_seed(0)
    model = nn.LSTM(3, 4, num_layers=2, dropout=0.5, batch_first=True).to(D)
    x = torch.randn(3, 5, 3, dtype=D)
    with pytest.raises(ValueError, match="does not reproduce its output"):
        PerSampleGradients(model).sq_norms(x, None, lambda o, t: o[0].sum())


# ---- attention ----------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, batch_first=batch_first)

    def forward(self, x, pad):
        bf = self.att.batch_first
        h = x if bf else x.transpose(0, 1)
        out = self.att(h, h, h, key_padding_mask=pad)[0]
        return out if bf else out.transpose(0, 1)


@pytest.mark.parametrize("B, T", [(3, 5), (4, 4)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_input_projections(batch_first, B, T):
    torch.manual_seed(0)
    model = Attention(batch_first).to(D)
    assert isinstance(find_rule(model.att), MultiheadAttentionRule)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[0, -2:] = True
    x, y = torch.randn(B, T, 4, dtype=D), torch.randn(B, T, 4, dtype=D)
    assert_all_match(model, (x, pad), y, params=["att.in_proj_weight", "att.in_proj_bias"])
    with pytest.raises(ValueError, match="att.out_proj"):  # read without calling out_proj
        PerSampleGradients(model).sq_norms((x, pad), y, mse)


class Encoder(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=batch_first)

    def forward(self, x):
        bf = self.layer.self_attn.batch_first
        out = self.layer(x if bf else x.transpose(0, 1))
        return out if bf else out.transpose(0, 1)


def _without_out_proj(model):
    return [n for n, _ in model.named_parameters() if "out_proj" not in n]


@pytest.mark.parametrize("B, T", [(3, 5), (4, 4)])
def test_transformer_encoder_layer_batch_first(B, T):
    torch.manual_seed(0)
    model = Encoder(batch_first=True).to(D).eval()
    x, y = torch.randn(B, T, 4, dtype=D), torch.randn(B, T, 4, dtype=D)
    assert_all_match(model, x, y, params=_without_out_proj(model))


def test_time_first_layer_inputs_are_refused_also_when_length_equals_batch():
    # linear1 gets [T, B, 4]; with T == B every shape check passes and the Linear rule
    # used to sum sample b's gradient over time step b instead (silently wrong).
    torch.manual_seed(0)
    model = Encoder(batch_first=False).to(D).eval()
    engine = PerSampleGradients(model, params=_without_out_proj(model))
    for B, T in [(3, 5), (4, 4)]:
        x, y = torch.randn(B, T, 4, dtype=D), torch.randn(B, T, 4, dtype=D)
        with pytest.raises(ValueError, match="layer 'layer.linear1'"):
            engine.sq_norms(x, y, mse)


class TimeFirst(nn.Module):
    """Hands [B, T, 4] to its layer as [T, B, 4]; the layer is position-wise."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        h = x.transpose(0, 1)
        return self.layer(*((h, h) if isinstance(self.layer, nn.Bilinear) else (h,))).sum(0)


@pytest.mark.parametrize("layer", [nn.Linear(4, 3), nn.LayerNorm(4), nn.PReLU(4),
                                   nn.Bilinear(4, 4, 3)], ids=lambda m: type(m).__name__)
def test_position_wise_layer_on_time_first_input_of_batch_length_is_refused(layer):
    torch.manual_seed(0)
    model = TimeFirst(layer).to(D)
    x = torch.randn(4, 4, 4, dtype=D)
    engine = PerSampleGradients(model)
    with pytest.raises(ValueError, match="is not the batch"):
        engine.sq_norms(x, None, lambda o, t: o.pow(2).sum())


class MixesSamples(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return (x - x.mean(0)) * self.scale


def test_fallback_module_mixing_samples_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), MixesSamples()).to(D)
    x = torch.randn(5, 3, dtype=D)
    with pytest.raises(ValueError, match="layer '1' .* does not reproduce"):
        PerSampleGradients(model).sq_norms(x, None, lambda o, t: o.pow(2).sum())


# ---- other layers, with B apart from and equal to the channels ----------------------------


def _net(layer, in_shape):
    model = nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, *in_shape))
    return model.to(D)


LAYERS = {
    "conv3d": (lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), (2, 3, 4, 3)),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, output_padding=1),
                         (2, 5)),
    "conv_transpose2d_groups": (lambda: nn.ConvTranspose2d(2, 4, 3, groups=2, dilation=2),
                                (2, 3, 3)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, groups=2), (4, 5, 5)),
    "conv2d_dilation_stride": (lambda: nn.Conv2d(3, 4, 3, stride=2, dilation=2, padding=2),
                               (3, 7, 6)),
    "conv2d_reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                       (3, 5, 5)),
    "conv2d_same_circular": (lambda: nn.Conv2d(3, 3, (2, 3), padding="same",
                                               padding_mode="circular"), (3, 5, 5)),
    "batchnorm_eval": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval(),
                       (3, 4, 4)),
    "instancenorm_affine": (lambda: nn.Sequential(nn.Conv1d(3, 4, 2),
                                                  nn.InstanceNorm1d(4, affine=True)), (3, 5)),
    "prelu": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4)), (3, 4, 4)),
}


@pytest.mark.parametrize("B", [2, 3, 4])
@pytest.mark.parametrize("case", list(LAYERS))
def test_layers(case, B):
    factory, in_shape = LAYERS[case]
    torch.manual_seed(0)
    model = _net(factory(), in_shape)
    x = torch.randn(B, *in_shape, dtype=D)
    assert_all_match(model, x, torch.randn(B, 2, dtype=D))


class Bag(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.bag = nn.EmbeddingBag(7, 4, mode=mode)
        self.bilinear = nn.Bilinear(4, 3, 2)

    def forward(self, tokens, z):
        return self.bilinear(self.bag(tokens), z)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("B, T", [(3, 5), (4, 4)])
def test_embedding_bag_and_bilinear(mode, B, T):
    torch.manual_seed(0)
    model = Bag(mode).to(D)
    inputs = (torch.randint(0, 7, (B, T)), torch.randn(B, 3, dtype=D))
    assert_all_match(model, inputs, torch.randn(B, 2, dtype=D))
