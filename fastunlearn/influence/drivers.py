"""Drivers: label unlearning (repair flipped labels) and feature unlearning (replace or zero).

Each driver turns a description of *what* changes (rows and new labels; rows, columns and
new values) into the affected points ``Z``, their corrected versions ``Z~`` and the corrected
training set, then calls :func:`~fastunlearn.influence.influence_update`. Inputs are
validated before anything is computed: a bad index, label, column or non-finite value
raises and leaves the model unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._interrupt import StopCheck, check_stop_callable, stop_points, stop_requested
from .._model_inputs import refuse_input_dtype
from .._numbers import as_float, check_int, check_seed, is_real
from .._repr import format_number
from .arguments import (
    _check_inputs,
    _check_labels,
    _check_target_range,
    _check_target_type,
    _num_outputs,
)
from .gradients import eval_mode
from .settings import UpdateOptions, UpdateResult
from .update import _warn_no_effect, check_update_options, influence_update

__all__ = [
    "IterativeRepairResult",
    "repair_labels",
    "iterative_label_repair",
    "replace_features",
    "unlearn_features",
    "predict",
]


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim == 0:
        raise ValueError(f"'{name}' must have a leading dimension, got a scalar")
    return value


def _as_tensor(name: str, value: Any) -> Tensor:
    """Return a CPU tensor of a tensor, sequence or array (not a string); else TypeError."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu")
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (ValueError, TypeError, OverflowError) as exc:
            raise ValueError(f"'{name}' must be a 1-D list of integers: {exc}") from None
    raise TypeError(f"'{name}' must be a sequence or tensor of ints, got {type(value).__name__}")


def _as_integers(name: str, value: Any) -> Tensor:
    """Return a non-empty 1-D integer CPU tensor; emptiness is checked before the dtype.

    (``np.asarray([])`` is float64: an empty list would otherwise look like a dtype error.)
    """
    t = _as_tensor(name, value)
    if t.numel() == 0:
        raise ValueError(f"'{name}' is empty: it must name at least one entry")
    if t.ndim != 1:
        raise ValueError(f"'{name}' must be 1-D, got shape {list(t.shape)}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"'{name}' must hold integers, got {t.dtype}")
    return t


def _as_index(name: str, value: Any, n: int, device: torch.device) -> Tensor:
    """Validate an index list (non-empty, 1-D, ints in [0, n), no duplicates).

    Returns:
        An int64 tensor on ``device``.

    """
    t = _as_integers(name, value)
    low, high = int(t.min()), int(t.max())
    if low < 0 or high >= n:
        raise ValueError(f"'{name}' holds indices in [{low}, {high}], outside [0, {n - 1}]")
    t = t.to(torch.int64)
    if torch.unique(t).numel() != t.numel():
        raise ValueError(f"'{name}' holds duplicate indices")
    return t.to(device)


def _check_new_labels(name: str, new: Tensor, dtype: torch.dtype) -> None:
    """Check that new labels fit ``dtype`` (before any cast; their range: _check_labels)."""
    low, high = int(new.min()), int(new.max())
    info = torch.iinfo(dtype)
    if low < info.min or high > info.max:
        raise ValueError(f"'{name}' holds labels in [{low}, {high}], which the dtype of "
                         f"'labels' ({dtype}) cannot hold")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _reusable_options(update_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return ``update_kwargs`` with a one-pass ``params`` (a generator) made a list.

    The drivers read the options more than once (checked first, then one update or one
    per step); ``params=model.fc.parameters()`` would be used up by the first reading.
    """
    params = update_kwargs.get("params")
    if isinstance(params, Iterator):
        return {**update_kwargs, "params": list(params)}
    return update_kwargs


def predict(model: nn.Module, inputs: Tensor, *, chunk_size: int | np.integer = 1024) -> Tensor:
    """Arg-max class of every row (eval mode, no graph, chunked) -> int64 Tensor[n].

    Raises:
        TypeError: If ``model`` is not an nn.Module, ``inputs`` is not a tensor, or
            ``chunk_size`` is not an int (a bool is not one); or if the model fails on
            ``inputs`` of another dtype than its parameters (naming both dtypes).
        ValueError: If ``inputs`` has no leading dimension (a scalar) or ``chunk_size``
            is < 1.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    inputs = _check_tensor("inputs", inputs)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, inputs.shape[0], chunk_size):
            try:
                logits = model(inputs[start:start + chunk_size])
            except RuntimeError as exc:
                refuse_input_dtype(model, inputs, "inputs", exc)
                raise
            out.append(logits.argmax(dim=-1))
    if not out:
        return torch.zeros(0, dtype=torch.int64, device=inputs.device)
    return torch.cat(out)


def repair_labels(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    indices: Any,
    new_labels: Any,
    **update_kwargs: Any,
) -> UpdateResult:
    """Unlearn wrong labels: replace ``labels[indices]`` by ``new_labels`` with one update.

    ``Z = (inputs[i], labels[i])`` and ``Z~ = (inputs[i], new_label_i)`` for i in ``indices``;
    the Hessian, line search and divergence check use the corrected training set
    (``labels`` with the new labels put in). ``labels`` itself is not modified.

    Args:
        model: The model trained on ``(inputs, labels)``; updated in place.
        inputs: Tensor[N, ...], the training inputs.
        labels: int Tensor[N], the labels the model was trained on.
        indices: Rows whose labels change (a non-empty 1-D list of ints in [0, N), no
            duplicates).
        new_labels: Their correct labels (1-D, one per index, in the model's classes;
            checked before they are cast to ``labels.dtype``).
        **update_kwargs: Options of :func:`~fastunlearn.influence.influence_update`
            (``order``, ``solver``, ``damping``, ``params``, ``tau``, ``loss_fn``, ...);
            ``params`` may be any iterable, a generator too.

    Returns:
        The :class:`~fastunlearn.influence.UpdateResult`.

    Raises:
        TypeError: If ``inputs`` or ``labels`` is not a tensor, ``labels`` is not a 1-D
            integer tensor, ``indices`` or ``new_labels`` does not hold integers, or an
            option is of the wrong type (as for ``influence_update``); the model is then
            unchanged.
        ValueError: If ``labels`` does not have one entry per row of ``inputs`` or holds
            labels outside the model's classes, ``indices`` is empty, not 1-D, outside
            ``[0, N)`` or holds duplicates, ``new_labels`` does not have one label per
            index or holds labels outside the model's classes (or the dtype of
            ``labels``), or other bad inputs (named, as for ``influence_update``; with a
            ``loss_fn`` of the caller's only labels it fails on are outside the
            classes); the model is then unchanged.

    """
    inputs = _check_tensor("inputs", inputs)
    labels = _check_tensor("labels", labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool \
            or labels.ndim != 1:
        raise TypeError(f"'labels' must be a 1-D integer tensor, got {labels.dtype} "
                        f"{list(labels.shape)}")
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"'labels' must have one entry per row of 'inputs' "
                         f"({inputs.shape[0]}), got {labels.shape[0]}")
    update_kwargs = _reusable_options(update_kwargs)
    opts = check_update_options(model, **update_kwargs)
    idx = _as_index("indices", indices, inputs.shape[0], labels.device)
    new = _as_integers("new_labels", new_labels)
    if new.numel() != idx.numel():
        raise ValueError(f"'new_labels' must have one label per index ({idx.numel()}), "
                         f"got {new.numel()}")
    _check_inputs("inputs", inputs, opts.dtype, opts.device)
    _check_target_type("labels", labels, opts.device, opts.class_labels)
    num_outputs = _num_outputs(model, inputs)
    # 'labels' itself, not the corrected set influence_update sees ('train_data[1]')
    _check_labels(model, opts.loss_fn, inputs, "labels", labels, num_outputs,
                  opts.class_labels)
    # range-check before casting to labels.dtype (a uint8 cast would wrap 258 to 2)
    _check_labels(model, opts.loss_fn, inputs[idx], "new_labels", new.to(labels.device),
                  num_outputs, opts.class_labels)
    _check_new_labels("new_labels", new, labels.dtype)
    new = new.to(device=labels.device, dtype=labels.dtype)
    corrected = labels.clone()
    corrected[idx] = new
    x = inputs[idx]
    return influence_update(model, x, labels[idx], x, new, train_data=(inputs, corrected),
                            **update_kwargs)


def replace_features(
    inputs: Tensor, columns: Any, *, rows: Any = None, values: float | np.floating | Tensor = 0.0
) -> tuple[Tensor, Tensor]:
    """Return the corrected inputs and the affected rows for a feature change.

    Features are the entries of each flattened row (``inputs.reshape(N, -1)``).

    Args:
        inputs: Tensor[N, ...].
        columns: Feature indices (a non-empty 1-D list of ints in [0, F), no duplicates).
        rows: Rows to change (non-empty, 1-D); None: every row with a non-zero value in
            one of ``columns`` (the reference's feature-removal mode).
        values: New values: a scalar (0.0 zeroes the features) or Tensor[len(rows),
            len(columns)] (replacement mode); must be finite.

    Returns:
        ``(corrected inputs [N, ...], affected rows int64 [m])``; ``inputs`` is not modified.

    Raises:
        TypeError: If ``inputs`` is not a floating-point tensor, ``columns`` or ``rows``
            does not hold integers, or ``values`` is neither a number nor a real tensor.
        ValueError: If ``inputs`` is a scalar, ``columns`` or ``rows`` is empty, not 1-D,
            out of range or holds duplicates, a ``values`` tensor does not have shape
            ``[len(rows), len(columns)]``, or ``values`` is not finite (in the dtype of
            ``inputs``).

    """
    inputs = _check_tensor("inputs", inputs)
    if not inputs.is_floating_point():
        raise TypeError(f"'inputs' must be floating point features, got {inputs.dtype}: "
                        f"integer inputs (token ids) have no feature values to replace; "
                        f"pass the changed tokens to influence_update as 'new_inputs'")
    n = inputs.shape[0]
    flat = inputs.reshape(n, -1)
    cols = _as_index("columns", columns, flat.shape[1], inputs.device)
    if rows is None:
        row_idx = torch.nonzero((flat[:, cols] != 0).any(dim=1)).reshape(-1)
    else:
        row_idx = _as_index("rows", rows, n, inputs.device)
    if isinstance(values, Tensor):
        if values.is_complex():
            raise TypeError(f"'values' must be real, got {values.dtype}")
        vals = values.to(dtype=inputs.dtype, device=inputs.device)
        if vals.shape != (row_idx.numel(), cols.numel()):
            raise ValueError(f"'values' must have shape [{row_idx.numel()}, {cols.numel()}] "
                             f"(rows x columns), got {list(vals.shape)}")
        if not bool(torch.isfinite(vals).all()):
            raise ValueError("'values' contains non-finite values (NaN or inf)")
    else:
        if not is_real(values):  # Python or NumPy real, not a bool
            raise TypeError(f"'values' must be a number or a tensor, got "
                            f"{type(values).__name__}")
        value = as_float(values)  # an int beyond the float range: inf, refused below
        # finite also in the dtype of the inputs (1e300 is inf in float32)
        if not (math.isfinite(value) and abs(value) <= torch.finfo(inputs.dtype).max):
            raise ValueError(f"'values' must be finite in the dtype of 'inputs' "
                             f"({inputs.dtype}), got {value}")
        vals = torch.full((row_idx.numel(), cols.numel()), value, dtype=inputs.dtype,
                          device=inputs.device)
    new_flat = flat.clone()
    new_flat[row_idx.unsqueeze(1), cols.unsqueeze(0)] = vals
    return new_flat.reshape(inputs.shape), row_idx


def unlearn_features(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    columns: Any,
    *,
    rows: Any = None,
    values: float | np.floating | Tensor = 0.0,
    **update_kwargs: Any,
) -> UpdateResult:
    """Unlearn feature values: set ``columns`` of ``rows`` to ``values`` with one update.

    ``Z`` are the affected rows as trained on, ``Z~`` the same rows with the new feature
    values (labels unchanged); the corrected training set has every affected row replaced.
    See :func:`replace_features` for ``columns``, ``rows`` and ``values``.

    Args:
        model: The model trained on ``(inputs, labels)``; updated in place.
        inputs: Tensor[N, ...], the training inputs (not modified).
        labels: Tensor[N], the training labels.
        columns: Feature indices of the flattened rows.
        rows: Affected rows, or None for every row with a non-zero value in ``columns``.
        values: Scalar (0.0: removal) or Tensor[len(rows), len(columns)].
        **update_kwargs: Options of :func:`~fastunlearn.influence.influence_update`
            (``params`` may be any iterable, a generator too).

    Returns:
        The :class:`~fastunlearn.influence.UpdateResult` (``applied=False`` with a reason
        when no row is affected).

    Raises:
        TypeError: Bad inputs or options (named), as for :func:`replace_features` and
            ``influence_update``; checked even when no row is affected, and the model is
            then unchanged.
        ValueError: If ``labels`` does not have one entry per row of ``inputs``, holds
            labels outside the model's classes (with a ``loss_fn`` of the caller's: labels
            it fails on), or other bad inputs or options (named); checked even when no
            row is affected, and the model is then unchanged.

    """
    inputs = _check_tensor("inputs", inputs)
    labels = _check_tensor("labels", labels)
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"'labels' must have one entry per row of 'inputs' "
                         f"({inputs.shape[0]}), got {labels.shape[0]}")
    update_kwargs = _reusable_options(update_kwargs)
    opts = check_update_options(model, **update_kwargs)
    _check_inputs("inputs", inputs, opts.dtype, opts.device)
    _check_target_type("labels", labels, opts.device, opts.class_labels)
    # labels outside the model's classes are rejected even when no row is affected
    _check_labels(model, opts.loss_fn, inputs, "labels", labels, _num_outputs(model, inputs),
                  opts.class_labels)
    corrected, row_idx = replace_features(inputs, columns, rows=rows, values=values)
    if row_idx.numel() == 0:
        # what influence_update would have said of 'tau' and 'lissa' (the caller's line)
        _warn_no_effect(opts, update_kwargs.get("tau", "auto"), update_kwargs.get("lissa"),
                        stacklevel=2)
        return _nothing_to_update(opts, "no row has a non-zero value in the given columns")
    return influence_update(model, inputs[row_idx], labels[row_idx], corrected[row_idx],
                            labels[row_idx], train_data=(corrected, labels), **update_kwargs)


def _nothing_to_update(opts: UpdateOptions, reason: str) -> UpdateResult:
    """Return the result of an update without affected points (zero step, not applied)."""
    return UpdateResult(order=opts.order, solver=opts.solver if opts.order == 2 else None,
                        step=torch.zeros(opts.num_params, dtype=opts.dtype, device=opts.device),
                        param_names=list(opts.names), num_params=opts.num_params,
                        num_affected=0, tau=opts.tau, reason=reason)


@dataclass(repr=False)
class IterativeRepairResult:
    """Outcome of :func:`iterative_label_repair`.

    Attributes:
        steps: One dict per step: ``step``, ``mispredicted`` (training rows whose prediction
            differs from the corrected label before the step), ``batch`` (points updated),
            and the step's :meth:`UpdateResult.to_dict` fields, plus whatever ``evaluate``
            returned under ``"eval"``; a last step with nothing mispredicted has only
            ``step``, ``mispredicted`` (0), ``batch`` (0) and ``reason``, and so has one
            not run because ``should_stop`` asked to stop before it (``step``, ``batch``
            (0) and a ``reason`` starting with ``"stopped on request"``; no prediction
            is made for it).
        results: The :class:`UpdateResult` of every step run (each applied whole).
        update_time_s: Wall time of the updates (selection and evaluation excluded).
        num_gradients: Per-sample gradients over all steps.
        num_hvps: Per-sample HVPs over all steps.
        stopped_on_request: True when ``should_stop`` ended the loop before ``steps``
            steps were run (the last entry of ``steps`` says after how many).

    """

    steps: list[dict[str, Any]] = field(default_factory=list)
    results: list[UpdateResult] = field(default_factory=list)
    update_time_s: float = 0.0
    num_gradients: int = 0
    num_hvps: int = 0
    stopped_on_request: bool = False

    def __repr__(self) -> str:
        """Return the totals in one line (not every step, whatever their number)."""
        applied = sum(bool(getattr(r, "applied", False)) for r in self.results)
        diverged = sum(bool(getattr(r, "diverged", False)) for r in self.results)
        mispredicted = [s.get("mispredicted") for s in self.steps if isinstance(s, Mapping)]
        mispredicted = [m for m in mispredicted if m is not None]
        trend = (f", mispredicted={mispredicted[0]}->{mispredicted[-1]}" if mispredicted
                 else "")
        stopped = ", stopped_on_request=True" if self.stopped_on_request else ""
        return (f"IterativeRepairResult(steps={len(self.steps)}, applied={applied}, "
                f"diverged={diverged}{trend}, update_time_s={format_number(self.update_time_s)}, "
                f"num_gradients={self.num_gradients}, num_hvps={self.num_hvps}{stopped})")


def iterative_label_repair(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    steps: int | np.integer = 10,
    batch_size: int | np.integer = 512,
    seed: int | np.integer = 0,
    evaluate: Callable[[nn.Module], Any] | None = None,
    chunk_size: int | np.integer = 1024,
    should_stop: StopCheck | None = None,
    **update_kwargs: Any,
) -> IterativeRepairResult:
    """Run the reference's iterative approximate retraining for label poisoning.

    Per step: find every training row whose current prediction differs from its corrected
    label, sample ``batch_size`` of them, and apply one update with ``z = (x, current
    prediction)`` and ``z~ = (x, corrected label)``; the corrected training set is
    ``(inputs, labels)``. A diverged step leaves the model unchanged and the loop goes on.
    The known flipped indices are not needed.

    Args:
        model: The poisoned model; updated in place.
        inputs: Tensor[N, ...], training inputs.
        labels: int Tensor[N], the **corrected** labels.
        steps: Number of update steps (reference: 10).
        batch_size: Mispredicted points sampled per step (reference: 512 first order,
            1024 second order).
        seed: Seed of the sampling (an int >= 0).
        evaluate: Optional callable ``evaluate(model)`` called after every step (its time
            is not counted); its return value is stored under ``"eval"``.
        chunk_size: Rows per prediction chunk (an int >= 1).
        should_stop: Optional callable taking no arguments, asked before every step after
            the first; when it answers True the loop ends there and the result has
            ``stopped_on_request`` set and a last ``steps`` entry whose ``reason`` says
            so. A step is never cut in half: the steps run are applied whole (as when a
            step raises). ``fastunlearn repair`` answers True after the first Ctrl-C.
            None: run every step.
        **update_kwargs: Options of :func:`~fastunlearn.influence.influence_update`
            (``progress=True`` also shows a bar over the steps; ``params`` may be any
            iterable, a generator too: it is read once for every step).

    Returns:
        An :class:`IterativeRepairResult`.

    Raises:
        TypeError: If ``evaluate`` or ``should_stop`` is neither None nor callable,
            ``inputs`` or ``labels`` is not a tensor, ``labels`` does not hold integers,
            ``steps``, ``batch_size``, ``chunk_size`` or ``seed`` is not an int (a bool is
            not one), or other bad inputs or options (named). All are checked before the
            first step, so the model is then unchanged.
        ValueError: If ``labels`` is not 1-D with one label per row of ``inputs`` or
            holds labels outside the model's classes, ``steps``, ``batch_size`` or
            ``chunk_size`` is < 1, ``seed`` is outside ``[0, 2**64 - 1]``, or other bad
            inputs or options (named), including inputs the model cannot run on. All are
            checked before the first step.

    """
    inputs = _check_tensor("inputs", inputs)
    labels = _check_tensor("labels", labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"'labels' must hold integer class labels, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"'labels' must be 1-D with one label per row of 'inputs' "
                         f"({inputs.shape[0]}), got shape {list(labels.shape)}")
    steps, batch_size, chunk_size = (check_int(name, value, 1) for name, value in (
        ("steps", steps), ("batch_size", batch_size), ("chunk_size", chunk_size)))
    seed = check_seed("seed", seed)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"'evaluate' must be callable, got {type(evaluate).__name__}")
    check_stop_callable(should_stop)
    update_kwargs = _reusable_options(update_kwargs)  # one list for every step
    opts = check_update_options(model, **update_kwargs)  # even if no step runs an update
    # everything the steps use is checked before the first prediction, so a bad argument
    # is named here (not a RuntimeError of the forward pass) and no step runs before it
    _check_inputs("inputs", inputs, opts.dtype, opts.device)
    _check_target_type("labels", labels, opts.device, opts.class_labels)
    _check_target_range("labels", labels, _num_outputs(model, inputs))
    gen = torch.Generator().manual_seed(int(seed))
    out = IterativeRepairResult()
    bar = None
    if update_kwargs.get("progress"):
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="repair", unit="step")
    # the bar is closed also when a step raises or is interrupted (Ctrl-C); every step
    # before it is applied whole (influence_update changes the model in one call)
    try:
        with stop_points(should_stop):  # Ctrl-C here: finish the step, then stop
            for step in range(1, steps + 1):
                # asked between steps only: the first step always runs, none is cut in half
                if step > 1 and stop_requested(should_stop):
                    out.stopped_on_request = True
                    out.steps.append({"step": step, "batch": 0,
                                      "reason": f"stopped on request after {step - 1} of "
                                      f"{steps} steps"})
                    break
                if bar is not None:
                    bar.update(1)
                pred = predict(model, inputs, chunk_size=chunk_size)
                wrong = torch.nonzero(pred != labels).reshape(-1)
                record: dict[str, Any] = {"step": step, "mispredicted": int(wrong.numel())}
                if wrong.numel() == 0:
                    record["batch"] = 0
                    record["reason"] = "no mispredicted training point left: stopped"
                    out.steps.append(record)
                    break
                pick = torch.randperm(wrong.numel(), generator=gen)[:batch_size].to(wrong.device)
                rows = wrong[pick]
                x = inputs[rows]
                t0 = time.perf_counter()
                result = influence_update(model, x, pred[rows], x, labels[rows],
                                          train_data=(inputs, labels), **update_kwargs)
                out.update_time_s += time.perf_counter() - t0
                out.num_gradients += result.num_gradients
                out.num_hvps += result.num_hvps
                out.results.append(result)
                record["batch"] = int(rows.numel())
                record.update(result.to_dict())
                if evaluate is not None:
                    record["eval"] = evaluate(model)
                out.steps.append(record)
    finally:
        if bar is not None:
            bar.close()
    return out
