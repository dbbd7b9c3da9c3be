"""influence_update warns about solver settings the order or solver does not read (they
were silently ignored), and the experiments pass only the settings that act."""

import warnings

import pytest
import torch
from torch import nn

from fastunlearn.influence import influence_update


def _problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, X, y


def _warnings(**kwargs):
    model, X, y = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        influence_update(model, X[:2], y[:2], X[:2], (y[:2] + 1) % 3, train_data=(X, y),
                         apply=False, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(order=1, tau=0.01, damping=0.1, tol=1e-3),
     "'damping' and 'tol' have no effect with order=1 (for the second-order solve)"),
    (dict(order=1, tau=0.01, solver="direct", restarts=1),
     "'solver' and 'restarts' have no effect with order=1"),
    (dict(order=2, solver="lissa", damping=0.1, maxiter=5),
     "'damping' and 'maxiter' have no effect with solver='lissa'"),
    (dict(order=1, tau=0.01, curvature_subsample=10),
     "'curvature_subsample' has no effect with order=1"),
    (dict(order=2, solver="direct", damping=0.1, tol=1e-8),
     "'tol' has no effect with solver='direct' (one dense solve: no iterations)"),
])
def test_unread_solver_settings_are_warned_about(kwargs, expected):
    messages = _warnings(**kwargs)
    assert any(m.startswith(expected) for m in messages), messages


@pytest.mark.parametrize("kwargs", [
    dict(order=2, solver="cg", damping=0.1, tol=1e-8, maxiter=50, restarts=1,
         curvature_subsample=20),
    dict(order=2, solver="direct", damping=0.1, curvature_subsample=20),
    dict(order=1, tau=0.01, solver="cg", damping=0.0, tol=1e-6),  # the defaults: not named
])
def test_settings_that_act_or_are_defaults_are_not_named(kwargs):
    assert _warnings(**kwargs) == []


@pytest.mark.parametrize("solver", ["cg", "lissa", "direct"])
def test_the_forget_influence_method_passes_only_what_its_solver_reads(solver):
    from fastunlearn.forget import run_method

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(40, 1, 4, 4)
    y = torch.randint(0, 3, (40,))
    forget = torch.utils.data.TensorDataset(x[:5], y[:5])
    retain = torch.utils.data.TensorDataset(x[5:], y[5:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_method("influence", model, forget, retain, solver=solver)
    assert not [w for w in caught if "has no effect" in str(w.message)
                or "have no effect" in str(w.message)]
