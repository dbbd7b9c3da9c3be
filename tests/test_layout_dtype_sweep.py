"""Unusual tensor layouts and dtypes through PerSampleGradients and the curvature operators.

Every case is checked against an independent float64 reference: a loop of plain
``torch.autograd.grad`` calls, one sample at a time, for the per-sample engine; a dense
Hessian (``torch.autograd.functional.hessian``) and an explicit-Jacobian GGN for
``NetworkHessianOperator``, ``GGNOperator`` and ``dense_hessian``.
"""

import copy
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastunlearn.grad import PerSampleGradients
from fastunlearn.grad.conv import ConvRule
from fastunlearn.grad.layers import LAYER_RULES
from fastunlearn.influence import GGNOperator
from fastunlearn.linalg import NetworkHessianOperator, dense_hessian
from tests.helpers import per_sample_loop

D64 = torch.float64
B = 5
CL = torch.channels_last

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one thread is fastest


def ce_sum(out, t):
    return F.cross_entropy(out, t, reduction="sum")


def mse_sum(out, t):
    return (out - t).pow(2).sum()


class _FromBool(nn.Module):
    """A linear layer on bool inputs cast inside the model."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x.to(self.lin.weight.dtype))


class _Bag(nn.Module):
    """Embedding of integer tokens, summed, then a LayerNorm and a head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, t):
        return self.head(self.norm(self.emb(t).sum(1)))


def _cnn(c_in=3):
    return nn.Sequential(nn.Conv2d(c_in, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.Tanh(),
                         nn.Conv2d(6, 2, 2, stride=2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


def _mlp(n_out=3):
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, n_out))


def _transposed_weight(model):
    """Replace the first layer's weight by a non-contiguous parameter (a transposed one)."""
    w = model[0].weight.detach()
    model[0].weight = nn.Parameter(w.t().contiguous().t())
    assert not model[0].weight.is_contiguous()
    return model


def _grad_case(name):
    """(model, inputs, targets, loss_fn, params), all float64."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    y = torch.randint(0, 3, (B,), generator=g)
    img = torch.randn(B, 3, 4, 4, dtype=D64, generator=g)
    vec = torch.randn(B, 4, dtype=D64, generator=g)
    torch.manual_seed(1)
    if name.startswith("cnn"):
        c_in = 9 if "wide" in name else 3  # 9 input channels: the convolution family
        model = _cnn(c_in).double()
        x = torch.randn(B, c_in, 4, 4, dtype=D64, generator=g) if c_in != 3 else img
        if "model-cl" in name:
            model = model.to(memory_format=CL)
        if "x-cl" in name:
            x = x.contiguous(memory_format=CL)
        if "expand" in name:
            x = x[:1].expand(B, -1, -1, -1)
        if name == "cnn-permuted":
            x = x.transpose(2, 3)
        if name == "cnn-step2":
            x = torch.randn(B, 3, 8, 8, dtype=D64, generator=g)[:, :, ::2, ::2]
        if name == "cnn-batch-step2":
            x = torch.randn(2 * B, 3, 4, 4, dtype=D64, generator=g)[::2]
        if name == "cnn-batch1":
            x, y = x[:1], y[:1]
        if name == "cnn-transposed-conv-weight":
            w = model[0].weight.detach()
            model[0].weight = nn.Parameter(w.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1))
            assert not model[0].weight.is_contiguous()
        return model, x, y, ce_sum, None
    if name == "mlp-transposed-x":
        return _mlp().double(), torch.randn(4, B, dtype=D64, generator=g).t(), y, ce_sum, None
    if name == "mlp-expanded-x":
        return _mlp().double(), vec[:1].expand(B, -1), y, ce_sum, None
    if name == "mlp-step2-x":
        x = torch.randn(B, 8, dtype=D64, generator=g)[:, ::2]
        return _mlp().double(), x, y, ce_sum, None
    if name == "mlp-batch-larger-than-features":
        x = torch.randn(40, 4, dtype=D64, generator=g)
        return _mlp().double(), x, torch.randint(0, 3, (40,), generator=g), ce_sum, None
    if name == "mlp-batch1":
        return _mlp().double(), vec[:1], y[:1], ce_sum, None
    if name == "mlp-uint8-targets":
        return _mlp().double(), vec, y.to(torch.uint8), ce_sum, None
    if name == "mlp-params-subset":
        return _mlp().double(), vec, y, ce_sum, ["2.weight", "0.bias"]
    if name == "mlp-transposed-weight":
        return _transposed_weight(_mlp().double()), vec, y, ce_sum, None
    if name == "mlp-transposed-weight-subset":
        return _transposed_weight(_mlp().double()), vec, y, ce_sum, ["0.weight"]
    if name == "mlp-targets-share-storage":
        data = torch.randn(B, 5, dtype=D64, generator=g)
        return _mlp(1).double(), data[:, :4], data[:, 4:], mse_sum, None
    if name == "mlp-targets-trailing-1":
        return _mlp(1).double(), vec, torch.randn(B, 1, dtype=D64, generator=g), mse_sum, None
    if name == "bool-inputs":
        return _FromBool().double(), torch.rand(B, 4, generator=g) > 0.5, y, ce_sum, None
    if name == "embedding-int32":
        return _Bag().double(), torch.randint(0, 7, (B, 3), generator=g).int(), y, ce_sum, None
    if name == "embedding-expanded":
        t = torch.randint(0, 7, (1, 3), generator=g).expand(B, -1)
        return _Bag().double(), t, y, ce_sum, None
    raise AssertionError(name)


GRAD_CASES = [
    "cnn-x-cl", "cnn-model-cl-x-cl", "cnn-model-cl", "cnn-wide-model-cl-x-cl", "cnn-expand",
    "cnn-wide-expand", "cnn-model-cl-expand", "cnn-permuted", "cnn-step2", "cnn-batch-step2",
    "cnn-batch1", "cnn-transposed-conv-weight", "mlp-transposed-x", "mlp-expanded-x",
    "mlp-step2-x", "mlp-batch-larger-than-features", "mlp-batch1", "mlp-uint8-targets",
    "mlp-params-subset", "mlp-transposed-weight", "mlp-transposed-weight-subset",
    "mlp-targets-share-storage", "mlp-targets-trailing-1", "bool-inputs", "embedding-int32",
    "embedding-expanded",
]


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


# every case with the default conv rule; conv cases also with each forced conv family
GRAD_RUNS = [(c, "auto") for c in GRAD_CASES] + [
    (c, s) for c in GRAD_CASES if c.startswith("cnn") for s in ("unfold", "conv")]


@pytest.mark.parametrize("case, strategy", GRAD_RUNS)
def test_per_sample_engine_matches_autograd_loop(case, strategy, monkeypatch):
    monkeypatch.setitem(LAYER_RULES, nn.Conv2d, ConvRule(strategy))
    model, x, y, loss_fn, params = _grad_case(case)
    engine = PerSampleGradients(model, params=params)
    names = engine.param_names
    ref = per_sample_loop(model, x, y, loss_fn, names)
    flat_ref = torch.cat([ref[n].flatten(1) for n in names], 1)

    got = engine.per_sample(x, y, loss_fn)
    for n in names:
        _close(got[n], ref[n])
    _close(engine.sq_norms(x, y, loss_fn), flat_ref.pow(2).sum(1))

    # dots with a flat, strided vector and with a mapping of parameter-shaped tensors
    g = torch.Generator().manual_seed(3)
    big = torch.randn(2 * flat_ref.shape[1], dtype=D64, generator=g)
    _close(engine.dots(x, y, loss_fn, big[::2]), flat_ref @ big[::2])
    vecs = {n: torch.randn(p.shape, dtype=D64, generator=g) for n, p in engine.params.items()}
    want = sum(ref[n].flatten(1) @ vecs[n].reshape(-1) for n in names)
    _close(engine.dots(x, y, loss_fn, vecs), want)

    max_norm = float(flat_ref.norm(dim=1).median()) + 1e-3  # some samples clipped
    w = (max_norm / (flat_ref.norm(dim=1) + 1e-6)).clamp(max=1.0)
    clipped = engine.clipped_sum(x, y, loss_fn, max_norm)
    for n in names:
        _close(clipped[n], torch.tensordot(w, ref[n], dims=1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "cnn-wide", "embedding"])
def test_per_sample_engine_refuses_low_precision_parameters(arch, dtype):
    # nn.Linear and narrow convolutions used to crash inside the native op ("argument 'A'
    # must be float32 or float64"); wide convolutions and embeddings ran, with float16
    # squared norms overflowing to inf (clipping factor 0) from a gradient norm of 256.
    model = {"mlp": _mlp, "cnn": _cnn, "cnn-wide": lambda: _cnn(9), "embedding": _Bag}[arch]()
    first = next(iter(dict(model.named_parameters())))
    with pytest.raises(TypeError, match=f"params: parameter '{first}' has dtype {dtype}"):
        PerSampleGradients(model.to(dtype))


def test_per_sample_engine_refuses_a_model_converted_after_construction():
    model = _mlp()
    engine = PerSampleGradients(model)
    model.half()
    x, y = torch.randn(B, 4).half(), torch.randint(0, 3, (B,))
    with pytest.raises(TypeError, match="params: parameter '0.weight' has dtype torch.float16"):
        engine.sq_norms(x, y, ce_sum)
    model.float()
    assert engine.sq_norms(x.float(), y, ce_sum).shape == (B,)


# ---- curvature operators ---------------------------------------------------------------


def _reference_curvature(model, loss_fn, x, y, names):
    """Dense Hessian and GGN in float64 of a float64 copy of the model."""
    model = copy.deepcopy(model).double()
    x = x.double() if x.is_floating_point() else x
    named = dict(model.named_parameters())
    primals = [named[n].detach() for n in names]
    sizes = [p.numel() for p in primals]

    def state(flat):
        st = {k: v.detach() for k, v in named.items()}
        st.update(dict(model.named_buffers()))
        st.update({n: c.reshape(p.shape)
                   for n, c, p in zip(names, flat.split(sizes), primals, strict=True)})
        return st

    flat0 = torch.cat([p.reshape(-1) for p in primals])
    H = torch.autograd.functional.hessian(
        lambda f: loss_fn(functional_call(model, state(f), (x,)), y), flat0, vectorize=True)
    out = functional_call(model, state(flat0), (x,))
    J = torch.autograd.functional.jacobian(
        lambda f: functional_call(model, state(f), (x,)).reshape(-1), flat0, vectorize=True)
    H_out = torch.autograd.functional.hessian(
        lambda o: loss_fn(o.reshape(out.shape), y), out.detach().reshape(-1), vectorize=True)
    return H, J.T @ H_out @ J


CURVATURE_CASES = [
    "cnn-x-cl", "cnn-model-cl-x-cl", "cnn-model-cl", "cnn-expand", "cnn-permuted",
    "cnn-batch1", "cnn-transposed-conv-weight", "mlp-transposed-x", "mlp-expanded-x",
    "mlp-step2-x", "mlp-batch-larger-than-features", "mlp-uint8-targets",
    "mlp-params-subset", "mlp-transposed-weight", "mlp-transposed-weight-subset",
    "mlp-targets-share-storage", "mlp-targets-trailing-1", "bool-inputs", "embedding-int32",
    "embedding-expanded",
]


def _check_curvature(model, loss_fn, x, y, params, rtol):
    names = NetworkHessianOperator(model, loss_fn, x, y, params=params).param_names
    H, G = _reference_curvature(model, loss_fn, x, y, names)
    dtype = next(iter(model.parameters())).dtype
    V = torch.randn(H.shape[0], 3, dtype=D64, generator=torch.Generator().manual_seed(5))

    def close(got, want, ref):
        torch.testing.assert_close(got.double(), want, rtol=0,
                                   atol=rtol * float(ref.abs().max() * V.abs().sum(0).max()))

    batches = (None, 2) if x.shape[0] > 2 else (None,)
    for batch_size in batches:
        for mode in ("fwd-rev", "rev-rev"):
            op = NetworkHessianOperator(model, loss_fn, x, y, params=params, mode=mode,
                                        batch_size=batch_size)
            for _ in range(2):  # the second product through a kept graph (rev-rev)
                close(op.matmat(V.to(dtype)), H @ V, H)
        ggn = GGNOperator(model, loss_fn, x, y, params=params, batch_size=batch_size)
        for _ in range(2):
            close(ggn.matmat(V.to(dtype)), G @ V, G)
    dense = dense_hessian(model, loss_fn, x, y, params=params)
    assert dense.dtype == dtype
    torch.testing.assert_close(dense.double(), H, rtol=0, atol=rtol * float(H.abs().max()))


@pytest.mark.parametrize("case", CURVATURE_CASES)
def test_curvature_operators_match_dense_references(case):
    model, x, y, loss_fn, params = _grad_case(case)
    # uint8 class indices used to crash fwd-rev and GGN products inside torch's forward-AD
    # decomposition of nll_loss_backward ("scatter(): Expected dtype int32/int64 for index")
    _check_curvature(model.eval(), loss_fn, x, y, params, rtol=1e-10)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float16, 2e-2),
                                         (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("arch", ["mlp", "cnn-model-cl"])
def test_curvature_operators_low_precision_within_dtype_tolerance(arch, dtype, rtol):
    torch.manual_seed(2)
    x = torch.randn(B, 4) if arch == "mlp" else torch.randn(B, 3, 4, 4).contiguous(
        memory_format=CL)
    model = _mlp() if arch == "mlp" else _cnn().to(memory_format=CL)
    y = torch.randint(0, 3, (B,))
    _check_curvature(model.to(dtype), ce_sum, x.to(dtype), y, None, rtol=rtol)


def test_kept_graphs_follow_in_place_writes_to_storage_shared_by_inputs_and_targets():
    torch.manual_seed(4)
    model = _mlp(1).double()
    data = torch.randn(B, 5, dtype=D64)
    x, y = data[:, :4], data[:, 4:]
    base = torch.randn(1, 4, dtype=D64)
    xe = base.expand(B, -1)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=D64)
    names = [n for n, _ in model.named_parameters()]
    for inputs, targets, write in ((x, y, lambda: data.mul_(1.7)),
                                   (xe, y, lambda: base.add_(1.0))):
        ops = (NetworkHessianOperator(model, mse_sum, inputs, targets, mode="rev-rev"),
               GGNOperator(model, mse_sum, inputs, targets))
        for op in ops:
            op.matmat(V)  # builds the kept graph
        write()
        H, G = _reference_curvature(model, mse_sum, inputs, targets, names)
        _close(ops[0].matmat(V), H @ V)
        _close(ops[1].matmat(V), G @ V)
