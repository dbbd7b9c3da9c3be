"""Fine-tuning on the retain set only (FT): forgetting by catastrophic forgetting."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from ._training import (
    SGDConfig,
    TrainingData,
    check_training_data,
    prepare,
    runs,
    seeded,
    train_main_stage,
)
from .base import model_device, register, sized_len

__all__ = ["FinetuneConfig", "finetune"]


@dataclass
class FinetuneConfig(SGDConfig):
    """Seed A's ``finetune`` (reference note, section 1): lr 1e-3, 5 epochs, no scheduler.

    The loader is shuffled, as in Seed A. Unlearn-Sparse/SalUn's FT uses lr 0.01 and 10
    epochs (pass ``lr=0.01, epochs=10``).

    Attributes:
        epochs: Passes over the retain set (5).
        lr: Learning rate (1e-3).

    """

    epochs: int = 5
    lr: float = 1e-3


@register("finetune", FinetuneConfig)
def finetune(
    model: nn.Module, forget: Dataset, retain: Dataset, config: FinetuneConfig
) -> nn.Module:
    """Train a copy of ``model`` on ``retain`` with cross-entropy (the forget set is unused).

    Frozen parameters (``requires_grad=False``) are not trained. With a model whose
    BatchNorm cannot train on a one-example batch, a last retain batch of one example is
    skipped, and a retain set of one example or ``batch_size=1`` is refused (ValueError).
    """
    clone, _, retain_ds, k = prepare(model, forget, retain, config, FinetuneConfig)
    if runs(config.epochs, config.lr):
        check_training_data(
            clone, retain_ds,
            TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size),
        )
    with seeded(config.seed, model_device(clone)):
        train_main_stage(clone, retain_ds, config, k, "finetune")
    return clone.eval()
