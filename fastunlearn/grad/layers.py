"""Per-layer rules: per-sample quantities of one module's direct parameters.

A rule turns what the engine captured for one module during one forward and one backward
pass (the module's inputs and the gradients of the loss w.r.t. its outputs, for every call
of the module) into per-sample quantities of the module's own parameters:

- squared norms ``||g_b||^2`` -> [B],
- dot products ``<g_b, v>`` with a parameter-shaped vector -> [B],
- weighted sums ``sum_b w_b g_b`` -> parameter-shaped,
- materialised per-sample gradients -> [B, *param.shape].

Rules are registered by exact module type in :data:`LAYER_RULES` (a subclass of
``nn.Linear`` may change ``forward``, so it does not inherit the rule). ``nn.Linear`` maps
onto the per-sample ops with activations ``A[B, T, in]`` and output gradients
``G[B, T, out]`` and never materialises for norms, dots and weighted sums;
``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, in :mod:`.conv`) choose per quantity between that
im2col view and convolutions of the batch; ``nn.Embedding`` uses index arithmetic in torch;
affine normalisation layers have per-sample gradients as small as a channel vector and are
materialised. Modules without a rule use :class:`fastunlearn.grad.fallback.FunctorchRule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from ..ops.per_sample import (
    per_sample_dot,
    per_sample_grad,
    per_sample_sq_norm,
    per_sample_weighted_sum,
)

__all__ = [
    "LayerCall",
    "CapturedLayer",
    "LayerRule",
    "MaterialisingRule",
    "LinearLikeRule",
    "LinearRule",
    "EmbeddingRule",
    "LayerNormRule",
    "GroupNormRule",
    "RMSNormRule",
    "LAYER_RULES",
    "register_rule",
    "find_rule",
]


@dataclass(eq=False)  # a hook record: identity, its tensors are not compared
class LayerCall:
    """One call of a module: its arguments and the loss gradients of its outputs.

    Attributes:
        args: Positional arguments the module was called with.
        kwargs: Keyword arguments the module was called with.
        grads: Output-leaf index (in ``torch.utils._pytree.tree_flatten(output)`` order) ->
            gradient of the (sum-reduced) loss w.r.t. that output. Leaves the loss does not
            depend on are absent.
        outputs: For rules with :attr:`LayerRule.keeps_outputs`: output-leaf index -> a
            detached copy of that output as the call returned it (the leaves in ``grads``);
            else None.

    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    grads: dict[int, Tensor]
    outputs: dict[int, Tensor] | None = None

    def input(self, name: str = "input") -> Any:
        """Return the module's first argument, positional or passed by keyword ``name``."""
        return self.args[0] if self.args else self.kwargs[name]

    @property
    def grad_output(self) -> Tensor:
        """Gradient w.r.t. the output of a module that returns one tensor."""
        return self.grads[0]


@dataclass(eq=False)  # a hook record: identity, its tensors are not compared
class CapturedLayer:
    """Everything captured for one module in one engine call.

    Attributes:
        name: The module's qualified name in the model (for error messages).
        module: The module.
        batch_size: B, the batch size of the engine call.
        calls: The module's calls whose outputs the loss depends on (at least one).
        cache: Scratch space rules use to share work between quantities within one call.

    """

    name: str
    module: nn.Module
    batch_size: int
    calls: list[LayerCall]
    cache: dict[Any, Any] = field(default_factory=dict)

    def batched(self, x: Tensor, min_dim: int = 1) -> Tensor:
        """Return ``x`` after checking that its leading dimension is the batch.

        Raises:
            ValueError: ``x`` has fewer than ``min_dim`` dims or a leading dim other than B.

        """
        if not isinstance(x, Tensor) or x.dim() < min_dim or x.shape[0] != self.batch_size:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"model: layer '{self.name}' got an input of shape {got}, expected at least "
                f"{min_dim} dims with the batch (size {self.batch_size}) first"
            )
        return x


def _weight_and_bias_only(module: nn.Module) -> bool:
    """Whether ``module``'s direct parameters are at most its own ``weight`` and ``bias``.

    The native rules know only these two. ``torch.nn.utils.weight_norm`` and
    ``spectral_norm`` replace ``weight`` by other parameters (``weight_g`` and ``weight_v``,
    ``weight_orig``) from which a forward pre-hook computes it, on a module of the same type;
    such a module goes to the fallback, which differentiates whatever its forward computes
    (a native rule would give those parameters no gradient).
    """
    return set(module._parameters) <= {"weight", "bias"}


class LayerRule:
    """Per-sample quantities of the direct parameters of one module type.

    ``names`` arguments are sets of the module's local parameter names (``"weight"``,
    ``"bias"``) to include; ``vectors`` map local names to parameter-shaped tensors.
    """

    #: Whether the engine keeps a copy of each call's outputs (:attr:`LayerCall.outputs`),
    #: for rules that re-run the module and check it reproduces them.
    keeps_outputs: bool = False

    def supports(self, module: nn.Module) -> bool:
        """Whether this rule handles this instance (else the engine uses the fallback)."""
        return True

    def check(self, module: nn.Module, name: str) -> None:
        """Raise ValueError if per-sample gradients of ``module`` are undefined right now."""

    def input_batch_dims(
        self, layer: CapturedLayer, call: LayerCall, leaves: list[Any]
    ) -> list[int | None]:
        """Return the batch dim of each ``tree_flatten((call.args, call.kwargs))[0]`` leaf.

        The engine checks that these dims really are the batch when another dim has the
        batch size too (a time-first input whose length equals B). None: not batched.
        Default: dim 0 of every tensor whose dim 0 is the batch size.
        """
        B = layer.batch_size
        return [0 if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == B else None
                for v in leaves]

    def sq_norm(self, layer: CapturedLayer, names: set[str]) -> Tensor:
        """Squared per-sample gradient norm over the parameters ``names`` -> [B]."""
        raise NotImplementedError

    def dot(self, layer: CapturedLayer, vectors: dict[str, Tensor]) -> Tensor:
        """``sum over names of <g_b[name], vectors[name]>`` -> [B]."""
        raise NotImplementedError

    def weighted_sum(self, layer: CapturedLayer, names: set[str], w: Tensor) -> dict[str, Tensor]:
        """``sum_b w[b] g_b[name]`` for each name -> parameter-shaped tensors."""
        raise NotImplementedError

    def per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        """Materialised per-sample gradients -> name -> [B, *param.shape]."""
        raise NotImplementedError


class MaterialisingRule(LayerRule):
    """A rule that materialises per-sample gradients and derives everything from them.

    Subclasses implement :meth:`compute_per_sample`; the result is cached on the captured
    layer so that norms and weighted sums in one engine call (clipping) compute it once.
    """

    def compute_per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        """Per-sample gradients of ``names`` (uncached) -> name -> [B, *param.shape]."""
        raise NotImplementedError

    @override
    def per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        key = ("per_sample", frozenset(names))
        if key not in layer.cache:
            layer.cache[key] = self.compute_per_sample(layer, names)
        return layer.cache[key]

    @override
    def sq_norm(self, layer: CapturedLayer, names: set[str]) -> Tensor:
        grads = self.per_sample(layer, names)
        # ``names`` is never empty, so the sum is a tensor (never the start value 0)
        return cast(Tensor, sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))

    @override
    def dot(self, layer: CapturedLayer, vectors: dict[str, Tensor]) -> Tensor:
        grads = self.per_sample(layer, set(vectors))
        # ``vectors`` is never empty, so the sum is a tensor (never the start value 0)
        return cast(Tensor, sum(grads[n].flatten(1) @ v.reshape(-1) for n, v in vectors.items()))

    @override
    def weighted_sum(self, layer: CapturedLayer, names: set[str], w: Tensor) -> dict[str, Tensor]:
        grads = self.per_sample(layer, names)
        return {n: torch.tensordot(w, g, dims=1) for n, g in grads.items()}


class LinearLikeRule(LayerRule):
    """Layers whose weight gradient of sample b is ``sum_t G[b, t]^T A[b, t]``.

    Subclasses give ``A[B, T, in]`` and ``G[B, T, out]`` for one call; calls of the same
    module are concatenated along T (a shared layer's gradient is the sum over its uses).
    The weight is viewed as an [out, in] matrix; the bias gradient is ``sum_t G[b, t]``.
    """

    @override
    def supports(self, module: nn.Module) -> bool:
        return _weight_and_bias_only(module)

    def activations(self, layer: CapturedLayer, call: LayerCall) -> tuple[Tensor, Tensor]:
        """``(A[B, T, in], G[B, T, out])`` for one call."""
        raise NotImplementedError

    def _ag(self, layer: CapturedLayer) -> tuple[Tensor, Tensor]:
        if "ag" not in layer.cache:
            pairs = [self.activations(layer, call) for call in layer.calls]
            if len(pairs) == 1:
                layer.cache["ag"] = pairs[0]
            else:
                layer.cache["ag"] = (
                    torch.cat([a for a, _ in pairs], dim=1),
                    torch.cat([g for _, g in pairs], dim=1),
                )
        return layer.cache["ag"]

    @override
    def sq_norm(self, layer: CapturedLayer, names: set[str]) -> Tensor:
        A, G = self._ag(layer)
        if "weight" in names:
            return per_sample_sq_norm(A, G, bias="bias" in names)
        return G.sum(1).pow(2).sum(1)

    @override
    def dot(self, layer: CapturedLayer, vectors: dict[str, Tensor]) -> Tensor:
        A, G = self._ag(layer)
        W, b = vectors.get("weight"), vectors.get("bias")
        if W is not None:
            return per_sample_dot(A, G, W.reshape(G.shape[-1], A.shape[-1]), b)
        return G.sum(1) @ cast(Tensor, b)  # ``vectors`` holds the weight, the bias or both

    @override
    def weighted_sum(self, layer: CapturedLayer, names: set[str], w: Tensor) -> dict[str, Tensor]:
        A, G = self._ag(layer)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            weight = cast(Tensor, layer.module.weight)
            out["weight"] = per_sample_weighted_sum(A, G, w).reshape(weight.shape)
        if "bias" in names:
            out["bias"] = w @ G.sum(1)
        return out

    @override
    def per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        A, G = self._ag(layer)
        out: dict[str, Tensor] = {}
        if "weight" in names:
            shape = (layer.batch_size, *cast(Tensor, layer.module.weight).shape)
            out["weight"] = per_sample_grad(A, G).reshape(shape)
        if "bias" in names:
            out["bias"] = G.sum(1)
        return out


#: Exact module type -> rule instance.
LAYER_RULES: dict[type[nn.Module], LayerRule] = {}


def register_rule(*module_types: type[nn.Module]) -> Callable[[type[LayerRule]], type[LayerRule]]:
    """Class decorator: register an instance of the rule for each of ``module_types``.

    Raises:
        ValueError: No module type is given.
        TypeError: A module type is not an ``nn.Module`` subclass, or the decorated object
            is not a :class:`LayerRule` subclass.

    """
    if not module_types:
        raise ValueError("module_types: expected at least one nn.Module subclass")
    for module_type in module_types:
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise TypeError(
                f"module_types: expected nn.Module subclasses, got {module_type!r}"
            )

    def decorate(rule_cls: type[LayerRule]) -> type[LayerRule]:
        if not (isinstance(rule_cls, type) and issubclass(rule_cls, LayerRule)):
            raise TypeError(f"rule_cls: expected a LayerRule subclass, got {rule_cls!r}")
        rule = rule_cls()
        for module_type in module_types:
            LAYER_RULES[module_type] = rule
        return rule_cls

    return decorate


def find_rule(module: nn.Module) -> LayerRule | None:
    """Return the rule registered for ``module``'s exact type if it supports it, else None.

    Raises:
        TypeError: ``module`` is not an ``nn.Module`` instance (e.g. the class itself).

    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module instance, got {module!r}")
    rule = LAYER_RULES.get(type(module))
    return rule if rule is not None and rule.supports(module) else None


@register_rule(nn.Linear)
class LinearRule(LinearLikeRule):
    """``nn.Linear`` on inputs [B, *, in]: every non-batch, non-feature dim is a position."""

    @override
    def activations(self, layer: CapturedLayer, call: LayerCall) -> tuple[Tensor, Tensor]:
        module = cast(nn.Linear, layer.module)  # the rule is registered for nn.Linear only
        x = layer.batched(call.input(), min_dim=2).detach()
        B = layer.batch_size
        return x.reshape(B, -1, module.in_features), call.grad_output.reshape(
            B, -1, module.out_features
        )


#: Above this many positions per sample, embedding norms use sorting instead of a T x T Gram.
EMBEDDING_GRAM_MAX_T = 256


@register_rule(nn.Embedding)
class EmbeddingRule(LayerRule):
    """``nn.Embedding``: sample b's gradient row v is ``sum over t with I[b,t] = v of G[b,t]``.

    Norms use the index-equality Gram form ``sum_{t,s} [I_bt = I_bs] <G_bt, G_bs>`` (or, for
    long sequences, a segment sum over unique (sample, index) keys); dots gather rows of the
    vector; weighted sums scatter into [num, dim]; only :meth:`per_sample` builds the dense
    [B, num, dim] tensor. Positions at ``padding_idx`` get no gradient, as in ``nn.Embedding``.
    """

    @override
    def supports(self, module: nn.Module) -> bool:
        return _weight_and_bias_only(module)

    @override
    def check(self, module: nn.Module, name: str) -> None:
        if cast(nn.Embedding, module).scale_grad_by_freq:
            raise ValueError(
                f"model: nn.Embedding '{name}' has scale_grad_by_freq=True, which scales by "
                "frequencies over the whole batch; per-sample gradients are undefined"
            )

    def _ig(self, layer: CapturedLayer) -> tuple[Tensor, Tensor]:
        if "ig" not in layer.cache:
            module, B = cast(nn.Embedding, layer.module), layer.batch_size
            indices, grads = [], []
            for call in layer.calls:
                idx = layer.batched(call.input()).reshape(B, -1)
                G = call.grad_output.reshape(B, -1, module.embedding_dim)
                if module.padding_idx is not None:
                    G = G.masked_fill((idx == module.padding_idx).unsqueeze(-1), 0)
                indices.append(idx)
                grads.append(G)
            layer.cache["ig"] = (torch.cat(indices, 1), torch.cat(grads, 1))
        return layer.cache["ig"]

    @override
    def sq_norm(self, layer: CapturedLayer, names: set[str]) -> Tensor:
        idx, G = self._ig(layer)
        B, T = idx.shape
        if T <= EMBEDDING_GRAM_MAX_T:
            same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(G.dtype)
            return (torch.bmm(G, G.transpose(1, 2)) * same).sum((1, 2))
        num = cast(nn.Embedding, layer.module).num_embeddings
        keys = idx + num * torch.arange(B, device=idx.device).unsqueeze(1)
        unique, inverse = torch.unique(keys, return_inverse=True)
        rows = G.new_zeros(unique.numel(), G.shape[-1])
        rows.index_add_(0, inverse.reshape(-1), G.reshape(-1, G.shape[-1]))
        return G.new_zeros(B).index_add_(0, unique // num, rows.pow(2).sum(1))

    @override
    def dot(self, layer: CapturedLayer, vectors: dict[str, Tensor]) -> Tensor:
        idx, G = self._ig(layer)
        return (G * vectors["weight"][idx]).sum((1, 2))

    @override
    def weighted_sum(self, layer: CapturedLayer, names: set[str], w: Tensor) -> dict[str, Tensor]:
        idx, G = self._ig(layer)
        out = G.new_zeros(cast(nn.Embedding, layer.module).weight.shape)
        out.index_add_(0, idx.reshape(-1), (G * w.view(-1, 1, 1)).reshape(-1, G.shape[-1]))
        return {"weight": out}

    @override
    def per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        idx, G = self._ig(layer)
        B, num, dim = layer.batch_size, cast(nn.Embedding, layer.module).num_embeddings, G.shape[-1]
        keys = idx + num * torch.arange(B, device=idx.device).unsqueeze(1)
        out = G.new_zeros(B * num, dim).index_add_(0, keys.reshape(-1), G.reshape(-1, dim))
        return {"weight": out.view(B, num, dim)}


class _AffineNormRule(MaterialisingRule):
    """Affine normalisation: ``y = x_hat * weight + bias`` elementwise along the param shape.

    Per-sample ``d weight = sum over positions of g * x_hat`` and ``d bias = sum of g``; both
    are as small as the parameter, so they are materialised.
    """

    #: Name of the module's ``forward`` argument, for a call that passes it by keyword.
    input_name = "input"

    @override
    def supports(self, module: nn.Module) -> bool:
        return _weight_and_bias_only(module)

    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        """``x_hat``, the normalised input without the affine transform."""
        raise NotImplementedError

    def to_rows(self, module: nn.Module, t: Tensor) -> Tensor:
        """Reshape an input-shaped tensor to [B, positions, param numel]."""
        return t.reshape(t.shape[0], -1, cast(Tensor, module.weight).numel())

    @override
    def compute_per_sample(self, layer: CapturedLayer, names: set[str]) -> dict[str, Tensor]:
        module, B = layer.module, layer.batch_size
        out: dict[str, Tensor] = {}
        for call in layer.calls:
            x = layer.batched(call.input(self.input_name), min_dim=2).detach()
            g = self.to_rows(module, call.grad_output)
            parts = {}
            if "weight" in names:
                parts["weight"] = (g * self.to_rows(module, self.normalise(module, x))).sum(1)
            if "bias" in names:
                parts["bias"] = g.sum(1)
            for n, v in parts.items():
                v = v.reshape(B, *getattr(module, n).shape)
                out[n] = out[n] + v if n in out else v
        return out


@register_rule(nn.LayerNorm)
class LayerNormRule(_AffineNormRule):
    """``nn.LayerNorm`` with ``elementwise_affine=True`` (with or without bias)."""

    @override
    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.LayerNorm, module)
        return F.layer_norm(x, norm.normalized_shape, eps=norm.eps)


@register_rule(nn.RMSNorm)
class RMSNormRule(_AffineNormRule):
    """``nn.RMSNorm`` with ``elementwise_affine=True`` (weight only)."""

    input_name = "x"  # nn.RMSNorm.forward(x), not (input)

    @override
    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.RMSNorm, module)
        return F.rms_norm(x, norm.normalized_shape, eps=norm.eps)


@register_rule(nn.GroupNorm)
class GroupNormRule(_AffineNormRule):
    """``nn.GroupNorm`` with ``affine=True`` on inputs [B, C, *]; parameters are per channel."""

    @override
    def normalise(self, module: nn.Module, x: Tensor) -> Tensor:
        norm = cast(nn.GroupNorm, module)
        return F.group_norm(x, norm.num_groups, eps=norm.eps)

    @override
    def to_rows(self, module: nn.Module, t: Tensor) -> Tensor:
        # Channels are dim 1, so positions are the trailing dims: [B, C, L] -> [B, L, C].
        return t.reshape(t.shape[0], cast(nn.GroupNorm, module).num_channels, -1).transpose(1, 2)
