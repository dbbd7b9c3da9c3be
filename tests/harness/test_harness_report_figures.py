"""``results.md`` of ``fastunlearn forget`` links its PNGs, so ``fastunlearn html`` embeds them,
and the table tells an undefined number (``nan``) from one not computed (``-``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastunlearn.data import load_digits_dataset
from fastunlearn.harness import HarnessConfig, HarnessData, TrainSettings, run_harness
from fastunlearn.harness.report import render_table
from fastunlearn.report import write_html_report

_DIGITS = load_digits_dataset()
DATA = HarnessData(_DIGITS.X_train[:150].float(), _DIGITS.y_train[:150],
                   _DIGITS.X_test[:60].float(), _DIGITS.y_test[:60], 10, "digits-150")


def _run(tmp: Path, **kw: object) -> dict:
    config = HarnessConfig(methods=("influence", "finetune"), seeds=2, oracles=2, model="mlp",
                           train=TrainSettings(epochs=1), forget="class:3", mia=False,
                           cache_dir=str(tmp / "cache"), out_dir=str(tmp / "out"),
                           overrides={"finetune": {"epochs": 1}}, **kw)  # type: ignore[arg-type]
    return run_harness(config, DATA)


@pytest.fixture(scope="module")
def with_plots(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("plots")
    return _run(tmp), tmp / "out"


def test_results_md_links_every_png_written(with_plots: tuple[dict, Path]) -> None:
    result, out = with_plots
    markdown = (out / "results.md").read_text()
    linked = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", markdown)
    written = sorted(p.name for p in out.glob("*.png"))
    assert sorted(linked) == written
    assert set(written) == {"epsilon_hist.png", "accuracy.png", "time.png"}
    assert markdown.startswith(render_table(result))  # the console's table, then figures


def test_the_html_page_embeds_the_plots(with_plots: tuple[dict, Path], tmp_path: Path) -> None:
    _, out = with_plots
    page = write_html_report(out / "results.md", tmp_path / "results.html")
    html = Path(page).read_text()
    assert html.count("data:image/png;base64,") == 3


def test_without_plots_no_figure_is_linked(tmp_path: Path) -> None:
    _run(tmp_path, plots=False)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## Figures" not in markdown and ".png" not in markdown


def test_an_undefined_epsilon_shows_nan_not_a_dash(with_plots: tuple[dict, Path]) -> None:
    result, _ = with_plots
    eps = result["methods"]["influence"]["epsilon_hat"]
    assert eps != eps  # the same model on every seed: no spread to fit
    row = next(line for line in render_table(result).splitlines()
               if line.startswith("| influence |"))
    assert row.split("|")[8].strip() == "nan"
    original = next(line for line in render_table(result).splitlines()
                    if line.startswith("| original |"))
    assert original.split("|")[8].strip() == "-"  # not computed for the original
