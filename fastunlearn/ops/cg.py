"""Generic conjugate-gradient support: one fused CG step for K right-hand sides.

A CG loop over any operator (for example a network Hessian-vector product through
``torch.func``) then costs one operator call plus one :func:`cg_update_` per iteration, with
no host synchronisation inside the step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices

__all__ = ["cg_update_"]


def cg_update_(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    Ap: Tensor,
    inv_diag: Tensor | None,
    rz: Tensor,
    rr: Tensor,
    active: Tensor,
    iterations: Tensor,
    threshold_sq: Tensor,
) -> None:
    """One (Jacobi-preconditioned) CG step on the K columns of [d, K] tensors, in place.

    For every active column k whose curvature ``pAp = p_k . Ap_k`` is positive and finite::

        alpha = rz_k / pAp;  x_k += alpha p_k;  r_k -= alpha Ap_k;  z_k = inv_diag_k * r_k
        beta = (r_k . z_k) / rz_k;  p_k = z_k + beta p_k
        rz_k = r_k . z_k;  rr_k = r_k . r_k;  iterations_k += 1;  active_k = rr_k > threshold_sq_k

    A column with ``pAp <= 0`` or non-finite ``pAp`` (breakdown) is left unchanged and made
    inactive; inactive columns are never modified. Nothing is synchronised with the host, so
    a CG loop can check ``active.any()`` only every few iterations.

    Args:
        x (Tensor[d, K]): iterates, updated in place.
        r (Tensor[d, K]): residuals ``b - A x``, updated in place.
        p (Tensor[d, K]): search directions, updated in place.
        Ap (Tensor[d, K]): the operator applied to ``p``.
        inv_diag (Tensor[d, K] or Tensor[d, 1], optional): Jacobi preconditioner (inverse
            diagonal of A), or None for plain CG.
        rz (Tensor[K]): ``r . z`` per column (``r . r`` without a preconditioner), in place.
        rr (Tensor[K]): ``r . r`` per column, updated in place.
        active (Tensor[K], bool): which columns still iterate, updated in place.
        iterations (Tensor[K], int64): steps taken per column, updated in place.
        threshold_sq (Tensor[K]): a column stays active while ``rr > threshold_sq``.

    Raises:
        TypeError: if an argument is not a Tensor (``inv_diag`` may be None) or a dtype does
            not match (the message names the argument).
        ValueError: if a shape or device does not match, or a tensor written in place
            shares memory with another argument or between its own elements (an expanded
            tensor; the message names the argument).

    """
    tensors = {"x": x, "r": r, "p": p, "Ap": Ap, "rz": rz, "rr": rr, "active": active,
               "iterations": iterations, "threshold_sq": threshold_sq}
    if inv_diag is not None:
        tensors["inv_diag"] = inv_diag
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"argument '{name}' must be a torch.Tensor, got {type(value).__name__}"
            )
    torch.ops.fastunlearn.cg_update_.default(
        x, r, p, Ap, inv_diag, rz, rr, active, iterations, threshold_sq
    )


@torch.library.register_fake("fastunlearn::cg_update_")
def _cg_update_fake(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    Ap: Tensor,
    inv_diag: Tensor | None,
    rz: Tensor,
    rr: Tensor,
    active: Tensor,
    iterations: Tensor,
    threshold_sq: Tensor,
) -> None:
    # Repeats the kernel's checks so torch.compile fails at trace time, not at run time.
    check_fake_devices("cg_update_", (
        ("x", x), ("r", r), ("p", p), ("Ap", Ap), ("inv_diag", inv_diag), ("rz", rz),
        ("rr", rr), ("active", active), ("iterations", iterations),
        ("threshold_sq", threshold_sq)))  # fmt: skip
    torch._check_value(x.dim() == 2, lambda: f"cg_update_: argument 'x' must be 2-D, got {x.shape}")
    torch._check_type(
        x.dtype in (torch.float32, torch.float64),
        lambda: f"cg_update_: argument 'x' must be float32 or float64, got {x.dtype}",
    )
    for name, t, dtype in (
        ("r", r, x.dtype),
        ("p", p, x.dtype),
        ("Ap", Ap, x.dtype),
        ("inv_diag", inv_diag, x.dtype),
        ("rz", rz, x.dtype),
        ("rr", rr, x.dtype),
        ("threshold_sq", threshold_sq, x.dtype),
        ("active", active, torch.bool),
        ("iterations", iterations, torch.int64),
    ):

        def of_dtype(n: str = name, t: Tensor | None = t, want: torch.dtype = dtype) -> str:
            got = t.dtype if t is not None else None
            return f"cg_update_: argument '{n}' must have dtype {want}, got {got}"

        torch._check_type(t is None or t.dtype == dtype, of_dtype)
    for name, t in (("r", r), ("p", p), ("Ap", Ap)):

        def like_x(n: str = name, t: Tensor = t) -> str:
            return (
                f"cg_update_: argument '{n}' has shape {tuple(t.shape)}, expected {tuple(x.shape)}"
            )

        torch._check_value(t.shape == x.shape, like_x)
    if inv_diag is not None:
        torch._check_value(
            inv_diag.dim() == 2
            and inv_diag.shape[0] == x.shape[0]
            and inv_diag.shape[1] in (x.shape[1], 1),
            lambda: f"cg_update_: argument 'inv_diag' has shape {tuple(inv_diag.shape)}",
        )
    for name, t in (
        ("rz", rz),
        ("rr", rr),
        ("active", active),
        ("iterations", iterations),
        ("threshold_sq", threshold_sq),
    ):

        def per_column(n: str = name, t: Tensor = t) -> str:
            return (
                f"cg_update_: argument '{n}' has shape {tuple(t.shape)}, expected ({x.shape[1]},)"
            )

        torch._check_value(t.dim() == 1 and t.shape[0] == x.shape[1], per_column)
    return None
