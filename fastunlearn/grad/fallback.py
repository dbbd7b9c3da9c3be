"""torch.func fallback for modules without a hand-written rule.

For a module with direct parameters theta, captured inputs x_b and loss gradients g_b of
its outputs, sample b's gradient is ``grad_theta sum(module(x_b) * g_b)`` (a vector-Jacobian
product). It is evaluated for all samples at once with ``vmap(grad(...))`` over
``functional_call``; the module's forward runs once more, on single-sample batches.

Which dim of each argument and output is the batch is the rule's :meth:`FunctorchRule.
batch_dims`: by default dim 0 of every argument whose dim 0 has the batch size, and dim 0
of every output. A dim that merely *has* the batch size (a time-first sequence ``[T, B, C]``
with ``T == B``) would be split as if it were the batch, so every re-run is checked: each
sample's outputs must reproduce that sample's slice of the outputs the module returned in
the engine's forward, or the layer is refused with a ``ValueError``. The same check refuses
modules that mix the samples of a batch. Recurrent layers (:class:`RNNRule`) and
``nn.MultiheadAttention`` (:class:`MultiheadAttentionRule`) know their layouts
(``batch_first``, hidden states ``[layers, B, H]``).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten
from typing_extensions import override

from .layers import CapturedLayer, LayerCall, MaterialisingRule, register_rule

__all__ = ["FunctorchRule", "RNNRule", "MultiheadAttentionRule"]

#: Per argument leaf: the batch dim or None (passed whole); per output-leaf index: batch dim.
BatchDims = tuple[list[int | None], dict[int, int]]


def _tolerance(t: Tensor) -> float:
    """Relative tolerance of the re-run check: sqrt(eps) of the dtype (1.5e-8 in float64)."""
    return torch.finfo(t.dtype).eps ** 0.5 if t.is_floating_point() else 0.0


def _same(got: Tensor, want: Tensor) -> bool:
    """Whether a re-run output ``got`` reproduces ``want`` (shape, and values to tolerance)."""
    if got.shape != want.shape:
        return False
    if not want.is_floating_point() or want.numel() == 0:
        return bool(torch.equal(got, want))
    tol = _tolerance(want)
    scale = float(want.abs().max())
    return bool(torch.allclose(got.to(want.dtype), want, rtol=tol, atol=tol * max(scale, 1e-30),
                               equal_nan=True))


def _not_reproduced(layer: CapturedLayer, index: int, dim: int) -> ValueError:
    return ValueError(
        f"model: layer '{layer.name}' ({type(layer.module).__name__}) run on one sample at a "
        f"time does not reproduce its output {index} (batch at dim {dim}): its inputs do not "
        f"have the batch (size {layer.batch_size}) where the layer expects it (a time-first "
        "[T, B, ...] input whose T equals the batch size?), or the layer mixes the samples "
        "of a batch or is random (dropout in training mode); its per-sample gradients would "
        "be wrong"
    )


class FunctorchRule(MaterialisingRule):
    """Per-sample gradients of any module's direct parameters through ``torch.func``.

    Tensor arguments are split per sample along their :meth:`batch_dims` (by default: those
    whose leading dim is the batch size, each sample run as a batch of one); other arguments
    are passed unchanged to every sample. The module must treat samples independently:
    batch-norm layers in training mode are refused, and so is any call whose per-sample
    re-run does not reproduce the outputs of the engine's forward (see the module
    docstring).
    """

    keeps_outputs = True

    @override
    def check(self, module: nn.Module, name: str) -> None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"model: batch-norm layer '{name}' is in training mode, where it mixes the "
                "samples of a batch; per-sample gradients are undefined (use eval mode, or "
                "GroupNorm/LayerNorm)"
            )

    def batch_dims(self, layer: CapturedLayer, call: LayerCall, leaves: list[Any]) -> BatchDims:
        """Batch dim of each argument leaf (None: not split) and of each output with a grad.

        ``leaves`` are ``tree_flatten((call.args, call.kwargs))[0]``. Default: dim 0 of
        every tensor argument whose dim 0 is the batch size, dim 0 of every output.
        """
        B = layer.batch_size
        ins: list[int | None] = [
            0 if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == B else None
            for v in leaves
        ]
        return ins, dict.fromkeys(call.grads, 0)

    @override
    def input_batch_dims(
        self, layer: CapturedLayer, call: LayerCall, leaves: list[Any]
    ) -> list[int | None]:
        return self.batch_dims(layer, call, leaves)[0]

    def _dims(self, layer: CapturedLayer, call: LayerCall, leaves: list[Any]) -> BatchDims:
        """:meth:`batch_dims`, checked: batched leaves and output gradients have B there."""
        B = layer.batch_size
        in_dims, out_dims = self.batch_dims(layer, call, leaves)
        if all(d is None for d in in_dims):
            raise ValueError(
                f"model: layer '{layer.name}' has no tensor argument with the batch "
                f"(size {B}) as its leading dim"
            )
        shapes = [(leaves[i], d, f"argument {i}") for i, d in enumerate(in_dims) if d is not None]
        shapes += [(call.grads[i], out_dims[i], f"output {i}") for i in call.grads]
        for t, d, what in shapes:
            if t.dim() <= d or t.shape[d] != B:
                raise ValueError(
                    f"model: layer '{layer.name}' ({type(layer.module).__name__}): {what} has "
                    f"shape {tuple(t.shape)}, expected the batch (size {B}) at dim {d}"
                )
        return in_dims, out_dims

    @override
    def compute_per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for call in layer.calls:
            for n, g in self._one_call(layer, call, names).items():
                out[n] = out[n] + g if n in out else g
        return out

    def _one_call(
        self, layer: CapturedLayer, call: LayerCall, names: set[str]
    ) -> dict[str, Tensor]:
        module = layer.module
        params = dict(module.named_parameters(recurse=False))
        selected = {n: params[n].detach() for n in names}
        leaves, spec = tree_flatten((call.args, call.kwargs))
        in_dims, out_dims = self._dims(layer, call, leaves)
        batched = [i for i, d in enumerate(in_dims) if d is not None]
        out_index = sorted(call.grads)

        def sample_loss(sel: dict[str, Tensor], xs: list[Tensor], gs: list[Tensor]) -> Any:
            vals: list[Any] = list(leaves)
            for i, x in zip(batched, xs, strict=True):
                vals[i] = x.unsqueeze(cast(int, in_dims[i]))  # batched: its dim is not None
            args, kwargs = tree_unflatten(vals, spec)
            outputs = tree_flatten(functional_call(module, sel, args, kwargs))[0]
            outs = [outputs[i] for i in out_index]
            pairs = zip(out_index, outs, gs, strict=True)
            loss = sum((o * g.unsqueeze(out_dims[i])).sum() for i, o, g in pairs)
            return loss, [o.detach() for o in outs]

        xs = [leaves[i].detach() for i in batched]
        gs = [call.grads[i] for i in out_index]
        try:
            with torch.enable_grad():
                grads, outs = vmap(grad(sample_loss, has_aux=True),
                                   in_dims=(None, [in_dims[i] for i in batched],
                                            [out_dims[i] for i in out_index]))(selected, xs, gs)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"model: layer '{layer.name}' ({type(module).__name__}) could not be run one "
                f"sample at a time by the torch.func fallback: {e}"
            ) from e
        if call.outputs is not None:
            for i, o in zip(out_index, outs, strict=True):
                # Sample b's output, as the stacked re-runs give it: [B, ..., 1 at dim d, ...].
                d = out_dims[i]
                want = call.outputs[i].movedim(d, 0).unsqueeze(d + 1)
                if not _same(o, want):
                    raise _not_reproduced(layer, i, d)
        return grads


@register_rule(nn.RNN, nn.LSTM, nn.GRU)
class RNNRule(FunctorchRule):
    """``nn.RNN``/``nn.LSTM``/``nn.GRU`` with batched 3-D inputs, either ``batch_first``.

    The batch is dim 0 of the input and output with ``batch_first=True``, else dim 1, and
    dim 1 of the hidden states ``[layers * directions, B, H]`` (``h_0``, ``c_0``, ``h_n``,
    ``c_n``). ``torch.func`` cannot vmap these modules, so each sample is re-run with one
    autograd pass (B small passes); the re-runs are checked as in :class:`FunctorchRule`.
    Packed sequences and unbatched inputs are refused.
    """

    @override
    def batch_dims(self, layer: CapturedLayer, call: LayerCall, leaves: list[Any]) -> BatchDims:
        x = call.input()
        if not isinstance(x, Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"model: recurrent layer '{layer.name}' got input {got}; per-sample gradients "
                "need a batched 3-D tensor (packed sequences are not supported)"
            )
        first = 0 if layer.module.batch_first else 1
        # Leaves: the input, then any hidden states (h_0 or (h_0, c_0)), all [L*D, B, H].
        ins: list[int | None] = [
            (first if v is x else 1) if isinstance(v, Tensor) else None for v in leaves
        ]
        # Output leaves: output, h_n (, c_n).
        return ins, {i: first if i == 0 else 1 for i in call.grads}

    @override
    def _one_call(
        self, layer: CapturedLayer, call: LayerCall, names: set[str]
    ) -> dict[str, Tensor]:
        module, B = layer.module, layer.batch_size
        params = dict(module.named_parameters(recurse=False))
        order = sorted(names)
        leaves, spec = tree_flatten((call.args, call.kwargs))
        in_dims, out_dims = self._dims(layer, call, leaves)
        out_index = sorted(call.grads)
        rows: dict[str, list[Tensor]] = {n: [] for n in order}
        for b in range(B):
            vals = [v.detach().narrow(d, b, 1) if d is not None else v
                    for v, d in zip(leaves, in_dims, strict=True)]
            args, kwargs = tree_unflatten(vals, spec)
            with torch.enable_grad():
                outputs = tree_flatten(module(*args, **kwargs))[0]
                loss: Tensor | int = 0
                for i in out_index:
                    d, o = out_dims[i], outputs[i]
                    if call.outputs is not None and not _same(
                        o.detach(), call.outputs[i].narrow(d, b, 1)
                    ):
                        raise _not_reproduced(layer, i, d)
                    loss = loss + (o * call.grads[i].narrow(d, b, 1)).sum()
                # call.grads is never empty (the loss depends on the call), so loss is a tensor
                gs = torch.autograd.grad(cast(Tensor, loss), [params[n] for n in order],
                                         allow_unused=True)
            for n, g in zip(order, gs, strict=True):
                rows[n].append(torch.zeros_like(params[n]) if g is None else g)
        return {n: torch.stack(v) for n, v in rows.items()}


@register_rule(nn.MultiheadAttention)
class MultiheadAttentionRule(FunctorchRule):
    """``nn.MultiheadAttention`` with either ``batch_first``.

    The batch is dim 0 of batched (3-D) query, key and value with ``batch_first=True``,
    else dim 1; dim 0 of ``key_padding_mask`` and of the attention weights. A 3-D
    ``attn_mask`` (``[B * heads, L, S]``) is refused; a 2-D one is shared by all samples.
    Only the input projections can be selected: the module reads ``out_proj``'s
    parameters without calling it, which the engine refuses.
    """

    @override
    def batch_dims(self, layer: CapturedLayer, call: LayerCall, leaves: list[Any]) -> BatchDims:
        module = layer.module
        first = 0 if module.batch_first else 1
        args, kwargs = call.args, call.kwargs
        names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
        bound = {**dict(zip(names, args, strict=False)), **kwargs}
        q = bound.get("query")
        if not isinstance(q, Tensor) or q.dim() != 3:
            raise ValueError(
                f"model: attention layer '{layer.name}' needs a batched 3-D query for "
                "per-sample gradients"
            )
        mask = bound.get("attn_mask")
        if isinstance(mask, Tensor) and mask.dim() == 3:
            raise ValueError(
                f"model: attention layer '{layer.name}' got a 3-D attn_mask [B * heads, L, S]; "
                "per-sample gradients support a 2-D mask shared by the batch"
            )
        by_id = {id(bound.get(k)): k for k in ("query", "key", "value", "key_padding_mask")
                 if isinstance(bound.get(k), Tensor)}
        ins: list[int | None] = []
        for v in leaves:
            role = by_id.get(id(v)) if isinstance(v, Tensor) else None
            ins.append(None if role is None else 0 if role == "key_padding_mask" else first)
        # Output leaves: attn_output (batch at `first`) and attn_weights (batch first).
        return ins, {i: first if i == 0 else 0 for i in call.grads}
