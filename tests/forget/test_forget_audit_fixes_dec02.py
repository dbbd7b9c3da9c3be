"""Regression tests of the forgetting methods' audit of December 2 (``fastunlearn.forget``).

Each test failed before its fix:

- a tuple of 0-dim tensors crashed with an IndexError inside ``as_dataset``;
- a model returning a tuple (logits, features) crashed with an AttributeError, and a model
  returning 3-D outputs crashed deep in torch (SalUn) or ran without effect (Bad Teacher);
- inputs still attached to an autograd graph made the training loops backpropagate into
  the caller's graph (and fail at the second step), or fill a leaf's ``.grad``;
- ``mean_activations`` put every submodule of the caller's model in one mode;
- negative ``Subset`` indices escaped the overlap and duplicate checks;
- a retain TensorDataset with int32 labels escaped the overlap check against a forget
  tuple (whose labels become int64);
- the training-based methods re-seeded every CUDA generator (``torch.manual_seed``),
  which nothing restored;
- ``fisher_diagonal`` crashed on an ``(inputs, labels)`` tuple;
- ``poison_full`` crashed on a data set with Python int labels;
- Bad Teacher's incompetent teacher kept the trained values of parameters without
  ``reset_parameters``: ``nn.MultiheadAttention``'s (now re-drawn by its
  ``_reset_parameters``) and, without a word, a custom module's (now named in a warning).
"""

from __future__ import annotations

import pytest
import torch
import torch.cuda
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

from fastunlearn.forget import run_method
from fastunlearn.forget._common_b import reinitialize
from fastunlearn.forget.activation_reset import mean_activations
from fastunlearn.forget.fisher import fisher_diagonal

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _data(n: int = 24, d: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.arange(n) % 3


def _mlp(d: int = 4) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 3))


def test_zero_dim_tensors_are_refused_naming_the_set():
    x, y = _data()
    with pytest.raises(ValueError, match=r"^forget: inputs and labels must have a first"):
        run_method("finetune", _mlp(), (torch.tensor(1.0), torch.tensor(1)), (x, y))


class _WithFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(x), x


class _Sequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).unsqueeze(1)  # [batch, 1, classes]


@pytest.mark.parametrize("name", ["finetune", "scrub", "salun"])
def test_a_model_returning_a_tuple_is_refused_naming_the_model(name):
    x, y = _data()
    with pytest.raises(TypeError, match=r"^'model' must return a tensor of logits"):
        run_method(name, _WithFeatures(), (x[:6], y[:6]), (x[6:], y[6:]), epochs=1)


@pytest.mark.parametrize("name", ["bad_teacher", "salun", "scrub"])
def test_logits_that_are_not_2d_are_refused_by_every_method(name):
    x, y = _data()
    with pytest.raises(ValueError, match=r"must return logits \[batch, classes\], got shape "
                                         r"\(1, 1, 3\)"):
        run_method(name, _Sequence(), (x[:6], y[:6]), (x[6:], y[6:]), epochs=1)


@pytest.mark.parametrize("name", ["finetune", "scrub", "bad_teacher"])
def test_inputs_attached_to_a_graph_do_not_reach_it(name):
    x, y = _data()
    extractor = nn.Linear(4, 4)
    z = extractor(x)  # features computed without torch.no_grad()
    new = run_method(name, _mlp(), (z[:6], y[:6]), (z[6:], y[6:]), epochs=2, batch_size=4)
    assert extractor.weight.grad is None and extractor.bias.grad is None
    assert not any(torch.equal(a, b) for a, b in zip(new.parameters(), _mlp().parameters(),
                                                      strict=True))


def test_a_leaf_input_keeps_no_gradient():
    x, y = _data()
    leaf = x.clone().requires_grad_()
    run_method("finetune", _mlp(), (leaf[:6], y[:6]), (leaf[6:], y[6:]), epochs=1,
               batch_size=4)
    assert leaf.grad is None


@pytest.mark.parametrize("wrap", [lambda ds: ds, lambda ds: Subset(ds, range(6, 24))])
def test_a_tensor_dataset_that_requires_grad_is_refused(wrap):
    x, y = _data()
    z = nn.Linear(4, 4)(x)
    retain = wrap(TensorDataset(z, y))
    with pytest.raises(ValueError, match=r"^retain: the TensorDataset's tensors require grad"):
        run_method("finetune", _mlp(), (x[:6].clone(), y[:6]), retain, epochs=1,
                   check_overlap=False)


def test_mean_activations_restores_each_submodule_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    model[1].eval()  # a frozen-statistics layer in a model that trains
    modes = [m.training for m in model.modules()]
    data = TensorDataset(torch.randn(6, 1, 6, 6), torch.zeros(6, dtype=torch.long))
    mean_activations(model, data, 4)
    assert [m.training for m in model.modules()] == modes


def test_negative_subset_indices_are_the_same_examples():
    x, y = _data(12)
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="overlap: 1 index"):
        run_method("finetune", _mlp(), Subset(ds, [-1]), Subset(ds, range(12)), epochs=1)
    with pytest.raises(ValueError, match="^forget: index 0 occurs more than once"):
        run_method("finetune", _mlp(), Subset(ds, [0, -12]), Subset(ds, [1, 2, 3]), epochs=1)
    # nested: index -1 of a 4-row view is row 3 of the view, 7 of the root
    nested = Subset(Subset(ds, [4, 5, 6, 7]), [-1])
    with pytest.raises(ValueError, match="overlap: 1 index"):
        run_method("finetune", _mlp(), nested, Subset(ds, [7, 8]), epochs=1)
    run_method("finetune", _mlp(), nested, Subset(ds, [6, 8]), epochs=1)  # disjoint


def test_overlap_is_found_whatever_the_label_dtype():
    x, y = _data()
    with pytest.raises(ValueError, match="6 retain example"):
        run_method("finetune", _mlp(), (x[:6], y[:6].to(torch.int32)),
                   TensorDataset(x, y.to(torch.int32)), epochs=1)


def test_training_methods_seed_only_the_generators_they_restore(monkeypatch):
    x, y = _data()
    model = _mlp()
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", calls.append)
    run_method("finetune", model, (x[:6], y[:6]), (x[6:], y[6:]), epochs=1, seed=7)
    assert calls == []  # a CPU model: no CUDA generator is touched


def test_fisher_diagonal_takes_an_inputs_labels_tuple():
    x, y = _data()
    model = _mlp()
    got = fisher_diagonal(model, (x, y), batch_size=8)
    want = fisher_diagonal(model, TensorDataset(x, y), batch_size=8)
    assert got.keys() == want.keys()
    for n in got:
        torch.testing.assert_close(got[n], want[n])
    with pytest.raises(TypeError, match="'model' must be a torch.nn.Module"):
        fisher_diagonal("model", (x, y))  # type: ignore[arg-type]


class _IntLabels(Dataset):
    """Items ``(tensor, int)``, as a torchvision data set gives them."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], self.y[i]


def test_poison_full_runs_on_int_labels():
    x, y = _data()
    new = run_method("poison_full", _mlp(), _IntLabels(x[:6], y[:6]), _IntLabels(x[6:], y[6:]),
                     epochs=1, batch_size=5)
    assert not new.training


def test_the_incompetent_teacher_redraws_attention_and_names_what_it_keeps():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        attn = nn.MultiheadAttention(4, 1)
    before = attn.in_proj_weight.detach().clone()
    reinitialize(attn, 1)
    assert not torch.equal(attn.in_proj_weight, before)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 8))

        def forward(self, x: Tensor) -> Tensor:
            return x @ self.w.T

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Head())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copy = Head()
    copy.load_state_dict(model[2].state_dict())
    first = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), copy)
    first.load_state_dict(state)
    kept = r"keeps the trained values of 1 parameter\(s\) \('2\.w'\)"
    with pytest.warns(UserWarning, match=kept):
        reinitialize(first, 3)
    assert torch.equal(first[2].w, state["2.w"])  # kept, as the warning says
    assert not torch.equal(first[0].weight, state["0.weight"])  # the rest re-drawn
    x, y = _data()
    with pytest.warns(UserWarning, match="incompetent teacher keeps"):
        run_method("bad_teacher", model, (x[:6], y[:6]), (x[6:], y[6:]))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
