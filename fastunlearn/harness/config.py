"""Settings of a harness run and the digits-sized defaults of every forgetting method.

The published defaults of the forgetting methods (:mod:`fastunlearn.forget`) assume a
CIFAR ResNet trained for 100+ epochs on 50,000 images: a few epochs at ``lr = 1e-3`` are
then thousands of SGD steps. On the 1,437 training digits an epoch is 12-23 steps, so the
same settings barely move the model and nothing is forgotten. :data:`DIGITS_OVERRIDES`
scales each method's learning rate and epochs so that it actually forgets on the digits
with the harness's ``small_cnn``. They apply to the digits data set only, unless
``HarnessConfig.digits_defaults`` says otherwise; every value can be replaced per run with
``HarnessConfig.overrides`` (CLI: ``--set method.key=value``), which are checked by building
each method's config before anything is trained.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._device import parse_device
from .._numbers import (
    as_int,
    check_flag,
    check_int,
    check_real,
    is_flag,
    is_integer,
)
from .._paths import check_path
from .._unused_settings import UnusedRule, non_default_fields, unused_setting_messages
from ..forget import available_methods, get_method
from ..forget.base import _MAX_INT, unused_field_messages, unused_fields

__all__ = [
    "DIGITS_OVERRIDES",
    "HARNESS_FIELDS",
    "ORACLE_SEED_OFFSET",
    "HarnessConfig",
    "TrainSettings",
    "method_overrides",
    "oracle_recipe",
]

#: Config fields the harness sets itself: a run's seeds are ``0 .. seeds - 1`` and progress
#: bars follow ``HarnessConfig.progress``; ``overrides`` may not set them.
HARNESS_FIELDS = ("seed", "progress")

#: Oracle ``i`` trains with seed ``train_seed + ORACLE_SEED_OFFSET + i``: far from the
#: methods' seeds ``0 .. seeds - 1``, so that ``retrain`` (the oracles' recipe) at seed ``s``
#: is never the very model of an oracle (which made retrain's privacy scores look better
#: than any independent retraining: identical models cannot be told apart).
ORACLE_SEED_OFFSET = 1_000_003

#: Per-method config overrides used on small data sets (digits): see the module docstring.
#: Chosen so that class forgetting (``class:3``) drives the forget accuracy near the
#: retrained models' (0) while keeping retain accuracy, in a few seconds per run.
DIGITS_OVERRIDES: dict[str, dict[str, Any]] = {
    "retrain": {"epochs": 30, "lr": 0.05, "batch_size": 64, "scheduler": "cosine",
                "milestones": ()},
    "finetune": {"epochs": 10, "lr": 0.05, "batch_size": 64},
    "neggrad": {"epochs": 3, "lr": 0.003, "batch_size": 32},
    "neggrad_plus": {"epochs": 5, "lr": 0.01, "batch_size": 64, "beta": 0.99},
    "random_labels": {"epochs": 1, "lr": 0.005, "batch_size": 32},
    "poison_full": {"epochs": 10, "lr": 0.05, "batch_size": 64},
    "two_stage": {"epochs": 10, "lr": 0.05, "forget_lr": 0.05, "forget_epochs": 2,
                  "batch_size": 64},
    "selective_pruning": {"epochs": 10, "lr": 0.05, "overfit_lr": 0.05, "batch_size": 64,
                          "quantile": 0.6},
    "prune_last_layer": {"epochs": 10, "lr": 0.05, "overfit_lr": 0.05, "batch_size": 64,
                         "quantile": 0.6},
    "pruning_complex": {"epochs": 10, "lr": 0.05, "overfit_lr": 0.05, "batch_size": 64,
                        "quantile": 0.8},
    "activation_reset": {"epochs": 10, "lr": 0.05, "batch_size": 64, "retain_fraction": 0.1},
    "l1_sparse": {"epochs": 10, "lr": 0.05, "alpha": 2e-3, "batch_size": 64},
    "fisher": {"batch_size": 64},
    "salun": {"epochs": 5, "lr": 0.05, "batch_size": 64},
    "scrub": {"epochs": 10, "lr": 0.002, "batch_size": 64, "forget_batch_size": 32,
              "max_steps": 2, "lr_decay_epochs": (8,)},
    "bad_teacher": {"epochs": 5, "lr": 1e-3, "batch_size": 64, "retain_fraction": 0.5},
    "unsir": {"epochs": 2, "lr": 0.02, "repair_epochs": 3, "repair_lr": 0.02,
              "batch_size": 64},
    "antisamples": {"epochs": 10, "lr": 0.01, "batch_size": 64},
    "antisamples_multiclass": {"epochs": 10, "lr": 0.01, "batch_size": 64},
    "influence": {},
}


@dataclass(frozen=True)
class TrainSettings:
    """How the original model and the oracles are trained (SGD, Nesterov, cosine).

    Attributes:
        epochs: Passes over the training (original) or retain (oracles) set.
        lr: Initial learning rate (cosine-annealed to 0).
        batch_size: Mini-batch size.
        momentum: Nesterov momentum.
        weight_decay: L2 weight decay.

    """

    epochs: int = 30
    lr: float = 0.05
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            # a NumPy integer is stored as an int
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1, _MAX_INT))
        for name in ("lr", "momentum", "weight_decay"):
            # stored as a float (an int beyond 2**63 - 1, which torch cannot take, too)
            value = check_real(name, getattr(self, name), positive=name == "lr")
            object.__setattr__(self, name, value)


def oracle_recipe(settings: TrainSettings) -> dict[str, Any]:
    """Return the :class:`~fastunlearn.forget._training.SGDConfig` fields of a recipe.

    The original model, the oracles and the ``retrain`` method are all trained with these
    (SGD, Nesterov when ``momentum > 0``, cosine annealing over the epochs).

    Raises:
        TypeError: ``settings`` is not a :class:`TrainSettings`.

    """
    if not isinstance(settings, TrainSettings):
        raise TypeError(f"'settings' must be a TrainSettings, got {type(settings).__name__}")
    return {"epochs": settings.epochs, "lr": settings.lr, "batch_size": settings.batch_size,
            "momentum": settings.momentum, "weight_decay": settings.weight_decay,
            "nesterov": settings.momentum > 0, "scheduler": "cosine", "milestones": ()}


@dataclass
class HarnessConfig:
    """Everything a harness run needs.

    Attributes:
        methods: Registered method names (:func:`fastunlearn.forget.available_methods`).
        dataset: ``"digits"`` (bundled), or ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"cifar100"``, ``"svhn"`` read from ``data_dir``.
        data_dir: Folder of the torchvision files (not needed for digits; given with
            them, it warns: it is not read).
        model: Zoo model name (:func:`fastunlearn.models.build_model`).
        forget: Forget spec: ``"class:3"``, ``"random:0.1"``, ``"file:PATH"``.
        forget_seed: Seed of a ``random:`` forget set (another value than 0 with a
            ``class:`` or ``file:`` set warns: it has no effect there).
        seeds: Runs of every method (seeds ``0..seeds-1``) from the one original model.
        oracles: Models retrained from scratch on the retain set (seeds differ).
        train: Training recipe of the original model and the oracles.
        train_seed: Seed of the original model (oracle ``i`` uses
            ``train_seed + ORACLE_SEED_OFFSET + i``).
        overrides: ``{method: {field: value}}`` on top of the defaults (not ``seed`` or
            ``progress``, which the harness sets); validated by building every method's
            config when the HarnessConfig is created. A field the method ignores
            (``fisher``'s ``epochs``; ``ForgetConfig.UNUSED_FIELDS``), or one that has no
            effect with the others, gives a UserWarning naming the method:
            ``'overrides' for 'fisher': 'epochs' has no effect (...)``.
        digits_defaults: Apply :data:`DIGITS_OVERRIDES` under ``overrides``; ``None``
            (default): only when ``dataset`` is ``"digits"`` (other data sets get the
            methods' published defaults).
        cache_dir: Folder of the cached original/oracle weights (None: no cache).
        out_dir: Folder of the JSON, Markdown, PNG and logits outputs (None: write nothing).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"`` (a ``torch.device`` or an int
            index is stored as such a str). Only its spelling is checked here; the run
            needs the GPU.
        mia: Compute OPTML's SVC MIA-Efficacy (an SVC fit per model).
        progress: tqdm bars (stderr).
        plots: Draw the PNGs into ``out_dir`` (``accuracy.png``, ``time.png``,
            ``epsilon_hist.png``); False writes the JSON, Markdown and logits only. False
            with ``out_dir=None`` warns (nothing is written either way).
        skip_unsuitable: Skip the methods the forget set does not suit (``antisamples``
            needs one whole class, ``unsir`` whole classes;
            :func:`fastunlearn.forget.suitability.unsuitable_reason`): they get status
            ``"skipped"`` and the reason as ``note`` instead of running into an error.
            None (default): only when ``methods`` is ``"all"``; a method named on purpose
            then still runs and reports its error.

    ``data_dir``, ``cache_dir`` and ``out_dir`` may be str or ``os.PathLike`` (stored as str)
    or None; a wrong type, an empty path or a misspelt device raises when the config is
    created, before anything is trained.

    """

    methods: tuple[str, ...] = ("finetune", "neggrad")
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "small_cnn"
    forget: str = "class:3"
    forget_seed: int = 0
    seeds: int = 3
    oracles: int = 4
    train: TrainSettings = field(default_factory=TrainSettings)
    train_seed: int = 0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    digits_defaults: bool | None = None
    cache_dir: str | None = ".fastunlearn-cache"
    out_dir: str | None = None
    device: str = "cpu"
    mia: bool = True
    progress: bool = False
    plots: bool = True
    skip_unsuitable: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = tuple(m.strip() for m in self.methods.split(",") if m.strip())
        if not isinstance(self.methods, (tuple, list)) \
                or not all(isinstance(m, str) for m in self.methods):
            raise TypeError(f"'methods' must be a str or a sequence of str, got "
                            f"{self.methods!r}")
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ValueError("'methods' is empty: name at least one forgetting method")
        every = list(self.methods) == ["all"]
        if every:
            self.methods = tuple(available_methods())
        if self.skip_unsuitable is None:
            self.skip_unsuitable = every
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"'methods' names a method twice: {list(self.methods)}")
        for m in self.methods:
            get_method(m)  # ValueError naming the known methods
        for name in ("seeds", "oracles"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        for name in ("train_seed", "forget_seed"):
            setattr(self, name, check_int(name, getattr(self, name), 0))
        # the last oracle's seed (train_seed + ORACLE_SEED_OFFSET + oracles - 1) and the
        # forget seed go to 64-bit torch generators
        top = _MAX_INT - ORACLE_SEED_OFFSET - (self.oracles - 1)
        if self.train_seed > top:
            raise ValueError(f"'train_seed' must be <= {top} (its oracles' seeds add "
                             f"{ORACLE_SEED_OFFSET} + i), got {self.train_seed}")
        if self.forget_seed > _MAX_INT:
            raise ValueError(f"'forget_seed' must be <= 2**63 - 1, got {self.forget_seed}")
        for name in ("mia", "progress", "plots", "skip_unsuitable"):
            setattr(self, name, check_flag(name, getattr(self, name)))
        if not isinstance(self.train, TrainSettings):
            raise TypeError(f"'train' must be a TrainSettings, got {type(self.train).__name__}")
        from ..models.zoo import MODELS

        if not isinstance(self.model, str) or self.model not in MODELS:
            raise ValueError(f"'model' must be one of {sorted(MODELS)}, got {self.model!r}")
        if not isinstance(self.forget, str):
            raise TypeError(f"'forget' must be a str, got {type(self.forget).__name__}")
        kind = self.forget.partition(":")[0].strip().lower()
        if kind in ("class", "file") and self.forget_seed != 0:
            # stacklevel: the caller of HarnessConfig(...)
            warnings.warn(f"'forget_seed' has no effect with forget {self.forget!r} (a {kind} "
                          "forget set is not drawn at random)", UserWarning, stacklevel=3)
        if not isinstance(self.overrides, dict):
            raise TypeError("'overrides' must be a dict {method: {field: value}}")
        for m, settings in self.overrides.items():
            if not isinstance(settings, dict):
                raise TypeError(f"'overrides' for {m!r} must be a dict {{field: value}}, got "
                                f"{type(settings).__name__}")
            if m not in self.methods:
                raise ValueError(f"'overrides' names method {m!r}, which is not run "
                                 f"(methods: {list(self.methods)})")
        if not isinstance(self.dataset, str):
            raise TypeError(f"'dataset' must be a str, got {type(self.dataset).__name__}")
        for name in ("data_dir", "cache_dir", "out_dir"):
            value = getattr(self, name)
            if value is not None:
                check_path(value, name)  # TypeError / ValueError (empty) naming the field
                if not isinstance(os.fspath(value), str):
                    raise TypeError(f"'{name}' must be a str path, got bytes")
                setattr(self, name, os.fspath(value))  # a Path would not go into the JSON
        self.device = _check_device(self.device)
        for message in self._ignored_settings():
            # stacklevel: the caller of HarnessConfig(...)
            warnings.warn(message, UserWarning, stacklevel=3)
        if self.digits_defaults is None:
            self.digits_defaults = self.dataset.strip().lower() == "digits" \
                if isinstance(self.dataset, str) else False
        if not is_flag(self.digits_defaults):
            raise TypeError(f"'digits_defaults' must be a bool or None, got "
                            f"{type(self.digits_defaults).__name__}")
        self.digits_defaults = bool(self.digits_defaults)
        configs = {}
        for m, settings in self.method_settings().items():  # a loop: the warnings' stacklevel
            configs[m] = _check_method_config(m, settings, self.overrides.get(m, {}))
        # NumPy scalars in the overrides are stored as the Python values the configs hold
        # (the JSON outputs and equality see plain values)
        self.overrides = {
            m: {k: getattr(configs[m], k) if isinstance(v, np.generic) else v
                for k, v in settings.items()}
            for m, settings in self.overrides.items()
        }

    def _ignored_settings(self) -> list[str]:
        """Return the warnings about ``data_dir`` and ``plots`` set where they do nothing."""
        given = non_default_fields(self, ("data_dir", "plots"))
        return unused_setting_messages(_settings_rules(self), given)

    def method_settings(self) -> dict[str, dict[str, Any]]:
        """Return the config overrides every method runs with (``{method: {field: value}}``).

        :data:`DIGITS_OVERRIDES` (when ``digits_defaults``), then the ``retrain`` method's
        oracle recipe (:func:`oracle_recipe`), then ``overrides``.

        Raises:
            ValueError: If an override is not a field of the method's config, or sets
                ``seed`` / ``progress``.

        """
        out = {}
        for m in self.methods:
            extra = dict(self.overrides.get(m, {}))
            if m == "retrain":  # the "retrain" method follows the oracles' recipe
                extra = {**oracle_recipe(self.train), **extra}
            out[m] = method_overrides(m, extra, digits_defaults=bool(self.digits_defaults))
        return out

    def with_methods(self, methods: tuple[str, ...]) -> HarnessConfig:
        """Return a copy that runs ``methods``."""
        return dataclasses.replace(self, methods=methods, overrides={
            k: v for k, v in self.overrides.items() if k in methods})


def _settings_rules(config: HarnessConfig) -> list[UnusedRule]:
    """Return the rules of the :class:`HarnessConfig` settings that others make pointless.

    ``data_dir`` with the bundled digits, ``plots`` with ``out_dir=None`` (nothing is
    written). The config warns about them by their names; ``fastunlearn forget`` about its
    flags (``'--data-dir' has no effect with '--dataset digits' (...)``).
    """
    digits = isinstance(config.dataset, str) and config.dataset.strip().lower() == "digits"
    return [
        UnusedRule(digits, ("data_dir",), (("dataset", config.dataset),),
                   "(bundled; the folder is read for the vision data sets)"),
        UnusedRule(config.out_dir is None, ("plots",), (("out_dir", None),),
                   "(nothing is written)"),
    ]


def method_overrides(name: str, extra: dict[str, Any] | None = None,
                     *, digits_defaults: bool = True) -> dict[str, Any]:
    """Return the config overrides the harness passes to ``run_method(name, ...)``.

    Args:
        name: A registered method.
        extra: Overrides on top of the defaults.
        digits_defaults: Start from :data:`DIGITS_OVERRIDES` (else from nothing).

    Raises:
        ValueError: If a key is not a field of the method's config, or is one the harness
            sets itself (:data:`HARNESS_FIELDS`).
        TypeError: If ``extra`` is neither None nor a mapping, or ``digits_defaults`` is
            not a bool.

    """
    _, cls = get_method(name)
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"'extra' must be a dict {{field: value}} or None, got "
                        f"{type(extra).__name__}")
    digits_defaults = check_flag("digits_defaults", digits_defaults)
    for key in HARNESS_FIELDS:
        if key in (extra or {}):
            how = ("runs use seeds 0..seeds-1: set 'seeds' (CLI --seeds)" if key == "seed"
                   else "bars follow the run's 'progress' (CLI --progress / --no-progress)")
            raise ValueError(f"'overrides' for {name!r}: {key!r} is set by the harness ({how})")
    out = dict(DIGITS_OVERRIDES.get(name, {})) if digits_defaults else {}
    out.update(extra or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = [k for k in out if k not in fields]
    if bad:
        raise ValueError(f"'overrides' for {name!r}: {bad[0]!r} is not a field of "
                         f"{cls.__name__} (fields: {sorted(fields)})")
    return out


def _check_device(spec: object) -> str:
    """``spec`` (a str, ``torch.device`` or CUDA index) as a str once its syntax is right.

    The run parses it again (:func:`~fastunlearn._device.parse_device`) and only then needs
    the GPU it names: a config for a CUDA machine may be built on another.
    """
    if is_integer(spec):
        spec = as_int(spec)
        if spec < 0:
            raise ValueError(f"'device' must be cpu, cuda or cuda:<index>, got {spec!r}")
        spec = f"cuda:{spec}"  # torch.device(n) is CUDA device n
    if isinstance(spec, torch.device):
        spec = str(spec)
    if not isinstance(spec, str):
        raise TypeError(f"'device' must be a str such as 'cpu' or 'cuda', got "
                        f"{type(spec).__name__}")
    try:
        is_cuda = torch.device(spec).type == "cuda"
    except (RuntimeError, TypeError, ValueError):
        is_cuda = False
    if not is_cuda:
        parse_device(spec, argument="device")  # cpu passes; other spellings raise
    return spec


def _build_method_config(name: str,
                        settings: dict[str, Any]) -> tuple[Any, list[warnings.WarningMessage]]:
    """Build method ``name``'s config from ``settings``; errors name the method.

    Returns:
        The config and the warnings its construction gave (recorded, not shown).

    """
    _, cls = get_method(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = cls(**settings)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"'overrides' for {name!r}: {exc}") from None
    return config, caught


def built_method_config(name: str, settings: dict[str, Any]) -> Any:
    """Return method ``name``'s config built from ``settings``, its warnings not shown.

    The runner's: the :class:`HarnessConfig` showed them when it was built, naming the
    method (``'overrides' for 'fisher': ...``); a run does not repeat them. The config
    remembers the warnings it gave, so the method's own re-check of its fields (with
    ``seed`` and ``progress`` set per run) stays quiet too.
    """
    return _build_method_config(name, settings)[0]


def _check_method_config(name: str, settings: dict[str, Any], given: dict[str, Any]) -> Any:
    """Build and return method ``name``'s config from ``settings``; errors name the method.

    Its warnings are shown naming the method (``'overrides' for 'fisher': ...``). The
    fields it ignores, or that have no effect with the others' values
    (:meth:`~fastunlearn.forget.base.ForgetConfig.conditional_warnings`: ``retrain``'s
    ``gamma`` under the oracles' cosine schedule), are named when ``given`` (the run's
    own overrides) sets them, even to their default value, or when ``settings`` sets them
    to another value.
    """
    config, caught = _build_method_config(name, settings)
    # repeated below, naming the given fields too
    own = {*unused_field_messages(config), *config.conditional_warnings()}
    for w in caught:
        if str(w.message) not in own:
            # stacklevel: the caller of HarnessConfig(...)
            warnings.warn(f"'overrides' for {name!r}: {w.message}", w.category, stacklevel=4)
    for message in [*config.conditional_warnings(set(given)),
                    *unused_field_messages(config, {*given, *unused_fields(config)})]:
        warnings.warn(f"'overrides' for {name!r}: {message}", UserWarning, stacklevel=4)
    return config
