"""Per-sample gradients of linear-like layers from activations and output gradients.

A linear-like layer maps activations ``A[B, T, in]`` to outputs ``Y[B, T, out]`` with a
weight ``W[out, in]`` (and optionally a bias ``[out]``): ``T = 1`` for ``nn.Linear``, the
spatial positions of an unfolded ``nn.Conv2d``, or the tokens of a sequence. Given the
gradients ``G[B, T, out]`` of the loss with respect to the outputs, the gradient of sample
``b`` is::

    weight: g_b = sum_t G[b, t]^T A[b, t]   -> [out, in]
    bias:   h_b = sum_t G[b, t]             -> [out]

The functions here compute ``g_b`` itself, its squared norm, its dot product with a
parameter-shaped tensor, and weighted sums ``sum_b w_b g_b`` -- the last three without
materialising the ``B`` per-sample gradients. 2-D inputs ``A[B, in]``, ``G[B, out]`` are
taken as ``T = 1``.

Every op has a fake kernel (so ``torch.compile`` traces it) and an autograd formula with
respect to all its tensor inputs.
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import Tensor

from .. import _extension  # noqa: F401  (loads the compiled library)
from .._numbers import as_float, is_flag, is_real

__all__ = [
    "per_sample_grad",
    "per_sample_sq_norm",
    "per_sample_dot",
    "per_sample_weighted_sum",
    "clip_weights",
    "CLIP_EPS",
]

#: Added to the gradient norm in :func:`clip_weights` so that a zero gradient gets the
#: finite factor ``max_norm / CLIP_EPS`` (then capped at 1) instead of a division by zero.
#: Same convention as Opacus' clipping factor ``max_norm / (norm + 1e-6)``.
CLIP_EPS = 1e-6

_ops = torch.ops.fastunlearn


# --------------------------------------------------------------------------------------
# Python-level argument handling
# --------------------------------------------------------------------------------------


def _as_3d(A: Tensor, G: Tensor, fn: str) -> tuple[Tensor, Tensor]:
    """Check the Python-level types and ranks of A, G and add ``T = 1`` to 2-D inputs."""
    for name, t in (("A", A), ("G", G)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(t)}")
        if t.dim() not in (2, 3):
            raise ValueError(
                f"{fn}: argument '{name}' must be 2-D [B, features] or 3-D [B, T, features], "
                f"got shape {tuple(t.shape)}"
            )
    if A.dim() != G.dim():
        raise ValueError(
            f"{fn}: arguments 'A' (shape {tuple(A.shape)}) and 'G' (shape {tuple(G.shape)}) "
            "must both be 2-D or both be 3-D"
        )
    if A.dim() == 2:
        return A.unsqueeze(1), G.unsqueeze(1)
    return A, G


def _check_tensor(t: object, name: str, fn: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(t)}")


def _check_bias_flag(bias: object, fn: str) -> bool:
    """Return ``bias`` as a Python bool: a flag, a bool or np.bool_.

    A tensor or None here is almost surely a misplaced vector.
    """
    if not is_flag(bias):
        raise TypeError(f"{fn}: argument 'bias' must be a bool, got {type(bias).__name__}")
    return bool(bias)


# --------------------------------------------------------------------------------------
# Public wrappers
# --------------------------------------------------------------------------------------


@overload
def per_sample_grad(A: Tensor, G: Tensor, *, bias: Literal[False] = ...) -> Tensor: ...


@overload
def per_sample_grad(A: Tensor, G: Tensor, *, bias: Literal[True]) -> tuple[Tensor, Tensor]: ...


def per_sample_grad(A: Tensor, G: Tensor, *, bias: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Materialised per-sample gradients of a linear-like layer.

    Args:
        A (Tensor[B, T, in] or Tensor[B, in]): layer inputs (activations).
        G (Tensor[B, T, out] or Tensor[B, out]): gradients of the loss w.r.t. the layer
            outputs; same dtype (float32/float64) and device as ``A``.
        bias: also return the per-sample bias gradients.

    Returns:
        Tensor[B, out, in]: ``out[b] = sum_t G[b, t]^T A[b, t]``; with ``bias=True`` the
        tuple ``(weight [B, out, in], bias [B, out])``.

    Raises:
        TypeError: ``A`` or ``G`` is not a tensor, their dtypes are not float or differ, or
            ``bias`` is not a bool.
        ValueError: ``A`` or ``G`` is neither 2-D nor 3-D, one is 2-D and the other 3-D, or
            their shapes or devices do not match.

    """
    bias = _check_bias_flag(bias, "per_sample_grad")
    A3, G3 = _as_3d(A, G, "per_sample_grad")
    weight = _ops.per_sample_grad.default(A3, G3)
    if bias:
        return weight, G3.sum(1)
    return weight


def per_sample_sq_norm(A: Tensor, G: Tensor, *, bias: bool = False) -> Tensor:
    """Squared Frobenius norms of the per-sample gradients, without materialising them.

    ``T = 1`` uses the ghost norm ``||a_b||^2 ||g_b||^2``; ``T > 1`` uses whichever is
    cheaper of the Gram form ``<A_b A_b^T, G_b G_b^T>_F`` and chunked materialisation.
    The final sums of products accumulate in float64; for ``T > 1`` the Gram matrices (or
    the materialised gradients) before them are batched matrix products in ``A``'s dtype.

    Args:
        A (Tensor[B, T, in] or Tensor[B, in]): layer inputs.
        G (Tensor[B, T, out] or Tensor[B, out]): output gradients (same dtype/device).
        bias: add the squared norm ``||sum_t G[b, t]||^2`` of the bias gradient.

    Returns:
        Tensor[B]: ``||g_b||_F^2`` (+ ``||h_b||^2`` with ``bias=True``) in ``A``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`per_sample_grad`.

    """
    bias = _check_bias_flag(bias, "per_sample_sq_norm")
    A3, G3 = _as_3d(A, G, "per_sample_sq_norm")
    return _ops.per_sample_sq_norm.default(A3, G3, bias)


def per_sample_dot(A: Tensor, G: Tensor, W: Tensor, bias: Tensor | None = None) -> Tensor:
    """Dot products ``<g_b, W> (+ <h_b, bias>)`` of every per-sample gradient with one vector.

    Computed as one GEMM ``A W^T (+ bias)`` and a fused per-sample product-sum with ``G``.

    Args:
        A (Tensor[B, T, in] or Tensor[B, in]): layer inputs.
        G (Tensor[B, T, out] or Tensor[B, out]): output gradients (same dtype/device).
        W (Tensor[out, in]): weight-shaped vector.
        bias (Tensor[out], optional): bias-shaped vector.

    Returns:
        Tensor[B]: ``sum_t <G[b, t], W A[b, t] + bias>``.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: ``A``/``G`` ranks as in :func:`per_sample_grad`.
        TypeError: a dtype does not match.
        ValueError: a shape or device does not match.

    """
    A3, G3 = _as_3d(A, G, "per_sample_dot")
    _check_tensor(W, "W", "per_sample_dot")
    if bias is not None:
        _check_tensor(bias, "bias", "per_sample_dot")
    return _ops.per_sample_dot.default(A3, G3, W, bias)


@overload
def per_sample_weighted_sum(
    A: Tensor, G: Tensor, w: Tensor, *, bias: Literal[False] = ...
) -> Tensor: ...


@overload
def per_sample_weighted_sum(
    A: Tensor, G: Tensor, w: Tensor, *, bias: Literal[True]
) -> tuple[Tensor, Tensor]: ...


def per_sample_weighted_sum(
    A: Tensor, G: Tensor, w: Tensor, *, bias: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Weighted sum ``sum_b w_b g_b`` of the per-sample gradients as one GEMM.

    With ``w = clip_weights(per_sample_sq_norm(A, G), C)`` this is the clipped gradient
    sum of DP-SGD.

    Args:
        A (Tensor[B, T, in] or Tensor[B, in]): layer inputs.
        G (Tensor[B, T, out] or Tensor[B, out]): output gradients (same dtype/device).
        w (Tensor[B]): per-sample weights.
        bias: also return the weighted sum ``sum_b w_b h_b`` of the bias gradients.

    Returns:
        Tensor[out, in]; with ``bias=True`` the tuple ``(weight [out, in], bias [out])``.

    Raises:
        TypeError: an argument is not a tensor.
        ValueError: ``A``/``G`` ranks as in :func:`per_sample_grad`.
        TypeError: a dtype does not match.
        ValueError: a shape or device does not match.

    """
    bias = _check_bias_flag(bias, "per_sample_weighted_sum")
    A3, G3 = _as_3d(A, G, "per_sample_weighted_sum")
    _check_tensor(w, "w", "per_sample_weighted_sum")
    weight = _ops.per_sample_weighted_sum.default(A3, G3, w)
    if bias:
        return weight, w @ G3.sum(1)
    return weight


def clip_weights(sq_norms: Tensor, max_norm: float) -> Tensor:
    """DP-SGD clipping factors ``min(1, max_norm / (sqrt(sq_norms) + CLIP_EPS))``.

    ``CLIP_EPS = 1e-6`` keeps zero-norm samples finite (factor 1). Multiplying sample
    ``b``'s gradient by the factor brings its norm to at most ``max_norm``.

    Args:
        sq_norms (Tensor[B]): squared per-sample gradient norms (e.g. summed over layers of
            :func:`per_sample_sq_norm`), non-negative.
        max_norm: clipping threshold C, finite and > 0.

    Returns:
        Tensor[B]: factors in ``(0, 1]``, same dtype and device as ``sq_norms``.

    Raises:
        TypeError: ``sq_norms`` is not a tensor, or ``max_norm`` not a real number (a bool,
            a string or a tensor is not).
        ValueError: ``max_norm`` is not finite and > 0.

    """
    _check_tensor(sq_norms, "sq_norms", "clip_weights")
    if not is_real(max_norm):  # Python or NumPy real, not a bool, a string or a tensor
        raise TypeError(
            f"clip_weights: argument 'max_norm' must be a real number, "
            f"got {type(max_norm).__name__}"
        )
    max_norm = as_float(max_norm)  # an int beyond the float range: inf, refused below
    if not (math.isfinite(max_norm) and max_norm > 0.0):
        raise ValueError(
            f"clip_weights: argument 'max_norm' must be finite and > 0, got {max_norm}"
        )
    # clamp_min(0) guards against tiny negative round-off in norms computed by cancellation
    norms = sq_norms.clamp_min(0).sqrt()
    return (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)


# --------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes and preconditions only, so torch.compile can trace the ops.
# --------------------------------------------------------------------------------------


def _fake_check_pair(A: Tensor, G: Tensor, op: str) -> None:
    torch._check_value(A.dim() == 3, lambda: f"{op}: argument 'A' must be 3-D, got {A.dim()}-D")
    torch._check_value(G.dim() == 3, lambda: f"{op}: argument 'G' must be 3-D, got {G.dim()}-D")
    torch._check_type(
        A.dtype in (torch.float32, torch.float64),
        lambda: f"{op}: argument 'A' must be float32 or float64, got {A.dtype}",
    )
    torch._check_type(
        A.dtype == G.dtype, lambda: f"{op}: arguments 'A' and 'G' must have one dtype"
    )
    torch._check_value(A.device == G.device, lambda: f"{op}: 'A' and 'G' must be on one device")
    torch._check_value(
        A.shape[0] == G.shape[0], lambda: f"{op}: argument 'G' has the wrong batch size"
    )
    torch._check_value(
        A.shape[1] == G.shape[1], lambda: f"{op}: argument 'G' has the wrong length T"
    )


def _fake_check_like(t: Tensor, A: Tensor, shape: tuple, name: str, op: str) -> None:
    torch._check_value(t.dim() == len(shape), lambda: f"{op}: argument '{name}' has the wrong rank")
    for axis, size in enumerate(shape):
        torch._check_value(
            t.shape[axis] == size, lambda: f"{op}: argument '{name}' has a wrong shape"
        )
    torch._check_type(t.dtype == A.dtype, lambda: f"{op}: argument '{name}' has the wrong dtype")
    torch._check_value(
        t.device == A.device, lambda: f"{op}: argument '{name}' is on the wrong device"
    )


@torch.library.register_fake("fastunlearn::per_sample_grad")
def _(A: Tensor, G: Tensor) -> Tensor:
    _fake_check_pair(A, G, "per_sample_grad")
    return A.new_empty((A.shape[0], G.shape[2], A.shape[2]))


@torch.library.register_fake("fastunlearn::per_sample_sq_norm")
def _(A: Tensor, G: Tensor, bias: bool) -> Tensor:
    _fake_check_pair(A, G, "per_sample_sq_norm")
    return A.new_empty((A.shape[0],))


@torch.library.register_fake("fastunlearn::per_sample_dot")
def _(A: Tensor, G: Tensor, W: Tensor, bias: Tensor | None) -> Tensor:
    _fake_check_pair(A, G, "per_sample_dot")
    _fake_check_like(W, A, (G.shape[2], A.shape[2]), "W", "per_sample_dot")
    if bias is not None:
        _fake_check_like(bias, A, (G.shape[2],), "bias", "per_sample_dot")
    return A.new_empty((A.shape[0],))


@torch.library.register_fake("fastunlearn::per_sample_weighted_sum")
def _(A: Tensor, G: Tensor, w: Tensor) -> Tensor:
    _fake_check_pair(A, G, "per_sample_weighted_sum")
    _fake_check_like(w, A, (A.shape[0],), "w", "per_sample_weighted_sum")
    return A.new_empty((G.shape[2], A.shape[2]))


# --------------------------------------------------------------------------------------
# Autograd. Backward formulas reuse the ops where they fit so they stay traceable; they
# are written for clarity, not speed. With P_b = G_b^T A_b (the per-sample gradient):
#   per_sample_grad:         dA_b = G_b dP_b,               dG_b = A_b dP_b^T
#   per_sample_sq_norm:      dA_b = 2 s_b G_b P_b,          dG_b = 2 s_b (A_b P_b^T + 1 h_b^T)
#   per_sample_dot:          dA_b = s_b G_b W,              dG_b = s_b (A_b W^T + 1 bias^T),
#                            dW = sum_b s_b P_b,            dbias = sum_b s_b h_b
#   per_sample_weighted_sum: dA_b = w_b G_b dS,             dG_b = w_b A_b dS^T,
#                            dw_b = <P_b, dS>
# where s / dP / dS is the incoming gradient and h_b = sum_t G[b, t].
# --------------------------------------------------------------------------------------


def _setup_pair(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])


def _setup_sq_norm(ctx, inputs, output) -> None:
    A, G, bias = inputs
    ctx.save_for_backward(A, G)
    ctx.bias = bias


def _setup_with_third(ctx, inputs, output) -> None:
    # per_sample_dot (A, G, W, bias) and per_sample_weighted_sum (A, G, w)
    ctx.save_for_backward(*inputs)


def _grad_backward(ctx, dP: Tensor) -> tuple[Tensor | None, Tensor | None]:
    A, G = ctx.saved_tensors
    dA = torch.bmm(G, dP) if ctx.needs_input_grad[0] else None
    dG = torch.bmm(A, dP.transpose(1, 2)) if ctx.needs_input_grad[1] else None
    return dA, dG


def _prefers_gram(T: int, n_in: int, n_out: int) -> bool:
    """Whether ``per_sample_sq_norm`` takes the Gram form (csrc/per_sample_common.h rule).

    Multiply-adds per sample: Gram form ``T^2 (in + out + 1)`` against materialising
    ``in out (T + 1)``; ties go to the Gram form. ``T = 1`` always uses the ghost norm.
    """
    return T * T * (n_in + n_out + 1) <= n_in * n_out * (T + 1)


def _sq_norm_backward(ctx, s: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
    A, G = ctx.saved_tensors
    bias = ctx.bias
    T, n_in, n_out = A.shape[1], A.shape[2], G.shape[2]
    s2 = (2 * s).view(-1, 1, 1)
    dA = dG = None
    if _prefers_gram(T, n_in, n_out):
        # Gram form: G_b P_b = (G_b G_b^T) A_b and A_b P_b^T = (A_b A_b^T) G_b; [B, T, T]
        if ctx.needs_input_grad[0]:
            dA = s2 * torch.bmm(torch.bmm(G, G.transpose(1, 2)), A)
        if ctx.needs_input_grad[1]:
            dG = s2 * torch.bmm(torch.bmm(A, A.transpose(1, 2)), G)
    else:
        P = _ops.per_sample_grad.default(A, G)
        if ctx.needs_input_grad[0]:
            dA = s2 * torch.bmm(G, P)
        if ctx.needs_input_grad[1]:
            dG = s2 * torch.bmm(A, P.transpose(1, 2))
    if bias and dG is not None:
        dG = dG + s2 * G.sum(1, keepdim=True)
    return dA, dG, None


def _dot_backward(ctx, s: Tensor) -> tuple[Tensor | None, ...]:
    A, G, W, bias = ctx.saved_tensors
    sv = s.view(-1, 1, 1)
    dA = sv * torch.matmul(G, W) if ctx.needs_input_grad[0] else None
    dG = None
    if ctx.needs_input_grad[1]:
        Y = torch.matmul(A, W.transpose(0, 1))
        dG = sv * (Y if bias is None else Y + bias)
    dW = _ops.per_sample_weighted_sum.default(A, G, s) if ctx.needs_input_grad[2] else None
    dbias = None
    if bias is not None and ctx.needs_input_grad[3]:
        dbias = s @ G.sum(1)
    return dA, dG, dW, dbias


def _weighted_sum_backward(ctx, dS: Tensor) -> tuple[Tensor | None, ...]:
    A, G, w = ctx.saved_tensors
    wv = w.view(-1, 1, 1)
    dA = wv * torch.matmul(G, dS) if ctx.needs_input_grad[0] else None
    dG = wv * torch.matmul(A, dS.transpose(0, 1)) if ctx.needs_input_grad[1] else None
    dw = _ops.per_sample_dot.default(A, G, dS, None) if ctx.needs_input_grad[2] else None
    return dA, dG, dw


torch.library.register_autograd(
    "fastunlearn::per_sample_grad", _grad_backward, setup_context=_setup_pair
)
torch.library.register_autograd(
    "fastunlearn::per_sample_sq_norm", _sq_norm_backward, setup_context=_setup_sq_norm
)
torch.library.register_autograd(
    "fastunlearn::per_sample_dot", _dot_backward, setup_context=_setup_with_third
)
torch.library.register_autograd(
    "fastunlearn::per_sample_weighted_sum",
    _weighted_sum_backward,
    setup_context=_setup_with_third,
)
