"""The certified-removal experiment: fit, remove points one by one (or in batches), report.

:func:`run_removal_experiment` is what ``fastunlearn remove`` and the demo run, and it is
usable without either::

    from fastunlearn.certified.experiment import ExperimentConfig, run_removal_experiment

    result = run_removal_experiment(ExperimentConfig(train_mode="binary", num_removes=20,
                                                     result_dir=None))
    print(result.privacy["removals_supported"], result.timings["speedup"])

It mirrors the reference ``test_removal.py`` of Guo et al. (2020): train the perturbed
L2-regularised logistic regression (binary or one-vs-rest) on the training rows, remove
``num_removes`` of them in a seeded random order with Newton steps, and record the
data-dependent gradient-residual bound of every removal. Unlike the reference, the budget
``sigma * epsilon / c`` is enforced: a removal that would exceed it first retrains the model
on the remaining rows with a fresh perturbation (or, with ``retrain=False``, stops the run).

Measured on the way: test accuracy every ``eval_every`` removals, per-class accuracy before
and after (fairness), the time of each removal and of one full retraining on the remaining
rows (for comparison). With a ``result_dir`` the run writes ``<stem>.json`` (all records and
summaries), three PNG plots and ``<stem>.md`` (a report embedding them).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from .._atomic_files import write_text
from .._device import parse_device
from .._interrupt import StopCheck, check_stop_callable, skippable, stop_points, stop_requested
from .._json_data import json_ready
from .._numbers import (
    check_flag,
    check_fraction,
    check_int,
    check_real,
    check_seed,
    plain_fields,
)
from .._output_folder import check_output_folder
from .._repr import fields_repr, format_number, summarize
from .._unused_settings import warn_unused_settings
from .dataset_names import DATASETS, canonical_dataset
from .unused_settings import removal_rules

if TYPE_CHECKING:
    from fastunlearn.certified.errors import BudgetExceededError
    from fastunlearn.data.digits import DigitsSplit
    from fastunlearn.data.vision import FeatureSplit

__all__ = [
    "DATASETS",
    "ExperimentConfig",
    "ExperimentData",
    "ExperimentResult",
    "fairness_summary",
    "format_record_line",
    "load_experiment_data",
    "removal_order",
    "run_removal_experiment",
]

#: The two digits of the binary task ("3 vs 8", as in the paper's MNIST experiment).
BINARY_PAIR = (3, 8)

#: ``gamma`` names (the estimator's ``gamma`` argument).
GAMMAS = ("paper", "tight")

#: Evaluations of the test accuracy per run when ``eval_every`` is 0 (automatic).
_AUTO_EVALUATIONS = 20
#: Sequential removals per ``remove`` call (see ``_chunks``).
SEQUENTIAL_CHUNK = 64


# ---------------------------------------------------------------------------------------
# configuration


@dataclass
class ExperimentConfig:
    """Settings of one removal experiment (the flags of ``fastunlearn remove``).

    Attributes:
        dataset: ``digits`` (bundled, no data directory), ``MNIST``, ``SVHN`` or ``CIFAR10``.
        data_dir: Folder with the data set or the extracted features (not for digits).
        extractor: Feature-file prefix written by ``fastunlearn extract``, or ``none`` for
            raw pixels.
        train_mode: ``binary`` (3 vs 8 on digits and MNIST) or ``ovr`` (one-vs-rest over
            all classes).
        lam: L2 regularisation per training row (the objective uses ``lam * n``). The
            reference's default 1e-6 makes the Hessian badly conditioned; its README uses
            1e-3 for MNIST, the default here.
        std: Standard deviation sigma of the objective perturbation ``b``.
        epsilon: Certified-removal epsilon.
        delta: Certified-removal delta, in (0, 1).
        num_steps: Maximum Newton iterations of every (re)training.
        subsample_ratio: Fraction of negatives kept per one-vs-rest class, in (0, 1].
        num_removes: Training rows to remove.
        batch: Rows per batch removal; 0 removes them one at a time.
        gamma: ``paper`` (1/4, as published) or ``tight`` (1/(6 sqrt 3)).
        solver: ``auto``, ``cholesky`` or ``cg`` (how the Newton steps are solved).
        cg_tol: Stopping rule of the ``cg`` solver (and of ``auto`` where it picks CG): the
            CG residual, added to the bound, stays below this fraction of the step's bound.
            The default 0.01 leaves the ``cg`` and ``cholesky`` models ~1e-5 apart (same
            certificate); 1e-10 makes them agree to ~1e-12.
        target_epsilon: Total epsilon of a DP feature extractor composed with the certified
            head by group privacy (see
            :func:`~fastunlearn.certified.extractors.supported_removals`): the report gives
            the removals the pipeline supports within it. None: twice ``epsilon``.
        device: ``cpu``, ``cuda`` or ``cuda:<i>``.
        seed: Seed of the perturbation, the removal order and everything else random.
        retrain: Retrain automatically when the budget would be exceeded; if false the run
            stops at the first removal the budget cannot cover.
        eval_every: Evaluate the test accuracy every this many removals (0: about 20 times).
        time_retraining: Time one full retraining on the remaining rows at the end.
        result_dir: Folder for the JSON, PNG and Markdown files; None writes nothing.
        plots: Draw the PNG plots (needs matplotlib).
        verbose: Print the training details and every evaluation too.

    """

    dataset: str = "digits"
    data_dir: str | None = None
    extractor: str = "none"
    train_mode: str = "ovr"
    lam: float = 1e-3
    std: float = 10.0
    epsilon: float = 1.0
    delta: float = 1e-4
    num_steps: int = 100
    subsample_ratio: float = 1.0
    num_removes: int = 100
    batch: int = 0
    gamma: str = "paper"
    solver: str = "auto"
    cg_tol: float = 0.01
    target_epsilon: float | None = None
    device: str = "cpu"
    seed: int = 0
    retrain: bool = True
    eval_every: int = 0
    time_retraining: bool = True
    result_dir: str | None = "result"
    plots: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        self._plain_fields()

    def _plain_fields(self) -> None:
        """Store NumPy scalars as Python values: configs compare and serialise alike."""
        plain_fields(self)

    def validate(self) -> ExperimentConfig:
        """Check every field; returns ``self`` (with ``dataset`` spelled canonically).

        Warns (UserWarning) about fields set to a value other than their default that the
        other settings make pointless (``'cg_tol' has no effect with solver='cholesky' (for
        the CG solver)``, ``'subsample_ratio' has no effect with train_mode='binary' (as in
        the reference ...)``; the table:
        :func:`~fastunlearn.certified.unused_settings.removal_rules`), each once however
        often the config is validated.

        Checks too that ``result_dir`` (unless None) can take the outputs (see
        :func:`~fastunlearn._output_folder.check_output_folder`): nothing is fitted or
        written before a bad one is refused.

        Raises:
            TypeError: Naming the first field of the wrong type (a bool or string where a
                number is expected, a float where an int is, a flag that is not a bool,
                a ``result_dir`` that is not a path).
            ValueError: Naming the first bad field.

        """
        self._plain_fields()  # fields may have been set after construction
        self.dataset = canonical_dataset(self.dataset)
        if not isinstance(self.extractor, str) or not self.extractor:
            raise ValueError(f"'extractor' must be a feature-file prefix or 'none', "
                             f"got {self.extractor!r}")
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"'data_dir' is required for dataset {self.dataset}")
        if self.extractor != "none" and not self.data_dir:
            raise ValueError(f"'data_dir' is required for the features of extractor "
                             f"{self.extractor!r}")
        if self.train_mode not in ("binary", "ovr"):
            raise ValueError(f"'train_mode' must be 'binary' or 'ovr', got {self.train_mode!r}")
        for name in ("lam", "epsilon", "cg_tol"):
            check_real(name, getattr(self, name), positive=True)
        check_real("std", self.std)
        if self.target_epsilon is not None:
            check_real("target_epsilon", self.target_epsilon, positive=True)
        check_fraction("delta", self.delta)
        check_fraction("subsample_ratio", self.subsample_ratio, one=True)
        for name in ("num_steps", "num_removes", "batch", "eval_every"):
            check_int(name, getattr(self, name), 1 if name == "num_steps" else 0)
        check_seed("seed", self.seed)  # the removal order seeds a torch.Generator with it
        for name in ("retrain", "time_retraining", "plots", "verbose"):
            setattr(self, name, check_flag(name, getattr(self, name)))
        if self.gamma not in GAMMAS:
            raise ValueError(f"'gamma' must be one of {', '.join(GAMMAS)}, got {self.gamma!r}")
        if self.solver not in ("auto", "cholesky", "cg"):
            raise ValueError(f"'solver' must be auto, cholesky or cg, got {self.solver!r}")
        parse_device(self.device)
        if self.result_dir is not None:
            # before any fitting: a folder that cannot take the outputs (a file, an empty
            # name, a folder where one of them goes) fails now, not after every removal
            check_output_folder(self.result_dir, argument="result_dir",
                                names=output_names(self.stem))
        # settings the others make pointless (each named once, however often validated)
        warn_unused_settings(self, removal_rules(self), stacklevel=2)
        return self

    @property
    def effective_subsample_ratio(self) -> float:
        """``subsample_ratio`` in one-vs-rest mode; 1 in binary mode (the reference's rule)."""
        return float(self.subsample_ratio) if self.train_mode == "ovr" else 1.0

    @property
    def stem(self) -> str:
        """File-name stem of the outputs, like the reference's result names.

        The reference's fields (extractor, dataset, mode, std, lam, epsilon) always; then each
        setting that changes the results only where it differs from its default (subsample
        ratio, batch, delta, gamma, solver, seed, number of removals, Newton steps, CG
        tolerance (not with the Cholesky solver, which ignores it), evaluation interval,
        target epsilon, retraining off), so that runs differing in it do not overwrite each
        other's files.
        """
        stem = (f"{self.extractor}_{self.dataset}_{self.train_mode}_std_{self.std:g}"
                f"_lam_{self.lam:g}_eps_{self.epsilon:g}")
        if self.effective_subsample_ratio < 1:
            stem += f"_ratio_{self.subsample_ratio:g}"
        if self.batch:
            stem += f"_batch_{self.batch}"
        defaults = {f.name: f.default for f in fields(self)}
        if self.delta != defaults["delta"]:
            stem += f"_delta_{self.delta:g}"
        for name in ("gamma", "solver", "seed"):
            if getattr(self, name) != defaults[name]:
                stem += f"_{name}_{getattr(self, name)}"
        for name, label in (("num_removes", "removes"), ("num_steps", "steps"),
                            ("eval_every", "eval_every")):
            if getattr(self, name) != defaults[name]:
                stem += f"_{label}_{getattr(self, name)}"
        if self.cg_tol != defaults["cg_tol"] and self.solver != "cholesky":
            stem += f"_cg_tol_{self.cg_tol:g}"
        if self.target_epsilon is not None:
            stem += f"_target_eps_{self.target_epsilon:g}"
        if not self.retrain:
            stem += "_no_retrain"
        return stem


# ---------------------------------------------------------------------------------------
# data


@dataclass(frozen=True, repr=False)
class ExperimentData:
    """Training and test rows of an experiment (numpy, float64 features, int64 labels).

    Attributes:
        X_train: ``[n_train, d]``.
        y_train: ``[n_train]`` labels ``0..C-1``.
        X_test: ``[n_test, d]``.
        y_test: ``[n_test]``.
        class_names: Display name of each label (``("3", "8")`` for digits 3 vs 8).
        name: Data set name.
        meta: Metadata of the feature file (the extractor's privacy, if it has one).

    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    name: str
    meta: dict[str, Any] = field(default_factory=dict)

    __repr__ = fields_repr  # bounded: long arrays and lists are summarised

    @property
    def n_features(self) -> int:
        """Number of features d."""
        return int(self.X_train.shape[1])


def _to_numpy(value: Any, dtype: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value), dtype=dtype)


def _unpack_split(split: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(X_train, y_train, X_test, y_test, classes) from a split object, dict or tuple."""
    keys = ("X_train", "y_train", "X_test", "y_test")
    if isinstance(split, dict):
        return (*(split[k] for k in keys), split.get("classes"))
    if all(hasattr(split, k) for k in keys):
        return (*(getattr(split, k) for k in keys), getattr(split, "classes", None))
    if isinstance(split, (tuple, list)) and len(split) in (4, 5):
        return (*split[:4], split[4] if len(split) == 5 else None)
    raise TypeError(f"unexpected data split of type {type(split).__name__}")


def load_experiment_data(config: ExperimentConfig) -> ExperimentData:
    """Load the rows ``config`` asks for.

    ``digits`` without an extractor uses the bundled scikit-learn digits; everything else
    goes through :func:`fastunlearn.data.vision.load_features_or_pixels` with
    ``config.data_dir`` and ``config.extractor`` (raw pixels for ``none``; features written
    by ``fastunlearn extract`` otherwise). ``binary`` keeps the classes 3 and 8 (the digits
    3 and 8; cat and ship on CIFAR10), as in the paper's MNIST experiment.

    Raises:
        ValueError: If the configuration is invalid.
        FileNotFoundError: If the data set or features are not in ``data_dir``.

    """
    config.validate()
    binary = config.train_mode == "binary"
    meta: dict[str, Any] = {}
    split: DigitsSplit | FeatureSplit
    if config.dataset == "digits" and config.extractor == "none":
        from fastunlearn.data import load_digits_dataset

        split = load_digits_dataset(binary=BINARY_PAIR if binary else None, seed=0)
    else:
        from fastunlearn.data.vision import load_features_or_pixels

        data_dir = cast(str, config.data_dir)  # validate() requires it here
        split = load_features_or_pixels(config.dataset, data_dir, config.extractor,
                                        BINARY_PAIR if binary else None)
        meta = dict(getattr(split, "meta", None) or {})
    X_train, y_train, X_test, y_test, classes = _unpack_split(split)
    X_train, X_test = _to_numpy(X_train, np.float64), _to_numpy(X_test, np.float64)
    y_train, y_test = _to_numpy(y_train, np.int64), _to_numpy(y_test, np.int64)
    X_train, X_test = X_train.reshape(X_train.shape[0], -1), X_test.reshape(X_test.shape[0], -1)
    n_labels = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if classes is None or len(classes) < n_labels:
        classes = range(n_labels)
    return ExperimentData(X_train, y_train, X_test, y_test,
                          tuple(str(c) for c in classes), config.dataset, meta)


def removal_order(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Choose a seeded random order of ``count`` training rows to remove.

    Rows are taken from a seeded permutation (as the reference does), skipping any row
    whose removal would leave its label without a training row, which the model refuses.

    Args:
        labels: ``[n]`` training labels.
        count: Rows to choose.
        seed: Seed of the permutation.

    Returns:
        ``[count]`` int64 row indices in removal order.

    Raises:
        ValueError: If fewer than ``count`` rows can be removed (every label keeps one).

    """
    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    removable = int(labels.shape[0] - counts.shape[0])
    if count > removable:
        raise ValueError(f"'num_removes' must be at most {removable} (the training rows "
                         f"minus one per class), got {count}")
    left = {lab: int(c) for lab, c in zip(*np.unique(labels, return_counts=True), strict=True)}
    perm = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
    order: list[int] = []
    for i in perm.tolist():
        if len(order) == count:
            break
        if left[labels[i]] > 1:
            left[labels[i]] -= 1
            order.append(i)
    return np.asarray(order, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# results


@dataclass(repr=False)
class ExperimentResult:
    """What :func:`run_removal_experiment` measured.

    Attributes:
        config: The configuration run.
        data: Data description (dataset, train_mode, classes, n_train, n_test, n_features).
        training: Fit time, training residual, train and test accuracy after the fit.
        records: One dict per removal (or batch): ``step``, ``indices``, ``n_removed``,
            ``bound`` (for a retrain: the bound that did not fit), ``cumulative``,
            ``budget_left``, ``retrained``, ``seconds``, ``worst_case``.
        evaluations: ``{"n_removed", "test_accuracy", "retrains"}`` every ``eval_every``
            removals, starting at 0.
        final: Test accuracy after the removals and of a model retrained from scratch.
        privacy: epsilon, delta, c, budget, removals, retrains, removals supported, bounds.
        fairness: ``before``/``after``: per-class test accuracy, worst class, largest gap.
        timings: Fit, removal and retraining times, removals per second, speed-up.
        files: Output kind -> path (empty without a ``result_dir``).
        stopped_on_request: True when ``should_stop`` ended the run before every removal
            was made (``privacy["stop_reason"]`` says after how many).

    """

    config: ExperimentConfig
    data: dict[str, Any]
    training: dict[str, Any]
    records: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    final: dict[str, Any]
    privacy: dict[str, Any]
    fairness: dict[str, Any]
    timings: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    stopped_on_request: bool = False

    def __repr__(self) -> str:
        """Return the key numbers in one line (not every record, whatever their number)."""
        def get(section: Any, key: str) -> Any:
            return section.get(key) if isinstance(section, Mapping) else None

        numbers = {
            "removals": get(self.privacy, "removals"),
            "retrains": get(self.privacy, "retrains"),
            "test_accuracy": get(self.final, "test_accuracy"),
            "retrained_test_accuracy": get(self.final, "retrained_test_accuracy"),
            "epsilon": get(self.privacy, "epsilon"),
            "budget_used": get(self.privacy, "budget_used"),
            "budget_left": get(self.privacy, "budget_left"),
            "removal_seconds_total": get(self.timings, "removal_seconds_total"),
            "speedup": get(self.timings, "speedup"),
        }
        parts = [f"dataset={summarize(get(self.data, 'dataset'))}"]
        parts += [f"{k}={v}" if isinstance(v, (bool, int)) else f"{k}={format_number(v)}"
                  for k, v in numbers.items() if v is not None]
        parts.append(f"records={len(self.records)}, evaluations={len(self.evaluations)}")
        if self.files:
            parts.append(f"files={summarize(self.files)}")
        if self.stopped_on_request:
            parts.append("stopped_on_request=True")
        return f"ExperimentResult({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite floats become ``"inf"``, ``"-inf"``, ``"nan"``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["config"] = asdict(self.config)
        return json_ready(out)


def fairness_summary(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per-class accuracy, the worst and best class and the largest gap between classes.

    Args:
        y_true: ``[n]`` labels ``0..C-1``.
        y_pred: ``[n]`` predicted labels.
        class_names: Name of each label.

    Returns:
        ``{"per_class": {name: accuracy}, "worst_class", "worst_accuracy", "best_class",
        "best_accuracy", "largest_gap"}``; classes absent from ``y_true`` are left out.

    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per_class = {}
    for label, name in enumerate(class_names):
        rows = y_true == label
        if rows.any():
            per_class[str(name)] = float((y_pred[rows] == label).mean())
    if not per_class:
        return {"per_class": {}, "worst_class": None, "worst_accuracy": None,
                "best_class": None, "best_accuracy": None, "largest_gap": None}
    worst = min(per_class, key=per_class.__getitem__)
    best = max(per_class, key=per_class.__getitem__)
    return {"per_class": per_class, "worst_class": worst, "worst_accuracy": per_class[worst],
            "best_class": best, "best_accuracy": per_class[best],
            "largest_gap": per_class[best] - per_class[worst]}


def format_record_line(record: dict[str, Any], total: int) -> str:
    """One line per removal: step, rows, bound, cumulative, budget left, retrain, time."""
    rows = record["indices"]
    what = f"row {rows[0]:>6}" if len(rows) == 1 else f"{len(rows)} rows"
    width = len(str(total))
    return (f"removal {record['n_removed']:>{width}}/{total}  {what}  "
            f"bound {record['bound']:.3e}  cumulative {record['cumulative']:.3e}  "
            f"left {record['budget_left']:.3e}  {'RETRAIN' if record['retrained'] else '       '}"
            f"  {record['seconds'] * 1e3:8.2f} ms")


def _record_dict(record: Any, step: int, n_removed: int) -> dict[str, Any]:
    """Normalise one of the estimator's removal records to a plain dict."""
    if hasattr(record, "to_dict"):
        raw = record.to_dict()
    elif hasattr(record, "__dataclass_fields__"):
        raw = asdict(record)
    else:
        raw = dict(record)
    indices = raw.get("indices", raw.get("index"))
    indices = [int(i) for i in np.atleast_1d(np.asarray(indices))]
    return {
        "step": step,
        "indices": indices,
        "n_removed": n_removed + len(indices),
        "bound": float(raw["bound"]),
        "cumulative": float(raw["cumulative"]),
        "budget_left": float(raw["budget_left"]),
        "retrained": bool(raw["retrained"]),
        "seconds": float(raw["seconds"]),
        "worst_case": float(raw.get("worst_case", math.nan)),
    }


def _supported(records: list[dict[str, Any]], budget_left: float, stopped: bool
               ) -> tuple[int | None, bool]:
    """Count the removals one budget covered: exact at a retrain or stop, else projected."""
    for rec in records:
        if rec["retrained"]:
            return rec["n_removed"] - len(rec["indices"]), False
    done = records[-1]["n_removed"] if records else 0
    if stopped:
        return done, False
    bounds = [r["bound"] for r in records]
    mean = statistics.fmean(bounds) if bounds else 0.0
    if mean <= 0:
        return None, True
    per_record = len(records[0]["indices"]) if records else 1
    return done + int(budget_left // mean) * per_record, True


#: One budget covering at most this many removals (or batches) gets :func:`budget_hint`.
FEW_REMOVALS_PER_BUDGET = 5


def budget_hint(privacy: dict[str, Any]) -> str | None:
    """Say what to change when the budget forced a retrain every few removals, else None.

    The budget is ``sigma * epsilon / c``, and each removal's bound falls as ``lam`` grows
    (the Hessian's smallest eigenvalue is at least ``lam n``; the worst-case bound scales as
    ``1 / lam^2``), so a larger ``--lam`` or ``--epsilon`` lets one budget cover more
    removals, at the price of more regularisation or a weaker guarantee. A larger ``--std``
    is not named: it raises the budget but also the noise in the weights, and with it the
    bounds (on digits, OvR, ``lam = 1e-3``: sigma 100 retrained at every removal where
    sigma 10 covered one or two), except at ``--std 0``, whose budget is 0 whatever the
    other settings. Projected counts (no retrain happened) get no hint.
    """
    supported = privacy.get("removals_supported")
    if not privacy.get("retrains") or privacy.get("removals_supported_is_estimate") \
            or supported is None or supported > FEW_REMOVALS_PER_BUDGET:
        return None
    if privacy.get("sigma") == 0:  # no budget at all: neither lam nor epsilon helps
        return (f"with --std 0 the budget is 0 and every removal retrains "
                f"({privacy['retrains']} retrain(s) in {privacy['removals']} removals): a "
                "positive --std (the objective perturbation's noise) gives removals a budget")
    return (f"one budget covered only {supported} removal(s) before an automatic retrain "
            f"({privacy['retrains']} retrain(s) in {privacy['removals']} removals): a larger "
            "--lam (more regularisation, smaller bounds) or --epsilon (a weaker guarantee) "
            "lets one budget cover more removals")


# ---------------------------------------------------------------------------------------
# the run


def _make_model(config: ExperimentConfig) -> Any:
    from fastunlearn.certified import CertifiedLogisticRegression

    return CertifiedLogisticRegression(
        lam=config.lam, sigma=config.std, epsilon=config.epsilon, delta=config.delta,
        train_mode=config.train_mode, subsample_ratio=config.effective_subsample_ratio,
        gamma=config.gamma, solver=config.solver, cg_tol=config.cg_tol, retrain=config.retrain,
        seed=config.seed, device=config.device, max_iter=config.num_steps,
    )


def _accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Accuracy of ``model`` on ``(X, y)`` and its predictions; NaN for no rows.

    ``predict`` (as scikit-learn's) refuses an array of no rows: a data set without test
    rows gets NaN accuracies and empty predictions instead of failing after the fit.
    """
    if X.shape[0] == 0:
        return math.nan, np.asarray(model.classes_)[:0]
    pred = np.asarray(model.predict(X))
    return float((pred == y).mean()) if y.size else math.nan, pred


def _chunks(order: np.ndarray, batch: int, eval_every: int) -> list[list[int]]:
    """Split the removal order into the rows of each ``remove`` call (batches, or runs).

    Sequential removals go ``SEQUENTIAL_CHUNK`` at a time (one record and printed line per
    row still), ending where an accuracy evaluation is due, so the fast removal loops (the
    compiled CPU step's, the CUDA path's pipelined runs) see more than one row per call.
    """
    n = int(order.shape[0])
    if batch > 0:
        return [order[i : i + batch].tolist() for i in range(0, n, batch)]
    out, lo = [], 0
    while lo < n:
        hi = min(n, lo + SEQUENTIAL_CHUNK, (lo // eval_every + 1) * eval_every)
        out.append(order[lo:hi].tolist())
        lo = hi
    return out


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def run_removal_experiment(
    config: ExperimentConfig,
    *,
    data: ExperimentData | None = None,
    echo: Callable[[str], None] | None = None,
    progress: bool = False,
    should_stop: StopCheck | None = None,
) -> ExperimentResult:
    """Fit a certified model, remove ``config.num_removes`` rows, measure and report.

    Args:
        config: The settings (validated here).
        data: Rows to use instead of loading ``config.dataset`` (e.g. synthetic data).
        echo: Called with one line per removal (and, with ``config.verbose``, per
            evaluation and for the fit); None prints nothing.
        progress: Show a tqdm progress bar on stderr (also where stderr is no terminal,
            e.g. a notebook or a log: ``fastunlearn remove`` asks for it only on a
            terminal unless ``--progress``); lines from ``echo`` are then written above
            the bar.
        should_stop: Asked before each ``remove`` call (a batch, or a run of at most
            ``SEQUENTIAL_CHUNK`` sequential removals); when it answers True the run stops
            there (a call is never cut in half), skips the retraining timing and reports and
            writes what was done, with ``stopped_on_request`` set. ``fastunlearn
            remove`` answers True after the first Ctrl-C. None: run to the end. Asked
            once more before the retraining timing (True skips it; with a
            :class:`~fastunlearn._interrupt.GracefulStop`, Ctrl-C during it abandons it).

    Returns:
        The :class:`ExperimentResult`; its ``files`` lists what was written.

    Raises:
        TypeError: ``should_stop`` is neither None nor callable.
        ValueError: Bad configuration (naming the field), or too many removals.
        FileNotFoundError: Missing data files.
        ImportError: ``config.plots`` without matplotlib.

    """
    config.validate()
    check_stop_callable(should_stop)
    data = data if data is not None else load_experiment_data(config)
    n_train = int(data.X_train.shape[0])
    order = removal_order(data.y_train, config.num_removes, config.seed)
    if config.batch > config.num_removes and config.num_removes:
        raise ValueError(f"'batch' must be at most 'num_removes' ({config.num_removes}), "
                         f"got {config.batch}")
    say = echo or (lambda line: None)

    model = _make_model(config)
    _synchronize(config.device)
    t0 = time.perf_counter()
    model.fit(data.X_train, data.y_train)
    _synchronize(config.device)
    fit_seconds = time.perf_counter() - t0
    train_acc, _ = _accuracy(model, data.X_train, data.y_train)
    test_acc, pred = _accuracy(model, data.X_test, data.y_test)
    fairness_before = fairness_summary(data.y_test, pred, data.class_names)
    training = {"seconds": fit_seconds, "residual": float(model.training_residual_),
                "train_accuracy": train_acc, "test_accuracy": test_acc}
    if config.verbose:
        say(f"fit: {n_train} rows, d={data.n_features}, {fit_seconds:.3f} s, training residual "
            f"{training['residual']:.2e}, budget {model.budget_:.4g}, train accuracy "
            f"{train_acc:.4f}, test accuracy {test_acc:.4f}")

    eval_every = config.eval_every or max(1, math.ceil(config.num_removes / _AUTO_EVALUATIONS))
    evaluations = [{"n_removed": 0, "test_accuracy": test_acc, "retrains": 0}]
    records: list[dict[str, Any]] = []
    stop_reason = None
    budget_stopped = stopped_on_request = False
    chunks = _chunks(order, config.batch, eval_every)
    bar = _progress_bar(len(order), progress)

    def write(line: str) -> None:
        if bar is None:
            say(line)
        else:  # clear the bar, print, redraw it
            with bar.external_write_mode():
                say(line)

    n_removed = 0

    def account(report: Any) -> None:
        nonlocal n_removed
        before = n_removed
        for raw in report.records:
            rec = _record_dict(raw, len(records) + 1, n_removed)
            n_removed = rec["n_removed"]
            records.append(rec)
            if echo is not None:
                write(format_record_line(rec, len(order)))
        if bar is not None:
            bar.update(n_removed - before)

    try:
        with stop_points(should_stop):  # Ctrl-C here: finish the step, then stop
            for chunk in chunks:
                if stop_requested(should_stop):
                    stopped_on_request = True
                    stop_reason = (f"stopped on request after {n_removed} of {len(order)} "
                                   "removals")
                    write(stop_reason)
                    break
                try:
                    report = model.remove(chunk, batch=config.batch > 0)
                except _budget_error() as exc:
                    if exc.report is not None:  # the removals of this call made before the refusal
                        account(exc.report)
                    stop_reason = f"budget exhausted before removal {n_removed + 1}: {exc}"
                    budget_stopped = True
                    write(stop_reason)
                    break
                account(report)
                if bar is not None:
                    bar.set_postfix(cum=f"{float(model.budget_used_):.2e}",
                                    retrains=int(model.retrains_), refresh=False)
                if n_removed // eval_every > (n_removed - len(chunk)) // eval_every or (
                        n_removed == len(order)):
                    acc, _ = _accuracy(model, data.X_test, data.y_test)
                    evaluations.append({"n_removed": n_removed, "test_accuracy": acc,
                                        "retrains": int(model.retrains_)})
                    if config.verbose:
                        write(f"after {n_removed} removals: test accuracy {acc:.4f}, "
                              f"retrains {int(model.retrains_)}")
    finally:
        if bar is not None:
            bar.close()

    final_acc, pred = _accuracy(model, data.X_test, data.y_test)
    fairness = {"before": fairness_before,
                "after": fairness_summary(data.y_test, pred, data.class_names)}
    final: dict[str, Any] = {"test_accuracy": final_acc, "n_removed": n_removed}
    exact = model.gradient_residual()  # measured: what the bounds only bound
    final["gradient_residual"] = exact["norm"]
    final["distance_bound"] = exact["distance_bound"]

    retrain_seconds = None
    # a stop asked for during the last removals skips the timing too; Ctrl-C during it
    # (``fastunlearn remove``) abandons it and the results are still written
    if config.time_retraining and not stop_requested(should_stop):
        keep = np.ones(n_train, dtype=bool)
        keep[np.asarray(model.removed_indices_, dtype=np.int64)] = False
        with skippable(should_stop, "the retraining timing") as skip:
            fresh, seconds = _time_retraining(config, data.X_train[keep], data.y_train[keep])
        if not skip.skipped:
            retrain_seconds = seconds
            final["retrained_test_accuracy"], _ = _accuracy(fresh, data.X_test, data.y_test)

    from fastunlearn.certified.bounds import c_delta, resolve_gamma, worst_case_bound

    gamma = resolve_gamma(config.gamma)
    budget = float(model.budget_)
    budget_left = float(model.budget_left_)
    supported, estimate = _supported(records, budget_left, budget_stopped)
    # a retrain record's bound is the one that did not fit: not part of the used budget
    bounds = [r["bound"] for r in records if not r["retrained"]]
    # worst case (Theorem 1) of the steps made, summed over the classes each one updated
    worst = [r["worst_case"] for r in records if math.isfinite(r["worst_case"])]
    if worst:
        worst_case = statistics.fmean(worst)
    else:  # every class holds every row (no subsampling): K classes alike
        m = config.batch or 1
        worst_case = worst_case_bound(config.lam, n_train, m, gamma) * int(
            np.asarray(model.coef_).shape[0])
    privacy = {
        "epsilon": config.epsilon, "delta": config.delta, "sigma": config.std,
        "c": c_delta(config.delta), "budget": budget, "gamma": gamma,
        "training_residual": training["residual"], "removals": n_removed,
        "retrains": int(model.retrains_), "removals_supported": supported,
        "removals_supported_is_estimate": estimate,
        "mean_bound": statistics.fmean(bounds) if bounds else None,
        "max_bound": max(bounds) if bounds else None,
        "worst_case_bound": worst_case,
        "budget_used": float(model.budget_used_), "budget_left": budget_left,
        "epsilon_spent": float(model.privacy_report()["epsilon_spent"]),
        "stopped_early": stop_reason is not None, "stop_reason": stop_reason,
    }
    privacy["target_epsilon"] = (float(config.target_epsilon) if config.target_epsilon
                                 is not None else 2.0 * float(config.epsilon))
    privacy["extractor"] = _extractor_privacy(data.meta, privacy, config.extractor)
    plain = [r["seconds"] for r in records if not r["retrained"]]
    total = sum(r["seconds"] for r in records)
    median = statistics.median(plain) if plain else None
    timings = {
        "fit_seconds": fit_seconds,
        "retrain_seconds": retrain_seconds,
        "removal_seconds_total": total,
        "removal_seconds_mean": total / len(records) if records else None,
        "removal_seconds_median": median,
        "removals_per_second": n_removed / total if total > 0 else None,
        "automatic_retrain_seconds": [r["seconds"] for r in records if r["retrained"]],
        "speedup": retrain_seconds / median if retrain_seconds and median else None,
        # what a user gets per removal once the automatic retrains are paid for too
        "speedup_with_retrains": (retrain_seconds / (total / len(records))
                                  if retrain_seconds and records and total > 0 else None),
    }
    privacy["budget_hint"] = budget_hint(privacy)
    data_info = {"dataset": data.name, "extractor": config.extractor,
                 "train_mode": config.train_mode, "classes": list(data.class_names),
                 "n_train": n_train, "n_test": int(data.X_test.shape[0]),
                 "n_features": data.n_features}
    result = ExperimentResult(config, data_info, training, records, evaluations, final,
                              privacy, fairness, timings, stopped_on_request=stopped_on_request)
    if config.result_dir is not None:
        result.files = write_outputs(result, config.result_dir)
    return result


#: Retrainings timed at most (median taken) and the time after which no further one starts.
RETRAIN_TIMINGS, RETRAIN_TIMING_SECONDS = 3, 5.0


def _time_retraining(config: ExperimentConfig, X: np.ndarray, y: np.ndarray
                     ) -> tuple[Any, float]:
    """Fit a fresh model on ``(X, y)``: the model and the median time of up to three fits.

    One fit of a small problem takes ~0.1 s and varies several-fold on a loaded machine;
    the median of repeated fits (while they take under ``RETRAIN_TIMING_SECONDS`` in all)
    keeps the reported speed-up from resting on one noisy sample.
    """
    times: list[float] = []
    fresh = None
    while len(times) < RETRAIN_TIMINGS and sum(times) < RETRAIN_TIMING_SECONDS:
        fresh = _make_model(config)
        _synchronize(config.device)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # the experiment's own fit said it already; a timing fit does not repeat it
            warnings.filterwarnings("ignore", message="the training residual .* already "
                                    "exceeds the budget", category=UserWarning)
            fresh.fit(X, y)
        _synchronize(config.device)
        times.append(time.perf_counter() - t0)
    return fresh, statistics.median(times)


def _budget_error() -> type[BudgetExceededError]:
    from fastunlearn.certified.errors import BudgetExceededError

    return BudgetExceededError


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    # the caller decides (the command: only on a terminal unless --progress); tqdm's own
    # terminal test (disable=None) would hide the bar a notebook user asked for
    return tqdm(total=total, unit="removal", dynamic_ncols=True, leave=False)


def _extractor_privacy(meta: dict[str, Any], privacy: dict[str, Any], name: str) -> Any:
    """Describe what the feature extractor adds to the guarantee (None for raw pixels).

    A DP extractor (its feature file records ``epsilon`` and ``delta``) composes with the
    certified head by group privacy over every removal so far
    (:func:`fastunlearn.certified.extractors.compose_privacy`). Any other extractor was
    trained on the removed rows without a guarantee: the certificate covers the linear
    head only. A DP extractor also limits the removals: ``removals_supported`` is the
    largest count whose composed epsilon stays within ``privacy["target_epsilon"]``.
    """
    if not meta:
        return None
    info: dict[str, Any] = {k: meta[k] for k in ("extractor", "model", "name") if k in meta}
    info.setdefault("name", name)
    try:
        eps_dp, delta_dp = float(meta["epsilon"]), float(meta["delta"])
    except (KeyError, TypeError, ValueError):
        info["private"] = False
        info["note"] = ("the extractor is not differentially private: the certificate covers "
                        "the linear head, not the features")
        return info
    from fastunlearn.certified.extractors import compose_privacy, supported_removals

    composed = compose_privacy(eps_dp, delta_dp, privacy["epsilon"], privacy["delta"],
                               int(privacy["removals"]))
    info.update(private=True, epsilon=eps_dp, delta=delta_dp, composed=composed.to_dict())
    target = privacy["target_epsilon"]
    info["target_epsilon"] = target
    info["removals_supported"] = (
        supported_removals(target, eps_dp, privacy["epsilon"]) if eps_dp > 0 else None)
    return info


def output_names(stem: str) -> list[str]:
    """Names of the files :func:`write_outputs` writes for a result whose stem is ``stem``."""
    return [f"{stem}.json", f"{stem}.md", f"{stem}_bounds.png", f"{stem}_accuracy.png",
            f"{stem}_time.png"]


def write_outputs(result: ExperimentResult, result_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write the JSON, the PNG plots and the Markdown report of ``result``.

    Returns:
        Kind (``json``, ``bounds_plot``, ``accuracy_plot``, ``time_plot``, ``markdown``)
        -> path written.

    """
    from fastunlearn.report import plot_accuracy, plot_bounds, plot_times, write_markdown

    folder = Path(result_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = result.config.stem
    files: dict[str, str] = {"json": str(folder / f"{stem}.json")}
    # the results first: a plot that fails (matplotlib missing, a full disk) loses nothing
    result.files = dict(files)
    write_text(files["json"], json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    if result.config.plots:
        retrain_at = [r["n_removed"] for r in result.records if r["retrained"]]
        title = f"{result.data['dataset']} {result.data['train_mode']}"
        files["bounds_plot"] = str(plot_bounds(
            result.records, result.privacy["budget"], folder / f"{stem}_bounds.png",
            worst_case=result.privacy["worst_case_bound"], title=f"Used budget: {title}"))
        files["accuracy_plot"] = str(plot_accuracy(
            result.evaluations, folder / f"{stem}_accuracy.png", retrains=retrain_at,
            title=f"Test accuracy: {title}"))
        files["time_plot"] = str(plot_times(
            result.records, result.timings["retrain_seconds"], folder / f"{stem}_time.png",
            title=f"Time per removal: {title}"))
    files["markdown"] = str(folder / f"{stem}.md")
    result.files = files
    payload = result.to_dict()
    write_text(files["json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")
    write_markdown(payload, files["markdown"], plots=files)
    return files
