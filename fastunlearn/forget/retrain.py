"""Retraining from scratch on the retain set: the oracle every forgetting method is judged by."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from ._training import SGDConfig, prepare, seeded, train_main_stage
from .base import model_device, register

__all__ = ["RetrainConfig", "reinitialize", "retrain"]


@dataclass
class RetrainConfig(SGDConfig):
    """Seed A's full training recipe ([A-pdf] section 3.4, ``scripts/train_retain.py``).

    100 epochs of SGD (lr 0.1, Nesterov momentum 0.9, weight decay 5e-4, batch 128) with the
    learning rate divided by 10 at epochs 35, 70 and 90. (Unlearn-Sparse retrains for 160
    epochs at lr 0.1; pass ``epochs=160, scheduler="none"`` for that.)

    Attributes:
        epochs: Training epochs (100).
        lr: Initial learning rate (0.1).
        scheduler: ``"multistep"`` with ``milestones`` (35, 70, 90) and ``gamma`` 0.1.

    """

    epochs: int = 100
    lr: float = 0.1
    scheduler: str = "multistep"
    milestones: tuple[int, ...] = (35, 70, 90)
    gamma: float = 0.1


def reinitialize(model: nn.Module) -> nn.Module:
    """Reset every submodule that has ``reset_parameters`` (in place) and return ``model``.

    Uses the global generator; wrap the call in :func:`fastunlearn.forget._training.seeded`
    for a reproducible draw.

    Raises:
        ValueError: If a parameter belongs to a module without ``reset_parameters`` (it
            would keep its trained value and leak the forget set into the "oracle").

    """
    for name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        elif any(True for _ in module.parameters(recurse=False)):
            own = next(n for n, _ in module.named_parameters(recurse=False))
            label = f"{name}.{own}" if name else own
            raise ValueError(
                f"cannot re-initialise parameter {label!r}: its module "
                f"{type(module).__name__} has no reset_parameters()"
            )
    return model


@register("retrain", RetrainConfig)
def retrain(model: nn.Module, forget: Dataset, retain: Dataset, config: RetrainConfig) -> nn.Module:
    """Re-initialise a copy of ``model`` and train it on ``retain`` only (the exact oracle).

    The forget set is used only for argument checks. Expensive by design: it is the
    reference that forgetting methods approximate.
    """
    clone, _, retain_ds, k = prepare(model, forget, retain, config, RetrainConfig)
    with seeded(config.seed, model_device(clone)):
        reinitialize(clone)
        train_main_stage(clone, retain_ds, config, k, "retrain")
    return clone.eval()
