"""torch.func fallback for modules without a hand-written rule.

For a module with direct parameters theta, captured inputs x_b and loss gradients g_b of
its outputs, sample b's gradient is ``grad_theta sum(module(x_b) * g_b)`` (a vector-Jacobian
product). It is evaluated for all samples at once with ``vmap(grad(...))`` over
``functional_call``; the module's forward runs once more, on single-sample batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten
from typing_extensions import override

from .layers import CapturedLayer, LayerCall, MaterialisingRule

__all__ = ["FunctorchRule"]


class FunctorchRule(MaterialisingRule):
    """Per-sample gradients of any module's direct parameters through ``torch.func``.

    Tensor arguments whose leading dim is the batch size are split per sample (each sample
    is run as a batch of one); other arguments are passed unchanged to every sample. The
    module must treat samples independently: batch-norm layers in training mode are refused.
    """

    @override
    def check(self, module: nn.Module, name: str) -> None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"model: batch-norm layer '{name}' is in training mode, where it mixes the "
                "samples of a batch; per-sample gradients are undefined (use eval mode, or "
                "GroupNorm/LayerNorm)"
            )

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
        module, B = layer.module, layer.batch_size
        params = dict(module.named_parameters(recurse=False))
        selected = {n: params[n].detach() for n in names}
        leaves, spec = tree_flatten((call.args, call.kwargs))
        batched = [
            i for i, v in enumerate(leaves)
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == B
        ]
        if not batched:
            raise ValueError(
                f"model: layer '{layer.name}' has no tensor argument with the batch "
                f"(size {B}) as its leading dim"
            )
        out_index = sorted(call.grads)

        def sample_loss(sel: dict[str, Tensor], xs: list[Tensor], gs: list[Tensor]) -> Tensor:
            vals: list[Any] = list(leaves)
            for i, x in zip(batched, xs, strict=True):
                vals[i] = x.unsqueeze(0)
            args, kwargs = tree_unflatten(vals, spec)
            outputs = tree_flatten(functional_call(module, sel, args, kwargs))[0]
            pairs = zip(out_index, gs, strict=True)
            return sum((outputs[i] * g.unsqueeze(0)).sum() for i, g in pairs)

        xs = [leaves[i].detach() for i in batched]
        gs = [call.grads[i] for i in out_index]
        with torch.enable_grad():
            return vmap(grad(sample_loss), in_dims=(None, 0, 0))(selected, xs, gs)
