"""Checks of the arguments of the influence updates: tensors, targets and numbers.

Each raises TypeError or ValueError naming the argument; nothing here runs a solver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._batch_norm import uses_batch_statistics
from .._numbers import as_int, check_real, is_integer
from .gradients import eval_mode


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim == 0:
        raise ValueError(f"'{name}' must have a leading batch dimension, got a scalar")
    return value


def _check_inputs(name: str, x: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    """Device, dtype (floating inputs: the parameters' dtype) and finiteness of model inputs."""
    if x.device != device:
        raise ValueError(f"'{name}' must be on the model's device {device}, got {x.device}")
    if x.is_floating_point():
        if x.dtype != dtype:
            raise TypeError(f"'{name}' must have the parameters' dtype {dtype}, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"'{name}' contains non-finite values (NaN or inf)")


def _check_target_type(name: str, y: Tensor, device: torch.device, class_labels: bool) -> None:
    """Device, dtype and finiteness of targets (checked before the model runs).

    ``class_labels``: the loss is the default cross-entropy, which needs integer labels.
    """
    if y.device != device:
        raise ValueError(f"'{name}' must be on the model's device {device}, got {y.device}")
    if class_labels and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        raise TypeError(f"'{name}' must hold integer class labels for the default "
                        f"cross-entropy loss, got {y.dtype} (pass 'loss_fn' for other targets)")
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise ValueError(f"'{name}' contains non-finite values (NaN or inf)")


def _check_target_range(name: str, y: Tensor, num_outputs: int | None) -> None:
    """Integer labels must lie in ``[0, num_outputs)`` (when the model has class outputs)."""
    if y.is_floating_point() or y.dtype == torch.bool or num_outputs is None or not y.numel():
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_outputs:
        raise ValueError(
            f"'{name}' holds labels in [{low}, {high}], outside the model's "
            f"{num_outputs} classes [0, {num_outputs - 1}]"
        )


def _check_pair(name: str, x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"'{name}': inputs and targets must have the same length, got {x.shape[0]} and "
            f"{y.shape[0]}"
        )


def _check_labelled_rows(X: object, y: object) -> tuple[Tensor, Tensor]:
    """``X`` and ``y`` as tensors of the same length, ``y`` integer class labels (named)."""
    X, y = _check_tensor("X", X), _check_tensor("y", y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"'X' and 'y' must have the same length, got {X.shape[0]} and "
                         f"{y.shape[0]}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"'y' must hold integer class labels, got {y.dtype}")
    return X, y


def _check_auto_or_float(name: str, value: object, *, positive: bool = False) -> float | None:
    """``"auto"`` (returned as None) or a finite real >= 0 (> 0 with ``positive``).

    Raises:
        ValueError: Another string, or a number out of range (named).
        TypeError: Neither a string nor a real number (a bool is not one).

    """
    if isinstance(value, str):
        if value != "auto":
            kind = "positive" if positive else "non-negative"
            raise ValueError(f"'{name}' must be a {kind} number or 'auto', got {value!r}")
        return None
    return check_real(name, value, positive=positive)


def _check_order(order: object) -> int:
    if not is_integer(order):  # Python or NumPy int, not a bool
        raise TypeError(f"'order' must be the int 1 or 2, got {order!r} "
                        f"({type(order).__name__})")
    order = as_int(order)
    if order not in (1, 2):
        raise ValueError(f"'order' must be 1 or 2, got {order!r}")
    return order


def _check_rows_independent(model: nn.Module) -> None:
    """Refuse a batch-norm layer without running statistics (its rows are coupled).

    Such a layer normalises with the statistics of the batch it is given, in eval mode
    too: the loss is then not a sum over rows, so the chunked gradients and losses of the
    influence updates would depend on how the rows are split (and one row alone cannot be
    run at all: torch raises "Expected more than 1 value per channel").
    """
    for name, module in model.named_modules():
        if uses_batch_statistics(module, training=False):  # the updates run in eval mode
            raise ValueError(
                f"'model' has layer {name or type(module).__name__!r} "
                f"({type(module).__name__}) normalising with the statistics of its batch "
                "(no running statistics): the loss is not a sum over rows, so the "
                "influence updates' chunked gradients and losses would depend on how the "
                "rows are split; use a layer with running statistics "
                "(track_running_stats=True)")


def _num_outputs(model: nn.Module, x: Tensor) -> int | None:
    """Classes of the model (last output dimension) from one row; None if not a class model.

    Call it only on validated inputs (device, dtype): a failing forward pass is reported
    as a ValueError naming ``inputs``. It is the first forward pass of every influence
    entry point, so a model whose rows are coupled (batch norm without running
    statistics, :func:`_check_rows_independent`) is refused here, by name.
    """
    _check_rows_independent(model)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x[:1])
    except (RuntimeError, TypeError, IndexError) as exc:
        raise ValueError(f"'inputs' of shape {list(x.shape)} do not fit the model: "
                         f"{type(exc).__name__}: {exc}") from None
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.ndim >= 2 else None


def _check_all_rows_run(model: nn.Module, name: str, x: Tensor, chunk: int = 1024) -> None:
    """Run the model once on every row of non-floating inputs (token ids), without a graph.

    ``_num_outputs`` runs one row only; an id outside an embedding's vocabulary in another
    row would otherwise fail deep inside the gradient or curvature computation.
    """
    try:
        with torch.no_grad(), eval_mode(model):
            for start in range(0, x.shape[0], chunk):
                model(x[start:start + chunk])
    except (RuntimeError, IndexError) as exc:
        raise ValueError(f"'{name}' holds rows the model cannot run on (e.g. token ids "
                         f"outside an embedding's vocabulary): {type(exc).__name__}: "
                         f"{exc}") from None


def _check_labels(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
    x: Tensor,
    name: str,
    y: Tensor,
    num_outputs: int | None,
    class_labels: bool,
) -> None:
    """Integer labels ``y`` (of the inputs ``x``) must be classes of the model.

    With the default cross-entropy (``class_labels``), or without ``loss_fn``, that is
    ``[0, num_outputs)`` (:func:`_check_target_range`). Another loss gives its integer
    targets its own meaning (the 0/1 labels of a single-logit binary cross-entropy,
    integer regression targets): labels outside that range are refused only when the loss
    fails on them, on the rows with the smallest and the largest label (as a summed
    cross-entropy does), with the same error. The model runs without a graph in eval mode.
    """
    try:
        _check_target_range(name, y, num_outputs)
    except ValueError as refusal:
        if class_labels or loss_fn is None:
            raise
        per_row = y.reshape(y.shape[0], -1)
        rows = sorted({int(per_row.amin(1).argmin()), int(per_row.amax(1).argmax())})
        try:
            with torch.no_grad(), eval_mode(model):
                for i in rows:
                    loss_fn(model(x[i:i + 1]), y[i:i + 1])
        except (IndexError, RuntimeError, TypeError, ValueError):
            raise refusal from None


def _check_model_data(
    model: nn.Module,
    pairs: Sequence[tuple[str, Tensor, str, Tensor]],
    dtype: torch.dtype,
    device: torch.device,
    class_labels: bool,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> None:
    """Check ``(input name, inputs, target name, targets)`` pairs against the model.

    Devices and dtypes first (floating inputs in ``dtype``, the parameters'; integer
    targets when ``class_labels``), so the model only ever runs on inputs it accepts; then
    one forward pass of one row gives the number of classes the integer labels must fit
    (for a ``loss_fn`` other than the default cross-entropy: unless the loss takes them,
    :func:`_check_labels`), and integer inputs (token ids) are run through the model on
    every row. The model is run without a graph in eval mode: nothing of it changes.
    """
    for x_name, x, y_name, y in pairs:
        _check_inputs(x_name, x, dtype, device)
        _check_target_type(y_name, y, device, class_labels)
    num_outputs = _num_outputs(model, pairs[0][1])
    for x_name, x, _, _ in pairs:
        if not x.is_floating_point():
            _check_all_rows_run(model, x_name, x)
    for _, x, y_name, y in pairs:
        _check_labels(model, loss_fn, x, y_name, y, num_outputs, class_labels)
