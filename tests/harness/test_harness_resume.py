"""Resumable trainings of ``fastunlearn forget``: the original model and the oracles.

An interrupted training (a KeyboardInterrupt raised from the model's forward pass in the
middle of an epoch, as Ctrl-C would) keeps its finished epochs; the next call with the
same settings continues after them and must give the uninterrupted model bit for bit, with
the cosine schedule, Nesterov momentum and BatchNorm statistics restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fastunlearn.data import load_digits_dataset
from fastunlearn.epoch_state import saved_epochs
from fastunlearn.harness import (
    HarnessConfig,
    HarnessData,
    TrainSettings,
    render_table,
    run_harness,
    train_model,
    train_or_load,
)
from fastunlearn.harness import training as harness_training

_DIGITS = load_digits_dataset()
X, Y = _DIGITS.X_train[:150].float(), _DIGITS.y_train[:150]
#: 150 rows in batches of 32: 5 batches per epoch, the last of 22 rows
SETTINGS = TrainSettings(epochs=4, lr=0.05, batch_size=32)
BATCHES_PER_EPOCH = 5


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(24, 10))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Trap:
    """A forward pre-hook raising KeyboardInterrupt at the ``at``-th training-mode batch."""

    def __init__(self, model: nn.Module, at: int) -> None:
        self.calls, self.at = 0, at
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.calls += 1
            if self.calls == self.at:
                self.handle.remove()
                raise KeyboardInterrupt


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, torch.Tensor]:
    return _state(train_model(_model(), X, Y, SETTINGS, seed=5))


@pytest.mark.parametrize("stop_batch", [3, 2 * BATCHES_PER_EPOCH + 1, 4 * BATCHES_PER_EPOCH])
def test_an_interrupted_training_resumes_to_the_uninterrupted_model(
        tmp_path: Path, uninterrupted: dict[str, torch.Tensor], stop_batch: int) -> None:
    path = tmp_path / "original.epoch-state.pt"
    model = _model()
    _Trap(model, stop_batch)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, X, Y, SETTINGS, seed=5, epoch_checkpoint=path)
    kept = (stop_batch - 1) // BATCHES_PER_EPOCH
    assert saved_epochs(path) == (kept or None)  # nothing is written before epoch 1 ends
    resumed = train_model(_model(), X, Y, SETTINGS, seed=5, epoch_checkpoint=path)
    _assert_same(_state(resumed), uninterrupted)
    assert not path.exists()  # removed when the training finished
    assert not resumed.training


def test_without_a_checkpoint_file_the_training_is_unchanged(
        tmp_path: Path, uninterrupted: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "run.epoch-state.pt"
    _assert_same(_state(train_model(_model(), X, Y, SETTINGS, seed=5, epoch_checkpoint=path)),
                 uninterrupted)
    assert not path.exists()


def _interrupted(path: Path, at: int = 2 * BATCHES_PER_EPOCH + 2) -> None:
    model = _model()
    _Trap(model, at)
    with pytest.raises(KeyboardInterrupt):
        train_model(model, X, Y, SETTINGS, seed=5, epoch_checkpoint=path)
    assert saved_epochs(path) == 2


@pytest.mark.parametrize(("change", "named"), [
    ({"seed": 6}, "seed"),
    ({"settings": TrainSettings(epochs=4, lr=0.1, batch_size=32)}, "train"),
    ({"x": X + 1e-3}, "data"),
    ({"y": (Y + 1) % 10}, "labels"),
    ({"model": "other init"}, "initial weights"),
    ({"settings": TrainSettings(epochs=1, lr=0.05, batch_size=32)}, "train"),
])
def test_a_different_run_is_refused_and_the_file_kept(tmp_path: Path, change: dict[str, Any],
                                                      named: str) -> None:
    path = tmp_path / "run.epoch-state.pt"
    _interrupted(path)
    before = path.read_bytes()
    call: dict[str, Any] = {"x": X, "y": Y, "settings": SETTINGS, "seed": 5}
    call.update(change)
    model = _model(1) if call.pop("model", None) else _model()
    untouched = _state(model)
    with pytest.raises(ValueError, match=named):
        train_model(model, call["x"], call["y"], call["settings"], seed=call["seed"],
                    epoch_checkpoint=path)
    assert path.read_bytes() == before
    _assert_same(_state(model), untouched)


@pytest.mark.parametrize(("bad", "error", "match"), [
    (3, TypeError, "'epoch_checkpoint' must be a path"),
    ("missing-folder/run.pt", ValueError, "does not exist"),
    (".", ValueError, "is a folder"),
])
def test_bad_checkpoint_paths_are_refused_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: Any, error: type,
        match: str) -> None:
    monkeypatch.chdir(tmp_path)
    model = _model()
    untouched = _state(model)
    with pytest.raises(error, match=match):
        train_model(model, X, Y, SETTINGS, seed=5, epoch_checkpoint=bad)
    _assert_same(_state(model), untouched)


def test_an_unreadable_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "run.epoch-state.pt"
    path.write_bytes(b"not a torch archive")
    with pytest.raises(ValueError, match="not a readable epoch state"):
        train_model(_model(), X, Y, SETTINGS, seed=5, epoch_checkpoint=path)
    assert path.read_bytes() == b"not a torch archive"


# -- the cache of `fastunlearn forget` -----------------------------------------------------

DATA = HarnessData(X, Y, _DIGITS.X_test[:60].float(), _DIGITS.y_test[:60], 10, "digits-150")


def _load(cache: Path | None, role: str = "original") -> Any:
    return train_or_load(model_name="mlp", x=X, y=Y, indices=torch.arange(150), num_classes=10,
                         data_digest=DATA.digest(), settings=SETTINGS, seed=3, cache_dir=cache,
                         device=torch.device("cpu"), role=role)


def _trap_next_training(monkeypatch: pytest.MonkeyPatch, at: int, role: str = "") -> None:
    """Make the next training (of ``role``, or any) stop with Ctrl-C at its ``at``-th batch."""
    real = harness_training._train

    def trapped(model: nn.Module, *args: Any, **kw: Any) -> nn.Module:
        if not role or kw.get("desc") == role:
            monkeypatch.setattr(harness_training, "_train", real)
            _Trap(model, at)
        return real(model, *args, **kw)

    monkeypatch.setattr(harness_training, "_train", trapped)


def test_the_cache_keeps_an_interrupted_trainings_epochs(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _load(None)
    cache = tmp_path / "cache"
    _trap_next_training(monkeypatch, 3 * BATCHES_PER_EPOCH + 1)
    with pytest.raises(KeyboardInterrupt, match=r"original model's first 3 of 4 epochs are "
                                                r"kept in .*cache; the same run resumes"):
        _load(cache)
    assert [p.name.split("-")[0] for p in cache.glob("*.epoch-state.pt")] == ["original"]
    resumed = _load(cache)
    assert (resumed.cached, resumed.resumed_after_epoch) == (False, 3)
    _assert_same(_state(resumed.model), _state(reference.model))
    assert not list(cache.glob("*.epoch-state.pt"))
    # the kept epochs' time is counted: the four epochs' time, not the last one's only
    assert resumed.seconds > 0
    loaded = _load(cache)
    assert (loaded.cached, loaded.resumed_after_epoch) == (True, 0)
    assert loaded.seconds == resumed.seconds
    assert reference.resumed_after_epoch == 0


def test_the_resumed_training_reports_the_kept_epochs_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _trap_next_training(monkeypatch, 2 * BATCHES_PER_EPOCH + 1)
    with pytest.raises(KeyboardInterrupt):
        _load(cache)
    (path,) = cache.glob("*.epoch-state.pt")
    saved = torch.load(path, weights_only=True)
    saved["extra"]["seconds"] = 1000.0  # as if the two kept epochs had taken 1000 s
    torch.save(saved, path)
    assert 1000.0 < _load(cache).seconds < 1100.0


def test_an_unreadable_cache_file_is_replaced_with_a_warning(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    broken = cache / f"original-{_load(None).key[:24]}.epoch-state.pt"
    broken.write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="removed the unreadable epoch state"):
        trained = _load(cache)
    assert trained.resumed_after_epoch == 0 and not broken.exists()
    assert trained.key == _load(None).key


def test_run_harness_resumes_an_oracle_and_says_so(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def config(cache: str) -> HarnessConfig:
        return HarnessConfig(methods=("finetune",), seeds=1, oracles=1, model="mlp",
                             train=SETTINGS, forget="random:0.1", mia=False, cache_dir=cache,
                             out_dir=None, overrides={"finetune": {"epochs": 1}})

    plain = run_harness(config(str(tmp_path / "plain")), DATA)
    _trap_next_training(monkeypatch, BATCHES_PER_EPOCH + 2, role="oracle0")
    with pytest.raises(KeyboardInterrupt, match="oracle0 model's first 1 of 4 epochs"):
        run_harness(config(str(tmp_path / "cache")), DATA)
    result = run_harness(config(str(tmp_path / "cache")), DATA)
    assert result["original"]["cached"] and result["original"]["resumed_after_epoch"] == 0
    assert result["oracles"]["resumed_after_epoch"] == [1]
    assert result["oracles"]["cached"] == [False]
    for part in ("forget_accuracy", "retain_accuracy", "test_accuracy"):
        assert result["oracles"][part] == plain["oracles"][part]
    assert result["methods"]["finetune"]["runs"][0]["test_accuracy"] == \
        plain["methods"]["finetune"]["runs"][0]["test_accuracy"]
    table = render_table(result)
    assert "Resumed trainings (oracle 0 after epoch 1 of 4)" in table
    assert "Resumed trainings" not in render_table(plain)
