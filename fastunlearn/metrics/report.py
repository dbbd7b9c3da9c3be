"""Markdown table and PNG histogram of an :func:`~.evaluate.evaluate_logits_dir` result."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._atomic_files import save_figure

__all__ = ["json_ready", "plot_epsilon_histogram", "render_evaluation_markdown"]


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON data: non-finite floats as ``"inf"``, ``"-inf"``, ``"nan"``.

    ``json.dumps`` would write the tokens ``Infinity`` / ``NaN``, which are not JSON (jq,
    JavaScript and most other parsers reject the file); ``float()`` reads the strings back.
    Mapping keys become strings, tuples lists and tensors (nested) lists. Used for
    ``evaluation.json`` and the harness's ``results.json``.
    """
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # tensors and numpy values
        return json_ready(value.tolist())
    return value


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


def _rows(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = list(result.get("methods", {}).items())
    if "baseline" in result:
        rows.append(("baseline (retrain vs retrain)", result["baseline"]))
    return rows


def render_evaluation_markdown(result: Mapping[str, Any]) -> str:
    """Render the evaluation result as a Markdown page with one table row per method."""
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
    notes = [f"- `{_cell(name)}`: {_cell(m[key])}" for name, m in _rows(result)
             for key in ("error", "privacy_note") if m.get(key)]
    if notes:
        lines += ["", "Skipped:", *notes]
    mia = result.get("mia", {})
    if mia and not mia.get("applicable", True):
        lines += ["", f"MIA-Efficacy: not applicable ({mia.get('reason')})."]
    return "\n".join(lines) + "\n"


def plot_epsilon_histogram(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Histogram of the finite per-example epsilon-hat values of every method (PNG, Agg).

    Needs ``per_example`` in the result (also as reloaded from ``evaluation.json``, with
    ``"inf"``/``"nan"`` strings). Infinite epsilons are counted in the legend; a method whose
    epsilons are all infinite (or unmeasurable) is named in a note on the axes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    notes = []
    for name, m in _rows(result):
        eps = [_epsilon_value(e) for e in (m.get("per_example", {}).get("epsilon") or [])]
        if not eps:
            continue
        finite = [e for e in eps if math.isfinite(e)]
        n_inf = sum(1 for e in eps if math.isinf(e))
        n_nan = len(eps) - len(finite) - n_inf
        if finite:
            ax.hist(finite, bins=40, histtype="step", linewidth=1.4,
                    label=f"{name} (median {_fmt(m.get('epsilon_hat'), '.2f')}, {n_inf} inf)")
        else:
            notes.append(f"{name}: no finite epsilon ({n_inf} inf, {n_nan} nan)")
    if notes:
        ax.text(0.99, 0.98, "\n".join(notes), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="tab:red")
    ax.set_xlabel(f"per-example epsilon (Seed A, delta = {result.get('delta')})")
    ax.set_ylabel("forget examples")
    ax.set_title("Per-example epsilon of the likelihood-ratio attack")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return save_figure(fig, path)
