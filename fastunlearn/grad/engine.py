"""Per-sample gradients of any ``nn.Module`` from one forward and one backward pass.

Forward hooks capture each parameterised layer's inputs and the autograd edges of its
outputs; one ``torch.autograd.grad`` call gives the loss gradients w.r.t. those outputs
(never touching ``.grad``), and the layer rules in :mod:`.layers` (or the ``torch.func``
fallback in :mod:`.fallback`) turn them into per-sample norms, dot products, clipped sums or
materialised gradients. The gradient edges are taken when the layer returns, so a later
in-place op on its output (``ReLU(inplace=True)``) does not change what is captured.

Parameters must reach the loss through their own module's calls. A selected parameter of a
module that never runs but is read directly (``nn.MultiheadAttention`` uses
``out_proj.weight`` without calling ``out_proj``) raises a ``ValueError`` naming the layer
(its gradients cannot be captured), and so does one read directly *and* through its
running module (``emb(t) @ emb.weight.T``; found in the autograd graph by :mod:`.uses` on
an engine's first call), which would get only the module's share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten, tree_unflatten

from .._batch_norm import uses_batch_statistics
from .._model_inputs import refuse_input_dtype
from .._numbers import as_float, is_real
from .._numbers import is_finite as _finite
from ..influence.arguments import _check_target_range
from ..influence.gradients import default_loss
from ..ops.per_sample import clip_weights
from .fallback import FunctorchRule
from .layers import CapturedLayer, LayerCall, LayerRule, find_rule
from .reduction import check_declared_reduction
from .uses import first_reaching, nodes_inside_call, reads_outside_owners

if TYPE_CHECKING:
    import numpy as np

__all__ = ["PerSampleGradients", "LossFn"]

#: ``loss_fn(outputs, targets)``: a scalar reduced over the batch as ``loss_reduction`` says,
#: or a [B] tensor of per-sample losses.
LossFn = Callable[[Any, Any], Tensor]

_REDUCTIONS = ("sum", "mean")
_FALLBACK = FunctorchRule()


class _Layer:
    """A module with selected direct parameters, and how to handle it."""

    def __init__(self, name: str, module: nn.Module, names: dict[str, str]) -> None:
        self.name = name
        self.module = module
        self.names = names  # local parameter name -> qualified name in the model

    def rule(self) -> LayerRule:
        return find_rule(self.module) or _FALLBACK


class _Pending:
    """What a forward hook records for one call, before the backward pass."""

    def __init__(self, args: tuple, kwargs: dict, edges: dict[int, GradientEdge],
                 outputs: dict[int, Tensor] | None = None) -> None:
        self.args, self.kwargs, self.edges, self.outputs = args, kwargs, edges, outputs
        self.versions = [t._version for t in tree_flatten((args, kwargs))[0]
                         if isinstance(t, Tensor)]


class PerSampleGradients:
    """Per-sample gradients of a model's parameters, their norms, dots and clipped sums.

    Each method runs the model once forward and once backward on a batch, with hooks that
    are removed before it returns; the model's parameters, ``.grad`` fields, buffers other
    than the model's own forward updates, and training/eval mode are left as they were.
    The one forward pass is the model's own: an ``nn.Embedding`` with ``max_norm``
    renormalises the rows it looks up in place, exactly as one call ``model(inputs)``
    would (the engine's extra layout probes change nothing further).

    Per-sample gradients are gradients of the per-sample losses l_b: ``loss_fn(outputs,
    targets)`` returns either a [B] tensor of per-sample losses or a scalar reduced over the
    batch as ``loss_reduction`` says: ``"sum"`` (``sum_b l_b``, e.g. ``CrossEntropyLoss(
    reduction="sum")``) or ``"mean"`` (``sum_b l_b / B``; the output gradients are then
    multiplied by B, the same scaling as Opacus' ``GradSampleModule``), so both give the
    same results. A scalar loss is checked against the declared reduction on every call
    (the loss of one row duplicated doubles for a sum and stays for a mean; two loss
    evaluations on two rows): a mismatch, which would scale every gradient by B or 1/B, is
    a ValueError. The batch is dim 0 of every layer's inputs. The targets of a loss known
    to take class labels (``nn.CrossEntropyLoss``, ``nn.NLLLoss``,
    :func:`fastunlearn.influence.default_loss`) are checked before it runs: integer labels
    inside the outputs' classes (dim 1; the loss's ``ignore_index`` aside), or for
    cross-entropy class probabilities shaped like the outputs.

    Native rules: ``nn.Linear`` and ``nn.Embedding`` (no materialisation for norms, dots and
    clipped sums); ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``; dots and clipped sums as
    convolutions without materialising, norms from small per-sample weight gradients built
    in chunks, or the Gram form when cheaper, see :mod:`fastunlearn.grad.conv`);
    ``nn.LayerNorm``, ``nn.GroupNorm`` and ``nn.RMSNorm`` materialise their small per-channel
    gradients. Every
    other module with direct parameters uses the ``torch.func`` fallback (recurrent layers
    and ``nn.MultiheadAttention`` with their own batch dims, see :mod:`.fallback`), whose
    per-sample re-runs must reproduce the layer's outputs. A layer input with another dim of
    size B (time-first ``[T, B, C]`` with ``T == B``) is checked to have the batch where its
    rule splits it, by two extra eval-mode forwards (once per shape signature). A parameter shared
    by several modules gets the sum of their contributions (materialised for norms). A
    batch-norm layer that normalises with the batch's statistics (training mode, or
    ``track_running_stats=False``) after a selected layer mixes the samples and is refused.

    Args:
        model: The model. Called as ``model(inputs)``, ``model(*inputs)`` for a tuple or
            list, ``model(**inputs)`` for a mapping.
        params: Parameters to differentiate, as qualified names or the parameter tensors;
            default: every parameter with ``requires_grad``.
        loss_reduction: ``"sum"`` or ``"mean"``, see above.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``params`` is not an iterable, or a
            selected parameter is not float32/float64 (float16 and bfloat16 are refused,
            here and on every call).
        ValueError: ``loss_reduction`` is unknown, or ``params`` is empty, names a tensor
            that is not a parameter of ``model``, one that does not require grad, or one of
            a parametrization (``torch.nn.utils.parametrize``, e.g. the new-style
            ``parametrizations.weight_norm``: not supported).

    """

    def __init__(
        self,
        model: nn.Module,
        *,
        params: Iterable[str | Tensor] | None = None,
        loss_reduction: str = "sum",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if loss_reduction not in _REDUCTIONS:
            raise ValueError(f"loss_reduction: expected 'sum' or 'mean', got {loss_reduction!r}")
        self.model = model
        self.loss_reduction = loss_reduction
        named = dict(model.named_parameters())
        self.param_names: tuple[str, ...] = self._select(named, params)
        self.params: dict[str, Tensor] = {n: named[n] for n in self.param_names}
        self._check_dtypes()

        by_id = {id(p): n for n, p in self.params.items()}
        self._layers: list[_Layer] = []
        uses: dict[str, int] = {}
        for mname, module in model.named_modules():
            local = {k: by_id[id(p)] for k, p in module._parameters.items()
                     if p is not None and id(p) in by_id}
            if local and isinstance(module, parametrize.ParametrizationList):
                owner = mname.rsplit(".parametrizations.", 1)[0]
                raise ValueError(
                    f"params: {sorted(local.values())[0]!r} belongs to a parametrization of "
                    f"layer {owner!r} (torch.nn.utils.parametrize, e.g. "
                    "parametrizations.weight_norm), which per-sample gradients do not "
                    "support; leave its parameters out of 'params', or fold it into the "
                    "layer first (parametrize.remove_parametrizations)"
                )
            if local:
                self._layers.append(_Layer(mname, module, local))
                for full in local.values():
                    uses[full] = uses.get(full, 0) + 1
        # Norms of a parameter used by several modules need the summed gradient itself.
        self._tied = {n for n, k in uses.items() if k > 1}
        self._uses_checked = False
        self._layouts_checked: set[tuple] = set()

    @staticmethod
    def _select(named: Mapping[str, Tensor], params: Iterable[str | Tensor] | None) -> tuple:
        if params is None:
            chosen = {n for n, p in named.items() if p.requires_grad}
        else:
            if isinstance(params, (str, Tensor)):
                raise ValueError("params: expected an iterable of names or parameters")
            if not isinstance(params, Iterable):
                raise TypeError(
                    f"params: expected an iterable of names or parameters, got "
                    f"{type(params).__name__}"
                )
            by_id = {id(p): n for n, p in named.items()}
            chosen = set()
            for p in params:
                if isinstance(p, str):
                    if p not in named:
                        raise ValueError(f"params: '{p}' is not a parameter of the model")
                    chosen.add(p)
                elif isinstance(p, Tensor) and id(p) in by_id:
                    chosen.add(by_id[id(p)])
                else:
                    raise ValueError(
                        f"params: got a {type(p).__name__} that is not a parameter of the model"
                    )
            for n in chosen:
                if not named[n].requires_grad:
                    raise ValueError(f"params: '{n}' does not require grad")
        if not chosen:
            raise ValueError("params: no parameters selected")
        return tuple(n for n in named if n in chosen)

    def _check_dtypes(self) -> None:
        """Refuse selected parameters that are not float32/float64 (checked on every call).

        float16/bfloat16 used to crash inside the native linear-like ops ("argument 'A' must
        be float32 or float64") for nn.Linear and narrow convolutions while other layers ran,
        and float16 squared norms overflow to inf from a gradient norm of 256, which turns a
        clipping factor into 0 without any error.
        """
        for n, p in self.params.items():
            if p.dtype not in (torch.float32, torch.float64):
                raise TypeError(
                    f"params: parameter '{n}' has dtype {p.dtype}; per-sample gradients need "
                    "float32 or float64 parameters (convert the model with .float())"
                )

    def _check_requires_grad(self) -> None:
        """Refuse selected parameters frozen since construction (checked on every call).

        A layer whose selected parameters all stopped requiring grad has outputs without
        gradients, so they got per-sample gradients of zero, while one frozen next to a
        parameter that still requires grad got its true per-sample gradients.
        """
        frozen = [n for n, p in self.params.items() if not p.requires_grad]
        if frozen:
            raise ValueError(
                f"params: {frozen} no longer require grad (frozen after the engine was built); "
                "unfreeze them, or build an engine without them"
            )

    # ---- public API ----------------------------------------------------------------------

    def sq_norms(self, inputs: Any, targets: Any, loss_fn: LossFn) -> Tensor:
        """Total squared per-sample gradient norm over the selected parameters.

        Args:
            inputs: Model inputs with the batch (size B) as dim 0.
            targets: Passed to ``loss_fn``; if a tensor, its dim 0 must be B.
            loss_fn: ``loss_fn(outputs, targets)``, see the class docstring.

        Returns:
            [B] tensor ``||g_b||^2``.

        Raises:
            TypeError: a selected parameter is no longer float32/float64, ``loss_fn`` is
                not callable, the model fails on floating ``inputs`` of another dtype than
                its parameters, or a classification loss (``nn.CrossEntropyLoss``,
                ``nn.NLLLoss``, :func:`~fastunlearn.influence.default_loss`) gets
                ``targets`` that are neither integer labels nor (cross-entropy) class
                probabilities shaped like the outputs.
            ValueError: ``inputs``/``targets``/``loss_fn`` output have inconsistent batch
                sizes, ``loss_fn`` returns no real floating-point tensor, a layer's input
                does not have the batch first, such a classification loss gets labels
                outside the outputs' classes (its ``ignore_index`` aside), ``loss_fn``
                fails on ``targets`` with torch's IndexError or RuntimeError (chained), a
                batch-norm layer using batch statistics follows a selected layer, or a
                selected parameter no longer requires grad.

        """
        layers, B = self._run(inputs, targets, loss_fn)
        return self._sq_norms(layers, B)

    def dots(
        self, inputs: Any, targets: Any, loss_fn: LossFn, vector: Mapping[str, Tensor] | Tensor
    ) -> Tensor:
        """Per-sample dot products ``<g_b, vector>``, without materialising for native layers.

        Args:
            inputs: Model inputs with the batch (size B) as dim 0.
            targets: Passed to ``loss_fn``; if a tensor, its dim 0 must be B.
            loss_fn: ``loss_fn(outputs, targets)``, see the class docstring.
            vector: Either a mapping from every selected parameter name to a tensor of that
                parameter's shape, or a flat tensor of the total number of selected
                elements, in the order of :attr:`param_names`.

        Returns:
            [B] tensor.

        Raises:
            TypeError: as :meth:`sq_norms`.
            ValueError: bad batch sizes (as :meth:`sq_norms`), or ``vector`` has missing or
                unknown names, wrong shapes or sizes, or lives on another device.

        """
        vectors = self._split_vector(vector)
        layers, B = self._run(inputs, targets, loss_fn)
        total = self._zeros(B)
        for layer, rule, cap in layers:
            total = total + rule.dot(cap, {k: vectors[f] for k, f in layer.names.items()})
        return total

    def clipped_sum(
        self, inputs: Any, targets: Any, loss_fn: LossFn, max_norm: float | np.floating
    ) -> dict[str, Tensor]:
        """DP-SGD sum of per-sample gradients each clipped to norm ``max_norm``.

        ``sum_b c_b g_b`` with ``c_b = clip_weights(||g_b||^2, max_norm)`` (``min(1,
        max_norm / (||g_b|| + 1e-6))``, as Opacus), computed book-keeping style from the
        per-sample norms and one weighted-sum GEMM per layer, without a second backward
        pass. For the mean over the batch, divide by B (or by the expected batch size, as
        DP-SGD does).

        Args:
            inputs: Model inputs with the batch (size B) as dim 0.
            targets: Passed to ``loss_fn``; if a tensor, its dim 0 must be B.
            loss_fn: ``loss_fn(outputs, targets)``, see the class docstring.
            max_norm: Clipping threshold, finite and > 0.

        Returns:
            Parameter name -> parameter-shaped tensor, in the order of :attr:`param_names`.

        Raises:
            TypeError: as :meth:`sq_norms`.
            ValueError: bad batch sizes (as :meth:`sq_norms`) or ``max_norm`` not finite > 0.

        """
        if not is_real(max_norm) or not (_finite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm: expected a finite number > 0, got {max_norm!r}")
        layers, B = self._run(inputs, targets, loss_fn)
        w = clip_weights(self._sq_norms(layers, B), as_float(max_norm))
        out = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
               for n, p in self.params.items()}
        for layer, rule, cap in layers:
            sums = rule.weighted_sum(cap, set(layer.names), w.to(_grad_dtype(cap)))
            for local, g in sums.items():
                full = layer.names[local]
                out[full] += g.reshape(out[full].shape)
        return out

    def per_sample(self, inputs: Any, targets: Any, loss_fn: LossFn) -> dict[str, Tensor]:
        """Materialised per-sample gradients.

        Args:
            inputs: Model inputs with the batch (size B) as dim 0.
            targets: Passed to ``loss_fn``; if a tensor, its dim 0 must be B.
            loss_fn: ``loss_fn(outputs, targets)``, see the class docstring.

        Returns:
            Parameter name -> [B, *param.shape], in the order of :attr:`param_names`.

        Raises:
            TypeError: as :meth:`sq_norms`.
            ValueError: bad batch sizes (as :meth:`sq_norms`).

        """
        layers, B = self._run(inputs, targets, loss_fn)
        return self._per_sample(layers, B, set(self.param_names))

    # ---- internals -----------------------------------------------------------------------

    def _zeros(self, B: int) -> Tensor:
        p = next(iter(self.params.values()))
        return torch.zeros(B, dtype=p.dtype, device=p.device)

    def _per_sample(self, layers: list, B: int, wanted: set[str]) -> dict[str, Tensor]:
        out = {n: torch.zeros(B, *p.shape, dtype=p.dtype, device=p.device)
               for n, p in self.params.items() if n in wanted}
        for layer, rule, cap in layers:
            local = {k for k, f in layer.names.items() if f in wanted}
            if local:
                for k, g in rule.per_sample(cap, local).items():
                    out[layer.names[k]] += g
        return out

    def _sq_norms(self, layers: list, B: int) -> Tensor:
        total = self._zeros(B)
        for layer, rule, cap in layers:
            simple = {k for k, f in layer.names.items() if f not in self._tied}
            if simple:
                total = total + rule.sq_norm(cap, simple)
        if self._tied:
            for g in self._per_sample(layers, B, self._tied).values():
                total = total + g.flatten(1).pow(2).sum(1)
        return total

    def _split_vector(self, vector: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
        device = next(iter(self.params.values())).device
        if isinstance(vector, Tensor):
            total = sum(p.numel() for p in self.params.values())
            if vector.dim() != 1 or vector.numel() != total:
                raise ValueError(
                    f"vector: expected a flat tensor of {total} elements (the selected "
                    f"parameters), got shape {tuple(vector.shape)}"
                )
            parts = torch.split(vector, [p.numel() for p in self.params.values()])
            pairs = zip(self.params.items(), parts, strict=True)
            vector = {n: v.view(p.shape) for (n, p), v in pairs}
        elif isinstance(vector, Mapping):
            missing = [n for n in self.param_names if n not in vector]
            unknown = [n for n in vector if n not in self.params]
            if missing or unknown:
                raise ValueError(
                    f"vector: keys must be the selected parameters; missing {missing}, "
                    f"unknown {unknown}"
                )
            for n, p in self.params.items():
                v = vector[n]
                if not isinstance(v, Tensor) or v.shape != p.shape:
                    got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                    raise ValueError(
                        f"vector: '{n}' must have shape {tuple(p.shape)}, got {got}"
                    )
        else:
            raise ValueError(
                f"vector: expected a mapping or a tensor, got {type(vector).__name__}"
            )
        out = {}
        for n, p in self.params.items():
            v = vector[n]
            if v.device != device:
                raise ValueError(f"vector: '{n}' is on {v.device}, the model on {device}")
            if v.is_complex():  # .to(p.dtype) would drop the imaginary part
                raise ValueError(f"vector: '{n}' is complex ({v.dtype}); expected real values")
            out[n] = v.detach().to(p.dtype)
        return out

    def _run(
        self, inputs: Any, targets: Any, loss_fn: LossFn
    ) -> tuple[list[tuple[_Layer, LayerRule, CapturedLayer]], int]:
        """One forward and one backward pass; the captured layers the loss depends on."""
        self._check_dtypes()  # the model may have been converted since construction
        self._check_requires_grad()
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
        B = _batch_size(inputs)
        if isinstance(targets, Tensor) and (targets.dim() == 0 or targets.shape[0] != B):
            raise ValueError(
                f"targets: leading dim must be the batch size {B} of inputs, got shape "
                f"{tuple(targets.shape)}"
            )
        rules = []
        for layer in self._layers:
            rule = layer.rule()
            rule.check(layer.module, layer.name)
            rules.append(rule)

        pending: list[list[_Pending]] = [[] for _ in self._layers]
        handles = []

        def make_hook(slot: list[_Pending], keep: bool) -> Callable:
            def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
                leaves = tree_flatten(output)[0]
                edges = {i: get_gradient_edge(t) for i, t in enumerate(leaves)
                         if isinstance(t, Tensor) and t.requires_grad}
                # A copy: a later in-place op on the output must not change what is kept.
                outputs = {i: leaves[i].detach().clone() for i in edges} if keep else None
                slot.append(_Pending(args, kwargs, edges, outputs))

            return hook

        # Inputs of batch-norm layers that normalise with the batch's statistics: they mix
        # the samples, which is wrong for the layers before them (checked after the forward).
        mixed: list[tuple[str, Node]] = []

        def make_mixing_hook(name: str) -> Callable:
            def hook(module: nn.Module, args: tuple) -> None:
                mixed.extend((name, t.grad_fn) for t in tree_flatten(args)[0]
                             if isinstance(t, Tensor) and t.grad_fn is not None)

            return hook

        try:
            for name, module in self.model.named_modules():
                if uses_batch_statistics(module):
                    handles.append(module.register_forward_pre_hook(make_mixing_hook(name)))
            for layer, rule, slot in zip(self._layers, rules, pending, strict=True):
                handles.append(layer.module.register_forward_hook(
                    make_hook(slot, rule.keeps_outputs), with_kwargs=True
                ))
            with torch.enable_grad():
                outputs = _forward(self.model, inputs)
                _check_class_targets(loss_fn, outputs, targets)
                loss = _evaluate_loss(loss_fn, outputs, targets)
        finally:
            for h in handles:
                h.remove()
        if mixed:
            self._check_not_mixed(mixed, pending)
        reduced = self._reduce(loss, B)  # checks the loss before the reduction check runs
        if loss.dim() == 0:
            check_declared_reduction(loss_fn, outputs, targets, B, self.loss_reduction)
        loss = reduced

        if not self._uses_checked and loss.requires_grad:
            self._check_reads(loss, pending)
        flat = [(li, ci, i, e) for li, calls in enumerate(pending)
                for ci, call in enumerate(calls) for i, e in call.edges.items()]
        # Selected parameters of layers that never ran: the loss may still use them directly
        # (nn.MultiheadAttention reads out_proj.weight without calling out_proj).
        # (A parameter tied to a layer that did run is that layer's: not idle.)
        ran = {full for li, calls in enumerate(pending) if calls
               for full in self._layers[li].names.values()}
        idle = [(self._layers[li], self.params[full]) for li, calls in enumerate(pending)
                if not calls for full in self._layers[li].names.values() if full not in ran]
        grads: list[Tensor | None] = [None] * len(flat)
        if (flat or idle) and loss.requires_grad:
            wrt: list[GradientEdge | Tensor] = [e for *_, e in flat]
            wrt += [p for _, p in idle]
            # torch.autograd.grad takes a mix of tensors and edges; its stub does not
            grads = list(torch.autograd.grad(
                loss, wrt, allow_unused=True  # type: ignore[arg-type]
            ))
            for (layer, _), g in zip(idle, grads[len(flat):], strict=True):
                if g is not None:
                    raise ValueError(
                        f"model: parameters of layer '{layer.name}' are used without calling "
                        "the layer (e.g. nn.MultiheadAttention's out_proj); their per-sample "
                        "gradients cannot be captured"
                    )
            grads = grads[:len(flat)]
        got: dict[tuple[int, int], dict[int, Tensor]] = {}
        for (li, ci, i, _), g in zip(flat, grads, strict=True):
            if g is not None:
                got.setdefault((li, ci), {})[i] = g

        layers = []
        for li, (layer, rule, calls) in enumerate(zip(self._layers, rules, pending, strict=True)):
            kept = []
            for ci, call in enumerate(calls):
                if (li, ci) not in got:
                    continue  # the loss does not depend on this call
                versions = [t._version for t in tree_flatten((call.args, call.kwargs))[0]
                            if isinstance(t, Tensor)]
                if versions != call.versions:
                    raise ValueError(
                        f"model: an input of layer '{layer.name}' was modified in place after "
                        "the layer ran; its per-sample gradients cannot be recovered"
                    )
                kept.append(LayerCall(call.args, call.kwargs, got[(li, ci)], call.outputs))
            if kept:
                layers.append((layer, rule, CapturedLayer(layer.name, layer.module, B, kept)))
        self._check_layouts(inputs, layers, B)
        return layers, B

    def _check_layouts(self, inputs: Any, layers: list, B: int) -> None:
        """Refuse layers whose inputs' batch dim (as their rules see it) is not the batch.

        A time-first ``[T, B, C]`` input with ``T == B`` (``nn.TransformerEncoderLayer(
        batch_first=False)``'s linear layers) passes every shape check, and a position-wise
        rule would sum sample b's gradient over time step b. Only inputs with another dim of
        size B can be fooled; for those, the model is run twice more in eval mode (no
        dropout), on the inputs as given and with the samples rolled by one:
        each such layer input must roll along its batch dim with them. A shape signature that
        passed is not checked again.
        """
        if B < 2:
            return
        suspects = []  # (layer index, call index, leaf index, batch dim, shape)
        for layer, rule, cap in layers:
            li = next(i for i, known in enumerate(self._layers) if known is layer)
            for ci, call in enumerate(cap.calls):
                leaves = tree_flatten((call.args, call.kwargs))[0]
                for k, d in enumerate(rule.input_batch_dims(cap, call, leaves)):
                    t = leaves[k]
                    if d is None or not isinstance(t, Tensor) or t.dim() < 2:
                        continue
                    others = t.shape[:d] + t.shape[d + 1:]
                    if t.shape[d] == B and B in others:
                        suspects.append((li, ci, k, d, tuple(t.shape)))
        if not suspects:
            return
        key = tuple(suspects)
        if key in self._layouts_checked:
            return
        wanted = {li for li, *_ in suspects}
        plain, rolled = (self._probe(inputs, B, wanted, shift) for shift in (0, 1))
        for li, ci, k, d, _ in suspects:
            a, b = plain[li], rolled[li]
            if len(a) != len(b) or ci >= len(a):
                continue  # data-dependent calls: nothing to compare
            x, y = a[ci][k], b[ci][k]
            if not isinstance(y, Tensor) or not _reproduces(y, x.roll(1, d)):
                name = self._layers[li].name
                raise ValueError(
                    f"model: layer '{name}' got an input of shape {tuple(x.shape)} whose dim {d} "
                    f"has the batch size {B} but is not the batch (a time-first [T, B, ...] "
                    "tensor with T equal to the batch size?), or the model mixes the samples "
                    "of a batch; its per-sample gradients would be wrong"
                )
        self._layouts_checked.add(key)

    def _probe(self, inputs: Any, B: int, wanted: set[int], shift: int) -> dict[int, list]:
        """Tensor leaves of the calls of layers ``wanted`` in an extra eval-mode forward."""
        seen: dict[int, list] = {li: [] for li in wanted}
        leaves, spec = tree_flatten(inputs)
        if shift:
            leaves = [t.roll(shift, 0) if isinstance(t, Tensor) and t.dim() > 0
                      and t.shape[0] == B else t for t in leaves]
        modes = [(m, m.training) for m in self.model.modules()]
        handles = []

        def make_hook(slot: list) -> Callable:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                slot.append([t.detach().clone() if isinstance(t, Tensor) else t
                             for t in tree_flatten((args, kwargs))[0]])

            return hook

        try:
            for li in wanted:
                handles.append(self._layers[li].module.register_forward_pre_hook(
                    make_hook(seen[li]), with_kwargs=True))
            self.model.eval()
            # With gradients on, as in the real pass: no inference-only fast paths that skip
            # submodule calls (nn.TransformerEncoderLayer's); the graph is dropped at once.
            with torch.enable_grad():
                _call(self.model, tree_unflatten(leaves, spec))
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training
        return seen

    def _check_not_mixed(self, mixed: list[tuple[str, Node]],
                         pending: list[list[_Pending]]) -> None:
        """Refuse batch-norm layers using batch statistics downstream of a selected layer.

        Such a layer (training mode, or eval mode with ``track_running_stats=False``) mixes
        the samples of a batch, so the loss gradient at an earlier layer's output for sample
        b also holds the other samples' losses: its per-sample gradients would be wrong. One
        without selected parameters is not a layer of the engine, so nothing else checks it.
        """
        outputs = {e.node for calls in pending for call in calls for e in call.edges.values()}
        name = first_reaching(mixed, outputs)
        if name is not None:
            raise ValueError(
                f"model: batch-norm layer '{name}' normalises with the statistics of the batch "
                "(training mode, or track_running_stats=False), which mixes the samples of a "
                "batch; the per-sample gradients of the layers before it are undefined (use "
                "eval mode, or GroupNorm/LayerNorm)"
            )

    def _check_reads(self, loss: Tensor, pending: list[list[_Pending]]) -> None:
        """Refuse parameters the loss also reads outside their layers' calls.

        Such a parameter would get only its layers' share of the gradient. The graph is
        walked once per engine (on the first call whose loss has one): a model whose
        forward changes between calls is assumed to read its parameters the same way.
        Parameters of layers that never ran are left to the uncalled-layer check.
        """
        owned: dict[str, set[Node]] = {}
        for layer, calls in zip(self._layers, pending, strict=True):
            for call in calls:
                inside = nodes_inside_call((call.args, call.kwargs),
                                           [e.node for e in call.edges.values()])
                for full in layer.names.values():
                    owned.setdefault(full, set()).update(inside)
        checked = {n: p for n, p in self.params.items() if n in owned}
        outside = reads_outside_owners(loss, checked, owned)
        if outside:
            raise ValueError(
                f"model: parameter(s) {outside} are read outside the calls of the layers "
                "that own them (e.g. `emb(t) @ emb.weight.T`); their per-sample gradients "
                "would miss that use. Route the use through a module (a tied nn.Linear) or "
                "leave these parameters out of 'params'"
            )
        self._uses_checked = True

    def _reduce(self, loss: Any, B: int) -> Tensor:
        if not isinstance(loss, Tensor):
            raise ValueError(f"loss_fn: must return a tensor, got {type(loss).__name__}")
        if not loss.is_floating_point():
            raise ValueError(
                f"loss_fn: must return a real floating-point tensor, got dtype {loss.dtype}"
            )
        if loss.dim() == 1 and loss.shape[0] == B:
            return loss.sum()
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn: must return a scalar or a [B] = [{B}] tensor, got shape "
                f"{tuple(loss.shape)}"
            )
        # The mean's gradients carry a 1/B; scaling the loss undoes it for every layer.
        return loss * B if self.loss_reduction == "mean" else loss


def _reproduces(got: Tensor, want: Tensor) -> bool:
    """Whether ``got`` equals ``want`` in shape and, to sqrt(eps) of the dtype, in value."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if not want.is_floating_point() or want.numel() == 0:
        return bool(torch.equal(got, want))
    tol = torch.finfo(want.dtype).eps ** 0.5
    scale = float(want.abs().max())
    return bool(torch.allclose(got, want, rtol=tol, atol=tol * max(scale, 1e-30), equal_nan=True))


def _grad_dtype(cap: CapturedLayer) -> torch.dtype:
    """Return the dtype of a layer's output gradients (its gradients are computed in it)."""
    return next(iter(cap.calls[0].grads.values())).dtype


def _batch_size(inputs: Any) -> int:
    leaves = [t for t in tree_flatten(inputs)[0] if isinstance(t, Tensor)]
    if not leaves:
        raise ValueError("inputs: expected a tensor or a tuple/list/mapping holding tensors")
    if leaves[0].dim() == 0 or leaves[0].shape[0] == 0:
        raise ValueError(
            f"inputs: the first tensor must have a non-empty batch dim 0, got shape "
            f"{tuple(leaves[0].shape)}"
        )
    return leaves[0].shape[0]


def _forward(model: nn.Module, inputs: Any) -> Any:
    """``model`` on ``inputs``; a failure on floating inputs of another dtype is named.

    Only a forward pass that fails is looked into (a model may take inputs of another
    dtype and convert them itself): a floating input whose dtype is not the parameters'
    one dtype is then a TypeError naming ``inputs``; other failures are raised unchanged.
    """
    try:
        return _call(model, inputs)
    except RuntimeError as exc:
        for leaf in tree_flatten(inputs)[0]:
            if isinstance(leaf, Tensor) and leaf.is_floating_point():
                refuse_input_dtype(model, leaf, "inputs", exc)
        raise


def _class_label_loss(loss_fn: Any) -> tuple[bool, bool, int | None]:
    """Return ``(takes class labels, takes class probabilities, label it ignores)``.

    Only losses known to be classification losses take class labels here:
    ``nn.CrossEntropyLoss`` and ``nn.NLLLoss`` instances (whose ``ignore_index`` is their
    documented meaning of a label, not a mistake) and fastunlearn's
    :func:`~fastunlearn.influence.default_loss`; any other loss takes any targets.
    """
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return True, True, loss_fn.ignore_index
    if isinstance(loss_fn, nn.NLLLoss):
        return True, False, loss_fn.ignore_index
    return loss_fn is default_loss, True, None


def _check_class_targets(loss_fn: Any, outputs: Any, targets: Any) -> None:
    """Check the targets of a classification loss before it runs (see :func:`_class_label_loss`).

    Integer labels must be classes of the outputs (dim 1, as cross-entropy reads them);
    floating targets are class probabilities, shaped like the outputs. Raises TypeError or
    ValueError naming ``targets`` (torch's IndexError names nothing, and on CUDA it is a
    device-side assert).
    """
    labels, probabilities, ignored = _class_label_loss(loss_fn)
    if not (labels and isinstance(targets, Tensor) and isinstance(outputs, Tensor)
            and outputs.dim() >= 2):
        return
    if probabilities and targets.is_floating_point() and targets.shape == outputs.shape:
        return
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        shaped = (f" (or class probabilities shaped like the outputs "
                  f"{list(outputs.shape)})" if probabilities else "")
        name = "default_loss" if loss_fn is default_loss else type(loss_fn).__name__
        raise TypeError(f"'targets' must hold integer class labels for {name}{shaped}, got "
                        f"{targets.dtype} {list(targets.shape)}")
    kept = targets if ignored is None else targets[targets != ignored]
    _check_target_range("targets", kept, int(outputs.shape[1]))


def _evaluate_loss(loss_fn: LossFn, outputs: Any, targets: Any) -> Any:
    """``loss_fn(outputs, targets)``; torch's errors inside it named (chained) as ValueError.

    IndexError (a label outside the classes) and RuntimeError (e.g. targets of another
    dtype or shape) name no argument; out of memory is raised unchanged.
    """
    try:
        return loss_fn(outputs, targets)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, IndexError) as exc:
        shown = (f"(shape {list(targets.shape)}, dtype {targets.dtype})"
                 if isinstance(targets, Tensor) else f"({type(targets).__name__})")
        raise ValueError(f"loss_fn: cannot be evaluated on the model's outputs and 'targets' "
                         f"{shown}: {type(exc).__name__}: {exc}") from exc


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise ValueError(f"inputs: expected a tensor, tuple, list or mapping, got {type(inputs)}")
