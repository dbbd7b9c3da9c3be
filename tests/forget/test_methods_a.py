"""Forgetta's forgetting methods on the embedded digits, judged against a retrained oracle.

One small CNN is trained once per session on digits; the forget set is every training
image of class 3, the retain set the rest. The oracle is the ``retrain`` method itself
(re-initialised and trained on the retain set only). Each method runs with few epochs and
must move the forget accuracy toward the oracle's by a stated amount while the retain
accuracy stays within a stated margin of the original model's.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from model_state import assert_unchanged, state_copy
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

import fastunlearn.forget as forget_api
from fastunlearn.data import digits_images
from fastunlearn.forget import available_methods, get_method, run_method
from fastunlearn.models.zoo import small_cnn

FORGET_CLASS = 3

#: Every method this module family registers.
FORGETA_METHODS = {
    "activation_reset",
    "finetune",
    "fisher",
    "l1_sparse",
    "neggrad",
    "neggrad_plus",
    "poison_full",
    "prune_last_layer",
    "pruning_complex",
    "random_labels",
    "retrain",
    "selective_pruning",
    "two_stage",
}

#: method -> (config overrides for a seconds-long run on digits,
#:            minimum move of the forget accuracy toward the oracle's,
#:            allowed drop of the retain accuracy below the original model's)
SETTINGS: dict[str, tuple[dict, float, float]] = {
    # Fine-tuning forgets a class slowly: published class-wise FT keeps ~77 % forget
    # accuracy on CIFAR-10 (Unlearn-Sparse, UA 22.53), so only a modest move is required.
    "finetune": ({"lr": 0.1, "epochs": 5}, 0.1, 0.03),
    "l1_sparse": ({"lr": 0.05, "epochs": 3, "alpha": 1e-3}, 0.2, 0.03),
    "neggrad_plus": ({"lr": 0.01, "epochs": 3, "beta": 0.9}, 0.5, 0.03),
    "random_labels": ({"lr": 1e-3, "epochs": 3}, 0.3, 0.04),
    "poison_full": ({"lr": 0.02, "epochs": 2}, 0.5, 0.03),
    "two_stage": ({"lr": 0.01, "epochs": 2}, 0.5, 0.03),
    # quantile 0.6-0.8 instead of the published 0.3: with 3-5 fine-tuning epochs on tiny
    # digits, re-drawing 30 % of the weights is repaired before the class is forgotten.
    "selective_pruning": (
        {"lr": 0.03, "epochs": 5, "overfit_epochs": 3, "quantile": 0.6},
        0.5,
        0.03,
    ),
    "prune_last_layer": (
        {"lr": 0.05, "epochs": 3, "overfit_epochs": 3, "quantile": 0.8},
        0.5,
        0.03,
    ),
    "pruning_complex": (
        {
            # lr 0.1 was seed- and machine-sensitive (retain accuracy 0.11 .. 0.96 over the
            # seeds 0..3 on an AMD EPYC, the test's seed 0 at 0.90); at 0.05: 0.984 .. 0.996
            "lr": 0.05,
            "epochs": 5,
            "overfit_epochs": 3,
            "quantile": 0.7,
            "retain_fraction": 0.05,
        },
        0.5,
        0.03,
    ),
    "activation_reset": ({"lr": 0.01, "epochs": 3, "retain_fraction": 0.1}, 0.5, 0.05),
    "fisher": ({"alpha": 1e-4, "max_var": 1e-2}, 0.5, 0.03),
}

#: Methods whose outcome on this small problem turns on the seed (and on the machine's float
#: rounding): run with each of these seeds, the run of median forget accuracy is judged.
#: pruning_complex, seed 0, forget accuracy: 0.0 on one AMD EPYC, 0.507 on another (seeds
#: 1-3: 0.0 on both); a method that forgets in most seeds passes on every machine.
SEEDS: dict[str, tuple[int, ...]] = {"pruning_complex": (0, 1, 2)}


#: Gradient ascent has no anchor: one epoch past the point where the forget class falls, the
#: other classes collapse too (where exactly moves with the torch version), so it is stopped
#: early, as a user would stop it: see ``test_neggrad_forgets_the_class_before_the_others``.
NEGGRAD = {"lr": 5e-3, "batch_size": 32}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    model.train(was)
    return acc


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model




def make_digits() -> SimpleNamespace:
    """Train a small CNN on 80 % of digits; forget = class 3; retrain the oracle."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x, y = digits_images()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        test, train = perm[:360], perm[360:]
        xt, yt = x[train], y[train]
        is_f = yt == FORGET_CLASS
        forget = (xt[is_f], yt[is_f])
        retain = (xt[~is_f], yt[~is_f])
        model = _fit(small_cnn(), xt, yt, epochs=10, seed=0)
        oracle = run_method(
            "retrain", model, forget, retain, epochs=10, lr=0.05, nesterov=False, scheduler="none"
        )
    ns = SimpleNamespace(
        model=model, forget=forget, retain=retain, test=(x[test], y[test]), oracle=oracle
    )
    ns.forget_acc = _accuracy(model, *forget)
    ns.retain_acc = _accuracy(model, *retain)
    ns.oracle_forget = _accuracy(oracle, *forget)
    ns.oracle_retain = _accuracy(oracle, *retain)
    return ns


@pytest.fixture(scope="session")
def digits() -> SimpleNamespace:
    """The session's trained model, forget/retain sets and oracle (:func:`make_digits`)."""
    return make_digits()


def test_fixture_is_meaningful(digits):
    # the original model knows the class, the oracle never saw it
    assert digits.forget_acc > 0.95 and digits.retain_acc > 0.95
    assert digits.oracle_forget < 0.05
    assert digits.oracle_retain > 0.9


def test_every_forgeta_method_is_registered_and_tested():
    assert FORGETA_METHODS <= set(available_methods())
    assert set(SETTINGS) | {"neggrad"} == FORGETA_METHODS - {"retrain"}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_method_moves_forget_accuracy_toward_oracle(digits, name):
    overrides, min_move, retain_margin = SETTINGS[name]
    before = state_copy(digits.model)
    runs = []
    for seed in SEEDS.get(name, (None,)):
        seeded = overrides if seed is None else {**overrides, "seed": seed}
        new = run_method(name, digits.model, digits.forget, digits.retain, **seeded)
        assert_unchanged(digits.model, before)
        assert new is not digits.model
        runs.append((_accuracy(new, *digits.forget), _accuracy(new, *digits.retain)))
    f_new, r_new = sorted(runs)[len(runs) // 2]  # the run of median forget accuracy
    gap_before = abs(digits.forget_acc - digits.oracle_forget)
    gap_after = abs(f_new - digits.oracle_forget)
    assert gap_after <= gap_before - min_move, (name, f_new, r_new)
    assert r_new >= digits.retain_acc - retain_margin, (name, f_new, r_new)


def test_neggrad_forgets_the_class_before_the_others(digits):
    # stopped at the first epoch count whose forget accuracy has fallen by 0.2: by then the
    # retain accuracy has moved little (the collapse of every class comes an epoch later)
    before = state_copy(digits.model)
    for epochs in range(1, 16):
        new = run_method("neggrad", digits.model, digits.forget, digits.retain,
                         epochs=epochs, **NEGGRAD)
        f_new = _accuracy(new, *digits.forget)
        if f_new <= digits.forget_acc - 0.2:
            break
    else:
        pytest.fail(f"neggrad never moved the forget accuracy (last {f_new})")
    assert_unchanged(digits.model, before)
    r_new = _accuracy(new, *digits.retain)
    assert r_new >= digits.retain_acc - 0.06, (epochs, f_new, r_new)
    # and ascent goes on: more epochs push the forget accuracy down to the oracle's
    more = run_method("neggrad", digits.model, digits.forget, digits.retain,
                      epochs=epochs + 1, **NEGGRAD)
    assert _accuracy(more, *digits.forget) <= max(f_new, digits.oracle_forget + 0.05)


@pytest.mark.parametrize("name", ["random_labels", "fisher", "two_stage"])
def test_seeded_runs_are_reproducible(digits, name):
    overrides = SETTINGS[name][0]
    a = run_method(name, digits.model, digits.forget, digits.retain, seed=3, **overrides)
    b = run_method(name, digits.model, digits.forget, digits.retain, seed=3, **overrides)
    c = run_method(name, digits.model, digits.forget, digits.retain, seed=4, **overrides)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_retrain_ignores_the_input_weights(digits):
    # the oracle depends only on the retain set and the seed, not on the trained weights
    other = _fit(small_cnn(), *digits.retain, epochs=1, seed=5)
    kw = {"epochs": 1, "lr": 0.05}
    a = run_method("retrain", digits.model, digits.forget, digits.retain, **kw)
    b = run_method("retrain", other, digits.forget, digits.retain, **kw)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


# ---------------------------------------------------------------------------------------
# bad input


class _PlainDataset(Dataset):
    """A data set that exposes no label tensor (labels checked per batch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("name", sorted(FORGETA_METHODS))
def test_empty_forget_set_is_rejected(digits, name):
    x, y = digits.forget
    with pytest.raises(ValueError, match="forget is empty"):
        run_method(name, digits.model, (x[:0], y[:0]), digits.retain)


def _one_epoch(name: str) -> dict:
    """``epochs=1`` for a method that trains (fisher ignores it, and would warn)."""
    return {} if "epochs" in get_method(name)[1].UNUSED_FIELDS else {"epochs": 1}


@pytest.mark.parametrize("name", sorted(FORGETA_METHODS))
def test_out_of_range_labels_are_rejected(digits, name):
    before = state_copy(digits.model)
    x, y = digits.forget
    bad = y.clone()
    bad[0] = 10
    with pytest.raises(ValueError, match="out of range"):
        run_method(name, digits.model, (x, bad), digits.retain, **_one_epoch(name))
    xr, yr = digits.retain
    neg = yr.clone()
    neg[-1] = -1
    with pytest.raises(ValueError, match="retain: label -1 is out of range"):
        run_method(name, digits.model, digits.forget, (xr, neg), **_one_epoch(name))
    assert_unchanged(digits.model, before)


def test_out_of_range_label_in_an_opaque_dataset_is_caught_per_batch(digits):
    x, y = digits.retain
    bad = y.clone()
    bad[5] = 12
    before = state_copy(digits.model)
    with pytest.raises(ValueError, match="label 12 is out of range"):
        run_method("finetune", digits.model, digits.forget, _PlainDataset(x, bad), epochs=1)
    assert_unchanged(digits.model, before)


@pytest.mark.parametrize("name", sorted(FORGETA_METHODS))
def test_overlapping_sets_are_rejected(digits, name):
    xf, yf = digits.forget
    xr, yr = digits.retain
    retain = (torch.cat([xr, xf[:2]]), torch.cat([yr, yf[:2]]))
    with pytest.raises(ValueError, match="forget and retain overlap: 2 retain example"):
        run_method(name, digits.model, digits.forget, retain, **_one_epoch(name))


def test_overlap_check_can_be_switched_off(digits):
    xf, yf = digits.forget
    xr, yr = digits.retain
    retain = (torch.cat([xr, xf[:2]]), torch.cat([yr, yf[:2]]))
    new = run_method("finetune", digits.model, digits.forget, retain, check_overlap=False)
    assert isinstance(new, nn.Module)


def test_overlapping_subsets_of_one_dataset_are_rejected(digits):
    full = TensorDataset(*digits.retain)
    forget = Subset(full, [0, 1, 2, 3])
    retain = Subset(full, list(range(3, 200)))
    with pytest.raises(ValueError, match=r"1 index\(es\).*index 3"):
        run_method("finetune", digits.model, forget, retain, epochs=1)
    # nested subsets resolve to the same root indices
    nested = Subset(Subset(full, list(range(100))), [50, 2])
    with pytest.raises(ValueError, match="index 2"):
        run_method("finetune", digits.model, forget, nested, epochs=1)
    # disjoint subsets are fine
    ok = Subset(full, list(range(4, 200)))
    assert isinstance(run_method("finetune", digits.model, forget, ok, epochs=1), nn.Module)


def test_unknown_method_names_the_known_ones(digits):
    with pytest.raises(ValueError, match="unknown forgetting method 'no_such'.*finetune"):
        run_method("no_such", digits.model, digits.forget, digits.retain)


def test_wrong_config_type_is_rejected(digits):
    fn, _ = get_method("finetune")
    _, other_cls = get_method("neggrad")
    with pytest.raises(TypeError, match="'config' must be a FinetuneConfig"):
        fn(digits.model, TensorDataset(*digits.forget), TensorDataset(*digits.retain), other_cls())


@pytest.mark.parametrize(
    ("name", "field", "value", "exc"),
    [
        ("selective_pruning", "quantile", 1.5, ValueError),
        ("pruning_complex", "retain_fraction", 0.0, ValueError),
        ("pruning_complex", "retain_lr_divisor", 0.0, ValueError),
        ("activation_reset", "toll", -0.1, ValueError),
        ("neggrad_plus", "beta", 2.0, ValueError),
        ("fisher", "fisher", "bogus", ValueError),
        ("fisher", "max_var", 0.0, ValueError),
        ("finetune", "scheduler", "step", ValueError),
        ("l1_sparse", "alpha", -1.0, ValueError),
        ("two_stage", "forget_epochs", 1.5, TypeError),
        ("random_labels", "quantile", 0.1, TypeError),  # unknown field
    ],
)
def test_bad_config_values_name_the_field(name, field, value, exc):
    _, cls = get_method(name)
    match = field if field in {f.name for f in dataclasses.fields(cls)} else None
    with pytest.raises(exc, match=match):
        cls(**{field: value})


def test_methods_are_importable_from_the_package():
    assert callable(forget_api.pruning.movement_masks)
    assert callable(forget_api.fisher.fisher_diagonal)
