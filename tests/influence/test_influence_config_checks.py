"""RepairConfig, FeatureConfig and CanaryUnlearnConfig check every field by type and range
(naming it, before any training); write_canary_outputs checks its folder and the names it
writes before writing anything; render_canary_report names what a result lacks."""

import json
import os

import numpy as np
import pytest

from fastunlearn.influence import experiment as experiment_module
from fastunlearn.influence.canary import (
    CanaryUnlearnConfig,
    render_canary_report,
    unlearn_canary,
    write_canary_outputs,
)
from fastunlearn.influence.experiment import RepairConfig, run_repair_experiment
from fastunlearn.influence.feature_experiment import FeatureConfig

# settings made pointless by others warn; these tests are about the errors
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# ---------------------------------------------------------------- RepairConfig


@pytest.mark.parametrize("field, value", [
    ("epochs", 2.5), ("epochs", True), ("epochs", "3"), ("epochs", float("inf")),
    ("epochs", float("nan")), ("epochs", None), ("steps", "x"), ("steps", 2.5),
    ("cg_maxiter", 2.5), ("batch", True), ("lissa_depth", 2.5), ("train_batch", 8.0),
    ("lissa_batch", False), ("last_layers", 1.0), ("n_train", True),
    ("order", True), ("order", 2.0), ("tau", True), ("damping", "5"), ("damping", "abc"),
    ("damping", None), ("lissa_damping", True), ("lr", "0.1"), ("lissa_scale", None),
    ("cg_tol", True), ("cg_tol", "1e-4"), ("seed", 1.7), ("seed", True), ("budget", 15.5),
    ("budget", True), ("hvp_batch_size", 2.5), ("hvp_batch_size", True), ("progress", "no"),
    ("progress", 1), ("model", 5), ("protocols", "iterative"), ("dataset", 5),
    ("solver", None), ("curvature", 1), ("lissa_hessian", True), ("data_dir", 5),
])
def test_repair_config_wrong_type_is_a_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=f"'{field}'"):
        RepairConfig(**{field: value}).validate()


@pytest.mark.parametrize("field, value", [
    ("seed", 2**70), ("seed", -1), ("hvp_batch_size", 0), ("hvp_batch_size", -5),
    ("protocols", ("one-shot", "one-shot")), ("protocols", ()), ("protocols", ("x",)),
    ("epochs", 0), ("lr", float("nan")), ("lr", 0.0), ("damping", -1.0),
    ("damping", float("inf")), ("tau", "fast"), ("tau", -1.0), ("tau", float("inf")),
    ("cg_tol", 0), ("cg_tol", 10**400), ("budget", 5), ("order", 3), ("data_dir", ""),
])
def test_repair_config_bad_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"'{field}'"):
        RepairConfig(**{field: value}).validate()


def test_repair_config_refuses_order_1_with_tau_true():
    with pytest.raises(TypeError, match="'tau'"):
        RepairConfig(order=1, tau=True).validate()


def test_repair_config_accepts_the_cli_types_and_numpy_scalars():
    RepairConfig(epochs=3, lr=0.01, seed=2**64 - 1, hvp_batch_size=None, budget=20,
                 protocols=["one-shot"], order=1, tau=0.5, damping=0, cg_tol=1e-6,
                 progress=False).validate()
    cfg = RepairConfig(epochs=np.int64(3), lr=np.float32(0.01), progress=np.bool_(True),
                       seed=np.uint64(7)).validate()
    assert (cfg.epochs, cfg.seed, cfg.progress) == (3, 7, True)


@pytest.mark.parametrize("bad, field", [
    ({"hvp_batch_size": 0}, "hvp_batch_size"), ({"steps": 2.5}, "steps"),
    ({"cg_maxiter": 2.5}, "cg_maxiter"), ({"batch": True}, "batch"),
    ({"order": 1, "tau": True}, "tau"), ({"solver": "lissa", "lissa_depth": 2.5}, "lissa_depth"),
    ({"protocols": ("one-shot", "one-shot")}, "protocols"), ({"seed": 2**70}, "seed"),
    ({"budget": 15.5}, "budget"),
])
def test_run_repair_experiment_refuses_bad_settings_before_training(bad, field, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained a model before the settings were checked")

    monkeypatch.setattr(experiment_module, "train_classifier", no_training)
    config = RepairConfig(**{"epochs": 1, "n_train": 300, "budget": 20, "cg_maxiter": 3,
                             "steps": 2, "batch": 20, **bad})
    with pytest.raises((TypeError, ValueError), match=f"'{field}'"):
        run_repair_experiment(config)


# ---------------------------------------------------------------- FeatureConfig


@pytest.mark.parametrize("field, value", [
    ("linear", "no"), ("linear", 0), ("progress", "no"), ("binary", (True, 8)),
    ("binary", (3, 8.0)), ("binary", "38"), ("top_k", True), ("top_k", 2.0),
    ("n_rows", "5"), ("steps", None), ("seed", True), ("seed", 1.5), ("tau", True),
    ("tau", None), ("epsilon", True), ("epsilon", "0.1"), ("l2", True), ("delta", True),
    ("test_fraction", "0.2"), ("value", None), ("cg_tol", True),
])
def test_feature_config_wrong_type_is_a_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=f"'{field}'"):
        FeatureConfig(**{field: value}).validate()


@pytest.mark.parametrize("field, value", [
    ("top_k", 0), ("seed", -1), ("tau", -1.0), ("tau", "fast"), ("epsilon", 0.0),
    ("delta", 1.0), ("binary", (3, 3)), ("binary", (3, 10)), ("binary", (1, 2, 3)),
])
def test_feature_config_bad_value_is_still_a_value_error(field, value):
    with pytest.raises(ValueError, match=f"'{field}'"):
        FeatureConfig(**{field: value}).validate()


def test_feature_config_accepts_numpy_scalars():
    cfg = FeatureConfig(top_k=np.int64(3), linear=np.bool_(False), binary=(np.int64(1), 7),
                        tau=np.float64(0.5), epsilon=np.float32(0.5)).validate()
    assert (cfg.top_k, cfg.linear, cfg.tau) == (3, False, 0.5)


# ---------------------------------------------------------------- CanaryUnlearnConfig


@pytest.mark.parametrize("field, value", [
    ("retrain", "no"), ("retrain", 0), ("progress", "no"), ("stride", True), ("stride", 2.0),
    ("order", True), ("order", 2.0), ("replacement", 12), ("seq_len", True),
    ("cg_maxiter", 2.0), ("hvp_windows", "8"), ("seed", True), ("seed", 1.5),
    ("tau", True), ("tau", None), ("damping", True), ("damping", None), ("curvature", 1),
])
def test_canary_config_wrong_type_is_a_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=f"'{field}'"):
        CanaryUnlearnConfig(**{field: value}).validate()


@pytest.mark.parametrize("field, value", [
    ("stride", 0), ("order", 3), ("tau", "fast"), ("tau", -1.0), ("damping", -1.0),
    ("damping", "big"), ("curvature", "foo"), ("seed", -1), ("seed", 2**64),
])
def test_canary_config_bad_value_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"'{field}'"):
        CanaryUnlearnConfig(**{field: value}).validate()


def test_unlearn_canary_refuses_retrain_no_before_any_work():
    # the config is checked before the canary result is even looked at
    with pytest.raises(TypeError, match="'retrain'"):
        unlearn_canary(object(), CanaryUnlearnConfig(retrain="no"))


# ---------------------------------------------------------------- canary outputs


def _measure(exposure):
    return {"log_perplexity": 10.0, "rank": 1, "rank_exposure": exposure,
            "skew_normal_exposure": exposure, "completion": "1234", "max_exposure": 13.3}


def _result():
    return {
        "config": {"order": 1, "damping": "auto", "curvature": "ggn", "seq_len": 8, "tau": 0.1},
        "update": {"applied": True, "tau": 0.1, "reason": None, "num_gradients": 3,
                   "num_hvps": 0, "solver_iterations": 0},
        "secret": "1234", "replacement": "abcd", "num_canaries": 2, "num_affected": 20,
        "before": _measure(13.3), "after": _measure(1.0), "update_seconds": 0.5,
        "damping": None, "damping_tries": [], "retrained": None, "retrain_seconds": None,
        "model": object(),
    }


def test_render_and_write_a_complete_result(tmp_path):
    assert "# Canary unlearning" in render_canary_report(_result())
    files = write_canary_outputs(_result(), tmp_path / "out")
    assert json.loads(open(files["json"]).read())["secret"] == "1234"
    assert os.path.isfile(files["markdown"])


@pytest.mark.parametrize("drop", [None, "config", "before", "update_seconds"])
def test_render_canary_report_names_what_a_result_lacks(drop):
    result = {} if drop is None else {k: v for k, v in _result().items() if k != drop}
    with pytest.raises(ValueError, match="unlearn_canary result" if drop is None else drop):
        render_canary_report(result)


def test_render_canary_report_names_a_missing_measurement_entry():
    result = _result()
    del result["after"]["rank"]
    with pytest.raises(ValueError, match=r"result\['after'\] lacks \['rank'\]"):
        render_canary_report(result)
    with pytest.raises(TypeError, match="'result'"):
        render_canary_report([])


def test_write_canary_outputs_refuses_a_file_as_folder(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    for out_dir in (path, path / "sub"):
        with pytest.raises(ValueError, match="'out_dir'"):
            write_canary_outputs(_result(), out_dir)
    assert path.read_text() == "x"


def test_write_canary_outputs_refuses_empty_and_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'out_dir'"):
        write_canary_outputs(_result(), "")
    with pytest.raises(TypeError, match="'out_dir'"):
        write_canary_outputs(_result(), None)
    assert os.listdir(tmp_path) == []


def test_write_canary_outputs_md_folder_replaces_nothing(tmp_path):
    (tmp_path / "canary_unlearning.md").mkdir()
    (tmp_path / "canary_unlearning.json").write_text("earlier")
    with pytest.raises(ValueError, match="'canary_unlearning.md'"):
        write_canary_outputs(_result(), tmp_path)
    assert (tmp_path / "canary_unlearning.json").read_text() == "earlier"


def test_write_canary_outputs_bad_result_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        write_canary_outputs({"config": {}}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_render_canary_report_second_order_needs_its_damping():
    result = _result()
    result["config"]["order"] = 2
    with pytest.raises(ValueError, match=r"result\['update'\] lacks \['damping'\]"):
        render_canary_report(result)
    result["update"]["damping"] = 300.0
    assert "second order" in render_canary_report(result)
