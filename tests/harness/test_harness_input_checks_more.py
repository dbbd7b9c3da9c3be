"""Bad inputs to the harness API: a clear error naming the argument, before any training.

Before the fixes: a HarnessConfig changed after construction was trusted by run_harness
(``oracles = 0`` divided by zero after the original model trained, ``seeds = 0`` reported
every method "not run", ``mia = "no"`` computed the MIA); a file as ``cache_dir`` raised a
raw FileExistsError from the cache; ``collect_logits`` took ``batch_size`` 0 or True;
``oracle_recipe({})`` raised AttributeError, ``write_outputs({}, d)`` and
``render_table({})`` a KeyError (the first after creating ``d``); ``method_overrides`` took
a list; counts given as bools were ValueErrors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastunlearn.harness import (
    HarnessConfig,
    HarnessData,
    TrainSettings,
    collect_logits,
    method_overrides,
    oracle_recipe,
    render_table,
    run_harness,
    write_outputs,
)
from fastunlearn.harness import runner as runner_mod


def _config(**kwargs: object) -> HarnessConfig:
    base: dict = dict(train=TrainSettings(epochs=1), seeds=1, oracles=1, mia=False,
                      cache_dir=None, methods=("finetune",),
                      overrides={"finetune": {"epochs": 1}})
    base.update(kwargs)
    return HarnessConfig(**base)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if run_harness gets as far as training or loading a model."""
    def refuse(**_: object) -> None:
        raise AssertionError("trained before the settings were checked")

    monkeypatch.setattr(runner_mod, "train_or_load", refuse)


@pytest.mark.parametrize(("field", "value", "error"), [
    ("oracles", 0, ValueError),
    ("seeds", 0, ValueError),
    ("seeds", True, TypeError),
    ("mia", "no", TypeError),
    ("progress", "no", TypeError),
    ("methods", ("bogus",), ValueError),
    ("train_seed", -1, ValueError),
])
def test_run_harness_checks_a_config_changed_after_construction(
        no_training: None, field: str, value: object, error: type) -> None:
    config = _config()
    setattr(config, field, value)
    with pytest.raises(error, match=f"'{field}'" if field != "methods" else "bogus"):
        run_harness(config)


def test_run_harness_recheck_repeats_no_warning(no_training: None,
                                                recwarn: pytest.WarningsRecorder) -> None:
    with pytest.warns(UserWarning, match="forget_seed"):
        config = _config(forget_seed=3)  # no effect with a class forget set: warned here
    config.oracles = 0
    with pytest.raises(ValueError, match="'oracles'"):
        run_harness(config)
    assert not [w for w in recwarn if "forget_seed" in str(w.message)]


def test_run_harness_checks_cache_dir_before_training(no_training: None,
                                                      tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="'cache_dir'"):
        run_harness(_config(cache_dir=str(afile)))
    with pytest.raises(ValueError, match="'cache_dir'"):
        run_harness(_config(cache_dir=str(afile / "below")))
    assert afile.read_text() == "x"


@pytest.mark.parametrize(("batch_size", "error"), [(0, ValueError), (-1, ValueError),
                                                   (True, TypeError), (2.0, TypeError)])
def test_collect_logits_checks_batch_size(batch_size: object, error: type) -> None:
    with pytest.raises(error, match="'batch_size'"):
        collect_logits(torch.nn.Linear(4, 2), torch.rand(3, 4), batch_size=batch_size)


def test_collect_logits_still_batches() -> None:
    model = torch.nn.Linear(4, 2)
    x = torch.rand(5, 4)
    assert torch.allclose(collect_logits(model, x, batch_size=2), model(x).detach())


def test_oracle_recipe_takes_train_settings_only() -> None:
    with pytest.raises(TypeError, match="'settings' must be a TrainSettings"):
        oracle_recipe({"epochs": 1})  # type: ignore[arg-type]


def test_method_overrides_takes_a_mapping_only() -> None:
    with pytest.raises(TypeError, match="'extra'"):
        method_overrides("finetune", [("lr", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'digits_defaults'"):
        method_overrides("finetune", {}, digits_defaults="no")  # type: ignore[arg-type]
    assert method_overrides("finetune", {"lr": 0.1}, digits_defaults=False) == {"lr": 0.1}


def test_write_outputs_refuses_a_non_result_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="'result' is not a run_harness result.*'config'"):
        write_outputs({}, out)
    assert not out.exists()
    with pytest.raises(TypeError, match="'result'"):
        write_outputs([], out)  # type: ignore[arg-type]
    assert not out.exists()


def test_render_table_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="'result' is not a run_harness result"):
        render_table({})
    partial = {"config": {}, "data": {}, "original": {}, "oracles": {}, "methods": {},
               "timing": {}, "cache": {}}
    with pytest.raises(ValueError, match=r"result\['config'\] lacks \['model'"):
        render_table(partial)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"seeds": True}, "seeds"), ({"oracles": True}, "oracles"), ({"seeds": 2.0}, "seeds"),
    ({"train_seed": True}, "train_seed"),
])
def test_harness_config_counts_of_the_wrong_type(kwargs: dict, name: str) -> None:
    with pytest.raises(TypeError, match=f"'{name}' must be an int"):
        HarnessConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"epochs": True}, "epochs"), ({"batch_size": 2.0}, "batch_size"),
    ({"lr": True}, "lr"), ({"momentum": "0.9"}, "momentum"),
])
def test_train_settings_wrong_types(kwargs: dict, name: str) -> None:
    with pytest.raises(TypeError, match=f"'{name}'"):
        TrainSettings(**kwargs)


def test_harness_data_num_classes_bool_is_a_type_error() -> None:
    x = torch.rand(8, 1, 4, 4)
    y = torch.arange(8) % 2
    with pytest.raises(TypeError, match="'num_classes' must be an int"):
        HarnessData(x, y, x, y, True)
