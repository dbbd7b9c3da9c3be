"""Chunked loss values, loss gradients and gradient differences against plain autograd of
the summed loss over all rows at once."""

import pytest
import torch
from small_nets import ce_sum, net_data, small_net
from small_nets import same_state as _same_state
from small_nets import state_of as _state
from torch import nn

from fastunlearn.influence import gradient_difference, loss_gradient, loss_value

D64 = torch.float64
N = 11  # rows: chunks of 3 (3+3+3+2) and of 4 (4+4+3) both end with a partial chunk


def _autograd(loss, model, names):
    """Flat gradient of ``loss`` w.r.t. the named parameters, in registration order."""
    named = dict(model.named_parameters())
    ordered = [n for n in named if n in names]
    grads = torch.autograd.grad(loss, [named[n] for n in ordered])
    return torch.cat([g.reshape(-1) for g in grads])


ALL = ["0.weight", "0.bias", "2.weight", "2.bias"]
# a subset given out of registration order, by name and by parameter object
SUBSETS = [None, ["2.bias", "0.weight"]]


@pytest.mark.parametrize("params", SUBSETS)
def test_gradient_difference_over_chunks_equals_autograd_of_the_summed_difference(params):
    model = small_net()
    X, y = net_data(N)
    gen = torch.Generator().manual_seed(2)
    X_new = X + 0.3 * torch.randn(X.shape, generator=gen, dtype=D64)  # new features
    y_new = (y + 1 + torch.randint(0, 2, y.shape, generator=gen)) % 3  # every label changes
    assert bool((y_new != y).all())
    names = ALL if params is None else params
    expected = _autograd(ce_sum(model(X_new), y_new) - ce_sum(model(X), y), model, names)
    state = _state(model)
    G = gradient_difference(model, ce_sum, X, y, X_new, y_new, params=params, chunk_size=3)
    assert G.shape == expected.shape and G.dtype == D64
    torch.testing.assert_close(G, expected, rtol=1e-12, atol=1e-13)
    assert _same_state(model, state) and all(p.grad is None for p in model.parameters())


def test_gradient_difference_with_parameter_objects_selects_the_same_parameters():
    model = small_net()
    X, y = net_data(N)
    y_new = (y + 1) % 3
    expected = _autograd(ce_sum(model(X), y_new) - ce_sum(model(X), y), model,
                         ["0.weight", "2.bias"])
    G = gradient_difference(model, ce_sum, X, y, X, y_new, params=[model[2].bias,
                                                                   model[0].weight],
                            chunk_size=3)
    torch.testing.assert_close(G, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("params", SUBSETS)
def test_loss_gradient_over_chunks_equals_autograd_of_the_summed_loss(params):
    model = small_net()
    X, y = net_data(N)
    names = ALL if params is None else params
    expected = _autograd(ce_sum(model(X), y), model, names)
    state = _state(model)
    g = loss_gradient(model, ce_sum, X, y, params=params, chunk_size=4)
    assert g.shape == expected.shape and g.dtype == D64
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-13)
    assert _same_state(model, state) and all(p.grad is None for p in model.parameters())


def test_loss_gradient_is_taken_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3),
                          nn.Dropout(0.5)).double()
    X, y = net_data(N)
    model.train()
    model(X)  # non-trivial running statistics
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    names = [n for n, _ in model.named_parameters()]
    expected = _autograd(ce_sum(model.eval()(X), y), model, names)  # no dropout, running BN
    model.train()
    g = loss_gradient(model, ce_sum, X, y, chunk_size=4)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-13)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    # the train-mode gradient (dropout, batch statistics) is a different vector
    train_mode = _autograd(ce_sum(model(X), y), model, names)
    assert not torch.allclose(g, train_mode, rtol=1e-3, atol=1e-6)


def test_loss_value_over_chunks_equals_the_summed_loss():
    model = small_net()
    X, y = net_data(N)
    with torch.no_grad():
        expected = float(ce_sum(model(X), y))
    assert loss_value(model, ce_sum, X, y, chunk_size=4) == pytest.approx(expected, rel=1e-13)
    assert loss_value(model, ce_sum, X, y, chunk_size=None) == pytest.approx(expected, rel=1e-13)


def test_loss_value_with_replaced_parameters_equals_the_loss_of_a_modified_copy():
    model = small_net()
    X, y = net_data(N)
    state = _state(model)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(model[2].weight.shape, generator=gen, dtype=D64)
    b = torch.randn(model[2].bias.shape, generator=gen, dtype=D64)
    other = small_net()
    with torch.no_grad():
        other[2].weight.copy_(w)
        other[2].bias.copy_(b)
        expected = float(ce_sum(other(X), y))
        unchanged = float(ce_sum(model(X), y))
    got = loss_value(model, ce_sum, X, y, names=["2.weight", "2.bias"], values=[w, b],
                     chunk_size=4)
    assert got == pytest.approx(expected, rel=1e-13)
    assert abs(expected - unchanged) > 1e-3 * abs(unchanged)  # the replacement matters
    assert _same_state(model, state)
