"""Input checks and the output mode of every registered forgetting method.

The README promises that every method refuses labels outside the model's outputs, forget
examples present in retain and forget rows given twice, with a ValueError naming the
argument, before any costly work and without touching the model; and that every method
returns its new model in eval mode. These tests run each check for every method of the
registry (on an 8x8-digits MLP, forget = 40 images of class 3).
"""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, state_copy
from torch import nn
from torch.utils.data import Subset, TensorDataset

import fastunlearn.forget as fg
from fastunlearn.data import digits_images
from fastunlearn.forget import available_methods, get_method, run_method
from fastunlearn.forget.base import TensorBatches, batches, make_loader
from fastunlearn.forget.checks import check_unique
from fastunlearn.models.zoo import mlp

METHODS = available_methods()

#: Settings that make a real run take well under a second.
TINY: dict[str, dict] = {
    "unsir": {"epochs": 1, "repair_epochs": 1, "noise_steps": 2, "noise_size": 8,
              "retain_per_class": 10},
    "retrain": {"epochs": 1, "scheduler": "none", "milestones": ()},
    "selective_pruning": {"epochs": 1, "overfit_epochs": 1},
    "prune_last_layer": {"epochs": 1, "overfit_epochs": 1},
    "pruning_complex": {"epochs": 1, "overfit_epochs": 1},
    "antisamples": {"epochs": 1, "n_generated": 16},
    "antisamples_multiclass": {"epochs": 1, "n_generated": 16},
    "fisher": {},
    "influence": {},
}


def _tiny(name: str) -> dict:
    return TINY.get(name, {"epochs": 1})


@pytest.fixture(scope="module")
def data():
    x, y = digits_images()
    f_idx = torch.nonzero(y == 3).flatten()[:40]
    r_idx = torch.nonzero(y != 3).flatten()[:300]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = mlp(hidden=(16,))
    return model, (x[f_idx], y[f_idx]), (x[r_idx], y[r_idx])




@pytest.fixture
def no_costly_work(monkeypatch):
    """Fail the test if a method starts training, noise optimisation or a neighbour search."""

    def refuse(*args, **kwargs):
        raise AssertionError("costly work started before the inputs were checked")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    import fastunlearn.ops.knn as knn

    monkeypatch.setattr(knn, "farthest_k", refuse)


def test_every_method_is_covered():
    assert set(TINY) <= set(METHODS)
    assert {"scrub", "bad_teacher", "salun", "unsir", "antisamples", "finetune"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_overlap_is_rejected(data, name, no_costly_work):
    model, (xf, yf), (xr, yr) = data
    before = state_copy(model)
    retain = (torch.cat([xr, xf[:2]]), torch.cat([yr, yf[:2]]))
    with pytest.raises(ValueError, match="forget and retain overlap: 2 retain example"):
        run_method(name, model, (xf, yf), retain, **_tiny(name))
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_overlapping_subsets_are_rejected(data, name, no_costly_work):
    model, forget, retain = data
    full = TensorDataset(torch.cat([forget[0], retain[0]]), torch.cat([forget[1], retain[1]]))
    with pytest.raises(ValueError, match=r"forget and retain overlap: 1 index\(es\)"):
        run_method(name, model, Subset(full, list(range(40))), Subset(full, range(39, 340)),
                   **_tiny(name))


@pytest.mark.parametrize("name", METHODS)
def test_out_of_range_labels_are_rejected(data, name, no_costly_work):
    model, (xf, yf), (xr, yr) = data
    before = state_copy(model)
    with pytest.raises(ValueError, match="forget: label 12 is out of range"):
        run_method(name, model, (xf, torch.full_like(yf, 12)), (xr, yr), **_tiny(name))
    bad = yr.clone()
    bad[-1] = -1
    with pytest.raises(ValueError, match="retain: label -1 is out of range"):
        run_method(name, model, (xf, yf), (xr, bad), **_tiny(name))
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_duplicate_forget_rows_are_rejected(data, name, no_costly_work):
    model, (xf, yf), retain = data
    forget = (torch.cat([xf, xf[:3]]), torch.cat([yf, yf[:3]]))
    with pytest.raises(ValueError, match=r"forget: rows 0 and 40 .*duplicates"):
        run_method(name, model, forget, retain, **_tiny(name))
    full = TensorDataset(*data[1])
    with pytest.raises(ValueError, match="forget: index 2 occurs more than once"):
        run_method(name, model, Subset(full, [0, 1, 2, 2]), retain, **_tiny(name))


@pytest.mark.parametrize("name", METHODS)
def test_registered_function_checks_too(data, name, no_costly_work):
    # the registered function itself, not only run_method, runs the checks
    model, (xf, yf), retain = data
    fn, cls = get_method(name)
    with pytest.raises(ValueError, match="forget: label 12 is out of range"):
        fn(model, (xf, torch.full_like(yf, 12)), retain, cls(**_tiny(name)))


@pytest.mark.parametrize("name", METHODS)
def test_the_new_model_is_in_eval_mode(data, name):
    model, forget, retain = data
    model.train()
    before = state_copy(model)
    new = run_method(name, model, forget, retain, **_tiny(name))
    assert new is not model
    assert not any(m.training for m in new.modules())
    assert model.training  # the caller's model keeps its mode
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["scrub", "bad_teacher", "salun", "influence"])
def test_overlap_check_can_be_switched_off_everywhere(data, name):
    model, (xf, yf), (xr, yr) = data
    retain = (torch.cat([xr, xf[:2]]), torch.cat([yr, yf[:2]]))
    new = run_method(name, model, (xf, yf), retain, check_overlap=False, **_tiny(name))
    assert isinstance(new, nn.Module)


def test_unsir_refuses_a_forget_set_that_is_not_whole_classes(data, monkeypatch):
    model, (xf, yf), (xr, yr) = data

    def refuse(*args, **kwargs):
        raise AssertionError("the noise was optimised before the check")

    monkeypatch.setattr(fg.unsir, "unsir_noise_set", refuse)
    # 30 of the 40 threes are forgotten, 10 stay in retain: a random-forgetting request
    retain = (torch.cat([xr, xf[30:]]), torch.cat([yr, yf[30:]]))
    with pytest.raises(ValueError, match=r"UNSIR needs whole classes.*\[3\].*class 3: 10"):
        run_method("unsir", model, (xf[:30], yf[:30]), retain, **_tiny("unsir"))


def test_check_overlap_must_be_a_bool():
    with pytest.raises(TypeError, match="check_overlap"):
        fg.ScrubConfig(check_overlap="yes")


def test_check_unique_rules():
    x = torch.arange(12.0).reshape(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    check_unique(TensorDataset(x, y))
    # the same input with another label is another example
    check_unique(TensorDataset(torch.cat([x[:1], x[:1]]), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="rows 1 and 2"):
        check_unique(TensorDataset(x[[0, 1, 1]], y[[0, 1, 1]]))
    nested = Subset(Subset(TensorDataset(x, y), [5, 4, 3]), [0, 2, 0])
    with pytest.raises(ValueError, match="index 5 occurs more than once"):
        check_unique(nested)


@pytest.mark.parametrize("n,batch", [(10, 3), (12, 4), (1, 8)])
def test_tensor_batches_match_the_data_loader(n, batch):
    x = torch.randn(n, 2, 3)
    y = torch.arange(n) % 4
    ds = TensorDataset(x, y)
    fast = batches(ds, batch, shuffle=True, seed=7)
    assert isinstance(fast, TensorBatches) and len(fast) == -(-n // batch)
    slow = make_loader(ds, batch, shuffle=True, seed=7)
    for _ in range(3):  # several epochs: the generator advances the same way
        got, want = list(fast), list(slow)
        assert len(got) == len(want)
        for (xa, ya), (xb, yb) in zip(got, want, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
