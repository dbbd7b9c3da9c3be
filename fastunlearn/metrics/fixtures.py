"""The saved-logits layout of "Forget with Precision" (the project fixture), read and written.

A logits directory holds::

    logits_retain.npy            [S, N + 1, C]: slot 0 = one-hot label, slots 1..N = the
                                 logits of N retrained models on the S forget examples
    metrics.csv                  (optional) per retrained model: seed, retain_accuracy,
                                 forget_accuracy, test_accuracy[, wall_time_s]
    <method>/logits_unlearn.npy  [S, M + 1, C], same layout, M unlearned models
    <method>/metrics.csv         (optional) same columns for the unlearned models
    forget_set.txt               (optional) the forget-set indices

:func:`load_logits_dir` reads it (``numpy.load`` with pickles disabled) and
:func:`write_logits_dir` writes logits collected by the harness in the same layout, so
``fastunlearn evaluate`` scores both alike.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import float_tensor, label_tensor

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
    return torch.cat([onehot[:, None, :].to(z.device), z], 1).cpu().numpy()


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """Read a ``metrics.csv`` into ``{column: values}`` (numeric columns only)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out: dict[str, list[float]] = {}
    for col in rows[0]:
        try:
            out[col] = [float(r[col]) for r in rows]
        except (TypeError, ValueError):
            continue
    return out


@dataclass
class LogitsDir:
    """A loaded logits directory.

    Attributes:
        path: The directory.
        retrain: ``[S, N, C]`` logits of the retrained models (dtype as stored).
        labels: ``[S]`` int64 labels.
        methods: Method name -> ``[S, M, C]`` logits of its unlearned models.
        metrics: ``"retrain"`` and method names -> the columns of their ``metrics.csv``.
        forget_set: Forget-set indices if ``forget_set.txt`` is present.

    """

    path: Path
    retrain: Tensor
    labels: Tensor
    methods: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    forget_set: list[int] | None = None

    def mean_metric(self, who: str, column: str) -> float:
        """Mean of a ``metrics.csv`` column (nan if absent)."""
        values = self.metrics.get(who, {}).get(column)
        return float(np.mean(values)) if values else math.nan


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
        ValueError: If an array has the wrong layout or does not match the retrained
            array (examples, classes, labels).

    """
    root = Path(path)
    if not (root / RETRAIN_FILE).is_file():
        raise FileNotFoundError(f"'path': {root} has no {RETRAIN_FILE}")
    retrain, labels = split_slots(_load_array(root / RETRAIN_FILE), RETRAIN_FILE)
    if methods is None:
        methods = sorted(p.name for p in root.iterdir() if (p / UNLEARN_FILE).is_file())
    out = LogitsDir(path=root, retrain=retrain, labels=labels)
    if (root / METRICS_FILE).is_file():
        out.metrics["retrain"] = read_metrics_csv(root / METRICS_FILE)
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
        text = fs.read_text().replace("\n", ",")
        out.forget_set = [int(v) for v in text.split(",") if v.strip()]
    return out


def write_logits_dir(
    path: str | os.PathLike[str],
    retrain_logits: Any,
    labels: Any,
    methods: dict[str, Any],
    metrics: dict[str, dict[str, list[float]]] | None = None,
) -> Path:
    """Write logits collected by the harness in the fixture layout.

    Args:
        path: Directory to create (or fill).
        retrain_logits: ``[S, N, C]`` logits of N retrained models on the forget set.
        labels: ``[S]`` labels.
        methods: Method name -> ``[S, M, C]`` logits of its unlearned models.
        metrics: Optional ``"retrain"`` / method name -> columns (equal-length lists, e.g.
            ``retain_accuracy``, ``test_accuracy``, ``wall_time_s``) written to ``metrics.csv``.

    Returns:
        The directory.

    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / RETRAIN_FILE, pack_slots(retrain_logits, labels))
    for name, logits in methods.items():
        if not name or os.sep in name or name.startswith("."):
            raise ValueError(f"'methods': bad method name {name!r}")
        (root / name).mkdir(exist_ok=True)
        np.save(root / name / UNLEARN_FILE, pack_slots(logits, labels))
    for who, cols in (metrics or {}).items():
        folder = root if who == "retrain" else root / who
        folder.mkdir(exist_ok=True)
        names = [c for c in cols if c != "seed"]
        n = {len(v) for v in cols.values()}
        if len(n) > 1:
            raise ValueError(f"'metrics[{who!r}]': columns have different lengths")
        with open(folder / METRICS_FILE, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seed", *names])
            seeds = cols.get("seed")
            for i in range(n.pop() if n else 0):
                w.writerow([int(seeds[i]) if seeds else i, *(cols[c][i] for c in names)])
    return root
