"""Dense routes for small problems: Cholesky solves and explicit network Hessians."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .network import (
    LossFn,
    ParamSpec,
    _check_data,
    _check_eval_mode,
    _check_no_renorm,
    _functional_loss,
    flatten_params,
    selected_parameter_names,
    unflatten_like,
)
from .operators import _check_float_tensor
from .rnn_kernels import differentiable_rnn_kernels

__all__ = ["cholesky_solve", "dense_hessian"]


def cholesky_solve(H: Tensor, B: Tensor) -> Tensor:
    """Solve ``H X = B`` for symmetric positive definite ``H`` by Cholesky factorisation.

    Only the lower triangle of ``H`` is read. Batched over leading dimensions.

    Args:
        H: Tensor[..., d, d], symmetric positive definite.
        B: Tensor[..., d] (one right-hand side per matrix) or Tensor[..., d, K]; leading
            dimensions broadcast against those of ``H``.

    Returns:
        The solution, shaped like ``B`` (after broadcasting).

    Raises:
        TypeError: non-floating tensors, dtypes other than float32/float64, or mismatched
            dtypes.
        ValueError: bad shapes (also leading dimensions that do not broadcast), mixed
            devices, non-finite ``H`` or ``B``, or ``H`` not positive definite (numerically).

    """
    H = _check_float_tensor("H", H)
    B = _check_float_tensor("B", B)
    if H.ndim < 2 or H.shape[-1] != H.shape[-2]:
        raise ValueError(f"'H' must have shape [..., d, d], got {list(H.shape)}")
    if H.dtype not in (torch.float32, torch.float64):  # those of the Cholesky kernels
        raise TypeError(f"'H' must be float32 or float64, got {H.dtype}")
    if B.dtype != H.dtype:
        raise TypeError(f"'B' must have the dtype of 'H' ({H.dtype}), got {B.dtype}")
    if B.device != H.device:
        raise ValueError(f"'B' must be on the device of 'H' ({H.device}), got {B.device}")
    d = H.shape[-1]
    # The rank of B decides: one fewer dimension than H means one vector per matrix.
    vector = B.ndim == H.ndim - 1
    rows = B.shape[-1] if vector else (B.shape[-2] if B.ndim >= 2 else None)
    if rows != d:
        raise ValueError(f"'B' must have shape [..., {d}] or [..., {d}, K], got {list(B.shape)}")
    batch_B = B.shape[:-1] if vector else B.shape[:-2]
    try:
        torch.broadcast_shapes(H.shape[:-2], batch_B)
    except RuntimeError:
        raise ValueError(f"'B' must have leading dimensions that broadcast against those of "
                         f"'H' {list(H.shape[:-2])}, got {list(B.shape)}") from None
    for name, t in (("H", H), ("B", B)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"'{name}' must be finite (it holds NaN or infinity)")
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()):
        raise ValueError("'H' is not positive definite (Cholesky factorisation failed)")
    Bm = B.unsqueeze(-1) if vector else B
    X = torch.cholesky_solve(Bm, L)
    return X.squeeze(-1) if vector else X


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Any,
    params: ParamSpec = None,
) -> Tensor:
    """Explicit Hessian of ``loss_fn(model(inputs), targets)`` w.r.t. selected parameters.

    Uses reverse-over-reverse differentiation (``torch.autograd.functional.hessian``; not
    ``torch.func.hessian``, which is wrong through affine ``nn.LayerNorm`` in torch 2.14) on
    the flattened parameter vector (the order of
    :class:`~fastunlearn.linalg.NetworkHessianOperator`); memory is O(P^2), so small models
    only. Non-selected parameters and buffers are held fixed.

    Args:
        model: The network.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inputs: Tensor[n, ...].
        targets: Tensor[n, ...].
        params: Selection as in :func:`~fastunlearn.linalg.selected_parameter_names`.

    Returns:
        Tensor[P, P].

    Raises:
        TypeError: If ``loss_fn`` is not callable, or as for
            :class:`~fastunlearn.linalg.NetworkHessianOperator`.
        ValueError: As for :class:`~fastunlearn.linalg.NetworkHessianOperator` (including a
            model with dropout/RReLU/batch-norm layers in training mode).

    """
    names = selected_parameter_names(model, params)
    if not callable(loss_fn):
        raise TypeError(f"'loss_fn' must be callable, got {type(loss_fn).__name__}")
    _check_data(inputs, targets)
    _check_eval_mode(model)
    _check_no_renorm(model)
    named = dict(model.named_parameters())
    primals = [named[n].detach() for n in names]
    loss = _functional_loss(model, loss_fn, names)

    def flat_loss(flat: Tensor) -> Tensor:
        return loss(tuple(unflatten_like(flat, primals)), inputs, targets)

    # Reverse over reverse (double backward), not torch.func.hessian: in torch 2.14 the
    # latter (and jacrev(jacrev)) is wrong through an affine nn.LayerNorm (0.83 off on a
    # Hessian of size 1.6 against finite differences), while double backward agrees to 1e-10.
    # (an RNN runs on the native kernels: oneDNN's LSTM has only a slow fallback here)
    with differentiable_rnn_kernels(model):
        H = torch.autograd.functional.hessian(flat_loss, flatten_params(primals))
    return H.detach()
