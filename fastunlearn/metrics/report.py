"""Markdown table and PNG histogram of an :func:`~.evaluate.evaluate_logits_dir` result."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic_files import save_figure
from .._json_data import json_ready

__all__ = ["json_ready", "plot_epsilon_histogram", "render_evaluation_markdown"]


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _cell(text: object) -> str:
    """``text`` for one Markdown table cell or list line: its first line, ``|`` escaped."""
    lines = str(text).strip().splitlines()
    first = lines[0] if lines else ""
    return first.replace("|", "\\|") + (" ..." if len(lines) > 1 else "")


def _epsilon_value(value: Any) -> float:
    """Return a per-example epsilon as a float (None or anything unreadable: NaN).

    Results reloaded from JSON hold ``"inf"``/``"nan"`` strings (:func:`json_ready`).
    """
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


_BASELINE = "baseline (retrain vs retrain)"


def _rows(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = list(result.get("methods", {}).items())
    if "baseline" in result:
        rows.append((_BASELINE, result["baseline"]))
    return rows


def _notes(result: Mapping[str, Any]) -> list[str]:
    """Return the "Skipped" lines: errors and privacy notes, one line per method.

    When every method has the same privacy note (too few models, say), that note is written
    once for all of them instead of once per method.
    """
    methods = list(result.get("methods", {}).items())
    privacy = {str(m.get("privacy_note")) for _, m in methods}
    shared = len(methods) > 1 and len(privacy) == 1 \
        and all(m.get("privacy_note") for _, m in methods)
    lines = [f"- `{_cell(name)}`: {_cell(m['error'])}" for name, m in methods
             if m.get("error")]
    if shared:
        lines.append(f"- all methods: {_cell(methods[0][1]['privacy_note'])}")
    else:
        lines += [f"- `{_cell(name)}`: {_cell(m['privacy_note'])}" for name, m in methods
                  if m.get("privacy_note")]
    base = result.get("baseline", {})
    lines += [f"- `{_cell(_BASELINE)}`: {_cell(base[key])}"
              for key in ("error", "privacy_note") if base.get(key)]
    return lines


def _one_class_note(result: Mapping[str, Any]) -> list[str]:
    """Return a note that the class columns say nothing when the forget set has one class.

    The layout holds forget-set logits only, so class fairness is measured on the forget
    set; for a forgotten class (``class:K``) its one class is the worst and the gap is 0.
    """
    per_class = (result.get("retrain", {}).get("fairness") or {}).get("per_class") or []
    present = [a for a in per_class if isinstance(a, (int, float)) and a == a]  # not nan
    if len(present) != 1:
        return []
    return ["", "The forget set holds one class: the worst class is that class and the "
            "class gap is 0, so both columns repeat the forget accuracy."]


def render_evaluation_markdown(result: Mapping[str, Any], figure: str | None = None) -> str:
    """Render the evaluation result as a Markdown page with one table row per method.

    ``figure``: the file name of the epsilon histogram written beside the page
    (:func:`plot_epsilon_histogram`), linked at its end so ``fastunlearn html`` embeds it;
    None (default) links nothing.
    """
    if figure is not None and not isinstance(figure, str):
        raise TypeError(f"'figure' must be a file name or None, got {type(figure).__name__}")
    ret = result.get("retrain", {})
    csv = ret.get("csv", {})
    lines = [
        "# Unlearning evaluation",
        "",
        f"Logits: `{result.get('path')}`: {result.get('num_examples')} forget examples, "
        f"{result.get('num_models')} retrained models, {result.get('num_classes')} classes.",
        "",
        f"Retrained models: forget accuracy {_fmt(ret.get('forget_accuracy'))} (logits), "
        f"retain {_fmt(csv.get('retain_accuracy'))}, test {_fmt(csv.get('test_accuracy'))} "
        "(metrics.csv).",
        "",
        f"epsilon-hat: Seed A's Gaussian likelihood-ratio attack on the hinge logit, median "
        f"per-example epsilon, delta = {result.get('delta')}. Competition: NeurIPS 2023 "
        f"forget score F (delta = {result.get('competition_delta')}) and final score "
        "F x (RA_U / RA_R) x (TA_U / TA_R).",
        "",
        "| method | forget acc | retain acc | test acc | epsilon-hat | inf / nan | "
        "competition F | final score | worst class (acc) | class gap | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in _rows(result):
        c = m.get("csv", {})
        sa = m.get("seed_a", {})
        fair = m.get("fairness", {})
        worst = (f"{fair.get('worst_class')} ({_fmt(fair.get('worst_accuracy'), '.3f')})"
                 if fair else "-")
        lines.append(
            f"| {_cell(name)} | {_fmt(m.get('forget_accuracy'))} | "
            f"{_fmt(c.get('retain_accuracy'))} | "
            f"{_fmt(c.get('test_accuracy'))} | {_fmt(m.get('epsilon_hat'))} | "
            f"{sa.get('n_infinite', '-')} / {sa.get('n_nan', '-')} | "
            f"{_fmt(m.get('competition_forget_score'))} | "
            f"{_fmt(m.get('competition_final_score'))} | {worst} | "
            f"{_fmt(fair.get('largest_gap'), '.3f')} | {_fmt(m.get('time_ratio'), '.3f')} |"
        )
    notes = _notes(result)
    if notes:
        lines += ["", "Skipped:", *notes]
    lines += _one_class_note(result)
    mia = result.get("mia", {})
    if mia and not mia.get("applicable", True):
        lines += ["", f"MIA-Efficacy: not applicable ({mia.get('reason')})."]
    if figure:
        lines += ["", "## Figures", "", f"![Per-example epsilon-hat of each method]({figure})"]
    return "\n".join(lines) + "\n"


#: A method with fewer finite per-example epsilons than this says so (the legend here, the
#: panel title in ``fastunlearn forget``'s histogram): its few bars are not a distribution.
FEW_FINITE = 5


def plot_epsilon_histogram(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Histogram of the finite per-example epsilon-hat values of every method (PNG, Agg).

    Needs ``per_example`` in the result (also as reloaded from ``evaluation.json``, with
    ``"inf"``/``"nan"`` strings). Infinite epsilons are counted in the legend; a method whose
    epsilons are all infinite (or unmeasurable) is named in a note on the axes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = {name: [_epsilon_value(e) for e in
                     (m.get("per_example", {}).get("epsilon") or [])]
              for name, m in _rows(result)}
    every = [e for eps in values.values() for e in eps if math.isfinite(e)]
    # the same bins for every method: counts per bin are then comparable between methods
    span = (min(every), max(every)) if every and min(every) < max(every) else None
    notes = []
    for name, m in _rows(result):
        eps = values[name]
        if not eps:
            continue
        finite = [e for e in eps if math.isfinite(e)]
        n_inf = sum(1 for e in eps if math.isinf(e))
        n_nan = len(eps) - len(finite) - n_inf
        if finite:
            label = f"{name} (median {_fmt(m.get('epsilon_hat'), '.2f')}, {n_inf} inf"
            if len(finite) < FEW_FINITE:
                label += f", only {len(finite)} finite"
            ax.hist(finite, bins=40, range=span, histtype="step", linewidth=1.4,
                    label=label + ")")
        else:
            notes.append(f"{name}: no finite epsilon ({n_inf} inf, {n_nan} nan)")
    if notes:  # right of the axes, below the legend: inside, it covered histograms
        ax.text(1.01, 0.0, "\n".join(notes), transform=ax.transAxes, ha="left",
                va="bottom", fontsize=7, color="tab:red")
    ax.set_xlabel(f"per-example epsilon (Seed A, delta = {result.get('delta')})")
    ax.set_ylabel("forget examples")
    ax.set_title("Per-example epsilon of the likelihood-ratio attack")
    if ax.get_legend_handles_labels()[0]:
        # right of the axes: inside, the legend of many methods covered their histograms
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, path)
