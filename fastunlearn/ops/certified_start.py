"""The removed row's quantities of the certified removal step, fused (internal).

:func:`certified_start_` does in one operator call what the fixed-shape removal step
(:mod:`fastunlearn.certified.fixed_step`) otherwise writes as ~30 small tensor operations
before the row's Woodbury extension: the row's class weights, the right-hand side
``Delta`` (the removed row's loss gradient plus the regularisation it carried), the class
weights and curvature weights after the removal, the per-class regularisation and the
spectral bounds of the remaining data. On a GPU those operations are ~2 us kernels each
inside the captured graphs; the CUDA kernel makes them three launches. Everything is
float64 (``row`` int64); :func:`fastunlearn.ops.reference.certified_start_` is the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices_of, check_fake_shapes

__all__ = ["certified_start_"]


def certified_start_(
    row_weights: Tensor,
    Delta: Tensor,
    A_after: Tensor,
    S: Tensor,
    lam_k: Tensor,
    spectral: Tensor,
    X: Tensor,
    Y: Tensor,
    Z: Tensor,
    A: Tensor,
    W: Tensor,
    row: Tensor,
    n_rem: Tensor,
    eig: Tensor,
    row_sq: Tensor,
    lam: float,
) -> None:
    """Compute what removing ``row`` needs before its Woodbury extension, in place.

    With ``a = A[row]`` and ``l'(z, y) = -y sigma(-y z)``::

        row_weights = a
        Delta       = X[row]^T (a * l'(Z[row], Y[row])) + lam * a * W
        A_after     = A, with row ``row`` zeroed
        S           = A_after * sigma(Z) * sigma(-Z)
        lam_k       = (n_rem - a) * lam
        spectral    = sqrt(max(min(eig, row_sq @ A_after), 0))

    Args:
        row_weights (Tensor[K] or [1, K]): written.
        Delta (Tensor[d, K]): written.
        A_after (Tensor[n, K]): written.
        S (Tensor[n, K]): written.
        lam_k (Tensor[K]): written.
        spectral (Tensor[K]): written.
        X (Tensor[n, d]): the features.
        Y (Tensor[n, K]): +/-1 labels per class.
        Z (Tensor[n, K]): the margins ``X W``.
        A (Tensor[n, K]): the rows' class weights before the removal.
        W (Tensor[d, K]): the weights.
        row (Tensor, int64, one element): the removed row.
        n_rem (Tensor[K]): the weighted row counts before the removal.
        eig (Tensor[1] or [K]): cached upper bounds of ``||X_rem||_2^2``.
        row_sq (Tensor[n]): squared row norms.
        lam: the L2 regularisation, >= 0.

    Raises:
        TypeError: a tensor of the wrong dtype.
        ValueError: a shape, device or layout that does not match, or (CPU) a row out of
            range (the message names the argument). On CUDA the device cannot raise: a row
            out of range zeroes no row and makes ``Delta``, ``row_weights`` and ``lam_k``
            NaN, so a step planned from them fails the removal's tests.

    """
    torch.ops.fastunlearn.certified_start_.default(
        row_weights, Delta, A_after, S, lam_k, spectral, X, Y, Z, A, W, row, n_rem, eig,
        row_sq, float(lam),
    )  # fmt: skip


@torch.library.register_fake("fastunlearn::certified_start_")
def _certified_start_fake(*args: object) -> None:
    check_fake_devices_of("certified_start_", args)
    # the kernels' shape checks, so that torch.compile fails at trace time; the arguments
    # are those of certified_start_, in order
    Delta, A_after, S = args[1], args[2], args[3]
    X, Y, Z, A, W = args[6], args[7], args[8], args[9], args[10]
    assert isinstance(X, Tensor) and isinstance(W, Tensor)
    torch._check_value(X.dim() == 2 and W.dim() == 2, lambda: "certified_start_: X, W must be 2-D")
    n, K = X.shape[0], W.shape[1]
    check_fake_shapes("certified_start_", [
        ("Delta", Delta, W.shape), ("A_after", A_after, (n, K)), ("S", S, (n, K)),
        ("Y", Y, (n, K)), ("Z", Z, (n, K)), ("A", A, (n, K))])  # fmt: skip
    return None
