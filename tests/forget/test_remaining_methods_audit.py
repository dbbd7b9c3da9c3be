"""Audit of activation reset, the pruning methods, the relabelling methods, FT, l1-sparse,
Fisher, influence and retrain on models and inputs the other test files do not use.

Each test pins a defect found in the audit (or the property that defect broke) against an
independent computation: a float64 quantile of a hand-overfitted copy for the pruning
masks, a bit-identical run with int64 labels for other label dtypes, the caller's own
state for "the input model is never modified", and the documented error types for bad
input. Models are tiny (a few hundred weights), so the file runs in a few seconds.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hand_sgd import sgd_loop
from model_state import assert_unchanged, state_copy
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fastunlearn.forget import get_method, run_method
from fastunlearn.forget.pruning import movement_masks

BIG = 1024  # a batch larger than every set: one full batch per pass

#: Settings that make every method run in well under a second.
SMALL: dict[str, dict] = {
    "finetune": {"epochs": 1},
    "random_labels": {},
    "poison_full": {"epochs": 1},
    "two_stage": {"epochs": 1},
    "selective_pruning": {"epochs": 1, "overfit_epochs": 2},
    "prune_last_layer": {"epochs": 1, "overfit_epochs": 2},
    "pruning_complex": {"epochs": 1, "overfit_epochs": 2, "retain_fraction": 0.2},
    "activation_reset": {"epochs": 1, "retain_fraction": 0.2},
    "l1_sparse": {"epochs": 1},
    "fisher": {},
    "influence": {"on_divergence": "keep"},
    "retrain": {"epochs": 1, "scheduler": "none", "milestones": ()},
}
TRAINING = sorted(set(SMALL) - {"fisher", "influence"})


def _data(n: int = 36, d: int = 5, k: int = 3, n_forget: int = 8, seed: int = 0,
          dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)
    y[n_forget:n_forget + k] = torch.arange(k)  # every class in the retain set too
    return (x[:n_forget], y[:n_forget]), (x[n_forget:], y[n_forget:])


def _images(n: int = 30, n_forget: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    y[n_forget:n_forget + 3] = torch.arange(3)
    return (x[:n_forget], y[:n_forget]), (x[n_forget:], y[n_forget:])


def _mlp(seed: int = 0, hidden: int = 8, dtype: torch.dtype = torch.float32) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, 3)).to(dtype)


def _conv_bn(seed: int = 0) -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> Dropout -> Linear head, BN statistics already warm."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(64, 3),
        )
        model.train()
        with torch.no_grad():
            model(torch.randn(16, 2, 6, 6))  # running stats away from their 0 / 1 init
    return model




# --- pruning thresholds in the weights' own precision ------------------------------------


def test_movement_masks_compare_float64_movements_with_a_float64_threshold():
    # |w_moved - w| chosen so that the float32 rounding of the exact quantile lands above
    # the entry it equals: a float32 threshold would also select that entry
    below_one = 1.0 - 2.0**-30  # rounds up to 1.0 in float32
    below_two = 2.0 - 2.0**-29  # rounds up to 2.0 in float32
    assert torch.tensor(below_one).float().double() > below_one
    assert torch.tensor(below_two).float().double() > below_two
    a = nn.Linear(2, 2, bias=False).double()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight += torch.tensor([[below_one, below_two], [3.0, 4.0]], dtype=torch.float64)
    d = (b.weight - a.weight).abs().detach()
    for q in (0.0, 1.0 / 3.0, 0.5):
        want = d < torch.quantile(d.flatten(), q)  # float64 throughout
        assert torch.equal(movement_masks(a, b, q)["weight"], want), q
    assert not movement_masks(a, b, 0.0)["weight"].any()  # quantile 0 selects nothing
    # the 1/3-quantile of 4 values is the second smallest exactly: only the smallest is below
    assert movement_masks(a, b, 1.0 / 3.0)["weight"].sum() == 1


@pytest.mark.parametrize("name", ["selective_pruning", "prune_last_layer"])
def test_float64_pruning_redraws_exactly_the_float64_quantile_mask(name):
    # float64 model and data; the forget-set copy is overfitted by the test's own SGD loop
    # (full batch; overfit_lr, overfit_epochs, Nesterov 0.9, wd 5e-4); the quantiles are
    # ranks j / (n - 1), where the threshold *is* a movement, so a float32-rounded
    # threshold would re-draw one entry too many about half the time
    forget, retain = _data(dtype=torch.float64)
    rounded_up = 0
    for seed in range(4):
        model = _mlp(seed, dtype=torch.float64)
        head_n = model[2].weight.numel()  # 24
        q = 0.0 if seed % 2 == 0 else 7.0 / (head_n - 1)
        new = run_method(name, model, forget, retain, epochs=0, overfit_epochs=3,
                         overfit_lr=0.5, quantile=q, batch_size=BIG, seed=seed)
        moved = sgd_loop(copy.deepcopy(model), *forget, lrs=[0.5] * 3, batch_size=BIG,
                         seed=seed + 1)
        names = ["2.weight"] if name == "prune_last_layer" else ["0.weight", "2.weight"]
        moved_p, new_p = dict(moved.named_parameters()), dict(new.named_parameters())
        for pname, w in model.named_parameters():
            changed = new_p[pname].detach() != w.detach()
            if pname not in names:
                assert not changed.any(), pname
                continue
            d = (moved_p[pname] - w).abs().detach()
            t = torch.quantile(d.flatten(), q)
            assert torch.equal(changed, d < t), (seed, pname)
            rounded_up += int(((d < t.float().double()) & ~(d < t)).sum())
        assert new[0].weight.dtype == torch.float64
    assert rounded_up > 0  # the float32 threshold would have differed somewhere


def test_pruning_refuses_a_diverged_overfit_copy():
    # a NaN quantile selects nothing: the method would silently collapse to fine-tuning
    forget, retain = _data()
    model = _mlp()
    state = state_copy(model)
    for name in ("selective_pruning", "pruning_complex"):
        with pytest.raises(RuntimeError, match="overfit_lr"):
            run_method(name, model, forget, retain, epochs=0, overfit_epochs=5,
                       overfit_lr=1e12, batch_size=BIG)
    assert_unchanged(model, state)


# --- label dtypes and shapes -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_other_integer_label_dtypes_give_the_int64_result(name, dtype):
    # as a tuple (converted by as_dataset) and as a TensorDataset (the training loops and
    # the Fisher pass see the raw labels batch by batch)
    forget, retain = _data()
    model = _mlp()
    want = run_method(name, model, forget, retain, seed=2, **SMALL[name])
    for wrap in (tuple, lambda pair: TensorDataset(*pair)):
        f = wrap((forget[0], forget[1].to(dtype)))
        r = wrap((retain[0], retain[1].to(dtype)))
        got = run_method(name, model, f, r, seed=2, **SMALL[name])
        assert_unchanged(got, state_copy(want))


@pytest.mark.parametrize("name", ["finetune", "two_stage", "fisher", "activation_reset"])
def test_bool_and_two_dimensional_labels_are_refused_naming_the_set(name):
    forget, retain = _data()
    model = _mlp()
    state = state_copy(model)
    with pytest.raises(TypeError, match="forget.*labels"):
        run_method(name, model, (forget[0], forget[1] > 0), retain, **SMALL[name])
    with pytest.raises(ValueError, match="retain: labels must be a 1-D"):
        run_method(name, model, forget, TensorDataset(retain[0], retain[1][:, None]),
                   **SMALL[name])
    with pytest.raises(ValueError, match="forget: labels must be a 1-D"):
        run_method(name, model, (forget[0], forget[1][:, None]), retain, **SMALL[name])
    assert_unchanged(model, state)


# --- configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,field,value,exc",
    [
        ("finetune", "lr", float("nan"), ValueError),
        ("finetune", "epochs", 2.5, TypeError),
        ("l1_sparse", "alpha", float("inf"), ValueError),
        ("two_stage", "forget_lr", float("nan"), ValueError),
        ("selective_pruning", "quantile", 1.5, ValueError),
        ("pruning_complex", "retain_lr_divisor", 0.0, ValueError),
        ("activation_reset", "toll", True, TypeError),
        ("random_labels", "other_classes", "yes", TypeError),
        ("fisher", "alpha", float("nan"), ValueError),
        ("fisher", "max_var", 0.0, ValueError),
        ("retrain", "gamma", float("nan"), ValueError),
        ("influence", "damping", float("nan"), ValueError),
    ],
)
def test_a_config_changed_after_construction_is_checked_when_the_method_runs(
    name, field, value, exc
):
    # the constructor refuses these values; assigning them afterwards must not slip through
    # (a NaN lr or alpha used to return an all-NaN model without a word)
    forget, retain = _data()
    model = _mlp()
    state = state_copy(model)
    fn, cls = get_method(name)
    config = cls(**SMALL[name])
    setattr(config, field, value)
    with pytest.raises(exc, match=field):
        fn(model, forget, retain, config)
    with pytest.raises(exc, match=field):
        run_method(name, model, forget, retain, config)
    assert_unchanged(model, state)


@pytest.mark.parametrize(
    "name,field,value,exc",
    [
        ("finetune", "gamma", True, TypeError),
        ("retrain", "gamma", True, TypeError),
        ("finetune", "milestones", 5, TypeError),
        ("retrain", "milestones", None, TypeError),
        ("retrain", "milestones", "35", TypeError),
        ("activation_reset", "reset_mlp", "no", TypeError),
        ("activation_reset", "reset_mlp", 1, TypeError),
    ],
)
def test_wrongly_typed_config_values_are_refused_naming_the_field(name, field, value, exc):
    _, cls = get_method(name)
    with pytest.raises(exc, match=field):
        cls(**{field: value})


# --- frozen parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAINING)
def test_a_model_without_trainable_parameters_is_refused(name):
    forget, retain = _data()
    model = _mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    state = state_copy(model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        run_method(name, model, forget, retain, **SMALL[name])
    assert_unchanged(model, state)


def _small_cnn(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def test_activation_reset_leaves_frozen_kernels_and_head_alone():
    # toll 0: every kernel whose forget mean exceeds the retain mean anywhere is re-drawn
    forget, retain = _images()
    kw = {"epochs": 0, "toll": 0.0, "retain_fraction": 1.0}
    trainable = _small_cnn()
    redrawn = run_method("activation_reset", trainable, forget, retain, **kw)
    assert (redrawn[0].weight != trainable[0].weight).any()  # the rule selects kernels
    assert (redrawn[3].weight != trainable[3].weight).all()  # reset_mlp re-draws the head

    frozen = _small_cnn()
    frozen[0].weight.requires_grad_(False)
    frozen[3].weight.requires_grad_(False)
    new = run_method("activation_reset", frozen, forget, retain, **kw)
    assert torch.equal(new[0].weight, frozen[0].weight)
    assert torch.equal(new[3].weight, frozen[3].weight)
    assert not new[0].weight.requires_grad and not new[3].weight.requires_grad


@pytest.mark.parametrize("name", ["selective_pruning", "pruning_complex", "finetune",
                                  "l1_sparse", "two_stage", "fisher"])
def test_frozen_layers_stay_as_they_are(name):
    forget, retain = _data()
    model = _mlp()
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    new = run_method(name, model, forget, retain, **SMALL[name])
    assert torch.equal(new[0].weight, model[0].weight)
    assert torch.equal(new[0].bias, model[0].bias)
    assert not (new[2].weight == model[2].weight).all()  # the head did change
    assert not new[0].weight.requires_grad


# --- the caller's model, gradients, buffers, mode and RNG ------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batchnorm_dropout_model_with_gradients_is_left_untouched(name):
    forget, retain = _images()
    model = _conv_bn()
    model.train()
    torch.nn.functional.cross_entropy(model(forget[0]), forget[1]).backward()
    model.eval()
    state = state_copy(model)
    grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    kw = dict(SMALL[name], seed=4)
    if name == "influence":
        kw["num_params"] = 0
    a = run_method(name, model, forget, retain, **kw)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_unchanged(model, state)  # weights and BN running statistics
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert not any(m.training for m in model.modules())
    assert not any(m.training for m in a.modules())
    # the returned model carries no gradient of its last training step
    assert all(p.grad is None for p in a.parameters())
    torch.manual_seed(12345)
    b = run_method(name, model, forget, retain, **kw)
    assert_unchanged(a, state_copy(b))
    if name in ("fisher", "influence"):  # no training: BN statistics are not re-estimated
        assert torch.equal(a[1].running_mean, model[1].running_mean)
        assert torch.equal(a[1].running_var, model[1].running_var)
        assert torch.equal(a[1].num_batches_tracked, model[1].num_batches_tracked)


def test_a_later_backward_on_the_returned_model_gives_the_plain_gradient():
    # stale .grad left by the last training step would be added to a user's gradient
    forget, retain = _data()
    new = run_method("finetune", _mlp(), forget, retain, epochs=1, batch_size=4)
    loss = torch.nn.functional.cross_entropy(new(forget[0]), forget[1])
    want = torch.autograd.grad(loss, list(new.parameters()), retain_graph=True)
    loss.backward()
    for p, g in zip(new.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["selective_pruning", "prune_last_layer", "pruning_complex",
                                  "fisher", "l1_sparse"])
def test_tied_weights_stay_tied_and_are_updated_once(name):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(5, 5)
            self.b = nn.Linear(5, 5)
            self.b.weight = self.a.weight
            self.head = nn.Linear(5, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    forget, retain = _data()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Tied()
    new = run_method(name, model, forget, retain, **SMALL[name])
    assert new.a.weight is new.b.weight
    assert model.a.weight is model.b.weight
    assert not torch.equal(new.head.weight, model.head.weight)
