r"""First- and second-order influence updates (Warnecke et al., NDSS 2023).

With ``Z`` the affected training points and ``Z~`` their corrected versions (new labels
and/or new feature values), and a loss **summed** over the batch::

    G = sum_{z~ in Z~} grad l(z~; theta) - sum_{z in Z} grad l(z; theta)
    first order:   theta_new = theta - tau G
    second order:  theta_new = theta - (H + lambda I)^{-1} G

``H`` is the Hessian of the summed loss on the *corrected* training set ``train_data`` at the
current ``theta`` (the reference uses the whole corrected training set). Since the old model
minimised the old training loss, ``G`` is the gradient of the corrected training loss and
the second-order update is one damped Newton step on it.

Solvers for the second order:

- ``"cg"``: matrix-free network HVPs (:class:`~fastunlearn.linalg.NetworkHessianOperator`,
  mini-batched by ``hvp_batch_size``) and :func:`~fastunlearn.linalg.cg` with the fused
  ``cg_update_`` op; it solves ``(H + damping I) x = G`` and stops on the **true**
  residual: when CG's recursive residual says "converged" but the true residual
  ``||G - (H + damping I) x||`` is above ``tol ||G||``, CG restarts from ``x``.
- ``"lissa"``: the reference's stochastic Neumann series with its parameters
  (:class:`LissaSettings`: batch, damping d, scale s, depth, repetitions). It converges to
  ``(H + d s I)^{-1} G``: the **effective damping is d * s** (20 for the reference's
  CIFAR settings d = 1e-4, s = 2e5), reported as :attr:`UpdateResult.damping`.
- ``"direct"``: the explicit Hessian of the selected parameters (``torch.func.hessian``,
  summed over chunks) and a dense solve; for small parameter subsets only.

Divergence (a non-finite step, a LiSSA recursion that blows up, or a corrected training
loss that grows by more than ``loss_tolerance``) is detected *before* the model is touched:
the model is then left unchanged and the result says ``diverged=True`` with the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..linalg import (
    LissaDivergenceError,
    NetworkHessianOperator,
    cg,
    cholesky_solve,
    dense_hessian,
    selected_parameter_names,
)
from ..linalg import lissa as lissa_solve
from .curvature import GGNOperator
from .gradients import (
    LossFn,
    check_sum_reduction,
    default_loss,
    eval_mode,
    gradient_difference,
    loss_value,
    unflatten,
)

__all__ = ["LissaSettings", "UpdateResult", "influence_update", "SOLVERS", "CURVATURES"]

#: Second-order solvers.
SOLVERS = ("cg", "lissa", "direct")
#: Curvature matrices: the Hessian, or the (positive semidefinite) generalised Gauss-Newton.
CURVATURES = ("hessian", "ggn")


def _curvature_op(curvature: str, *args: Any, **kwargs: Any) -> Any:
    cls = GGNOperator if curvature == "ggn" else NetworkHessianOperator
    return cls(*args, **kwargs)


@dataclass(frozen=True)
class LissaSettings:
    """LiSSA parameters, named as in the reference (``get_inv_hvp_lissa``).

    The recursion ``u <- G + (1 - damping) u - H_B u / scale`` over mini-batches ``B`` of
    ``batch_size`` rows (a fresh random permutation of the training set per pass) estimates
    ``(H + damping * scale * I)^{-1} G``: the effective Tikhonov damping is
    ``damping * scale``. It converges only if every eigenvalue of the summed batch Hessian
    ``H_B`` lies in ``(-damping * scale, (2 - damping) * scale)``.

    Attributes:
        batch_size: Rows per stochastic Hessian (reference CIFAR: 1024).
        damping: ``d`` (reference CIFAR: 1e-4).
        scale: ``s`` (reference CIFAR: 2e5).
        depth: Recursion steps per repetition. The reference runs up to
            ``100 * ceil(N / B)`` steps with a patience rule that stopped it after 81-153
            steps on CIFAR; the default 100 is that effective length.
        repetitions: Independent runs averaged (reference: 1).
        seed: Seed of the batch permutations.
        check_every: Steps between divergence checks.

    """

    batch_size: int = 1024
    damping: float = 1e-4
    scale: float = 2e5
    depth: int = 100
    repetitions: int = 1
    seed: int = 0
    check_every: int = 10

    @property
    def effective_damping(self) -> float:
        """``damping * scale``, the lambda of ``(H + lambda I)^{-1}`` LiSSA converges to."""
        return self.damping * self.scale


@dataclass
class UpdateResult:
    """What :func:`influence_update` did.

    Attributes:
        order: 1 or 2.
        solver: ``"cg"``, ``"lissa"``, ``"direct"`` (second order) or None (first order).
        step: Tensor[P], the vector subtracted from the selected parameters
            (``tau G`` or ``(H + lambda I)^{-1} G``), in ``param_names`` order.
        param_names: The selected parameters.
        num_params: P.
        num_affected: Number of affected points ``|Z|``.
        tau: The first-order step size used (None for second order).
        damping: Effective Tikhonov damping lambda (``d * s`` for LiSSA).
        gradient_norm: ``||G||``.
        step_norm: ``||step||``.
        residual: Relative true residual ``||(H + lambda I) step - G|| / ||G||`` of the
            second-order solve (None for first order or when not computed).
        solver_iterations: CG iterations (all restarts), LiSSA steps, or 0.
        converged: Whether the solver met its tolerance (None if it has none).
        num_gradients: Per-sample loss gradients evaluated (2 per affected point).
        num_hvps: Per-sample Hessian-vector products evaluated (a full-data product counts
            the number of training rows; a dense Hessian counts ``P`` per row).
        num_loss_evals: Per-sample loss evaluations (divergence check, line search).
        loss_before: Corrected training loss at the old parameters (None if not computed).
        loss_after: Corrected training loss at the new parameters (None if not computed).
        diverged: Whether divergence was detected (the model was then left unchanged).
        applied: Whether the model was updated.
        reason: Why the update was not applied, or a solver remark; None otherwise.
        timings: Seconds spent per phase (``gradient``, ``solve``, ``line_search``,
            ``check``, ``total``).

    """

    order: int
    solver: str | None
    step: Tensor
    param_names: list[str]
    num_params: int
    num_affected: int
    tau: float | None = None
    damping: float = 0.0
    gradient_norm: float = 0.0
    step_norm: float = 0.0
    residual: float | None = None
    solver_iterations: int = 0
    converged: bool | None = None
    num_gradients: int = 0
    num_hvps: int = 0
    num_loss_evals: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    diverged: bool = False
    applied: bool = False
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field except ``step``, JSON-ready."""
        out = asdict(self)
        out.pop("step")
        return out


# ---------------------------------------------------------------------------------------
# validation


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim == 0:
        raise ValueError(f"'{name}' must have a leading batch dimension, got a scalar")
    return value


def _check_inputs(name: str, x: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"'{name}' must be on the model's device {device}, got {x.device}")
    if x.is_floating_point():
        if x.dtype != dtype:
            raise TypeError(f"'{name}' must have the parameters' dtype {dtype}, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"'{name}' contains non-finite values (NaN or inf)")


def _check_targets(name: str, y: Tensor, num_outputs: int | None, device: torch.device) -> None:
    if y.device != device:
        raise ValueError(f"'{name}' must be on the model's device {device}, got {y.device}")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"'{name}' contains non-finite values (NaN or inf)")
    elif y.dtype != torch.bool and num_outputs is not None and y.numel():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= num_outputs:
            raise ValueError(
                f"'{name}' holds labels in [{low}, {high}], outside the model's "
                f"{num_outputs} classes [0, {num_outputs - 1}]"
            )


def _check_pair(name: str, x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"'{name}': inputs and targets must have the same length, got {x.shape[0]} and "
            f"{y.shape[0]}"
        )


def _check_float(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{name}' must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"'{name}' must be finite and {'> 0' if positive else '>= 0'}, "
                         f"got {value}")
    return value


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{name}' must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"'{name}' must be >= {minimum}, got {value}")
    return value


def _num_outputs(model: nn.Module, x: Tensor) -> int | None:
    with torch.no_grad(), eval_mode(model):
        out = model(x[:1])
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.ndim >= 2 else None


def _check_lissa(settings: object) -> LissaSettings:
    if settings is None:
        return LissaSettings()
    if not isinstance(settings, LissaSettings):
        raise TypeError(f"'lissa' must be a LissaSettings, got {type(settings).__name__}")
    _check_int("lissa.batch_size", settings.batch_size, 1)
    _check_float("lissa.damping", settings.damping)
    _check_float("lissa.scale", settings.scale, positive=True)
    _check_int("lissa.depth", settings.depth, 1)
    _check_int("lissa.repetitions", settings.repetitions, 1)
    _check_int("lissa.check_every", settings.check_every, 1)
    return settings


# ---------------------------------------------------------------------------------------
# solvers


class _ShuffledBatches:
    """Mini-batches of ``(inputs, targets)``, a fresh seeded permutation per pass.

    Counts the rows it has handed out (``rows``), i.e. the per-sample HVPs LiSSA made.
    """

    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int, seed: int) -> None:
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.rows = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.inputs.shape[0]
        perm = torch.randperm(n, generator=self.generator).to(self.inputs.device)
        for start in range(0, n, self.batch_size):
            idx = perm[start:start + self.batch_size]
            self.rows += int(idx.numel())
            yield self.inputs[idx], self.targets[idx]


def _curvature_data(
    X: Tensor, y: Tensor, loss_fn: LossFn, rows: int | None, seed: int
) -> tuple[Tensor, Tensor, LossFn]:
    """Return the rows and loss of the curvature: all, or ``rows`` drawn and reweighted.

    A summed loss over ``m`` of ``n`` rows drawn without replacement, times ``n / m``, has
    the full summed loss's Hessian (and Gauss-Newton matrix) as its expectation.
    """
    n = int(X.shape[0])
    if rows is None or rows >= n:
        return X, y, loss_fn
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:rows].to(X.device)
    weight = n / rows

    def weighted_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return weight * loss_fn(outputs, targets)

    return X[idx], y[idx], weighted_loss


def _solve_cg(
    op: NetworkHessianOperator, G: Tensor, tol: float, maxiter: int | None, restarts: int
) -> tuple[Tensor, int, int, bool, float, str | None]:
    """CG, restarted while the true residual misses ``tol``.

    Returns:
        ``(x, iterations, matvecs, converged, true residual norm, note)``.

    """
    x: Tensor | None = None
    iterations = matvecs = 0
    budget = maxiter if maxiter is not None else 10 * G.numel()
    note = None
    converged = False
    residual = math.inf
    for _ in range(restarts + 1):
        result = cg(op, G, x0=x, tol=tol, maxiter=max(budget - iterations, 0))
        x = result.solution
        steps = int(result.iterations.max())
        iterations += steps
        matvecs += result.num_matvecs
        converged = bool(result.converged.all())
        residual = float(result.residual_norms.max())
        if bool(result.breakdown.any()):
            note = "CG breakdown: the damped Hessian is not positive definite along a " \
                   "search direction (increase 'damping')"
            break
        if converged or steps == 0 or iterations >= budget:
            break
    assert x is not None
    return x, iterations, matvecs, converged, residual, note


def _solve_direct(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    names: list[str],
    G: Tensor,
    damping: float,
    batch_size: int | None,
    curvature: str = "hessian",
) -> tuple[Tensor, Tensor]:
    """Dense ``(H + damping I)^{-1} G``; returns the solution and the damped Hessian."""
    n = X.shape[0]
    step = batch_size or max(n, 1)
    H = torch.zeros(G.numel(), G.numel(), dtype=G.dtype, device=G.device)
    with eval_mode(model):
        if curvature == "ggn":
            H += GGNOperator(model, loss_fn, X, y, params=names, batch_size=batch_size).to_dense()
        else:
            for start in range(0, n, step):
                H += dense_hessian(model, loss_fn, X[start:start + step],
                                   y[start:start + step], params=names)
    H = 0.5 * (H + H.T)
    H.diagonal().add_(damping)
    try:
        x = cholesky_solve(H, G)
    except ValueError:  # indefinite (non-convex, too little damping): LU still solves it
        x = torch.linalg.solve(H, G)
    return x, H


# ---------------------------------------------------------------------------------------
# the update


def influence_update(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    new_inputs: Tensor | None = None,
    new_targets: Tensor | None = None,
    *,
    train_data: tuple[Tensor, Tensor] | None = None,
    loss_fn: LossFn | None = None,
    order: int = 2,
    tau: float | str = "auto",
    solver: str = "cg",
    damping: float = 0.0,
    curvature: str = "hessian",
    params: Any = None,
    hvp_batch_size: int | None = None,
    curvature_subsample: int | None = None,
    subsample_seed: int = 0,
    chunk_size: int | None = 1024,
    tol: float = 1e-6,
    maxiter: int | None = None,
    restarts: int = 3,
    lissa: LissaSettings | None = None,
    compute_residual: bool = True,
    max_direct_params: int = 5000,
    check_loss: bool = True,
    loss_tolerance: float = 0.01,
    apply: bool = True,
    progress: bool = False,
) -> UpdateResult:
    """Apply a first- or second-order influence update to ``model`` in place.

    ``(inputs[i], targets[i])`` is the i-th affected training point as the model was trained
    on it, ``(new_inputs[i], new_targets[i])`` its corrected version (either may be None:
    unchanged). See the module docstring for the formulas and solvers.

    Args:
        model: The trained network; called as ``model(inputs)``. Batch-norm and dropout run
            in eval mode during the update (the mode is restored afterwards).
        inputs: Tensor[m, ...], affected points as trained on.
        targets: Tensor[m, ...], their labels as trained on.
        new_inputs: Tensor[m, ...], corrected inputs (None: ``inputs``).
        new_targets: Tensor[m, ...], corrected labels (None: ``targets``).
        train_data: ``(X, y)``, the **corrected** training set: the Hessian's data
            (second order), the line search's objective (``tau="auto"``) and the
            divergence check. Required for second order and ``tau="auto"``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` summed over the batch (default:
            summed cross-entropy). A mean-reduced loss is rejected.
        order: 1 (gradient step) or 2 (Newton step).
        tau: First-order step size (> 0), or ``"auto"``: a line search on the corrected
            training loss, starting from the curvature step ``||G||^2 / G^T H G``.
        solver: ``"cg"``, ``"lissa"`` or ``"direct"`` (second order).
        damping: Tikhonov damping lambda >= 0 of ``"cg"`` and ``"direct"`` (LiSSA's is
            ``lissa.damping * lissa.scale``).
        curvature: ``"hessian"`` (the reference) or ``"ggn"``: the generalised Gauss-Newton
            matrix, positive semidefinite for convex losses, so CG cannot break down on a
            non-convex network (see :class:`~fastunlearn.influence.GGNOperator`).
        params: Parameters to update: None (all trainable), or names / ``nn.Parameter``
            objects (e.g. :func:`~fastunlearn.influence.last_parameters`).
        hvp_batch_size: Rows per Hessian-vector product batch (None: all at once).
        curvature_subsample: ``'cg'`` and ``'direct'`` only: build the curvature from
            this many rows of ``train_data``, drawn once without replacement (seeded by
            ``subsample_seed``) and weighted ``n / m``, an unbiased estimate of the
            full-data matrix at ``m / n`` of the cost per product. The solver then solves
            that fixed system exactly (CG needs a fixed operator, unlike LiSSA, which draws
            a new batch per step), and ``residual`` refers to it. None: every row.
        subsample_seed: Seed of the ``curvature_subsample`` draw.
        chunk_size: Rows per gradient and loss chunk (None: all at once).
        tol: Relative tolerance of CG on the true residual.
        maxiter: CG iteration cap over all restarts (default ``10 P``).
        restarts: CG restarts allowed when the true residual misses ``tol``.
        lissa: :class:`LissaSettings` (defaults: the reference's CIFAR settings).
        compute_residual: Compute the true relative residual for LiSSA (one extra
            full-data HVP; CG and direct always have it).
        max_direct_params: Largest P accepted by ``"direct"``.
        check_loss: Compare the corrected training loss before and after (needs
            ``train_data``).
        loss_tolerance: Relative growth of that loss treated as divergence.
        apply: Update the model (False: only compute and return the step).
        progress: Show a progress bar (LiSSA).

    Returns:
        An :class:`UpdateResult` (counts, residual, divergence, timings).

    Raises:
        TypeError: arguments of the wrong type or dtype.
        ValueError: bad shapes, devices, non-finite features, labels outside the model's
            classes, parameters not in the model, a mean-reduced loss, or an out-of-range
            option. The model is unchanged whenever an error is raised.

    """
    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    loss_fn = default_loss if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"'loss_fn' must be callable, got {type(loss_fn).__name__}")
    names = selected_parameter_names(model, params)
    named = dict(model.named_parameters())
    selected = [named[n] for n in names]
    dtype, device = selected[0].dtype, selected[0].device
    if any(p.dtype != dtype or p.device != device for p in selected):
        raise ValueError("'params': the selected parameters must share one dtype and device")

    inputs = _check_tensor("inputs", inputs)
    targets = _check_tensor("targets", targets)
    new_inputs = inputs if new_inputs is None else _check_tensor("new_inputs", new_inputs)
    new_targets = targets if new_targets is None else _check_tensor("new_targets", new_targets)
    _check_pair("inputs/targets", inputs, targets)
    if new_inputs.shape != inputs.shape:
        raise ValueError(f"'new_inputs' must have the shape of 'inputs' {list(inputs.shape)}, "
                         f"got {list(new_inputs.shape)}")
    if new_targets.shape != targets.shape:
        raise ValueError(f"'new_targets' must have the shape of 'targets' "
                         f"{list(targets.shape)}, got {list(new_targets.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("'inputs' must hold at least one affected point")
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"'order' must be 1 or 2, got {order!r}")
    if solver not in SOLVERS:
        raise ValueError(f"'solver' must be one of {SOLVERS}, got {solver!r}")
    if curvature not in CURVATURES:
        raise ValueError(f"'curvature' must be one of {CURVATURES}, got {curvature!r}")
    damping = _check_float("damping", damping)
    loss_tolerance = _check_float("loss_tolerance", loss_tolerance)
    tol = _check_float("tol", tol)
    restarts = _check_int("restarts", restarts, 0)
    if maxiter is not None:
        maxiter = _check_int("maxiter", maxiter, 0)
    if hvp_batch_size is not None:
        hvp_batch_size = _check_int("hvp_batch_size", hvp_batch_size, 1)
    if curvature_subsample is not None:
        curvature_subsample = _check_int("curvature_subsample", curvature_subsample, 1)
        if order == 2 and solver == "lissa":
            raise ValueError("'curvature_subsample' applies to the solvers 'cg' and 'direct'; "
                             "LiSSA samples its own batches (LissaSettings.batch_size)")
    subsample_seed = _check_int("subsample_seed", subsample_seed, 0)
    if chunk_size is not None:
        chunk_size = _check_int("chunk_size", chunk_size, 1)
    auto_tau = False
    if order == 1:
        if isinstance(tau, str):
            if tau != "auto":
                raise ValueError(f"'tau' must be a positive number or 'auto', got {tau!r}")
            auto_tau = True
        else:
            tau = _check_float("tau", tau, positive=True)
    settings = _check_lissa(lissa) if order == 2 and solver == "lissa" else None
    P = sum(p.numel() for p in selected)
    if order == 2 and solver == "direct" and P > max_direct_params:
        raise ValueError(f"solver 'direct' builds a dense {P} x {P} Hessian, more than "
                         f"'max_direct_params' = {max_direct_params}; select fewer "
                         f"parameters or use 'cg'")

    num_outputs = _num_outputs(model, inputs)
    for name, x in (("inputs", inputs), ("new_inputs", new_inputs)):
        _check_inputs(name, x, dtype, device)
    for name, y in (("targets", targets), ("new_targets", new_targets)):
        _check_targets(name, y, num_outputs, device)
    if train_data is not None:
        if not isinstance(train_data, (tuple, list)) or len(train_data) != 2:
            raise TypeError("'train_data' must be a pair (inputs, targets)")
        X_train = _check_tensor("train_data[0]", train_data[0])
        y_train = _check_tensor("train_data[1]", train_data[1])
        _check_pair("train_data", X_train, y_train)
        if X_train.shape[1:] != inputs.shape[1:]:
            raise ValueError(f"'train_data' inputs must have rows shaped like 'inputs' "
                             f"{list(inputs.shape[1:])}, got {list(X_train.shape[1:])}")
        _check_inputs("train_data[0]", X_train, dtype, device)
        _check_targets("train_data[1]", y_train, num_outputs, device)
    elif order == 2 or auto_tau:
        raise ValueError("'train_data' (the corrected training set) is required for "
                         "second-order updates and tau='auto'")
    check_sum_reduction(model, loss_fn, new_inputs, new_targets)

    m = inputs.shape[0]
    timings: dict[str, float] = {}
    result = UpdateResult(order=order, solver=solver if order == 2 else None,
                          step=torch.zeros(P, dtype=dtype, device=device), param_names=names,
                          num_params=P, num_affected=m, timings=timings)

    t0 = time.perf_counter()
    G = gradient_difference(model, loss_fn, inputs, targets, new_inputs, new_targets,
                            params=names, chunk_size=chunk_size)
    timings["gradient"] = time.perf_counter() - t0
    result.num_gradients = 2 * m
    result.gradient_norm = float(torch.linalg.vector_norm(G))
    n_train = int(train_data[0].shape[0]) if train_data is not None else 0

    if not math.isfinite(result.gradient_norm):
        return _finish(result, t_start, diverged=True, reason="non-finite gradient G")
    if result.gradient_norm == 0.0:
        result.tau = None if order == 2 else (None if auto_tau else float(tau))
        result.converged = True
        return _finish(result, t_start, reason="G is zero: nothing to update")

    t0 = time.perf_counter()
    with eval_mode(model):
        if order == 1:
            if auto_tau:
                X_train, y_train = train_data  # type: ignore[misc]
                tau, evals, hvps, loss0 = _line_search(model, loss_fn, X_train, y_train, names,
                                                       G, hvp_batch_size, chunk_size,
                                                       curvature)
                result.num_loss_evals += evals
                result.num_hvps += hvps
                result.loss_before = loss0
                timings["line_search"] = time.perf_counter() - t0
                if tau is None:
                    return _finish(result, t_start, reason="line search found no step that "
                                   "lowers the corrected training loss")
            result.tau = float(tau)
            step = float(tau) * G
        else:
            X_train, y_train = train_data  # type: ignore[misc]
            X_curv, y_curv, curv_loss = _curvature_data(X_train, y_train, loss_fn,
                                                        curvature_subsample, subsample_seed)
            n_curv = int(X_curv.shape[0])
            if solver == "cg":
                # one batch of curvature rows: reverse-over-reverse keeps the gradient's graph
                # between CG products (the GGN operator keeps its own graphs)
                one_batch = hvp_batch_size is None or n_curv <= hvp_batch_size
                mode = {"mode": "rev-rev"} if curvature == "hessian" and one_batch else {}
                op = _curvature_op(curvature, model, curv_loss, X_curv, y_curv, params=names,
                                   damping=damping, batch_size=hvp_batch_size, **mode)
                step, iters, matvecs, ok, residual, note = _solve_cg(op, G, tol, maxiter,
                                                                      restarts)
                result.damping = damping
                result.solver_iterations = iters
                result.converged = ok
                # matvecs include the initial residual of each restart and the final true one
                result.num_hvps += matvecs * n_curv
                result.residual = residual / result.gradient_norm
                result.reason = note
            elif solver == "lissa":
                assert settings is not None
                result.damping = settings.effective_damping
                op = _curvature_op(curvature, model, loss_fn, X_train, y_train, params=names,
                                   batch_size=hvp_batch_size)
                batches = _ShuffledBatches(X_train, y_train, settings.batch_size, settings.seed)
                try:
                    out = lissa_solve(op, G, damping=settings.damping, scale=settings.scale,
                                depth=settings.depth, repetitions=settings.repetitions,
                                batches=batches, progress=progress,
                                check_every=settings.check_every)
                except LissaDivergenceError as exc:
                    result.num_hvps += batches.rows
                    result.solver_iterations = exc.step
                    timings["solve"] = time.perf_counter() - t0
                    return _finish(result, t_start, diverged=True, reason=str(exc))
                step = out.solution
                result.num_hvps += batches.rows
                result.solver_iterations = settings.depth * settings.repetitions
                if compute_residual:
                    full = op.matmat(step.unsqueeze(1)).squeeze(1)
                    residual = G - full - result.damping * step
                    result.num_hvps += n_train
                    result.residual = float(torch.linalg.vector_norm(residual)) \
                        / result.gradient_norm
            else:
                step, H = _solve_direct(model, curv_loss, X_curv, y_curv, names, G, damping,
                                        hvp_batch_size, curvature)
                result.damping = damping
                result.num_hvps += n_curv * P
                result.residual = float(torch.linalg.vector_norm(H @ step - G)) \
                    / result.gradient_norm
                result.converged = True
    timings.setdefault("solve", time.perf_counter() - t0)
    result.step = step
    result.step_norm = float(torch.linalg.vector_norm(step))
    if not math.isfinite(result.step_norm):
        return _finish(result, t_start, diverged=True, reason="non-finite update step")

    if check_loss and train_data is not None:
        t0 = time.perf_counter()
        X_train, y_train = train_data
        if result.loss_before is None:
            result.loss_before = loss_value(model, loss_fn, X_train, y_train,
                                            chunk_size=chunk_size)
            result.num_loss_evals += n_train
        new_values = [p.detach() - s for p, s in zip(selected, unflatten(model, names, step),
                                                    strict=True)]
        result.loss_after = loss_value(model, loss_fn, X_train, y_train, names=names,
                                       values=new_values, chunk_size=chunk_size)
        result.num_loss_evals += n_train
        timings["check"] = time.perf_counter() - t0
        before, after = result.loss_before, result.loss_after
        if not math.isfinite(after) or after > before + loss_tolerance * max(abs(before), 1e-12):
            return _finish(result, t_start, diverged=True,
                           reason=f"the corrected training loss grew from {before:.6g} to "
                                  f"{after:.6g} (more than loss_tolerance={loss_tolerance})")

    if apply:
        with torch.no_grad():
            for p, s in zip(selected, unflatten(model, names, step), strict=True):
                p.sub_(s)
        result.applied = True
    return _finish(result, t_start)


def _finish(
    result: UpdateResult, t_start: float, *, diverged: bool = False, reason: str | None = None
) -> UpdateResult:
    result.diverged = result.diverged or diverged
    if reason is not None:
        result.reason = reason
    result.timings["total"] = time.perf_counter() - t_start
    return result


def _line_search(
    model: nn.Module,
    loss_fn: LossFn,
    X: Tensor,
    y: Tensor,
    names: list[str],
    G: Tensor,
    hvp_batch_size: int | None,
    chunk_size: int | None,
    curvature: str = "hessian",
) -> tuple[float | None, int, int, float]:
    """Step size along ``-G`` lowering the corrected training loss.

    Starts from the minimiser of the local quadratic model, ``||G||^2 / G^T H G`` (one
    full-data HVP; ``1 / ||G||`` if the curvature is not positive), then halves until the
    loss decreases and doubles while it keeps decreasing.

    Returns:
        ``(tau or None, loss evaluations (per sample), HVPs (per sample), loss at tau=0)``.

    """
    n = X.shape[0]
    named = dict(model.named_parameters())
    base = [named[n_].detach() for n_ in names]
    direction = unflatten(model, names, G)

    def f(t: float) -> float:
        values = [p - t * g for p, g in zip(base, direction, strict=True)]
        return loss_value(model, loss_fn, X, y, names=names, values=values,
                          chunk_size=chunk_size)

    op = _curvature_op(curvature, model, loss_fn, X, y, params=names, batch_size=hvp_batch_size)
    gHg = float(G @ op.matmat(G.unsqueeze(1)).squeeze(1))
    gg = float(G @ G)
    t = gg / gHg if gHg > 0 and math.isfinite(gHg) else 1.0 / math.sqrt(gg)
    f0 = f(0.0)
    evals = 1
    ft = f(t)
    evals += 1
    halvings = 0
    while not (math.isfinite(ft) and ft < f0) and halvings < 40:
        t *= 0.5
        ft = f(t)
        evals += 1
        halvings += 1
    if not (math.isfinite(ft) and ft < f0):
        return None, evals * n, n, f0
    if halvings == 0:
        for _ in range(20):
            f2 = f(2.0 * t)
            evals += 1
            if not (math.isfinite(f2) and f2 < ft):
                break
            t, ft = 2.0 * t, f2
    return t, evals * n, n, f0
