"""``fastunlearn html``: an unwritable target is a clean error; missing images are reported."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from fastunlearn.cli import main
from fastunlearn.report import cli as html_cli
from fastunlearn.report import markdown_to_html, write_html_report


def _report(tmp_path: Path, body: str = "# R\n\ntext\n") -> Path:
    path = tmp_path / "r.md"
    path.write_text(body)
    return path


@pytest.mark.parametrize(("use_out", "named"), [(True, "out"), (False, "REPORT.md")])
def test_an_unwritable_folder_is_refused_before_writing(tmp_path, monkeypatch, capsys,
                                                        use_out, named):
    seen = []

    def refuse(folder, *, argument, names=()):
        seen.append((Path(folder), argument))
        raise ValueError(f"'{argument}' {str(folder)!r}: {str(folder)!r} is not writable")

    monkeypatch.setattr(html_cli, "check_output_folder", refuse)
    report = _report(tmp_path)
    target = tmp_path / "pages" / "x.html"
    argv = ["html", str(report)] + (["--out", str(target)] if use_out else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastunlearn html: error: '{named}'") and "is not writable" in err
    assert ".tmp" not in err
    assert seen == [((target if use_out else report.with_suffix(".html")).parent, named)]
    assert not list(tmp_path.rglob("*.html"))


def test_a_missing_image_is_reported(tmp_path):
    report = _report(tmp_path, "# R\n\n![plot](missing.png)\n\n![other](/etc/hostname)\n")
    with pytest.warns(RuntimeWarning, match=r"2 image\(s\) not embedded .*missing.png \(image "
                                            r"not found\), /etc/hostname \(image not found\)"):
        page = write_html_report(report)
    assert "missing-image" in page.read_text()


def test_no_warning_without_a_folder_or_missing_image(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        markdown_to_html("![plot](missing.png)")  # no base_dir: nothing is embedded anyway
        write_html_report(_report(tmp_path))
