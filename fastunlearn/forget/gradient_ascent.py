"""Gradient ascent on the forget set (NegGrad / GA) and its retain-anchored variant NegGrad+."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ._common_b import SkipSingleBatches, check_fraction
from ._training import (
    SGDConfig,
    TrainingData,
    check_training_data,
    make_optimizer,
    prepare,
    runs,
    seeded,
    train_main_stage,
)
from .base import (
    check_count,
    iterate,
    make_loader,
    model_device,
    offset_seed,
    register,
    sized_len,
)
from .checks import check_batch_labels

__all__ = ["NegGradConfig", "NegGradPlusConfig", "neggrad", "neggrad_plus"]


@dataclass
class NegGradConfig(SGDConfig):
    """Settings of ``neggrad`` (GA in Unlearn-Sparse / SalUn, reference note section 6).

    Unlearn-Sparse runs GA for 5 epochs at lr 1e-4 (batch 256, SGD momentum 0.9, weight
    decay 5e-4, no Nesterov). SalUn users report that 1e-4 can be too small to move the
    forget accuracy (Unlearn-Saliency issue #8 suggests 5e-4 to 1e-3).

    Attributes:
        epochs: Passes over the forget set (5).
        lr: Learning rate (1e-4).
        batch_size: Mini-batch size (256).

    """

    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 256
    nesterov: bool = False


@register("neggrad", NegGradConfig)
def neggrad(model: nn.Module, forget: Dataset, retain: Dataset, config: NegGradConfig) -> nn.Module:
    """Maximise the cross-entropy of a copy of ``model`` on ``forget`` (retain unused).

    With a model whose BatchNorm cannot train on a one-example batch, a last forget batch
    of one example is skipped, and a forget set of one example (or ``batch_size=1``) is
    refused with a ValueError before any training.
    """
    clone, forget_ds, _, k = prepare(model, forget, retain, config, NegGradConfig)
    if runs(config.epochs, config.lr):
        check_training_data(
            clone, forget_ds,
            TrainingData("forget", sized_len(forget_ds), "batch_size", config.batch_size),
        )
    with seeded(config.seed, model_device(clone)):
        train_main_stage(clone, forget_ds, config, k, "neggrad", ascent=True)
    return clone.eval()


@dataclass
class NegGradPlusConfig(SGDConfig):
    """Settings of ``neggrad_plus`` (NegGrad+, Kurmanji et al., NeurIPS 2023).

    Each step takes a retain batch and the next forget batch (the forget loader is cycled)
    and descends on ``beta * CE(retain) - (1 - beta) * CE(forget)``; an epoch is one pass
    over the retain set. The published comparison tunes ``beta``, lr and epochs per
    setting; the defaults here (``beta`` 0.999, lr 0.01, 5 epochs, SGD momentum 0.9, no
    Nesterov) are this library's choice, not a published constant.

    Attributes:
        epochs: Passes over the retain set (5).
        lr: Learning rate (0.01).
        beta: Weight of the retain loss; the forget loss gets ``1 - beta`` (0.999).
        forget_batch_size: Forget mini-batch size (``batch_size`` when None).

    ``scheduler``, ``milestones`` and ``gamma`` are unused: a value other than the default
    gives a UserWarning (:attr:`UNUSED_FIELDS`).

    """

    epochs: int = 5
    lr: float = 0.01
    nesterov: bool = False
    beta: float = 0.999
    forget_batch_size: int | None = None

    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("scheduler", "milestones", "gamma"),
        "(neggrad_plus runs its own loop without a schedule)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = check_fraction("beta", self.beta, allow_zero=True)
        if self.forget_batch_size is not None:  # TypeError for 32.0, as every count
            self.forget_batch_size = check_count("forget_batch_size", self.forget_batch_size)
        self._warn_settings(NegGradPlusConfig)


@register("neggrad_plus", NegGradPlusConfig)
def neggrad_plus(
    model: nn.Module, forget: Dataset, retain: Dataset, config: NegGradPlusConfig
) -> nn.Module:
    """Descend on the retain loss while ascending on the forget loss, on a copy of ``model``.

    With a model whose BatchNorm cannot train on a one-example batch, a last retain or
    forget batch of one example is skipped (the forget batches then cycle without it), and
    a retain or forget set of one example, or a batch size of 1, is refused with a
    ValueError before any training.
    """
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, NegGradPlusConfig)
    if not runs(config.epochs, config.lr):
        return clone.eval()
    f_batch = config.forget_batch_size or config.batch_size
    f_field = "forget_batch_size" if config.forget_batch_size else "batch_size"
    check_training_data(
        clone, retain_ds,
        TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size),
        TrainingData("forget", sized_len(forget_ds), f_field, f_batch),
    )
    device = model_device(clone)
    with seeded(config.seed, device):
        r_loader = SkipSingleBatches(
            make_loader(retain_ds, config.batch_size, shuffle=True, seed=config.seed),
            clone,
            "neggrad_plus:retain",
        )
        f_loader = SkipSingleBatches(
            make_loader(forget_ds, f_batch, shuffle=True, seed=offset_seed(config.seed, 1)),
            clone,
            "neggrad_plus:forget",
        )
        opt = make_optimizer(clone.parameters(), config, config.lr)
        f_iter = iter(f_loader)
        clone.train()
        for _ in iterate(range(config.epochs), progress=config.progress, desc="neggrad_plus"):
            for xr, yr in r_loader:
                try:
                    xf, yf = next(f_iter)
                except StopIteration:
                    f_iter = iter(f_loader)
                    xf, yf = next(f_iter)
                xr, yr, xf, yf = xr.to(device), yr.to(device), xf.to(device), yf.to(device)
                check_batch_labels(yr, k, "retain")
                check_batch_labels(yf, k, "forget")
                loss = config.beta * F.cross_entropy(clone(xr), yr.long()) - (
                    1.0 - config.beta
                ) * F.cross_entropy(clone(xf), yf.long())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return clone.eval()
