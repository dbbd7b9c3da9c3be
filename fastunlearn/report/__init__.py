"""Reports of certified-removal runs: PNG plots (:mod:`.plots`) and Markdown (:mod:`.markdown`).

The plots need matplotlib (imported only when a plot is drawn); the Markdown needs nothing.
:mod:`.html` turns any ``fastunlearn`` Markdown report into one self-contained HTML page.
"""

from typing import TYPE_CHECKING

from .._lazy_exports import install_lazy_exports

if TYPE_CHECKING:
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

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)
