"""Retraining from scratch on the retain set: the oracle every forgetting method is judged by.

Frozen parameters (``requires_grad=False``, e.g. a pretrained backbone) are not re-drawn:
the training recipe never changes them, so retraining from scratch with the same recipe
starts from, and ends with, the same values (see :func:`reinitialize`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
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

    What is kept:

    - every frozen parameter (``requires_grad=False``) keeps its value and its flag: no
      training step changes it, so a retrain from scratch with the same recipe (from the
      same pretrained weights) ends with exactly these values;
    - a module whose own parameters are all frozen (a frozen BatchNorm, say) also keeps
      its own buffers (running mean, variance and batch count), as part of the frozen,
      pretrained state. Training in train mode re-estimates them on the retain set
      afterwards, as it does for every BatchNorm (they are buffers, not parameters).

    Everything else is re-drawn or reset: trainable parameters, and the buffers of modules
    with a trainable parameter or with no parameter at all (a BatchNorm with
    ``affine=False``), since those statistics were estimated on data that included the
    forget set.

    Uses the global generator; wrap the call in :func:`fastunlearn.forget._training.seeded`
    for a reproducible draw. The draws of the trainable parameters do not depend on which
    parameters are frozen (frozen values are restored after the resets).

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If a trainable parameter belongs to a module without
            ``reset_parameters`` (it would keep its trained value and leak the forget set
            into the "oracle"); nothing is reset then. Frozen parameters of such modules
            are fine (kept).

    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be an nn.Module, got {type(model).__name__}")
    kept: list[tuple[nn.Module, str, Tensor, bool]] = []  # (module, name, value, is_param)
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        for name, p in own:
            if not p.requires_grad:
                kept.append((module, name, p.detach().clone(), True))
        if own and not any(p.requires_grad for _, p in own):
            for name, b in module.named_buffers(recurse=False):
                kept.append((module, name, b.detach().clone(), False))
    resets = []
    for name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            resets.append(reset)
            continue
        trainable = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if trainable:  # checked for every module before anything is reset
            label = f"{name}.{trainable[0]}" if name else trainable[0]
            raise ValueError(
                f"cannot re-initialise parameter {label!r}: its module "
                f"{type(module).__name__} has no reset_parameters()"
            )
    for reset in resets:
        reset()
    with torch.no_grad():
        for module, name, value, is_param in kept:
            current = getattr(module, name)
            if current is None:
                continue
            current.copy_(value)
            if is_param:
                current.requires_grad_(False)  # a reset that replaced the tensor
    return model


@register("retrain", RetrainConfig)
def retrain(model: nn.Module, forget: Dataset, retain: Dataset, config: RetrainConfig) -> nn.Module:
    """Re-initialise a copy of ``model`` and train it on ``retain`` only (the exact oracle).

    The forget set is used only for argument checks. Expensive by design: it is the
    reference that forgetting methods approximate. Frozen parameters (and the buffers of
    modules whose parameters are all frozen) keep their values; see :func:`reinitialize`.

    Raises:
        ValueError: Besides the shared checks, a retain set of one example or
            ``batch_size=1`` with a model whose BatchNorm cannot train on a one-example
            batch (a last batch of one example is skipped instead), or a trainable
            parameter :func:`reinitialize` cannot re-draw.

    """
    clone, _, retain_ds, k = prepare(model, forget, retain, config, RetrainConfig)
    if runs(config.epochs, config.lr):
        check_training_data(
            clone, retain_ds,
            TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size),
        )
    with seeded(config.seed, model_device(clone)):
        reinitialize(clone)
        train_main_stage(clone, retain_ds, config, k, "retrain")
    return clone.eval()
