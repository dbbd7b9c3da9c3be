"""Matrix-free Hessian of a network's loss w.r.t. a subset of its parameters (torch.func).

The selected parameters are flattened into one vector in the order of
``model.named_parameters()`` (registration order, tied parameters once), whatever order
``params`` lists them in. :func:`flatten_params` and :func:`unflatten_like` convert between
that vector and the list of parameter-shaped tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from .._batch_norm import uses_batch_statistics
from .._numbers import check_int, check_real
from .forward_ad import jvp
from .operators import LinearOperator
from .rnn_kernels import with_differentiable_rnn_kernels

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "NetworkHessianOperator",
    "selected_parameter_names",
    "params_vector",
    "flatten_params",
    "unflatten_like",
]

LossFn = Callable[[Any, Any], Tensor]
ParamSpec = Iterable[str | nn.Parameter] | None

_MODES = ("fwd-rev", "rev-rev")



def selected_parameter_names(model: nn.Module, params: ParamSpec = None) -> list[str]:
    """Names of the selected parameters, in ``model.named_parameters()`` order.

    Args:
        model: The network.
        params: None for all parameters with ``requires_grad``; otherwise an iterable of
            parameter names (as in ``named_parameters()``) and/or ``nn.Parameter`` objects of
            ``model``, each with ``requires_grad=True``. A single name is accepted too.

    Returns:
        The selected names, without duplicates, in registration order.

    Raises:
        TypeError: ``model`` is not an nn.Module, or ``params`` holds something else than
            names and parameters.
        ValueError: an unknown name, a tensor that is not a parameter of ``model``, a
            frozen parameter (``requires_grad=False``: it must stay fixed, as it does with
            ``params=None``), or an empty selection.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    if params is None:
        names = [n for n, p in named if p.requires_grad]
        if not names:
            raise ValueError("'params': the model has no trainable parameters")
        return names
    # a single name or parameter is accepted too
    given: Iterable[str | Tensor] = [params] if isinstance(params, (str, Tensor)) else params
    if not isinstance(given, Iterable):
        raise TypeError(f"'params' must be None, a name, a parameter or an iterable of them, "
                        f"got {type(given).__name__}")
    by_name = {n: p for n, p in named}
    by_id = {id(p): n for n, p in named}
    chosen: set[str] = set()
    for item in given:
        if isinstance(item, str):
            if item not in by_name:
                known = ", ".join(by_name) or "none"
                raise ValueError(f"'params': unknown parameter name {item!r} (known: {known})")
            chosen.add(item)
        elif isinstance(item, Tensor):
            if id(item) not in by_id:
                raise ValueError("'params': a given tensor is not a parameter of 'model'")
            chosen.add(by_id[id(item)])
        else:
            raise TypeError(
                f"'params' must hold parameter names or nn.Parameter objects, "
                f"got {type(item).__name__}"
            )
    if not chosen:
        raise ValueError("'params' selects no parameters")
    _check_trainable(by_name, chosen)
    return [n for n, _ in named if n in chosen]


def _check_trainable(by_name: dict[str, nn.Parameter], chosen: set[str]) -> None:
    """Raise ValueError naming the first explicitly selected frozen parameter."""
    for name, p in by_name.items():
        if name in chosen and not p.requires_grad:
            raise ValueError(f"'params': parameter {name!r} has requires_grad=False (frozen "
                             f"parameters are never updated; unfreeze it or leave it out)")


def flatten_params(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one vector (each flattened in row-major order).

    Args:
        tensors: Parameter-shaped tensors of one dtype and device.

    Returns:
        Tensor[P] with P the total number of elements.

    Raises:
        TypeError: ``tensors`` is not an iterable of tensors, or their dtypes differ.
        ValueError: ``tensors`` is empty, or on more than one device.

    """
    if not isinstance(tensors, Iterable) or isinstance(tensors, Tensor):
        raise TypeError(f"'tensors' must be an iterable of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError("'tensors' must hold at least one tensor")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"'tensors' must hold torch.Tensors, got {type(t).__name__}")
    first = tensors[0]
    for t in tensors[1:]:
        if t.dtype != first.dtype:  # torch.cat would promote silently
            raise TypeError(f"'tensors' must share one dtype, got {first.dtype} and {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"'tensors' must be on one device, got {first.device} and "
                             f"{t.device}")
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a vector into views shaped like ``like`` (inverse of :func:`flatten_params`).

    Args:
        vector: Tensor[P] with P = total number of elements of ``like``.
        like: Tensors giving the shapes.

    Returns:
        Views of ``vector``, one per tensor of ``like``.

    Raises:
        TypeError: ``vector`` is not a tensor, or ``like`` not a sequence of tensors.
        ValueError: ``vector`` is not 1-D or has the wrong length.

    """
    if not isinstance(vector, Tensor):
        raise TypeError(f"'vector' must be a torch.Tensor, got {type(vector).__name__}")
    if not isinstance(like, Iterable) or isinstance(like, Tensor):
        raise TypeError("'like' must be a sequence of torch.Tensors")
    like = list(like)  # once: a generator would be used up by the check below
    if any(not isinstance(t, Tensor) for t in like):
        raise TypeError("'like' must be a sequence of torch.Tensors")
    sizes = [t.numel() for t in like]
    if vector.ndim != 1 or vector.numel() != sum(sizes):
        raise ValueError(f"'vector' must have shape [{sum(sizes)}], got {list(vector.shape)}")
    return [chunk.view(t.shape) for chunk, t in zip(vector.split(sizes), like, strict=True)]


def params_vector(model: nn.Module, params: ParamSpec = None) -> Tensor:
    """Copy the selected parameters of ``model`` into one detached vector.

    Args:
        model: The network.
        params: Selection as in :func:`selected_parameter_names`.

    Returns:
        Tensor[P] in ``model.named_parameters()`` order.

    Raises:
        TypeError / ValueError: as :func:`selected_parameter_names`.

    """
    names = selected_parameter_names(model, params)
    named = dict(model.named_parameters())
    return flatten_params(named[n].detach() for n in names).clone()


#: Layers whose output in training mode is random (dropout, RReLU, the dropout inside
#: stacked RNNs and attention) or that update running statistics in place (batch/instance
#: norm tracking them): their loss is not a fixed function of the parameters there, so no
#: Hessian operator is defined.
_TRAIN_MODE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.dropout._DropoutNd,
    nn.RReLU,
    nn.modules.batchnorm._NormBase,
    nn.RNNBase,
    nn.MultiheadAttention,
)


def _random_or_stateful(module: nn.Module) -> bool:
    """Whether a training-mode layer of :data:`_TRAIN_MODE_LAYERS` is random or stateful."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0.0
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.track_running_stats
    if isinstance(module, nn.RNNBase):  # dropout acts between stacked layers only
        return module.dropout > 0.0 and module.num_layers > 1
    if isinstance(module, nn.MultiheadAttention):  # dropout on the attention weights
        return module.dropout > 0.0
    return True


def _check_eval_mode(model: nn.Module) -> None:
    """Reject a model whose training-mode layers make the loss random or mutate buffers.

    Those are dropout with p > 0 (also the ``dropout`` of stacked ``nn.LSTM``/``nn.GRU``/
    ``nn.RNN`` and of ``nn.MultiheadAttention``), RReLU and batch/instance norm tracking
    running statistics.
    """
    for name, module in model.named_modules():
        if not module.training or not isinstance(module, _TRAIN_MODE_LAYERS):
            continue
        if not _random_or_stateful(module):
            continue
        raise ValueError(
            f"'model' has layer {name or type(module).__name__!r} "
            f"({type(module).__name__}) in training mode: its loss is random or updates "
            "running statistics, so no curvature (Hessian or GGN) is defined; call "
            "model.eval() first"
        )


def _check_no_renorm(model: nn.Module) -> None:
    """Reject embeddings that renormalise their weights in place when the model runs.

    ``nn.Embedding`` and ``nn.EmbeddingBag`` with ``max_norm`` rescale the rows they look up
    in place (``torch.embedding_renorm_``, outside autograd) in every forward pass: running
    the model for a curvature product, a gradient or a loss would silently change the
    caller's weights, and the loss is not a fixed function of the parameters (inside
    ``torch.func`` transforms the in-place write may also fail).
    """
    for name, module in model.named_modules():
        if (isinstance(module, (nn.Embedding, nn.EmbeddingBag))
                and module.max_norm is not None):
            raise ValueError(
                f"'model' has layer {name or type(module).__name__!r} "
                f"({type(module).__name__}) with max_norm={module.max_norm}: its forward "
                "pass renormalises the embedding weights in place, which would change the "
                "model's weights here (and its loss is no fixed function of them); set "
                "max_norm=None on that layer first (after one forward pass over the "
                "vocabulary if its rows must be renormalised)"
            )


def _check_batch_statistics(model: nn.Module, n: int, step: int) -> None:
    """Reject mini-batched products through layers normalising with their batch's statistics.

    A batch-norm layer without running statistics (``track_running_stats=False``, in either
    mode) couples the rows of its batch: the loss is not a sum over rows, and the sum of the
    per-batch products (``batch_size`` < n) is not the curvature of the full data.
    """
    if step >= n:
        return
    for name, module in model.named_modules():
        if uses_batch_statistics(module):
            raise ValueError(
                f"'batch_size' = {step} splits the {n} rows into mini-batches, but layer "
                f"{name or type(module).__name__!r} ({type(module).__name__}) normalises "
                "with the statistics of its batch: the sum of the per-batch products is not "
                "the curvature of the full data; use batch_size=None (or >= the number of "
                "rows) or a layer with running statistics in eval mode"
            )


_PLAIN = (bool, int, float, str, type(None))


def _settings(module: nn.Module) -> tuple[tuple[str, object], ...]:
    """Return a module's plain attributes (training flag, dropout p, eps, flags, ...)."""
    return tuple((k, v) for k, v in vars(module).items() if isinstance(v, _PLAIN))


def _graph_dependencies(
    model: nn.Module, loss_fn: object, data: Sequence[Tensor]
) -> tuple[list[Tensor], list[nn.Module]]:
    """Return what a kept graph depends on: the model's (and a loss module's) tensors, modules.

    The tensors are every parameter (selected or not), buffer and data tensor, plus the
    parameters and buffers of ``loss_fn`` when it is an ``nn.Module`` (class weights); the
    modules are those of the model and of such a loss.
    """
    tensors = [*model.parameters(), *model.buffers()]
    modules = list(model.modules())
    if isinstance(loss_fn, nn.Module):
        tensors += [*loss_fn.parameters(), *loss_fn.buffers()]
        modules += list(loss_fn.modules())
    return [*tensors, *data], modules


class _GraphKey:
    """A snapshot of what a kept graph depends on, to decide whether it is still valid.

    Each tensor is held with its identity, its in-place version counter and a copy of its
    values: the copy catches writes that bypass the version counter (``p.data.mul_(2)``,
    ``p.data = t``, ``torch.nn.utils.vector_to_parameters``, a write through a NumPy view),
    which would otherwise leave a stale graph serving wrong products silently (the copy costs
    the memory of the parameters, buffers and stored data once, next to the graph). Each module
    is held with its identity and plain attributes: replacing a submodule (an activation
    swapped) or changing a setting (training flag, label smoothing, eps) rebuilds the graph.
    """

    def __init__(self, tensors: Sequence[Tensor], modules: Sequence[nn.Module]) -> None:
        self.tensors = tuple(tensors)
        self.versions = tuple(t._version for t in self.tensors)
        self.modules = tuple(modules)
        self.settings = tuple(_settings(m) for m in self.modules)
        with torch.no_grad():
            self.values = tuple(t.detach().clone() for t in self.tensors)

    def matches(self, tensors: Sequence[Tensor], modules: Sequence[nn.Module]) -> bool:
        """Whether ``tensors`` and ``modules`` are those snapshotted, unchanged."""
        if (len(tensors) != len(self.tensors) or len(modules) != len(self.modules)
                or any(a is not b for a, b in zip(tensors, self.tensors, strict=True))
                or any(t._version != v for t, v in zip(tensors, self.versions, strict=True))
                or any(a is not b for a, b in zip(modules, self.modules, strict=True))):
            return False
        if any(_settings(m) != s for m, s in zip(modules, self.settings, strict=True)):
            return False
        return all(
            t.dtype == c.dtype and t.device == c.device and torch.equal(t.detach(), c)
            for t, c in zip(tensors, self.values, strict=True)
        )


def _functional_loss(
    model: nn.Module, loss_fn: LossFn, names: list[str]
) -> Callable[[tuple[Tensor, ...], Any, Any], Tensor]:
    """Loss as a function of the selected parameters; others and buffers held fixed."""

    def loss(selected: tuple[Tensor, ...], inputs: Any, targets: Any) -> Tensor:
        # Re-read the model at call time so the operator follows in-place parameter updates.
        state: dict[str, Tensor] = {n: p.detach() for n, p in model.named_parameters()}
        state.update(dict(model.named_buffers()))
        state.update(zip(names, selected, strict=True))
        return _scalar_loss(loss_fn, functional_call(model, state, (inputs,)), targets)

    return loss


def _scalar_loss(loss_fn: LossFn, outputs: Any, targets: Any) -> Tensor:
    """Return ``loss_fn(outputs, targets)`` as a 0-d tensor.

    A loss that fails on the labels (an IndexError, e.g. a class label outside the outputs)
    or does not return one number is named (ValueError) instead of failing inside
    ``torch.func``.
    """
    try:
        value = loss_fn(outputs, targets)
    except IndexError as exc:  # e.g. a class label outside the outputs
        raise ValueError(f"'loss_fn' failed on 'targets' (labels outside the model's "
                         f"outputs?): {exc}") from exc
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"'loss_fn' must return a scalar (e.g. reduction='sum'), got "
                         f"{shape}")
    return value.reshape(())


class NetworkHessianOperator(LinearOperator):
    """Hessian of ``loss_fn(model(inputs), targets)`` w.r.t. selected parameters (+ damping).

    The loss is used exactly as given. Influence and unlearning code passes a loss with
    ``reduction="sum"``: then the mini-batched product (``batch_size``) equals the full-data
    product. With ``reduction="mean"`` each batch is averaged on its own and the sum of the
    batch products is *not* the full-data Hessian.

    Products are computed with :mod:`torch.func` over
    ``functional_call(model, ...)``, the non-selected parameters and all buffers held fixed:

    - ``mode="fwd-rev"``: forward-over-reverse, ``jvp(grad(loss))`` (usually least memory).
    - ``mode="rev-rev"``: reverse-over-reverse, ``vjp(grad(loss))`` (the double-backward
      fallback where forward-mode AD is missing; the Hessian is symmetric so vjp = jvp).
      ``"fwd-rev"`` takes it too for uint8 targets (class indices torch's forward-mode
      ``nll_loss`` cannot use).

    The K columns of a block are vectorised with ``vmap``; if the model cannot be vmapped
    (e.g. it calls ``.item()``), the operator falls back to a loop over columns and remembers
    that (``vectorized`` becomes False). The parameters are read from ``model`` at every
    product, so in-place updates are seen; the graph kept by ``rev-rev`` (stored data in
    one batch) is rebuilt when a parameter, buffer, data tensor or tensor of a loss module
    changes (in place too, also through ``.data``), or a submodule or a module's setting
    does (see :class:`_GraphKey`). State captured by a plain loss closure is not watched:
    build a new operator after changing it. The model must be in ``eval()`` mode where it
    has dropout (also inside stacked RNNs and attention), RReLU or batch-norm layers (their
    training mode makes the loss random or mutates buffers): a product raises ValueError
    otherwise. A batch-norm layer using its batch's statistics (no running statistics)
    couples the rows, so it is refused with ``batch_size`` smaller than the data.

    Args:
        model: The network; called as ``model(inputs)``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; must be twice differentiable.
        inputs: Tensor[n, ...], sliced along dim 0 for mini-batching.
        targets: Tensor[n, ...].
        params: None (all trainable parameters), or names / ``nn.Parameter`` objects; see
            :func:`selected_parameter_names`. Flattened in ``named_parameters()`` order.
        mode: ``"fwd-rev"`` or ``"rev-rev"``.
        damping: Non-negative constant added on the diagonal (``H + damping I``).
        batch_size: None for one batch, or the number of rows per mini-batch; the product
            is the sum of the per-batch products.

    Attributes:
        param_names: The selected parameter names, in flattening order.
        num_hvps: Number of full-data Hessian-vector products evaluated so far (one per
            column; mini-batching does not change the count).
        vectorized: Whether columns are still processed with ``vmap``.

    Raises:
        TypeError: bad ``model``, ``loss_fn``, ``inputs``/``targets`` or ``params`` types.
        ValueError: unknown ``params`` names, bad ``mode``, negative ``damping``, bad
            ``batch_size``, ``inputs``/``targets`` of different lengths, selected
            parameters of mixed dtypes/devices, or an ``nn.Embedding``/``nn.EmbeddingBag``
            with ``max_norm`` (its forward renormalises the weights in place: the model
            would change).

    """

    costly_products = True  # each product runs the network over the data

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: Tensor,
        targets: Tensor,
        *,
        params: ParamSpec = None,
        mode: str = "fwd-rev",
        damping: float | np.floating = 0.0,
        batch_size: int | np.integer | None = None,
    ) -> None:
        self.param_names = selected_parameter_names(model, params)
        _check_no_renorm(model)
        if not callable(loss_fn):
            raise TypeError(f"'loss_fn' must be callable, got {type(loss_fn).__name__}")
        if mode not in _MODES:
            raise ValueError(f"'mode' must be one of {_MODES}, got {mode!r}")
        self.damping = check_real("damping", damping)
        _check_data(inputs, targets)
        self.batch_size = _check_batch_size(batch_size)

        named = dict(model.named_parameters())
        selected = [named[n] for n in self.param_names]
        dtypes = {p.dtype for p in selected}
        devices = {p.device for p in selected}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError("'params': the selected parameters must share one dtype and device")
        if not selected[0].is_floating_point():
            raise TypeError(f"'params' must be floating, got {selected[0].dtype}")

        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.mode = mode
        self.num_hvps = 0
        self.vectorized = True
        self._loss = _functional_loss(model, loss_fn, self.param_names)
        self._vjp_cache: tuple[_GraphKey, Any] | None = None
        d = sum(p.numel() for p in selected)
        self.shape = (d, d)
        self.dtype = selected[0].dtype
        self.device = selected[0].device

    def _graph_dependencies(self) -> tuple[list[Tensor], list[nn.Module]]:
        """Return what the kept rev-rev graph depends on (see :class:`_GraphKey`).

        That is every parameter (selected or not), buffer and data tensor, the tensors of
        a loss module, and every module with its plain attributes (the training flag).
        """
        return _graph_dependencies(self.model, self.loss_fn, (self.inputs, self.targets))

    def _primals(self) -> tuple[Tensor, ...]:
        named = dict(self.model.named_parameters())
        return tuple(named[n].detach() for n in self.param_names)

    def matmat(self, V: Tensor) -> Tensor:
        """``(H + damping I) V`` on the stored data, V [d, K] -> [d, K]."""
        return self.matmat_on(V, self.inputs, self.targets)

    @with_differentiable_rnn_kernels
    def matmat_on(self, V: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        """``(H_D + damping I) V`` with ``H_D`` the Hessian of the loss on other data D.

        Useful for stochastic solvers (LiSSA over mini-batches). Uses ``batch_size``.

        Args:
            V: Tensor[d, K].
            inputs: Tensor[m, ...].
            targets: Tensor[m, ...].

        Returns:
            Tensor[d, K].

        Raises:
            ValueError: the model has dropout/RReLU/batch-norm layers in training mode,
                ``batch_size`` splits the data for a batch-norm layer that uses its batch's
                statistics, or a bad ``V``, ``inputs`` or ``targets``.

        """
        V = self._check_block(V)
        _check_data(inputs, targets)
        _check_eval_mode(self.model)
        _check_no_renorm(self.model)
        K = V.shape[1]
        primals = self._primals()
        # Columns -> per-parameter tangents with the column index leading: [K, *shape].
        tangents = tuple(
            chunk.T.reshape(K, *p.shape)
            for chunk, p in zip(V.split([p.numel() for p in primals]), primals, strict=True)
        )
        n = inputs.shape[0]
        step = self.batch_size or max(n, 1)
        _check_batch_statistics(self.model, n, step)
        # rev-rev on the stored data in one batch: the gradient's graph is kept between calls
        keep = (self.mode == "rev-rev" and inputs is self.inputs and targets is self.targets
                and n <= step)
        if not keep:
            self._vjp_cache = None
        out: tuple[Tensor, ...] | None = None
        with torch.no_grad():  # no graph for the caller; torch.func ignores the outer mode
            for start in range(0, n if K > 0 else 0, step):
                stop = start + step
                part = self._hvp_batch(primals, tangents, inputs[start:stop], targets[start:stop],
                                       keep)
                out = part if out is None else tuple(a + b for a, b in zip(out, part, strict=True))
        self.num_hvps += K
        if out is None:
            result = torch.zeros_like(V)
        else:
            result = torch.cat([t.reshape(K, -1) for t in out], dim=1).T.contiguous()
        if self.damping:
            result = result.add_(V, alpha=self.damping)
        return result

    def _hvp_batch(
        self,
        primals: tuple[Tensor, ...],
        tangents: tuple[Tensor, ...],
        x: Tensor,
        y: Tensor,
        keep: bool = False,
    ) -> tuple[Tensor, ...]:
        """Hessian products on one batch for K stacked tangents -> tuple of [K, *shape].

        With ``keep`` (rev-rev, the stored data in one batch) the gradient's graph is built
        once and reused while the parameters and buffers are unchanged (their in-place
        version counters): each product is then one backward pass through it.
        """

        def grad_fn(p: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return grad(self._loss)(p, x, y)

        # uint8 class indices crash forward-mode AD inside torch (the decomposition of
        # nll_loss_backward scatters with them); the Hessian is symmetric, so such targets
        # take the reverse-over-reverse product instead.
        if self.mode == "fwd-rev" and not _byte_targets(y):

            def one(t: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                return jvp(grad_fn, (primals,), (t,))[1]

        else:
            if keep:
                deps = self._graph_dependencies()
                if self._vjp_cache is None or not self._vjp_cache[0].matches(*deps):
                    self._vjp_cache = None  # free the old graph before building the new one
                    key = _GraphKey(*deps)
                    self._vjp_cache = (key, vjp(grad_fn, primals)[1])
                vjp_fn = self._vjp_cache[1]
            else:
                vjp_fn = vjp(grad_fn, primals)[1]

            def one(t: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                return vjp_fn(t)[0]

        K = tangents[0].shape[0]
        if K == 1:
            return tuple(h.unsqueeze(0) for h in one(tuple(t[0] for t in tangents)))
        if self.vectorized:
            try:
                return vmap(one)(tangents)
            except RuntimeError:
                # Some models cannot be vmapped (data-dependent control flow, .item()):
                # loop over the columns from now on. A genuine error re-raises below.
                self.vectorized = False
        columns = [one(tuple(t[k] for t in tangents)) for k in range(K)]
        return tuple(torch.stack(parts) for parts in zip(*columns, strict=True))


def _byte_targets(targets: object) -> bool:
    """Whether ``targets`` is a uint8 tensor (forward-mode AD cannot index with it)."""
    return isinstance(targets, Tensor) and targets.dtype == torch.uint8


def _check_data(inputs: object, targets: object) -> None:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"'inputs' must be a torch.Tensor, got {type(inputs).__name__}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"'targets' must be a torch.Tensor, got {type(targets).__name__}")
    if inputs.ndim == 0 or targets.ndim == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"'inputs' and 'targets' must have the same length along dim 0, "
            f"got {list(inputs.shape)} and {list(targets.shape)}"
        )


def _check_batch_size(batch_size: object) -> int | None:
    if batch_size is None:
        return None
    return check_int("batch_size", batch_size, 1)
