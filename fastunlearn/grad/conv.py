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

Cost/memory model of ``strategy="auto"`` (per layer and quantity). Multiply-adds per
sample are the same ``O K L`` for both families except for the Gram form, so the choice is
about bytes moved and kernel efficiency, measured on CPU (oneDNN convolutions, MKL GEMMs):

- dots and weighted sums: ``"unfold"`` also writes and reads ``A`` (``K L`` per sample,
  ``kh kw`` times the input) where ``"conv"`` reads only ``x`` and ``g`` and runs the
  ordinary convolution kernels: ``"conv"`` always (3-5x faster on the benchmark CNN).
- squared norms: the Gram form ``<A_b A_b^T, G_b G_b^T>`` costs ``L^2 (K + O + 1)`` against
  ``O K (L + 1)`` for materialising. When it is cheaper (few positions, wide layers: the
  rule of ``per_sample_sq_norm``), ``"unfold"``, the only family with a Gram form; ``A``
  is then no larger than the per-sample gradients.
- otherwise, and for materialised per-sample gradients, the ``O K L`` work is either a
  batched GEMM over ``A`` (``"unfold"``) or the grouped weight-gradient convolution
  (``"conv"``, no ``A``). oneDNN vectorises convolutions over blocks of channels, so with
  fewer than :data:`CONV_MIN_CHANNELS` input channels per group most lanes idle and the
  GEMM wins (2x for 1-3 channels); from there on the convolution is as fast or up to 2x
  faster. Squared norms, ms on one CPU thread, ``"unfold"`` / ``"conv"``:

  ==========================================  ===========  ==============
  layer (B = 64 unless given)                 unfold       conv
  ==========================================  ===========  ==============
  C=1 -> 16, 28x28, 5x5, B = 256              3.7          6.9
  C=3 -> 32, 32x32, 3x3                       2.1          3.3
  C=8 -> 16, 16x16, 5x5                       2.9          1.4
  C=16 -> 32, 12x12, 5x5, B = 256             10.4         9.9
  C=16 -> 16, 32x32, 3x3                      5.8          3.9
  C=128 -> 128, 8x8, 3x3, B = 32 (Gram)       2.9          9.7
  ==========================================  ===========  ==============

Memory: temporaries (im2col columns, per-sample weight gradients, forward outputs, scaled
copies) are built in chunks of samples of at most :data:`CONV_CHUNK_BYTES` on the CPU
(:data:`CONV_ACCEL_CHUNK_BYTES` elsewhere, where each chunk costs kernel launches). Norms
keep the per-sample weight gradients for a later weighted sum of the same call (a clipped
sum) only when they are no larger than the layer's captured inputs and output gradients
(:func:`keep_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import Tensor, nn
from typing_extensions import override

from ..ops.per_sample import (
    _prefers_gram,
    per_sample_dot,
    per_sample_sq_norm,
    per_sample_weighted_sum,
)
from .layers import (
    CapturedLayer,
    LayerCall,
    LayerRule,
    _weight_and_bias_only,
    register_rule,
)

__all__ = [
    "ConvRule",
    "CONV_STRATEGIES",
    "CONV_MIN_CHANNELS",
    "CONV_CHUNK_BYTES",
    "CONV_ACCEL_CHUNK_BYTES",
    "keep_bytes",
    "im2col",
]

#: ``"auto"`` (the cost model above), ``"unfold"`` or ``"conv"`` for every quantity.
CONV_STRATEGIES = ("auto", "unfold", "conv")

#: Input channels per group from which per-sample gradients (and norms that do not take
#: the Gram form) use the grouped weight-gradient convolution rather than im2col + GEMM.
CONV_MIN_CHANNELS = 8

#: Temporaries of one chunk of samples (im2col columns, per-sample weight gradients) stay
#: below this many bytes; 1-4 MiB chunks (about the L2 cache) run fastest on CPU, larger
#: ones up to 2x slower.
CONV_CHUNK_BYTES = 2 << 20

#: The same on other devices (GPUs): larger, so that chunks are few.
CONV_ACCEL_CHUNK_BYTES = 64 << 20


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


def _conv(module: nn.Module) -> nn.Conv1d | nn.Conv2d:
    """Return ``module`` typed as the convolution it is (the rule handles these two only)."""
    return cast("nn.Conv1d | nn.Conv2d", module)


def _as_2d(layer: CapturedLayer, call: LayerCall) -> _Call:
    module = _conv(layer.module)
    one_d = isinstance(module, nn.Conv1d)
    dims = 3 if one_d else 4
    x = layer.batched(call.input(), min_dim=dims).detach()
    if x.dim() != dims:
        raise ValueError(
            f"model: layer '{layer.name}' got an input of shape {tuple(x.shape)}; expected "
            f"a batched {dims}-D input"
        )
    g = call.grad_output
    padding: str | tuple[int, ...] = module.padding
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
    # 2-D now: every one is a pair
    return _Call(x, g, cast("tuple[int, int]", tuple(padding)),
                 cast("tuple[int, int]", tuple(kernel)), cast("tuple[int, int]", tuple(stride)),
                 cast("tuple[int, int]", tuple(dilation)))


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


def keep_bytes(calls: list[_Call]) -> int:
    """Largest per-sample gradient tensor a norm keeps for a later weighted sum (bytes).

    The size of the layer's captured inputs and output gradients, which a plain backward
    holds too, so keeping them at most doubles what the layer costs in memory.
    """
    return sum(c.x.numel() * c.x.element_size() + c.g.numel() * c.g.element_size()
               for c in calls)


def _chunks(like: Tensor, bytes_per_sample: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of chunks of the samples of ``like`` within the chunk budget."""
    budget = CONV_CHUNK_BYTES if like.device.type == "cpu" else CONV_ACCEL_CHUNK_BYTES
    B = like.shape[0]
    step = max(1, budget // max(1, bytes_per_sample))
    for start in range(0, B, step):
        yield start, min(B, start + step)


def _row_sq_sum(P: Tensor) -> Tensor:
    """``||P[b]||^2`` for each b (``vector_norm`` reads P once, without a P-sized temporary)."""
    return torch.linalg.vector_norm(P.reshape(P.shape[0], -1), dim=1).square()


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
        return _conv(module).groups == 1 and _weight_and_bias_only(module)

    # ---- choosing --------------------------------------------------------------------------

    def choose(self, layer: CapturedLayer, quantity: str) -> str:
        """``"unfold"`` or ``"conv"`` for ``quantity`` (sq_norm, dot, weighted_sum, per_sample).

        Grouped convolutions always take ``"conv"`` (the im2col view assumes one group).
        """
        module = _conv(layer.module)
        if module.groups > 1:
            return "conv"
        if self.strategy != "auto":
            return self.strategy
        if quantity in ("dot", "weighted_sum"):
            return "conv"
        L = sum(c.positions for c in self._calls(layer))
        if quantity == "sq_norm" and _prefers_gram(L, *self._linear_sizes(layer)):
            return "unfold"
        return "conv" if module.in_channels >= CONV_MIN_CHANNELS else "unfold"

    @staticmethod
    def _linear_sizes(layer: CapturedLayer) -> tuple[int, int]:
        """``(K, O)``: the weight as a linear layer's ``[out, in]`` matrix is ``[O, K]``."""
        module = _conv(layer.module)
        return module.weight[0].numel(), module.out_channels

    def _calls(self, layer: CapturedLayer) -> list[_Call]:
        if "conv_calls" not in layer.cache:
            layer.cache["conv_calls"] = [_as_2d(layer, call) for call in layer.calls]
        return layer.cache["conv_calls"]

    # ---- quantities ------------------------------------------------------------------------

    @override
    def sq_norm(self, layer: CapturedLayer, names: set[str]) -> Tensor:
        bias_sq = _row_sq_sum(self._bias_per_sample(layer)) if "bias" in names else None
        if "weight" not in names:
            return cast(Tensor, bias_sq)  # ``names`` is never empty: it holds the bias
        method = self.choose(layer, "sq_norm")
        L = sum(c.positions for c in self._calls(layer))
        gram = method == "unfold" and _prefers_gram(L, *self._linear_sizes(layer))
        if not gram and self._fits(layer):
            # Small enough to keep: a clipped sum then reuses them instead of a convolution.
            out = _row_sq_sum(self._weight_per_sample(layer))
        elif method == "conv":
            out = torch.cat([_row_sq_sum(P) for _, _, P in self._weight_grads(layer)])
        elif gram:
            out = torch.cat([per_sample_sq_norm(A, G, bias=False)
                             for _, _, A, G in self._unfolded(layer)])
        else:
            # The op's materialising form, with the faster orientation (see _weight_per_sample).
            out = torch.cat([_row_sq_sum(torch.bmm(A.transpose(1, 2), G))
                             for _, _, A, G in self._unfolded(layer)])
        return out if bias_sq is None else out + bias_sq

    @override
    def dot(self, layer: CapturedLayer, vectors: dict[str, Tensor]) -> Tensor:
        module, calls = _conv(layer.module), self._calls(layer)
        V, c = vectors.get("weight"), vectors.get("bias")
        if V is None:
            return self._bias_per_sample(layer) @ cast(Tensor, c)  # the weight, bias or both
        if self.choose(layer, "dot") == "unfold":
            V2 = V.reshape(module.out_channels, -1)
            return torch.cat([per_sample_dot(A, G, V2, c)
                              for _, _, A, G in self._unfolded(layer)])
        V4 = V.reshape(module.out_channels, -1, *calls[0].kernel)
        out = calls[0].g.new_zeros(layer.batch_size)
        for call in calls:
            # <g_b, (V, c)> = sum over outputs of g_b * conv(x_b, V, c): a forward conv, in
            # chunks (large fresh outputs cost page faults on CPU, 4x here).
            x, g = call.x, call.g
            for s, e in _chunks(g, g[0].numel() * g.element_size()):
                y = F.conv2d(x[s:e], V4, c, call.stride, call.padding, call.dilation,
                             module.groups)
                out[s:e] += torch.linalg.vecdot(y.flatten(1), g[s:e].flatten(1))
        return out

    @override
    def weighted_sum(self, layer: CapturedLayer, names: set[str], w: Tensor) -> dict[str, Tensor]:
        module, calls = _conv(layer.module), self._calls(layer)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            total: Tensor | None = None
            if "per_sample_weight" in layer.cache:  # kept by sq_norm
                total = torch.tensordot(w, layer.cache["per_sample_weight"], dims=1)
            elif self.choose(layer, "weighted_sum") == "unfold":
                for s, e, A, G in self._unfolded(layer):
                    part = per_sample_weighted_sum(A, G, w[s:e])
                    total = part if total is None else total + part
            else:
                for call in calls:
                    # The weight gradient of the batch with the smaller of x and g scaled by
                    # w_b is sum_b w_b corr(x_b, g_b); in chunks, as the dots.
                    shape = (module.out_channels, call.x.shape[1] // module.groups,
                             *call.kernel)
                    scale_x = call.x[0].numel() <= call.g[0].numel()
                    size = min(call.x[0].numel(), call.g[0].numel()) * call.x.element_size()
                    for s, e in _chunks(call.g, size):
                        x, g, ws = call.x[s:e], call.g[s:e], w[s:e].view(-1, 1, 1, 1)
                        x, g = (x * ws, g) if scale_x else (x, g * ws)
                        part = torch.nn.grad.conv2d_weight(
                            x, shape, g, call.stride, call.padding, call.dilation, module.groups
                        )
                        total = part if total is None else total + part
            # at least one call and one chunk (B >= 1) were added
            out["weight"] = cast(Tensor, total).reshape(module.weight.shape)
        if "bias" in names:
            out["bias"] = w @ self._bias_per_sample(layer)
        return out

    @override
    def per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if "weight" in names:
            out["weight"] = self._weight_per_sample(layer)
        if "bias" in names:
            out["bias"] = self._bias_per_sample(layer)
        return out

    def _fits(self, layer: CapturedLayer) -> bool:
        """Whether the per-sample weight gradients are small enough to keep (:func:`keep_bytes`)."""
        weight = _conv(layer.module).weight
        need = layer.batch_size * weight.numel() * self._calls(layer)[0].g.element_size()
        return need <= keep_bytes(self._calls(layer))

    def _weight_per_sample(self, layer: CapturedLayer) -> Tensor:
        """Per-sample weight gradients [B, *weight.shape] (cached)."""
        if "per_sample_weight" not in layer.cache:
            module, B = _conv(layer.module), layer.batch_size
            n_out, K = module.out_channels, module.weight[0].numel()
            out = self._calls(layer)[0].g.new_empty(B, n_out, K)
            if self.choose(layer, "per_sample") == "unfold":
                for s, e, A, G in self._unfolded(layer):
                    # bmm(A^T, G) -> [n, K, O] is faster than the op's bmm(G^T, A) on the
                    # im2col layout; the copy into the output transposes it.
                    out[s:e] = torch.bmm(A.transpose(1, 2), G).transpose(1, 2)
            else:
                for s, e, P in self._weight_grads(layer):
                    out[s:e] = P.reshape(e - s, n_out, K)
            layer.cache["per_sample_weight"] = out.view(B, *module.weight.shape)
        return layer.cache["per_sample_weight"]

    def _bias_per_sample(self, layer: CapturedLayer) -> Tensor:
        """Per-sample bias gradients [B, O]: output gradients summed over positions (cached)."""
        if "per_sample_bias" not in layer.cache:
            layer.cache["per_sample_bias"] = sum(c.g.sum((2, 3)) for c in self._calls(layer))
        return layer.cache["per_sample_bias"]

    # ---- the two families ------------------------------------------------------------------

    def _unfolded(self, layer: CapturedLayer) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """``(start, stop, A[n, L, K], G[n, L, O])`` over chunks of samples; calls along L."""
        calls = self._calls(layer)
        K = _conv(layer.module).weight[0].numel()
        L = sum(c.positions for c in calls)
        elem = calls[0].x.element_size()
        for s, e in _chunks(calls[0].g, L * K * elem * (2 if len(calls) > 1 else 1)):
            cols, grads = [], []
            for c in calls:
                cols.append(im2col(c.x[s:e], c.kernel, stride=c.stride, padding=c.padding,
                                   dilation=c.dilation,
                                   out_size=cast("tuple[int, int]", c.g.shape[2:])))
                grads.append(c.g[s:e].reshape(e - s, c.g.shape[1], -1))
            A = cols[0] if len(cols) == 1 else torch.cat(cols, 2)
            G = grads[0] if len(grads) == 1 else torch.cat(grads, 2)
            # [n, K, L] and [n, O, L] as [n, L, K] and [n, L, O]: the ops take strided views.
            yield s, e, A.transpose(1, 2), G.transpose(1, 2)

    def _weight_grads(self, layer: CapturedLayer) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, P[n, O, C/groups, kh, kw])`` over chunks of samples."""
        module, calls = _conv(layer.module), self._calls(layer)
        groups = module.groups
        per_sample = module.weight.numel() * calls[0].x.element_size()
        for s, e in _chunks(calls[0].g, per_sample * (2 if len(calls) > 1 else 1)):
            n = e - s
            total: Tensor | None = None
            for c in calls:
                x, g = c.x[s:e], c.g[s:e]
                shape = (n * module.out_channels, x.shape[1] // groups, *c.kernel)
                # Batch as channels, one group per (sample, group): per-sample gradients.
                P = torch.nn.grad.conv2d_weight(
                    x.reshape(1, -1, *x.shape[2:]), shape, g.reshape(1, -1, *g.shape[2:]),
                    c.stride, c.padding, c.dilation, n * groups,
                )
                total = P if total is None else total + P
            total = cast(Tensor, total)  # at least one call
            yield s, e, total.view(n, module.out_channels, *total.shape[1:])
