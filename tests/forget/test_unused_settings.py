"""Settings a method does not use warn; a ``num_params`` the model cannot give is refused.

Fisher forgetting and influence unlearning do not train, the Adam-based methods take no
``momentum`` and LiSSA ignores ``damping``, ``tol`` and ``maxiter``: each set to another
value than its default gives a UserWarning naming it, once per config (the methods' own
re-check of the config does not repeat it).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_problem import tiny_forget_retain, tiny_linear
from torch import nn

from fastunlearn.forget import (
    AntiSampleConfig,
    BadTeacherConfig,
    UnsirConfig,
    available_methods,
    get_method,
    run_method,
)
from fastunlearn.forget.base import unused_field_messages, unused_fields
from fastunlearn.forget.fisher import FisherConfig
from fastunlearn.forget.influence_method import InfluenceConfig

FISHER_WHY = r"\(Fisher forgetting does not train: it only adds noise to the weights\)"
INFLUENCE_WHY = r"\(influence unlearning does not train: it takes one Newton step\)"
LISSA_WHY = (r"\(LiSSA runs with its reference settings: 100 steps over batches of 1024 "
             r"retain rows, damped by d\*s = 1e-4 \* 2e5 = 20 relative to a batch's summed "
             r"Hessian\)")


def _mlp() -> nn.Module:
    """Two linear layers: 4 trainable parameter tensors."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _user_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


# --- defaults and used fields are silent ---------------------------------------------------


@pytest.mark.parametrize("name", available_methods())
def test_default_configs_do_not_warn(name: str) -> None:
    _, cls = get_method(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls()


def test_fields_the_method_uses_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BadTeacherConfig(epochs=3, lr=1e-3, weight_decay=1e-4)
        UnsirConfig(epochs=2, lr=0.1, weight_decay=1e-4)
        AntiSampleConfig(epochs=2, lr=1e-2, weight_decay=1e-4)
        FisherConfig(alpha=1e-4, batch_size=8)
        InfluenceConfig(damping=5.0, tol=1e-6, maxiter=9)  # CG uses all three
        InfluenceConfig(solver="direct", damping=5.0)


# --- fields a method ignores ---------------------------------------------------------------


@pytest.mark.parametrize(("cls", "field", "value", "why"), [
    (FisherConfig, "epochs", 3, FISHER_WHY),
    (FisherConfig, "lr", 0.5, FISHER_WHY),
    (FisherConfig, "momentum", 0.5, FISHER_WHY),
    (FisherConfig, "weight_decay", 0.0, FISHER_WHY),
    (FisherConfig, "scheduler", "cosine", FISHER_WHY),
    (FisherConfig, "milestones", (2,), FISHER_WHY),
    (FisherConfig, "gamma", 0.5, FISHER_WHY),
    (InfluenceConfig, "epochs", 3, INFLUENCE_WHY),
    (InfluenceConfig, "lr", 0.5, INFLUENCE_WHY),
    (InfluenceConfig, "momentum", 0.0, INFLUENCE_WHY),
    (InfluenceConfig, "weight_decay", 0.0, INFLUENCE_WHY),
    (AntiSampleConfig, "momentum", 0.5,
     r"\(anti-sample fine-tuning trains with Adam, at its default betas\)"),
    (BadTeacherConfig, "momentum", 0.5,
     r"\(Bad Teacher distillation trains with Adam, at its default betas\)"),
    (UnsirConfig, "momentum", 0.5,
     r"\(UNSIR impairs and repairs with Adam, at its default betas\)"),
])
def test_an_unused_field_set_to_another_value_warns(cls, field, value, why) -> None:
    with pytest.warns(UserWarning, match=rf"^'{field}' has no effect {why}$"):
        cls(**{field: value})


def test_fisher_nesterov_off_warns_with_momentum_zero() -> None:
    with pytest.warns(UserWarning,
                      match=rf"^'momentum' and 'nesterov' have no effect {FISHER_WHY}$"):
        FisherConfig(momentum=0.0, nesterov=False)


def test_unused_fields_are_named_in_one_warning() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        FisherConfig(lr=0.5, epochs=3, gamma=0.5)
    assert _user_warnings(record) == [
        "'epochs', 'lr' and 'gamma' have no effect (Fisher forgetting does not train: it only "
        "adds noise to the weights)"]


def test_unused_field_helpers() -> None:
    cfg = InfluenceConfig(damping=2.0)
    assert unused_fields(cfg) == []
    with pytest.warns(UserWarning):
        cfg = InfluenceConfig(lr=0.5, epochs=1)
    assert unused_fields(cfg) == ["epochs", "lr"]
    # named fields: even at their default value (what ``forget --set`` gives)
    assert unused_field_messages(FisherConfig, ["batch_size", "epochs"]) == [
        "'epochs' has no effect (Fisher forgetting does not train: it only adds noise to the "
        "weights)"]
    with pytest.raises(TypeError, match="'names' is needed"):
        unused_field_messages(FisherConfig)


def test_run_method_warns_once_and_the_setting_changes_nothing() -> None:
    forget, retain = tiny_forget_retain()
    model = tiny_linear()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        a = run_method("fisher", model, forget, retain, epochs=30, lr=9.0)
    # built once by run_method, re-checked by the method: one warning
    assert _user_warnings(record) == [
        "'epochs' and 'lr' have no effect (Fisher forgetting does not train: it only adds "
        "noise to the weights)"]
    b = run_method("fisher", model, forget, retain)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_a_field_changed_after_construction_warns_when_the_method_runs() -> None:
    forget, retain = tiny_forget_retain()
    cfg = FisherConfig()
    cfg.lr = 0.3
    with pytest.warns(UserWarning, match=rf"^'lr' has no effect {FISHER_WHY}$"):
        run_method("fisher", tiny_linear(), forget, retain, config=cfg)


# --- LiSSA and the direct solver -----------------------------------------------------------


def test_lissa_names_the_settings_it_ignores() -> None:
    with pytest.warns(UserWarning, match=rf"^'damping', 'tol' and 'maxiter' have no effect "
                                         rf"with solver='lissa' {LISSA_WHY}$"):
        InfluenceConfig(solver="lissa", damping=1e6, tol=1e-8, maxiter=3)
    with pytest.warns(UserWarning, match=r"^'damping' has no effect with solver='lissa' "):
        InfluenceConfig(solver="lissa", damping=0.5)


def test_direct_names_the_cg_settings() -> None:
    with pytest.warns(UserWarning, match=r"^'tol' and 'maxiter' have no effect with "
                                         r"solver='direct' \(the direct solver solves the damped "
                                         r"system with one dense factorisation"):
        InfluenceConfig(solver="direct", tol=1e-9, maxiter=4)


def test_lissa_damping_changes_nothing_and_warns_once_per_run() -> None:
    forget, retain = tiny_forget_retain()
    model = tiny_linear()
    steps = []
    for damping in (1.0, 1e6):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            new = run_method("influence", model, forget, retain, solver="lissa",
                             damping=damping, on_divergence="keep")
        expected = [] if damping == 1.0 else [
            "'damping' has no effect with solver='lissa' (LiSSA runs with its reference "
            "settings: 100 steps over batches of 1024 retain rows, damped by d*s = 1e-4 * 2e5 "
            "= 20 relative to a batch's summed Hessian)"]
        assert _user_warnings(record) == expected
        steps.append(new.weight.detach() - model.weight.detach())
    assert torch.equal(steps[0], steps[1])


# --- num_params ----------------------------------------------------------------------------


def test_num_params_above_the_models_tensors_is_refused_and_the_model_kept() -> None:
    forget, retain = tiny_forget_retain()
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^'num_params' must be <= 4 \(the model's trainable "
                                         r"parameter tensors; 0 updates all of them\), got 99$"):
        run_method("influence", model, forget, retain, num_params=99)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_num_params_counts_only_trainable_tensors() -> None:
    forget, retain = tiny_forget_retain()
    model = _mlp()
    model[0].bias.requires_grad_(False)  # 3 trainable tensors left
    with pytest.raises(ValueError, match=r"^'num_params' must be <= 3 .* got 4$"):
        run_method("influence", model, forget, retain, num_params=4)


@pytest.mark.parametrize("num_params", [0, 4])
def test_num_params_zero_or_all_tensors_runs(num_params: int) -> None:
    forget, retain = tiny_forget_retain()
    model = _mlp().double()
    forget, retain = (forget[0].double(), forget[1]), (retain[0].double(), retain[1])
    new = run_method("influence", model, forget, retain, num_params=num_params,
                     on_divergence="keep")
    assert new.unlearning_info["num_params"] == sum(p.numel() for p in model.parameters())
