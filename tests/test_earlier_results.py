"""Report files of an earlier run with other settings are kept, not replaced."""

import json

import pytest

from fastunlearn._earlier_results import keep_earlier_run
from fastunlearn.influence.experiment import _write_report_files


def write_run(folder, stem, config, png=True):
    (folder / f"{stem}.json").write_text(json.dumps({"config": config, "value": config}))
    (folder / f"{stem}.md").write_text(f"![plot]({stem}.png)\n")
    if png:
        (folder / f"{stem}.png").write_bytes(b"png")


def test_nothing_moves_without_earlier_files_or_with_the_same_settings(tmp_path):
    assert keep_earlier_run(tmp_path, "repair_digits", {"seed": 1}) is None
    write_run(tmp_path, "repair_digits", {"seed": 1, "progress": True, "cache_dir": "a"})
    # progress and the cache folder change no result
    assert keep_earlier_run(tmp_path, "repair_digits",
                            {"seed": 1, "progress": False, "cache_dir": "b"}) is None
    assert (tmp_path / "repair_digits.json").is_file()
    assert not (tmp_path / "earlier").exists()


def test_other_settings_move_the_earlier_files_together_with_a_warning(tmp_path):
    write_run(tmp_path, "repair_digits", {"seed": 1, "solver": "cg", "protocols": ["both"]})
    with pytest.warns(UserWarning, match=r"other settings \('protocols': \['both'\] -> "
                                         r"\['one-shot'\]; 'solver': 'cg' -> 'lissa'\)"):
        moved = keep_earlier_run(tmp_path, "repair_digits",
                                 {"seed": 1, "solver": "lissa", "protocols": ("one-shot",)})
    assert moved == tmp_path / "earlier" / "repair_digits-1"
    assert sorted(p.name for p in moved.iterdir()) == [
        "repair_digits.json", "repair_digits.md", "repair_digits.png"]
    assert not list(tmp_path.glob("repair_digits.*"))
    # the Markdown's figure link still points at its figure
    assert "(repair_digits.png)" in (moved / "repair_digits.md").read_text()
    assert json.loads((moved / "repair_digits.json").read_text())["config"]["solver"] == "cg"
    # a third run with yet other settings: the next free number, nothing overwritten
    write_run(tmp_path, "repair_digits", {"seed": 2}, png=False)
    with pytest.warns(UserWarning, match="repair_digits-2"):
        assert keep_earlier_run(tmp_path, "repair_digits", {"seed": 3}) == (
            tmp_path / "earlier" / "repair_digits-2")
    assert (moved / "repair_digits.json").is_file()


def test_a_file_named_earlier_is_left_alone(tmp_path):
    """The user's own file ``earlier`` (not a folder) gave a raw NotADirectoryError after
    the run's work; the earlier results now go to ``earlier-runs``."""
    (tmp_path / "earlier").write_text("my notes")
    write_run(tmp_path, "repair_digits", {"seed": 1})
    with pytest.warns(UserWarning, match="earlier-runs"):
        moved = keep_earlier_run(tmp_path, "repair_digits", {"seed": 2})
    assert moved == tmp_path / "earlier-runs" / "repair_digits-1"
    assert (moved / "repair_digits.json").is_file()
    assert (tmp_path / "earlier").read_text() == "my notes"
    (tmp_path / "earlier-runs" / "x").mkdir()  # an existing folder is reused
    write_run(tmp_path, "repair_digits", {"seed": 3})
    with pytest.warns(UserWarning):
        assert keep_earlier_run(tmp_path, "repair_digits", {"seed": 4}) == (
            tmp_path / "earlier-runs" / "repair_digits-2")


def test_an_unreadable_earlier_json_counts_as_other_settings(tmp_path):
    (tmp_path / "features_wine.json").write_text("{not json")
    (tmp_path / "features_wine.md").write_text("notes")
    with pytest.warns(UserWarning, match="no settings recorded"):
        moved = keep_earlier_run(tmp_path, "features_wine", {"seed": 0})
    assert (moved / "features_wine.md").read_text() == "notes"


def test_many_differences_are_summarised(tmp_path):
    write_run(tmp_path, "s", {f"k{i}": i for i in range(7)})
    with pytest.warns(UserWarning, match="and 3 more"):
        keep_earlier_run(tmp_path, "s", {f"k{i}": -i - 1 for i in range(7)})


def test_the_report_writer_keeps_an_earlier_run(tmp_path):
    """The writer behind ``repair`` and ``unlearn-features`` reports: a second run with other
    settings keeps the first one's files; a repeat with the same settings replaces them."""
    def render(result, plot_name):
        return f"seed {result['config']['seed']}\n"

    _write_report_files({"config": {"seed": 1}}, tmp_path, "repair_digits", render=render,
                        plot=None)
    _write_report_files({"config": {"seed": 1}}, tmp_path, "repair_digits", render=render,
                        plot=None)
    assert not (tmp_path / "earlier").exists()
    with pytest.warns(UserWarning, match="'seed': 1 -> 2"):
        _write_report_files({"config": {"seed": 2}}, tmp_path, "repair_digits", render=render,
                            plot=None)
    assert (tmp_path / "earlier" / "repair_digits-1" / "repair_digits.md").read_text() == "seed 1\n"
    assert (tmp_path / "repair_digits.md").read_text() == "seed 2\n"
