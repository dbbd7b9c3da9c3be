"""The shared output-folder check, and the commands that refuse a bad folder before working."""

import os
from pathlib import Path

import pytest

from fastunlearn._output_folder import check_output_folder
from fastunlearn.cli import main

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures",
                       "forget_with_precision")


def test_missing_folder_below_a_writable_one_is_accepted(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_output_folder(str(target), argument="out") == target
    assert not (tmp_path / "a").exists()  # the check creates nothing


def test_existing_folder_is_accepted(tmp_path):
    assert check_output_folder(tmp_path, argument="out", names=["x.json"]) == tmp_path


@pytest.mark.parametrize("below", [False, True])
def test_file_in_the_way_is_refused(tmp_path, below):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    target = blocker / "sub" if below else blocker
    with pytest.raises(ValueError, match=r"^'result_dir' .*exists and is not a folder"):
        check_output_folder(target, argument="result_dir")
    assert blocker.read_text() == "keep me"


def test_output_name_taken_by_a_folder_is_refused(tmp_path):
    (tmp_path / "report.md").mkdir()
    with pytest.raises(ValueError, match=r"'out' .*'report.md' in it is a folder"):
        check_output_folder(tmp_path, argument="out", names=["report.json", "report.md"])


def _deny_writes(monkeypatch):
    """Make every folder look read-only to the check (root ignores real permissions)."""
    import fastunlearn._output_folder as module

    monkeypatch.setattr(module.os, "access", lambda path, mode: False)


def test_read_only_folder_is_refused(tmp_path, monkeypatch):
    _deny_writes(monkeypatch)
    with pytest.raises(ValueError, match=r"'out' .*is not writable"):
        check_output_folder(tmp_path / "new", argument="out")


def test_exposure_refuses_a_file_as_out_before_training(tmp_path, monkeypatch, capsys):
    import fastunlearn.exposure.experiment as experiment

    def must_not_run(*args, **kwargs):
        raise AssertionError("trained despite an unwritable --out")

    monkeypatch.setattr(experiment, "run_canary_experiment", must_not_run)
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    assert main(["exposure", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn exposure: error: '--out'") and "Traceback" not in err
    assert blocker.read_text() == "keep me"


def test_evaluate_refuses_a_folder_named_like_its_json_before_evaluating(
        tmp_path, monkeypatch, capsys):
    import fastunlearn.metrics.evaluate as evaluate

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated despite an unwritable --out")

    monkeypatch.setattr(evaluate, "evaluate_logits_dir", must_not_run)
    (tmp_path / "evaluation.json").mkdir()
    assert main(["evaluate", FIXTURE, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn evaluate: error: '--out'") and "evaluation.json" in err


def test_extract_refuses_a_data_dir_it_cannot_write_features_into(
        tmp_path, monkeypatch, capsys):
    _deny_writes(monkeypatch)
    status = main(["extract", "--data-dir", str(tmp_path), "--dataset", "digits",
                   "--extractor", "standard", "--epochs", "1"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn extract: error: '--data-dir'") and "not writable" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("bad", "exc", "message"), [
    ("", ValueError, "'out' is empty"),  # old: accepted as the current folder
    (3, TypeError, "'out' must be a str or os.PathLike, got int"),  # old: pathlib's TypeError
    (None, TypeError, "'out' must be a str or os.PathLike, got NoneType"),
])
def test_check_output_folder_refuses_empty_and_non_paths(bad, exc, message):
    with pytest.raises(exc, match=message):
        check_output_folder(bad, argument="out")


def test_check_output_folder_takes_the_current_folder_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output_folder(".", argument="out") == Path(".")
