"""The one interface every forgetting method shares: ``method(model, forget, retain, config)``.

A method takes a trained classifier, the forget set, the retain set and a config dataclass,
and returns a **new** model, in eval mode and without ``.grad`` fields, that has forgotten
the forget set. The input model is never modified (methods work on a deep copy), so a failed
or poor run loses nothing. Methods train with gradients enabled even when called under
``torch.no_grad()``, and draw every random number from generators seeded by
``config.seed``: the caller's global RNG state is left as it was.

Every method checks its inputs before any costly work: the config type, the model, empty
or malformed data sets, labels outside the model's outputs, forget rows given twice and
(unless ``check_overlap=False``) forget examples that are also in the retain set
(:mod:`fastunlearn.forget.checks`). Bad input raises ValueError or TypeError naming the
argument and leaves the model unchanged.

``forget`` and ``retain`` are map-style datasets of ``(input, label)`` pairs: a
:class:`torch.utils.data.Dataset` or a tuple ``(inputs, labels)`` of tensors with the same
first dimension. :func:`as_dataset` validates and converts them.

Frozen parameters (``requires_grad=False``, e.g. a pretrained backbone) are never changed
by any method, and keep their flag: optimisers step only parameters with a gradient (no
weight decay or momentum reaches a frozen one), the methods that re-draw or perturb weights
(retrain, pruning, activation reset, Fisher noise, SalUn's mask) skip them, and ``retrain``
keeps them (:func:`fastunlearn.forget.retrain.reinitialize`). BatchNorm running statistics
are buffers: the methods that train do so in train mode and re-estimate them.

BatchNorm and one-example batches: a BatchNorm layer that gets one value per channel (a
BatchNorm1d after a linear layer) cannot train on a batch of one example. With such a
model every training loop skips a last batch of one example (the other batches, and their
order, are unchanged), and data that would only give such batches (a data set of one
example that the method trains on, ``batch_size=1``) is refused before any training with
a ValueError naming the argument (:mod:`fastunlearn.forget._common_b`).

Methods register themselves with :func:`register`; :func:`get_method` and
:func:`available_methods` look them up by name, and :func:`run_method` validates the
arguments, builds the default config when none is given and runs the method.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .._no_effect import no_effect_message
from .._numbers import check_flag, check_int, check_real
from .._unused_settings import non_default_fields

__all__ = [
    "ForgetConfig",
    "ForgetMethod",
    "TensorBatches",
    "as_dataset",
    "available_methods",
    "batches",
    "clone_model",
    "get_method",
    "iterate",
    "make_loader",
    "model_device",
    "offset_seed",
    "register",
    "run_method",
    "unused_field_messages",
    "unused_fields",
]


@dataclass
class ForgetConfig:
    """Settings every method shares; methods subclass it and add their own fields.

    A method that ignores some of these fields lists them in :attr:`UNUSED_FIELDS`; a
    config built with such a field set to a value other than its default gives a
    UserWarning (``'epochs' and 'lr' have no effect (...)``), and so does ``forget --set``
    naming one (:func:`unused_field_messages`). A field that has no effect only with some
    values of the others (``gamma`` without the ``"multistep"`` scheduler) is named by
    :meth:`conditional_warnings` when set.

    Attributes:
        epochs: Passes over the data the method trains on.
        lr: Learning rate.
        batch_size: Mini-batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        seed: Seed for shuffling, noise and any random choice of the method.
        progress: Show a tqdm progress bar (on stderr).
        check_overlap: Refuse forget and retain sets that share examples
            (:func:`fastunlearn.forget.checks.check_disjoint`).

    """

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    progress: bool = False
    check_overlap: bool = True

    #: The fields the method ignores, each with why: ``{field: "(why)"}`` (a class
    #: attribute, not a field).
    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        self.epochs = check_count("epochs", self.epochs, 0)
        self.batch_size = check_count("batch_size", self.batch_size, 1)
        self.lr = check_real("lr", self.lr)
        self.momentum = check_real("momentum", self.momentum)
        self.weight_decay = check_real("weight_decay", self.weight_decay)
        self.seed = check_signed_seed("seed", self.seed)
        self.check_overlap = check_flag("check_overlap", self.check_overlap)
        if isinstance(self.progress, np.bool_):  # unchecked (any truthy value), but kept plain
            self.progress = bool(self.progress)

    def settings_warnings(self) -> list[str]:
        """Return the warnings about settings that have no effect with the others.

        The fields of :attr:`UNUSED_FIELDS` set to a value other than their default
        (:func:`unused_field_messages`), then :meth:`conditional_warnings`. A subclass's
        ``__post_init__`` warns them at the end of its checks (:meth:`_warn_settings`).
        """
        return unused_field_messages(self) + self.conditional_warnings()

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the warnings about fields that have no effect with the others' values.

        A field is named when it is set (:meth:`_set_fields`): to a value other than its
        default, or named in ``given`` (the harness's overrides, even at their default).
        None here; a subclass with such cases adds its own, e.g. ``'tol' has no effect with
        solver='lissa' (...)``.
        """
        return []

    def _set_fields(self, names: Iterable[str], given: Collection[str] = ()) -> list[str]:
        """Return those of ``names`` set to a value other than their default or in ``given``.

        The fields of :attr:`UNUSED_FIELDS` are left out: their own warning names them.
        """
        names = [n for n in names if n not in type(self).UNUSED_FIELDS]
        changed = set(non_default_fields(self, names))
        return [n for n in names if n in given or n in changed]

    def _warn_settings(self, checked_by: type[ForgetConfig] | None = None) -> None:
        """Warn :meth:`settings_warnings` (the last step of a subclass's ``__post_init__``).

        A method re-runs ``__post_init__`` on the config it is given (a field changed after
        construction is checked again); the same warnings are not repeated then.

        Args:
            checked_by: The class whose ``__post_init__`` calls this; nothing is warned
                when a subclass overrides that ``__post_init__`` (its own checks come
                after, and it warns at their end). None: always warn.

        """
        if checked_by is not None and type(self).__post_init__ is not checked_by.__post_init__:
            return
        messages = self.settings_warnings()
        if messages and self.__dict__.get(_WARNED_KEY) != messages:
            for message in messages:
                # stacklevel: the caller of the dataclass __init__ that ran __post_init__
                warnings.warn(message, UserWarning, stacklevel=4)
        self.__dict__[_WARNED_KEY] = messages


#: Where a config keeps the warnings it gave (see ``ForgetConfig._warn_settings``).
_WARNED_KEY = "_warned_settings"


def unused_fields(config: ForgetConfig) -> list[str]:
    """Return the fields of :attr:`ForgetConfig.UNUSED_FIELDS` set to a non-default value."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return [n for n in type(config).UNUSED_FIELDS if getattr(config, n) != defaults.get(n)]


def unused_field_messages(config: ForgetConfig | type[ForgetConfig],
                          names: Iterable[str] | None = None) -> list[str]:
    """Return one warning per reason about the fields among ``names`` the method ignores.

    ``config``'s class lists them in :attr:`ForgetConfig.UNUSED_FIELDS`. With ``names``
    None, ``config`` (an instance) is checked for such fields set to a value other than
    their default. A message reads ``'epochs' and 'lr' have no effect (why)``.

    Raises:
        TypeError: ``names`` is None and ``config`` is a class.

    """
    cls = config if isinstance(config, type) else type(config)
    unused = cls.UNUSED_FIELDS
    if names is None:
        if isinstance(config, type):
            raise TypeError("'names' is needed with a config class (an instance is checked "
                            "for non-default values)")
        names = unused_fields(config)
    wanted = set(names)
    chosen = [n for n in unused if n in wanted]  # in the class's order
    by_reason: dict[str, list[str]] = {}
    for name in chosen:
        by_reason.setdefault(unused[name], []).append(name)
    return [no_effect_message(fields, why) for why, fields in by_reason.items()]



ConfigT = TypeVar("ConfigT", bound=ForgetConfig)
ForgetMethod = Callable[[nn.Module, Dataset, Dataset, Any], nn.Module]

_REGISTRY: dict[str, tuple[ForgetMethod, type[ForgetConfig]]] = {}


#: Largest integer setting: every count ends up in a torch size or ``islice`` (int64).
_MAX_INT = 2**63 - 1


def sized_len(data: object) -> int:
    """Return ``len(data)`` (torch's ``Dataset`` stub declares no ``__len__``; ours have one)."""
    return len(cast(Sized, data))


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """Return a count setting as a Python int in ``minimum .. 2**63 - 1``.

    Every count ends up in a torch size or ``islice`` (int64): a larger one would fail deep
    inside at run time. A NumPy integer is accepted; a bool or a float (even ``2.0``) is not.

    Raises:
        TypeError: If ``value`` is not an int.
        ValueError: If ``value`` is out of range.

    """
    return check_int(name, value, minimum, _MAX_INT)


def check_signed_seed(name: str, value: object) -> int:
    """Return ``value`` as a Python int, checked to be a seed a torch generator can take.

    Generators take 64-bit seeds; methods add small offsets to theirs, so the range is
    ``-2**63 .. 2**63 - 1`` (a seed outside it failed deep inside, unnamed). A NumPy
    integer (``np.arange``) is accepted and returned as a Python int.

    Raises:
        TypeError: If ``value`` is not an int (a bool or a float is refused).
        ValueError: If ``value`` is outside ``-2**63 .. 2**63 - 1``.

    """
    seed = check_int(name, value)
    if not -_MAX_INT - 1 <= seed <= _MAX_INT:
        raise ValueError(f"'{name}' must be in -2**63 .. 2**63 - 1, got {seed}")
    return seed


def offset_seed(seed: int, offset: int) -> int:
    """Return the seed of a method's further random stream: ``seed + offset``, kept in range.

    Methods draw a second shuffling order, a teacher's initialisation or one noise batch per
    class from the config's seed plus a small offset. At the top of the seed range
    (``seed = 2**63 - 1``) the sum leaves what a generator takes, so it wraps around modulo
    2**64 into ``-2**63 .. 2**63 - 1``: the derived seeds stay distinct and deterministic, and
    below the top they are the plain sum (results of ordinary seeds are unchanged).
    """
    return (seed + offset + _MAX_INT + 1) % 2**64 - _MAX_INT - 1


def _interface(fn: ForgetMethod) -> ForgetMethod:
    """Wrap a method so that every method keeps the interface's promises.

    The method runs with gradients enabled: called under ``torch.no_grad()`` (e.g. from
    evaluation code), its training loops would otherwise fail with an autograd error or,
    for methods that only need gradients in part, give a different model. The returned
    model's ``.grad`` fields are cleared: the last training step's gradients (or the
    caller's, copied with the model) would otherwise add to a later ``backward()``.
    """

    @functools.wraps(fn)
    def method(*args: Any, **kwargs: Any) -> nn.Module:
        with torch.enable_grad():
            new = fn(*args, **kwargs)
        if isinstance(new, nn.Module):
            for p in new.parameters():
                p.grad = None
        return new

    return method


def register(name: str, config_cls: type[ForgetConfig]) -> Callable[[ForgetMethod], ForgetMethod]:
    """Register a method under ``name`` with its config dataclass (a decorator).

    The decorator returns (and registers) the method wrapped to run with gradients enabled
    and to clear the returned model's ``.grad`` fields (see :func:`_interface`).

    Raises:
        TypeError: If ``config_cls`` is not a :class:`ForgetConfig` dataclass.
        ValueError: When the decorator is applied, if ``name`` is already registered.

    """
    if not dataclasses.is_dataclass(config_cls) or not issubclass(config_cls, ForgetConfig):
        raise TypeError("'config_cls' must be a ForgetConfig dataclass")

    def decorate(fn: ForgetMethod) -> ForgetMethod:
        if name in _REGISTRY:
            raise ValueError(f"forgetting method {name!r} is already registered")
        method = _interface(fn)
        _REGISTRY[name] = (method, config_cls)
        return method

    return decorate


def available_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> tuple[ForgetMethod, type[ForgetConfig]]:
    """Return ``(method, config_class)`` for ``name``; ValueError names the known methods.

    Raises:
        TypeError: If ``name`` is not a str.
        ValueError: If no method is registered under ``name`` (the message lists them).

    """
    if not isinstance(name, str):
        raise TypeError(f"'method' must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        known = ", ".join(available_methods()) or "(none)"
        raise ValueError(f"unknown forgetting method {name!r}; known methods: {known}")
    return _REGISTRY[name]


def as_dataset(data: object, name: str) -> Dataset:
    """Validate ``data`` (a Dataset or an ``(inputs, labels)`` tuple) and return a Dataset.

    The tuple's inputs are detached: the methods never differentiate through the data, and
    inputs still attached to an autograd graph (features computed without
    ``torch.no_grad()``) would have the training loops backpropagate into that graph (into
    the caller's feature extractor, or a leaf's ``.grad``) and fail at the second step.

    Raises:
        ValueError: If the data set is empty, the tuple's tensors disagree in length or
            have no first (example) dimension, the inputs of the tuple (or of a
            :class:`TensorDataset`) are not finite, or a :class:`TensorDataset` (also
            under :class:`~torch.utils.data.Subset` views) holds tensors that require
            grad (pass them detached).
        TypeError: If ``data`` is neither a Dataset nor a pair of tensors, or the
            tuple's labels are not integers (other integer dtypes are cast to int64).

    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(f"'{name}' must be a Dataset or a tuple (inputs, labels) of tensors")
        inputs, labels = data
        if inputs.dim() == 0 or labels.dim() == 0:
            raise ValueError(
                f"{name}: inputs and labels must have a first (example) dimension, got "
                f"shapes {tuple(inputs.shape)} and {tuple(labels.shape)}"
            )
        inputs = inputs.detach()  # no graph to backpropagate into (a view: nothing copied)
        if inputs.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{name}: inputs and labels differ in length "
                f"({inputs.shape[0]} vs {labels.shape[0]})"
            )
        if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
            raise ValueError(f"{name}: inputs contain NaN or inf")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"{name}: labels must be an integer tensor, got {labels.dtype}")
        # int32 / uint8 labels become int64, the class-index dtype cross-entropy needs
        # (``.long()`` returns int64 labels themselves, uncopied)
        data = TensorDataset(inputs, labels.long())
    elif isinstance(data, TensorDataset) and data.tensors:
        inputs = data.tensors[0]  # in memory: as cheap to check as a tuple's inputs
        if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
            raise ValueError(f"{name}: inputs contain NaN or inf")
    root = data
    while isinstance(root, Subset):
        root = root.dataset
    if isinstance(root, TensorDataset) and any(t.requires_grad for t in root.tensors):
        raise ValueError(
            f"{name}: the TensorDataset's tensors require grad (attached to an autograd "
            "graph); the methods never differentiate through the data: build it from "
            "detached tensors (.detach())"
        )
    if not isinstance(data, Dataset):
        hint = ("; pass its data set (loader.dataset): the methods batch the data themselves"
                if isinstance(data, DataLoader) else "")
        raise TypeError(
            f"'{name}' must be a Dataset or a tuple (inputs, labels), got "
            f"{type(data).__name__}{hint}"
        )
    try:
        size = sized_len(data)
    except TypeError as exc:
        raise TypeError(f"'{name}' must be a map-style Dataset with a length") from exc
    if size == 0:
        raise ValueError(f"{name} is empty")
    return data


def make_loader(
    dataset: Dataset, batch_size: int | np.integer, *, shuffle: bool, seed: int | np.integer = 0
) -> DataLoader:
    """Return a single-process DataLoader; shuffling uses its own seeded generator.

    The loader gets that generator even when it does not shuffle: a DataLoader without one
    draws its base seed from the global generator every time it is iterated, which would
    advance the caller's RNG state.

    Raises:
        TypeError: If ``batch_size`` or ``seed`` is not an int (a NumPy integer is one).
        ValueError: If ``batch_size`` < 1 or ``seed`` is outside a 64-bit generator's range.

    """
    batch_size = check_count("batch_size", batch_size, 1)
    generator = torch.Generator().manual_seed(check_signed_seed("seed", seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


class _Indices(Dataset):
    """The integers ``0 .. n - 1`` as a data set (a DataLoader over it yields index batches)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class TensorBatches:
    """Mini-batches of a :class:`TensorDataset`, sliced from its tensors directly.

    The batch order is drawn exactly as :func:`make_loader` draws it for the same data set
    (a loader over the row indices with the same seeded generator), so results do not
    change; only the per-example indexing and collation of a DataLoader are skipped.
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, *, shuffle: bool,
                 seed: int) -> None:
        self.tensors = dataset.tensors
        self.indices = make_loader(_Indices(len(dataset)), batch_size, shuffle=shuffle,
                                   seed=seed)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for idx in self.indices:
            yield tuple(t[idx.to(t.device)] for t in self.tensors)


def batches(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0
) -> Iterable[Any]:
    """Mini-batches of ``dataset``: :class:`TensorBatches` for a TensorDataset, else a loader.

    Both give the batches of :func:`make_loader` in the same order; the training loops of
    every method and of the harness's original model and oracles iterate this.
    """
    if isinstance(dataset, TensorDataset):
        return TensorBatches(dataset, batch_size, shuffle=shuffle, seed=seed)
    return make_loader(dataset, batch_size, shuffle=shuffle, seed=seed)


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter (CPU for a parameterless model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def clone_model(model: nn.Module) -> nn.Module:
    """Return a deep copy of ``model`` in training mode, so the caller's model is never modified.

    Raises:
        TypeError: If ``model`` is not a ``torch.nn.Module``.

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    clone = copy.deepcopy(model)
    clone.train()
    return clone


def run_method(
    name: str,
    model: nn.Module,
    forget: object,
    retain: object,
    config: ForgetConfig | None = None,
    **overrides: Any,
) -> nn.Module:
    """Run the registered method ``name`` and return the new model.

    Args:
        name: A name from :func:`available_methods`.
        model: The trained model (left unchanged).
        forget: The forget set.
        retain: The retain set.
        config: The method's config; its defaults (the published settings) when omitted.
        **overrides: Config fields to replace, e.g. ``epochs=2``.

    Returns:
        The new model (eval mode); ``model`` is left unchanged.

    Raises:
        TypeError: If ``name`` is not a str, ``config`` is not an instance of the method's
            config class, an override is not a field of it (or has the wrong type),
            ``model`` is not a ``torch.nn.Module``, or ``forget`` / ``retain`` is not a
            data set (:func:`as_dataset`); the method's own checks may raise it too.
        ValueError: If no method is registered under ``name`` (see :func:`get_method`),
            an override is out of range, or ``forget`` / ``retain`` is empty or malformed
            (:func:`as_dataset`); the method's own checks (overlapping sets, duplicate
            forget rows, labels outside the model's outputs) raise it too.

    """
    fn, config_cls = get_method(name)
    if config is None:
        config = config_cls(**overrides)
    else:
        if not isinstance(config, config_cls):
            raise TypeError(
                f"config for {name!r} must be a {config_cls.__name__}, got {type(config).__name__}"
            )
        if overrides:
            config = dataclasses.replace(config, **overrides)
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    forget_ds = as_dataset(forget, "forget")
    retain_ds = as_dataset(retain, "retain")
    return fn(model, forget_ds, retain_ds, config)


def iterate(
    items: Iterable[Any], *, progress: bool, desc: str, total: int | np.integer | None = None
) -> Iterable[Any]:
    """Wrap ``items`` in a tqdm bar when ``progress`` is set."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False)
