"""``fastunlearn exposure --no-plots`` writes the JSON and Markdown only, like the others."""

from fastunlearn.cli import main

TINY = ["exposure", "--steps", "2", "--n-sentences", "30", "--secret-length", "1",
        "--insertions", "2", "--hidden", "4", "--embed-dim", "4", "--seq-len", "8",
        "--batch-size", "2", "--no-progress"]


def test_no_plots_writes_no_png_and_links_none(tmp_path, capsys):
    assert main([*TINY, "--no-plots", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exposure.json", "exposure.md"]
    assert "exposure.png" not in (tmp_path / "exposure.md").read_text()
    wrote = capsys.readouterr().out.splitlines()[-1]
    assert wrote.startswith("wrote ") and "exposure.png" not in wrote


def test_plots_by_default_and_a_stale_plot_goes_with_no_plots(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "exposure.png").read_bytes().startswith(b"\x89PNG")
    assert "![exposure](exposure.png)" in (tmp_path / "exposure.md").read_text()
    # a later run without plots: the earlier run's PNG would not match its results
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*TINY, "--no-plots", "--out", str(tmp_path)]) == 0  # the same settings
    assert not (tmp_path / "exposure.png").exists() and not (tmp_path / "earlier").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_run_with_other_settings_keeps_the_earlier_one(tmp_path, capsys):
    """Another --seed into the same --out: the first run's files move to
    earlier/exposure-1/ (its Markdown still finds its figure) with a warning."""
    import pytest

    assert main([*TINY, "--out", str(tmp_path)]) == 0
    first = (tmp_path / "exposure.json").read_text()
    with pytest.warns(UserWarning, match="'seed': 0 -> 1"):
        assert main([*TINY, "--seed", "1", "--no-plots", "--out", str(tmp_path)]) == 0
    kept = tmp_path / "earlier" / "exposure-1"
    assert sorted(p.name for p in kept.iterdir()) == [
        "exposure.json", "exposure.md", "exposure.png"]
    assert (kept / "exposure.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "earlier", "exposure.json", "exposure.md"]
