"""Unit checks of forgeta's building blocks against independent computations.

Masks and statistics are compared with hand-computed values or direct recomputation
(``F.conv2d``, a per-example autograd loop); methods that must coincide in a limiting case
(NegGrad+ with beta = 1 and fine-tuning, l1-sparse with alpha = 0 and fine-tuning, the
two-stage hybrid without its retain stage and random labels) are run both ways.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from fastunlearn.data import digits_images
from fastunlearn.forget import run_method
from fastunlearn.forget._training import RelabelledDataset, random_subset
from fastunlearn.forget.activation_reset import kernels_to_reset, mean_activations
from fastunlearn.forget.checks import check_disjoint, dataset_labels
from fastunlearn.forget.fisher import fisher_diagonal
from fastunlearn.forget.pruning import movement_masks
from fastunlearn.models.zoo import mlp, small_cnn


@pytest.fixture(scope="module")
def sets():
    """Digits images: forget = 40 images of class 1, retain = 300 images of other classes."""
    x, y = digits_images()
    f_idx = torch.nonzero(y == 1).flatten()[:40]
    r_idx = torch.nonzero(y != 1).flatten()[:300]
    return (x[f_idx], y[f_idx]), (x[r_idx], y[r_idx])


def _fresh(kind: str = "cnn", seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return small_cnn(width=4) if kind == "cnn" else mlp(hidden=(16,))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_models_equal(a: nn.Module, b: nn.Module) -> None:
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)


# --- limiting cases that must coincide --------------------------------------------------


def test_neggrad_plus_with_beta_one_is_finetuning(sets):
    forget, retain = sets
    model = _fresh()
    kw = {"lr": 0.02, "epochs": 2, "batch_size": 32, "nesterov": False, "seed": 7}
    a = run_method("neggrad_plus", model, forget, retain, beta=1.0, **kw)
    b = run_method("finetune", model, forget, retain, **kw)
    _assert_models_equal(a, b)


def test_l1_sparse_with_zero_alpha_is_finetuning(sets):
    forget, retain = sets
    model = _fresh()
    kw = {"lr": 0.02, "epochs": 2, "batch_size": 32, "seed": 1}
    _assert_models_equal(
        run_method("l1_sparse", model, forget, retain, alpha=0.0, **kw),
        run_method("finetune", model, forget, retain, **kw),
    )


def test_l1_penalty_shrinks_the_weights(sets):
    forget, retain = sets
    model = _fresh()
    kw = {"lr": 0.02, "epochs": 2, "batch_size": 32}
    plain = run_method("l1_sparse", model, forget, retain, alpha=0.0, **kw)
    sparse = run_method("l1_sparse", model, forget, retain, alpha=1e-2, **kw)

    def l1(m: nn.Module) -> float:
        return sum(p.abs().sum().item() for p in m.parameters())

    assert l1(sparse) < 0.9 * l1(plain)


def test_two_stage_without_retain_stage_is_random_labels(sets):
    forget, retain = sets
    model = _fresh()
    a = run_method("two_stage", model, forget, retain, forget_lr=0.05, forget_epochs=2, epochs=0)
    b = run_method("random_labels", model, forget, retain, lr=0.05, epochs=2)
    _assert_models_equal(a, b)


def test_neggrad_raises_the_forget_loss(sets):
    forget, retain = sets
    model = _fresh()
    new = run_method("neggrad", model, forget, retain, lr=1e-3, epochs=2, batch_size=8)
    with torch.no_grad():
        before = F.cross_entropy(model(forget[0]), forget[1])
        after = F.cross_entropy(new(forget[0]), forget[1])
    assert after > before + 0.01


# --- relabelling ----------------------------------------------------------------------


def test_random_relabelling_to_other_classes():
    y = torch.arange(500) % 10
    ds = TensorDataset(torch.zeros(500, 2), y)
    other = RelabelledDataset(ds, 10, seed=0, other_classes=True)
    assert bool((other.labels != y).all())
    assert int(other.labels.min()) >= 0 and int(other.labels.max()) <= 9
    # every other class is drawn (roughly uniform over the 9 others)
    shift = (other.labels - y) % 10
    assert set(shift.tolist()) == set(range(1, 10))
    anyclass = RelabelledDataset(ds, 10, seed=0, other_classes=False)
    # Seed A's draw may keep the true label: about 1 in 10 do
    same = int((anyclass.labels == y).sum())
    assert 20 < same < 90
    assert torch.equal(RelabelledDataset(ds, 10, seed=0, other_classes=True).labels, other.labels)
    x0, y0 = other[3]
    assert torch.equal(x0, torch.zeros(2)) and int(y0) == int(other.labels[3])


@pytest.mark.parametrize("name", ["random_labels", "poison_full", "two_stage"])
def test_relabel_methods_default_to_seed_a_draw(sets, name):
    # Seed A's published code draws the new label uniformly over all classes
    from fastunlearn.forget import get_method

    _, cls = get_method(name)
    assert cls().other_classes is False
    forget, retain = sets
    default = run_method(name, _fresh(), forget, retain, epochs=1)
    seed_a = run_method(name, _fresh(), forget, retain, epochs=1, other_classes=False)
    _assert_models_equal(default, seed_a)


# --- pruning masks ----------------------------------------------------------------------


def test_movement_masks_hand_computed():
    a = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    b = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        # |delta| of the first weight: 0, 1, ..., 11 with alternating signs
        delta = torch.arange(12.0).reshape(3, 4) * torch.tensor([1.0, -1.0]).repeat(6).reshape(3, 4)
        b[0].weight += delta
        b[0].bias += 100.0  # biases are never masked
        b[1].weight += torch.tensor([[5.0, 1.0, 3.0], [0.0, 4.0, 2.0]])
    masks = movement_masks(a, b, 0.25)
    assert set(masks) == {"0.weight", "1.weight"}
    # 0.25-quantile of 0..11 is 2.75: entries 0, 1, 2 are strictly below
    expected0 = torch.zeros(12, dtype=torch.bool)
    expected0[:3] = True
    assert torch.equal(masks["0.weight"].flatten(), expected0)
    # 0.25-quantile of {0,1,2,3,4,5} is 1.25: entries with |delta| 0 and 1
    assert torch.equal(
        masks["1.weight"], torch.tensor([[False, True, False], [True, False, False]])
    )
    only = movement_masks(a, b, 0.25, names={"1.weight"})
    assert set(only) == {"1.weight"}


def _changed_fraction(before: dict[str, torch.Tensor], after: nn.Module) -> dict[str, float]:
    return {
        k: (before[k] != v.detach()).double().mean().item() for k, v in after.named_parameters()
    }


def test_selective_pruning_reinitialises_the_quantile_of_every_weight(sets):
    forget, retain = sets
    model = _fresh()
    before = _params(model)
    q = 0.3
    new = run_method(
        "selective_pruning", model, forget, retain, epochs=0, overfit_epochs=2, quantile=q
    )
    changed = _changed_fraction(before, new)
    for name, frac in changed.items():
        if before[name].dim() >= 2:
            n = before[name].numel()
            assert abs(frac - q) <= 1.0 / n + 1e-12, (name, frac)
        else:
            assert frac == 0.0, name


def test_prune_last_layer_touches_only_the_head(sets):
    forget, retain = sets
    model = _fresh()
    before = _params(model)
    new = run_method(
        "prune_last_layer", model, forget, retain, epochs=0, overfit_epochs=2, quantile=0.5
    )
    changed = _changed_fraction(before, new)
    assert abs(changed["head.weight"] - 0.5) <= 1.0 / before["head.weight"].numel()
    assert all(v == 0.0 for k, v in changed.items() if k != "head.weight")


def test_pruning_complex_reinitialises_the_intersection(sets):
    # the shipped code's ``lr // 3`` left the retain-subset copy unmoved and re-initialised
    # nothing; with lr / 3 every weight tensor loses part of the intersection of both masks
    forget, retain = sets
    model = _fresh()
    before = _params(model)
    q = 0.5
    kw = {"epochs": 0, "overfit_epochs": 2, "quantile": q, "retain_fraction": 0.2}
    new = run_method("pruning_complex", model, forget, retain, **kw)
    single = run_method(
        "selective_pruning", model, forget, retain, epochs=0, overfit_epochs=2, quantile=q
    )
    changed = _changed_fraction(before, new)
    changed_single = _changed_fraction(before, single)
    for name in before:
        if before[name].dim() >= 2:
            assert 0.0 < changed[name] < changed_single[name] + 1e-12, name
        else:
            assert changed[name] == 0.0


# --- activation reset -------------------------------------------------------------------


def test_mean_activations_match_direct_convolution(sets):
    forget, _ = sets
    model = _fresh()
    means = mean_activations(model, TensorDataset(*forget), batch_size=16)
    conv1, conv2 = model.backbone[0], model.backbone[3]
    with torch.no_grad():
        out1 = F.conv2d(forget[0], conv1.weight, conv1.bias, padding=1)
        h = F.max_pool2d(F.relu(out1), 2)
        out2 = F.conv2d(h, conv2.weight, conv2.bias, padding=1)
    torch.testing.assert_close(means["backbone.0"], out1.mean(0))
    torch.testing.assert_close(means["backbone.3"], out2.mean(0))
    # a subset's mean is normalised by the subset's size, not the full set's
    sub = random_subset(TensorDataset(*forget), 0.25, seed=0)
    assert len(sub) == math.ceil(0.25 * 40)
    sub_means = mean_activations(model, sub, batch_size=4)
    idx = torch.tensor(sub.indices)
    torch.testing.assert_close(sub_means["backbone.0"], out1[idx].mean(0))


def test_kernels_to_reset_hand_computed():
    retain = torch.zeros(3, 2, 2)
    forget = torch.tensor(
        [
            [[1.0, 1.0], [1.0, 1.0]],  # 4 of 4 positions above: reset
            [[1.0, 1.0], [1.0, -1.0]],  # 3 of 4: 3 > 0.8 * 4 is false
            [[0.0, 0.0], [0.0, 0.0]],  # ties do not count
        ]
    )
    assert kernels_to_reset(forget, retain, 0.8).tolist() == [True, False, False]
    assert kernels_to_reset(forget, retain, 0.5).tolist() == [True, True, False]


def test_activation_reset_redraws_whole_kernels(sets):
    forget, retain = sets
    model = _fresh()
    before = _params(model)
    new = run_method(
        "activation_reset", model, forget, retain, epochs=0, toll=0.3, retain_fraction=0.2
    )
    after = _params(new)
    any_reset = False
    for name in ("backbone.0.weight", "backbone.3.weight"):
        diff = (before[name] != after[name]).reshape(before[name].shape[0], -1)
        per_kernel = diff.all(dim=1) | (~diff).all(dim=1)
        assert bool(per_kernel.all()), name  # a kernel is re-drawn whole or left alone
        any_reset |= bool(diff.any())
    assert any_reset
    assert bool((before["head.weight"] != after["head.weight"]).all())  # reset_mlp
    assert torch.equal(before["head.bias"], after["head.bias"])
    # toll 1.0 resets no kernel; without reset_mlp and fine-tuning nothing changes
    same = run_method(
        "activation_reset", model, forget, retain, epochs=0, toll=1.0, reset_mlp=False
    )
    _assert_models_equal(model, same)


# --- Fisher forgetting ------------------------------------------------------------------


def _loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> dict:
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(x)):
        logp = F.log_softmax(model(x[i : i + 1]), dim=1)[0]
        classes = [int(y[i])] if kind == "empirical" else range(logp.shape[0])
        for c in classes:
            grads = torch.autograd.grad(logp[c], list(params.values()), retain_graph=True)
            w = 1.0 if kind == "empirical" else logp[c].exp().item()
            for k, g in zip(params, grads, strict=True):
                total[k] += w * g.pow(2)
    return total


@pytest.mark.parametrize("kind", ["empirical", "expected"])
def test_fisher_diagonal_matches_a_per_example_loop(sets, kind):
    _, retain = sets
    model = _fresh("mlp").double()
    x, y = retain[0][:7].double(), retain[1][:7]
    got = fisher_diagonal(model, TensorDataset(x, y), batch_size=3, kind=kind)
    want = _loop_fisher(model, x, y, kind)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)


def test_fisher_noise_has_variance_alpha_over_fisher(sets):
    forget, retain = sets
    model = _fresh("mlp")
    alpha, max_var = 1e-3, 1e-2
    fisher = fisher_diagonal(model, TensorDataset(*retain))
    new = run_method(
        "fisher", model, forget, retain, alpha=alpha, max_var=max_var, forget_class_rows=False
    )
    z = []
    for (name, p0), p1 in zip(model.named_parameters(), new.parameters(), strict=True):
        var = (alpha / (fisher[name] + 1e-8)).clamp(max=max_var)
        z.append(((p1 - p0) / var.sqrt()).detach().flatten())
    z = torch.cat(z)
    assert z.numel() > 1000
    assert abs(z.mean().item()) < 0.05
    assert abs(z.std().item() - 1.0) < 0.05


def test_fisher_zeroes_the_head_rows_of_a_removed_class(sets):
    forget, retain = sets  # forget is class 1, absent from retain
    model = _fresh("mlp")
    new = run_method("fisher", model, forget, retain, alpha=0.0)
    assert new.head.weight[1].abs().max().item() < 0.05  # mean 0, variance 1e-4
    assert abs(new.head.bias[1].item()) < 0.05
    # alpha = 0: every other parameter is unchanged
    torch.testing.assert_close(new.head.weight[[0, 2]], model.head.weight[[0, 2]])
    # random forgetting (labels also in retain): no row is touched
    mixed = (torch.cat([forget[0][:5], retain[0][:5]]), torch.cat([forget[1][:5], retain[1][:5]]))
    rest = (retain[0][5:], retain[1][5:])
    plain = run_method(
        "fisher",
        model,
        mixed,
        (torch.cat([rest[0], forget[0][5:]]), torch.cat([rest[1], forget[1][5:]])),
        alpha=0.0,
    )
    _assert_models_equal(model, plain)


# --- checks -----------------------------------------------------------------------------


def test_dataset_labels_and_disjointness_rules():
    x = torch.arange(20.0).reshape(10, 2)
    y = torch.arange(10) % 3
    full = TensorDataset(x, y)
    assert torch.equal(dataset_labels(Subset(full, [4, 1])), y[[4, 1]])
    check_disjoint(Subset(full, [0, 1]), Subset(full, [2, 3]))
    with pytest.raises(ValueError, match="whole data set"):
        check_disjoint(Subset(full, [0, 1]), full)
    # equal inputs with different labels are different examples
    check_disjoint(TensorDataset(x[:2], y[:2]), TensorDataset(x[:2], (y[:2] + 1) % 3))
    with pytest.raises(ValueError, match="1 retain example"):
        check_disjoint(TensorDataset(x[:2], y[:2]), TensorDataset(x[1:5], y[1:5]))


def test_retrain_refuses_parameters_it_cannot_reinitialise(sets):
    forget, retain = sets

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(hidden=(8,))
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * self.net(x)

    with pytest.raises(ValueError, match="cannot re-initialise parameter 'scale'"):
        run_method("retrain", Scaled(), forget, retain, epochs=1)


# --- devices ----------------------------------------------------------------------------

_TINY = {
    "retrain": {"epochs": 1},
    "finetune": {"epochs": 1},
    "l1_sparse": {"epochs": 1},
    "neggrad": {"epochs": 1},
    "neggrad_plus": {"epochs": 1},
    "random_labels": {"epochs": 1},
    "poison_full": {"epochs": 1},
    "two_stage": {"epochs": 1},
    "selective_pruning": {"epochs": 1, "overfit_epochs": 1},
    "prune_last_layer": {"epochs": 1, "overfit_epochs": 1},
    "pruning_complex": {"epochs": 1, "overfit_epochs": 1},
    "activation_reset": {"epochs": 1},
    "fisher": {},
}


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(_TINY))
def test_methods_run_on_cuda_with_cpu_data(sets, name):
    forget, retain = sets
    model = _fresh().cuda()
    before = _params(model)
    new = run_method(name, model, forget, retain, **_TINY[name])
    assert all(p.is_cuda for p in new.parameters())
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert torch.isfinite(new(forget[0].cuda())).all()
