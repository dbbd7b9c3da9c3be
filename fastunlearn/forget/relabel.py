"""Random-label methods of Seed A: poison (RL), poison-full and the two-stage hybrid.

All three train on the forget set with every label replaced by a fixed random class
(:class:`~fastunlearn.forget._training.RelabelledDataset`). By default the new label is
drawn uniformly over all classes, as Seed A's published code does (it may equal the true
one). ``other_classes=True`` draws among the other classes instead, as Amnesiac unlearning
and SalUn's RL do, so every forget example is really relabelled.

With a model whose BatchNorm cannot train on a one-example batch, a last batch of one
example is skipped, and a data set of one example (a forget set of one example for
``random_labels`` and ``two_stage``'s first stage) or ``batch_size=1`` is refused with a
ValueError before any training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from .._numbers import check_real
from ._training import (
    RelabelledDataset,
    SGDConfig,
    TrainingData,
    check_flag,
    check_training_data,
    prepare,
    runs,
    seeded,
    train,
    train_main_stage,
)
from .base import check_count, model_device, register, sized_len

__all__ = [
    "PoisonFullConfig",
    "RandomLabelsConfig",
    "TwoStageConfig",
    "poison_full",
    "random_labels",
    "two_stage",
]


@dataclass
class RandomLabelsConfig(SGDConfig):
    """Seed A's ``poison``: train on the relabelled forget set alone (lr 7e-4, 1 epoch).

    Attributes:
        epochs: Passes over the forget set (1; the paper uses 2 for AgeDB).
        lr: Learning rate (7e-4).
        other_classes: Relabel to a class other than the true one (default False: uniform
            over all classes, Seed A; see the module docstring).

    """

    epochs: int = 1
    lr: float = 7e-4
    other_classes: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.other_classes = check_flag("other_classes", self.other_classes)
        self._warn_settings(RandomLabelsConfig)


@register("random_labels", RandomLabelsConfig)
def random_labels(
    model: nn.Module, forget: Dataset, retain: Dataset, config: RandomLabelsConfig
) -> nn.Module:
    """Train a copy of ``model`` on the forget set with random labels (retain unused)."""
    clone, forget_ds, _, k = prepare(model, forget, retain, config, RandomLabelsConfig)
    if runs(config.epochs, config.lr):
        check_training_data(
            clone, forget_ds,
            TrainingData("forget", sized_len(forget_ds), "batch_size", config.batch_size),
        )
    poisoned = RelabelledDataset(forget_ds, k, config.seed, other_classes=config.other_classes)
    with seeded(config.seed, model_device(clone)):
        train_main_stage(clone, poisoned, config, k, "random_labels")
    return clone.eval()


@dataclass
class PoisonFullConfig(SGDConfig):
    """Seed A's ``poison_full``: train on retain and the relabelled forget set together.

    lr 2e-3, 5 epochs, cosine annealing over the 5 epochs (Seed A's ``train`` default).
    Deviation: Seed A's loader is not shuffled (reference note, bug 5); here it is.

    Attributes:
        epochs: Passes over retain plus forget (5).
        lr: Initial learning rate (2e-3).
        scheduler: ``"cosine"``.
        other_classes: Relabel to a class other than the true one (default False: uniform
            over all classes, Seed A).

    """

    epochs: int = 5
    lr: float = 2e-3
    scheduler: str = "cosine"
    other_classes: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.other_classes = check_flag("other_classes", self.other_classes)
        self._warn_settings(PoisonFullConfig)


@register("poison_full", PoisonFullConfig)
def poison_full(
    model: nn.Module, forget: Dataset, retain: Dataset, config: PoisonFullConfig
) -> nn.Module:
    """Train a copy of ``model`` on ``retain`` united with the randomly relabelled forget set."""
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, PoisonFullConfig)
    if runs(config.epochs, config.lr):
        n = sized_len(forget_ds) + sized_len(retain_ds)
        check_training_data(
            clone, retain_ds, TrainingData("forget + retain", n, "batch_size", config.batch_size)
        )
    poisoned = RelabelledDataset(forget_ds, k, config.seed, other_classes=config.other_classes)
    union: Dataset = ConcatDataset([retain_ds, poisoned])
    with seeded(config.seed, model_device(clone)):
        train_main_stage(clone, union, config, k, "poison_full")
    return clone.eval()


@dataclass
class TwoStageConfig(SGDConfig):
    """Seed A's ``two_stage_simple``: relabelled-forget stage, then a retain stage.

    Stage 1: ``forget_epochs`` (1) at ``forget_lr`` (1e-2) on the relabelled forget set;
    stage 2: ``epochs`` (5) at ``lr`` (1e-3) on the retain set; no scheduler. Deviation:
    Seed A's stage-2 loader is not shuffled (reference note, bug 5); here it is.

    Attributes:
        epochs: Retain-stage epochs (5).
        lr: Retain-stage learning rate (1e-3).
        forget_epochs: Forget-stage epochs (1).
        forget_lr: Forget-stage learning rate (1e-2).
        other_classes: Relabel to a class other than the true one (default False: uniform
            over all classes, Seed A).

    ``scheduler``, ``milestones`` and ``gamma`` are unused: a value other than the default
    gives a UserWarning (:attr:`UNUSED_FIELDS`).

    """

    epochs: int = 5
    lr: float = 1e-3
    forget_epochs: int = 1
    forget_lr: float = 1e-2
    other_classes: bool = False

    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("scheduler", "milestones", "gamma"),
        "(two_stage trains both stages without a schedule)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.forget_epochs = check_count("forget_epochs", self.forget_epochs, 0)
        self.forget_lr = check_real("forget_lr", self.forget_lr)
        self.other_classes = check_flag("other_classes", self.other_classes)
        self._warn_settings(TwoStageConfig)


@register("two_stage", TwoStageConfig)
def two_stage(
    model: nn.Module, forget: Dataset, retain: Dataset, config: TwoStageConfig
) -> nn.Module:
    """Poison a copy of ``model`` on the forget set, then repair it on the retain set."""
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, TwoStageConfig)
    stages = []
    if runs(config.forget_epochs, config.forget_lr):
        stages.append(
            TrainingData("forget", sized_len(forget_ds), "batch_size", config.batch_size)
        )
    if runs(config.epochs, config.lr):
        stages.append(
            TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size)
        )
    check_training_data(clone, retain_ds, *stages)
    poisoned = RelabelledDataset(forget_ds, k, config.seed, other_classes=config.other_classes)
    with seeded(config.seed, model_device(clone)):
        train(
            clone,
            poisoned,
            config,
            lr=config.forget_lr,
            epochs=config.forget_epochs,
            num_classes=k,
            desc="two_stage:forget",
            use_scheduler=False,
        )
        train_main_stage(
            clone, retain_ds, config, k, "two_stage:retain", use_scheduler=False, seed_offset=1
        )
    return clone.eval()
