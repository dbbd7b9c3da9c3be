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
  (:class:`LissaSettings`: batch size B, damping d, scale s, depth, repetitions, and
  ``hessian``). Each step multiplies by the Hessian of the loss **summed over one batch**
  of B of the N training rows. With ``k = ceil(N / B)`` batches per pass the average batch
  Hessian is ``H / k``, so with ``hessian="batch"`` (the reference's behaviour) LiSSA
  converges to ``(H / k + d s I)^{-1} G = k (H + k d s I)^{-1} G``. Relative to the
  full-data H the damping is ``k d s`` and the step is k times that damped Newton step.
  Reference CIFAR settings: N = 50,000, B = 1024, k = 49, d = 1e-4, s = 2e5, d s = 20, so
  the damping relative to H is 980 and the step is ``49 (H + 980 I)^{-1} G``. With
  ``hessian="full"`` each batch product is multiplied by ``N / |B_j|`` (an unbiased
  estimate of H), and LiSSA converges to ``(H + d s I)^{-1} G``. ``scale`` must then bound
  the eigenvalues of H rather than those of a batch Hessian. When ``N <= B``, k = 1 and the
  two modes are the same.
- ``"direct"``: the explicit Hessian of the selected parameters (reverse-over-reverse
  network HVPs on the columns of the identity, mini-batched by ``hvp_batch_size``; not
  ``torch.func.hessian``, which is wrong through an affine LayerNorm in torch 2.x) and a
  dense solve; for small parameter subsets only.

Every solver's :class:`UpdateResult` reports the system it targets: the update equals
``step_scale * (H + damping I)^{-1} G``, and ``residual`` is the relative residual of
``(H + damping I) (step / step_scale) = G``. For LiSSA with ``hessian="batch"``,
``damping = k d s`` and ``step_scale = k``. For ``"full"``, CG and direct,
``step_scale = 1`` and ``damping`` is the solver's own (``d s`` for LiSSA).

Divergence (a non-finite step, a LiSSA recursion that blows up, or a corrected training
loss that grows by more than ``loss_tolerance``) is detected *before* the model is touched:
the model is then left unchanged and the result says ``diverged=True`` with the reason.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .._no_effect import no_effect_message
from .._numbers import as_int, check_flag, check_int, check_real, check_seed
from ..linalg import (
    LissaDivergenceError,
    NetworkHessianOperator,
    cg,
    cholesky_solve,
    selected_parameter_names,
)
from ..linalg import lissa as lissa_solve
from ..linalg.network import _check_no_renorm
from ..linalg.rnn_kernels import differentiable_rnn_kernels
from .arguments import (
    _check_auto_or_float,
    _check_model_data,
    _check_order,
    _check_pair,
    _check_tensor,
)
from .curvature import GGNOperator
from .gradients import LossFn, check_sum_reduction, default_loss, eval_mode, unflatten

# gradient_difference and loss_value of arguments checked already: influence_update checks
# its data once, and the line search evaluates the loss up to some 60 times
from .gradients import _gradient_difference as gradient_difference
from .gradients import _loss_value as loss_value
from .settings import (
    CURVATURES,
    LISSA_HESSIANS,
    MAX_DIRECT_PARAMS,
    SOLVERS,
    LissaSettings,
    UpdateOptions,
    UpdateResult,
    _check_lissa,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LissaSettings",
    "UpdateOptions",
    "UpdateResult",
    "check_update_options",
    "influence_update",
    "SOLVERS",
    "CURVATURES",
    "LISSA_HESSIANS",
]

def _with_differentiable_rnn_kernels(
    fn: Callable[..., UpdateResult]
) -> Callable[..., UpdateResult]:
    """Decorate ``fn(model, ...)`` to run inside :func:`_differentiable_rnn_kernels`."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> UpdateResult:
        with differentiable_rnn_kernels(model):
            return fn(model, *args, **kwargs)

    return wrapper


def _curvature_op(curvature: str, *args: Any, **kwargs: Any) -> Any:
    cls = GGNOperator if curvature == "ggn" else NetworkHessianOperator
    return cls(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# validation


def _selection(model: object, params: Any) -> tuple[list[str], list[nn.Parameter]]:
    """Validate ``model`` and ``params``; return the selected names and parameters."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    names = selected_parameter_names(model, params)
    _check_no_renorm(model)  # its forward would change the model even with apply=False
    named = dict(model.named_parameters())
    selected = [named[n] for n in names]
    dtype, device = selected[0].dtype, selected[0].device
    if any(p.dtype != dtype or p.device != device for p in selected):
        raise ValueError("'params': the selected parameters must share one dtype and device")
    return names, selected


def _check_tau(order: int, tau: object) -> tuple[float | None, bool]:
    """Return ``(tau or None, auto)``; only first order uses ``tau``.

    ``tau`` is checked whatever the order: a bad value is refused, not ignored because
    ``order=2`` happens to make no use of it (:func:`_warn_no_effect` says so).
    """
    value = _check_auto_or_float("tau", tau, positive=True)
    auto = value is None
    return (value, auto) if order == 1 else (None, False)


#: The settings of the second-order solve that some orders and solvers do not read:
#: (setting, read by) where "read by" names the solvers that read it (order 2 only).
_SOLVE_SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("solver", ("cg", "lissa", "direct")),
    ("damping", ("cg", "direct")),
    ("curvature_subsample", ("cg", "direct")),
    ("tol", ("cg",)),
    ("maxiter", ("cg",)),
    ("restarts", ("cg",)),
)
_NOT_READ_WHY = {
    "lissa": "(LiSSA has its own damping in 'lissa', draws its own batches and runs a fixed "
             "number of steps)",
    "direct": "(one dense solve: no iterations)",
}


def _warn_no_effect(opts: UpdateOptions, tau: object, lissa: object, stacklevel: int,
                    solve_settings: dict[str, object] | None = None) -> None:
    """Warn (UserWarning) about settings given where they have no effect.

    ``tau`` with ``order=2``, ``lissa`` with ``order=1`` or another solver, and the solve's
    ``solve_settings`` (name -> value given) that the order or solver does not read
    (:data:`_SOLVE_SETTINGS`). In the library's wording
    (:func:`~fastunlearn._no_effect.no_effect_message`, as the configs' ``'tau' has no
    effect with order=2 (...)``); a setting at its default is never named. ``stacklevel``
    as for :func:`warnings.warn`, from this function's caller.
    """
    messages = []
    defaults = inspect.signature(influence_update).parameters
    given = [name for name, value in (solve_settings or {}).items()
             if value != defaults[name].default]
    unread_order1 = [name for name, _ in _SOLVE_SETTINGS if name in given]
    if opts.order == 1 and unread_order1:
        messages.append(no_effect_message(unread_order1, "with order=1 (for the second-order "
                                                         "solve)"))
    unread = [name for name, readers in _SOLVE_SETTINGS
              if name in given and opts.solver not in readers]
    if opts.order == 2 and unread:
        messages.append(no_effect_message(unread, f"with solver={opts.solver!r} "
                                                  f"{_NOT_READ_WHY[opts.solver]}"))
    if opts.order == 2 and not (isinstance(tau, str) and tau == "auto"):
        messages.append(no_effect_message(["tau"], "with order=2 (it is the first-order "
                                                   "step size)"))
    if lissa is not None and opts.order == 1:
        messages.append(no_effect_message(["lissa"], "with order=1 (for the second-order "
                                                     "solve)"))
    elif lissa is not None and opts.solver != "lissa":
        messages.append(no_effect_message(["lissa"], f"with solver={opts.solver!r} (for the "
                                                     f"LiSSA solver)"))
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def _check_subsample_size(rows: int | None, n_train: int) -> None:
    """Refuse a ``curvature_subsample`` above the training rows (never quietly "all rows")."""
    if rows is not None and rows > n_train:
        raise ValueError(f"'curvature_subsample' must be <= {n_train}, the number of training "
                         f"rows (None: all of them), got {rows}")


def _check_options(
    model: nn.Module,
    *,
    loss_fn: LossFn | None,
    params: Any,
    order: int | np.integer,
    tau: float | np.floating | str,
    solver: str,
    damping: float | np.floating,
    curvature: str,
    hvp_batch_size: int | np.integer | None,
    curvature_subsample: int | np.integer | None,
    subsample_seed: int | np.integer,
    chunk_size: int | np.integer | None,
    tol: float | np.floating,
    maxiter: int | np.integer | None,
    restarts: int | np.integer,
    lissa: LissaSettings | None,
    max_direct_params: int | np.integer,
    loss_tolerance: float | np.floating,
    compute_residual: bool,
    check_loss: bool,
    apply: bool,
    progress: bool,
) -> UpdateOptions:
    """Validate every option of :func:`influence_update` (no data, nothing computed)."""
    names, selected = _selection(model, params)
    loss_fn = default_loss if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"'loss_fn' must be callable, got {type(loss_fn).__name__}")
    order = _check_order(order)
    if solver not in SOLVERS:
        raise ValueError(f"'solver' must be one of {SOLVERS}, got {solver!r}")
    if curvature not in CURVATURES:
        raise ValueError(f"'curvature' must be one of {CURVATURES}, got {curvature!r}")
    check_real("damping", damping)
    check_real("loss_tolerance", loss_tolerance)
    check_real("tol", tol)
    check_int("restarts", restarts, 0)
    for name, value, minimum in (("maxiter", maxiter, 0), ("hvp_batch_size", hvp_batch_size, 1),
                                 ("curvature_subsample", curvature_subsample, 1),
                                 ("chunk_size", chunk_size, 1)):
        if value is not None:
            check_int(name, value, minimum)
    if curvature_subsample is not None and order == 2 and solver == "lissa":
        raise ValueError("'curvature_subsample' applies to the solvers 'cg' and 'direct'; "
                         "LiSSA samples its own batches (LissaSettings.batch_size)")
    check_seed("subsample_seed", subsample_seed)
    check_int("max_direct_params", max_direct_params, 1)
    for name, flag in (("compute_residual", compute_residual), ("check_loss", check_loss),
                       ("apply", apply), ("progress", progress)):
        check_flag(name, flag)
    if order == 2 and selected[0].dtype not in (torch.float32, torch.float64):
        raise TypeError(f"'model': second-order updates (solvers {SOLVERS}) need float32 or "
                        f"float64 parameters, got {selected[0].dtype} (the solves run in the "
                        f"parameters' dtype); convert the model with .float() or use order=1")
    tau_value, auto_tau = _check_tau(order, tau)
    uses_lissa = order == 2 and solver == "lissa"
    # checked whenever given, like tau: a bad value is refused even where it has no effect
    settings = _check_lissa(lissa) if uses_lissa or lissa is not None else None
    settings = settings if uses_lissa else None
    P = sum(p.numel() for p in selected)
    if order == 2 and solver == "direct" and P > max_direct_params:
        raise ValueError(f"solver 'direct' builds a dense {P} x {P} Hessian, more than "
                         f"'max_direct_params' = {max_direct_params}; select fewer "
                         f"parameters or use 'cg'")
    return UpdateOptions(names=names, num_params=P, dtype=selected[0].dtype,
                         device=selected[0].device, loss_fn=loss_fn, order=order,
                         solver=solver, tau=tau_value, auto_tau=auto_tau, lissa=settings)


#: Options of influence_update that need no data (the keywords of _check_options).
_OPTION_NAMES = tuple(inspect.signature(_check_options).parameters)[1:]


def check_update_options(model: nn.Module, **options: Any) -> UpdateOptions:
    """Validate keyword options of :func:`influence_update` without any data.

    Unknown keywords raise TypeError; missing ones take :func:`influence_update`'s
    defaults. Used by the drivers to reject bad options even when there is nothing to
    update.

    Returns:
        The :class:`UpdateOptions`.

    Raises:
        TypeError: If an option is not a keyword of :func:`influence_update`, or as
            :func:`influence_update` for the same options.
        ValueError: As :func:`influence_update` for the same options.

    """
    signature = inspect.signature(influence_update)
    keywords = {name: p.default for name, p in signature.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(keywords))
    if unknown:
        raise TypeError(f"influence_update() got unexpected keyword argument(s) {unknown}")
    keywords.update(options)
    return _check_options(model, **{name: keywords[name] for name in _OPTION_NAMES})


def _check_affected(
    inputs: object, targets: object, new_inputs: object, new_targets: object
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Types and shapes of the affected points and their corrected versions."""
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
    return inputs, targets, new_inputs, new_targets


def _check_train_shape(
    train_data: object, inputs: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Types and shapes of ``train_data``: a non-empty pair with rows like the affected points.

    An empty training set has no curvature or loss: a second-order step would be
    ``G / damping`` and the loss check would compare 0 with 0. Targets shaped unlike
    ``targets`` would be broadcast silently by a custom loss.
    """
    if not isinstance(train_data, (tuple, list)) or len(train_data) != 2:
        raise TypeError("'train_data' must be a pair (inputs, targets)")
    X_train = _check_tensor("train_data[0]", train_data[0])
    y_train = _check_tensor("train_data[1]", train_data[1])
    _check_pair("train_data", X_train, y_train)
    if X_train.shape[0] == 0:
        raise ValueError("'train_data' must hold at least one row (the corrected training "
                         "set), got 0")
    if X_train.shape[1:] != inputs.shape[1:]:
        raise ValueError(f"'train_data' inputs must have rows shaped like 'inputs' "
                         f"{list(inputs.shape[1:])}, got {list(X_train.shape[1:])}")
    if y_train.shape[1:] != targets.shape[1:]:
        raise ValueError(f"'train_data' targets must have rows shaped like 'targets' "
                         f"{list(targets.shape[1:])}, got {list(y_train.shape[1:])}")
    return X_train, y_train


def _check_data(
    model: nn.Module, opts: UpdateOptions, pairs: list[tuple[str, Tensor, str, Tensor]]
) -> None:
    """Check ``(input name, inputs, target name, targets)`` pairs against the model.

    Devices and dtypes first, so the model only ever runs on inputs it accepts; then one
    forward pass gives the number of classes the labels must fit (see
    :func:`~fastunlearn.influence.arguments._check_model_data`).
    """
    _check_model_data(model, pairs, opts.dtype, opts.device, opts.class_labels,
                      loss_fn=opts.loss_fn)


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
    if rows is None or rows == n:  # more than n is refused (_check_subsample_size)
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
        # (the curvature operators are `costly_products`: cg checks after every product)
        result = cg(op, G, x0=x, tol=tol, maxiter=max(budget - iterations, 0))
        x = result.solution
        steps = int(result.iterations.max())
        iterations += steps
        matvecs += result.num_matvecs
        converged = bool(result.converged.all())
        residual = float(result.residual_norms.max())
        if bool(result.breakdown.any()):
            note = _breakdown_note(iterations)
            break
        if converged or steps == 0 or iterations >= budget:
            break
    assert x is not None
    return x, iterations, matvecs, converged, residual, note


def _breakdown_note(iterations: int) -> str:
    return (f"CG breakdown after {iterations} iteration(s): the damped curvature "
            f"(H + damping I) is not positive definite along a search direction (a "
            f"network's Hessian is often indefinite); use 'damping' > 0 large enough to make "
            f"it positive definite, or curvature='ggn' (positive semidefinite)")


def _unconverged_note(
    relative: float, tol: float, iterations: int, maxiter: int | None, restarts: int,
    num_params: int,
) -> str:
    """Return the remark of a CG solve that stopped above ``tol``.

    The step is not refused: ``converged=False``, this remark and the loss check let the
    caller judge it.
    """
    cap = maxiter if maxiter is not None else 10 * num_params
    return (f"CG did not converge: relative residual {relative:.3g} > tol={tol:g} after "
            f"{iterations} iteration(s) (maxiter={cap}, restarts={restarts}); the step is "
            f"CG's last iterate, an inexact solution of (H + damping I) x = G")


def _zero_step_reason(note: str | None) -> str:
    """Why a zero step is not applied (the solver's remark, if any, kept first)."""
    zero = "the update step is zero: nothing was applied"
    return f"{note}; {zero}" if note else zero


def _full_data_estimate(
    op: Any, n_rows: int
) -> Callable[[Tensor, tuple[Tensor, Tensor]], Tensor]:
    """Batch product ``H_B v`` times ``n_rows / |B|``: an unbiased estimate of ``H v``."""

    def product(v: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        inputs, targets = batch
        out = op.matmat_on(v.unsqueeze(1), inputs, targets).squeeze(1)
        return out * (n_rows / inputs.shape[0])

    return product


def _solve_lissa(
    op: Any, G: Tensor, settings: LissaSettings, X: Tensor, y: Tensor, progress: bool
) -> tuple[Tensor | None, int, int, str | None]:
    """LiSSA on shuffled batches of ``(X, y)``, per ``settings.hessian``.

    Returns:
        ``(solution or None if it diverged, steps, per-sample HVPs, divergence reason)``.

    """
    batches = _ShuffledBatches(X, y, settings.batch_size, settings.seed)
    hvp = op if settings.hessian == "batch" else _full_data_estimate(op, int(X.shape[0]))
    try:
        out = lissa_solve(hvp, G, damping=settings.damping, scale=settings.scale,
                          depth=settings.depth, repetitions=settings.repetitions,
                          batches=batches, progress=progress, check_every=settings.check_every)
    except LissaDivergenceError as exc:  # the steps of earlier repetitions ran too
        return None, exc.steps_run, batches.rows, str(exc)
    return out.solution, settings.depth * settings.repetitions, batches.rows, None


def _targeted_residual(
    op: Any, G: Tensor, step: Tensor, damping: float, step_scale: float
) -> float:
    """``||(H + damping I) (step / step_scale) - G||`` with H the full-data operator ``op``."""
    x = step / step_scale
    residual = G - op.matmat(x.unsqueeze(1)).squeeze(1) - damping * x
    return float(torch.linalg.vector_norm(residual))


#: Columns of the dense Hessian built per block of products by the solver "direct".
_DIRECT_BLOCK = 256


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
) -> tuple[Tensor, Tensor, str | None]:
    """Dense ``(H + damping I)^{-1} G``.

    Returns:
        ``(solution, damped Hessian, note)``: when the damped matrix is exactly singular
        (e.g. ``damping=0`` and a parameter no training row reaches) there is no solution;
        the solution is then zero and ``note`` says why (otherwise None).

    """
    P = G.numel()
    H = torch.zeros(P, P, dtype=G.dtype, device=G.device)
    with eval_mode(model):
        if curvature == "ggn":
            H += GGNOperator(model, loss_fn, X, y, params=names, batch_size=batch_size).to_dense()
        else:
            # H column block by column block from reverse-over-reverse products, not
            # torch.func.hessian: its jacfwd(jacrev) is silently wrong through an affine
            # LayerNorm (torch 2.x vmap of the layer-norm backward) and needs forward-mode
            # AD, which some layers lack
            op = NetworkHessianOperator(model, loss_fn, X, y, params=names,
                                        batch_size=batch_size, mode="rev-rev")
            eye = torch.eye(P, dtype=G.dtype, device=G.device)
            for start in range(0, P, _DIRECT_BLOCK):
                H[:, start:start + _DIRECT_BLOCK] = op.matmat(eye[:, start:start + _DIRECT_BLOCK])
    H = 0.5 * (H + H.T)
    H.diagonal().add_(damping)
    try:
        x = cholesky_solve(H, G)
    except ValueError:  # indefinite (non-convex, too little damping): LU still solves it
        try:
            x = torch.linalg.solve(H, G)
        except torch.linalg.LinAlgError:
            note = ("the damped curvature (H + damping I) is singular: no Newton step "
                    "exists; use 'damping' > 0")
            return torch.zeros_like(G), H, note
    return x, H, None


# ---------------------------------------------------------------------------------------
# the update


@_with_differentiable_rnn_kernels
def influence_update(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    new_inputs: Tensor | None = None,
    new_targets: Tensor | None = None,
    *,
    train_data: tuple[Tensor, Tensor] | None = None,
    loss_fn: LossFn | None = None,
    order: int | np.integer = 2,
    tau: float | np.floating | str = "auto",
    solver: str = "cg",
    damping: float | np.floating = 0.0,
    curvature: str = "hessian",
    params: Any = None,
    hvp_batch_size: int | np.integer | None = None,
    curvature_subsample: int | np.integer | None = None,
    subsample_seed: int | np.integer = 0,
    chunk_size: int | np.integer | None = 1024,
    tol: float | np.floating = 1e-6,
    maxiter: int | np.integer | None = None,
    restarts: int | np.integer = 3,
    lissa: LissaSettings | None = None,
    compute_residual: bool = True,
    max_direct_params: int | np.integer = MAX_DIRECT_PARAMS,
    check_loss: bool = True,
    loss_tolerance: float | np.floating = 0.01,
    apply: bool = True,
    progress: bool = False,
) -> UpdateResult:
    """Apply a first- or second-order influence update to ``model`` in place.

    ``(inputs[i], targets[i])`` is the i-th affected training point as the model was trained
    on it, ``(new_inputs[i], new_targets[i])`` its corrected version (either may be None:
    unchanged). See the module docstring for the formulas and solvers.

    A zero step is never applied (``applied=False``, with the reason). This happens when CG
    breaks down at its first iteration, which is common with the defaults
    ``curvature="hessian", damping=0`` on a network. The remedy is ``damping > 0`` or
    ``curvature="ggn"``. If CG breaks down after some iterations, its partial solution is
    the step and ``reason`` says so. That step then goes through the same loss check as any
    other: it is applied only if the corrected training loss does not grow by more than
    ``loss_tolerance`` (or ``check_loss=False``). Likewise a CG solve that misses ``tol``
    within ``maxiter`` and ``restarts`` is reported, not hidden: ``converged=False``, its
    true ``residual`` and a ``reason`` saying so; its last iterate then goes through the
    same loss check.

    Args:
        model: The trained network; called as ``model(inputs)``. Batch-norm and dropout run
            in eval mode during the update (the mode is restored afterwards). A model with
            recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) runs on torch's native
            kernels during the update (oneDNN and cuDNN are switched off and restored:
            their fused RNN kernels cannot be differentiated twice); likewise scaled
            dot-product attention (``nn.MultiheadAttention``, the ``nn.Transformer*``
            layers, or a direct ``F.scaled_dot_product_attention`` call) on its math
            backend, and weight normalisation on its
            composite formula (torch's fused kernel has a wrong second derivative; see
            :func:`~fastunlearn.linalg.rnn_kernels.differentiable_rnn_kernels`).
        inputs: Tensor[m, ...], affected points as trained on: floating features in the
            parameters' dtype, or integer token ids (e.g. for an ``nn.Embedding``). Integer
            inputs are run through the model once, row by row in chunks, before anything
            is computed, so an id outside the vocabulary is named, not a torch error.
        targets: Tensor[m, ...], their labels as trained on (integer class labels of any
            integer dtype for the default loss).
        new_inputs: Tensor[m, ...], corrected inputs (None: ``inputs``); for token
            inputs, other token ids (a token change; ``G`` and the curvature are exact, the
            corrected tokens simply enter the loss). The drivers' feature unlearning
            (:func:`~fastunlearn.influence.unlearn_features`) needs floating features and
            refuses token ids.
        new_targets: Tensor[m, ...], corrected labels (None: ``targets``).
        train_data: ``(X, y)``, the **corrected** training set: the Hessian's data
            (second order), the line search's objective (``tau="auto"``) and the
            divergence check. Required for second order and ``tau="auto"``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` summed over the batch (default:
            summed cross-entropy). A mean-reduced loss is rejected.
        order: 1 (gradient step) or 2 (Newton step).
        tau: First-order step size (> 0), or ``"auto"``: a line search on the corrected
            training loss, starting from the curvature step ``||G||^2 / G^T H G`` and
            halving (at most 40 times) or doubling (at most 20) it; when no step lowers the
            loss the model is left unchanged and the result says why. Checked with
            either order; a ``tau`` other than ``"auto"`` with ``order=2`` has no effect
            and is warned about (UserWarning).
        solver: ``"cg"``, ``"lissa"`` or ``"direct"`` (second order).
        damping: Tikhonov damping lambda >= 0 of ``"cg"`` and ``"direct"``. LiSSA's damping
            is ``lissa.damping * lissa.scale`` relative to the Hessian it uses: with
            ``lissa.hessian="batch"`` that is a batch Hessian, about ``H / k``. The result's
            ``damping`` and ``step_scale`` give the system solved relative to H.
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
            a new batch per step), and ``residual`` refers to it. None: every row; more
            rows than ``train_data`` has are refused (ValueError), not read as "all".
        subsample_seed: Seed of the ``curvature_subsample`` draw.
        chunk_size: Rows per gradient and loss chunk (None: all at once).
        tol: Relative tolerance of CG on the true residual.
        maxiter: CG iteration cap over all restarts (default ``10 P``).
        restarts: CG restarts allowed when the true residual misses ``tol``.
        lissa: :class:`LissaSettings` (defaults: the reference's CIFAR settings, summed
            batch Hessians: the step is ``k (H + k d s I)^{-1} G``, k = ceil(N / B)).
            Used by ``order=2, solver="lissa"`` only; given otherwise it has no effect
            and is warned about (UserWarning), as are ``solver``, ``damping``,
            ``curvature_subsample``, ``tol``, ``maxiter`` and ``restarts`` given (not at
            their defaults) with ``order=1``, and those LiSSA (``damping``, ``tol``,
            ``maxiter``, ``restarts``; ``curvature_subsample`` is refused) or the direct
            solve (``tol``, ``maxiter``, ``restarts``) does not read.
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
        TypeError: arguments of the wrong type or dtype (e.g. floating-point targets with
            the default cross-entropy, ``order=2.0``, or ``order=2`` on a model whose
            selected parameters are float16 or bfloat16: the solvers need float32 or
            float64; first order works in any floating dtype).
        ValueError: bad shapes, devices, non-finite features, inputs the model cannot run
            on (also token ids outside an embedding's vocabulary, in any row), batch
            norm without running statistics (its rows are coupled), labels outside the
            model's classes (with a ``loss_fn`` of the caller's: only labels the loss
            fails on, so a single-logit binary loss takes 0/1 labels), parameters not in
            the model or frozen (``requires_grad=False``), a mean-reduced loss, an
            ``nn.Embedding``/``nn.EmbeddingBag`` with ``max_norm`` (its forward pass
            renormalises the weights in place, so even ``apply=False`` would change the
            model), or an out-of-range option. Devices and dtypes are checked before the model runs.
            The model is unchanged whenever an error is raised.

    """
    t_start = time.perf_counter()
    opts = _check_options(
        model, loss_fn=loss_fn, params=params, order=order, tau=tau, solver=solver,
        damping=damping, curvature=curvature, hvp_batch_size=hvp_batch_size,
        curvature_subsample=curvature_subsample, subsample_seed=subsample_seed,
        chunk_size=chunk_size, tol=tol, maxiter=maxiter, restarts=restarts, lissa=lissa,
        max_direct_params=max_direct_params, loss_tolerance=loss_tolerance,
        compute_residual=compute_residual, check_loss=check_loss, apply=apply,
        progress=progress)
    # the caller of influence_update (through its rnn-kernels wrapper)
    _warn_no_effect(opts, tau, lissa, stacklevel=3, solve_settings=dict(
        solver=solver, damping=damping, curvature_subsample=curvature_subsample, tol=tol,
        maxiter=maxiter, restarts=restarts))
    names, loss_fn, order, settings = opts.names, opts.loss_fn, opts.order, opts.lissa
    damping, tol = float(damping), float(tol)
    loss_tolerance = float(loss_tolerance)
    # checked above; NumPy scalars become Python values (seeds, counts and JSON fields)
    hvp_batch_size, curvature_subsample, chunk_size, maxiter = (
        None if v is None else as_int(v)
        for v in (hvp_batch_size, curvature_subsample, chunk_size, maxiter))
    subsample_seed, restarts = as_int(subsample_seed), as_int(restarts)
    compute_residual, check_loss, apply, progress = (
        bool(v) for v in (compute_residual, check_loss, apply, progress))
    auto_tau, P, dtype, device = opts.auto_tau, opts.num_params, opts.dtype, opts.device
    named = dict(model.named_parameters())
    selected: list[Tensor] = [named[n] for n in names]

    # the targets the loss is first evaluated on (in check_sum_reduction)
    loss_targets = "targets" if new_targets is None else "new_targets"
    inputs, targets, new_inputs, new_targets = _check_affected(inputs, targets, new_inputs,
                                                               new_targets)
    pairs = [("inputs", inputs, "targets", targets),
             ("new_inputs", new_inputs, "new_targets", new_targets)]
    if train_data is not None:
        train_data = _check_train_shape(train_data, inputs, targets)
        _check_subsample_size(curvature_subsample, int(train_data[0].shape[0]))
        pairs.append(("train_data[0]", train_data[0], "train_data[1]", train_data[1]))
    elif order == 2 or auto_tau:
        raise ValueError("'train_data' (the corrected training set) is required for "
                         "second-order updates and tau='auto'")
    _check_data(model, opts, pairs)
    check_sum_reduction(model, loss_fn, new_inputs, new_targets, targets_name=loss_targets)

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
        result.tau = opts.tau
        result.converged = True if opts.order == 2 else None  # first order has no solver
        return _finish(result, t_start, reason="G is zero: nothing to update")

    t0 = time.perf_counter()
    with eval_mode(model):
        if order == 1:
            if auto_tau:
                # checked present: tau="auto" needs the training data
                X_train, y_train = cast("tuple[Tensor, Tensor]", train_data)
                found, evals, hvps, loss0 = _line_search(model, loss_fn, X_train, y_train,
                                                         names, G, hvp_batch_size, chunk_size,
                                                         curvature)
                result.num_loss_evals += evals
                result.num_hvps += hvps
                result.loss_before = loss0
                timings["line_search"] = time.perf_counter() - t0
                if found is None:
                    return _finish(result, t_start, reason="line search found no step that "
                                   "lowers the corrected training loss")
                step_size = found
            else:
                # a number: _check_tau gives None for order 1 only with tau="auto"
                step_size = cast(float, opts.tau)
            result.tau = float(step_size)
            step = float(step_size) * G
        else:
            # checked present: the second-order update needs the training data
            X_train, y_train = cast("tuple[Tensor, Tensor]", train_data)
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
                if not ok and note is None:
                    note = _unconverged_note(result.residual, tol, iters, maxiter, restarts, P)
                result.reason = note
            elif solver == "lissa":
                assert settings is not None
                # the system LiSSA targets, relative to the full-data H (see LissaSettings)
                result.damping = settings.full_data_damping(n_train)
                result.step_scale = float(settings.step_scale(n_train))
                op = _curvature_op(curvature, model, loss_fn, X_train, y_train, params=names,
                                   batch_size=hvp_batch_size)
                solution, steps, rows, failure = _solve_lissa(op, G, settings, X_train,
                                                              y_train, progress)
                result.num_hvps += rows
                result.solver_iterations = steps
                if solution is None:
                    timings["solve"] = time.perf_counter() - t0
                    return _finish(result, t_start, diverged=True, reason=failure)
                step = solution
                if compute_residual:
                    residual = _targeted_residual(op, G, step, result.damping,
                                                  result.step_scale)
                    result.num_hvps += n_train
                    result.residual = residual / result.gradient_norm
            else:
                step, H, note = _solve_direct(model, curv_loss, X_curv, y_curv, names, G,
                                              damping, hvp_batch_size, curvature)
                result.damping = damping
                result.num_hvps += n_curv * P
                result.residual = float(torch.linalg.vector_norm(H @ step - G)) \
                    / result.gradient_norm
                result.converged = note is None
                result.reason = note
    timings.setdefault("solve", time.perf_counter() - t0)
    result.step = step
    result.step_norm = float(torch.linalg.vector_norm(step))
    if not math.isfinite(result.step_norm):
        return _finish(result, t_start, diverged=True, reason="non-finite update step")
    if result.step_norm == 0.0:  # e.g. CG breakdown at its first iteration
        return _finish(result, t_start, reason=_zero_step_reason(result.reason))

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
            grew = (f"the corrected training loss grew from {before:.6g} to {after:.6g} "
                    f"(more than loss_tolerance={loss_tolerance})")
            # keep the solver's remark (CG breakdown or no convergence): it explains why
            return _finish(result, t_start, diverged=True,
                           reason=f"{grew}; {result.reason}" if result.reason else grew)

    if apply:
        updates = unflatten(model, names, step)
        with torch.no_grad():
            # one call for every parameter: a Ctrl-C cannot land between two of them and
            # leave the model half updated
            torch._foreach_sub_(selected, updates)
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
    loss decreases (at most 40 times: no step then) and, when the first step already did,
    doubles while it keeps decreasing (at most 20 times).

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
