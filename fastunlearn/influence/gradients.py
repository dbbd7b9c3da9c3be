"""Summed loss gradients and gradient differences over chunks, w.r.t. a parameter subset.

All functions evaluate the model *functionally* (``torch.func.functional_call`` with the
selected parameters replaced by detached leaf copies), so they never touch ``.grad``, never
build a graph the caller keeps, and never modify the model. The loss must be a **sum** over
the batch (``reduction="sum"``): then the chunked sums equal the full-data sums; a loss that
is not (``reduction="mean"``) is refused, and so are inputs and labels the model or the
loss cannot take, with the checks of :func:`~fastunlearn.influence.influence_update`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._numbers import check_int
from ..linalg import flatten_params, selected_parameter_names, unflatten_like
from ..linalg.network import _check_no_renorm

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "LossFn",
    "default_loss",
    "last_parameters",
    "loss_value",
    "loss_gradient",
    "gradient_difference",
    "check_sum_reduction",
    "eval_mode",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Return the summed cross-entropy ``sum_i -log softmax(outputs_i)[targets_i]`` (default).

    Integer class labels of any integer dtype (int32, int16, int8, uint8, ...) are read as
    int64, which is all ``cross_entropy`` accepts besides uint8; floating targets (class
    probabilities) are passed on unchanged.
    """
    if not (targets.is_floating_point() or targets.is_complex()) \
            and targets.dtype not in (torch.int64, torch.uint8, torch.bool):
        targets = targets.to(torch.int64)
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="sum")


def last_parameters(model: nn.Module, count: int | np.integer) -> list[str]:
    """Names of the last ``count`` trainable parameter tensors (registration order).

    The reference updates only ``model.trainable_weights[-6:]`` of its CIFAR CNN (the
    dense head and its batch norm); ``last_parameters(model, 6)`` is the same selection.

    Args:
        model: The network.
        count: How many tensors, >= 1 (all of them if the model has fewer).

    Returns:
        Parameter names, in ``named_parameters()`` order.

    Raises:
        TypeError: ``model`` is not an nn.Module or ``count`` not an int.
        ValueError: ``count < 1`` or the model has no trainable parameters.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    count = check_int("count", count, 1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("'model' has no trainable parameters")
    return names[-count:]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in ``eval()`` inside the block and restore each module's mode after.

    Influence computations need a deterministic loss (no dropout) and must not update
    batch-norm running statistics.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _state(model: nn.Module, names: Sequence[str], values: Sequence[Tensor]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {n: p.detach() for n, p in model.named_parameters()}
    state.update(dict(model.named_buffers()))
    state.update(zip(names, values, strict=True))
    return state


def _chunks(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    step = chunk_size or max(n, 1)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _check_chunk_size(chunk_size: object) -> int | None:
    """Return ``chunk_size``, checked to be None or an int >= 1.

    0 or a negative size would silently mean one chunk or no chunk at all (a zero
    gradient, a zero loss).
    """
    if chunk_size is None:
        return None
    return check_int("chunk_size", chunk_size, 1)


def _check_rows(pairs: Sequence[tuple[str, object]]) -> int:
    """Return the common number of rows of the ``(name, tensor)`` pairs, checked.

    Each must be a tensor with a leading dimension, all with the same number of rows (a
    shorter tensor would be sliced silently per chunk).
    """
    rows = None
    for name, t in pairs:
        if not isinstance(t, Tensor):
            raise TypeError(f"'{name}' must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim == 0:
            raise ValueError(f"'{name}' must have a leading batch dimension, got a scalar")
        if rows is None:
            rows = int(t.shape[0])
        elif t.shape[0] != rows:
            first = pairs[0][0]
            raise ValueError(f"'{name}' must have as many rows as '{first}' ({rows}), "
                             f"got {t.shape[0]}")
    assert rows is not None
    return rows


def _check_replacements(
    model: nn.Module, names: Sequence[str], values: Sequence[Tensor]
) -> None:
    """Check that ``names`` are parameters of ``model`` and ``values`` tensors of their shapes.

    An unknown name would otherwise be ignored silently by ``functional_call``.
    """
    named = dict(model.named_parameters())
    if len(names) != len(values):
        raise ValueError(f"'values' must hold one tensor per name ({len(names)}), "
                         f"got {len(values)}")
    for name, value in zip(names, values, strict=True):
        if name not in named:
            raise ValueError(f"'names': unknown parameter name {name!r}")
        if not isinstance(value, Tensor):
            raise TypeError(f"'values' must hold tensors, got {type(value).__name__} for "
                            f"{name!r}")
        if value.shape != named[name].shape:
            raise ValueError(f"'values': the tensor for {name!r} must have shape "
                             f"{list(named[name].shape)}, got {list(value.shape)}")
        if value.dtype != named[name].dtype:
            raise TypeError(f"'values': the tensor for {name!r} must have dtype "
                            f"{named[name].dtype}, got {value.dtype}")


def _check_model_and_loss(model: object, loss_fn: object) -> None:
    """Raise TypeError unless ``model`` is an nn.Module and ``loss_fn`` is callable.

    Also ValueError for an embedding with ``max_norm``, whose forward pass would renormalise
    the model's weights in place (see ``fastunlearn.linalg.network._check_no_renorm``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    _check_no_renorm(model)
    if not callable(loss_fn):
        raise TypeError(f"'loss_fn' must be callable, got {type(loss_fn).__name__}")


def _check_data(
    model: nn.Module, loss_fn: LossFn, names: Sequence[str],
    pairs: list[tuple[str, Tensor, str, Tensor]],
) -> None:
    """Check ``(input name, inputs, target name, targets)`` pairs and the loss's reduction.

    As :func:`~fastunlearn.influence.influence_update` does, before anything is computed:
    floating inputs in the dtype of the parameters ``names`` (all of the model's when
    empty), on their device and finite; integer labels for :func:`default_loss`, and
    integer labels inside the model's classes; then ``loss_fn`` must sum over the batch
    (:func:`check_sum_reduction`, on the first row of the first pair).
    """
    # (arguments imports this module's eval_mode)
    from .arguments import _check_model_data

    named = dict(model.named_parameters())
    params = [named[n] for n in names] or [p for p in named.values() if p.is_floating_point()]
    if params:
        _check_model_data(model, pairs, params[0].dtype, params[0].device,
                          class_labels=loss_fn is default_loss, loss_fn=loss_fn)
    _, inputs, targets_name, targets = pairs[0]
    if inputs.shape[0]:  # no row: nothing to sum, the loss is 0 either way
        check_sum_reduction(model, loss_fn, inputs, targets, targets_name=targets_name)


def loss_value(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    names: Sequence[str] | None = None,
    values: Sequence[Tensor] | None = None,
    chunk_size: int | np.integer | None = 1024,
) -> float:
    """Compute the summed loss over ``(inputs, targets)``, optionally with some parameters replaced.

    Args:
        model: The network (not modified).
        loss_fn: Summed loss ``loss_fn(outputs, targets) -> scalar``.
        inputs: Tensor[n, ...].
        targets: Tensor[n, ...].
        names: Parameter names whose values are replaced by ``values`` (None: none).
        values: Replacement tensors, one per name.
        chunk_size: Rows per forward pass (None: all at once).

    Returns:
        The loss as a Python float (``nan``/``inf`` are returned, not raised).

    Raises:
        TypeError: ``model`` not an nn.Module, ``loss_fn`` not callable, ``inputs`` or
            ``targets`` not tensors, ``chunk_size`` not None or an int, replacement
            ``values`` of another dtype than their parameters, floating ``inputs`` of
            another dtype than the model's parameters, or floating ``targets`` with
            :func:`default_loss` (it takes integer class labels).
        ValueError: ``inputs``/``targets`` of different lengths, ``chunk_size`` < 1,
            ``names`` that are not parameters of ``model`` (or ``values`` of other shapes),
            inputs on another device, non-finite or that the model cannot run on, integer
            labels outside the model's classes (also -100, which cross-entropy would
            skip), or a ``loss_fn`` that does not sum over the batch (e.g.
            ``reduction="mean"``).

    """
    _check_model_and_loss(model, loss_fn)
    names = [] if names is None else list(names)
    values = [] if values is None else list(values)
    _check_rows([("inputs", inputs), ("targets", targets)])
    chunk_size = _check_chunk_size(chunk_size)
    _check_replacements(model, names, values)
    _check_data(model, loss_fn, names, [("inputs", inputs, "targets", targets)])
    return _loss_value(model, loss_fn, inputs, targets, names=names, values=values,
                       chunk_size=chunk_size)


def _loss_value(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    names: Sequence[str] = (),
    values: Sequence[Tensor] = (),
    chunk_size: int | None,
) -> float:
    """:func:`loss_value` of arguments checked already (no check: influence_update's loss).

    The line search evaluates the loss up to some 60 times on the same training set, which
    :func:`~fastunlearn.influence.influence_update` checked once.
    """
    state = _state(model, names, values)
    total = 0.0
    with torch.no_grad(), eval_mode(model):
        for start, stop in _chunks(inputs.shape[0], chunk_size):
            out = functional_call(model, state, (inputs[start:stop],))
            total += float(loss_fn(out, targets[start:stop]))
    return total


def _grad_of(
    model: nn.Module,
    names: Sequence[str],
    loss_of_outputs: Callable[[dict[str, Tensor]], Tensor],
) -> list[Tensor]:
    named = dict(model.named_parameters())
    leaves = [named[n].detach().requires_grad_(True) for n in names]
    with torch.enable_grad():
        loss = loss_of_outputs(_state(model, names, leaves))
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves, strict=True)]


def _chunked_gradient(
    model: nn.Module,
    names: Sequence[str],
    num_rows: int,
    chunk_size: int | None,
    chunk_loss: Callable[[dict[str, Tensor], int, int], Tensor],
) -> Tensor:
    """Sum over row chunks of the gradient of ``chunk_loss(state, start, stop)``, flattened.

    The shared loop of :func:`loss_gradient` and :func:`gradient_difference`: rows
    ``0 .. num_rows - 1`` are split into chunks of ``chunk_size`` (None: one chunk), each chunk's
    loss is differentiated w.r.t. the parameters ``names`` (model in eval mode) and the
    flat gradients are added up. Returns Tensor[P] in ``named_parameters()`` order.
    """
    named = dict(model.named_parameters())
    total = flatten_params(torch.zeros_like(named[n]) for n in names)
    for start, stop in _chunks(num_rows, chunk_size):

        def loss(st: dict[str, Tensor], start: int = start, stop: int = stop) -> Tensor:
            return chunk_loss(st, start, stop)

        with eval_mode(model):
            total += flatten_params(_grad_of(model, names, loss))
    return total


def loss_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Any = None,
    chunk_size: int | np.integer | None = 1024,
) -> Tensor:
    """Gradient of the summed loss w.r.t. the selected parameters, as one flat vector.

    Args:
        model: The network (not modified).
        loss_fn: Summed loss.
        inputs: Tensor[n, ...].
        targets: Tensor[n, ...].
        params: Selection as in :func:`fastunlearn.linalg.selected_parameter_names`.
        chunk_size: Rows per backward pass (None: all at once).

    Returns:
        Tensor[P] in ``named_parameters()`` order.

    Raises:
        TypeError: ``model`` not an nn.Module, ``loss_fn`` not callable, ``inputs`` or
            ``targets`` not tensors, ``chunk_size`` not None or an int, a bad ``params``,
            floating ``inputs`` of another dtype than the selected parameters, or
            floating ``targets`` with :func:`default_loss`.
        ValueError: ``inputs``/``targets`` of different lengths, ``chunk_size`` < 1, a bad
            ``params``, inputs on another device, non-finite or that the model cannot run
            on, integer labels outside the model's classes, or a ``loss_fn`` that does
            not sum over the batch (e.g. ``reduction="mean"``: the gradient would be n
            times too small).

    """
    _check_model_and_loss(model, loss_fn)
    names = selected_parameter_names(model, params)
    _check_rows([("inputs", inputs), ("targets", targets)])
    chunk_size = _check_chunk_size(chunk_size)
    _check_data(model, loss_fn, names, [("inputs", inputs, "targets", targets)])

    def loss(st: dict[str, Tensor], start: int, stop: int) -> Tensor:
        return loss_fn(functional_call(model, st, (inputs[start:stop],)), targets[start:stop])

    return _chunked_gradient(model, names, inputs.shape[0], chunk_size, loss)


def gradient_difference(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    new_inputs: Tensor,
    new_targets: Tensor,
    *,
    params: Any = None,
    chunk_size: int | np.integer | None = 1024,
) -> Tensor:
    """``G = sum_i grad l(z~_i) - sum_i grad l(z_i)`` in one backward pass per chunk.

    ``z_i = (inputs[i], targets[i])`` are the affected training points as they are now and
    ``z~_i = (new_inputs[i], new_targets[i])`` their corrected versions. Each chunk
    differentiates ``loss(z~) - loss(z)`` once (the reference's ``get_gradients_diff``).

    Args:
        model: The network (not modified).
        loss_fn: Summed loss.
        inputs: Tensor[m, ...].
        targets: Tensor[m, ...].
        new_inputs: Tensor[m, ...].
        new_targets: Tensor[m, ...].
        params: Selection as in :func:`fastunlearn.linalg.selected_parameter_names`.
        chunk_size: Affected points per backward pass (None: all at once).

    Returns:
        Tensor[P] in ``named_parameters()`` order.

    Raises:
        TypeError: ``model`` not an nn.Module, ``loss_fn`` not callable, the four tensors
            not tensors, ``chunk_size`` not None or an int, a bad ``params``, floating
            inputs of another dtype than the selected parameters, or floating targets
            with :func:`default_loss`.
        ValueError: the four tensors of different lengths, ``new_inputs`` (``new_targets``)
            not shaped like ``inputs`` (``targets``), ``chunk_size`` < 1, a bad ``params``,
            inputs on another device, non-finite or that the model cannot run on, integer
            labels outside the model's classes, or a ``loss_fn`` that does not sum over
            the batch (e.g. ``reduction="mean"``).

    """
    _check_model_and_loss(model, loss_fn)
    names = selected_parameter_names(model, params)
    _check_rows([("inputs", inputs), ("targets", targets), ("new_inputs", new_inputs),
                 ("new_targets", new_targets)])
    chunk_size = _check_chunk_size(chunk_size)
    for new_name, new, old_name, old in (("new_inputs", new_inputs, "inputs", inputs),
                                         ("new_targets", new_targets, "targets", targets)):
        if new.shape != old.shape:
            raise ValueError(f"'{new_name}' must have the shape of '{old_name}' "
                             f"{list(old.shape)}, got {list(new.shape)}")
    _check_data(model, loss_fn, names, [("inputs", inputs, "targets", targets),
                                        ("new_inputs", new_inputs, "new_targets", new_targets)])
    return _gradient_difference(model, loss_fn, inputs, targets, new_inputs, new_targets,
                                params=names, chunk_size=chunk_size)


def _gradient_difference(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    new_inputs: Tensor,
    new_targets: Tensor,
    *,
    params: Sequence[str],
    chunk_size: int | None,
) -> Tensor:
    """:func:`gradient_difference` of arguments checked already (``params``: their names).

    No check: :func:`~fastunlearn.influence.influence_update`'s ``G``, of checked data.
    """
    names = params

    def diff(st: dict[str, Tensor], start: int, stop: int) -> Tensor:
        xn, yn = new_inputs[start:stop], new_targets[start:stop]
        new = loss_fn(functional_call(model, st, (xn,)), yn)
        return new - loss_fn(functional_call(model, st, (inputs[start:stop],)), targets[start:stop])

    return _chunked_gradient(model, names, inputs.shape[0], chunk_size, diff)


def _evaluate_loss(loss_fn: LossFn, outputs: Any, targets: Tensor, targets_name: str) -> Any:
    """``loss_fn(outputs, targets)``, a failure of the loss named as a ValueError (chained)."""
    try:
        return loss_fn(outputs, targets)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"'loss_fn' cannot be evaluated on the model's outputs and '{targets_name}' "
            f"(shape {list(targets.shape)}, dtype {targets.dtype}): "
            f"{type(exc).__name__}: {exc}") from exc


#: Most rows :func:`check_sum_reduction` runs the model on to find a loss that is not ~0.
_REDUCTION_PROBE_ROWS = 64


def check_sum_reduction(
    model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor,
    *, targets_name: str = "targets",
) -> None:
    """Raise unless ``loss_fn`` sums over the batch (one row duplicated doubles the loss).

    The test needs a row whose loss is not ~0 (a mean and a sum of zeros agree): the rows
    are run one at a time until one is (usually the first; at most 64), and when none of
    them is (e.g. a confident float32 model on its training rows, whose cross-entropy
    rounds to 0) zero outputs in place of the first row's are tried.

    Args:
        model: The network.
        loss_fn: The loss to check.
        inputs: At least one row.
        targets: Matching targets.
        targets_name: The name of ``targets`` in error messages.

    Raises:
        ValueError: ``loss_fn`` fails on the model's outputs and ``targets`` (e.g. 2-D
            integer targets with cross-entropy; the loss's error is chained), the loss is
            not a single number (e.g. ``reduction="none"``), or the loss of a row repeated
            twice is not twice the loss of the row (e.g. ``reduction="mean"``).

    """
    if inputs.shape[0] == 0:
        return  # no row: nothing to sum, the loss is 0 either way
    with torch.no_grad(), eval_mode(model):
        for i in range(min(int(inputs.shape[0]), _REDUCTION_PROBE_ROWS)):
            out = model(inputs[i:i + 1])  # a failing model raises its own error, unchanged
            one_t = _checked_loss(loss_fn, out, targets[i:i + 1], targets_name)
            if i == 0:
                first = (out, one_t)
            if abs(float(one_t)) > 1e-30:
                break
        else:
            # every row tried has a loss of ~0: try zero outputs (a uniform prediction for
            # cross-entropy), if the loss takes them
            i, (out, one_t) = 0, first
            if isinstance(out, Tensor) and out.is_floating_point():
                zero = torch.zeros_like(out)
                try:
                    value = loss_fn(zero, targets[:1])
                except Exception:  # noqa: BLE001 - a loss refusing them is not checked further
                    value = None
                if isinstance(value, Tensor) and value.numel() == 1:
                    out, one_t = zero, value
        row = targets[i:i + 1]
        # a tuple or dict of outputs (any structure the loss takes): run the row twice
        doubled = (torch.cat([out, out]) if isinstance(out, Tensor)
                   else model(torch.cat([inputs[i:i + 1], inputs[i:i + 1]])))
        two_t = _checked_loss(loss_fn, doubled, torch.cat([row, row]), targets_name)
    one, two = float(one_t), float(two_t)
    if abs(one) > 1e-30 and not abs(two - 2.0 * one) <= 1e-4 * abs(2.0 * one):
        raise ValueError(
            "'loss_fn' must sum over the batch (reduction='sum'): the loss of a duplicated "
            f"row is {two:.6g}, not twice {one:.6g}"
        )


def _checked_loss(loss_fn: LossFn, outputs: Any, targets: Tensor, targets_name: str) -> Tensor:
    """``loss_fn(outputs, targets)``, named on failure, checked to be one number."""
    value = _evaluate_loss(loss_fn, outputs, targets, targets_name)
    if not isinstance(value, Tensor) or value.numel() != 1:
        got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"'loss_fn' must return one number, the loss summed over the "
                         f"batch (reduction='sum'), got {got}")
    return value


def unflatten(model: nn.Module, names: Sequence[str], vector: Tensor) -> list[Tensor]:
    """Split a flat vector into tensors shaped like the named parameters."""
    named = dict(model.named_parameters())
    return unflatten_like(vector, [named[n] for n in names])
