"""Markdown report of a certified-removal run.

:func:`render_markdown` turns the JSON form of an experiment result (the dict written by
:func:`~fastunlearn.certified.experiment.run_removal_experiment`, see
:meth:`ExperimentResult.to_dict`) into a Markdown page: setup, privacy (epsilon, delta,
budget, removals supported, retrains), accuracy, fairness (per-class accuracy, worst class,
largest gap), timings (removal vs full retraining), the first and last removals and the
plots. Missing sections or fields are left out or shown as ``-``, so partial results (e.g.
synthetic records in tests) render too.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._atomic_files import write_text
from .._json_data import NON_FINITE_STRINGS
from .._paths import check_output_file

__all__ = ["format_value", "render_markdown", "write_markdown"]

#: Plot key -> caption, in the order they appear.
PLOT_CAPTIONS = {
    "bounds_plot": "Used budget (cumulative data-dependent bound) against the budget",
    "accuracy_plot": "Test accuracy during removals",
    "time_plot": "Time per removal against a full retraining",
}

#: Records shown at the start and at the end of the removal table.
_HEAD, _TAIL = 10, 5


#: Ints with more digits are written in scientific notation (a count of 10**400 would
#: otherwise fill a table cell with 401 digits).
_MAX_INT_DIGITS = 15


def _format_int(value: int) -> str:
    """``value`` in full, or as ``d.ddde+N`` (truncated) beyond :data:`_MAX_INT_DIGITS`."""
    digits = str(abs(value))
    if len(digits) <= _MAX_INT_DIGITS:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


def format_value(value: Any, spec: str = ".4g") -> str:
    """Format one table cell: numbers with ``spec``, None/NaN as ``-``, bools as yes/no.

    numpy scalars are formatted as the Python numbers they hold; the strings ``"inf"``,
    ``"-inf"`` and ``"nan"`` (non-finite floats in results' JSON form,
    :mod:`fastunlearn._json_data`) as those floats.

    Raises:
        TypeError: ``spec`` is not a str.
        ValueError: ``spec`` is not a format spec for floats.

    """
    if not isinstance(spec, str):
        raise TypeError(f"'spec' must be a format spec str, got {type(spec).__name__}")
    try:
        format(0.0, spec)
    except ValueError as exc:
        raise ValueError(f"'spec' {spec!r} is not a float format spec: {exc}") from None
    if isinstance(value, str) and value in NON_FINITE_STRINGS:  # JSON's non-finite floats
        value = float(value)
    if value is None:
        return "-"
    if _is_bool(value):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return _format_int(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return format(value, spec)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, spec) for v in value)
    return str(value)


def _is_bool(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy bool (numpy is not imported here)."""
    kind = type(value)
    return isinstance(value, bool) or (kind.__module__ == "numpy" and kind.__name__ == "bool")


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    """Return a section of the result: a mapping, or None/missing (an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"'{name}' must be a mapping, got {type(value).__name__}")
    return value


def _pct(value: Any) -> str:
    # Python or NumPy reals (numbers.Real covers NumPy's), not bools; an int too large for
    # a float is not finite
    if isinstance(value, numbers.Real) and not _is_bool(value):
        try:
            if math.isfinite(value):
                return f"{100.0 * float(value):.2f} %"
        except OverflowError:
            pass
    return "-"


def _cell(text: str) -> str:
    """Escape what would break a table row: ``|`` splits a cell, a line break ends the row."""
    return " ".join(str(text).replace("|", "\\|").split())


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return lines + [""]


def _kv_table(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return _table(("quantity", "value"), [(k, v) for k, v in pairs])


def _setup_section(result: Mapping[str, Any]) -> list[str]:
    config, data = result.get("config", {}), result.get("data", {})
    pairs = [
        ("data set", format_value(data.get("dataset", config.get("dataset")))),
        ("features", format_value(data.get("extractor", config.get("extractor")))),
        ("mode", format_value(data.get("train_mode", config.get("train_mode")))),
        ("classes", format_value(data.get("classes"))),
        ("train / test rows", f"{format_value(data.get('n_train'))} / "
                              f"{format_value(data.get('n_test'))}"),
        ("features d", format_value(data.get("n_features"))),
        ("lambda", format_value(config.get("lam"))),
        ("sigma (std of b)", format_value(config.get("std"))),
        ("gamma", format_value(config.get("gamma"))),
        ("solver / device", f"{format_value(config.get('solver'))} / "
                            f"{format_value(config.get('device'))}"),
        ("batch size", format_value(config.get("batch") or "sequential")),
        ("seed", format_value(config.get("seed"))),
    ]
    return ["## Setup", "", *_kv_table(pairs)]


def _privacy_section(privacy: Mapping[str, Any], batch: Any = None) -> list[str]:
    supported = privacy.get("removals_supported")
    # a batch run's records (and so its bounds) are per batch, not per row
    unit = (f"batch of {int(batch)} rows" if isinstance(batch, numbers.Integral)
            and not _is_bool(batch) and int(batch) > 0 else "removal")
    if privacy.get("removals_supported_is_estimate") and supported is not None:
        supported_text = f"~{format_value(supported)} (projected: no retrain happened)"
    else:
        supported_text = format_value(supported)
    pairs = [
        ("epsilon", format_value(privacy.get("epsilon"))),
        ("delta", format_value(privacy.get("delta"))),
        ("c = sqrt(2 ln(1.5/delta))", format_value(privacy.get("c"))),
        ("budget sigma * epsilon / c", format_value(privacy.get("budget"))),
        ("training residual (norm of grad L_b)", format_value(privacy.get("training_residual"))),
        ("removals done", format_value(privacy.get("removals"))),
        ("automatic retrains", format_value(privacy.get("retrains"))),
        ("removals supported by one budget", supported_text),
        (f"mean data-dependent bound per {unit}", format_value(privacy.get("mean_bound"))),
        (f"worst-case bound per {unit}", format_value(privacy.get("worst_case_bound"))),
        ("budget used / left at the end", f"{format_value(privacy.get('budget_used'))} / "
                                          f"{format_value(privacy.get('budget_left'))}"),
    ]
    if privacy.get("stopped_early"):
        pairs.append(("stopped", format_value(privacy.get("stop_reason"))))
    if privacy.get("budget_hint"):
        pairs.append(("hint", format_value(privacy.get("budget_hint"))))
    extractor = _mapping(privacy.get("extractor"), "result['privacy']['extractor']")
    if extractor:
        name = format_value(extractor.get("name", extractor.get("extractor")))
        if extractor.get("private"):
            composed = _mapping(extractor.get("composed"),
                                "result['privacy']['extractor']['composed']")
            pairs += [
                (f"feature extractor {name} (DP)",
                 f"({format_value(extractor.get('epsilon'))}, "
                 f"{format_value(extractor.get('delta'))})"),
                (f"extractor + head after {format_value(composed.get('removals'))} removals "
                 "(epsilon, delta)", f"({format_value(composed.get('epsilon'))}, "
                                     f"{format_value(composed.get('delta'))})"),
                ("removals supported by extractor + head within total epsilon "
                 f"{format_value(extractor.get('target_epsilon'))} (group privacy)",
                 format_value(extractor.get("removals_supported"))),
            ]
        else:
            pairs.append((f"feature extractor {name}", format_value(extractor.get("note"))))
    return ["## Privacy", "", *_kv_table(pairs)]


def _accuracy_section(result: Mapping[str, Any]) -> list[str]:
    training, final = result.get("training", {}), result.get("final", {})
    pairs = [
        ("train accuracy after fit", _pct(training.get("train_accuracy"))),
        ("test accuracy after fit", _pct(training.get("test_accuracy"))),
        ("test accuracy after the removals", _pct(final.get("test_accuracy"))),
    ]
    if "retrained_test_accuracy" in final:
        pairs.append(("test accuracy of a fresh fit without the removed rows",
                      _pct(final.get("retrained_test_accuracy"))))
    if "gradient_residual" in final:
        pairs += [
            ("true gradient residual after the removals (at most the used budget)",
             format_value(final.get("gradient_residual"))),
            ("distance to retraining with the same noise b, at most",
             format_value(final.get("distance_bound"))),
        ]
    return ["## Accuracy", "", *_kv_table(pairs)]


def _fairness_section(fairness: Mapping[str, Any]) -> list[str]:
    before = _mapping(fairness.get("before"), "result['fairness']['before']")
    after = _mapping(fairness.get("after"), "result['fairness']['after']")
    per_before = _mapping(before.get("per_class"), "result['fairness']['before']['per_class']")
    per_after = _mapping(after.get("per_class"), "result['fairness']['after']['per_class']")
    classes = list(dict.fromkeys([*per_before, *per_after]))
    lines = ["## Fairness (per-class test accuracy)", ""]
    if classes:
        rows = [(str(c), _pct(per_before.get(c)), _pct(per_after.get(c))) for c in classes]
        lines += _table(("class", "after fit", "after removals"), rows)
    worst: list[tuple[str, str, str, str]] = []
    for name, part in (("after fit", before), ("after removals", after)):
        if part:
            worst.append((name, format_value(part.get("worst_class")),
                          _pct(part.get("worst_accuracy")), _pct(part.get("largest_gap"))))
    if worst:
        lines += _table(("model", "worst class", "worst accuracy", "largest gap"), worst)
    return lines


def _timing_section(timings: Mapping[str, Any]) -> list[str]:
    speedup = format_value(timings.get("speedup"), ".1f")
    pairs = [
        ("fit (s)", format_value(timings.get("fit_seconds"))),
        ("full retraining on the remaining data (s)", format_value(timings.get("retrain_seconds"))),
        ("median removal (s)", format_value(timings.get("removal_seconds_median"))),
        ("mean removal incl. automatic retrains (s)",
         format_value(timings.get("removal_seconds_mean"))),
        ("removals per second", format_value(timings.get("removals_per_second"))),
        ("speed-up: retraining / median removal",
         f"{speedup}x" if speedup not in ("-", "inf", "-inf") else speedup),
    ]
    amortised = format_value(timings.get("speedup_with_retrains"), ".1f")
    if amortised != "-":  # None or NaN: no automatic retrain to amortise
        pairs.append(("speed-up: retraining / mean removal incl. automatic retrains",
                      f"{amortised}x" if amortised not in ("-", "inf", "-inf") else amortised))
    return ["## Timings", "", *_kv_table(pairs)]


def _records_section(records: Any) -> list[str]:
    if records is None:
        records = []
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise TypeError(f"'result['records']' must be a list of mappings, got "
                        f"{type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"'result['records'][{i}]' must be a mapping, got "
                            f"{type(rec).__name__}")
    if not records:
        return ["## Removals", "", "No removal was made.", ""]
    shown = list(enumerate(records))
    if len(records) > _HEAD + _TAIL:
        shown = shown[:_HEAD] + [(-1, {})] + shown[-_TAIL:]
    rows = []
    for i, rec in shown:
        if i < 0:
            rows.append(("...",) * 7)
            continue
        rows.append((
            str(rec.get("n_removed", i + 1)), format_value(rec.get("indices")),
            format_value(rec.get("bound"), ".3e"), format_value(rec.get("cumulative"), ".3e"),
            format_value(rec.get("budget_left"), ".3e"),
            "retrain" if rec.get("retrained") else "", format_value(rec.get("seconds"), ".3g"),
        ))
    retrain_at = [str(r.get("n_removed", i + 1)) for i, r in enumerate(records)
                  if r.get("retrained")]
    lines = ["## Removals", ""]
    lines += _table(("#", "rows", "bound", "cumulative", "budget left", "retrain", "seconds"),
                    rows)
    if retrain_at:
        lines += [f"Automatic retrains at removal(s) {', '.join(retrain_at)}.", ""]
    return lines


def _plots_section(plots: Mapping[str, str], base: Path | None) -> list[str]:
    lines = ["## Plots", ""]
    for key, caption in PLOT_CAPTIONS.items():
        if not plots.get(key):
            continue
        if not isinstance(plots[key], (str, os.PathLike)):
            raise TypeError(f"'plots[{key!r}]' must be a path, got {type(plots[key]).__name__}")
        target = Path(plots[key])
        if base is not None:
            try:
                target = Path(os.path.relpath(target, base))
            except ValueError:  # another drive on Windows: keep the absolute path
                pass
        lines += [f"![{caption}]({target.as_posix()})", "", f"*{caption}.*", ""]
    return lines if len(lines) > 2 else []


def render_markdown(
    result: Mapping[str, Any],
    *,
    plots: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Render an experiment result as Markdown.

    Args:
        result: The result dict (``ExperimentResult.to_dict()`` or the JSON file's content)
            with any of the keys ``config``, ``data``, ``training``, ``final``, ``privacy``,
            ``fairness``, ``timings``, ``records``.
        plots: Plot key (``bounds_plot``, ``accuracy_plot``, ``time_plot``) -> PNG path; by
            default ``result["files"]``.
        base_dir: Folder the Markdown file will be in: plot paths are written relative to
            it.

    Returns:
        The Markdown text.

    Raises:
        TypeError: ``result`` or one of its sections is not a mapping, ``records`` is not a
            list of mappings, ``plots`` is not a mapping of paths or ``base_dir`` not a path.

    """
    if not isinstance(result, Mapping):
        raise TypeError(f"'result' must be a mapping, got {type(result).__name__}")
    if base_dir is not None and not isinstance(base_dir, (str, os.PathLike)):
        raise TypeError(f"'base_dir' must be a path, got {type(base_dir).__name__}")
    sections = ("config", "data", "training", "final", "privacy", "fairness", "timings")
    result = {**result, **{k: _mapping(result.get(k), f"result['{k}']") for k in sections}}
    config, data = result["config"], result["data"]
    name = data.get("dataset", config.get("dataset", "?"))
    mode = data.get("train_mode", config.get("train_mode", ""))
    lines = [f"# Certified removal: {name} {mode}".rstrip(), ""]
    privacy = result.get("privacy", {})
    if privacy:
        lines += [
            f"{format_value(privacy.get('removals'))} removals with "
            f"{format_value(privacy.get('retrains'))} automatic retrain(s) at "
            f"(epsilon, delta) = ({format_value(privacy.get('epsilon'))}, "
            f"{format_value(privacy.get('delta'))}); budget "
            f"{format_value(privacy.get('budget'))}.", "",
        ]
        if privacy.get("stopped_early"):  # partial results: said before any number
            lines += [f"**Partial results:** "
                      f"{_cell(format_value(privacy.get('stop_reason')))}.", ""]
    lines += _setup_section(result)
    if privacy:
        lines += _privacy_section(privacy, config.get("batch"))
    if result.get("training") or result.get("final"):
        lines += _accuracy_section(result)
    if result.get("fairness"):
        lines += _fairness_section(result["fairness"])
    if result.get("timings"):
        lines += _timing_section(result["timings"])
    lines += _records_section(result.get("records", []))
    files = _mapping(plots, "plots") if plots is not None else _mapping(
        result.get("files"), "result['files']")
    lines += _plots_section(files, Path(base_dir) if base_dir is not None else None)
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(
    result: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    plots: Mapping[str, str] | None = None,
) -> Path:
    """Render ``result`` (see :func:`render_markdown`) and write it to ``path``.

    Plot paths are made relative to the folder of ``path``; missing folders above ``path``
    are created.

    Returns:
        The path written.

    Raises:
        TypeError: ``path`` is not a path, or as :func:`render_markdown`.
        ValueError: ``path`` is empty, an existing folder, or below a file.

    """
    out = check_output_file(path, create_parents=True)
    text = render_markdown(result, plots=plots, base_dir=out.parent.resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    return out
