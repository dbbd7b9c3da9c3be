"""Reports of certified-removal runs: PNG plots (:mod:`.plots`) and Markdown (:mod:`.markdown`).

The plots need matplotlib (imported only when a plot is drawn); the Markdown needs nothing.
:mod:`.html` turns any ``fastunlearn`` Markdown report into one self-contained HTML page.
"""

from .html import markdown_to_html, write_html_report
from .markdown import format_value, render_markdown, write_markdown
from .plots import plot_accuracy, plot_bounds, plot_times

__all__ = [
    "format_value",
    "markdown_to_html",
    "plot_accuracy",
    "plot_bounds",
    "plot_times",
    "render_markdown",
    "write_html_report",
    "write_markdown",
]
