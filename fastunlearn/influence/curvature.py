"""Generalised Gauss-Newton (GGN) curvature of a network's summed loss, matrix-free.

``GGN = sum_i J_i^T H_i J_i`` with ``J_i`` the Jacobian of the i-th output row w.r.t. the
selected parameters and ``H_i`` the Hessian of the loss w.r.t. that output row. For a convex
loss of the outputs (cross-entropy, logistic, squared error) it is positive semidefinite,
so CG on ``GGN + damping I`` never breaks down; it equals the Hessian for a model that is
linear in the selected parameters (e.g. only the last layer selected) and drops the
indefinite second-derivative-of-the-network term otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp
from torch.utils._pytree import tree_map

from .._numbers import check_real
from ..linalg import LinearOperator, selected_parameter_names
from ..linalg.forward_ad import jvp
from ..linalg.network import (
    _check_batch_size,
    _check_batch_statistics,
    _check_data,
    _check_eval_mode,
    _check_no_renorm,
    _graph_dependencies,
    _GraphKey,
    _scalar_loss,
)
from ..linalg.rnn_kernels import with_differentiable_rnn_kernels
from .gradients import LossFn

if TYPE_CHECKING:
    import numpy as np

__all__ = ["GGNOperator"]


def _vjp(func: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[..., Any]]:
    """``torch.func.vjp`` without ``has_aux``: ``(outputs, vjp_fn)``.

    torch annotates its result as a 2- or a 3-tuple, the latter only with ``has_aux=True``.
    """
    return cast("tuple[Any, Callable[..., Any]]", vjp(func, *primals))


class GGNOperator(LinearOperator):
    """``GGN + damping I`` of ``loss_fn(model(inputs), targets)`` w.r.t. selected parameters.

    Same interface as :class:`~fastunlearn.linalg.NetworkHessianOperator` (``matmat``,
    ``matmat_on`` for LiSSA's mini-batches, ``num_hvps``); each column costs one forward-mode
    pass (``J v``), one output-space Hessian product (reverse over reverse, so any integer
    targets the loss takes work) and one backward pass (``J^T u``) per batch. When the
    stored data is one batch (``batch_size`` None or >= n, e.g. a curvature subsample), the
    network is not run again per product: the graph of ``J^T u`` is built
    once and kept, ``J^T u`` is a backward pass through it and ``J v`` a backward pass
    through that backward pass (the transpose of a linear map is its vector-Jacobian
    product). The kept graph is rebuilt when any parameter (selected or not), buffer or
    data tensor is replaced or changed (in place too, also through ``.data``), or a
    submodule or a module's setting such as its training flag changes (as for
    :class:`~fastunlearn.linalg.NetworkHessianOperator`). The model must be in eval
    mode where it has dropout (also inside stacked RNNs and attention), RReLU or
    batch-norm layers (in training mode the outputs are random or the running statistics
    would be updated): a product raises ValueError otherwise. A batch-norm layer using its
    batch's statistics (no running statistics) couples the rows, so it is refused with
    ``batch_size`` smaller than the data.

    Args:
        model: The network.
        loss_fn: Summed loss of the outputs, convex in them for a PSD result.
        inputs: Tensor[n, ...].
        targets: Tensor[n, ...].
        params: Selection as in :func:`~fastunlearn.linalg.selected_parameter_names`.
        damping: Constant added on the diagonal (>= 0).
        batch_size: Rows per batch (None: all at once).

    Attributes:
        num_hvps: Full-data (or ``matmat_on``-data) products evaluated, one per column.

    Raises:
        TypeError: bad ``model``, ``loss_fn``, ``inputs``/``targets``, ``params`` or
            ``batch_size`` types, or non-floating parameters.
        ValueError: unknown or frozen ``params``, negative or non-finite ``damping``,
            ``batch_size < 1``, ``inputs``/``targets`` of different lengths, selected
            parameters of mixed dtypes/devices, or an ``nn.Embedding``/``nn.EmbeddingBag``
            with ``max_norm`` (its forward renormalises the weights in place).

    """

    costly_products = True  # each product runs the network over the data

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: Tensor,
        targets: Tensor,
        *,
        params: Any = None,
        damping: float | np.floating = 0.0,
        batch_size: int | np.integer | None = None,
    ) -> None:
        self.param_names = selected_parameter_names(model, params)
        _check_no_renorm(model)
        if not callable(loss_fn):
            raise TypeError(f"'loss_fn' must be callable, got {type(loss_fn).__name__}")
        self.damping = check_real("damping", damping)
        _check_data(inputs, targets)
        self.batch_size = _check_batch_size(batch_size)
        named = dict(model.named_parameters())
        selected = [named[n] for n in self.param_names]
        if len({p.dtype for p in selected}) != 1 or len({p.device for p in selected}) != 1:
            raise ValueError("'params': the selected parameters must share one dtype and device")
        if not selected[0].is_floating_point():
            raise TypeError(f"'params' must be floating, got {selected[0].dtype}")
        self.model, self.loss_fn = model, loss_fn
        self.inputs, self.targets = inputs, targets
        self.num_hvps = 0
        self._vjp_cache: tuple[_GraphKey, Tensor, Any, Any] | None = None
        d = sum(p.numel() for p in selected)
        self.shape = (d, d)
        self.dtype = selected[0].dtype
        self.device = selected[0].device

    def _graph_dependencies(self) -> tuple[list[Tensor], list[nn.Module]]:
        """Return what the kept graph depends on (see ``fastunlearn.linalg.network._GraphKey``).

        That is every parameter (selected or not: the unselected ones shape the outputs
        and their Jacobian), buffer and stored data tensor, and every module with its
        plain attributes (the training flag). The loss is evaluated afresh at every product.
        """
        return _graph_dependencies(self.model, None, (self.inputs, self.targets))

    def matmat(self, V: Tensor) -> Tensor:
        """``(GGN + damping I) V`` on the stored data, V [d, K] -> [d, K]."""
        return self.matmat_on(V, self.inputs, self.targets)

    @with_differentiable_rnn_kernels
    def matmat_on(self, V: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        """``(GGN_D + damping I) V`` on other data D (LiSSA mini-batches).

        Args:
            V: Tensor[d, K].
            inputs: Tensor[m, ...].
            targets: Tensor[m, ...].

        Returns:
            Tensor[d, K].

        Raises:
            ValueError: the model has dropout/RReLU/batch-norm layers in training mode,
                ``batch_size`` splits the data for a batch-norm layer that uses its batch's
                statistics, a bad ``V``, ``inputs`` or ``targets`` (also labels the loss
                fails on, e.g. outside the model's outputs), or a loss that is not one
                number (as :class:`~fastunlearn.linalg.NetworkHessianOperator`).

        """
        V = self._check_block(V)
        _check_data(inputs, targets)
        _check_eval_mode(self.model)
        _check_no_renorm(self.model)
        named = dict(self.model.named_parameters())
        primals = tuple(named[n].detach() for n in self.param_names)
        base = {n: p.detach() for n, p in named.items()}
        base.update(dict(self.model.named_buffers()))
        sizes = [p.numel() for p in primals]
        n = inputs.shape[0]
        step = self.batch_size or max(n, 1)
        _check_batch_statistics(self.model, n, step)
        # one batch of the stored data: the backward product's forward pass is reusable
        reuse = inputs is self.inputs and targets is self.targets and n <= step
        columns = []
        with torch.no_grad():
            for k in range(V.shape[1]):
                tangent = tuple(c.view(p.shape) for c, p in
                                zip(V[:, k].split(sizes), primals, strict=True))
                total = torch.zeros(V.shape[0], dtype=V.dtype, device=V.device)
                for start in range(0, n, step):
                    x, y = inputs[start:start + step], targets[start:start + step]

                    def f(ps: tuple[Tensor, ...], x: Tensor = x) -> Tensor:
                        state = dict(base)
                        state.update(zip(self.param_names, ps, strict=True))
                        return functional_call(self.model, state, (x,))

                    def loss_grad(out: Tensor, y: Tensor = y) -> Tensor:
                        return grad(lambda o: _scalar_loss(self.loss_fn, o, y))(out)

                    if reuse:
                        out, vjp_fn, jv_fn = self._cached_products(f, primals)
                        jv = jv_fn(tangent)[0]
                    else:
                        out, jv = jvp(f, (primals,), (tangent,))
                        _, vjp_fn = _vjp(f, primals)
                    # H_i (J v) as the vjp of the output gradient (H_i is symmetric), not a
                    # jvp: forward-mode AD through the loss fails inside torch for uint8
                    # class indices (its nll_loss_backward decomposition scatters with them).
                    hjv = _vjp(loss_grad, out)[1](jv)[0]
                    parts = vjp_fn(hjv)[0]
                    total += torch.cat([t.reshape(-1) for t in parts])
                columns.append(total)
        self.num_hvps += V.shape[1]
        if not reuse:
            self._vjp_cache = None
        result = torch.stack(columns, dim=1) if columns else torch.zeros_like(V)
        if self.damping:
            result = result + self.damping * V
        return result

    def _cached_products(self, f: Any, primals: tuple[Tensor, ...]) -> tuple[Tensor, Any, Any]:
        """Return the stored batch's outputs, ``u -> J^T u`` and ``v -> J v``, kept.

        ``J v`` is the vector-Jacobian product of the linear map ``u -> J^T u`` (at any
        ``u``; zeros here). Rebuilt when :meth:`_graph_dependencies` change.
        """
        deps = self._graph_dependencies()
        if self._vjp_cache is None or not self._vjp_cache[0].matches(*deps):
            self._vjp_cache = None  # free the old graph before building the new one
            key = _GraphKey(*deps)
            out, vjp_fn = _vjp(f, primals)
            # zeros shaped like the outputs, also a tuple or dict of them (as the loss takes)
            _, jv_fn = _vjp(lambda u: vjp_fn(u)[0], tree_map(torch.zeros_like, out))
            self._vjp_cache = (key, out, vjp_fn, jv_fn)
        _, out, vjp_fn, jv_fn = self._vjp_cache
        return out, vjp_fn, jv_fn
