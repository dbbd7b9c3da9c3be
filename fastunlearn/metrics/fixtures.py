"""The saved-logits layout of "Forget with Precision" (the project fixture), read and written.

A logits directory holds::

    logits_retain.npy            [S, N + 1, C]: slot 0 = one-hot label, slots 1..N = the
                                 logits of N retrained models on the S forget examples
    metrics.csv                  (optional) per retrained model: seed, retain_accuracy,
                                 forget_accuracy, test_accuracy[, wall_time_s]; kept
                                 apart from the methods' (``retrain_metrics``), so a
                                 method may be called "retrain"
    <method>/logits_unlearn.npy  [S, M + 1, C], same layout, M unlearned models
    <method>/metrics.csv         (optional) same columns for the unlearned models
    forget_set.txt               (optional) the forget-set indices

:func:`load_logits_dir` reads it (``numpy.load`` with pickles disabled) and
:func:`write_logits_dir` writes logits collected by the harness in the same layout, so
``fastunlearn evaluate`` scores both alike. It writes a fresh folder and swaps it in, so
method folders of an earlier run never survive next to the new oracles.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._atomic_files import swap_in_folder
from .._equality import dataclass_eq
from .._paths import check_path
from .._repr import fields_repr
from ._checks import as_tensor, float_tensor, label_tensor

__all__ = [
    "LogitsDir",
    "load_logits_dir",
    "pack_slots",
    "read_metrics_csv",
    "split_slots",
    "write_logits_dir",
]

RETRAIN_FILE = "logits_retain.npy"
UNLEARN_FILE = "logits_unlearn.npy"
METRICS_FILE = "metrics.csv"


def split_slots(array: Any, name: str = "array") -> tuple[Tensor, Tensor]:
    """Split a ``[S, N + 1, C]`` fixture array into logits ``[S, N, C]`` and labels ``[S]``.

    Raises:
        ValueError: If the shape is wrong or slot 0 is not one-hot.

    """
    t = float_tensor(array, name, ndim=3)
    if t.shape[1] < 2 or t.shape[2] < 2:
        raise ValueError(f"'{name}' must have shape [S, N + 1, C] with N >= 1 and C >= 2, "
                         f"got {tuple(t.shape)}")
    onehot = t[:, 0]
    ok = ((onehot == 0) | (onehot == 1)).all(1) & (onehot.sum(1) == 1)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(f"'{name}': slot 0 must be a one-hot label, example {bad} is not")
    return t[:, 1:], onehot.argmax(1)


def pack_slots(logits: Any, labels: Any) -> np.ndarray:
    """Pack ``[S, N, C]`` logits and ``[S]`` labels as ``[S, N + 1, C]`` (:func:`split_slots`)."""
    z = float_tensor(logits, "logits", ndim=3)
    y = label_tensor(labels, "labels", z.shape[2], (z.shape[0],))
    onehot = torch.nn.functional.one_hot(y, z.shape[2]).to(z.dtype)
    return torch.cat([onehot[:, None, :].to(z.device), z.detach()], 1).cpu().numpy()


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """Read a ``metrics.csv`` into ``{column: values}`` (numeric columns only).

    A column is numeric when every cell that is not empty is a number; its empty cells (a
    model whose value was not recorded) are NaN, so one missing value does not drop the
    column. Columns of text (e.g. a method name) are left out.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out: dict[str, list[float]] = {}
    for col in rows[0]:
        cells = [(r.get(col) or "").strip() for r in rows]
        if not any(cells):
            continue
        try:
            out[col] = [float(c) if c else math.nan for c in cells]
        except ValueError:
            continue
    return out


@dataclass(repr=False)
class LogitsDir:
    """A loaded logits directory.

    Attributes:
        path: The directory.
        retrain: ``[S, N, C]`` logits of the retrained models (dtype as stored).
        labels: ``[S]`` int64 labels.
        methods: Method name -> ``[S, M, C]`` logits of its unlearned models.
        metrics: Method name -> the columns of its ``<method>/metrics.csv``.
        forget_set: Forget-set indices if ``forget_set.txt`` is present.
        retrain_metrics: The columns of the top-level ``metrics.csv`` (retrained models).

    """

    path: Path
    retrain: Tensor
    labels: Tensor
    methods: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    forget_set: list[int] | None = None
    retrain_metrics: dict[str, list[float]] = field(default_factory=dict)

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    def mean_metric(self, who: str, column: str) -> float:
        """Mean of a column of method ``who``'s ``metrics.csv`` over its recorded values.

        NaN if the column is absent or holds no recorded (non-NaN) value.
        """
        return _mean_recorded(self.metrics.get(who, {}).get(column))

    def retrain_mean_metric(self, column: str) -> float:
        """Mean of a column of the retrained models' ``metrics.csv`` (as :meth:`mean_metric`)."""
        return _mean_recorded(self.retrain_metrics.get(column))


def _mean_recorded(values: list[float] | None) -> float:
    """Mean of the non-NaN ``values``; NaN when there are none."""
    kept = [v for v in values or () if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def load_logits_dir(path: str | os.PathLike[str], methods: list[str] | None = None) -> LogitsDir:
    """Load a logits directory (see the module docstring for the layout).

    Args:
        path: The directory.
        methods: Method sub-folders to load; all that hold ``logits_unlearn.npy`` by default.

    Raises:
        FileNotFoundError: If ``logits_retain.npy`` or a requested method is missing.
        TypeError: If ``path`` is not a path or ``methods`` not a list of names.
        ValueError: If ``path`` is empty, a method name is not a plain folder name or is
            repeated, an array has the wrong layout or does not match the retrained array
            (examples, classes, labels), or ``forget_set.txt`` holds an entry that is not an
            integer index.

    """
    root = check_path(path)
    if methods is not None:
        if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence):
            raise TypeError(f"'methods' must be a list of method names, got "
                            f"{type(methods).__name__}")
        methods = [_check_method_name(n) for n in methods]
        repeated = sorted({n for n in methods if methods.count(n) > 1})
        if repeated:
            raise ValueError(f"'methods' names {', '.join(map(repr, repeated))} twice")
    if not (root / RETRAIN_FILE).is_file():
        raise FileNotFoundError(f"'path': {root} has no {RETRAIN_FILE}")
    retrain, labels = split_slots(_load_array(root / RETRAIN_FILE), RETRAIN_FILE)
    if methods is None:
        methods = sorted(p.name for p in root.iterdir() if (p / UNLEARN_FILE).is_file())
    out = LogitsDir(path=root, retrain=retrain, labels=labels)
    if (root / METRICS_FILE).is_file():
        out.retrain_metrics = read_metrics_csv(root / METRICS_FILE)
    for name in methods:
        f = root / name / UNLEARN_FILE
        if not f.is_file():
            raise FileNotFoundError(f"method {name!r}: {f} does not exist")
        logits, lab = split_slots(_load_array(f), f"{name}/{UNLEARN_FILE}")
        if logits.shape[0] != retrain.shape[0] or logits.shape[2] != retrain.shape[2]:
            raise ValueError(
                f"method {name!r}: logits shape {tuple(logits.shape)} does not match the "
                f"retrained {tuple(retrain.shape)} (examples and classes must agree)"
            )
        if not torch.equal(lab, labels):
            raise ValueError(f"method {name!r}: its labels (slot 0) differ from the retrained")
        out.methods[name] = logits
        if (root / name / METRICS_FILE).is_file():
            out.metrics[name] = read_metrics_csv(root / name / METRICS_FILE)
    fs = root / "forget_set.txt"
    if fs.is_file():
        out.forget_set = _read_forget_set(fs)
    return out


def _read_forget_set(path: Path) -> list[int]:
    """Return the indices of a ``forget_set.txt`` (separated by commas, spaces or lines).

    Raises:
        ValueError: Naming the file and the entry, if an entry is not an integer (int()'s
            own message named neither).

    """
    indices = []
    for entry in re.split(r"[,\s]+", path.read_text()):
        if not entry:
            continue
        try:
            indices.append(int(entry))
        except ValueError:
            raise ValueError(f"cannot read {path}: {entry!r} is not an integer index "
                             "(expected indices separated by commas)") from None
    return indices


def _check_method_name(name: object) -> str:
    if not isinstance(name, str) or not name or os.sep in name or "/" in name \
            or name.startswith("."):
        raise ValueError(f"'methods': bad method name {name!r}")
    return name


def _metrics_rows(cols: dict[str, list[float]], arg: str) -> int:
    """Check equal column lengths; return the number of rows."""
    if not isinstance(cols, Mapping):
        raise TypeError(f"'{arg}' must be a dict of columns, got {type(cols).__name__}")
    for col, values in cols.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"'{arg}': column {col!r} must be a list of values, got "
                            f"{type(values).__name__}")
    n = {len(v) for v in cols.values()}
    if len(n) > 1:
        raise ValueError(f"'{arg}': columns have different lengths")
    return n.pop() if n else 0


def _write_metrics(folder: Path, cols: dict[str, list[float]], rows: int) -> None:
    names = [c for c in cols if c != "seed"]
    seeds = cols.get("seed")
    with open(folder / METRICS_FILE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seed", *names])
        for i in range(rows):
            w.writerow([int(seeds[i]) if seeds else i, *(cols[c][i] for c in names)])


def _forget_set_text(forget_set: object) -> str:
    """Return the ``forget_set.txt`` line of non-negative integer indices (or raise)."""
    if isinstance(forget_set, (Tensor, np.ndarray)):
        t = as_tensor(forget_set, "forget_set")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"'forget_set' must hold integer indices, got {t.dtype}")
        values = t.tolist()
    elif isinstance(forget_set, (str, bytes)) or not isinstance(forget_set, Sequence):
        raise TypeError(f"'forget_set' must be a list of indices, got "
                        f"{type(forget_set).__name__}")
    else:
        values = list(forget_set)
    if not isinstance(values, list) or any(isinstance(v, list) for v in values):
        raise ValueError("'forget_set' must be 1-D")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"'forget_set' must hold integer indices, got {v!r}")
        if v < 0:
            raise ValueError(f"'forget_set' must hold indices >= 0, got {v}")
    return ",".join(str(int(i)) for i in values) + "\n"


def _check_replaceable(root: Path) -> None:
    """Raise unless ``root`` is absent, an empty folder or a logits directory."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"'path': {root} exists and is not a directory")
    if any(root.iterdir()) and not (root / RETRAIN_FILE).is_file():
        raise ValueError(f"'path': {root} is a non-empty folder without {RETRAIN_FILE}; "
                         "refusing to replace it (give a new or a logits folder)")


def write_logits_dir(
    path: str | os.PathLike[str],
    retrain_logits: Any,
    labels: Any,
    methods: dict[str, Any],
    metrics: dict[str, dict[str, list[float]]] | None = None,
    *,
    retrain_metrics: dict[str, list[float]] | None = None,
    forget_set: list[int] | None = None,
) -> Path:
    """Write logits collected by the harness in the fixture layout.

    Everything is written to a fresh folder next to ``path`` that then replaces ``path``,
    so the result holds exactly this call's methods (none of an earlier run's).

    Args:
        path: Directory to create or replace (absent, empty, or an earlier logits folder).
        retrain_logits: ``[S, N, C]`` logits of N retrained models on the forget set.
        labels: ``[S]`` labels.
        methods: Method name -> ``[S, M, C]`` logits of its unlearned models.
        metrics: Optional method name (a key of ``methods``) -> columns (equal-length
            lists, e.g. ``retain_accuracy``, ``test_accuracy``, ``wall_time_s``) written
            to ``<method>/metrics.csv``.
        retrain_metrics: The same columns of the retrained models, written to the
            top-level ``metrics.csv``.
        forget_set: Forget-set indices, written to ``forget_set.txt``.

    Returns:
        The directory.

    Raises:
        TypeError: If ``path``, ``methods``, ``metrics`` (or a column) or ``forget_set``
            has the wrong type (nothing is written then).
        ValueError: On a bad method name, ``metrics`` of a method not in ``methods``,
            unequal columns, arrays that do not fit (a method's examples or classes
            differ from the retrained), a negative forget-set index, an empty ``path``, or
            a ``path`` that is a non-empty folder other than a logits directory (nothing is
            written then).

    """
    root = Path(os.path.abspath(check_path(path)))  # "." too has a name and a parent
    arrays = {RETRAIN_FILE: pack_slots(retrain_logits, labels)}
    if not isinstance(methods, Mapping):
        raise TypeError(f"'methods' must be a dict of method name -> logits, got "
                        f"{type(methods).__name__}")
    retrain_shape = arrays[RETRAIN_FILE][:, 1:].shape
    packed = {}
    for n, z in methods.items():
        arg = f"methods[{_check_method_name(n)!r}]"
        z = float_tensor(z, arg, ndim=3)
        if z.shape[0] != retrain_shape[0] or z.shape[2] != retrain_shape[2]:
            raise ValueError(f"'{arg}': logits {tuple(z.shape)} must agree with "
                             f"'retrain_logits' {retrain_shape} on examples (dim 0) and "
                             "classes (dim 2)")
        packed[n] = pack_slots(z, labels)
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"'metrics' must be a dict, got {type(metrics).__name__}")
    forget_text = None if forget_set is None else _forget_set_text(forget_set)
    metrics = metrics or {}
    for who in metrics:
        if who not in packed:
            hint = " (pass the retrained models' columns as 'retrain_metrics')" \
                if who == "retrain" else ""
            raise ValueError(f"'metrics' names {who!r}, which is not in 'methods'{hint}")
    rows = {who: _metrics_rows(cols, f"metrics[{who!r}]") for who, cols in metrics.items()}
    retrain_rows = _metrics_rows(retrain_metrics or {}, "retrain_metrics")
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir()  # the usual mode (mkdtemp would make it private)
    try:
        for name, arr in arrays.items():
            np.save(tmp / name, arr)
        if retrain_metrics:
            _write_metrics(tmp, retrain_metrics, retrain_rows)
        for name, arr in packed.items():
            (tmp / name).mkdir()
            np.save(tmp / name / UNLEARN_FILE, arr)
            if name in metrics:
                _write_metrics(tmp / name, metrics[name], rows[name])
        if forget_text is not None:
            (tmp / "forget_set.txt").write_text(forget_text)
        swap_in_folder(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(path)

