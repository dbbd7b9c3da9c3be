"""Result files are written whole or not at all (a temporary name, then a rename)."""

import pathlib
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from fastunlearn._atomic_files import replace_atomically, save_figure, write_text  # noqa: E402

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fastunlearn"


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old run\n")

    def half_then_interrupt(tmp):
        tmp.write_text('{"truncat')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(target, half_then_interrupt)
    assert target.read_text() == "old run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    assert write_text(target, "new run\n") == target
    assert target.read_text() == "new run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_save_figure_writes_a_png_and_creates_folders(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "a" / "plot.png")
    plt.close(fig)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["plot.png"]


# Writes allowed outside the helper: into a staging folder that is renamed into place whole.
STAGED = {"harness/report.py", "metrics/fixtures.py"}


def test_result_files_are_only_written_through_the_helper():
    direct = re.compile(r"\.(write_text|write_bytes|savefig)\(|np\.save\(")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "_atomic_files.py" or rel in STAGED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if direct.search(line) and "replace_atomically" not in line:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "write result files with fastunlearn._atomic_files:\n" + "\n".join(
        offenders)
