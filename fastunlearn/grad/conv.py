"""Per-sample quantities of ``nn.Conv1d`` and ``nn.Conv2d`` weights, by convolutions or im2col.

Sample b's weight gradient is the cross-correlation of its (padded) input ``x_b`` with its
output gradient ``g_b``; the bias gradient is ``g_b`` summed over positions. With ``L``
output positions per sample (summed over the layer's calls), ``C`` input and ``O`` output
channels and a ``kh x kw`` kernel (``K = C kh kw``), two families of methods compute it:

- ``"unfold"``: the linear-layer view. The unfolded (im2col) input ``A[B, L, K]`` and
  ``G[B, L, O]`` feed the per-sample ops (:mod:`fastunlearn.ops.per_sample`). ``A`` is
  ``kh kw`` times the layer input, so it is built by strided copies in chunks of samples.
- ``"conv"``: the convolution view, never unfolded. Dots ``<g_b, (V, c)>`` are
  ``sum_pos g_b * conv(x_b, V, c)``: one ordinary forward convolution of the batch. Weighted
  sums ``sum_b w_b g_b`` are the ordinary weight gradient of the batch with ``x`` or ``g``
  (the smaller) scaled per sample: one ordinary backward convolution. Per-sample gradients
  (and from them squared norms) are the weight gradient of one convolution with the batch
  moved into the channels (``[1, B C, H, W]``) and ``B`` groups: sample b's channels only
  meet its own output gradient, so each group's weight gradient is that sample's.

Cost/memory model of ``strategy="auto"`` (per layer, per quantity), in multiply-adds per
sample; both families then run one kernel of the same work, so what differs is bytes and
kernel efficiency:

- dots and weighted sums: ``O K L`` either way; ``"unfold"`` also writes and reads ``A``
  (``K L`` per sample, ``kh kw`` times the input) where ``"conv"`` reads only ``x`` and
  ``g``. ``"conv"`` always.
- squared norms: the Gram form ``<A_b A_b^T, G_b G_b^T>`` costs ``L^2 (K + O + 1)`` against
  ``O K (L + 1)`` for materialising. When the Gram form is cheaper (few positions, wide
  layers; the same rule as ``per_sample_sq_norm``), ``"unfold"``: it is the only way to use
  it, and ``A`` is then at most about as large as the per-sample gradients.
- otherwise, and for materialised per-sample gradients, the ``O K L`` work is either one
  batched GEMM over ``A`` (``"unfold"``) or a grouped weight-gradient convolution
  (``"conv"``). The grouped convolution reduces over the ``L`` positions of each sample
  inside one group, and (measured on CPU with oneDNN) is only efficient when that
  reduction is long, ``L >= CONV_MIN_POSITIONS``, and each group has several input channels
  (``C >= CONV_MIN_CHANNELS``); shorter reductions or single-channel inputs go to the
  batched GEMM, whose extra bytes are then small next to its better kernel.

Memory: every temporary of one chunk (im2col columns, per-sample weight gradients) stays
below :func:`chunk_bytes`, the size of the layer's captured inputs and output gradients
(which a plain backward holds too) or :data:`CONV_MIN_CHUNK_BYTES`, whichever is larger.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ..ops.per_sample import (
    _prefers_gram,
    per_sample_dot,
    per_sample_grad,
    per_sample_sq_norm,
    per_sample_weighted_sum,
)
from .layers import CapturedLayer, LayerCall, LayerRule, register_rule

__all__ = [
    "ConvRule",
    "CONV_STRATEGIES",
    "CONV_MIN_POSITIONS",
    "CONV_MIN_CHANNELS",
    "CONV_MIN_CHUNK_BYTES",
    "chunk_bytes",
    "im2col",
]

#: ``"auto"`` (the cost model above), ``"unfold"`` or ``"conv"`` for every quantity.
CONV_STRATEGIES = ("auto", "unfold", "conv")

#: Output positions per sample from which the grouped weight-gradient convolution beats the
#: batched GEMM over the unfolded input for per-sample gradients and their norms.
CONV_MIN_POSITIONS = 128

#: Input channels per group from which the grouped weight-gradient convolution is used.
CONV_MIN_CHANNELS = 2

#: Lower bound of the per-chunk temporary budget (bytes).
CONV_MIN_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class _Call:
    """One call of the layer as a 2-D convolution (a 1-D one is a 1 x N image).

    Attributes:
        x: Input [B, C, H, W], already padded where the module pads it itself.
        g: Output gradient [B, O, Ho, Wo].
        padding: Zero padding the convolution still applies (0 when ``x`` was padded).
        kernel, stride, dilation: The module's, as pairs.

    """

    x: Tensor
    g: Tensor
    padding: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def positions(self) -> int:
        """Output positions per sample."""
        return self.g.shape[2] * self.g.shape[3]


def _as_2d(layer: CapturedLayer, call: LayerCall) -> _Call:
    module = layer.module
    one_d = isinstance(module, nn.Conv1d)
    dims = 3 if one_d else 4
    x = layer.batched(call.input(), min_dim=dims).detach()
    if x.dim() != dims:
        raise ValueError(
            f"model: layer '{layer.name}' got an input of shape {tuple(x.shape)}; expected "
            f"a batched {dims}-D input"
        )
    g = call.grad_output
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        # The same explicit padding the module applies (asymmetric for padding="same").
        pads = module._reversed_padding_repeated_twice
        if any(pads):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, pads, mode=mode)
        padding = (0,) * (dims - 2)
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if one_d:
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, dilation, padding = (
            (1, *kernel), (1, *stride), (1, *dilation), (0, *padding)
        )
    return _Call(x, g, tuple(padding), tuple(kernel), tuple(stride), tuple(dilation))


def im2col(x: Tensor, kernel: tuple[int, int], *, stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
           out_size: tuple[int, int] | None = None) -> Tensor:
    """Unfold the input of a 2-D convolution, as ``F.unfold`` does, by one strided copy.

    Args:
        x: Input [B, C, H, W] (any strides).
        kernel: Kernel size ``(kh, kw)``.
        stride: The convolution's stride.
        padding: Zero padding on each side, ``(rows, columns)``.
        dilation: The convolution's dilation.
        out_size: The output size ``(Ho, Wo)``; computed when None.

    Returns:
        [B, C kh kw, Ho Wo], rows in the ``(channel, kernel row, kernel column)`` order of
        ``weight.reshape(out, -1)``.

    """
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    B, C, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    if out_size is None:
        out_size = ((H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1)
    Ho, Wo = out_size
    sb, sc, sy, sx = x.stride()
    cols = x.as_strided(
        (B, C, kh, kw, Ho, Wo), (sb, sc, sy * dh, sx * dw, sy * sh, sx * sw), x.storage_offset()
    )
    return cols.reshape(B, C * kh * kw, Ho * Wo)


def chunk_bytes(calls: list[_Call]) -> int:
    """Temporary budget of one chunk: the captured inputs and output gradients, >= 4 MiB."""
    held = sum(c.x.numel() * c.x.element_size() + c.g.numel() * c.g.element_size()
               for c in calls)
    return max(CONV_MIN_CHUNK_BYTES, held)


def _chunks(B: int, bytes_per_sample: int, budget: int) -> Iterator[tuple[int, int]]:
    step = max(1, budget // max(1, bytes_per_sample))
    for start in range(0, B, step):
        yield start, min(B, start + step)


def _sum_positions(c: _Call) -> Tensor:
    return c.g.sum((2, 3))


def _row_sq_sum(P: Tensor) -> Tensor:
    """``||P[b]||^2`` for each b, without a P-sized temporary."""
    flat = P.reshape(P.shape[0], 1, -1)
    return torch.bmm(flat, flat.transpose(1, 2)).view(-1)


@register_rule(nn.Conv1d, nn.Conv2d)
class ConvRule(LayerRule):
    """``nn.Conv1d``/``nn.Conv2d`` with ``groups=1``, any padding mode, stride and dilation.

    Args:
        strategy: ``"auto"`` (the module docstring's cost model), or ``"unfold"`` / ``"conv"``
            for every quantity (tests, benchmarks).

    Raises:
        ValueError: ``strategy`` is not one of :data:`CONV_STRATEGIES`.

    """

    def __init__(self, strategy: str = "auto") -> None:
        if strategy not in CONV_STRATEGIES:
            raise ValueError(f"strategy: expected one of {CONV_STRATEGIES}, got {strategy!r}")
        self.strategy = strategy

    @override
    def supports(self, module: nn.Module) -> bool:
        return module.groups == 1

    # ---- choosing --------------------------------------------------------------------------

    def choose(self, layer: CapturedLayer, quantity: str) -> str:
        """``"unfold"`` or ``"conv"`` for ``quantity`` (sq_norm, dot, weighted_sum, per_sample).

        Grouped convolutions always take ``"conv"`` (the im2col view assumes one group).
        """
        module = layer.module
        if module.groups > 1:
            return "conv"
        if self.strategy != "auto":
            return self.strategy
        if quantity in ("dot", "weighted_sum"):
            return "conv"
        calls = self._calls(layer)
        L = sum(c.positions for c in calls)
        K = module.weight[0].numel()
        if quantity == "sq_norm" and _prefers_gram(L, K, module.out_channels):
            return "unfold"
        # Each sample's reduction inside the grouped convolution is over one call's positions.
        min_positions = min(c.positions for c in calls)
        if min_positions >= CONV_MIN_POSITIONS and module.in_channels >= CONV_MIN_CHANNELS:
            return "conv"
        return "unfold"

    def _calls(self, layer: CapturedLayer) -> list[_Call]:
        if "conv_calls" not in layer.cache:
            layer.cache["conv_calls"] = [_as_2d(layer, call) for call in layer.calls]
        return layer.cache["conv_calls"]

    # ---- quantities ------------------------------------------------------------------------

    @override
    def sq_norm(self, layer: CapturedLayer, names: set[str]) -> Tensor:
        calls = self._calls(layer)
        bias_sq = None
        if "bias" in names:
            bias_sq = sum(_sum_positions(c) for c in calls).pow(2).sum(1)
        if "weight" not in names:
            return bias_sq
        if self.choose(layer, "sq_norm") == "unfold":
            out = torch.cat([per_sample_sq_norm(A, G, bias=False)
                             for _, _, A, G in self._unfolded(layer)])
        else:
            out = torch.cat([_row_sq_sum(P) for _, _, P in self._weight_grads(layer)])
        return out if bias_sq is None else out + bias_sq

    @override
    def dot(self, layer: CapturedLayer, vectors: dict[str, Tensor]) -> Tensor:
        module, calls = layer.module, self._calls(layer)
        V, c = vectors.get("weight"), vectors.get("bias")
        if V is None:
            return sum(_sum_positions(call) for call in calls) @ c
        if self.choose(layer, "dot") == "unfold":
            V2 = V.reshape(module.out_channels, -1)
            return torch.cat([per_sample_dot(A, G, V2, c)
                              for _, _, A, G in self._unfolded(layer)])
        V4 = V.reshape(module.out_channels, -1, *calls[0].kernel)
        total = None
        for call in calls:
            y = F.conv2d(call.x, V4, c, call.stride, call.padding, call.dilation, module.groups)
            B = y.shape[0]
            d = torch.bmm(y.reshape(B, 1, -1), call.g.reshape(B, -1, 1)).view(B)
            total = d if total is None else total + d
        return total

    @override
    def weighted_sum(self, layer: CapturedLayer, names: set[str], w: Tensor) -> dict[str, Tensor]:
        module, calls = layer.module, self._calls(layer)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            if self.choose(layer, "weighted_sum") == "unfold":
                total = None
                for s, e, A, G in self._unfolded(layer):
                    part = per_sample_weighted_sum(A, G, w[s:e])
                    total = part if total is None else total + part
            else:
                total = None
                for call in calls:
                    x, g = call.x, call.g
                    # Scale the smaller of the two by w_b: sum_b w_b corr(x_b, g_b).
                    if x.numel() <= g.numel():
                        x = x * w.view(-1, 1, 1, 1)
                    else:
                        g = g * w.view(-1, 1, 1, 1)
                    shape = (module.out_channels, x.shape[1] // module.groups, *call.kernel)
                    part = torch.nn.grad.conv2d_weight(
                        x, shape, g, call.stride, call.padding, call.dilation, module.groups
                    )
                    total = part if total is None else total + part
            out["weight"] = total.reshape(module.weight.shape)
        if "bias" in names:
            out["bias"] = w @ sum(_sum_positions(c) for c in calls)
        return out

    @override
    def per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        module, calls, B = layer.module, self._calls(layer), layer.batch_size
        out: dict[str, Tensor] = {}
        if "weight" in names:
            if self.choose(layer, "per_sample") == "unfold":
                parts = [per_sample_grad(A, G) for _, _, A, G in self._unfolded(layer)]
            else:
                parts = [P for _, _, P in self._weight_grads(layer, whole=True)]
            out["weight"] = torch.cat(parts).reshape(B, *module.weight.shape)
        if "bias" in names:
            out["bias"] = sum(_sum_positions(c) for c in calls)
        return out

    # ---- the two families ------------------------------------------------------------------

    def _unfolded(self, layer: CapturedLayer) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """``(start, stop, A[n, L, K], G[n, L, O])`` over chunks of samples; calls along L."""
        calls, B = self._calls(layer), layer.batch_size
        K = layer.module.weight[0].numel()
        L = sum(c.positions for c in calls)
        elem = calls[0].x.element_size()
        for s, e in _chunks(B, L * K * elem * (2 if len(calls) > 1 else 1), chunk_bytes(calls)):
            cols, grads = [], []
            for c in calls:
                cols.append(im2col(c.x[s:e], c.kernel, stride=c.stride, padding=c.padding,
                                   dilation=c.dilation, out_size=c.g.shape[2:]))
                grads.append(c.g[s:e].reshape(e - s, c.g.shape[1], -1))
            A = cols[0] if len(cols) == 1 else torch.cat(cols, 2)
            G = grads[0] if len(grads) == 1 else torch.cat(grads, 2)
            # [n, K, L] and [n, O, L] as [n, L, K] and [n, L, O]: the ops take strided views.
            yield s, e, A.transpose(1, 2), G.transpose(1, 2)

    def _weight_grads(
        self, layer: CapturedLayer, whole: bool = False
    ) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, P[n, O, C/groups, kh, kw])`` over chunks of samples (or all)."""
        module, calls, B = layer.module, self._calls(layer), layer.batch_size
        groups = module.groups
        per_sample = module.weight.numel() * calls[0].x.element_size()
        budget = B * per_sample if whole else chunk_bytes(calls)
        for s, e in _chunks(B, per_sample * (2 if len(calls) > 1 else 1), budget):
            n, total = e - s, None
            for c in calls:
                x, g = c.x[s:e], c.g[s:e]
                shape = (n * module.out_channels, x.shape[1] // groups, *c.kernel)
                # Batch as channels, one group per (sample, group): per-sample gradients.
                P = torch.nn.grad.conv2d_weight(
                    x.reshape(1, -1, *x.shape[2:]), shape, g.reshape(1, -1, *g.shape[2:]),
                    c.stride, c.padding, c.dilation, n * groups,
                )
                total = P if total is None else total + P
            yield s, e, total.view(n, module.out_channels, *total.shape[1:])
