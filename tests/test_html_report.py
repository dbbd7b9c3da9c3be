"""Self-contained HTML from every Markdown report (``fastunlearn.report.html``, ``html``).

Each report type is rendered by its own renderer from a small synthetic result, converted,
and read back with :class:`html.parser.HTMLParser`: the page is well formed, its tables
have the report's rows and columns, its PNGs are embedded as ``data:`` URIs, and text from
the user (method and data-set names, paths) stays text.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fastunlearn import report as report_pkg
from fastunlearn.cli import main
from fastunlearn.exposure.experiment import CanaryConfig, CanaryResult, ExposureMeasurement
from fastunlearn.exposure.exposure import SkewNormalFit
from fastunlearn.harness.report import render_table
from fastunlearn.influence.experiment import render_report
from fastunlearn.influence.feature_experiment import render_feature_report
from fastunlearn.metrics.report import render_evaluation_markdown
from fastunlearn.report import markdown_to_html, write_html_report, write_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = '<b>x</b>|y'  # a user's name that must stay text, pipe included
VOID = {"meta", "img", "br", "hr", "link", "input"}


# ---- helpers --------------------------------------------------------------------------------


def _png(path: Path) -> Path:
    """Write a valid 1 x 1 RGB PNG at ``path``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_SIGNATURE
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
                     + chunk(b"IEND", b""))
    return path


class _Page(HTMLParser):
    """What a test looks at in a page: nesting errors, tables, images, links, text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str | None]] = []
        self.links: list[str | None] = []
        self.title = ""
        self.chunks: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "title":
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _page(document: str) -> _Page:
    """Parse ``document``; assert that it is a complete, well-formed page without scripts."""
    assert document.startswith("<!DOCTYPE html>\n<html")
    assert document.rstrip().endswith("</html>")
    page = _Page()
    page.feed(document)
    page.close()
    assert page.errors == []
    assert page.stack == [], f"unclosed tags: {page.stack}"
    assert {"html", "head", "title", "style", "body"} <= set(page.tags)
    assert "script" not in page.tags and "iframe" not in page.tags
    return page


def _shapes(page: _Page) -> list[tuple[int, int]]:
    """``(rows, columns)`` of every table (header row included); all rows as wide."""
    shapes = []
    for table in page.tables:
        widths = {len(row) for row in table}
        assert len(widths) == 1, f"ragged table: {table}"
        shapes.append((len(table), widths.pop()))
    return shapes


def _embedded_png(page: _Page, count: int) -> None:
    """Assert ``count`` images, every one a data URI holding a PNG."""
    assert len(page.images) == count
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):]).startswith(PNG_SIGNATURE)


def _convert(tmp_path: Path, name: str, markdown: str) -> tuple[_Page, str]:
    source = tmp_path / name
    source.write_text(markdown, encoding="utf-8")
    written = write_html_report(source)
    assert written == source.with_suffix(".html")
    document = written.read_text(encoding="utf-8")
    return _page(document), document


# ---- synthetic results ----------------------------------------------------------------------


def _removal_result(tmp_path: Path) -> dict:
    records = [{"n_removed": i + 1, "indices": [i], "bound": 0.1 * (i + 1), "cumulative": 0.5,
                "budget_left": 1.0, "retrained": i == 12, "seconds": 0.001}
               for i in range(20)]
    return {
        "config": {"dataset": "digits", "train_mode": "binary", "lam": 0.01, "std": 1.0,
                   "gamma": "paper", "solver": "auto", "device": "cpu", "seed": 0},
        "data": {"dataset": "digits", "extractor": "none", "train_mode": "binary",
                 "classes": [3, 8], "n_train": 285, "n_test": 72, "n_features": 64},
        "training": {"train_accuracy": 0.99, "test_accuracy": 0.97},
        "final": {"test_accuracy": 0.96, "gradient_residual": 1e-3, "distance_bound": 1e-4},
        "privacy": {"epsilon": 1.0, "delta": 1e-4, "budget": 2.0, "removals": 20,
                    "retrains": 1, "removals_supported": 12},
        "fairness": {"before": {"per_class": {"3": 0.98, "8": 0.96}, "worst_class": "8",
                                "worst_accuracy": 0.96, "largest_gap": 0.02},
                     "after": {"per_class": {"3": 0.97, "8": 0.95}, "worst_class": "8",
                               "worst_accuracy": 0.95, "largest_gap": 0.02}},
        "timings": {"fit_seconds": 0.1, "retrain_seconds": 0.1,
                    "removal_seconds_median": 0.001, "speedup": 100.0},
        "records": records,
        "files": {key: str(_png(tmp_path / f"run_{key}.png"))
                  for key in ("bounds_plot", "accuracy_plot", "time_plot")},
    }


def _repair_result() -> dict:
    steps = [{"step": 1, "mispredicted": 10, "batch": 10, "eval": 0.9, "residual": 1e-5,
              "solver_iterations": 30, "applied": True, "reason": None},
             {"step": 2, "mispredicted": 4, "batch": 4, "eval": 0.92, "residual": 1e-5,
              "solver_iterations": 31, "applied": False, "reason": "diverged | tau too big"}]
    return {
        "config": {"model": "small_cnn", "seed": 42, "order": 2, "solver": "cg"},
        "data": {"dataset": "digits", "flipped": 280, "n_train": 1438,
                 "updated_params": 6090, "num_params": 6090},
        "training": {"acc_clean": 0.94, "retrain_seconds": 2.0, "acc_poisoned": 0.91,
                     "poisoned_train_seconds": 1.8, "residual_poisoned": 1213.0},
        # protocol names are fixed choices: render_report does not escape "|" in them
        "protocols": {"<b>x</b>": {"acc_after": 0.93, "seconds": 5.5, "restored": 0.6,
                             "residual": 1168.0, "num_gradients": 292, "num_hvps": 9347,
                             "speedup_vs_retrain": 0.35, "steps": steps}},
    }


def _feature_result() -> dict:
    def method(order: int) -> dict:
        return {"acc": 0.9, "residual": 100.0 / order, "distance_retrained": 1.0 / order,
                "seconds": 0.03, "speedup_vs_retrain": 30.0,
                "update": {"num_gradients": 2876, "num_hvps": 0 if order == 1 else 500,
                           "solver_iterations": 0 if order == 1 else 46, "tau": 1e-3,
                           "applied": True, "reason": None}}

    linear = {"order1": {"residual_before": 12.7, "residual": 2.7, "bound": None,
                         "sigma_required": 85.0, "distance_retrained": 0.9, "acc": 0.96,
                         "time_s": 0.0007},
              "order2": {"residual_before": 12.7, "residual": 0.17, "bound": 5.8,
                         "sigma_required": 5.4, "distance_retrained": 0.03, "acc": 0.99,
                         "time_s": 0.0018}}
    return {
        "config": {"mode": "remove", "value": 0.0, "n_rows": 50, "l2": 10.0, "steps": 1},
        "data": {"dataset": "digits", "n_train": 1438, "n_features": 64, "num_classes": 10,
                 "columns": [3, 4], "column_names": ["pixel_0_3", "pixel_0_4"],
                 "num_affected": 1438, "num_params": 650},
        "original": {"acc": 0.93, "residual": 372.0, "distance_retrained": 1.87,
                     "seconds": 2.3},
        "retrained": {"acc": 0.92, "residual": 7.8e-6, "seconds": 1.2},
        "methods": {"first_order": method(1), "second_order": method(2)},
        "linear": {"binary": [3, 8], "lam": 0.01, "n_train": 285, "num_affected": 285,
                   "epsilon": 0.1, "delta": 0.01, "acc_retrained": 0.99,
                   "acc_original": 0.97, "distance_original": 1.04, "methods": linear},
    }


def _forget_result() -> dict:
    ok = {"status": "ok", "num_ok": 1, "runs": [{}], "unlearning_accuracy": 1.0,
          "retain_accuracy": 0.97, "test_accuracy": 0.96, "seconds": 3.6, "time_ratio": 5.3}
    failed = {"status": "failed", "num_ok": 0, "runs": [{}],
              "error": "RuntimeError: <script>alert(1)</script>\ntraceback"}
    return {
        "config": {"model": "small_cnn", "forget": "class:3", "seeds": 1, "oracles": 2},
        "data": {"dataset": 'my "digits"', "num_train": 1438, "num_test": 322,
                 "num_classes": 10, "num_forget": 146, "num_retain": 1292},
        "original": {"test_accuracy": 0.64, "seconds": 2.7},
        "oracles": {"mean_seconds": 0.67, "test_accuracy": 0.57},
        "methods": {"finetune": ok, EVIL: failed},
        "timing": {"total_seconds": 8.5},
        "cache": {"hits": 0, "misses": 3},
    }


def _evaluation_result(path: str) -> dict:
    method = {"forget_accuracy": 0.0, "csv": {"retain_accuracy": 0.97, "test_accuracy": 0.96},
              "epsilon_hat": math.inf, "seed_a": {"n_infinite": 3, "n_nan": 0},
              "fairness": {"worst_class": 3, "worst_accuracy": 0.0, "largest_gap": 0.1},
              "time_ratio": 5.3}
    return {"path": path, "num_examples": 146, "num_models": 2, "num_classes": 10,
            "delta": 0.05, "competition_delta": 1e-5,
            "retrain": {"forget_accuracy": 0.0, "csv": {"retain_accuracy": 0.62}},
            "methods": {"finetune": method, EVIL: {**method, "error": "bad | logits"}}}


def _canary_result() -> CanaryResult:
    fit = SkewNormalFit(a=-3.9, loc=40.0, scale=3.5, n=9999)

    def measured(secret: str, rank: int) -> ExposureMeasurement:
        return ExposureMeasurement(
            secret=secret, log_perplexity=33.0, rank=rank, rank_exposure=4.4,
            skew_normal_exposure=4.3, max_exposure=13.29, space_size=10000, n_scored=9999,
            exhaustive=True, fit=fit)

    config = CanaryConfig(secret="6604", secret_length=4, prefix="my <pin> is ", steps=3)
    return CanaryResult(config=config, canary=measured("6604", 461),
                        control=measured("8764", 575), completion="the <b> *x*",
                        final_loss=1.9, text_chars=25064, train_s=3.8, measure_s=0.5,
                        model=None, vocab=None, text="", canary_offsets=[])


# ---- every report type ----------------------------------------------------------------------


def test_certified_removal_report_keeps_its_tables_and_embeds_its_three_plots(tmp_path):
    md = write_markdown(_removal_result(tmp_path), tmp_path / "run.md")
    page, _ = _convert(tmp_path, "run.md", md.read_text(encoding="utf-8"))
    assert page.title == "Certified removal: digits binary"
    shapes = _shapes(page)
    # setup, privacy, accuracy, fairness per class and summary, timings, removals
    assert shapes[0] == (13, 2) and shapes[3] == (3, 3) and shapes[4] == (3, 4)
    assert shapes[-1] == (1 + 10 + 1 + 5, 7)  # head, "...", tail
    assert len(shapes) == 7
    _embedded_png(page, 3)
    assert page.images[0]["alt"].startswith("Used budget")
    assert "em" in page.tags and "Test accuracy during removals." in page.text


def test_repair_report_shows_a_protocol_named_like_markup_as_text(tmp_path):
    _png(tmp_path / "repair_digits.png")
    page, document = _convert(tmp_path, "repair_digits.md",
                              render_report(_repair_result(), "repair_digits.png"))
    assert _shapes(page) == [(4, 3), (2, 7), (3, 8)]
    assert page.tables[0][3][0] == "repaired (<b>x</b>)"
    assert page.tables[2][2][-1] == "diverged | tau too big"
    assert "<b>x</b> steps" in page.text and "b" not in page.tags
    assert "&lt;b&gt;x&lt;/b&gt; steps" in document
    _embedded_png(page, 1)


def test_feature_report_keeps_underscores_inside_words(tmp_path):
    _png(tmp_path / "features_digits.png")
    page, _ = _convert(tmp_path, "features_digits.md",
                       render_feature_report(_feature_result(), "features_digits.png"))
    assert _shapes(page) == [(5, 5), (3, 7), (3, 8)]
    assert "(pixel_0_3, pixel_0_4)" in page.text and "em" not in page.tags
    assert page.title == "Feature unlearning: digits"
    _embedded_png(page, 1)


def test_forget_table_escapes_method_names_errors_and_the_data_set(tmp_path):
    page, document = _convert(tmp_path, "results.md", render_table(_forget_result()))
    assert _shapes(page) == [(5, 13)]
    names = [row[0] for row in page.tables[0][1:]]
    assert names == ["original", "retrain (oracles)", "finetune", EVIL]
    assert "b" not in page.tags and "script" not in page.tags
    assert "<script>alert(1)</script>" in page.text  # the error note, as text
    assert 'Data set my "digits"' in page.text and "&quot;digits&quot;" in document
    assert page.tags.count("li") == 1 and page.tags.count("code") >= 4
    assert page.images == []


def test_evaluation_report_shows_a_path_with_quotes_and_markup_as_text(tmp_path):
    path = str(tmp_path / 'logits "a" <b>')
    page, _ = _convert(tmp_path, "evaluation.md",
                       render_evaluation_markdown(_evaluation_result(path)))
    assert _shapes(page) == [(3, 11)]
    assert page.tables[0][2][0] == EVIL
    assert f"Logits: {path}:" in page.text and "b" not in page.tags
    assert "bad | logits" in page.text  # the skipped list's error, its pipe shown
    assert "(RA_U / RA_R)" in page.text and "em" not in page.tags


def test_exposure_report_embeds_its_plot_and_keeps_code_spans(tmp_path):
    from fastunlearn.exposure.experiment import format_report

    _png(tmp_path / "exposure.png")
    markdown = format_report(_canary_result()) + "\n![exposure](exposure.png)\n"
    page, _ = _convert(tmp_path, "exposure.md", markdown)
    assert _shapes(page) == [(3, 6)]
    assert page.tags.count("li") == 4
    assert "canary my <pin> is 6604. inserted" in page.text
    assert "log2|R| = 13.29 bits" in page.text
    assert "Greedy completion of the prefix: the <b> *x*." in page.text
    assert "em" not in page.tags and "b" not in page.tags
    assert [row[0] for row in page.tables[0][1:]] == ["6604", "8764"]
    _embedded_png(page, 1)


# ---- the converter --------------------------------------------------------------------------


def test_the_markdown_subset():
    text = ("# Top *title*\n\nA **bold** and *italic* and _under_ word, snake_case_name, "
            "2 * 3 * 4, `a * b`.\nSecond line \\*not italic\\*.\n\n"
            "## Sub `code`\n\n- one\n  continued\n- two **b**\n\n"
            "```python\n<x> & *y*\n```\n\n"
            "| left | centre | right |\n|:---|:---:|---:|\n| `a\\|b` | c \\| d |\n")
    page = _page(markdown_to_html(text))
    assert page.title == "Top title"
    assert page.tags.count("h1") == 1 and page.tags.count("h2") == 1
    assert page.tags.count("strong") == 2 and page.tags.count("em") == 3  # title too
    assert "snake_case_name" in page.text and "2 * 3 * 4" in page.text
    assert "*not italic*" in page.text
    assert page.tags.count("li") == 2 and "one\ncontinued" in page.text
    assert "<x> & *y*\n" in page.text and "pre" in page.tags
    assert page.tables == [[["left", "centre", "right"], ["a|b", "c | d", ""]]]
    document = markdown_to_html(text)
    assert '<th style="text-align: center">' in document
    assert 'class="language-python"' in document


def _structure(markdown: str) -> str:
    """The block tags of the page's main part, in order (``<ol start=..>`` with its start)."""
    import re

    document = markdown_to_html(markdown)
    _page(document)  # well formed
    body = document[document.index("<main>") + 6:document.index("</main>")]
    return " ".join(re.findall(r"</?(?:ul|ol(?: start=\"\d+\")?|li|p|blockquote|table)>", body))


def test_numbered_and_nested_lists():
    assert _structure("1. one\n2. two\n") == "<ol> <li> </li> <li> </li> </ol>"
    assert _structure("3) three\n4) four\n") == '<ol start="3"> <li> </li> <li> </li> </ol>'
    assert _structure("- a\n  - b\n  - c\n    1. d\n- e\n") == (
        "<ul> <li> <ul> <li> </li> <li> <ol> <li> </li> </ol> </li> </ul> </li> "
        "<li> </li> </ul>")
    # a blank line between items keeps one list; an item's own paragraphs become <p>
    assert _structure("- a\n\n- b\n") == "<ul> <li> </li> <li> </li> </ul>"
    assert _structure("- a\n\n  more of a\n- b\n") == (
        "<ul> <li> <p> </p> <p> </p> </li> <li> </li> </ul>")
    page = _page(markdown_to_html("1. *one*\n   continued\n2. `two`\n"))
    assert "one\ncontinued" in page.text and {"em", "code"} <= set(page.tags)
    # only a list numbered from 1 interrupts a paragraph
    assert _structure("The year\n2026. was long\n") == "<p> </p>"
    assert _structure("Steps:\n1. first\n") == "<p> </p> <ol> <li> </li> </ol>"


def test_block_quotes_hold_paragraphs_lists_and_tables():
    assert _structure("> **Partial result**: stopped.\n> Second line.\n\nafter\n") == (
        "<blockquote> <p> </p> </blockquote> <p> </p>")
    assert _structure("> - a\n> - b\n>\n> | x | y |\n> |---|---|\n> | 1 | 2 |\n") == (
        "<blockquote> <ul> <li> </li> <li> </li> </ul> <table> </table> </blockquote>")
    assert _structure("> > inner\n") == "<blockquote> <blockquote> <p> </p> </blockquote> " \
        "</blockquote>"
    page = _page(markdown_to_html("> <script>alert(1)</script> [x](javascript:alert(1))\n"))
    assert "script" not in page.tags and page.links == [] and "<script>" in page.text


def test_deep_nesting_is_capped_not_a_recursion_error():
    from fastunlearn.report.html import MAX_NESTING

    quotes = markdown_to_html("> " * 5000 + "deep\n")
    assert quotes.count("<blockquote>") == MAX_NESTING + 1 and "deep" in quotes
    lists = markdown_to_html("".join("  " * i + "- x\n" for i in range(300)))
    assert lists.count("<ul>") == MAX_NESTING + 1
    _page(lists)
    body = lists[lists.index("<main>"):lists.index("</main>")]
    assert body.count("x") == 300  # nothing dropped past the cap


def test_a_stopped_repair_report_shows_its_partial_result_note(tmp_path):
    result = _repair_result()
    result.update(stopped_on_request=True, skipped_protocols=["one-shot"],
                  stop_note="stopped on request: iterative: 2 of 10 steps run.")
    page, document = _convert(tmp_path, "repair_stopped.md", render_report(result, None))
    assert "blockquote" in page.tags and "Partial result" in page.text
    assert "2 of 10 steps run" in page.text


def test_title_argument_default_and_escaping():
    assert _page(markdown_to_html("no heading")).title == "fastunlearn report"
    page = _page(markdown_to_html("# Heading", title='<i>"mine"</i>'))
    assert page.title == '<i>"mine"</i>' and "i" not in page.tags
    assert _page(markdown_to_html("# a <b> & c")).title == "a <b> & c"


@pytest.mark.parametrize("markdown", [
    "<script>alert(1)</script>",
    '<img src="x" onerror="alert(1)">',
    "# <script>alert(1)</script>",
    "| a |\n|---|\n| <script>alert(1)</script> |",
    "- <script>alert(1)</script>",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "`</code><script>alert(1)</script>`",
    "![<script>alert(1)</script>](nothing.png)",
    "[<script>alert(1)</script>](https://example.org)",
])
def test_raw_html_never_becomes_markup(markdown):
    page = _page(markdown_to_html(markdown))
    assert page.images == []
    assert "<script>" in page.text or "<img" in page.text


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "JaVaScRiPt:alert(1)", "java\tscript:alert(1)",
    " javascript:alert(1)", "data:text/html,<b>x</b>", "vbscript:x", "//evil.example/x",
    "\\\\evil.example/x", "file:///etc/passwd",
])
def test_only_http_relative_and_anchor_urls_become_links(url):
    page = _page(markdown_to_html(f"[click]({url})"))
    assert page.links == []
    assert "click" in page.text and "a" not in page.tags


def test_safe_urls_become_links():
    page = _page(markdown_to_html(
        "[a](https://example.org/x_(y)?q=1&r=2) [b](http://e.org) [c](other.md#s) "
        '[d](#top) [e](../up/file.html) [**f**](x.md "title")'))
    assert page.links == ["https://example.org/x_(y)?q=1&r=2", "http://e.org", "other.md#s",
                          "#top", "../up/file.html", 'x.md "title"']
    assert "strong" in page.tags


def test_missing_and_outside_images_become_a_note(tmp_path):
    inside, outside = tmp_path / "report", tmp_path / "elsewhere"
    _png(inside / "here.png")
    _png(outside / "there.png")
    (inside / "fake.png").write_text("not a picture")
    text = ("![here](here.png)\n\n![gone](missing.png)\n\n![out](../elsewhere/there.png)\n\n"
            f"![absolute]({outside / 'there.png'})\n\n![fake](fake.png)\n\n"
            "![web](https://example.org/x.png)")
    with pytest.warns(RuntimeWarning, match=r"^5 image\(s\) not embedded"):
        page = _page(markdown_to_html(text, base_dir=inside))
    _embedded_png(page, 1)
    for alt, path in [("gone", "missing.png"), ("out", "../elsewhere/there.png"),
                      ("web", "https://example.org/x.png")]:
        assert f"{alt} (image not found: {path})" in page.text
    assert "fake (not a PNG, JPEG or GIF image: fake.png)" in page.text
    no_base = _page(markdown_to_html("![here](here.png)"))
    assert no_base.images == [] and "(image not found: here.png)" in no_base.text


def test_markdown_to_html_refuses_bad_arguments():
    with pytest.raises(TypeError, match="'text' must be a str"):
        markdown_to_html(b"# bytes")
    with pytest.raises(TypeError, match="'title' must be a str"):
        markdown_to_html("x", title=3)
    with pytest.raises(TypeError, match="'base_dir'"):
        markdown_to_html("x", base_dir=3)
    with pytest.raises(ValueError, match="'base_dir'"):
        markdown_to_html("x", base_dir="")


def test_write_html_report_paths_and_errors(tmp_path):
    source = tmp_path / "report.md"
    source.write_text("# R\n", encoding="utf-8")
    chosen = write_html_report(source, tmp_path / "new" / "folder" / "page.html")
    assert chosen == tmp_path / "new" / "folder" / "page.html" and chosen.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "report.md"]  # no temp file
    with pytest.raises(FileNotFoundError, match="'markdown_path'.*nothing.md"):
        write_html_report(tmp_path / "nothing.md")
    with pytest.raises(ValueError, match="'markdown_path'.*folder"):
        write_html_report(tmp_path)
    with pytest.raises(ValueError, match="'markdown_path' is empty"):
        write_html_report("")
    with pytest.raises(TypeError, match="'markdown_path'"):
        write_html_report(3)
    with pytest.raises(TypeError, match="'html_path'"):
        write_html_report(source, 3)
    with pytest.raises(ValueError, match="'html_path'.*itself"):
        write_html_report(source, source)
    with pytest.raises(ValueError, match="'html_path'.*not a folder"):
        write_html_report(source, source / "below.html")
    (tmp_path / "latin.md").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="'markdown_path'.*UTF-8"):
        write_html_report(tmp_path / "latin.md")
    assert source.read_text(encoding="utf-8") == "# R\n"


def test_the_functions_are_exported():
    assert {"markdown_to_html", "write_html_report"} <= set(report_pkg.__all__)


# ---- the command ----------------------------------------------------------------------------


def _reports(tmp_path: Path, *names: str) -> list[Path]:
    _png(tmp_path / "plot.png")
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_text(f"# {name}\n\n![plot](plot.png)\n", encoding="utf-8")
        paths.append(path)
    return paths


def test_html_command_converts_one_report(tmp_path, capsys):
    (source,) = _reports(tmp_path, "one.md")
    assert main(["html", str(source)]) == 0
    out = tmp_path / "one.html"
    assert capsys.readouterr().out == f"wrote {out}\n"
    _embedded_png(_page(out.read_text(encoding="utf-8")), 1)


def test_html_command_converts_several_reports(tmp_path, capsys):
    sources = _reports(tmp_path, "a.md", "b.md")
    assert main(["html", *map(str, sources)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {s.with_suffix('.html')}"
                                                    for s in sources]
    assert all(s.with_suffix(".html").is_file() for s in sources)


def test_html_command_writes_out_for_one_report(tmp_path, capsys):
    (source,) = _reports(tmp_path, "one.md")
    target = tmp_path / "mail" / "page.html"
    assert main(["html", str(source), "--out", str(target)]) == 0
    assert capsys.readouterr().out == f"wrote {target}\n"
    _embedded_png(_page(target.read_text(encoding="utf-8")), 1)


def test_html_command_refuses_out_with_several_reports(tmp_path, capsys):
    sources = _reports(tmp_path, "a.md", "b.md")
    assert main(["html", *map(str, sources), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "'--out' takes one report, got 2" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.html"))


def test_html_command_names_a_missing_report_and_writes_nothing(tmp_path, capsys):
    (source,) = _reports(tmp_path, "a.md")
    missing = tmp_path / "missing.md"
    assert main(["html", str(source), str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("*.html"))


def test_html_command_refuses_a_folder_and_an_empty_path(tmp_path, capsys):
    assert main(["html", str(tmp_path)]) == 2
    assert "is not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["html", ""])
    assert exc.value.code == 2
    assert "must not be empty" in capsys.readouterr().err
