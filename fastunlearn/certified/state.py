"""Saving and restoring a certified model's state: the mixin behind ``get_state``, ``save``.

:class:`ModelState` is a mixin of :class:`~fastunlearn.certified.CertifiedLogisticRegression`:
the state as CPU tensors plus JSON-able metadata (:meth:`~ModelState.get_state`), the model
rebuilt from it with every entry checked (:meth:`~ModelState.from_state`), the file format's
entry points (:meth:`~ModelState.save`, :meth:`~ModelState.load`, see
:mod:`fastunlearn.certified.persistence`) and the ledger event written after each change.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from ._estimator_attributes import EstimatorAttributes
from ._settings import device_setting
from .bounds import noise_budget
from .ledger import ledger_path
from .math import draw_perturbation, no_tf32, subsample_membership
from .records import RemovalRecord

if TYPE_CHECKING:
    from .estimator import CertifiedLogisticRegression

__all__ = ["STATE_VERSION", "ModelState"]

#: Version of the ``get_state`` layout.
STATE_VERSION = 1
#: ``from_state`` refuses cached Gram matrices whose products with random vectors are farther
#: than this times the rows' total squared norm (removed rows included) from the products
#: computed from ``X`` (a Frobenius-norm test, see ``_check_derived_tensors``), and spectral
#: bounds below ``lambda_max`` of the cached matrices by more than twice that: far above the
#: rounding of the in-place downdates, far below anything that moves a bound (the bounds
#: carry a relative margin of 1e-6, ``math.EIG_RELATIVE_MARGIN``).
GRAM_TOLERANCE = 1e-10
#: Random vectors per Gram matrix in ``from_state``'s check of the cached Gram matrices.
GRAM_PROBES = 4


class ModelState(EstimatorAttributes):
    """Checkpoint events, ``get_state``/``from_state`` and ``save``/``load`` (a mixin)."""

    def _check_checkpoint_owner(self, event: str = "remove") -> None:
        """Refuse (ValueError) a removal or retrain whose checkpoint path another model owns.

        Called before anything changes; see ``persistence.check_checkpoint_owner``.
        """
        if self.checkpoint is None:
            return
        path = os.fspath(self.checkpoint)
        if not os.path.exists(path) and not ledger_path(path).exists():
            return  # nothing there yet: any model may start checkpointing to it
        from .persistence import check_checkpoint_owner

        check_checkpoint_owner(self, event)

    def _checkpoint_event(self, event: str, record: RemovalRecord | None) -> None:
        if self.checkpoint is None:
            return
        from .persistence import checkpoint

        entry: dict[str, Any] = {
            "event": event,
            "seed": self._cfg["seed"],
            "draw": self._draws,
            "indices": [],
            "bound": 0.0,
            "cumulative": float(self.budget_used_),
            "budget_left": float(self.budget_left_),
        }
        if record is not None:
            entry.update(record.to_dict())
        entry.update(retrains=int(self.retrains_), n_removed=int(self.n_removed_))
        if getattr(self, "_ledger_gap", False) and event != "fit":
            # an earlier event's checkpoint failed (e.g. disk full) after its step was applied
            # in memory: this record lists every row removed before it, so the ledger still
            # accounts for that step's rows (``load_model`` checks the removed rows)
            now = {int(i) for i in entry["indices"]}
            entry["removed_before"] = [int(i) for i in self.removed_indices_ if int(i) not in now]
        self._ledger_gap = True  # cleared only once this event is on disk
        checkpoint(self, entry)
        self._ledger_gap = False

    #: Tensors of :meth:`get_state` fixed from ``fit`` to the next ``fit`` (a checkpoint
    #: writes them once, see ``persistence``).
    STATIC_TENSORS = ("X", "Y", "member", "labels")

    def static_state_id(self) -> str | None:
        """Identify the current fit's ``STATIC_TENSORS`` (a new id at every ``fit``)."""
        return getattr(self, "_data_id", None)

    def get_state(self, exclude: Sequence[str] = ()) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything needed to continue removing, as CPU tensors plus JSON-able metadata.

        Args:
            exclude: tensor names to leave out (not copied), e.g. ``STATIC_TENSORS`` when a
                checkpoint already holds them.

        Returns:
            ``(tensors, meta)``: tensors ``X`` (normalised, float64), ``Y``, ``member`` (the
            ``S_k`` masks), ``removed``, ``labels``, ``W``, ``b``, ``gram``, ``eig``,
            ``chol`` and the removal history; meta holds the parameters, classes, feature
            names (``feature_names_in_``, None when fitted without them), budget numbers and
            counters.

        Raises:
            sklearn.exceptions.NotFittedError: before ``fit``.

        """
        check_is_fitted(self)
        hist = self._history
        offsets = np.cumsum([0] + [len(r.indices) for r in hist]).astype(np.int64)
        flat = [i for r in hist for i in r.indices]

        def f64(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64)

        tensors = {
            "X": self._X,
            "Y": self._Y,
            "member": self._member,
            "removed": self._removed,
            "labels": self._labels,
            "W": self._W,
            "b": self._b,
            "gram": self._gram,
            "eig": self._eig,
            "eig_slack": torch.from_numpy(self._h_eig_slack.copy()),
            "chol": self._chol,
            "history_indices": torch.tensor(flat, dtype=torch.int64),
            "history_offsets": torch.from_numpy(offsets),
            "history_bound": f64([r.bound for r in hist]),
            "history_cumulative": f64([r.cumulative for r in hist]),
            "history_budget_left": f64([r.budget_left for r in hist]),
            "history_retrained": torch.tensor([r.retrained for r in hist], dtype=torch.bool),
            "history_seconds": f64([r.seconds for r in hist]),
            "history_worst_case": f64([r.worst_case for r in hist]),
        }
        # copies: the model keeps changing its tensors in place after this snapshot
        tensors = {
            k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in tensors.items()
            if k not in exclude
        }
        params = self.get_params(deep=False)
        params["device"] = str(params["device"])
        if params["checkpoint"] is not None:
            params["checkpoint"] = os.fspath(params["checkpoint"])
        meta = {
            "version": STATE_VERSION,
            "estimator": type(self).__name__,
            "params": params,
            "config": dict(self._cfg),
            "classes": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str if self.classes_.dtype != object else "O",
            "n_features_in": int(self.n_features_in_),
            # scikit-learn sets it when fit gets a DataFrame (string column names only)
            "feature_names_in": (
                [str(name) for name in self.feature_names_in_]
                if hasattr(self, "feature_names_in_")
                else None
            ),
            "budget": float(self.budget_),
            "budget_used": float(self.budget_used_),
            "training_residual": float(self.training_residual_),
            "retrains": int(self.retrains_),
            "draws": int(self._draws),
            "n_iter": int(self.n_iter_),
            "cg_iterations": [int(self._cg_base), int(self._cg_last)],
            "row_norm_max": float(self._row_norm_max),
            "shared_gram": bool(self._shared_gram),
            "data_id": self.static_state_id(),
        }
        return tensors, meta

    @classmethod
    def from_state(
        cls,
        tensors: dict[str, Tensor],
        meta: dict[str, Any],
        *,
        device: str | torch.device | None = None,
    ) -> CertifiedLogisticRegression:
        """Rebuild a fitted model from :meth:`get_state` output.

        Args:
            tensors: the tensors of ``get_state``.
            meta: the metadata of ``get_state``.
            device: put the model on this device instead of the saved one (e.g. ``"cpu"``
                for a model saved on a GPU); checked as ``fit`` checks its ``device``.

        Returns:
            A fitted model that continues where the saved one stopped: exactly with the
            ``'cholesky'`` solver; with ``'cg'`` the next solves start again from the saved
            Cholesky factor (the Woodbury terms of the rows removed since it was computed
            are not saved), so weights and bounds agree to the CG tolerance, each removal
            certified by its own bound. A pickle or deepcopy continues exactly either way.

        The tensors the bounds and updates rest on that can be derived from ``X``, the
        labels and the parameters are checked against a recomputation: the subsets
        ``member`` and the perturbation ``b`` exactly, the cached Gram matrices of the
        remaining rows (by products with random vectors, ``O(n d)`` each) and their
        spectral bounds ``eig`` (which must not be below ``lambda_max``) within
        ``GRAM_TOLERANCE``; so an edited file, even with matching checksums, cannot loosen
        the certified bounds.

        Raises:
            ValueError: unknown state version, or missing or inconsistent entries: unknown
                parameters, a configuration ``fit`` would refuse, a budget that does not
                follow from ``sigma``, ``epsilon`` and ``delta``, counters out of range, or
                tensor shapes that do not fit ``X``, the classes and ``n_features_in``, or
                derived tensors that disagree with their recomputation; or ``device`` names
                no torch device, another device than CPU and CUDA, or CUDA where it is not
                available.
            TypeError: ``device`` is not a device string, ``torch.device`` or CUDA index.

        """
        if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION:
            raise ValueError(
                f"argument 'meta' has unsupported state version "
                f"{meta.get('version') if isinstance(meta, dict) else None!r}"
            )
        needed = ("X", "Y", "member", "removed", "labels", "W", "b", "gram", "eig", "chol")
        if not isinstance(tensors, Mapping):
            raise ValueError(f"argument 'tensors' must be a dict, got {type(tensors).__name__}")
        missing = [k for k in needed if k not in tensors]
        if missing:
            raise ValueError(f"argument 'tensors' lacks {missing}")
        for name, value in tensors.items():
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"argument 'tensors' entry {name!r} is a {type(value).__name__}, not a tensor"
                )
        for name in ("X", "Y"):
            if tensors[name].dim() != 2:
                raise ValueError(
                    f"argument 'tensors' entry {name!r} must be 2-D, got shape "
                    f"{tuple(tensors[name].shape)}"
                )
        try:
            model = cast("CertifiedLogisticRegression", cls(**meta["params"]))
            cfg = dict(meta["config"])
        except (TypeError, KeyError) as err:
            raise ValueError(f"argument 'meta' has unknown or missing parameters: {err}") from None
        if device is not None:
            cfg["device"] = str(device_setting(device))  # the check fit makes
            model.set_params(device=cfg["device"])
        cls._check_state_config(cfg)
        device = torch.device(cfg["device"])
        X = tensors["X"].to(device, torch.float64, copy=True)
        n, d = X.shape
        K = tensors["Y"].shape[1]
        shapes = {
            "Y": (n, K),
            "member": (n, K),
            "removed": (n,),
            "labels": (n,),
            "W": (d, K),
            "b": (d, K),
            "chol": (K, d, d),
        }
        shared = meta.get("shared_gram")
        if not isinstance(shared, bool) or shared != (cfg["subsample_ratio"] >= 1.0):
            raise ValueError(
                f"argument 'meta' entry 'shared_gram' is {shared!r}, but subsample_ratio "
                f"{cfg['subsample_ratio']} gives {cfg['subsample_ratio'] >= 1.0}"
            )
        groups = 1 if shared else K
        shapes.update(gram=(groups, d, d), eig=(groups,))
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(
                    f"argument 'tensors' entry {name!r} has shape "
                    f"{tuple(tensors[name].shape)}, expected {shape}"
                )
        _check_state_numbers(meta, cfg, d, K)
        _check_state_tensors(tensors, meta, cfg, len(meta["classes"]))
        model._cfg = cfg
        model._X = X
        model._Y = tensors["Y"].to(device, torch.float64, copy=True)
        model._member = tensors["member"].to(device, torch.bool, copy=True)
        model._removed = tensors["removed"].to(device, torch.bool, copy=True)
        model._labels = tensors["labels"].to(device, torch.int64, copy=True)
        model._A = (model._member & ~model._removed.unsqueeze(1)).to(torch.float64)
        model._n_rem = model._A.sum(0)
        model._row_sq = X.square().sum(1)
        model._row_norm_max = _row_norm_max_from_meta(meta, model._row_sq)
        model._shared_gram = bool(meta["shared_gram"])
        model._W = tensors["W"].to(device, torch.float64, copy=True)
        model._Z = None
        model._b = tensors["b"].to(device, torch.float64, copy=True)
        model._gram = tensors["gram"].to(device, torch.float64, copy=True)
        model._eig = tensors["eig"].to(device, torch.float64, copy=True)
        model._chol = tensors["chol"].to(device, torch.float64, copy=True)
        model._wood = None
        slack = tensors.get("eig_slack")
        model._eig_slack = (
            torch.zeros_like(model._eig)
            if slack is None
            else slack.to(device, torch.float64, copy=True)
        )
        model._cg_base, model._cg_last = _cg_iterations_from_meta(meta)
        data_id = meta.get("data_id")
        model._data_id = (
            data_id if isinstance(data_id, str) and data_id.isalnum() else (uuid.uuid4().hex)
        )
        model._draws = int(meta["draws"])
        model.classes_ = _classes_from_meta(meta)
        model.n_features_in_ = int(meta["n_features_in"])
        names = _feature_names_from_meta(meta, model.n_features_in_)
        if names is not None:
            model.feature_names_in_ = names
        model.budget_ = float(meta["budget"])
        model.budget_used_ = float(meta["budget_used"])
        model.training_residual_ = float(meta["training_residual"])
        model.retrains_ = int(meta["retrains"])
        model.n_iter_ = int(meta["n_iter"])
        model._history = _history_from_tensors(tensors)
        _check_derived_tensors(model, cfg)
        model._build_host_mirrors()
        model._sync_public()
        return model

    @classmethod
    def _check_state_config(cls, cfg: dict[str, Any]) -> None:
        """Raise ValueError unless ``cfg`` is what ``fit`` would produce from its values."""
        names = (
            "lam",
            "sigma",
            "epsilon",
            "delta",
            "train_mode",
            "subsample_ratio",
            "gamma",
            "normalize",
            "seed",
            "max_iter",
            "tol",
            "device",
        )
        try:
            probe = cls(**{name: cfg[name] for name in names})
            checked = probe._fit_config()
        except KeyError as err:
            raise ValueError(f"argument 'meta' config lacks {err}") from None
        except (TypeError, ValueError) as err:  # a wrongly typed saved value: a bad file
            hint = " (load it with device='cpu')" if "no CUDA GPU is visible" in str(err) else ""
            raise ValueError(f"argument 'meta' config is invalid: {err}{hint}") from None
        if cfg["train_mode"] not in ("binary", "ovr"):
            raise ValueError(f"argument 'meta' config has train_mode {cfg['train_mode']!r}")
        if cfg["train_mode"] == "binary" and checked["subsample_ratio"] < 1.0:
            raise ValueError("argument 'meta' config subsamples a binary model")
        for name in names:
            if checked[name] != cfg[name]:
                raise ValueError(
                    f"argument 'meta' config entry {name!r} is {cfg[name]!r}, which fit "
                    f"would store as {checked[name]!r}"
                )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the model (one safetensors file); see ``persistence.save_model``.

        With the ``'cg'`` solver (or ``'auto'`` choosing it) a loaded model does not repeat
        the removals of the model it was saved from bit for bit: the Woodbury terms of the
        rows removed since the last Cholesky factor (the start of every CG solve, see
        :mod:`~fastunlearn.certified.woodbury`) are not saved, so the loaded model starts
        again from the saved factor. Its removals then agree with the unsaved model's to
        the CG stopping rule ``cg_tol`` only, each removal certified by its own bound (so
        the used budget differs slightly too), and the solves cost about the same: with
        the default ``cg_tol=0.01`` weights of order 1 can differ by about 1e-6; with
        ``cg_tol=1e-9`` or below, by about 1e-12. The terms are not saved because they are
        solver state, not part of the certified model: they would add ``n K`` curvature
        weights and ``K d t`` columns (``t`` removed rows) to every file, each to be
        checked on load.
        With ``'cholesky'``, and for a pickle or deepcopy, the loaded model continues
        exactly.

        Args:
            path: target file.

        Raises:
            OSError: the file cannot be written (the message names ``path``); the model and
                any file already at ``path`` are unchanged.

        """
        from .persistence import save_model

        save_model(self, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        allow_rollback: bool = False,
    ) -> CertifiedLogisticRegression:
        """Load a model saved by :meth:`save` or a checkpoint; see ``persistence.load_model``.

        A checkpoint file loads with its ledger checked and ``checkpoint`` set to it; a file
        written by :meth:`save` loads with ``checkpoint=None`` (a backup never writes into
        the live checkpoint it was copied from).

        Args:
            path: the model file.
            device: put the model on this device (e.g. ``"cpu"`` for a model saved on a GPU);
                None keeps the saved one.
            allow_rollback: load a checkpoint older than its ledger and record the rollback
                (see ``persistence.load_model``).

        Returns:
            The model (with the ``'cg'`` solver its removals agree with the saved model's
            to the CG tolerance, not bit for bit: see :meth:`save`).

        """
        from .persistence import load_model

        return load_model(path, cls=cls, device=device, allow_rollback=allow_rollback)


def _check_derived_tensors(model: CertifiedLogisticRegression, cfg: Mapping[str, Any]) -> None:
    """Raise ValueError unless the derived tensors of a rebuilt model match a recomputation.

    ``member`` and ``b`` are drawn from the seed (exactly reproducible). The Gram matrices of
    the remaining rows are checked against ``X`` and the weights ``A`` (``member`` minus the
    removed rows) without forming them again (``n d^2`` per matrix: ~20 s for ten at MNIST
    scale on two cores): products with :data:`GRAM_PROBES` fresh Gaussian vectors per matrix,
    ``X^T (A_g * (X v))`` against ``gram_g v``, whose error has the Frobenius norm of the
    difference as its root mean square (Freivalds' check; the vectors are drawn from the
    operating system's entropy, so an edited file cannot be made to pass them). Every cached
    spectral bound must then be at least ``lambda_max`` of its (checked) matrix; it may be
    larger (a bound computed before later removals).
    """

    def fail(name: str, what: str) -> ValueError:
        return ValueError(f"argument 'tensors' entry {name!r} {what} (was the file edited?)")

    member = subsample_membership(model._Y, cfg["subsample_ratio"], cfg["seed"])
    if not torch.equal(member, model._member):
        raise fail("member", "is not the training subsets drawn from 'seed'")
    d, K = model._W.shape
    b = draw_perturbation(cfg["seed"], model._draws, d, K, cfg["sigma"]).to(model._b.device)
    if not torch.equal(b, model._b):
        raise fail("b", f"is not perturbation draw {model._draws} of 'seed' and 'sigma'")
    if d == 0:
        return
    groups = slice(0, 1) if model._shared_gram else slice(None)
    weights = model._A[:, groups]
    n, G = weights.shape
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    probes = torch.randn(d, G, GRAM_PROBES, generator=gen, dtype=torch.float64)
    probes = probes.to(model._X.device)
    with no_tf32():
        mass = model._row_sq @ member[:, groups].to(torch.float64)
        slack = GRAM_TOLERANCE * mass + torch.finfo(torch.float64).tiny
        XV = (model._X @ probes.reshape(d, G * GRAM_PROBES)).reshape(n, G, GRAM_PROBES)
        direct = (model._X.T @ (XV * weights[:, :, None]).reshape(n, -1))
        cached = torch.einsum("gij,jgp->igp", model._gram, probes)
        error = (direct.reshape(d, G, GRAM_PROBES) - cached).norm(dim=0).amax(dim=1)
        if bool((~(error <= slack)).any()):
            raise fail(
                "gram",
                f"differs from the Gram matrices of the remaining rows (products off by up "
                f"to {float(error.max()):.3g})",
            )
        top = torch.linalg.eigvalsh(model._gram)[..., -1]
        if bool((~(model._eig >= top - 2 * slack)).any()):
            raise fail(
                "eig",
                "is below lambda_max of the remaining rows' Gram matrices: not an upper bound",
            )


def _check_state_numbers(meta: dict[str, Any], cfg: dict[str, Any], d: int, K: int) -> None:
    """Raise ValueError unless the budget, counters and class list of a state fit together."""
    try:
        budget = float(meta["budget"])
        numbers_ = {k: float(meta[k]) for k in ("budget_used", "training_residual")}
        counters = {k: meta[k] for k in ("retrains", "draws", "n_iter")}
        classes, n_features = meta["classes"], meta["n_features_in"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"argument 'meta' lacks or garbles an entry: {err}") from None
    expected = noise_budget(cfg["sigma"], cfg["epsilon"], cfg["delta"])
    if not math.isclose(budget, expected, rel_tol=1e-12, abs_tol=0.0):
        raise ValueError(
            f"argument 'meta' has budget {budget!r}, but sigma, epsilon and delta give {expected!r}"
        )
    for name, value in numbers_.items():
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"argument 'meta' entry {name!r} must be finite and >= 0, got {value}")
    for name, value in counters.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"argument 'meta' entry {name!r} must be an int >= 0, got {value!r}")
    n_classes = len(classes) if isinstance(classes, list) else -1
    if n_classes != (2 if cfg["train_mode"] == "binary" else K) or n_classes < 2:
        raise ValueError(
            f"argument 'meta' lists {n_classes} classes for a {cfg['train_mode']} model with "
            f"{K} weight vector(s)"
        )
    if n_features != d:
        raise ValueError(f"argument 'meta' has n_features_in {n_features!r}, X has {d} columns")


def _classes_from_meta(meta: Mapping[str, Any]) -> np.ndarray:
    """Return the ``classes_`` array of a state; ValueError unless its labels are distinct."""
    dtype = meta.get("classes_dtype")
    try:
        classes = np.asarray(meta["classes"], dtype=object if dtype == "O" else dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"argument 'meta' has unreadable classes: {err}") from None
    if classes.ndim != 1 or len({repr(c) for c in classes.tolist()}) != classes.shape[0]:
        raise ValueError(
            f"argument 'meta' classes must be distinct labels, got {meta['classes']!r}"
        )
    return classes


def _feature_names_from_meta(meta: Mapping[str, Any], n_features: int) -> np.ndarray | None:
    """Return the ``feature_names_in_`` of a state (object array), None when it has none.

    States written before the names were saved lack the entry: None too.
    """
    names = meta.get("feature_names_in")
    if names is None:
        return None
    if (
        not isinstance(names, list)
        or len(names) != n_features
        or not all(isinstance(name, str) for name in names)
    ):
        shown = names if not isinstance(names, list) else names[:5]
        raise ValueError(
            f"argument 'meta' entry 'feature_names_in' must be None or {n_features} "
            f"strings (one per feature), got {shown!r}"
        )
    return np.asarray(names, dtype=object)


def _cg_iterations_from_meta(meta: Mapping[str, Any]) -> tuple[int, int]:
    """Return the two CG iteration counters of a state (``(0, 0)`` when absent)."""
    value = meta.get("cg_iterations", [0, 0])
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)
    ):
        raise ValueError(
            f"argument 'meta' entry 'cg_iterations' must be two ints >= 0, got {value!r}"
        )
    return int(value[0]), int(value[1])


def _row_norm_max_from_meta(meta: Mapping[str, Any], row_sq: Tensor) -> float:
    """Return the stored largest row norm, checked against the rows (bounds scale with it)."""
    value = meta.get("row_norm_max")
    actual = float(row_sq.max().sqrt()) if row_sq.numel() else 0.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < actual * (1.0 - 1e-12)
    ):
        raise ValueError(
            f"argument 'meta' entry 'row_norm_max' is {value!r}, but the longest row of X has "
            f"norm {actual!r}"
        )
    return float(value)


def _check_state_tensors(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], cfg: Mapping[str, Any], n_classes: int
) -> None:
    """Raise ValueError unless the (correctly shaped) tensors of a state are consistent.

    Checks what the removal steps rely on: finite float values, +/-1 labels that agree with
    the class indices, 0/1 masks whose subsets hold every positive row, at least one
    remaining row per class, non-negative spectral bounds, and removed rows that are exactly
    those of the removal history.
    """

    def fail(what: str) -> ValueError:
        return ValueError(f"argument 'tensors' {what}")

    for name in ("X", "Y", "W", "b", "gram", "eig", "chol", "eig_slack"):
        t = tensors.get(name)
        if t is None:
            continue
        if not (t.is_floating_point() and bool(torch.isfinite(t).all())):
            raise fail(f"entry {name!r} must hold finite floats")
    for name in ("eig", "eig_slack"):
        t = tensors.get(name)
        if t is not None and (t.shape != tensors["eig"].shape or bool((t < 0).any())):
            raise fail(f"entry {name!r} must be {tuple(tensors['eig'].shape)} values >= 0")
    for name in ("member", "removed"):
        t = tensors[name]
        if t.dtype != torch.bool and (t.is_complex() or not bool(((t == 0) | (t == 1)).all())):
            raise fail(f"entry {name!r} must be a 0/1 mask")
    labels = tensors["labels"]
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise fail(f"entry 'labels' must hold integer class numbers, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise fail(f"entry 'labels' must hold class numbers in 0..{n_classes - 1}")
    labels = labels.to(torch.int64)
    if cfg["train_mode"] == "binary":
        expected = torch.where(labels == 1, 1.0, -1.0).unsqueeze(1)
    else:
        classes = torch.arange(n_classes, device=labels.device)
        expected = torch.where(labels.unsqueeze(1) == classes, 1.0, -1.0)
    Y = tensors["Y"].to(labels.device, torch.float64)
    if not torch.equal(Y, expected.to(torch.float64)):
        raise fail("entry 'Y' does not match 'labels'")
    member = tensors["member"].to(labels.device, torch.bool)
    removed = tensors["removed"].to(labels.device, torch.bool)
    if bool(((Y > 0) & ~member).any()):
        raise fail("entry 'member' leaves out a positive row of its class")
    left = torch.bincount(labels[~removed], minlength=n_classes)
    if bool((left == 0).any()):
        raise fail("entry 'removed' removes every row of a class")
    removed_rows = set(torch.nonzero(removed).flatten().tolist())
    history = _history_from_tensors(dict(tensors))
    listed = [i for record in history for i in record.indices]
    if len(set(listed)) != len(listed) or set(listed) != removed_rows:
        raise fail(
            f"entry 'removed' marks {len(removed_rows)} rows, but the removal history lists "
            f"{len(listed)} ({len(set(listed) ^ removed_rows)} differ)"
        )


_HISTORY_COLUMNS = ("bound", "cumulative", "budget_left", "retrained", "seconds", "worst_case")


def _history_from_tensors(tensors: dict[str, Tensor]) -> list[RemovalRecord]:
    names = ["history_offsets", "history_indices"] + [f"history_{c}" for c in _HISTORY_COLUMNS]
    present = [name for name in names if name in tensors]
    if not present:
        return []
    if len(present) != len(names):
        missing = sorted(set(names) - set(present))
        raise ValueError(f"argument 'tensors' has a partial removal history (lacks {missing})")
    offsets_t, flat_t = tensors["history_offsets"], tensors["history_indices"]
    n_records = offsets_t.numel() - 1
    if (
        offsets_t.dim() != 1
        or flat_t.dim() != 1
        or offsets_t.is_floating_point()
        or flat_t.is_floating_point()
        or n_records < 0
        or int(offsets_t[0]) != 0
        or int(offsets_t[-1]) != flat_t.numel()
        or bool((offsets_t[1:] < offsets_t[:-1]).any())
        or any(tensors[f"history_{c}"].shape != (n_records,) for c in _HISTORY_COLUMNS)
    ):
        raise ValueError("argument 'tensors' has an inconsistent removal history")
    n_rows = tensors["X"].shape[0] if "X" in tensors else None
    if (
        flat_t.numel()
        and n_rows is not None
        and (int(flat_t.min()) < 0 or int(flat_t.max()) >= n_rows)
    ):
        raise ValueError("argument 'tensors' removal history lists rows that do not exist")
    offsets = tensors["history_offsets"].tolist()
    flat = tensors["history_indices"].tolist()
    columns = [
        tensors[f"history_{name}"].tolist()
        for name in ("bound", "cumulative", "budget_left", "retrained", "seconds", "worst_case")
    ]
    records = []
    for j, (bound, cum, left, retrained, seconds, worst) in enumerate(zip(*columns, strict=True)):
        records.append(
            RemovalRecord(
                indices=tuple(int(i) for i in flat[offsets[j] : offsets[j + 1]]),
                bound=float(bound),
                cumulative=float(cum),
                budget_left=float(left),
                retrained=bool(retrained),
                seconds=float(seconds),
                worst_case=float(worst),
            )
        )
    return records
