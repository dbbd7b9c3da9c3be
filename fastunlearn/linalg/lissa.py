r"""LiSSA: stochastic Neumann-series estimate of an inverse Hessian-vector product.

Recursion (Agarwal et al.; the parametrisation of the machine-unlearning reference code)::

    h_0 = b,    h_j = b + (1 - damping) h_{j-1} - H_j h_{j-1} / scale,    estimate = h_depth / scale

**What it converges to.** A fixed point satisfies ``h = b + (1 - damping) h - H h / scale``,
i.e. ``(damping * scale * I + H) (h / scale) = b``, so the estimate converges to

.. math:: (H + \mathrm{damping} \cdot \mathrm{scale} \cdot I)^{-1} b

(the effective Tikhonov damping is ``damping * scale``, not ``damping``). With mini-batches,
H is the expected batch Hessian ``E[H_j]``. **That is not the full-data Hessian** when
``H_j`` is the Hessian of a loss summed over a batch: with ``k`` batches per pass over the
data, ``E[H_j] = H_full / k``, and the estimate is
``(H_full / k + damping * scale * I)^{-1} b = k (H_full + k * damping * scale * I)^{-1} b``.
Relative to ``H_full`` the damping is ``k * damping * scale`` and the result is k times that
damped solve. Scaling each batch product by ``N / |B_j|`` makes ``E[H_j] = H_full`` (see
:class:`~fastunlearn.influence.LissaSettings`, ``hessian="batch"`` / ``"full"``).

**When it converges.** The error obeys ``e_j = T e_{j-1}`` with
``T = (1 - damping) I - H / scale``; it converges iff the spectral radius of T is below 1,
i.e. every eigenvalue of ``damping * I + H / scale`` lies in (0, 2), i.e. every eigenvalue of
H lies in ``(-damping * scale, (2 - damping) * scale)``. Too small a ``scale`` (below about
``lambda_max(H) / 2``) makes it diverge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._numbers import check_flag, check_int, check_real
from .._repr import fields_repr
from .cg import _column_scale
from .operators import LinearOperator, _check_float_tensor

if TYPE_CHECKING:
    import numpy as np

__all__ = ["LissaResult", "LissaDivergenceError", "lissa"]

#: An update norm this many times above the smallest one seen so far means divergence: in a
#: convergent run the update norms shrink (geometrically when H is fixed, to a noise floor
#: with mini-batches), while in a divergent run they grow geometrically.
GROWTH_FACTOR = 1e3


class LissaDivergenceError(RuntimeError):
    """Raised when the LiSSA recursion diverges (non-finite or growing update norms).

    Attributes:
        step: The step at which divergence was detected, within its repetition.
        history: Update norms of that repetition recorded up to that step (see
            :class:`LissaResult`).
        repetition: The repetition (from 0) in which divergence was detected.
        steps_run: Recursion steps run in all, every earlier repetition's ``depth``
            steps included (each one Hessian product per column).

    """

    def __init__(self, message: str, step: int, history: list[float], *,
                 repetition: int = 0, steps_run: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.history = history
        self.repetition = repetition
        self.steps_run = step if steps_run is None else steps_run


@dataclass(frozen=True, repr=False)
class LissaResult:
    """Outcome of :func:`lissa`.

    Attributes:
        solution: The estimate of ``(H + damping * scale * I)^{-1} b`` (H: the expected
            product ``E[H_j]``), shaped like ``b``, averaged over repetitions.
        num_hvps: Hessian-vector products evaluated (steps x repetitions x columns).
        history: float64 CPU Tensor[repetitions, C]: the update norm
            ``||h_j - h_{j-1}|| / scale`` (the change of the estimate) at the checked steps.
        steps: int64 CPU Tensor[C], the step numbers j of the history columns.

    """

    solution: Tensor
    num_hvps: int
    history: Tensor
    steps: Tensor

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Cycle through ``batches`` forever, re-iterating it (a shuffling loader reshuffles)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("'batches' yielded no batch")


#: Largest ``depth`` and ``repetitions``: step numbers and counts are int64.
_MAX_INT64 = 2**63 - 1


def lissa(
    hvp: LinearOperator | Callable[..., Tensor],
    b: Tensor,
    *,
    damping: float | np.floating = 0.0,
    scale: float | np.floating = 10.0,
    depth: int | np.integer = 5000,
    repetitions: int | np.integer = 1,
    batches: Iterable[Any] | None = None,
    progress: bool = False,
    check_every: int | np.integer = 10,
) -> LissaResult:
    """Estimate ``(H + damping * scale * I)^{-1} b`` with the LiSSA recursion.

    With ``batches``, H is the *expected* product ``E[H_j]``. For summed-loss batch Hessians
    that is the full-data Hessian divided by the number of batches k, so the estimate is
    ``k (H_full + k * damping * scale * I)^{-1} b``. See the module docstring for the
    derivation of the fixed point and the convergence condition (every eigenvalue of
    ``damping * I + H_j / scale`` in (0, 2)).

    Divergence is an error, never a silent result: every ``check_every`` steps and at the last
    step the update norm ``||h_j - h_{j-1}||`` is read on the host; a non-finite value, one
    more than :data:`GROWTH_FACTOR` times the smallest seen so far, or (without ``batches``,
    where ``h_j - h_{j-1}`` is the residual ``b - (damping I + H / scale) h_{j-1}``) one above
    ``2 ||b||`` (an estimate worse than zero: a slow divergence) raises
    :class:`LissaDivergenceError` (increase ``scale`` or ``damping``).

    Args:
        hvp: The Hessian product. Without ``batches``: a LinearOperator or a callable
            ``hvp(v)`` on tensors shaped like ``b``. With ``batches``: a callable
            ``hvp(v, batch)`` giving ``H_j v`` on the j-th batch, or a
            :class:`~fastunlearn.linalg.NetworkHessianOperator`, called as
            ``hvp.matmat_on(v, *batch)`` with ``batch = (inputs, targets)`` (its own
            ``damping`` is included in H). Summed-loss Hessians of a batch grow with the
            batch size; pick ``scale`` for the batch Hessian, and read the result relative
            to ``E[H_j]`` (the full-data Hessian / k for summed batch Hessians).
        b: Tensor[d] or Tensor[d, K], float32 or float64, finite (columns are estimated
            independently); used detached (the estimate is not differentiable).
        damping: ``>= 0``; the effective damping is ``damping * scale`` (relative to
            ``E[H_j]``).
        scale: ``> 0``; must exceed about ``lambda_max(H) / (2 - damping)``.
        depth: Recursion steps per repetition (>= 1).
        repetitions: Independent runs averaged (>= 1); with ``batches`` they continue
            through the batch stream (re-iterated when exhausted).
        batches: Optional iterable of batches for stochastic Hessians, cycled.
        progress: Show a tqdm progress bar.
        check_every: Host divergence check period in steps (>= 1).

    Returns:
        A :class:`LissaResult`.

    Raises:
        TypeError: bad types of ``hvp``, ``b``, ``batches``, ``progress`` (not a bool) or the
            integer arguments, ``b`` not float32 or float64, or ``b`` not of the dtype of an
            operator ``hvp``.
        ValueError: bad shapes, non-finite ``b``, ``damping < 0``, ``scale <= 0``, ``depth``,
            ``repetitions`` or ``check_every`` below 1 (or ``depth``/``repetitions`` above
            ``2**63 - 1``), empty ``batches``, or ``hvp`` returning a wrong shape.
        LissaDivergenceError: the recursion diverged.

    """
    b = _check_float_tensor("b", b).detach()  # no autograd graph through `depth` steps
    if b.dtype not in (torch.float32, torch.float64):  # as cg: half norms overflow at 256
        raise TypeError(f"'b' must be float32 or float64, got {b.dtype}")
    if b.ndim not in (1, 2):
        raise ValueError(f"'b' must have shape [d] or [d, K], got {list(b.shape)}")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("'b' must be finite (it holds NaN or infinity)")
    damping = check_real("damping", damping)
    scale = check_real("scale", scale, positive=True)
    depth = check_int("depth", depth, 1, _MAX_INT64)
    repetitions = check_int("repetitions", repetitions, 1, _MAX_INT64)
    check_every = check_int("check_every", check_every, 1)
    if batches is not None and not isinstance(batches, Iterable):
        raise TypeError(f"'batches' must be an iterable of batches or None, got "
                        f"{type(batches).__name__}")
    progress = check_flag("progress", progress)
    apply = _hvp_function(hvp, b, stochastic=batches is not None)
    stream = _cycle(batches) if batches is not None else None
    # Columns far outside the dtype's comfortable range run divided by a power of two (exact;
    # the recursion is linear in b): their products with H would overflow or underflow and
    # their norms leave the range. The divergence tests run in these units; the history and
    # the error report the caller's.
    column_scale = _column_scale(b.unsqueeze(1) if b.ndim == 1 else b)
    if column_scale is not None:
        b = b / (column_scale.squeeze(0) if b.ndim == 1 else column_scale)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=depth * repetitions, desc="LiSSA", unit="hvp")

    # With a fixed symmetric H, h_j - h_{j-1} = b - (damping I + H / scale) h_{j-1} is the
    # residual of the damped system at the estimate h_{j-1} / scale; it equals T^j b with
    # T = (1 - damping) I - H / scale, so it never exceeds ||b|| while the recursion converges
    # (||T|| < 1). A larger residual is an estimate worse than 0: divergence, however slow.
    # Batch Hessians add noise to this residual, so the test is made without batches only.
    residual_limit = (2.0 * float(torch.linalg.vector_norm(b)) if batches is None
                      else math.inf)
    steps = list(range(check_every, depth + 1, check_every))  # the checked steps
    if not steps or steps[-1] != depth:
        steps.append(depth)
    history = torch.zeros(repetitions, len(steps), dtype=torch.float64)
    total = torch.zeros_like(b)
    try:
        for rep in range(repetitions):
            h = b.clone()
            smallest = math.inf
            checked = 0
            for j in range(1, depth + 1):
                Hh = apply(h, next(stream) if stream is not None else None)
                h_new = b + (1.0 - damping) * h - Hh / scale
                if j == steps[checked]:
                    change = h_new - h
                    residual = float(torch.linalg.vector_norm(change))
                    update = residual / scale
                    reported = (update if column_scale is None
                                else _norm_in_caller_units(change, column_scale) / scale)
                    history[rep, checked] = reported
                    checked += 1
                    floor = torch.finfo(b.dtype).eps * float(torch.linalg.vector_norm(h_new))
                    smallest = min(smallest, max(update, floor / scale))
                    if (not math.isfinite(update) or update > GROWTH_FACTOR * smallest
                            or residual > residual_limit):
                        raise LissaDivergenceError(
                            f"LiSSA diverged at step {j} of repetition {rep} (update norm "
                            f"{reported:.3g}): it converges only if every eigenvalue of H lies "
                            f"in (-damping*scale, (2-damping)*scale) = "
                            f"({-damping * scale + 0.0:.3g}, {(2.0 - damping) * scale:.3g}); "
                            f"increase 'scale' or 'damping'",
                            step=j,
                            history=history[rep, :checked].tolist(),
                            repetition=rep,
                            steps_run=rep * depth + j,
                        )
                h = h_new
                if bar is not None:
                    bar.update(1)
            total += h / scale
    finally:
        if bar is not None:
            bar.close()
    K = 1 if b.ndim == 1 else b.shape[1]
    solution = total / repetitions
    if column_scale is not None:
        solution = solution * (column_scale.squeeze(0) if b.ndim == 1 else column_scale)
    return LissaResult(
        solution=solution,
        num_hvps=depth * repetitions * K,
        history=history,
        steps=torch.tensor(steps, dtype=torch.int64),
    )


def _norm_in_caller_units(change: Tensor, column_scale: Tensor) -> float:
    """Frobenius norm of ``change * column_scale`` in float64, without forming the product.

    Column norms are taken in the scaled units (near 1), multiplied by their power of two and
    combined relative to the largest, so neither the squares nor the product leave the range
    unless the norm itself does.
    """
    columns = change.unsqueeze(1) if change.ndim == 1 else change
    norms = torch.linalg.vector_norm(columns.double(), dim=0) * column_scale[0].double()
    largest = float(norms.max()) if norms.numel() else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    return largest * float(torch.linalg.vector_norm(norms / largest))


def _hvp_function(
    hvp: object, b: Tensor, *, stochastic: bool
) -> Callable[[Tensor, Any], Tensor]:
    """Normalise ``hvp`` to ``f(v, batch) -> H v`` with a shape check on the result."""
    if isinstance(hvp, LinearOperator):
        if hvp.shape[1] != b.shape[0]:
            raise ValueError(f"'b' must have {hvp.shape[1]} rows, got {list(b.shape)}")
        if b.dtype != hvp.dtype:
            raise TypeError(f"'b' must have the operator's dtype {hvp.dtype}, got {b.dtype}")
        if b.device != hvp.device:
            raise ValueError(f"'b' must be on the operator's device {hvp.device}, "
                             f"got {b.device}")
        if stochastic:
            matmat_on = getattr(hvp, "matmat_on", None)
            if not callable(matmat_on):
                raise TypeError("'hvp' with 'batches' must be callable as hvp(v, batch) or "
                                "define matmat_on(V, inputs, targets)")

            def raw(v: Tensor, batch: Any) -> Tensor:
                V = v.unsqueeze(1) if v.ndim == 1 else v
                out = matmat_on(V, *batch)
                return out.squeeze(1) if v.ndim == 1 else out

        else:

            def raw(v: Tensor, batch: Any) -> Tensor:
                return hvp @ v

    elif callable(hvp):

        def raw(v: Tensor, batch: Any) -> Tensor:
            return hvp(v, batch) if stochastic else hvp(v)

    else:
        raise TypeError(f"'hvp' must be a LinearOperator or a callable, got {type(hvp).__name__}")

    def checked(v: Tensor, batch: Any) -> Tensor:
        out = raw(v, batch)
        if not isinstance(out, Tensor) or out.shape != v.shape:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"'hvp' must return a tensor of shape {list(v.shape)}, got {shape}")
        return out

    return checked
