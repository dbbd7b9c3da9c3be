"""The end of one CG step of the certified removal step, fused (internal).

:func:`certified_cg_tail_` does in one operator call what the fixed-shape removal step
(:mod:`fastunlearn.certified.fixed_step`) otherwise writes as ~25 small tensor operations
after each product with the Hessian: the step length along the direction ``P``, the
updates of the step ``V``, its margins ``XV`` and ``HV``, the residual ``R = Delta - HV``,
and the two sums the removal loop tests (solve residual and data-dependent bound). On a GPU
those operations are ~2 us kernels each inside the captured graphs; the CUDA kernel makes
them three launches. Everything is float64; :func:`fastunlearn.ops.reference.certified_cg_tail_`
is the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices_of, check_fake_shapes

__all__ = ["certified_cg_tail_"]


def certified_cg_tail_(
    V: Tensor,
    XV: Tensor,
    HV: Tensor,
    R: Tensor,
    out: Tensor,
    P: Tensor,
    XP: Tensor,
    HP: Tensor,
    rz: Tensor,
    needed: Tensor | None,
    A: Tensor,
    Delta: Tensor,
    spectral: Tensor,
    bound_scale: float,
    first: bool,
) -> None:
    """Take the CG step along ``P`` and compute its residual and bound, in place.

    With ``curvature_k = P_k . HP_k``::

        first:  alpha_k = rz_k / curvature_k if curvature_k > 0 else 1
                V = alpha P;  XV = alpha XP;  HV = alpha HP
        else:   alpha_k = rz_k / curvature_k if curvature_k > 0 and needed else 0
                V += alpha P;  XV += alpha XP;  HV += alpha HP
        R = Delta - HV
        out[0] = sum_k ||R_k||
        out[1] = sum_k bound_scale * spectral_k * ||V_k|| * sqrt(sum_i A[i, k] XV[i, k]^2)

    Args:
        V (Tensor[d, K]): the step; written.
        XV (Tensor[n, K]): the step's margins ``X V``; written.
        HV (Tensor[d, K]): ``H V``; written.
        R (Tensor[d, K]): the residual ``Delta - H V``; written.
        out (Tensor[m >= 2]): ``out[0]``, ``out[1]`` written, the rest untouched.
        P (Tensor[d, K]): the direction.
        XP (Tensor[n, K]): ``X P``.
        HP (Tensor[d, K]): ``H P``.
        rz (Tensor[K]): ``r . z`` of the direction (``Delta . P`` for the first step).
        needed (Tensor, bool, one element, optional): take the step only where true (the
            device's own test of whether an iteration is needed); ignored when ``first``.
        A (Tensor[n, K]): the rows' class weights after the removal.
        Delta (Tensor[d, K]): the right-hand side.
        spectral (Tensor[K]): upper bounds of ``||X_rem,k||_2``.
        bound_scale: ``gamma * max(1, largest row norm)``.
        first: the first step from zero (else an iteration that advances the step).

    Raises:
        TypeError: a tensor that is not float64 (``needed``: not bool).
        ValueError: a shape, device or layout that does not match (the message names the
            argument).

    """
    torch.ops.fastunlearn.certified_cg_tail_.default(
        V, XV, HV, R, out, P, XP, HP, rz, needed, A, Delta, spectral, float(bound_scale),
        bool(first),
    )  # fmt: skip


@torch.library.register_fake("fastunlearn::certified_cg_tail_")
def _certified_cg_tail_fake(*args: object) -> None:
    check_fake_devices_of("certified_cg_tail_", args)
    # the kernels' shape checks, so that torch.compile fails at trace time; the arguments
    # are those of certified_cg_tail_, in order
    V, XV, HV, R, _out, P, XP, HP, _rz, _needed, A, Delta = args[:12]
    assert isinstance(V, Tensor) and isinstance(XV, Tensor)
    torch._check_value(
        V.dim() == 2 and XV.dim() == 2, lambda: "certified_cg_tail_: V, XV must be 2-D"
    )
    check_fake_shapes("certified_cg_tail_", [
        ("HV", HV, V.shape), ("R", R, V.shape), ("P", P, V.shape), ("HP", HP, V.shape),
        ("Delta", Delta, V.shape), ("XP", XP, XV.shape), ("A", A, XV.shape)])  # fmt: skip
    return None
