"""User-journey regressions of the forgetting methods and the harness (audit dec02b)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import Subset

from fastunlearn.harness import HarnessConfig, HarnessData, TrainSettings, run_harness
from fastunlearn.harness.training import train_or_load


def _tiny_data(dtype: torch.dtype = torch.float32) -> HarnessData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=g).to(dtype)
    xt = torch.randn(9, 6, generator=g).to(dtype)
    return HarnessData(x, torch.arange(30) % 3, xt, torch.arange(9) % 3, 3, "tiny")


def _train_original(data):
    """The original model of ``data``'s first 30 rows, seed 1234, no cache."""
    return train_or_load(
        model_name="mlp",
        x=data.x_train,
        y=data.y_train,
        indices=torch.arange(30),
        num_classes=3,
        data_digest=data.digest(),
        settings=TrainSettings(epochs=1, batch_size=8),
        seed=1234,
        cache_dir=None,
        device=torch.device("cpu"),
        role="original",
    )


def test_train_or_load_leaves_cuda_generators_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.manual_seed re-seeds every CUDA generator (or queues it until CUDA starts),
    # which the CPU-only fork did not restore: the caller's CUDA seed was replaced
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    data = _tiny_data()
    torch.manual_seed(7)
    calls.clear()
    cpu_state = torch.get_rng_state()
    tm = _train_original(data)
    assert calls == []
    assert torch.equal(torch.get_rng_state(), cpu_state)
    # the weights depend on the seed alone, not on the caller's generator
    torch.manual_seed(99)
    again = _train_original(data)
    for a, b in zip(tm.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_run_harness_names_data_for_inputs_the_model_cannot_take() -> None:
    # float64 data into the float32 zoo model: the error named 'x', which is not an
    # argument of run_harness
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = HarnessConfig(
            methods=("finetune",),
            model="mlp",
            forget="random:0.2",
            seeds=1,
            oracles=1,
            train=TrainSettings(epochs=1),
            cache_dir=None,
            mia=False,
        )
    with pytest.raises(
        TypeError,
        match=r"^'data': x_train: model cannot run on the inputs "
        r"\(dtype torch.float64",
    ):
        run_harness(config, _tiny_data(torch.float64))


@pytest.mark.parametrize("argument", ["forget", "retain"])
def test_a_data_loader_is_refused_with_the_way_to_pass_it(argument):
    from torch.utils.data import DataLoader, TensorDataset

    from fastunlearn.forget import run_method

    data = TensorDataset(torch.randn(12, 4), torch.arange(12) % 3)
    sets = {"forget": Subset(data, [0, 1]), "retain": Subset(data, range(2, 12))}
    sets[argument] = DataLoader(sets[argument], batch_size=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(TypeError, match=rf"'{argument}' must be a Dataset .* got DataLoader; "
                                        r"pass its data set \(loader\.dataset\)"):
        run_method("finetune", model, sets["forget"], sets["retain"])
