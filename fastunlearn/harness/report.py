"""Outputs of a harness run: JSON, a Markdown comparison table, PNG plots, saved logits.

The logits folder uses the fixture layout of :mod:`fastunlearn.metrics.fixtures`
(``logits_retain.npy`` of the oracles, ``<method>/logits_unlearn.npy`` of its seeds, the
``metrics.csv`` files with accuracies and wall times), so ``fastunlearn evaluate
OUT/logits`` re-scores a harness run like the published fixture.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from .._atomic_files import save_figure, swap_in_folder
from .._earlier_results import keep_earlier_run
from .._json_data import json_ready
from .._numbers import check_flag
from .._output_folder import check_output_folder
from .._result_shape import check_result_shape
from ..metrics import write_logits_dir
from ..metrics.report import FEW_FINITE

__all__ = ["check_out_dir", "render_table", "write_outputs"]


def _pct(v: Any, std: Any = None) -> str:
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "-"
    s = f"{100 * v:.1f}"
    if isinstance(std, (int, float)) and math.isfinite(std) and std > 0:
        s += f" ± {100 * std:.1f}"
    return s


def _num(v: Any, spec: str = ".2f", nan: str = "-") -> str:
    """Format a number; ``-`` when missing, ``nan`` text as given (``-``: unknown)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    v = float(v)
    if math.isinf(v):
        return "inf"
    if math.isnan(v):
        return nan
    # 1e300 s in fixed point would be a 300-digit cell
    return format(v, ".3g") if abs(v) >= 1e6 else format(v, spec)


def _cell(text: Any) -> str:
    """Escape what would break a table row: ``|`` splits a cell, a line break ends the row."""
    return " ".join(str(text).replace("|", "\\|").split())


def _first_line(text: Any) -> str:
    """Return the first non-empty line of an error message (``-`` when there is none)."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0][:300] if lines else "-"


def _row(name: str, e: dict[str, Any], status: str) -> str:
    cells = [_cell(name), _cell(status),
             _pct(e.get("unlearning_accuracy"), e.get("unlearning_accuracy_std")),
             _pct(e.get("retain_accuracy"), e.get("retain_accuracy_std")),
             _pct(e.get("test_accuracy"), e.get("test_accuracy_std")),
             _pct(e.get("mia_efficacy"), e.get("mia_efficacy_std")),
             _pct(e.get("avg_gap")),
             # a computed but undefined eps (every seed gave the same model) is "nan"
             _num(e.get("epsilon_hat"), nan="nan"),
             _num(e.get("competition_forget_score"), ".3f"),
             _num(e.get("competition_final_score"), ".3f"),
             _pct(e.get("fairness", {}).get("test_kept_classes", {}).get("worst_accuracy")),
             _num(e.get("seconds"), ".2f"),
             _num(e.get("time_ratio"), ".3f")]
    return "| " + " | ".join(cells) + " |"


def _privacy_notes(result: dict[str, Any]) -> list[str]:
    """Lines saying why eps / F / final are missing (the runner's ``privacy_note``).

    One line for all methods when they share the note (the usual case: too few seeds),
    else one per method; the oracles' half-vs-half baseline gets its own line.
    """
    methods = [(n, str(e["privacy_note"])) for n, e in result["methods"].items()
               if e.get("privacy_note")]
    scored = [n for n, e in result["methods"].items() if e.get("num_ok")]
    lines = []
    if len(methods) > 1 and len(methods) == len(scored) \
            and len({note for _, note in methods}) == 1:
        lines.append(f"- all methods: {_cell(methods[0][1])}")
    else:
        lines += [f"- `{_cell(n)}`: {_cell(note)}" for n, note in methods]
    base_note = result["oracles"].get("baseline", {}).get("privacy_note")
    if base_note:
        lines.append(f"- retrain (oracles), half vs half: {_cell(base_note)}")
    if not lines:
        return []
    return ["", "Not computed (eps, F, final show -): the numbers in brackets are the "
            "oracles and the models compared with them (--oracles, --seeds).", *lines]


def _status(e: dict[str, Any]) -> str:
    """Return the table's status cell: ``partial k/n``, ``not run``, ``ok, k of n seeds``."""
    status = str(e["status"])
    if status == "partial":
        status = f"partial {e['num_ok']}/{len(e['runs'])}"
    missing = e.get("not_run") or []
    if missing and e.get("runs"):  # stopped on request part-way through its seeds
        status += f", {len(e['runs'])} of {len(e['runs']) + len(missing)} seeds run"
    return status


def _resumed_note(result: dict[str, Any]) -> list[str]:
    """Return a paragraph naming the trainings that resumed after kept epochs."""
    epochs = result["config"].get("train", {}).get("epochs")
    resumed = [("original", result["original"].get("resumed_after_epoch") or 0)]
    resumed += [(f"oracle {i}", done) for i, done in
                enumerate(result["oracles"].get("resumed_after_epoch") or [])]
    parts = [f"{name} after epoch {done}" for name, done in resumed if done]
    if not parts:
        return []
    of = f" of {epochs}" if epochs is not None else ""
    return [f"Resumed trainings ({'; '.join(parts)}{of}): an interrupted run had kept these "
            "epochs in the cache; the times shown include them.", ""]


#: The entries of a :func:`~fastunlearn.harness.run_harness` result the table and the
#: outputs read, by section (an empty tuple: the section itself).
_RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "config": ("model", "forget", "seeds", "oracles"),
    "data": ("dataset", "num_train", "num_test", "num_classes", "num_forget", "num_retain"),
    "original": (),
    "oracles": ("mean_seconds",),
    "methods": (),
    "timing": ("total_seconds",),
    "cache": ("hits", "misses"),
}


def _check_result(result: object) -> dict[str, Any]:
    """Refuse what is not a :func:`~fastunlearn.harness.run_harness` result, naming the gap.

    Raises:
        TypeError: ``result`` is not a dict.
        ValueError: A section or an entry the table reads is missing (named).

    """
    return check_result_shape(result, "run_harness", _RESULT_KEYS)


def render_table(result: dict[str, Any]) -> str:
    """Render the Markdown comparison table (a row per method, the original, the oracles).

    A run stopped on request (``result["stopped_on_request"]``) says so right under the
    title, with its ``stop_note``; its methods that did not run show ``not run`` and dashes.

    Raises:
        TypeError: ``result`` is not a dict (or a section of it is not one).
        ValueError: ``result`` lacks a section or an entry of a run_harness result (named).

    """
    _check_result(result)
    cfg, data = result["config"], result["data"]
    dropped = data.get("test_classes_dropped") or []
    test_note = (f" of the classes not forgotten ({', '.join(map(str, dropped))} dropped, as "
                 "in OPTML's class-wise protocol)" if dropped else "")
    lines = ["# fastunlearn forget: comparison", ""]
    if result.get("stopped_on_request"):
        note = result.get("stop_note") or "stopped on request"
        lines += [f"**Partial results:** {_cell(note)}. The numbers below cover the runs "
                  "that were made; the methods marked `not run` did not run.", ""]
    lines += [
        f"Data set `{data['dataset']}` ({data['num_train']} train / {data['num_test']} test"
        f"{test_note}, {data['num_classes']} classes), model `{cfg['model']}`, "
        f"forget `{cfg['forget']}` "
        f"({data['num_forget']} examples), {cfg['seeds']} seed(s) per method, "
        f"{cfg['oracles']} oracle(s) retrained on the {data['num_retain']} retain examples "
        f"(mean {_num(result['oracles']['mean_seconds'])} s each).",
        "",
        *_resumed_note(result),
        "UA = 100 - forget accuracy, RA / TA = retain / test accuracy, MIA = OPTML's SVC "
        "MIA-Efficacy (%), gap = mean |UA, RA, TA, MIA - oracles| (%), eps = Seed A's "
        "epsilon-hat (delta 0.05, lower is better), F / final = NeurIPS 2023 competition "
        "forget / final score (higher is better), worst = worst test accuracy of a class "
        "not forgotten, "
        "time = seconds per run, ratio = time / retraining time. Mean ± std over seeds; "
        "`-`: not computed or unknown, eps `nan`: undefined (every seed gave the same model, "
        "as `influence` does: no spread to fit).",
        "",
        "| method | status | UA | RA | TA | MIA | gap | eps | F | final | worst | time s "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    orig = dict(result["original"])
    lines.append(_row("original", orig, "trained"))
    orc = dict(result["oracles"])
    orc["seconds"] = orc["mean_seconds"]
    # retraining / retraining: 1, unless the retraining time is 0 or unknown (0 / 0)
    mean_s = orc["mean_seconds"]
    orc["time_ratio"] = (1.0 if isinstance(mean_s, (int, float)) and math.isfinite(mean_s)
                         and mean_s > 0 else math.nan)
    if "baseline" in orc:
        for k in ("epsilon_hat", "competition_forget_score"):
            if k in orc["baseline"]:
                orc[k] = orc["baseline"][k]
    lines.append(_row("retrain (oracles)", orc, "oracle"))
    notes, skipped = [], []
    for name, e in result["methods"].items():
        lines.append(_row(name, e, _status(e)))
        if "error" in e:
            notes.append(f"- `{name}`: {_first_line(e['error'])}")
        if e["status"] == "skipped":
            skipped.append(f"- `{name}`: {_first_line(e.get('note'))}")
    if "baseline" in result["oracles"]:
        lines += ["", "The oracles' eps and F compare half of the oracles with the other half "
                  "(the noise floor of both metrics)."]
    lines += _privacy_notes(result)
    if notes:
        lines += ["", "Errors:", *notes]
    if skipped:
        lines += ["", "Skipped (the forget set does not suit them; `--method all` leaves them "
                  "out):", *skipped]
    lines += ["", f"Total wall time: {_num(result['timing']['total_seconds'], '.1f')} s "
              f"(cache: {result['cache']['hits']} hit(s), {result['cache']['misses']} "
              "model(s) trained)."]
    return "\n".join(lines) + "\n"


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_epsilons(result: dict[str, Any], path: Path) -> Path | None:
    """Histograms of the per-example epsilons of every method (one panel each)."""
    rows = [(n, e) for n, e in result["methods"].items() if "per_example" in e]
    if "baseline" in result["oracles"]:
        rows.append(("oracles vs oracles", result["oracles"]["baseline"]))
    if not rows:
        return None
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    # at least 6.4 in wide: the suptitle does not fit in one 3.2 in panel
    fig = _figure((max(6.4, 3.2 * cols), 2.4 * nrows + 0.6))
    for i, (name, e) in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, i + 1)
        eps = e["per_example"]["epsilon"]
        finite = [v for v in eps if math.isfinite(v)]
        n_inf = sum(1 for v in eps if math.isinf(v))
        title = f"{name}: median {_num(e.get('epsilon_hat'))}, {n_inf}/{len(eps)} inf"
        if finite:
            ax.hist(finite, bins=30, color="tab:blue")
            if len(finite) < FEW_FINITE:
                title += f"\nonly {len(finite)} finite: too few for a histogram"
        else:
            n_nan = sum(1 for v in eps if math.isnan(v))
            ax.text(0.5, 0.5, f"no finite epsilon\n{n_inf} inf, {n_nan} nan\n"
                    "(more seeds/oracles help)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])  # 0..1 ticks of an empty panel would read as data
            ax.set_yticks([])
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Per-example epsilon (Seed A, delta 0.05) on the forget set", fontsize=9)
    fig.supxlabel("per-example epsilon (finite values; inf counted in the titles)",
                  fontsize=8)
    fig.supylabel("forget examples", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _bar_values(values: list[Any], scale: float = 1.0) -> tuple[list[float], list[str]]:
    """Bar heights (NaN where there is no finite number) and the word for each missing one.

    None, NaN and inf are not drawn as bars (an inf bar breaks the axis, a NaN one would
    silently vanish): the caller writes the word (``n/a``, ``inf``) at the bar's place.
    """
    heights, words = [], []
    for v in values:
        try:
            x = float(v) if v is not None and not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if math.isfinite(x):
            heights.append(scale * x)
            words.append("")
        else:
            heights.append(math.nan)
            words.append("inf" if x == math.inf else "-inf" if x == -math.inf else "n/a")
    return heights, words


def _mark_missing(ax: Any, xs: list[float], words: list[str]) -> None:
    """Write ``words`` (non-empty ones) just above the x axis at ``xs``."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for x, word in zip(xs, words, strict=True):
        if word:
            ax.text(x, 0.01, word, transform=trans, ha="center", va="bottom", fontsize=6,
                    rotation=90, color="tab:red")


def _legend_outside(ax: Any) -> None:
    """Put the legend right of the axes, where it covers no bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def plot_accuracies(result: dict[str, Any], path: Path) -> Path:
    """Plot grouped bars of UA, RA, TA and MIA-Efficacy (original, oracles, methods).

    The oracles' group is called ``retrain (oracles)`` as in the Markdown table, so a
    forgetting method named ``retrain`` has a label of its own.
    """
    rows = [("original", result["original"]), ("retrain (oracles)", result["oracles"])]
    rows += [(n, e) for n, e in result["methods"].items() if e.get("num_ok")]
    keys = [("unlearning_accuracy", "UA"), ("retain_accuracy", "RA"),
            ("test_accuracy", "TA"), ("mia_efficacy", "MIA")]
    fig = _figure((max(7.0, 0.55 * len(rows) + 3), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    w = 0.2
    for j, (k, label) in enumerate(keys):
        vals, words = _bar_values([e.get(k) for _, e in rows], 100.0)
        xs = [i + (j - 1.5) * w for i in range(len(rows))]
        ax.bar(xs, vals, w, label=label)
        _mark_missing(ax, xs, words)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([n for n, _ in rows], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    _legend_outside(ax)
    ax.set_title("Accuracies and MIA-Efficacy (mean over seeds)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_times(result: dict[str, Any], path: Path) -> Path:
    """Bars of seconds per run, with the retraining time as a line."""
    rows = [(n, e) for n, e in result["methods"].items() if e.get("num_ok")]
    fig = _figure((max(8.0, 0.5 * len(rows) + 3), 3.8))  # room for the legend
    ax = fig.add_subplot(1, 1, 1)
    secs, words = _bar_values([e.get("seconds") for _, e in rows])
    ax.bar(range(len(rows)), secs, color="tab:green", label="method (mean over seeds)")
    _mark_missing(ax, list(range(len(rows))), words)
    mean_s = _bar_values([result["oracles"].get("mean_seconds")])[0][0]
    if math.isfinite(mean_s):
        ax.axhline(mean_s, color="k", ls="--", lw=1,
                   label=f"retraining (oracle mean): {_num(mean_s)} s")
    else:  # unknown or infinite: no line, but said
        ax.plot([], [], color="k", ls="--", lw=1, label="retraining (oracle mean): "
                f"{_num(result['oracles'].get('mean_seconds'))} s (not drawn)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([n for n, _ in rows], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("method", fontsize=8)
    ax.set_ylabel("wall time per run (s)")
    ax.set_title("Wall time per run of each method", fontsize=9)
    _legend_outside(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def _run_columns(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Return the ``metrics.csv`` columns of a method's successful runs."""
    ok = [r for r in runs if r["status"] == "ok"]
    return {"seed": [r["seed"] for r in ok],
            **{k: [r[k] for r in ok] for k in
               ("retain_accuracy", "forget_accuracy", "test_accuracy")},
            "wall_time_s": [r["seconds"] for r in ok]}


def _write_logits(result: dict[str, Any], folder: Path) -> Path:
    """Write the forget-set logits in the fixture layout (replacing an earlier run's).

    The oracles' metrics go to the top-level ``metrics.csv`` and each method's to its own
    folder, so a method named ``retrain`` cannot take the oracles' place.
    """
    logits, labels = result["logits"], result["labels"]
    retrain = torch.stack([lg["forget"] for lg in logits["oracles"]], 1)
    methods = {n: torch.stack([lg["forget"] for lg in logits[n]], 1)
               for n in result["methods"] if logits.get(n)}
    orc = result["oracles"]
    oracle_cols = {"seed": list(orc.get("seeds", range(len(orc["per_model"])))),
                   **{k: [r[k] for r in orc["per_model"]] for k in
                      ("retain_accuracy", "forget_accuracy", "test_accuracy")},
                   "wall_time_s": list(orc["seconds"])}
    method_cols = {n: _run_columns(result["methods"][n]["runs"]) for n in methods}
    return write_logits_dir(folder, retrain, labels["forget"], methods, method_cols,
                            retrain_metrics=oracle_cols,
                            forget_set=result["data"]["forget_indices"])


def check_out_dir(out_dir: str | Path) -> None:
    """Raise ValueError unless :func:`write_outputs` can write into ``out_dir``.

    ``out_dir`` must be absent or a folder, and its ``logits`` entry absent, an empty
    folder or an earlier logits folder (the one thing a run replaces as a whole). The
    harness checks this before training, so a bad ``--out`` does not cost the run.
    """
    out = check_output_folder(out_dir, argument="out_dir",
                              names=["results.json", "results.md"])
    logits = out / "logits"
    if logits.exists() and not logits.is_dir():
        raise ValueError(f"'out_dir': {logits} exists and is not a directory")
    if logits.is_dir() and any(logits.iterdir()) \
            and not (logits / "logits_retain.npy").is_file():
        raise ValueError(f"'out_dir': {logits} is a non-empty folder without "
                         "logits_retain.npy; refusing to replace it (give a new --out)")


_FIGURE_CAPTIONS = {
    "epsilon_hist.png": "Per-example epsilon-hat of each method",
    "accuracy.png": "Forget, retain and test accuracy",
    "time.png": "Seconds per run against retraining",
}


def _figure_links(names: list[str]) -> str:
    """Return the Markdown image links of the PNGs written beside ``results.md``."""
    if not names:
        return ""
    lines = ["", "## Figures", ""]
    for name in names:
        lines += [f"![{_FIGURE_CAPTIONS.get(name, name)}]({name})", ""]
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out_dir: str | Path, *, plots: bool = True
                  ) -> dict[str, str]:
    """Write ``results.json``, ``results.md``, the PNGs and ``logits/``; return the paths.

    With ``plots=False`` no PNG is drawn, and those of an earlier run in ``out_dir`` are
    removed (they would not match the new results).

    The outputs of an earlier run with other settings (its ``results.json``'s ``config``)
    are moved to ``earlier/results-<n>/`` with a warning instead of being replaced
    (:func:`~fastunlearn._earlier_results.keep_earlier_run`); a run with the same settings
    replaces them. Everything is first written into a temporary folder inside ``out_dir``
    and then renamed into place, so an error or an interrupt (Ctrl-C) while writing leaves
    an earlier run's outputs whole (not half replaced: where they were, or in
    ``earlier/results-<n>/`` when the move had happened), and no temporary folder behind.

    Raises:
        ValueError: If ``out_dir`` cannot take the outputs (:func:`check_out_dir`: not a
            folder, or its ``logits`` entry is neither absent, an empty folder nor an
            earlier logits folder).
        TypeError: If ``out_dir`` is not a path, or ``result`` is not a dict.
        ValueError: If ``result`` lacks a section or an entry of a run_harness result
            (named; nothing is created then).

    """
    _check_result(result)  # before the folder is made: a bad result leaves nothing behind
    plots = check_flag("plots", plots)
    out = Path(out_dir)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".results-{uuid.uuid4().hex[:12]}.tmp"
    stage.mkdir()
    try:
        names = ["results.json", "results.md"]
        logits = result.get("logits", {})
        labels = result.get("labels", {})
        with_logits = bool(logits.get("oracles")) and "forget" in labels
        if with_logits:
            _write_logits(result, stage / "logits")
        public = {k: v for k, v in result.items() if k not in ("logits", "labels", "paths")}
        (stage / "results.json").write_text(
            json.dumps(json_ready(public), indent=1, allow_nan=False) + "\n")
        eps = plot_epsilons(result, stage / "epsilon_hist.png") if plots else None
        if eps is not None:
            names.append("epsilon_hist.png")
        if plots:
            names += [plot_accuracies(result, stage / "accuracy.png").name,
                      plot_times(result, stage / "time.png").name]
        (stage / "results.md").write_text(
            render_table(result) + _figure_links([n for n in names if n.endswith(".png")]))
        # an earlier run's outputs of other settings go to earlier/results-<n>/ (a warning)
        keep_earlier_run(out, "results", json_ready(public.get("config", {})), (".json", ".md"),
                         extra_names=("epsilon_hist.png", "accuracy.png", "time.png", "logits"))
        # everything is written: now only renames
        if with_logits:
            swap_in_folder(stage / "logits", out / "logits")
        for name in names:
            os.replace(stage / name, out / name)
        if eps is None:  # no epsilon this run: an earlier run's histogram must not stay beside it
            (out / "epsilon_hist.png").unlink(missing_ok=True)
        if not plots:
            for name in ("accuracy.png", "time.png"):
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    paths: dict[str, str] = {}
    if with_logits:
        paths["logits"] = str(out / "logits")
    paths["json"] = str(out / "results.json")
    paths["markdown"] = str(out / "results.md")
    if eps is not None:
        paths["epsilon_hist"] = str(out / "epsilon_hist.png")
    if plots:
        paths["accuracy"] = str(out / "accuracy.png")
        paths["time"] = str(out / "time.png")
    return paths
