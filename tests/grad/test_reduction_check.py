"""A scalar loss that reduces the batch other than declared is refused, not scaled silently.

Declaring ``loss_reduction="sum"`` for a mean-reduced loss made every per-sample gradient
B times too small (and the opposite B times too large), with nothing to show for it.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastunlearn.grad import PerSampleGradients
from fastunlearn.grad.reduction import check_declared_reduction

B = 5


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(B, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (B,))
    return model, x, y


def _loop_sq_norms(model, x, y):
    """||grad l_b||^2 of the per-row cross-entropy, one backward per row."""
    out = []
    for b in range(x.shape[0]):
        loss = F.cross_entropy(model(x[b:b + 1]), y[b:b + 1], reduction="sum")
        grads = torch.autograd.grad(loss, list(model.parameters()))
        out.append(sum(g.pow(2).sum() for g in grads))
    return torch.stack(out)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("declared, loss_fn, says", [
    ("sum", nn.CrossEntropyLoss(), "averages"),
    ("sum", lambda o, t: F.cross_entropy(o, t), "averages"),
    ("sum", nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)),
     "averages"),
    ("mean", nn.CrossEntropyLoss(reduction="sum"), "sums"),
    ("mean", lambda o, t: F.nll_loss(F.log_softmax(o, 1), t, reduction="sum"), "sums"),
])
def test_mismatched_reduction_is_refused_and_nothing_changes(declared, loss_fn, says):
    model, x, y = _model_and_batch()
    before = _state(model)
    engine = PerSampleGradients(model, loss_reduction=declared)
    for method in (engine.sq_norms, engine.per_sample,
                   lambda *a: engine.clipped_sum(*a, max_norm=1.0)):
        with pytest.raises(ValueError, match=f"loss_reduction: declared '{declared}'.*{says}"):
            method(x, y, loss_fn)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("declared, loss_fn", [
    ("sum", nn.CrossEntropyLoss(reduction="sum")),
    ("mean", nn.CrossEntropyLoss()),
    ("mean", nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))),
])
def test_matching_reduction_gives_the_per_row_gradients(declared, loss_fn):
    model, x, y = _model_and_batch()
    got = PerSampleGradients(model, loss_reduction=declared).sq_norms(x, y, loss_fn)
    if getattr(loss_fn, "weight", None) is not None:
        # a weighted mean divides by the batch's summed weights, not by B
        w = loss_fn.weight[y]
        got = got * (w.sum() / B) ** 2 / w ** 2
    torch.testing.assert_close(got, _loop_sq_norms(model, x, y), rtol=1e-10, atol=1e-12)


def test_losses_the_check_cannot_judge_are_left_alone():
    model, x, y = _model_and_batch()
    engine = PerSampleGradients(model, loss_reduction="sum")
    want = _loop_sq_norms(model, x, y)

    # a per-row loss vector is unambiguous
    per_row = engine.sq_norms(x, y, lambda o, t: F.cross_entropy(o, t, reduction="none"))
    torch.testing.assert_close(per_row, want, rtol=1e-10, atol=1e-12)

    # a sum plus a constant neither doubles nor stays for a duplicated row
    shifted = engine.sq_norms(x, y, lambda o, t: F.cross_entropy(o, t, reduction="sum") + 3.0)
    torch.testing.assert_close(shifted, want, rtol=1e-10, atol=1e-12)

    # targets the loss ignores (None) are fine; a loss that is zero on a row is not judged
    engine.sq_norms(x, None, lambda o, t: o.pow(2).sum())
    engine.sq_norms(x, y, lambda o, t: 0.0 * o.sum())


def test_helper_directly():
    out = torch.randn(3, 2, dtype=torch.float64)
    t = torch.randn(3, 2, dtype=torch.float64)
    check_declared_reduction(F.mse_loss, out, t, 3, "mean")
    with pytest.raises(ValueError, match="declared 'sum'"):
        check_declared_reduction(F.mse_loss, out, t, 3, "sum")
    # outputs without the batch first, or targets of another length: not checked
    check_declared_reduction(F.mse_loss, out.T, t.T, 3, "sum")
    check_declared_reduction(F.mse_loss, out, t[:2], 3, "sum")
    # a loss that cannot take one row is not checked
    def needs_two(o, tt):
        if o.shape[0] < 3:
            raise RuntimeError("needs the whole batch")
        return F.mse_loss(o, tt)

    check_declared_reduction(needs_two, out, t, 3, "sum")
