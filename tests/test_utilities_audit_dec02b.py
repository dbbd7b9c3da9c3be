"""Regression tests of the shared utilities' audit (JSON, atomic writes, paths, settings)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from fastunlearn import _extension
from fastunlearn._atomic_files import replace_atomically, write_text
from fastunlearn._json_data import json_ready
from fastunlearn._output_folder import check_output_folder
from fastunlearn._paths import check_file_path, check_output_file
from fastunlearn.cli import main

LONG_NAME = "a" * 300  # beyond the 255 bytes a file name may have on Linux file systems


# ---- json_ready -----------------------------------------------------------------------


def test_json_ready_turns_long_doubles_into_floats():
    """np.longdouble is no float subclass and its tolist() returns itself: the recursion
    never ended (RecursionError) for a scalar or an array of them."""
    values = {
        "scalar": np.longdouble(0.25),
        "inf": np.longdouble("inf"),
        "array": np.array([1.5, -np.inf, np.nan], dtype=np.longdouble),
    }
    text = json.dumps(json_ready(values), allow_nan=False)
    assert json.loads(text) == {"scalar": 0.25, "inf": "inf", "array": [1.5, "-inf", "nan"]}


def test_json_ready_gives_plain_python_values_for_other_numpy_scalars():
    """As documented (np.str_ was returned as it was: a str subclass, still valid JSON)."""
    got = json_ready(
        [np.float32(0.5), np.int64(3), np.bool_(True), np.str_("x"), np.float16(-np.inf)]
    )
    assert got == [0.5, 3, True, "x", "-inf"]
    assert [type(v) for v in got] == [float, int, bool, str, str]


# ---- replace_atomically -----------------------------------------------------------------


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_rewriting_a_file_keeps_its_permissions(tmp_path):
    """A file made private (0600) became readable by everyone (0666 & ~umask) on rewrite."""
    target = tmp_path / "model.bin"
    target.write_text("old")
    os.chmod(target, 0o600)
    write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o600
    os.chmod(target, 0o640)
    replace_atomically(target, lambda tmp: os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)))
    assert _mode(target) == 0o640


def test_writing_through_a_symbolic_link_replaces_the_file_it_points_to(tmp_path):
    """The link itself was replaced by a regular file and its target kept the old content."""
    real = tmp_path / "store" / "results.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "results.json"
    link.symlink_to(real)
    assert write_text(link, "new") == link
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["results.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "store"]


def test_a_file_name_near_the_length_limit_can_be_written(tmp_path):
    """The temporary name added 22 characters: a 250-character name could not be written."""
    target = tmp_path / ("r" * 250)
    write_text(target, "x")
    assert target.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_write_through_a_link_leaves_both_as_they_were(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)

    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(link, interrupted)
    assert link.is_symlink() and real.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt"]


# ---- output folders and file paths ------------------------------------------------------


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_broken_link_as_output_folder_is_refused_before_the_work(tmp_path, below):
    """It passed the check; the command's mkdir then failed with FileExistsError."""
    link = tmp_path / "results"
    link.symlink_to(tmp_path / "missing")
    folder = link / below if below else link
    with pytest.raises(ValueError, match=r"^'out' .*/results' is a broken symbolic link"):
        check_output_folder(folder, argument="out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_link_to_a_folder_is_a_usable_output_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    assert check_output_folder(tmp_path / "out" / "new", argument="out") == (
        tmp_path / "out" / "new"
    )


def test_an_output_folder_name_too_long_is_a_value_error_naming_the_argument(tmp_path):
    """It was an OSError (File name too long) from the check itself."""
    with pytest.raises(ValueError, match=r"^'result_dir' .* cannot be a folder"):
        check_output_folder(tmp_path / LONG_NAME, argument="result_dir")


@pytest.mark.parametrize("check", [check_file_path, check_output_file])
def test_a_file_name_too_long_is_a_value_error_naming_the_argument(tmp_path, check):
    """It was an OSError (File name too long) from ``Path.is_dir``."""
    with pytest.raises(ValueError, match=r"^'features' .* cannot name a file"):
        check(tmp_path / LONG_NAME, "features")


# ---- kernel settings --------------------------------------------------------------------


def test_invalid_kernel_settings_are_marked_in_backend_and_info(monkeypatch, capsys):
    """``fastunlearn info`` showed a misspelt value as if it were the setting in force."""
    monkeypatch.setenv("FASTUNLEARN_GLM_HVP", "one-pass")
    monkeypatch.setenv("FASTUNLEARN_CERTIFIED_FUSED", "2")
    monkeypatch.setenv("FASTUNLEARN_FIXED_STEP", "")
    settings = _extension.kernel_settings()
    assert settings == {
        "FASTUNLEARN_FIXED_STEP": "'' (invalid: must be 'cpu', 'auto', 'graph', 'eager' or 'off')",
        "FASTUNLEARN_CERTIFIED_FUSED": "'2' (invalid: must be '0' or '1')",
        "FASTUNLEARN_GLM_HVP": "'one-pass' (invalid: must be 'gemm' or 'onepass')",
    }
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "FASTUNLEARN_GLM_HVP          'one-pass' (invalid: must be 'gemm' or" in out


def test_valid_kernel_settings_are_reported_as_they_are(monkeypatch):
    for name, values in _extension.KERNEL_SETTING_VALUES.items():
        for value in values:
            monkeypatch.setenv(name, value)
            assert _extension.kernel_settings()[name] == value
        monkeypatch.delenv(name)
        assert _extension.kernel_settings()[name] == _extension.KERNEL_SETTINGS[name]


def test_the_allowed_values_are_those_the_readers_accept():
    from fastunlearn.certified.single_row import FIXED_STEP_MODES

    values = _extension.KERNEL_SETTING_VALUES
    assert set(values["FASTUNLEARN_FIXED_STEP"]) == set(FIXED_STEP_MODES)
    assert set(_extension.KERNEL_SETTINGS) == set(values)
    for name, default in _extension.KERNEL_SETTINGS.items():
        assert default in values[name]
