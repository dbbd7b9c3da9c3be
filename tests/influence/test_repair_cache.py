"""The repair experiment's model cache: trained clean and poisoned models are reused.

A cached run must give the result of an uncached one (every accuracy and repair number),
whichever of the two models came from the cache, and a setting that changes the weights
must miss.
"""

import json
import warnings

import pytest
import torch
from test_repair_experiment import _parse  # the `repair` sub-parser alone

from fastunlearn.influence import experiment as exp
from fastunlearn.influence.experiment import RepairConfig, run_repair_experiment

SMALL = dict(epochs=2, steps=2, batch=32, cg_maxiter=5, n_train=400, budget=100)


def _numbers(result):
    """Everything but wall times and the cache flags."""
    tr = result["training"]
    out = {k: tr[k] for k in ("acc_clean", "acc_poisoned", "residual_poisoned")}
    for name, p in result["protocols"].items():
        out[name] = (p["acc_after"], p["restored"], p["residual"], p["num_hvps"],
                     [s.get("eval") for s in p["steps"]])
    return out


def _entries(folder):
    return sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] + p.suffix
                  for p in folder.iterdir())


def test_second_run_loads_both_models_and_gives_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    plain = run_repair_experiment(RepairConfig(**SMALL))
    first = run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    assert (first["training"]["clean_cached"], first["training"]["poisoned_cached"]) == (
        False, False)
    assert _entries(cache) == ["repair-clean.json", "repair-clean.safetensors",
                               "repair-poisoned.json", "repair-poisoned.safetensors"]
    second = run_repair_experiment(RepairConfig(**SMALL, cache_dir=cache))
    tr = second["training"]
    assert tr["clean_cached"] and tr["poisoned_cached"]
    # the stored training times, not the (near-zero) loading time
    assert tr["retrain_seconds"] == first["training"]["retrain_seconds"]
    assert tr["poisoned_train_seconds"] == first["training"]["poisoned_train_seconds"]
    assert _numbers(plain) == _numbers(first) == _numbers(second)
    assert second["config"]["cache_dir"] == str(cache)  # a Path is stored as a str
    assert not plain["training"]["clean_cached"]


def test_another_budget_reuses_the_clean_model_only_and_matches_an_uncached_run(tmp_path):
    cache = tmp_path / "cache"
    run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    other = {**SMALL, "budget": 60}
    cached = run_repair_experiment(RepairConfig(**other, cache_dir=str(cache)))
    assert cached["training"]["clean_cached"] and not cached["training"]["poisoned_cached"]
    assert _numbers(cached) == _numbers(run_repair_experiment(RepairConfig(**other)))


@pytest.mark.parametrize("change", [{"lr": 1e-2}, {"epochs": 3}, {"seed": 7},
                                    {"train_batch": 32}, {"n_train": 300}])
def test_a_setting_that_changes_the_weights_misses(tmp_path, change):
    cache = tmp_path / "cache"
    run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    again = run_repair_experiment(RepairConfig(**{**SMALL, **change}, cache_dir=str(cache)))
    assert not again["training"]["clean_cached"]
    assert not again["training"]["poisoned_cached"]


def test_repair_settings_do_not_change_the_key(tmp_path):
    cache = tmp_path / "cache"
    run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    with pytest.warns(UserWarning, match="'steps' and 'batch' have no effect"):
        again = run_repair_experiment(RepairConfig(**SMALL, damping=10.0,
                                                   protocols=("one-shot",),
                                                   cache_dir=str(cache)))
    assert again["training"]["clean_cached"] and again["training"]["poisoned_cached"]


def test_training_draws_come_from_a_seeded_fork(monkeypatch):
    """Dropout-like draws in training are the same for both models and leave the RNG as is.

    So a model loaded from the cache cannot shift the random draws of the model trained
    after it, or of the repair protocols.
    """
    draws = []
    real = exp.train_classifier

    def drawing(model, X, y, **kw):
        draws.append(torch.rand(3))
        return real(model, X, y, **kw)

    monkeypatch.setattr(exp, "train_classifier", drawing)
    config = RepairConfig(**SMALL)
    init = torch.nn.Linear(64, 10)
    trainer = exp._CachedTraining(config, init, torch.rand(20, 64), torch.device("cpu"))
    labels = torch.randint(0, 10, (20,))
    clean, poisoned = torch.nn.Linear(64, 10), torch.nn.Linear(64, 10)
    before = torch.get_rng_state()
    trainer.train("repair-clean", clean, labels)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's state, untouched
    torch.rand(5)  # the caller draws between the two trainings
    trainer.train("repair-poisoned", poisoned, labels)
    assert torch.equal(draws[0], draws[1])  # the same draws all the same
    torch.manual_seed(config.seed)
    assert torch.equal(draws[0], torch.rand(3))  # from the seed


def test_an_unreadable_entry_is_a_miss_and_is_replaced(tmp_path):
    cache = tmp_path / "cache"
    run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    for sidecar in cache.glob("repair-clean-*.json"):
        sidecar.write_text("{not json")
    again = run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    assert not again["training"]["clean_cached"] and again["training"]["poisoned_cached"]
    third = run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    assert third["training"]["clean_cached"]


def test_a_cache_that_cannot_be_stored_warns_and_keeps_the_run(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exp, "store_cached", full_disk)
    with pytest.warns(RuntimeWarning, match="could not store the repair-") as caught:
        result = run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(tmp_path / "c")))
    assert sorted(str(w.message).split()[4] for w in caught) == ["repair-clean",
                                                                 "repair-poisoned"]
    assert result["protocols"]["iterative"]["acc_after"] > 0


@pytest.mark.parametrize(("value", "error", "match"), [
    (b"cache", TypeError, "'cache_dir'"),
    ("", ValueError, "'cache_dir'"),
    (3, TypeError, "'cache_dir'"),
])
def test_bad_cache_dir(value, error, match):
    with pytest.raises(error, match=match):
        RepairConfig(**SMALL, cache_dir=value).validate()


def test_a_cache_dir_that_is_a_file_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(exp, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="'cache_dir'"):
        run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(blocker)))


def test_cli_cache_dir(tmp_path, capsys):
    argv = ["--epochs", "2", "--steps", "2", "--batch", "32", "--cg-maxiter", "5",
            "--n-train", "400", "--budget", "100", "--cache-dir", str(tmp_path / "cache"),
            "--no-plots"]
    args = _parse([*argv, "--out", str(tmp_path / "a")])
    assert args.func(args) == 0
    assert "loaded from" not in capsys.readouterr().out
    args = _parse([*argv, "--out", str(tmp_path / "b")])
    assert args.func(args) == 0
    assert "clean and poisoned models loaded from" in capsys.readouterr().out
    md = (tmp_path / "b" / "repair_digits.md").read_text()
    assert "came from the cache" in md
    a = json.loads((tmp_path / "a" / "repair_digits.json").read_text())
    b = json.loads((tmp_path / "b" / "repair_digits.json").read_text())
    assert b["training"]["clean_cached"] is True and a["training"]["clean_cached"] is False
    assert _numbers(a) == _numbers(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad = _parse([*argv[:-3], "--cache-dir", str(tmp_path / "a" / "repair_digits.json"),
                      "--out", str(tmp_path / "c")])
        assert bad.func(bad) == 2
    assert "'--cache-dir'" in capsys.readouterr().err


def test_an_interrupted_training_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """Ctrl-C in the poisoned model's second epoch keeps its first; the rerun resumes there."""
    config = {**SMALL, "epochs": 3}
    plain = run_repair_experiment(RepairConfig(**config))
    real_save = exp.EpochState.save

    def interrupt_after_first_poisoned_epoch(self, epochs_done, *args, **kwargs):
        real_save(self, epochs_done, *args, **kwargs)
        if "repair-poisoned" in self.path.name and epochs_done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(exp.EpochState, "save", interrupt_after_first_poisoned_epoch)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt, match="poisoned model's first 1 of 3 epochs are kept"):
        run_repair_experiment(RepairConfig(**config, cache_dir=str(cache)))
    (state,) = cache.glob("repair-poisoned-*.epoch-state.pt")
    monkeypatch.setattr(exp.EpochState, "save", real_save)
    resumed = run_repair_experiment(RepairConfig(**config, cache_dir=str(cache)))
    assert resumed["training"]["clean_cached"] and not resumed["training"]["poisoned_cached"]
    assert resumed["training"]["resumed_after_epoch"] == {"poisoned": 1}
    assert "The poisoned model's training resumed after epoch 1 of 3" in exp.render_report(
        resumed)
    assert plain["training"]["resumed_after_epoch"] == {}
    assert _numbers(resumed) == _numbers(plain)
    assert not state.exists()  # removed once the model was trained and stored
    assert any(cache.glob("repair-poisoned-*.safetensors"))


def test_an_unreadable_epoch_state_is_removed_and_training_starts_over(tmp_path):
    cache = tmp_path / "cache"
    run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    (weights,) = cache.glob("repair-poisoned-*.safetensors")
    for entry in cache.glob("repair-poisoned-*"):
        entry.unlink()
    stale = weights.with_suffix(".epoch-state.pt")  # where its training keeps its epochs
    stale.write_bytes(b"cut short")
    with pytest.warns(RuntimeWarning, match="removed the unreadable epoch state"):
        result = run_repair_experiment(RepairConfig(**SMALL, cache_dir=str(cache)))
    assert _numbers(result) == _numbers(run_repair_experiment(RepairConfig(**SMALL)))
    assert not stale.exists() and weights.exists()
