"""The "influence" forgetting method against a dense Newton step and on real digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastunlearn.forget import get_method, run_method
from fastunlearn.forget.influence_method import InfluenceConfig, weighted_loss
from fastunlearn.harness import TrainSettings, train_model
from fastunlearn.models import build_model


def _problem(seed: int = 0) -> tuple[nn.Module, tuple, tuple]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = (x @ w + 0.5 * torch.randn(60, 3, generator=g, dtype=torch.float64)).argmax(1)
    model = nn.Linear(5, 3).double()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, reduction="sum") \
            + 0.05 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model, (x[:8], y[:8]), (x[8:], y[8:])


def test_registered_with_its_config() -> None:
    fn, cls = get_method("influence")
    assert cls is InfluenceConfig
    assert callable(fn)


def test_step_equals_dense_newton_step_on_the_retain_hessian() -> None:
    model, forget, retain = _problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lam = 0.3
    new = run_method("influence", model, forget, retain, num_params=0, damping=lam,
                     tol=1e-12, maxiter=500, loss_tolerance=1e9)
    # independent: theta + (H_R + lam I)^{-1} sum_F grad l, with a dense autograd Hessian
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])

    def loss_at(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        W, b = t[:15].view(3, 5), t[15:]
        return F.cross_entropy(x @ W.T + b, y, reduction="sum")

    H = torch.autograd.functional.hessian(lambda t: loss_at(t, *retain), theta)
    g = torch.autograd.functional.jacobian(lambda t: loss_at(t, *forget), theta)
    expected = theta + torch.linalg.solve(H + lam * torch.eye(18, dtype=H.dtype), g)
    got = torch.cat([new.weight.detach().flatten(), new.bias.detach()])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)
    assert new.unlearning_info["applied"] is True
    for k, v in model.state_dict().items():  # the input model is unchanged
        assert torch.equal(v, before[k])


def test_scale_multiplies_the_step() -> None:
    model, forget, retain = _problem(1)
    one = run_method("influence", model, forget, retain, num_params=0, tol=1e-12,
                     maxiter=500, loss_tolerance=1e9)
    half = run_method("influence", model, forget, retain, num_params=0, tol=1e-12,
                      maxiter=500, loss_tolerance=1e9, scale=0.5)
    step_one = one.weight.detach() - model.weight.detach()
    step_half = half.weight.detach() - model.weight.detach()
    torch.testing.assert_close(step_half, 0.5 * step_one, rtol=1e-6, atol=1e-10)


def test_weighted_loss_is_a_weighted_summed_cross_entropy() -> None:
    z = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    w = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    ce = F.cross_entropy(z, y, reduction="none")
    expected = (w * ce).sum()
    got = weighted_loss(z, torch.stack([y.double(), w], 1))
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_forgets_a_digit_class_with_the_head_only() -> None:
    from fastunlearn.data import load_digits_dataset

    split = load_digits_dataset(normalize=False, dtype=torch.float32)
    x = split.X_train.view(-1, 1, 8, 8) / 16
    y = split.y_train
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, side=8)
    train_model(model, x, y, TrainSettings(epochs=30), seed=0)  # the harness's recipe
    f = y == 3
    new = run_method("influence", model, (x[f], y[f]), (x[~f], y[~f]))

    def acc(m: nn.Module, mask: torch.Tensor) -> float:
        with torch.no_grad():
            return float((m.eval()(x[mask]).argmax(1) == y[mask]).float().mean())

    assert acc(model, f) > 0.9
    assert acc(new, f) < 0.2  # the class is forgotten ...
    assert acc(new, ~f) > 0.95  # ... and the other classes are kept
    # only the head (last two tensors) moved
    names = [n for n, _ in model.named_parameters()]
    old, upd = dict(model.named_parameters()), dict(new.named_parameters())
    for n in names[:-2]:
        assert torch.equal(old[n], upd[n])
    assert not torch.equal(old[names[-1]], upd[names[-1]])


@pytest.mark.parametrize("field,value", [("solver", "newton"), ("curvature", "fisher"),
                                         ("damping", -1.0), ("num_params", -1),
                                         ("retain_fraction", 0.0),
                                         ("on_divergence", "ignore")])
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        InfluenceConfig(**{field: value})


def test_divergence_raises_or_keeps_the_model() -> None:
    model, forget, retain = _problem(2)
    # a 1e6-fold step grows the retain loss far beyond the tolerance: divergence
    with pytest.raises(RuntimeError, match="diverged"):
        run_method("influence", model, forget, retain, num_params=0, damping=1e-12,
                   loss_tolerance=0.0, tol=1e-12, maxiter=500, scale=1.0,
                   retain_fraction=0.1)
    kept = run_method("influence", model, forget, retain, num_params=0, damping=1e-12,
                      loss_tolerance=0.0, tol=1e-12, maxiter=500, retain_fraction=0.1,
                      on_divergence="keep")
    assert torch.equal(kept.weight, model.weight)
    assert kept.unlearning_info["diverged"] is True
