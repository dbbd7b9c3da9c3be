"""December 2 audit of the per-sample gradient engine: regressions."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastunlearn.grad import FunctorchRule, PerSampleGradients, find_rule

B = 4


def ce_sum(out, y):
    return F.cross_entropy(out, y, reduction="sum")


def loop_per_sample(model, x, y, names):
    """Per-sample gradients of the summed loss by one autograd call per sample."""
    params = dict(model.named_parameters())
    rows = {n: [] for n in names}
    for b in range(x.shape[0]):
        loss = ce_sum(model(x[b:b + 1]), y[b:b + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        for n, g in zip(names, grads, strict=True):
            rows[n].append(g)
    return {n: torch.stack(v) for n, v in rows.items()}


def assert_all_quantities_match(model, x, y):
    eng = PerSampleGradients(model)
    ref = loop_per_sample(model, x, y, eng.param_names)
    got = eng.per_sample(x, y, ce_sum)
    for n in eng.param_names:
        torch.testing.assert_close(got[n], ref[n])
    torch.testing.assert_close(
        eng.sq_norms(x, y, ce_sum), sum(g.flatten(1).pow(2).sum(1) for g in ref.values())
    )


class KeywordRMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.norm, self.head = nn.Linear(3, 6), nn.RMSNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.norm(x=self.lin(x)))  # nn.RMSNorm.forward(x), by keyword


def test_rmsnorm_called_with_its_keyword_argument():
    # The rule read the input as kwargs["input"]: a KeyError for nn.RMSNorm(x=...).
    model = KeywordRMSNorm().double()
    with torch.no_grad():
        model.norm.weight.add_(torch.randn(6, dtype=torch.float64))
    x, y = torch.randn(B, 3, dtype=torch.float64), torch.randint(0, 3, (B,))
    assert_all_quantities_match(model, x, y)


def _old_weight_norm(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still widely used
        return nn.utils.weight_norm(module)


@pytest.mark.parametrize("kind", ["linear", "conv", "spectral"])
def test_reparametrised_weights_get_their_gradients(kind):
    # weight_norm / spectral_norm (hook-based) replace `weight` by weight_g/weight_v or
    # weight_orig on a module of the same type: the native rule ignored them (zero gradients).
    if kind == "conv":
        layer = _old_weight_norm(nn.Conv2d(2, 3, 3))
        model = nn.Sequential(layer, nn.Flatten(), nn.Linear(12, 3))
        x = torch.randn(B, 2, 4, 4, dtype=torch.float64)
    else:
        layer = (_old_weight_norm(nn.Linear(5, 3)) if kind == "linear"
                 else nn.utils.spectral_norm(nn.Linear(5, 3)))
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), layer)
        x = torch.randn(B, 4, dtype=torch.float64)
    model = model.double().eval()  # spectral_norm: no power iteration in eval mode
    assert find_rule(layer) is None  # the torch.func fallback differentiates its forward
    assert_all_quantities_match(model, x, torch.randint(0, 3, (B,)))


def test_plain_layers_keep_their_native_rules():
    for module in (nn.Linear(2, 2), nn.Linear(2, 2, bias=False), nn.Conv2d(2, 2, 1, bias=False),
                   nn.Embedding(3, 2), nn.LayerNorm(2, bias=False), nn.RMSNorm(2)):
        rule = find_rule(module)
        assert rule is not None and not isinstance(rule, FunctorchRule)


@pytest.mark.parametrize("norm, train", [
    (lambda: nn.BatchNorm2d(3, affine=False), True),
    (lambda: nn.BatchNorm2d(3).requires_grad_(False), True),
    (lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False), False),
])
def test_batch_statistics_after_a_selected_layer_are_refused(norm, train):
    # A batch-norm layer with no selected parameters was never checked: it mixes the samples,
    # and the layers before it got wrong per-sample gradients without any error.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), norm(), nn.Flatten(), nn.Linear(12, 3)).double()
    model.train(train)
    x, y = torch.randn(B, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    eng = PerSampleGradients(model)
    with pytest.raises(ValueError, match="batch-norm layer '1' normalises with the statistics"):
        eng.sq_norms(x, y, ce_sum)


def test_batch_statistics_before_every_selected_layer_are_allowed():
    # Only the head is selected: its per-sample gradients are those of the batch's forward.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 3)).double().train()
    x, y = torch.randn(B, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (B,))
    eng = PerSampleGradients(model, params=["4.weight", "4.bias"])
    got = eng.per_sample(x, y, ce_sum)
    losses = F.cross_entropy(model(x), y, reduction="none")
    for name, p in (("4.weight", model[4].weight), ("4.bias", model[4].bias)):
        ref = torch.stack([torch.autograd.grad(losses[b], p, retain_graph=True)[0]
                           for b in range(B)])
        torch.testing.assert_close(got[name], ref)


def test_parameters_frozen_after_construction_are_refused():
    # They got zero per-sample gradients when their whole layer was frozen, their true ones
    # when the layer had another trainable parameter.
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    eng = PerSampleGradients(model)
    model[0].requires_grad_(False)
    x, y = torch.randn(B, 4), torch.randint(0, 3, (B,))
    with pytest.raises(ValueError, match=r"params: \['0.weight', '0.bias'\] no longer require"):
        eng.per_sample(x, y, ce_sum)
    model[0].requires_grad_(True)
    assert eng.sq_norms(x, y, ce_sum).shape == (B,)


def test_a_new_style_weight_norm_layer_is_refused_by_name():
    # was "layer '2.parametrizations.weight' has no tensor argument with the batch", at
    # the first call
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    parametrizations.weight_norm(model[2])
    with pytest.raises(ValueError, match=r"'2\.parametrizations\.weight\.original0' belongs "
                                         r"to a parametrization of layer '2'"):
        PerSampleGradients(model)
    engine = PerSampleGradients(model, params=["0.weight", "0.bias", "2.bias"])
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    loss = nn.CrossEntropyLoss(reduction="sum")
    got = engine.sq_norms(x, y, loss)
    want = []
    for i in range(6):
        g = torch.autograd.grad(loss(model(x[i:i + 1]), y[i:i + 1]),
                                [model[0].weight, model[0].bias, model[2].bias])
        want.append(sum(t.square().sum() for t in g))
    torch.testing.assert_close(got, torch.stack(want))
