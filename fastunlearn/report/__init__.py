"""Reports of certified-removal runs: PNG plots (:mod:`.plots`) and Markdown (:mod:`.markdown`).

The plots need matplotlib (imported only when a plot is drawn); the Markdown needs nothing.
"""

from .markdown import format_value, render_markdown, write_markdown
from .plots import plot_accuracy, plot_bounds, plot_times

__all__ = [
    "format_value",
    "plot_accuracy",
    "plot_bounds",
    "plot_times",
    "render_markdown",
    "write_markdown",
]
