"""Certified-removal logistic regression (Guo et al., ICML 2020) as a scikit-learn estimator.

The model minimises the perturbed objective ``L_b`` (see :mod:`fastunlearn.certified.math`)
exactly with float64 Newton, then removes training rows with Newton steps whose
gradient-residual bounds are accumulated against the noise budget
``sigma * epsilon / c(delta)``; a removal that would exceed it retrains with a fresh
perturbation (or raises :class:`BudgetExceededError`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import uuid
import warnings
from typing import Any, cast

import numpy as np
import torch
from scipy.special import expit, log_expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from .. import ops
from .._numbers import as_int, is_integer
from .._paths import check_output_file
from . import single_row, woodbury
from ._settings import check_flag, device_setting, int_setting, real_setting
from .bounds import (
    c_delta,
    data_dependent_bound,
    epsilon_spent,
    noise_budget,
    resolve_gamma,
    worst_case_bound,
)
from .errors import BudgetExceededError
from .math import (
    _normalize_rows,
    cholesky_apply,
    cholesky_factor,
    curvature_weights,
    draw_perturbation,
    gram_matrices,
    lambda_max_upper,
    logistic_gradient,
    loss_derivative,
    newton_fit,
    no_tf32,
    small_problem_threads,
    subsample_membership,
    triangular_apply,
)
from .pipelined import PipelinedRuns
from .records import PlannedStep, RemovalRecord, RemovalReport
from .single_row import SPECTRAL_REFRESH_FRACTION, SingleRowSteps
from .state import ModelState

__all__ = ["CertifiedLogisticRegression", "RemovalRecord", "RemovalReport"]

#: The CG solver's step is the solve with the last dense Hessian's Cholesky factors, refined
#: by CG only where its true residual ``||H V - Delta||`` (added to the bound) exceeds this
#: fraction of the step's data-dependent bound: the certificate stays exact and the residual
#: costs at most 1% more budget, while most removals need no CG iteration at all.
CG_BOUND_FRACTION = 0.01
#: Removed rows folded into the CG starting factors by the Woodbury identity before
#: ``solver="auto"`` refreshes them with a dense step (``solver="cg"`` then uses them as is).
WOODBURY_MAX_ROWS = 256
#: ``solver="auto"``: CG iterations assumed before any CG solve was observed.
CG_ITERATIONS_GUESS = 2
#: ``solver="auto"`` takes one dense Cholesky step (refreshing the factors) once a refinement
#: needed more than this many CG iterations: the factors have drifted from the Hessian.
CG_REFRESH_ITERATIONS = 8
_TRAIN_MODES = ("auto", "binary", "ovr")
_SOLVERS = ("auto", "cholesky", "cg")


def _host_array(value: Any) -> Any:
    """Return a torch tensor argument as a numpy array; anything else unchanged.

    scikit-learn's validation reads tensors through ``np.asarray``, which fails for tensors
    that require grad, live on a GPU or are half precision; those are detached, moved to the
    CPU and (half / bfloat16) widened to float32 first. Other inputs are left to it.
    """
    if not isinstance(value, Tensor):
        return value
    value = value.detach()
    if value.dtype in (torch.float16, torch.bfloat16):
        value = value.to(torch.float32)
    return value.cpu().numpy()


class CertifiedLogisticRegression(
    PipelinedRuns, SingleRowSteps, ModelState, ClassifierMixin, BaseEstimator
):
    """L2-regularised logistic regression with certified data removal.

    Training minimises, per one-vs-rest class k (one class for a binary model),
    ``sum_{i in S_k} log(1 + exp(-y_ik w_k.x_i)) + (lam n_k / 2) ||w_k||^2 + b_k.w_k`` with
    ``b ~ N(0, sigma^2 I)`` drawn from ``seed``, by float64 Newton to ``||grad L_b|| <= tol``;
    that residual starts the used budget. :meth:`remove` takes Newton steps on the remaining
    rows and adds each step's data-dependent bound; the model is (epsilon, delta)-certified as
    long as the sum stays within ``budget_ = sigma * epsilon / c(delta)``.

    One-vs-rest models use ONE joint budget for the joint perturbation ``b [K, d]`` and add
    the SUM of the per-class bounds (a bound on the joint residual's norm), as the reference
    implementation does; the budget is not multiplied by K.

    Parameters that define the certified model (``lam``, ``sigma``, ``epsilon``, ``delta``,
    ``train_mode``, ``subsample_ratio``, ``gamma``, ``normalize``, ``seed``, ``max_iter``,
    ``tol``, ``device``) are read by :meth:`fit`; changing them later with ``set_params`` has no
    effect until the next ``fit``. ``solver``, ``cg_tol``, ``retrain`` and ``checkpoint`` are
    read at every :meth:`remove`.

    Args:
        lam: L2 regularisation, > 0 (multiplied by the rows of each class, as in the paper).
        sigma: standard deviation of the objective perturbation, >= 0.
        epsilon: certified-removal epsilon, > 0.
        delta: certified-removal delta, in (0, 1).
        train_mode: ``"binary"`` (two classes, one weight vector), ``"ovr"`` (one-vs-rest, one
            vector per class) or ``"auto"`` (binary for two classes, else ovr).
        subsample_ratio: in (0, 1]; below 1, class k trains on all its positives and a seeded
            random fraction of the negatives (drawn per row and class), and a removal only
            updates the classes whose subset holds the removed row.
        gamma: Lipschitz constant of ``l''`` in the bound: a positive float (default 1/4, as in
            the paper) or ``"tight"`` for the exact ``1 / (6 sqrt 3)``.
        solver: linear solver of the Newton removal steps: ``"cholesky"`` (dense Hessians and
            a batched Cholesky), ``"cg"`` (matrix-free CG started from the solve with the last
            Cholesky factors, the rows removed since folded in by the Woodbury identity; its
            true residual is added to the bound; see ``cg_tol``) or ``"auto"`` (whichever a cost
            model says is cheaper: CG unless the features are very few, with a dense step again
            to refresh the factors after 256 removals or when CG needs over 8 iterations;
            decided before every step, so also within one long ``remove`` call).
        retrain: when a removal would exceed the budget, retrain on the remaining rows with a
            fresh perturbation (True) or raise :class:`BudgetExceededError` (False).
        normalize: scale every row to unit L2 norm, ``x / max(||x||, tiny)``, at fit and
            predict time; the bounds assume ``||x|| <= 1`` (with longer rows they are scaled
            by the largest row norm).
        seed: seed of the perturbation draws and the subsampling.
        device: torch device of the model's tensors (``"cpu"``, ``"cuda"``, ...).
        max_iter: Newton iteration cap of training.
        tol: training target for ``||grad L_b||``.
        checkpoint: path of a checkpoint file: after fit, each removal and each retrain the
            state is saved there and the event appended to ``<path>.ledger.jsonl``
            (:func:`fastunlearn.certified.persistence.checkpoint`). One model per path:
            ``fit`` may start a new checkpoint over any path, but a removal or retrain raises
            ValueError (changing nothing) when the file there was written by another model
            since this one last wrote it, e.g. by a copy from ``clone``, ``deepcopy`` or
            pickling (the first to write wins). Give each model its own path, or ``load``
            the checkpoint and go on with the loaded model (which owns it).
        cg_tol: stopping rule of the ``"cg"`` solver, > 0: CG stops once the true residual
            ``||H V - Delta||`` of the step (summed over classes and added to the bound) is at
            most ``cg_tol`` times the step's data-dependent bound. The default 0.01 costs at
            most 1% more budget per removal and usually needs one CG iteration; the certificate
            is exact at any value. Set it to 1e-9 or below for steps that agree with
            ``solver="cholesky"`` to about 1e-8.

    Attributes:
        classes_ (ndarray[C]): the class labels.
        coef_ (ndarray[K, d]): weights (K = 1 for a binary model), float64.
        b_ (ndarray[K, d]): the current objective perturbation.
        n_features_in_ (int): number of features.
        budget_ (float): ``sigma * epsilon / c(delta)``.
        budget_used_ (float): training residual plus the bounds of the removals since the
            last (re)training.
        budget_left_ (float): ``budget_ - budget_used_``.
        training_residual_ (float): ``||grad L_b||`` left by the last (re)training.
        n_removed_ (int): rows removed since fit.
        removed_indices_ (ndarray[int64]): sorted indices of the removed training rows.
        retrains_ (int): retrains since fit.
        n_iter_ (int): Newton iterations of the last (re)training.

    Example:
        >>> from fastunlearn.data import load_digits_dataset
        >>> data = load_digits_dataset(binary=(3, 8))
        >>> model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0)
        >>> model = model.fit(data.X_train.numpy(), data.y_train.numpy())
        >>> report = model.remove([0, 5])
        >>> len(report.records), model.n_removed_
        (2, 2)

    """

    def __init__(
        self,
        lam: float | np.floating = 1e-3,
        sigma: float | np.floating = 10.0,
        epsilon: float | np.floating = 1.0,
        delta: float | np.floating = 1e-4,
        train_mode: str = "auto",
        subsample_ratio: float | np.floating = 1.0,
        gamma: float | np.floating | str = 0.25,
        solver: str = "auto",
        retrain: bool = True,
        normalize: bool = True,
        seed: int | np.integer = 0,
        device: str | torch.device = "cpu",
        max_iter: int | np.integer = 100,
        tol: float | np.floating = 1e-10,
        checkpoint: str | os.PathLike[str] | None = None,
        cg_tol: float | np.floating = CG_BOUND_FRACTION,
    ) -> None:
        self.lam = lam
        self.sigma = sigma
        self.epsilon = epsilon
        self.delta = delta
        self.train_mode = train_mode
        self.subsample_ratio = subsample_ratio
        self.gamma = gamma
        self.solver = solver
        self.retrain = retrain
        self.normalize = normalize
        self.seed = seed
        self.device = device
        self.max_iter = max_iter
        self.tol = tol
        self.checkpoint = checkpoint
        self.cg_tol = cg_tol

    # ---- parameter validation ---------------------------------------------------------

    def set_params(self, **params: Any) -> CertifiedLogisticRegression:
        """Set parameters (scikit-learn API), all or none.

        Values are checked when they are read (``fit``, ``remove``), as scikit-learn
        requires; the names are checked first, so an unknown one changes nothing (the base
        class would have set the names before it).

        Args:
            **params: parameter names and values.

        Returns:
            self.

        Raises:
            ValueError: an unknown parameter name (the model is unchanged).

        """
        valid = self._get_param_names()
        unknown = sorted(k for k in params if k.partition("__")[0] not in valid)
        if unknown:
            raise ValueError(
                f"Invalid parameter {unknown[0]!r} for estimator {type(self).__name__}; "
                f"valid parameters are: {valid!r} (nothing was changed)"
            )
        return super().set_params(**params)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy state without the fixed-shape step (CUDA graphs do not copy)."""
        # a copy: from Python 3.11 on, object.__getstate__ returns the live __dict__, and
        # popping from it would drop the model's own step (and break a deepcopy of __dict__)
        state = dict(super().__getstate__())
        state.pop("_fixed", None)
        return state

    def __copy__(self) -> CertifiedLogisticRegression:
        """Return an independent copy (``copy.copy``), as ``deepcopy`` but sharing the rows.

        ``remove`` changes the fitted state in place: a shallow copy sharing it would corrupt
        the original. Only the training rows (never written after fit) are shared.
        """
        X = self.__dict__.get("_X")  # never written after fit: shared, not duplicated
        return copy.deepcopy(self, {} if X is None else {id(X): X})

    def _fit_config(self) -> dict[str, Any]:
        """Validate the parameters read by ``fit``; returns them normalised (no mutation).

        Raises:
            TypeError: a parameter has the wrong type (a bool or a string for a number, an
                int for a flag, a float for a count); the message names it.
            ValueError: a parameter is out of range; the message names it.

        """

        def real(name: str, lo: float, *, strict: bool) -> float:
            given = getattr(self, name)
            value = real_setting(name, given)
            if not math.isfinite(value):
                raise ValueError(f"argument '{name}' must be a finite real number, got {given!r}")
            if value < lo or (strict and value == lo):
                raise ValueError(
                    f"argument '{name}' must be {'>' if strict else '>='} {lo}, got {value}"
                )
            return value

        cfg: dict[str, Any] = {
            "lam": real("lam", 0.0, strict=True),
            "sigma": real("sigma", 0.0, strict=False),
            "epsilon": real("epsilon", 0.0, strict=True),
        }
        delta = real_setting("delta", self.delta)
        if not 0.0 < delta < 1.0:  # nan too
            raise ValueError(f"argument 'delta' must be in (0, 1), got {self.delta!r}")
        cfg["delta"] = delta
        if self.train_mode not in _TRAIN_MODES:
            raise ValueError(
                f"argument 'train_mode' must be one of {_TRAIN_MODES}, got {self.train_mode!r}"
            )
        cfg["train_mode"] = self.train_mode
        ratio = real_setting("subsample_ratio", self.subsample_ratio)
        if not 0.0 < ratio <= 1.0:  # nan too
            raise ValueError(
                f"argument 'subsample_ratio' must be in (0, 1], got {self.subsample_ratio!r}"
            )
        cfg["subsample_ratio"] = ratio
        cfg["gamma"] = resolve_gamma(self.gamma)
        cfg["normalize"] = check_flag("normalize", self.normalize)
        cfg["seed"] = int_setting("seed", self.seed, 0, "a non-negative int")
        cfg["max_iter"] = int_setting("max_iter", self.max_iter, 1, "an int >= 1")
        cfg["tol"] = real("tol", 0.0, strict=False)
        cfg["device"] = str(device_setting(self.device))
        self._check_live_params()
        return cfg

    def _check_live_params(self) -> tuple[str, bool]:
        """Validate ``solver``, ``retrain``, ``checkpoint`` and ``cg_tol`` (read at every removal).

        Raises:
            TypeError: ``retrain`` is not a bool, ``checkpoint`` not None or a path, or
                ``cg_tol`` not a real number.
            ValueError: ``solver`` is unknown, ``checkpoint`` empty or a folder, or ``cg_tol``
                not finite and > 0.
            FileNotFoundError: ``checkpoint``'s folder does not exist.

        """
        if self.solver not in _SOLVERS:
            raise ValueError(f"argument 'solver' must be one of {_SOLVERS}, got {self.solver!r}")
        retrain = check_flag("retrain", self.retrain)
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            kind = type(self.checkpoint).__name__
            raise TypeError(f"argument 'checkpoint' must be None or a path, got {kind}")
        if self.checkpoint is not None:
            # not empty, not a folder, in an existing folder: checked before the step, so a
            # mistyped folder fails before anything changes, not when the ledger is written
            check_output_file(self.checkpoint, "checkpoint")
        cg_tol = real_setting("cg_tol", self.cg_tol)
        if not (math.isfinite(cg_tol) and cg_tol > 0.0):
            raise ValueError(
                f"argument 'cg_tol' must be a finite real number > 0, got {self.cg_tol!r}"
            )
        return self.solver, retrain

    # ---- training ------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> CertifiedLogisticRegression:
        """Train the certified model on ``X`` (rows are the removable training points).

        Args:
            X (array-like [n, d]): finite features.
            y (array-like [n]): class labels (at least two classes).

        Returns:
            self.

        Raises:
            TypeError: a parameter has the wrong type, e.g. ``lam=True`` or ``normalize=1``
                (the message names it).
            ValueError: a parameter is out of range (the message names it), ``X`` has NaN or
                inf, ``y`` has fewer than two classes, or ``train_mode="binary"`` with more
                than two classes. On error the model is left as it was.

        """
        saved = dict(self.__dict__)
        try:
            return self._fit(X, y)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _fit(self, X: Any, y: Any) -> CertifiedLogisticRegression:
        cfg = self._fit_config()
        X, y = _host_array(X), _host_array(y)
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=True)
        check_classification_targets(y)
        classes, labels = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"argument 'y' has {classes.shape[0]} class; at least 2 classes are needed"
            )
        n_classes = classes.shape[0]
        mode = cfg["train_mode"]
        if mode == "auto":
            mode = "binary" if n_classes == 2 else "ovr"
        if mode == "binary" and n_classes != 2:
            raise ValueError(f"argument 'train_mode' is 'binary' but 'y' has {n_classes} classes")
        if mode == "binary" and cfg["subsample_ratio"] < 1.0:
            raise ValueError(
                f"argument 'subsample_ratio' is {cfg['subsample_ratio']} but subsampling applies "
                "to one-vs-rest training only (each class keeps a share of the other classes' "
                "rows, as in the reference); binary training uses every row"
            )
        cfg["train_mode"] = mode
        device = torch.device(cfg["device"])
        Xt = torch.from_numpy(np.array(X, dtype=np.float64, order="C", copy=True)).to(device)
        if cfg["normalize"]:
            Xt = _normalize_rows(Xt, inplace=True)  # Xt is a copy of our own
        lab = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        if mode == "binary":
            Y = torch.where(lab == 1, 1.0, -1.0).to(torch.float64).unsqueeze(1)
        else:
            cls = torch.arange(n_classes, device=device)
            Y = torch.where(lab.unsqueeze(1) == cls, 1.0, -1.0).to(torch.float64)
        member = subsample_membership(Y, cfg["subsample_ratio"], cfg["seed"])
        row_sq = Xt.square().sum(1)
        if not bool(torch.isfinite(row_sq).all()):  # finite entries, but ||x||^2 overflows
            raise ValueError(
                "argument 'X' has rows whose squared norm overflows float64 (normalize=False); "
                "scale the features or use normalize=True"
            )

        self.classes_ = classes
        self._cfg = cfg
        self._data_id = uuid.uuid4().hex  # names this fit's fixed tensors in checkpoints
        self._X, self._Y, self._labels = Xt, Y, lab
        self._member = member
        self._A = member.to(torch.float64)
        self._removed = torch.zeros(Xt.shape[0], dtype=torch.bool, device=device)
        self._n_rem = self._A.sum(0)
        self._row_sq = row_sq
        self._row_norm_max = float(row_sq.max().sqrt()) if row_sq.numel() else 0.0
        self._shared_gram = cfg["subsample_ratio"] >= 1.0
        self._draws = 0
        self._history: list[RemovalRecord] = []
        self.budget_ = noise_budget(cfg["sigma"], cfg["epsilon"], cfg["delta"])
        self.retrains_ = 0
        self.n_removed_ = 0
        with no_tf32():
            self._gram = gram_matrices(Xt, self._A[:, :1] if self._shared_gram else self._A)
            self._train(draw=0)
            self._refresh_spectral()
        self._build_host_mirrors()
        self._sync_public()
        if self.budget_used_ > self.budget_:
            warnings.warn(
                f"the training residual {self.budget_used_:.3e} already exceeds the budget "
                f"{self.budget_:.3e} (sigma={cfg['sigma']}); every removal will retrain",
                UserWarning,
                stacklevel=3,
            )
        self._checkpoint_event("fit", None)
        return self

    def _train(self, draw: int) -> None:
        """(Re)train from zero on the remaining rows with perturbation draw ``draw``."""
        self._set_trained(draw, *self._solve_draw(draw, self._A))

    def _solve_draw(self, draw: int, A: Tensor) -> tuple[Tensor, Any]:
        """Train from zero on the rows weighted by ``A`` with draw ``draw``; changes nothing.

        (The long part of a retrain: an interrupt in it leaves the model as it was.)
        """
        cfg = self._cfg
        d, K = self._X.shape[1], self._Y.shape[1]
        b = draw_perturbation(cfg["seed"], draw, d, K, cfg["sigma"]).to(self._X.device)
        result = newton_fit(
            self._X, self._Y, A, b, cfg["lam"], max_iter=cfg["max_iter"], tol=cfg["tol"]
        )
        return b, result

    def _set_trained(self, draw: int, b: Tensor, result: Any) -> None:
        """Install the weights of :meth:`_solve_draw` (quick assignments only)."""
        self._b = b
        self._W = result.W
        self._Z = None
        self._chol = result.cholesky
        self._wood = None
        self._cg_base = self._cg_last = 0
        self._draws = draw
        self.n_iter_ = result.iterations
        self.training_residual_ = result.residual
        self.budget_used_ = result.residual

    def _margins(self) -> Tensor:
        """``X @ W`` of every row, cached; each committed step adds its ``X @ V``."""
        if getattr(self, "_Z", None) is None:
            self._Z = self._X @ self._W
        return cast(Tensor, self._Z)  # set just above when it was None

    def _removal_factor(self, settled: bool = True) -> woodbury.RemovedRowsFactor:
        """Return the CG starting factors with the rows removed since then folded in.

        ``settled``: rows the compiled step left pending are folded into the Woodbury terms
        first (the Python steps read those terms); if that fails, the factors restart.
        """
        wood = getattr(self, "_wood", None)
        if settled and wood is not None and wood.pending:
            self._wood = woodbury.settle(wood)
        if getattr(self, "_wood", None) is None:
            weights = curvature_weights(self._margins(), self._A)
            capacity = min(WOODBURY_MAX_ROWS, int(self._X.shape[0]))
            # the buffers of the last factors are reused: a captured CUDA graph reads them
            reuse = getattr(self, "_wood_last", None)
            # on the CPU the compiled step applies M^{-1} as one dense product
            self._wood = self._wood_last = woodbury.start(
                self._chol, weights, capacity, reuse, inverse=self._wants_inverse()
            )
            # new factors, possibly in the old buffers: what was derived from them is stale
            self._factor_generation = getattr(self, "_factor_generation", 0) + 1
        return cast(woodbury.RemovedRowsFactor, self._wood)  # started just above when None

    def _discard_uncommitted(self) -> None:
        """Clean the Woodbury columns a planned step wrote when it is not committed."""
        wood = getattr(self, "_wood", None)
        if wood is not None:
            woodbury.discard(wood, wood.capacity)
        fixed = getattr(self, "_fixed", None)
        if fixed is not None:
            fixed.forget_c_inverse()

    def _refresh_spectral(self) -> None:
        """Recompute the cached upper bounds of ``lambda_max`` of the remaining Gram matrices."""
        self._eig = lambda_max_upper(self._gram, self._gram_traces())
        self._eig_slack = torch.zeros_like(self._eig)  # the host mirror is kept current
        if hasattr(self, "_h_eig"):
            self._h_eig = self._eig.cpu().numpy().copy()
            self._h_eig_slack = np.zeros_like(self._h_eig)

    def _build_host_mirrors(self) -> None:
        """Host (numpy) copies of the removal bookkeeping, kept in step with the tensors.

        Deciding which classes a removal touches, validating indices, the worst-case bound and
        when to refresh the spectral bounds then read no device memory: on a GPU each such
        read would wait for all queued work (a host-device synchronisation per removal).
        """
        self._h_A = self._A.cpu().numpy().copy()
        self._h_removed = self._removed.cpu().numpy().copy()
        self._h_labels = self._labels.cpu().numpy().copy()
        self._h_n_rem = self._n_rem.cpu().numpy().copy()
        self._h_row_sq = self._row_sq.cpu().numpy().copy()
        self._h_eig = self._eig.cpu().numpy().copy()
        self._h_eig_slack = self._eig_slack.cpu().numpy().copy()

    def _gram_traces(self) -> Tensor:
        A = self._A[:, :1] if self._shared_gram else self._A
        return self._row_sq @ A

    def _sync_public(self) -> None:
        """Refresh the public numpy attributes from the tensors."""
        self.coef_ = self._W.T.detach().cpu().numpy().copy()
        self.b_ = self._b.T.detach().cpu().numpy().copy()
        self.budget_left_ = self.budget_ - self.budget_used_
        self.removed_indices_ = np.flatnonzero(self._h_removed).astype(np.int64)
        self.n_removed_ = int(self.removed_indices_.shape[0])

    # ---- prediction ----------------------------------------------------------------------

    def _features(self, X: Any) -> Tensor:
        check_is_fitted(self)
        given = _host_array(X)
        X = validate_data(self, given, reset=False, dtype=np.float64, ensure_all_finite=True)
        # row-major as in fit, in memory of our own: validation's conversion (e.g. of float32
        # rows) already is a fresh array, copied again only when it may be the caller's
        own = isinstance(given, np.ndarray) and not np.may_share_memory(X, given)
        if not (own and X.flags.c_contiguous and X.flags.writeable and X.dtype == np.float64):
            X = np.array(X, dtype=np.float64, order="C", copy=True)
        Xt = torch.from_numpy(X).to(self._X.device)
        return _normalize_rows(Xt, inplace=True) if self._cfg["normalize"] else Xt

    def decision_function(self, X: Any) -> np.ndarray:
        """Margins ``x . w_k`` (after the same row normalisation as in fit).

        Args:
            X (array-like [n, d]): features.

        Returns:
            ndarray [n] for two classes (positive means ``classes_[1]``; ``z_1 - z_0`` for a
            two-class one-vs-rest model), else [n, K].

        Raises:
            sklearn.exceptions.NotFittedError: before ``fit``.
            ValueError: wrong number of features, NaN or inf.

        """
        with no_tf32():
            Z = (self._features(X) @ self._W).cpu().numpy()
        if Z.shape[1] == 1:
            return Z[:, 0]
        # scikit-learn's convention for two classes is one score (positive: classes_[1]);
        # for two one-vs-rest columns the argmax is the sign of their difference
        return Z[:, 1] - Z[:, 0] if Z.shape[1] == 2 else Z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: ``sigma(z)`` for two classes, normalised ``sigma(z_k)`` for OvR.

        For two classes ``z`` is :meth:`decision_function`, so the probabilities rank the rows
        exactly as the scores do. The one-vs-rest normalisation is computed in log space: a
        row whose margins are all far below zero (margins of thousands occur at small
        ``lam``; every ``sigma(z_k)`` underflows to 0 below about -745) still follows its
        margins, as :meth:`predict` does, instead of coming out uniform. At the other end
        float64 cannot tell them apart: classes whose margins all exceed about 37 have
        ``sigma(z_k) = 1`` to within rounding, so their probabilities tie (and ``argmax``
        picks the first of them) where :meth:`predict` still ranks the margins.

        Args:
            X (array-like [n, d]): features.

        Returns:
            ndarray [n, C], rows summing to 1.

        """
        Z = self.decision_function(X)
        if Z.ndim == 1:
            p = expit(Z)  # 1 / (1 + exp(-z)) without exp's overflow for z < -709
            return np.stack([1.0 - p, p], axis=1)
        log_p = log_expit(Z)  # log sigma(z_k), finite for any finite margin
        P = np.exp(log_p - log_p.max(axis=1, keepdims=True))  # the largest is 1
        return P / P.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (``argmax`` of the one-vs-rest margins; sign for binary).

        Args:
            X (array-like [n, d]): features.

        Returns:
            ndarray [n] of labels from ``classes_``.

        """
        Z = self.decision_function(X)
        if Z.ndim == 1:
            return self.classes_[(Z > 0).astype(np.int64)]
        return self.classes_[Z.argmax(axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy on ``(X, y)``.

        Args:
            X (array-like [n, d]): features.
            y (array-like [n]): true labels, each one of ``classes_``.
            sample_weight (array-like [n], optional): weights.

        Returns:
            The (weighted) fraction of rows predicted correctly.

        Raises:
            ValueError: ``y`` holds a label the model was not fitted on (it could never be
                predicted, so the accuracy would silently count it as an error).

        """
        X, y = _host_array(X), _host_array(y)
        self._check_known_labels(y)
        return float(super().score(X, y, sample_weight=sample_weight))

    def _check_known_labels(self, y: Any) -> None:
        check_is_fitted(self)
        labels = np.asarray(y)
        unseen = np.setdiff1d(np.unique(labels), self.classes_) if labels.size else labels
        if unseen.size:
            raise ValueError(
                f"argument 'y' holds labels the model was not fitted on: "
                f"{unseen[:5].tolist()} (classes: {self.classes_.tolist()})"
            )

    # ---- removal -------------------------------------------------------------------------

    def _check_indices(self, indices: Any) -> np.ndarray:
        """Validate removal indices against the training rows; returns int64 [m]."""
        if isinstance(indices, (bool, np.bool_)):
            raise TypeError("argument 'indices' must hold integers, got a bool")
        if isinstance(indices, Tensor):
            indices = indices.detach().cpu().numpy()
        if isinstance(indices, (int, np.integer)):  # one row: the same checks, without arrays
            return self._check_one_index(int(indices))
        if isinstance(indices, (list, tuple)) and any(
            isinstance(v, (bool, np.bool_)) for v in indices
        ):  # numpy would read [3, True] as the rows 3 and 1
            raise TypeError("argument 'indices' must hold integers, got a bool among them")
        try:
            arr = np.asarray(indices)
        except (TypeError, ValueError) as err:
            raise TypeError(f"argument 'indices' must be integer indices: {err}") from None
        if arr.ndim > 1:
            raise ValueError(f"argument 'indices' must be 1-D, got shape {arr.shape}")
        arr = arr.reshape(-1)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            # integers numpy fits in no integer dtype: beyond int64 (``2**70``: objects), or
            # int64 and uint64 values together (``[3, 2**63]``: float64)
            values = arr if isinstance(indices, np.ndarray) else (
                np.asarray(indices, dtype=object).reshape(-1))
            if values.dtype == object and all(is_integer(v) for v in values):
                arr = self._python_int_indices(values)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"argument 'indices' must hold integers, got dtype {arr.dtype}")
        n = self._X.shape[0]
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            raise self._index_error("unknown", int(arr[bad][0]))
        arr = arr.astype(np.int64)
        uniq, counts = np.unique(arr, return_counts=True)
        if uniq.shape[0] != arr.shape[0]:
            raise ValueError(f"argument 'indices' has duplicate index {int(uniq[counts > 1][0])}")
        removed = self._h_removed
        if removed[arr].any():
            raise self._index_error("removed", int(arr[removed[arr]][0]))
        labels = self._h_labels
        keep = ~removed
        keep[arr] = False
        left = np.bincount(labels[keep], minlength=self.classes_.shape[0])
        if (left == 0).any():
            raise self._index_error("empties", int(np.flatnonzero(left == 0)[0]))
        return arr

    def _python_int_indices(self, arr: np.ndarray) -> np.ndarray:
        """Integers numpy keeps as objects (beyond int64, e.g. ``2**70``) as int64 [m].

        Such an integer names no training row: the first out-of-range one raises the same
        "unknown index" ValueError as any other.
        """
        n = self._X.shape[0]
        for value in arr:
            if not 0 <= value < n:
                raise self._index_error("unknown", as_int(value))
        return arr.astype(np.int64)

    def _check_one_index(self, index: int) -> np.ndarray:
        """:meth:`_check_indices` for one integer index; returns int64 [1]."""
        if not 0 <= index < self._X.shape[0]:
            raise self._index_error("unknown", index)
        if self._h_removed[index]:
            raise self._index_error("removed", index)
        label = int(self._h_labels[index])
        # rows of that class left besides this one (the only class this removal can empty)
        if not ((self._h_labels == label) & ~self._h_removed).sum() > 1:
            raise self._index_error("empties", label)
        return np.array([index], dtype=np.int64)

    def _index_error(self, kind: str, value: int) -> ValueError:
        """Build the error of a bad removal index.

        ``kind``: ``unknown`` or ``removed`` index ``value``, or a removal that ``empties``
        class number ``value``.
        """
        if kind == "unknown":
            n = self._X.shape[0]
            return ValueError(
                f"argument 'indices' has unknown index {value}: the model was fit on "
                f"{n} rows (valid indices 0..{n - 1})"
            )
        if kind == "removed":
            return ValueError(f"argument 'indices' has already removed index {value}")
        c = self.classes_[value]
        c = c.item() if hasattr(c, "item") else c
        return ValueError(f"argument 'indices' would remove every remaining row of class {c!r}")

    def _solver(self, name: str) -> str:
        """Resolve ``solver="auto"`` by a cost model of one removal step.

        A dense step costs about ``n d^2`` (Hessian) ``+ d^3 / 3`` (Cholesky) per class; a CG
        step about ``it + 1`` passes of ``4 n d`` over the data plus triangular solves of
        ``4 d^2``. CG starts from the solve with the factors of the last dense Hessian, so once a
        refinement needs more than ``CG_REFRESH_ITERATIONS`` iterations a dense step is taken
        again to refresh them.
        """
        if name != "auto":
            return name
        if self._cg_last > CG_REFRESH_ITERATIONS:
            return "cholesky"
        wood = getattr(self, "_wood", None)
        if wood is not None and wood.folded >= wood.capacity:
            return "cholesky"
        it = max(self._cg_last, CG_ITERATIONS_GUESS)
        return "cg" if self._cg_cheaper(float(self._h_n_rem.max()), it) else "cholesky"

    def _cg_cheaper(self, n: float, iterations: int) -> bool:
        """Whether the cost model of :meth:`_solver` prefers CG for ``n`` rows, ``iterations``."""
        d = float(self._X.shape[1])
        dense = n * d * d + d**3 / 3.0
        iterative = (iterations + 1) * 4.0 * n * d + iterations * 4.0 * d * d
        return iterative < dense

    def _run_refresh_after(self, name: str, rows_left: int) -> int | None:
        """Return the ``refresh_after`` of a run of single-row CG steps (-1: none needed).

        Solver ``name="cg"`` is never resolved again: ``-1``. ``"auto"`` is resolved before
        every general step: a run must end after any row whose CG iteration count ``it``
        would make :meth:`_solver` pick ``"cholesky"`` for the next row, i.e. ``it >
        CG_REFRESH_ITERATIONS`` or the cost model preferring the dense step with ``max(it,
        CG_ITERATIONS_GUESS)`` iterations at the rows left then. Returns the most iterations
        a row may take with ``"cg"`` still chosen at every row count the run can reach (at
        most ``rows_left`` rows removed, each lowering the largest class count by at most
        one; the cost difference is linear in that count, so its two ends decide), or None
        when even the guess would not keep ``"cg"`` (every row then takes the single step).
        """
        if name != "auto":
            return -1
        n_hi = float(self._h_n_rem.max())
        ends = (n_hi, max(n_hi - float(rows_left), 0.0))
        limit = None
        for it in range(CG_REFRESH_ITERATIONS + 1):
            if not all(self._cg_cheaper(n, max(it, CG_ITERATIONS_GUESS)) for n in ends):
                break
            limit = it
        return limit

    def _plan(self, rows: Tensor, rows_np: np.ndarray, solver: str) -> PlannedStep:
        """Newton step and its bound for removing ``rows`` at once; changes nothing.

        ``rows_np`` is the host copy of ``rows``: which classes the rows belong to is read
        from the host mirrors, without waiting for the device.
        """
        cfg = self._cfg
        lam, gamma = cfg["lam"], cfg["gamma"]
        X, Y, A, W = self._X, self._Y, self._A, self._W
        K = Y.shape[1]
        row_weights = A[rows]  # [m, K]
        m_k = row_weights.sum(0)
        m_k_host = self._h_A[rows_np].sum(0)
        affected_host = np.flatnonzero(m_k_host > 0)
        n_affected = int(affected_host.shape[0])
        worst = (
            worst_case_bound(
                lam,
                self._h_n_rem[affected_host],
                m_k_host[affected_host],
                gamma,
                C=max(1.0, self._row_norm_max),
                row_norm=max(1.0, self._row_norm_max),
            )
            if n_affected
            else 0.0
        )
        if n_affected == 0:  # the rows are in no class's subset: nothing to update
            return PlannedStep(
                rows, rows_np, row_weights, None, None, None, None, None, 0.0, 0.0, 0
            )
        ks = None if n_affected == K else torch.from_numpy(affected_host).to(X.device)

        def pick(t: Tensor) -> Tensor:
            return t if ks is None else t.index_select(-1, ks)

        def pick_factors(t: Tensor) -> Tensor:
            return t if ks is None else t.index_select(0, ks)

        A_after = A.clone()
        A_after[rows] = 0.0
        Ak, Wk, mk = pick(A_after), pick(W), pick(m_k)
        n_after = pick(self._n_rem) - mk
        Z = pick(self._margins())
        Xi = X[rows]
        grads = Xi.T @ (pick(row_weights) * loss_derivative(Z[rows], pick(Y[rows])))
        Delta = (lam * mk) * Wk + grads  # [d, k']
        S = curvature_weights(Z, Ak)
        lam_k = lam * n_after
        trace = self._row_sq @ Ak
        eig = self._eig if self._shared_gram else pick(self._eig)
        spectral = torch.minimum(eig, trace).clamp_min(0.0).sqrt()

        def bound_from(V: Tensor, XV: Tensor) -> Tensor:
            projected = (Ak * XV.square()).sum(0).sqrt()
            step = torch.linalg.vector_norm(V, dim=0)
            return data_dependent_bound(spectral, step, projected, gamma, self._row_norm_max)

        def hessian_and_margins(P: Tensor) -> tuple[Tensor, Tensor]:
            # H P and X P in one pass over X (glm_hvp_margins); lam differs per class
            HP, XP = ops.glm_hvp_margins(X, S, P, 0.0)
            return HP.add_(lam_k * P), XP

        def bound_terms(V: Tensor) -> tuple[Tensor, Tensor]:
            XV = X @ V
            return XV, bound_from(V, XV)

        L = factor = None
        cg_iterations = 0
        if solver == "cholesky":
            H = ops.glm_hessian(X, S, 0.0)
            H.diagonal(dim1=-2, dim2=-1).add_(lam_k.unsqueeze(-1))
            L = cholesky_factor(H)
            V = cholesky_apply(L, Delta)
            solve_residual = torch.linalg.vector_norm(
                torch.bmm(H, V.T.unsqueeze(-1)).squeeze(-1).T - Delta, dim=0
            )
            XV, per_class = bound_terms(V)
        else:
            # Start from the solve with the last dense Hessian's factors, the rows removed
            # since folded in (Woodbury); it differs from this Hessian only by the small change
            # of w since. Its true residual ||H V - Delta|| is added to the bound; while that
            # residual exceeds CG_BOUND_FRACTION of the step's bound, preconditioned CG
            # iterations (exact products, one pass over X each) refine the step.
            base = self._removal_factor()
            V = None
            if base.rows + int(rows.numel()) <= base.capacity:
                B = Delta
                if ks is not None:  # the factors hold every class
                    B = Delta.new_zeros(Delta.shape[0], K).index_copy_(1, ks, Delta)
                factor, V = woodbury.extend(base, X[rows], rows, B)
                if V is not None and ks is not None:
                    V = V.index_select(1, ks)
            if factor is not None:

                def precondition(R: Tensor) -> Tensor:
                    return woodbury.solve(factor, R, ks)

            else:
                P = pick_factors(self._chol)

                def precondition(R: Tensor) -> Tensor:
                    return triangular_apply(P, R)

            # CG from zero whose first direction is that solve: the first iterate is the solve
            # scaled by the step length minimising the H-norm error along it
            Pd = precondition(Delta) if V is None else V
            HP, XP = hessian_and_margins(Pd)
            rz = (Delta * Pd).sum(0)
            curvature = (Pd * HP).sum(0)
            alpha = torch.where(curvature > 0, rz / curvature, torch.ones_like(rz))
            V, XV, HV = alpha * Pd, alpha * XP, alpha * HP
            per_class = bound_from(V, XV)
            R = Delta - HV
            solve_residual = torch.linalg.vector_norm(R, dim=0)
            cg_tol = float(self.cg_tol)
            while True:
                # one device read per check: the two sums together
                residual_sum, bound_sum = torch.stack(
                    [solve_residual.sum(), per_class.sum()]
                ).tolist()
                if residual_sum <= cg_tol * bound_sum:
                    break
                cap = single_row.CG_MAX_ITERATIONS
                if cg_iterations == cap:
                    raise RuntimeError(
                        f"CG did not reach the residual target in {cap} iterations "
                        "(ill-conditioned Hessian); use solver='cholesky'"
                    )
                Zr = precondition(R)
                rz_new = (R * Zr).sum(0)
                Pd = Zr + torch.where(rz != 0, rz_new / rz, torch.zeros_like(rz)) * Pd
                rz = rz_new
                HP, XP = hessian_and_margins(Pd)
                curvature = (Pd * HP).sum(0)
                alpha = torch.where(curvature > 0, rz / curvature, torch.zeros_like(rz))
                V = V + alpha * Pd
                XV = XV + alpha * XP
                HV = HV + alpha * HP
                R = Delta - HV
                solve_residual = torch.linalg.vector_norm(R, dim=0)
                per_class = bound_from(V, XV)
                cg_iterations += 1
        if solver == "cholesky":
            bound = float(per_class.sum() + solve_residual.sum())
        else:  # read by the last check
            bound = residual_sum + bound_sum
        return PlannedStep(
            rows, rows_np, row_weights, ks, V, XV, factor, L, bound, worst, cg_iterations
        )

    def _drop_rows(self, rows: Tensor, rows_np: np.ndarray, *, refresh: bool = True) -> None:
        """Mark rows removed: zero weights, counts, rank-m downdate of the Gram matrices.

        The Gram matrices (one shared, or one per class with subsampling) are downdated once
        per removal, in place. Their cached ``lambda_max`` bounds stay valid (removing rows
        only shrinks a Gram matrix) and are recomputed when they may have become loose
        (``refresh``; :meth:`remove` refreshes only once the step is fully accounted). The
        host mirrors are updated alongside; when to refresh is decided on the host.
        """
        if rows_np.shape[0] == 1:  # one row: views and rank-1 products, fewer operator calls
            i = int(rows_np[0])
            a, x = self._A[i], self._X[i]
            if self._shared_gram:
                self._gram[0].addr_(x, x, alpha=-1.0)
            else:
                self._gram.sub_(a[:, None, None] * torch.outer(x, x))
            self._n_rem.sub_(a)
            a.zero_()
            self._removed[i] = True
            self._drop_row_mirrors(i)
        else:
            row_weights = self._A[rows]  # [m, K], before the removal
            weights_np = self._h_A[rows_np]
            Xi = self._X[rows]
            if self._shared_gram:
                self._gram[0].addmm_(Xi.T, Xi, alpha=-1.0)
                mass = self._h_row_sq[rows_np].sum()
            else:
                self._gram.sub_(torch.einsum("mk,mi,mj->kij", row_weights, Xi, Xi))
                mass = self._h_row_sq[rows_np] @ weights_np
            self._A[rows] = 0.0
            self._removed[rows] = True
            self._n_rem -= row_weights.sum(0)
            self._h_A[rows_np] = 0.0
            self._h_removed[rows_np] = True
            self._h_n_rem -= weights_np.sum(0)
            self._h_eig_slack += mass
        if refresh:
            self._refresh_loose_spectral()

    def _drop_row_mirrors(self, i: int) -> None:
        """Drop row ``i`` from the host mirrors (the caller updates the tensors)."""
        a_np = self._h_A[i]
        mass = self._h_row_sq[i] if self._shared_gram else self._h_row_sq[i] * a_np
        self._h_n_rem -= a_np
        a_np.fill(0.0)
        self._h_removed[i] = True
        self._h_eig_slack += mass

    def _refresh_loose_spectral(self) -> None:
        """Recompute the cached ``lambda_max`` bounds whose removed mass exceeds the margin."""
        stale = self._h_eig_slack > SPECTRAL_REFRESH_FRACTION * self._h_eig
        if stale.any():
            groups_np = np.flatnonzero(stale)
            groups = torch.from_numpy(groups_np).to(self._eig.device)
            trace = self._gram_traces().index_select(0, groups)
            fresh = lambda_max_upper(self._gram.index_select(0, groups), trace)
            self._eig.index_copy_(0, groups, fresh)
            self._h_eig[groups_np] = fresh.cpu().numpy()
            self._h_eig_slack[groups_np] = 0.0

    def _commit(self, step: PlannedStep) -> None:
        if step.L is not None:  # fresh factors
            self._cg_base = self._cg_last = 0
            self._wood = None
        elif step.V is not None:  # a CG step: 0 iterations when the factors sufficed
            self._cg_last = step.cg_iterations
            self._cg_base = self._cg_base or step.cg_iterations
            if step.factor is not None:
                self._wood = step.factor
        if step.V is not None:
            Z = getattr(self, "_Z", None)
            if Z is not None:
                if step.classes is None:
                    Z.add_(step.XV)
                else:
                    Z.index_add_(1, step.classes, step.XV)
            if step.classes is None:
                self._W.add_(step.V)
                if step.L is not None:
                    self._chol = step.L
            else:
                self._W.index_add_(1, step.classes, step.V)
                if step.L is not None:
                    self._chol.index_copy_(0, step.classes, step.L)
        # the spectral refresh (a computation that may be interrupted) is left to the caller,
        # after the step's record: an interrupt there leaves the step fully accounted
        self._drop_rows(step.rows, step.rows_np, refresh=False)
        self.budget_used_ += step.bound

    def _retrain_without(self, step: PlannedStep | None) -> None:
        """Retrain without ``step``'s rows (none: on the remaining rows) with the next draw.

        The Newton fit runs first, on a copy of the row weights, and only then is anything
        changed (quick assignments): an interrupt (Ctrl-C) during the fit leaves the model
        as it was. The caller refreshes the spectral bounds (:meth:`_refresh_spectral`) once
        it has recorded the retrain; until then the cached bounds stay valid (looser).
        """
        A = self._A
        if step is not None:
            A = A.clone()
            A[step.rows] = 0.0  # the weights _drop_rows leaves
        draw = self.retrains_ + 1
        b, result = self._solve_draw(draw, A)
        if step is not None:
            self._drop_rows(step.rows, step.rows_np, refresh=False)
        self.retrains_ = draw
        self._set_trained(draw, b, result)

    def remove(self, indices: Any, *, batch: bool = False) -> RemovalReport:
        """Remove training rows with certified Newton updates.

        Sequential mode (default) removes the rows one at a time in the given order, each with
        its own Newton step and bound. ``batch=True`` removes them with ONE Newton step
        (``Delta = m lam w + sum of their gradients``, Hessian on the rows left) and one batch
        bound. Before each step the bound is checked against the budget: if
        ``budget_used_ + bound > budget_`` the model retrains on the remaining rows with a fresh
        perturbation (``retrain=True``) or raises :class:`BudgetExceededError`
        (``retrain=False``) without applying that step; steps committed earlier in the same
        call stay committed (listed in the error's ``report``).

        Args:
            indices: int or 1-D integer array-like of rows of the ``X`` given to ``fit``.
            batch: one batch update instead of sequential updates.

        Returns:
            RemovalReport: one record per step (per index, or one for a batch).

        Raises:
            sklearn.exceptions.NotFittedError: before ``fit``.
            ValueError: unknown (an integer beyond int64 too), duplicate or already removed
                indices, a removal that would leave a class with no rows, a ``solver`` or
                ``cg_tol`` out of range, or a ``checkpoint`` path written by another model
                since this one last wrote it (the model is unchanged).
            TypeError: non-integer indices, or ``retrain``, ``checkpoint`` or ``cg_tol`` of
                the wrong type (the model is unchanged).
            BudgetExceededError: the budget would be exceeded and ``retrain=False``.
            FileNotFoundError: the ``checkpoint`` path's folder does not exist (checked
                first: the model is unchanged).
            OSError: writing the checkpoint failed; the step is applied in memory, and the
                next checkpoint's ledger record lists the rows removed before it.

        """
        if getattr(self, "_X", None) is None:  # sklearn's check, only when it would fail
            check_is_fitted(self)
        if not isinstance(batch, (bool, np.bool_)):
            raise TypeError(f"argument 'batch' must be a bool, got {type(batch).__name__}")
        solver_name, retrain = self._check_live_params()
        arr = self._check_indices(indices)
        report = RemovalReport()
        if arr.shape[0] == 0:
            return report
        self._check_checkpoint_owner()
        rows_all = torch.from_numpy(arr).to(self._X.device)
        # host and device copies of each step's rows; the device is read only where a step
        # needs a number from it (the bound), so a GPU is not made to wait for anything else
        spans = [(0, arr.shape[0])] if batch else [(i, i + 1) for i in range(arr.shape[0])]
        start = time.perf_counter()
        checkpointing = self.checkpoint is not None
        # TF32 exists only on CUDA; its flags cost host time for every step
        tf32_off = no_tf32 if self._X.device.type == "cuda" else contextlib.nullcontext
        # "auto" is resolved before every step (or run of steps), so that it refreshes the
        # factors with a dense step when they are full or CG struggles, mid-call too; a run
        # ends after a row whose CG iterations would make it resolve otherwise (_run_refresh_after)
        try:
            with tf32_off(), small_problem_threads(self._X):
                span = 0
                while span < len(spans):
                    solver = self._solver(solver_name)
                    fixed_possible = self._fixed_step_possible(solver)
                    run = None
                    if fixed_possible and self._compiled_loop_applies(solver, batch):
                        run = self._remove_compiled  # runs of rows in one compiled call
                    elif fixed_possible and self._fixed_loop_applies(solver, batch):
                        run = self._remove_on_fixed_step  # runs of rows replaying CUDA graphs
                    refresh_after = self._run_refresh_after(solver_name, len(spans) - span)
                    if refresh_after is None:  # "auto" may change its mind at any row
                        run = None
                    if run is not None:  # the single step takes the rows they leave
                        # refresh_after None set run to None above
                        done, refused = run(arr, span, report, cast(int, refresh_after))
                        span += done
                        if span == len(spans) or (done and not refused):
                            continue
                        if done:  # the state moved on: resolve again for the refused row
                            solver = self._solver(solver_name)
                            fixed_possible = self._fixed_step_possible(solver)
                    lo, hi = spans[span]
                    span += 1
                    rows, rows_np = rows_all[lo:hi], arr[lo:hi]
                    t0 = time.perf_counter()
                    try:
                        step = None
                        if fixed_possible and self._fixed_step_applies(rows_np):
                            step = self._plan_fixed(rows, rows_np)
                        if step is None:
                            step = self._plan(rows, rows_np, solver)
                    except BaseException:  # KeyboardInterrupt too: the columns it wrote
                        self._discard_uncommitted()
                        raise
                    # "not <=": a NaN bound (non-finite arithmetic) retrains, never commits
                    over = not self.budget_used_ + step.bound <= self.budget_
                    if over and not retrain:
                        self._discard_uncommitted()
                        report.seconds = time.perf_counter() - start
                        raise BudgetExceededError(
                            f"removing {rows_np.tolist()} would add a bound of "
                            f"{step.bound:.4g} to the used budget {self.budget_used_:.4g} > "
                            f"budget {self.budget_:.4g} (retrain=False); the model was not "
                            f"changed by this removal",
                            indices=tuple(rows_np.tolist()),
                            bound=step.bound,
                            budget_left=self.budget_ - self.budget_used_,
                            report=report if report.records else None,
                        )
                    if over:
                        try:
                            self._retrain_without(step)
                        except BaseException:  # interrupted in the fit: nothing changed but
                            self._discard_uncommitted()  # the columns the plan wrote
                            raise
                    else:
                        self._commit(step)
                    if checkpointing:
                        self._sync_public()
                    record = RemovalRecord(
                        indices=tuple(rows_np.tolist()),
                        bound=step.bound,
                        cumulative=self.budget_used_,
                        budget_left=self.budget_ - self.budget_used_,
                        retrained=over,
                        seconds=time.perf_counter() - t0,
                        worst_case=step.worst_case,
                    )
                    self._history.append(record)
                    report.records.append(record)
                    report.retrains += int(over)
                    # the step is fully accounted: an interrupt in this refresh (or in the
                    # checkpoint) leaves the model after it, with valid (looser) cached bounds
                    if over:
                        self._refresh_spectral()
                    else:
                        self._refresh_loose_spectral()
                    self._checkpoint_event("retrain" if over else "remove", record)
        finally:
            # the public attributes (coef_, removed_indices_, ...) once per call, also when
            # a later step raised after earlier ones committed
            self._sync_public()
        report.seconds = time.perf_counter() - start
        return report

    def retrain_now(self) -> RemovalRecord:
        """Retrain on the remaining rows now, with a fresh perturbation; resets the budget.

        (Named ``retrain_now`` because ``retrain`` is the constructor parameter that decides
        what happens when the budget runs out.)

        Returns:
            RemovalRecord: the retrain (no indices), also appended to :meth:`report`.

        Raises:
            sklearn.exceptions.NotFittedError: before ``fit``.
            ValueError: the ``checkpoint`` path was written by another model since this one
                last wrote it (the model is unchanged).

        """
        check_is_fitted(self)
        self._check_live_params()
        self._check_checkpoint_owner("retrain")
        t0 = time.perf_counter()
        with no_tf32():
            self._retrain_without(None)  # interrupted: the model is unchanged
            self._sync_public()
            record = RemovalRecord(
                (), 0.0, self.budget_used_, self.budget_left_, True, time.perf_counter() - t0,
                0.0,
            )
            self._history.append(record)
            self._refresh_spectral()
        self._checkpoint_event("retrain", record)
        return record

    # ---- reports -------------------------------------------------------------------------

    def report(self) -> RemovalReport:
        """All removal and retrain records since ``fit``.

        Returns:
            RemovalReport: the records in order, the retrain count and their total seconds.

        """
        check_is_fitted(self)
        records = list(self._history)
        return RemovalReport(
            records=records,
            retrains=sum(int(r.retrained) for r in records),
            seconds=float(sum(r.seconds for r in records)),
        )

    def privacy_report(self) -> dict[str, Any]:
        """Summarise the certified-removal guarantee and budget state as a plain dict.

        Returns:
            dict: ``epsilon``, ``delta``, ``sigma``, ``c``, ``gamma``, ``lam``, ``budget``,
            ``used``, ``left``, ``epsilon_spent`` (``c * used / sigma``), ``removals``,
            ``retrains``, ``training_residual``, ``train_mode``, ``n_classes``.

        """
        check_is_fitted(self)
        cfg = self._cfg
        return {
            "epsilon": cfg["epsilon"],
            "delta": cfg["delta"],
            "sigma": cfg["sigma"],
            "c": c_delta(cfg["delta"]),
            "gamma": cfg["gamma"],
            "lam": cfg["lam"],
            "budget": float(self.budget_),
            "used": float(self.budget_used_),
            "left": float(self.budget_left_),
            "epsilon_spent": epsilon_spent(self.budget_used_, cfg["sigma"], cfg["delta"]),
            "removals": int(self.n_removed_),
            "retrains": int(self.retrains_),
            "training_residual": float(self.training_residual_),
            "train_mode": cfg["train_mode"],
            "n_classes": int(self.classes_.shape[0]),
        }

    def gradient_residual(self) -> dict[str, float]:
        """How far the current weights are from retraining with the current ``b``, measured.

        Computes the true gradient of the perturbed objective on the remaining rows at the
        current weights, ``G = grad L_b(W; D_rem)`` (one pass over the training rows, in
        the model's dtype). Certified removal keeps ``||G||`` at most the used budget (it
        is what the data-dependent bounds bound). Each class's objective is
        ``lam n_k``-strongly convex, so ``||w_k - w_k*|| <= ||g_k|| / (lam n_k)``, with
        ``w*`` the exact minimiser: the weights a retrain on the remaining rows with this
        ``b`` would reach.

        Returns:
            dict: ``norm`` (``||G||``, Frobenius over the classes), ``budget_used`` (the
            bound it must not exceed) and ``distance_bound`` (an upper bound on
            ``||W - W*||``, Frobenius).

        """
        check_is_fitted(self)
        lam = self._cfg["lam"]
        with no_tf32():
            G = logistic_gradient(self._X, self._Y, self._A, self._W, self._b, lam)
            n_k = self._A.sum(0)
            per_class = torch.linalg.vector_norm(G, dim=0) / (lam * n_k)
        return {
            "norm": float(torch.linalg.vector_norm(G)),
            "budget_used": float(self.budget_used_),
            "distance_bound": float(torch.linalg.vector_norm(per_class)),
        }

    def fairness_report(self, X: Any, y: Any) -> dict[str, Any]:
        """Per-class accuracy on ``(X, y)`` and the gaps between classes.

        Args:
            X (array-like [n, d]): features.
            y (array-like [n]): true labels.

        Returns:
            dict: ``accuracy``, ``per_class_accuracy`` ({label: accuracy} for labels present in
            ``y``), ``worst_class``, ``worst_class_accuracy``, ``largest_gap`` (best minus
            worst class accuracy).

        Raises:
            ValueError: if ``X`` and ``y`` differ in length, ``y`` is empty or holds a label
                the model was not fitted on.

        """
        y = np.asarray(_host_array(y))
        self._check_known_labels(y)
        pred = self.predict(X)
        if y.ndim != 1 or y.shape[0] != pred.shape[0] or y.shape[0] == 0:
            raise ValueError(
                f"argument 'y' must be 1-D with one label per row of 'X' ({pred.shape[0]}), "
                f"got shape {y.shape}"
            )
        per_class: dict[Any, float] = {}
        for label in np.unique(y):
            mask = y == label
            key = label.item() if hasattr(label, "item") else label
            per_class[key] = float((pred[mask] == label).mean())
        worst = min(per_class, key=per_class.__getitem__)
        return {
            "accuracy": float((pred == y).mean()),
            "per_class_accuracy": per_class,
            "worst_class": worst,
            "worst_class_accuracy": per_class[worst],
            "largest_gap": max(per_class.values()) - per_class[worst],
        }

    # ---- persistence ---------------------------------------------------------------------
