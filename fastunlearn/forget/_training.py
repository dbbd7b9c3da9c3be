"""Shared machinery of the training-based forgetting methods (FT, GA, RL, pruning, ...).

Seed A runs every method from one ``train`` config (SGD, momentum 0.9, Nesterov, weight
decay 5e-4, batch 128) and overrides the learning rate, epochs and scheduler per method
(reference note, section 1). :class:`SGDConfig` is that base; :func:`prepare` validates
the arguments and clones the model; :func:`train` is the one supervised loop, shared with
the harness, which trains its original model and retrained oracles with it
(:func:`fastunlearn.harness.train_model`), so a method's time ratio compares like with like.

Frozen parameters (``requires_grad=False``) are never changed: the optimisers only step
parameters with a gradient (so neither weight decay nor momentum reaches a frozen one), and
the methods that re-draw weights skip them. BatchNorm running statistics are buffers, not
parameters: training runs in train mode and re-estimates them, frozen layers included.

Models with BatchNorm: :func:`train` skips a last batch of one example that the model
cannot train on (:class:`~fastunlearn.forget._common_b.SkipSingleBatches`), and the methods
refuse data that would only give such batches before training
(:func:`check_training_data`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import Dataset, Subset

from .._no_effect import no_effect_message
from ..epoch_state import EpochState
from ._common_b import (
    SkipSingleBatches,
    TrainingData,
    check_single_batches,
    example_outputs,
    probe_forward,
    seeded_rng,
)
from ._common_b import check_fraction as check_fraction  # re-exported for existing imports
from .base import (
    ForgetConfig,
    as_dataset,
    batches,
    check_count,
    check_flag,
    clone_model,
    iterate,
    model_device,
    offset_seed,
    sized_len,
)
from .checks import check_batch_labels, check_sets, dataset_labels, item_labels

__all__ = [
    "RelabelledDataset",
    "SGDConfig",
    "TrainingData",
    "check_training_data",
    "kaiming_",
    "last_linear",
    "make_optimizer",
    "num_outputs",
    "prepare",
    "random_subset",
    "runs",
    "seeded",
    "train",
    "train_main_stage",
]

_SCHEDULERS = ("none", "cosine", "multistep")
#: Label dtypes torch cannot promote with int64 (stacking them with int64 labels fails).
_UNSIGNED_WIDE = (torch.uint16, torch.uint32, torch.uint64)


@dataclass
class SGDConfig(ForgetConfig):
    """SGD settings of the training-based methods (Seed A's ``train`` config).

    Attributes:
        nesterov: Nesterov momentum (Seed A: on).
        scheduler: ``"none"``, ``"cosine"`` (annealing over the run's epochs) or
            ``"multistep"`` (multiply the learning rate by ``gamma`` at ``milestones``).
        milestones: Epochs at which ``"multistep"`` decays the learning rate.
        gamma: Decay factor of ``"multistep"``.

    """

    nesterov: bool = True
    scheduler: str = "none"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.nesterov = check_flag("nesterov", self.nesterov)
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(f"'scheduler' must be one of {_SCHEDULERS}, got {self.scheduler!r}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov needs momentum > 0 (set nesterov=False or momentum > 0)")
        if isinstance(self.milestones, (str, bytes)) or not hasattr(self.milestones, "__iter__"):
            kind = type(self.milestones).__name__
            raise TypeError(f"'milestones' must be a sequence of ints, got {kind}")
        self.milestones = tuple(self.milestones)
        # TypeError for a non-int (3.0), ValueError below 1 or above 2**63 - 1, as every count
        self.milestones = tuple(check_count("milestones", m) for m in self.milestones)
        self.gamma = check_fraction("gamma", self.gamma)
        self._warn_settings(SGDConfig)

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the warnings of the base class and about the schedule's settings.

        ``gamma`` and ``milestones`` are read by the ``"multistep"`` scheduler only, and
        ``gamma`` needs a milestone that is reached: the learning rate is multiplied from
        the epoch after a milestone, so with no milestone below ``epochs`` (a
        ``RetrainConfig(epochs=30)`` keeps the milestones 35, 70 and 90) it never is.
        ``milestones=()`` is not named with another scheduler unless ``given`` names it (no
        milestone to ignore: the harness's oracle recipe sets it so). Each is named only
        when set (another value than its default, or named in ``given``); a run of zero
        epochs trains nothing and is not warned about here.
        """
        return super().conditional_warnings(given) + self._schedule_warnings(given)

    def _schedule_warnings(self, given: Collection[str]) -> list[str]:
        """Return the ``gamma`` / ``milestones`` warnings of :meth:`conditional_warnings`."""
        if self.scheduler == "multistep":
            if not self.milestones:
                why = ("with scheduler='multistep' and milestones=() (the factor applied at "
                       "each milestone)")
            elif self.epochs > 0 and all(m >= self.epochs for m in self.milestones):
                why = (f"with epochs={self.epochs} and milestones={self.milestones!r} (no "
                       "milestone is reached)")
            else:
                return []
            names = self._set_fields(("gamma",), given)
        else:
            names = [n for n in self._set_fields(("gamma", "milestones"), given)
                     if n != "milestones" or self.milestones or n in given]
            why = f"with scheduler={self.scheduler!r} (for the 'multistep' scheduler)"
        return [no_effect_message(names, why)] if names else []


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the body with the global RNGs seeded by ``seed``, restoring them afterwards.

    Parameter re-initialisation (``reset_parameters``) and dropout draw from the global
    generator; forking it keeps methods reproducible without disturbing the caller. Only
    the generators that are forked (and restored) are seeded: the CPU one and, for a CUDA
    ``device``, that device's (:func:`~fastunlearn.forget._common_b.seeded_rng`).
    ``torch.manual_seed`` would also re-seed every other CUDA device's generator (all of
    them for a CPU model), which nothing restored.
    """
    with seeded_rng(seed, device):
        yield


def num_outputs(model: nn.Module, dataset: Dataset) -> int:
    """Return the number of logits ``model`` gives for the first example of ``dataset``."""
    x, _ = dataset[0]
    out = probe_forward(model, torch.as_tensor(x).unsqueeze(0))
    if out.dim() != 2:
        raise ValueError(f"'model' must return logits [batch, classes], got shape "
                         f"{tuple(out.shape)}")
    return int(out.shape[1])


def prepare(
    model: nn.Module,
    forget: object,
    retain: object,
    config: object,
    config_cls: type[SGDConfig],
) -> tuple[nn.Module, Dataset, Dataset, int]:
    """Validate a method's arguments and return ``(clone, forget, retain, num_classes)``.

    Raises:
        TypeError: If the model, data or config have the wrong type (also a config field
            assigned a value of the wrong type after construction).
        ValueError: If a config field holds an invalid value, a data set is empty or its
            items are not ``(input, label)`` pairs, the model gives a different number of
            outputs for retain inputs than for forget inputs, a label is outside the
            model's outputs, the forget set repeats an example, or the sets overlap (when
            ``config.check_overlap``); see :func:`~fastunlearn.forget.checks.check_sets`.

    """
    if not isinstance(config, config_cls):
        raise TypeError(f"'config' must be a {config_cls.__name__}, got {type(config).__name__}")
    # Re-run the field checks: a config changed after construction (``cfg.lr = nan``)
    # would otherwise train with the bad value and return a silently broken model.
    config.__post_init__()
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    forget_ds = as_dataset(forget, "forget")
    retain_ds = as_dataset(retain, "retain")
    clone = clone_model(model)
    out = example_outputs(clone, forget_ds, retain_ds)
    if out.dim() != 2:
        raise ValueError(f"'model' must return logits [batch, classes], got shape "
                         f"{tuple(out.shape)}")
    k = int(out.shape[1])
    check_sets(forget_ds, retain_ds, k, check_overlap=config.check_overlap)
    return clone, forget_ds, retain_ds, k


def check_training_data(model: nn.Module, example_set: Dataset, *data: TrainingData) -> None:
    """Refuse, before any training, data ``model`` could only train on one example at a time.

    :func:`~fastunlearn.forget._common_b.check_single_batches` with the first input of
    ``example_set`` as the probe. Methods list the data sets they will train on (leaving
    out stages that do not run: zero epochs or a zero learning rate).

    Raises:
        ValueError: A data set of one example, or a batch size of 1, with a model whose
            BatchNorm cannot train on a one-example batch.

    """
    x, _ = example_set[0]
    check_single_batches(model, torch.as_tensor(x).unsqueeze(0), data)


def runs(epochs: int, lr: float) -> bool:
    """Whether a :func:`train` stage with these settings trains at all."""
    return epochs > 0 and lr != 0.0


def make_optimizer(params: object, config: SGDConfig, lr: float) -> torch.optim.SGD:
    """SGD with the config's momentum, Nesterov flag and weight decay at learning rate ``lr``."""
    return torch.optim.SGD(
        params,  # type: ignore[arg-type]
        lr=lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )


def _scheduler(opt: torch.optim.Optimizer, config: SGDConfig,
               epochs: int) -> LRScheduler | None:
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if config.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=list(config.milestones), gamma=config.gamma
        )
    return None


def train(
    model: nn.Module,
    dataset: Dataset,
    config: SGDConfig,
    *,
    lr: float,
    epochs: int,
    num_classes: int,
    desc: str,
    ascent: bool = False,
    use_scheduler: bool = True,
    penalty: Callable[[nn.Module, int], Tensor] | None = None,
    seed_offset: int = 0,
    epoch_state: EpochState | None = None,
) -> nn.Module:
    """Train ``model`` in place with SGD on mean cross-entropy over ``dataset``.

    Batches come from :func:`~fastunlearn.forget.base.batches` (tensors sliced directly for
    a TensorDataset, in the order of a seeded shuffling DataLoader). A last batch of one
    example is skipped when the model's BatchNorm cannot train on it (PyTorch refuses one
    value per channel in training mode); every other batch is used.

    Args:
        model: The (cloned) model to update.
        dataset: ``(input, label)`` pairs; always shuffled with a seeded generator.
        config: Supplies batch size, momentum, Nesterov, weight decay, scheduler, seed.
        lr: Learning rate of this stage.
        epochs: Passes over ``dataset``.
        num_classes: Model outputs; each batch's labels are checked against it.
        desc: Progress-bar label.
        ascent: Maximise the loss (gradient ascent) instead of minimising it.
        use_scheduler: Apply ``config.scheduler`` (off for stages Seed A runs without one).
        penalty: ``penalty(model, epoch)`` added to the loss of every step (l1-sparse).
        seed_offset: Added to ``config.seed`` for the shuffling order of this stage.
        epoch_state: Keep the state after every finished epoch there
            (:class:`fastunlearn.epoch_state.EpochState`: weights, optimizer, learning-rate
            schedule, the shuffling's and torch's random states, the training time so
            far); training starts after the epochs it already holds and the file is
            removed at the end. None (default): nothing is kept.

    Returns:
        ``model``, with its gradients cleared (``None``) so that the last step's retain
        gradients do not leak into a caller's later ``backward()``.

    Raises:
        ValueError: If no parameter of ``model`` requires a gradient, or every batch holds
            a single example the model's BatchNorm cannot train on.

    """
    if not runs(epochs, lr):
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"{desc}: model has no trainable parameters (every parameter has "
            "requires_grad=False), so there is nothing to train"
        )
    device = model_device(model)
    source = batches(dataset, config.batch_size, shuffle=True,
                     seed=offset_seed(config.seed, seed_offset))
    loader = SkipSingleBatches(source, model, desc)
    opt = make_optimizer(model.parameters(), config, lr)
    sched = _scheduler(opt, config, epochs) if use_scheduler else None
    keeper = _EpochKeeper(epoch_state, opt, sched, device, source)
    start = keeper.restore(model, epochs)
    model.train()
    for epoch in iterate(range(start, epochs), progress=config.progress, desc=desc):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            check_batch_labels(y, num_classes, desc)
            # any integer label dtype (int32, uint8) is accepted; cross-entropy wants int64
            loss = F.cross_entropy(model(x), y.long())
            if ascent:
                loss = -loss
            if penalty is not None:
                loss = loss + penalty(model, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        keeper.save(epoch + 1, model)
    opt.zero_grad(set_to_none=True)
    keeper.finish()
    return model


class _EpochKeeper:
    """What :func:`train` keeps in its ``epoch_state`` (nothing when that is None).

    Beside what :class:`~fastunlearn.epoch_state.EpochState` keeps itself, the extra
    holds the learning-rate scheduler's state and the training seconds so far (this run's
    finished epochs plus :attr:`EpochState.earlier_seconds`).
    """

    def __init__(self, state: EpochState | None, opt: torch.optim.Optimizer,
                 sched: LRScheduler | None, device: torch.device, source: object) -> None:
        self.state, self.opt, self.sched, self.device = state, opt, sched, device
        # the DataLoader whose generator draws each epoch's order (TensorBatches wraps one)
        self.shuffler = getattr(source, "indices", source)
        self.t0 = time.perf_counter()

    def restore(self, model: nn.Module, epochs: int) -> int:
        """Restore the saved epochs into ``model``; return how many (0 without a state)."""
        if self.state is None:
            return 0
        done = self.state.load(model, self.opt, epochs=epochs, device=self.device,
                               loader=self.shuffler, restore_extra=self._restore_schedule)
        self.t0 = time.perf_counter()
        return done

    def _restore_schedule(self, extra: dict[str, Any]) -> None:
        saved = extra.get("scheduler")
        if (saved is None) != (self.sched is None):
            where = str(self.state.path) if self.state is not None else ""
            raise ValueError(f"'epoch_checkpoint' {where!r} was saved by a training with "
                             "another learning-rate schedule; remove it to start over")
        if self.sched is not None and saved is not None:  # both or neither, checked above
            self.sched.load_state_dict(saved)

    def save(self, epochs_done: int, model: nn.Module) -> None:
        """Keep the state after ``epochs_done`` finished epochs."""
        if self.state is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the epoch's time, not its launch time
        seconds = self.state.earlier_seconds + time.perf_counter() - self.t0
        schedule = self.sched.state_dict() if self.sched is not None else None
        self.state.save(epochs_done, model, self.opt, device=self.device, loader=self.shuffler,
                        extra={"seconds": seconds, "scheduler": schedule})

    def finish(self) -> None:
        """Remove the kept state (the training finished)."""
        if self.state is not None:
            self.state.remove()


def train_main_stage(
    model: nn.Module,
    dataset: Dataset,
    config: SGDConfig,
    num_classes: int,
    desc: str,
    **options: object,
) -> nn.Module:
    """Run :func:`train` at the config's own ``lr`` and ``epochs`` (a method's main stage).

    Most training-based methods end with one stage that trains for ``config.epochs`` at
    ``config.lr``; this is that call. ``options`` are passed on to :func:`train`
    (``ascent``, ``use_scheduler``, ``penalty``, ``seed_offset``).

    Returns:
        ``model``, trained in place.

    """
    return train(
        model,
        dataset,
        config,
        lr=config.lr,
        epochs=config.epochs,
        num_classes=num_classes,
        desc=desc,
        **options,  # type: ignore[arg-type]
    )


class RelabelledDataset(Dataset):
    """A view of a data set with every label replaced by a fixed random one.

    Args:
        dataset: The ``(input, label)`` data set.
        num_classes: Labels are drawn from ``0 .. num_classes - 1``.
        seed: Seed of the draw (the labels are fixed at construction).
        other_classes: Draw uniformly among the classes other than the true label
            (Amnesiac / random-label unlearning); if false, uniformly over all classes, as
            Seed A's ``poison`` does (the new label may equal the old one).

    """

    def __init__(
        self, dataset: Dataset, num_classes: int, seed: int, *, other_classes: bool
    ) -> None:
        if other_classes and num_classes < 2:
            raise ValueError("random relabelling to another class needs at least 2 classes")
        self.dataset = dataset
        self.num_classes = num_classes
        n = sized_len(dataset)
        gen = torch.Generator().manual_seed(seed)
        if other_classes:
            true = dataset_labels(dataset)
            if true is None:
                true = item_labels(dataset, "forget")  # float labels refused, not truncated
            shift = torch.randint(1, num_classes, (n,), generator=gen)
            self.labels = (true.long().cpu() + shift) % num_classes
        else:
            self.labels = torch.randint(0, num_classes, (n,), generator=gen)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, Tensor | int]:
        """Return the item's input with its new label, in the form of the data set's own.

        A tensor label gives a tensor, a Python or NumPy integer a Python int: the items
        are batched together with the retain set's (``poison_full``), and the loader
        cannot collate a batch that mixes tensor and int labels.
        """
        x, label = self.dataset[index]
        new = self.labels[index]
        if not isinstance(label, Tensor):
            return x, int(new)
        # torch cannot promote int64 with uint16/32/64: the loader could not batch these
        # with the retain set's labels (the new label fits: below num_classes)
        if label.dtype in _UNSIGNED_WIDE and torch.iinfo(label.dtype).max >= self.num_classes:
            return x, new.to(label.dtype)
        return x, new


def random_subset(dataset: Dataset, fraction: float, seed: int) -> Subset:
    """Return a seeded random subset of ``ceil(fraction * len)`` examples (at least one)."""
    n = sized_len(dataset)
    size = min(n, max(1, math.ceil(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, perm[:size].tolist())


def kaiming_(param: Tensor, mask: Tensor | None, generator: torch.Generator) -> int:
    """Re-initialise the entries of ``param`` where ``mask`` is true (all if None).

    Fresh values come from Kaiming-normal with the ReLU gain (fan-in mode), as Seed A's
    pruning methods use. Returns the number of re-initialised entries.
    """
    with torch.no_grad():
        fresh = torch.empty(param.shape, dtype=param.dtype, device="cpu")
        nn.init.kaiming_normal_(fresh, nonlinearity="relu", generator=generator)
        fresh = fresh.to(param.device)
        if mask is None:
            param.copy_(fresh)
            return param.numel()
        param.copy_(torch.where(mask, fresh, param))
        return int(mask.sum())


def last_linear(model: nn.Module, method: str | None = None, hint: str = "") -> nn.Linear:
    """Return the last :class:`nn.Linear` registered in ``model`` (its classifier head).

    Raises:
        ValueError: If ``model`` has no ``nn.Linear``; the message names ``method`` (the
            method that needs the layer) and ends with ``hint`` when given.

    """
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found = module
    if found is None:
        who = f"{method} needs an nn.Linear classifier head, but the " if method else ""
        msg = f"{who}model has no nn.Linear layer to use as its last (classifier) layer"
        raise ValueError(msg + (f"; {hint}" if hint else ""))
    return found
