"""Helpers shared by SCRUB, Bad Teacher, SalUn, UNSIR and the anti-sample methods.

The input checks every one of them runs first (:func:`prepare_inputs`), materialising data
sets as tensors, per-class subsets, a plain cross-entropy training loop, re-initialising a
model and small validators for config fields.

BatchNorm and one-example batches: in training mode ``nn.BatchNorm*`` normalises with the
statistics of the batch itself and refuses an input with one value per channel (PyTorch's
"Expected more than 1 value per channel when training"), so a model with a BatchNorm1d
after a linear layer (or a BatchNorm2d on a 1x1 map) cannot train on a batch of a single
example. Every training loop of the forgetting methods therefore iterates its batches
through :class:`SkipSingleBatches`, which skips a one-example batch (only ever the last
batch of an epoch, since ``batch_size = 1`` is refused) when, and only when, the model
could not train on it; and every method calls :func:`check_single_batches` before any
training, which refuses with a ValueError naming the argument a data set of one example
or a batch size of 1 that such a model would have to train on.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset, Subset, TensorDataset

from .._numbers import check_fraction as fraction_in
from .._process_flags import GLOBAL_RNG_LOCK
from .base import (
    ForgetConfig,
    as_dataset,
    batches,
    iterate,
    model_device,
    sized_len,
)
from .checks import check_labels, check_sets

__all__ = [
    "SkipSingleBatches",
    "TrainingData",
    "check_adam_dtype",
    "check_fraction",
    "check_inputs",
    "check_single_batches",
    "checked_tensors",
    "class_subset",
    "dataset_tensors",
    "eval_forward",
    "example_logits",
    "example_outputs",
    "float_input_dtype",
    "freeze",
    "num_outputs",
    "prepare_inputs",
    "probe_forward",
    "reinitialize",
    "seeded_rng",
    "single_example_batch_fails",
    "train_ce",
]


def check_fraction(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, checked to be in ``(0, 1]`` (``[0, 1]`` if allowed).

    The one fraction check of every forgetting method (also re-exported by ``_training``):
    the library's :func:`~fastunlearn._numbers.check_fraction` with 1 included.

    Raises:
        TypeError: If ``value`` is not a real number (a bool is not one).
        ValueError: If ``value`` is outside the interval.

    """
    return fraction_in(name, value, zero=allow_zero, one=True)


def check_inputs(
    config: object, config_cls: type[ForgetConfig], forget: object, retain: object
) -> tuple[Dataset, Dataset]:
    """Check a method's config type and return its forget and retain sets as data sets.

    Only the types and shapes; :func:`prepare_inputs` adds the label, duplicate and overlap
    checks every method runs.

    Raises:
        TypeError: If ``config`` is not a ``config_cls`` or a data set has the wrong type
            (also a config field assigned a value of the wrong type after construction).
        ValueError: If a data set is malformed (see :func:`~fastunlearn.forget.base.as_dataset`)
            or a config field holds an invalid value.

    """
    if not isinstance(config, config_cls):
        name = config_cls.__name__
        article = "an" if name[:1] in "AEIOU" else "a"
        raise TypeError(f"'config' must be {article} {name}, got {type(config).__name__}")
    # Re-run the field checks: a config changed after construction (``cfg.lr = nan``)
    # would otherwise train with the bad value and return a silently broken model.
    config.__post_init__()
    return as_dataset(forget, "forget"), as_dataset(retain, "retain")


def prepare_inputs(
    model: object, config: object, config_cls: type[ForgetConfig], forget: object, retain: object
) -> tuple[Dataset, Dataset, int]:
    """Validate everything a method gets, before any costly work; nothing is modified.

    Checks the config type, the model type, the data sets (:func:`check_inputs`), then
    labels against the model's outputs, duplicate forget examples and, unless
    ``config.check_overlap`` is off, forget examples present in retain
    (:func:`~fastunlearn.forget.checks.check_sets`).

    Returns:
        ``(forget, retain, num_classes)``.

    Raises:
        TypeError: On a wrong config, model or data type, or inputs the model cannot run on.
        ValueError: On empty or malformed data (items that are not ``(input, label)``
            pairs, retain inputs giving another number of outputs than forget inputs),
            out-of-range labels, duplicates or overlap.

    """
    forget_ds, retain_ds = check_inputs(config, config_cls, forget, retain)
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    k = int(example_outputs(model, forget_ds, retain_ds).shape[-1])
    check_sets(forget_ds, retain_ds, k, check_overlap=bool(getattr(config, "check_overlap", True)))
    return forget_ds, retain_ds, k


def checked_tensors(ds: Dataset, num_classes: int, name: str) -> tuple[Tensor, Tensor]:
    """:func:`dataset_tensors` of ``ds`` with its labels checked against ``num_classes``.

    For data sets whose labels :func:`prepare_inputs` could not see without loading them.
    """
    x, y = dataset_tensors(ds, name)
    check_labels(y, num_classes, name)
    return x, y


def model_float_dtype(model: nn.Module) -> torch.dtype:
    """Return the dtype of the model's first floating parameter (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def float_input_dtype(model: nn.Module, x: Tensor) -> torch.dtype:
    """Return the floating dtype a method that generates inputs uses for data ``x``.

    Floating data keeps its dtype; integer data (e.g. uint8 images, used as their values)
    takes the model's floating dtype (:func:`model_float_dtype`: float32 for a float32
    model, float64 for a float64 one, as before for float32 models).
    """
    return x.dtype if x.is_floating_point() else model_float_dtype(model)


def check_adam_dtype(model: nn.Module, method: str) -> None:
    """Refuse a float16 model for a method that trains it with Adam, before any work.

    Adam's second moment ``grad**2 * (1 - beta2)`` underflows to zero in float16 for
    gradients below ~8e-3 and its ``eps`` (1e-8) rounds to zero, so its steps divide by
    zero: the model came back as inf/NaN without an error. bfloat16 (float32's range) and
    float32/float64 train normally.

    Raises:
        TypeError: Naming ``model``, if a trainable parameter is float16.

    """
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype == torch.float16:
            raise TypeError(
                f"{method}: 'model' must not have float16 parameters (got {name!r} in "
                "float16): the method trains with Adam, whose state underflows in half "
                "precision (the weights would become inf/NaN); convert the model with "
                ".float() or .bfloat16()"
            )


def check_float_inputs(model: nn.Module, x: Tensor, method: str, why: str) -> None:
    """Refuse inputs a method that generates inputs cannot use, before any costly work.

    Such a method makes new floating-point inputs (noise, interpolations) of the data's
    shape. Floating data is fine; integer data (e.g. uint8 images) is fine when the model
    runs on its float version (in the model's floating dtype, :func:`float_input_dtype`),
    as the method then casts it. Integer data the model does
    not run on as floats (token ids for an ``nn.Embedding``) has no such version, and is
    refused with a TypeError; complex or bool data too. ``model`` is evaluated in eval
    mode without gradients and is not modified.
    """
    if x.is_floating_point():
        return
    found = f"got {x.dtype} inputs"
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{method} needs floating-point inputs ({why}); {found}")
    try:
        eval_forward(model, x[:1].to(float_input_dtype(model, x)))
    except Exception as exc:
        embeddings = [type(m).__name__ for m in model.modules()
                      if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
        hint = (f" (token ids for its {embeddings[0]} cannot be generated or perturbed)"
                if embeddings else "")
        raise TypeError(
            f"{method} needs floating-point inputs ({why}); {found}, and the model does "
            f"not run on them as floats{hint}: {type(exc).__name__}: {exc}"
        ) from exc


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to all its parameters (in place).

    Used for distillation teachers and for models only differentiated through (not trained).
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _subset_tensors(ds: Dataset) -> tuple[Tensor, Tensor] | None:
    """Return ``(inputs, labels)`` of nested Subsets of a two-tensor TensorDataset, one slice.

    The same tensors as stacking the items one by one (``Subset.__getitem__`` per row, which
    made :func:`dataset_tensors` a Python loop over every example); ``None`` where that
    equivalence is not plain (other data set types or subclasses, an empty set, indices that
    are not integers or out of range, tensors that require grad): the item loop then runs,
    with its own errors.
    """
    chain = []
    while type(ds) is Subset:
        chain.append(ds)
        ds = ds.dataset
    if not chain or type(ds) is not TensorDataset or len(ds.tensors) != 2:
        return None
    x, y = ds.tensors
    if x.requires_grad or y.requires_grad or x.dim() == 0 or y.dim() == 0:
        return None
    size = x.shape[0]
    index: Tensor | None = None
    for sub in reversed(chain):  # innermost first: each level picks from the one below
        try:
            own = torch.as_tensor(sub.indices)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            return None
        if own.dim() != 1 or own.numel() == 0 or own.dtype == torch.bool or (
            own.is_floating_point() or own.is_complex()
        ):
            return None
        own = own.to(torch.int64)
        if int(own.min()) < -size or int(own.max()) >= size:
            return None
        own = torch.where(own < 0, own + size, own)
        index = own if index is None else index[own]
        size = own.numel()
    picked = cast(Tensor, index)  # never None: ``chain`` is not empty, the loop ran
    # contiguous, as a stack of the items is
    return (x.index_select(0, picked.to(x.device)).contiguous(),
            y.index_select(0, picked.to(y.device)).contiguous())


def dataset_tensors(ds: Dataset, name: str = "dataset") -> tuple[Tensor, Tensor]:
    """All ``(inputs, labels)`` of a map-style data set as two tensors (labels int64).

    A :class:`~torch.utils.data.TensorDataset` of two tensors is returned without copying.

    Raises:
        TypeError: Naming ``name``, if the labels are not a 1-D tensor of integers (float
            labels, even whole ones, and bool labels are refused, never truncated).

    """
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        x, y = ds.tensors
    elif (sliced := _subset_tensors(ds)) is not None:
        x, y = sliced
    else:
        items = [ds[i] for i in range(sized_len(ds))]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.stack([torch.as_tensor(item[1]) for item in items])
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise TypeError(
            f"{name}: labels must be a 1-D integer tensor, got {y.dtype} of shape "
            f"{tuple(y.shape)}"
        )
    return x, y.long()


def eval_forward(model: nn.Module, batch: Tensor) -> Tensor:
    """Return ``model(batch)`` in eval mode without gradients, restoring the mode after.

    ``batch`` is moved to the model's device first. Every submodule gets its own mode
    back (a caller's model may mix modes, e.g. a backbone in eval mode).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(batch.to(model_device(model)))
    finally:
        for m, mode in modes:
            m.training = mode


def probe_forward(model: nn.Module, example: Tensor) -> Tensor:
    """``model`` on one example in eval mode (:func:`eval_forward`), before any work.

    Raises:
        TypeError: ``model`` cannot run on the inputs (e.g. uint8 images into a float
            model: torch's error is kept in the message), named with their dtype and shape.

    """
    try:
        return eval_forward(model, example[:1])
    except (RuntimeError, NotImplementedError) as exc:
        dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
        params = f", the model's parameters {', '.join(dtypes)}" if dtypes else ""
        raise TypeError(
            f"model cannot run on the inputs (dtype {example.dtype}, example shape "
            f"{tuple(example.shape[1:])}{params}): {exc}; convert the data to what the "
            "model takes (e.g. float images of its dtype)"
        ) from exc


def example_logits(model: nn.Module, dataset: Dataset, name: str) -> Tensor:
    """``model`` on the first item of ``dataset``, which must be an ``(input, label)`` pair.

    Raises:
        ValueError: The item is not a pair, or the model's output is not a 2-D
            ``[batch, classes]`` tensor of logits.
        TypeError: ``model`` cannot run on the input, or returns something other than a
            tensor (a tuple of logits and features, a dict).

    """
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        got = f"{len(item)} elements" if isinstance(item, (tuple, list)) else type(item).__name__
        raise ValueError(f"{name}: every item must be an (input, label) pair, got {got}")
    try:
        out = probe_forward(model, torch.as_tensor(item[0]).unsqueeze(0))
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from exc
    if not isinstance(out, Tensor):
        raise TypeError(f"'model' must return a tensor of logits [batch, classes], got "
                        f"{type(out).__name__}; wrap it so that forward returns the logits")
    if out.dim() != 2:
        raise ValueError(f"'model' must return logits [batch, classes], got shape "
                         f"{tuple(out.shape)}")
    return out


def example_outputs(model: nn.Module, forget: Dataset, retain: Dataset) -> Tensor:
    """``model``'s output for the first forget example, after checking both data sets' items.

    The first item of each set must be an ``(input, label)`` pair that ``model`` runs on
    (:func:`probe_forward`, eval mode, nothing modified), giving as many outputs for a retain
    input as for a forget input.

    Raises:
        ValueError: An item is not a pair, the output is not 2-D ``[batch, classes]``
            logits, or the two sets give different output counts.
        TypeError: ``model`` cannot run on a set's inputs (named ``forget`` or ``retain``),
            or returns something other than a tensor.

    """
    out = example_logits(model, forget, "forget")
    k_r = int(example_logits(model, retain, "retain").shape[-1])
    if k_r != int(out.shape[-1]):
        raise ValueError(f"retain: the model gives {k_r} outputs for a retain input but "
                         f"{int(out.shape[-1])} for a forget input; the sets must hold the "
                         "same kind of inputs")
    return out


def num_outputs(model: nn.Module, example: Tensor) -> int:
    """Count the logits ``model`` produces for one input (evaluated in eval mode)."""
    return int(probe_forward(model, example[:1]).shape[-1])


def class_subset(labels: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Return indices of a random ``fraction`` of every class.

    Each class keeps ``floor(fraction * count)`` rows (as the anti-sample scripts), at least
    one.
    """
    chosen = []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).flatten()
        n = max(1, int(fraction * rows.numel() + 1e-9))
        perm = torch.randperm(rows.numel(), generator=generator)[:n]
        chosen.append(rows[perm])
    return torch.sort(torch.cat(chosen)).values


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the body with the global generators seeded by ``seed``, restoring them after.

    The CPU generator and, for a CUDA ``device``, that device's generator are forked:
    dropout and ``reset_parameters`` draw from them, so a method's result depends on its
    seed alone and the caller's RNG state is left as it was.
    """
    devices = [device] if device.type == "cuda" else []
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=devices):  # one seeded block at a time
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of ``model`` in place with its module's ``reset_parameters``.

    The draw is seeded and leaves the global RNG state (CPU, and the model's CUDA device)
    unchanged. Frozen parameters (``requires_grad=False``) are re-drawn too: this builds
    Bad Teacher's incompetent teacher, a random network that is never returned; the
    retrain oracle uses :func:`fastunlearn.forget.retrain.reinitialize`, which keeps them.
    A module with parameters of its own but no ``reset_parameters`` is re-drawn with
    ``_reset_parameters`` (``nn.MultiheadAttention``'s name for it). Parameters of a module
    with neither (torchvision's ViT class token and position embedding, ConvNeXt's layer
    scale, a custom module's ``nn.Parameter``) keep their trained values, with a
    ``UserWarning`` naming them: there is no standard way to re-draw them, and the teacher
    is still random in every layer that has one.

    """
    resets, kept = [], []
    for name, module in model.named_modules():
        own = [p for p, _ in module.named_parameters(recurse=False)]
        reset = getattr(module, "reset_parameters", None)
        if not callable(reset) and own:
            reset = getattr(module, "_reset_parameters", None)
        if callable(reset):
            resets.append(reset)
        else:
            kept += [f"{name}.{p}" if name else p for p in own]
    if kept:
        shown = ", ".join(repr(k) for k in kept[:3]) + (f" and {len(kept) - 3} more"
                                                       if len(kept) > 3 else "")
        warnings.warn(
            f"the incompetent teacher keeps the trained values of {len(kept)} parameter(s) "
            f"({shown}): their modules have no reset_parameters() to re-draw them",
            UserWarning, stacklevel=3,
        )
    with seeded_rng(seed, model_device(model)):
        for reset in resets:
            reset()
    return model


_ONE_VALUE = "Expected more than 1 value per channel"


def single_example_batch_fails(model: nn.Module, example: Tensor) -> bool:
    """Whether ``model`` in training mode would fail on a batch holding one example.

    True when a BatchNorm layer (any ``nn.modules.batchnorm._BatchNorm``) would get a
    single value per channel from a one-example batch: ``size[0] * prod(size[2:]) == 1``,
    the input PyTorch refuses in training mode. A BatchNorm1d after a linear layer does; a
    BatchNorm2d on a feature map larger than 1x1 does not. ``model`` is run once on
    ``example[:1]`` in eval mode without gradients (no buffer or parameter changes); a
    model without BatchNorm is not run at all.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        return False
    fails = False

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal fails
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[1] > 0:
            fails = fails or x.numel() // x.shape[1] == 1

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        eval_forward(model, example[:1])
    except ValueError as exc:  # a norm without running statistics normalises in eval too
        if _ONE_VALUE in str(exc):
            return True
        raise
    finally:
        for h in handles:
            h.remove()
    return fails


_WHY = (
    "the model has a BatchNorm layer that gets a single value per channel from a "
    "one-example batch, which it cannot normalise in training mode (PyTorch: 'Expected "
    "more than 1 value per channel when training')"
)


class TrainingData(NamedTuple):
    """One data set a method trains on, for :func:`check_single_batches`.

    Attributes:
        name: How the error names the data (``"forget"``, ``"retain"``, ...).
        size: Its number of examples.
        batch_field: The config field holding its batch size (``"batch_size"``).
        batch_size: The batch size.
        fix: What the error suggests for a one-example data set (a default when None).

    """

    name: str
    size: int
    batch_field: str
    batch_size: int
    fix: str | None = None


def check_single_batches(
    model: nn.Module, example: Tensor, data: Iterable[TrainingData]
) -> None:
    """Refuse data a BatchNorm model would have to train on one example at a time.

    Called by every training-based method before any training, with the data sets it is
    about to train on. A final batch of one example is fine (the training loops skip it,
    see :class:`SkipSingleBatches`), but a data set of a single example, or a batch size
    of 1, would give only one-example batches: with a model that cannot train on those
    (:func:`single_example_batch_fails`, evaluated on ``example`` only when some data set
    is at risk) nothing could be trained.

    Raises:
        ValueError: Naming the data set (or the ``batch_size`` field) and why.

    """
    risky = [d for d in data if d.size == 1 or d.batch_size == 1]
    if not risky or not single_example_batch_fails(model, example):
        return
    d = risky[0]
    if d.size == 1:
        fix = d.fix or (
            f"give {d.name} at least 2 examples, or use a model whose normalisation works "
            "on single examples (GroupNorm, LayerNorm)"
        )
        raise ValueError(
            f"{d.name} has a single example, so every training batch of it holds one "
            f"example; {_WHY}; {fix}"
        )
    raise ValueError(
        f"{d.batch_field}=1: every training batch of {d.name} holds one example; {_WHY}; "
        f"use {d.batch_field} >= 2"
    )


class SkipSingleBatches:
    """The batches of ``loader`` without the one-example batches ``model`` cannot train on.

    A batch whose first element (the inputs) holds one example is skipped when
    :func:`single_example_batch_fails` says ``model`` would fail on it (evaluated once,
    on the first such batch); with ``batch_size >= 2`` that is only ever the last batch
    of an epoch, so the batches kept and their order are those of ``loader``. Models
    that can train on a batch of one (no BatchNorm, or BatchNorm on larger feature maps)
    get every batch.

    Raises:
        ValueError: At the end of a pass in which every batch was skipped (the methods
            refuse such data up front with :func:`check_single_batches`).

    """

    def __init__(self, loader: Iterable[Sequence[Any]], model: nn.Module, name: str) -> None:
        self.loader = loader
        self.model = model
        self.name = name
        self._fails: bool | None = None

    def __len__(self) -> int:
        return sized_len(self.loader)

    def _skip(self, batch: Sequence[Any]) -> bool:
        x = batch[0]
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != 1:
            return False
        if self._fails is None:
            self._fails = single_example_batch_fails(self.model, x)
        return self._fails

    def __iter__(self) -> Iterator[Any]:
        kept = skipped = 0
        for batch in self.loader:
            if self._skip(batch):
                skipped += 1
                continue
            kept += 1
            yield batch
        if skipped and not kept:
            raise ValueError(f"{self.name}: every training batch holds one example; {_WHY}")


def train_ce(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
    desc: str,
    after_step: Callable[[], None] | None = None,
    before_step: Callable[[], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
) -> None:
    """Minimise the mean cross-entropy of ``model`` on ``(inputs, labels)`` (shuffled).

    ``before_epoch(epoch)`` runs at the start of every epoch (e.g. to redraw labels in
    ``labels`` in place), ``before_step`` after the backward pass (e.g. to mask gradients),
    ``after_step`` after every optimiser step (e.g. to restore frozen weights). ``seed`` fixes the
    shuffling and any global-generator draw of the model (dropout), which runs under
    :func:`seeded_rng` so the caller's RNG state is not advanced. A last batch of one
    example that the model's BatchNorm cannot train on is skipped (:class:`SkipSingleBatches`).
    """
    device = model_device(model)
    loader = SkipSingleBatches(
        batches(TensorDataset(inputs, labels), batch_size, shuffle=True, seed=seed), model, desc
    )
    model.train()
    with seeded_rng(seed, device):
        for epoch in iterate(range(epochs), progress=progress, desc=desc):
            if before_epoch is not None:
                before_epoch(epoch)
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                if before_step is not None:
                    before_step()
                optimizer.step()
                if after_step is not None:
                    after_step()
