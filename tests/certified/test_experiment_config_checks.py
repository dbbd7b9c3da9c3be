"""ExperimentConfig refuses bad fields in validate, before any fitting or writing."""

from __future__ import annotations

import pytest

import fastunlearn.certified.experiment as experiment
from fastunlearn.certified.experiment import (
    ExperimentConfig,
    output_names,
    run_removal_experiment,
)

BINARY = {"train_mode": "binary", "num_removes": 3, "time_retraining": False}


@pytest.fixture
def no_fitting(monkeypatch):
    """Fail the test if the run gets as far as loading the data (the expensive part)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the data was loaded before the config was refused")

    monkeypatch.setattr(experiment, "load_experiment_data", forbidden)


def test_result_dir_that_is_a_file_is_refused_before_fitting(tmp_path, no_fitting):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for folder in (afile, afile / "sub"):
        config = ExperimentConfig(**BINARY, result_dir=str(folder))
        with pytest.raises(ValueError, match="'result_dir'.*not a folder"):
            run_removal_experiment(config)
    assert afile.read_text() == "x"


def test_empty_result_dir_is_refused(no_fitting):
    with pytest.raises(ValueError, match="'result_dir' is empty"):
        run_removal_experiment(ExperimentConfig(**BINARY, result_dir=""))


def test_result_dir_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="'result_dir'"):
        ExperimentConfig(**BINARY, result_dir=5).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("which", range(5))
def test_an_output_name_that_is_a_folder_is_refused_before_anything_is_written(
        tmp_path, no_fitting, which):
    config = ExperimentConfig(**BINARY, result_dir=str(tmp_path))
    names = output_names(config.stem)
    assert f"{config.stem}.json" in names and f"{config.stem}.md" in names
    (tmp_path / names[which]).mkdir()
    with pytest.raises(ValueError, match=f"'result_dir'.*{names[which]!r} in it is a folder"):
        run_removal_experiment(config)
    assert [p.name for p in tmp_path.iterdir()] == [names[which]]  # nothing written


@pytest.mark.parametrize("name", ["plots", "verbose", "time_retraining", "retrain"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_flags_must_be_bools(name, value):
    config = ExperimentConfig(result_dir=None, **{name: value})
    with pytest.raises(TypeError, match=f"'{name}' must be a bool"):
        config.validate()


@pytest.mark.parametrize(("name", "value"), [
    ("num_removes", True), ("batch", 2.0), ("num_steps", 10.0), ("eval_every", "5"),
    ("seed", 1.0), ("lam", True), ("epsilon", "1"), ("std", None), ("delta", True),
    ("subsample_ratio", "0.5"), ("cg_tol", True), ("target_epsilon", "2"),
])
def test_wrong_types_are_type_errors_naming_the_field(name, value):
    config = ExperimentConfig(result_dir=None, **{name: value})
    with pytest.raises(TypeError, match=f"'{name}'"):
        config.validate()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("lam", 0.0, "finite and > 0"), ("epsilon", float("inf"), "finite and > 0"),
    ("cg_tol", -1e-9, "finite and > 0"), ("std", -1.0, "finite and >= 0"),
    ("target_epsilon", 0, "finite and > 0"), ("delta", 1.0, r"in \(0, 1\)"),
    ("subsample_ratio", 0.0, r"in \(0, 1\]"), ("num_steps", 0, ">= 1"),
    ("num_removes", -1, ">= 0"), ("eval_every", -2, ">= 0"),
])
def test_values_out_of_range_are_value_errors_naming_the_field(name, value, message,
                                                                no_fitting):
    config = ExperimentConfig(**{**BINARY, "result_dir": None, name: value})
    with pytest.raises(ValueError, match=f"^'{name}' must be {message}"):
        run_removal_experiment(config)


def test_seed_beyond_a_generator_seed_is_refused_naming_it(no_fitting):
    config = ExperimentConfig(**BINARY, result_dir=None, seed=2**64)
    with pytest.raises(ValueError, match=r"'seed' must be an int in \[0, 2\*\*64 - 1\]"):
        run_removal_experiment(config)
    ExperimentConfig(result_dir=None, seed=2**64 - 1).validate()


def test_the_largest_seed_runs():
    result = run_removal_experiment(ExperimentConfig(**BINARY, result_dir=None,
                                                     seed=2**64 - 1))
    assert result.privacy["removals"] == 3


def test_a_good_result_dir_still_gets_every_output(tmp_path):
    folder = tmp_path / "new" / "deeper"
    config = ExperimentConfig(**BINARY, result_dir=str(folder), plots=False)
    result = run_removal_experiment(config)
    assert set(result.files) == {"json", "markdown"}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{config.stem}.json", f"{config.stem}.md"])
