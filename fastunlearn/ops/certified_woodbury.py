"""The removed row's Woodbury column of the certified removal step, fused (internal).

:func:`certified_woodbury_row_` does in one operator call what the fixed-shape removal step
(:mod:`fastunlearn.certified.fixed_step`) otherwise writes as ~19 small operations once the
row's column ``U_new``, its solve ``G_new = M^{-1} U_new`` and ``L21 = C^{-1} (-U^T
G_new)`` are known: the new diagonal entry of the Woodbury factor and the check that it is
positive, the factor's new row, the new row of its explicit inverse (the GPU keeps
``C^{-1}``), and the column's copies into ``U`` and ``G``. On a GPU those operations are
~2 us kernels each inside the captured graphs; the CUDA kernel makes them one launch.
Everything is float64 (``slot`` int64); :func:`fastunlearn.ops.reference.
certified_woodbury_row_` is the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices_of, check_fake_shapes

__all__ = ["certified_woodbury_row_"]


def certified_woodbury_row_(
    U_buf: Tensor,
    G_buf: Tensor,
    C_buf: Tensor,
    C_inv: Tensor,
    out: Tensor,
    U_new: Tensor,
    G_new: Tensor,
    L21: Tensor,
    slot: Tensor,
) -> None:
    """Write the row's Woodbury column into slot ``t = slot`` and check the factor, in place.

    Per class ``k``, with ``e_t`` the ``t``-th unit vector::

        S22_k          = 1 - U_new_k . G_new_k - L21_k . L21_k
        out[2]         = 1.0 if every S22_k > 0 else 0.0
        L22_k          = sqrt(max(S22_k, tiny))
        C_inv[k, t, :] = (e_t - L21_k^T C_inv[k]) / L22_k   (C_inv before the write)
        C_buf[k, t, :] = L21_k^T + L22_k e_t
        U_buf[k, :, t] = U_new_k;  G_buf[k, :, t] = G_new_k

    Args:
        U_buf (Tensor[K, d, T]): the Woodbury columns; column ``t`` written.
        G_buf (Tensor[K, d, T]): their solves with the factors; column ``t`` written.
        C_buf (Tensor[K, T, T]): the Woodbury factor (lower triangular); row ``t`` written.
        C_inv (Tensor[K, T, T]): its inverse; row ``t`` written.
        out (Tensor[m >= 3]): ``out[2]`` written, the rest untouched.
        U_new (Tensor[K, d, 1]): the row's column.
        G_new (Tensor[K, d, 1]): ``M^{-1} U_new``.
        L21 (Tensor[K, T, 1]): ``C^{-1} (-U^T G_new)``, zero at and past ``t``.
        slot (Tensor, int64, one element): the slot ``t``.

    Raises:
        TypeError: a tensor of the wrong dtype.
        ValueError: a shape, device or layout that does not match, or (CPU) a slot out of
            range (the message names the argument). On CUDA the device cannot raise: a slot
            out of range writes nothing and sets ``out[2] = 0``, so the row is refused.

    """
    torch.ops.fastunlearn.certified_woodbury_row_.default(
        U_buf, G_buf, C_buf, C_inv, out, U_new, G_new, L21, slot
    )


@torch.library.register_fake("fastunlearn::certified_woodbury_row_")
def _certified_woodbury_row_fake(*args: object) -> None:
    check_fake_devices_of("certified_woodbury_row_", args)
    # the kernels' shape checks, so that torch.compile fails at trace time; the arguments
    # are those of certified_woodbury_row_, in order
    U_buf, G_buf, C_buf, C_inv, _out, U_new, G_new, L21 = args[:8]
    assert isinstance(U_buf, Tensor)
    torch._check_value(U_buf.dim() == 3, lambda: "certified_woodbury_row_: U_buf must be 3-D")
    K, d, T = U_buf.shape
    check_fake_shapes("certified_woodbury_row_", [
        ("G_buf", G_buf, (K, d, T)), ("C_buf", C_buf, (K, T, T)), ("C_inv", C_inv, (K, T, T)),
        ("U_new", U_new, (K, d, 1)), ("G_new", G_new, (K, d, 1)),
        ("L21", L21, (K, T, 1))])  # fmt: skip
    return None
