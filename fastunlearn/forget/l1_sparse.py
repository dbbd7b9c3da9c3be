"""l1-sparse unlearning (Jia et al., NeurIPS 2023): fine-tune with a decaying L1 penalty."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._no_effect import no_effect_message
from .._numbers import check_real
from ._training import (
    SGDConfig,
    TrainingData,
    check_flag,
    check_training_data,
    prepare,
    runs,
    seeded,
    train_main_stage,
)
from .base import model_device, register, sized_len

__all__ = ["L1SparseConfig", "l1_sparse"]


@dataclass
class L1SparseConfig(SGDConfig):
    """Settings of ``l1_sparse`` (Unlearn-Sparse ``FT_prune`` / ``FT_l1``).

    Loss per step: ``CE_retain + gamma_t * ||theta||_1`` with ``gamma_t`` decaying linearly
    from ``alpha`` in the first epoch to 0: ``gamma_t = alpha * (1 - t / epochs)`` for epoch
    ``t = 0 .. epochs - 1``. Defaults as the OPTML run scripts: lr 0.01, 10 epochs,
    ``alpha`` 1e-4, no scheduler.

    Attributes:
        epochs: Passes over the retain set (10).
        lr: Learning rate (0.01).
        alpha: Initial L1 strength (1e-4).
        include_bias: Penalise 1-D parameters (biases, norm scales) too; Unlearn-Sparse
            penalises every parameter (True).

    """

    epochs: int = 10
    lr: float = 0.01
    alpha: float = 1e-4
    include_bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = check_real("alpha", self.alpha)
        self.include_bias = check_flag("include_bias", self.include_bias)
        self._warn_settings(L1SparseConfig)

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the base class's warnings and ``include_bias``' without a penalty."""
        out = super().conditional_warnings(given)
        if self.alpha == 0 and self._set_fields(("include_bias",), given):
            out.append(no_effect_message(["include_bias"], "with alpha=0 (no L1 penalty: "
                                         "the method fine-tunes on the retain set)"))
        return out


@register("l1_sparse", L1SparseConfig)
def l1_sparse(
    model: nn.Module, forget: Dataset, retain: Dataset, config: L1SparseConfig
) -> nn.Module:
    """Fine-tune a copy on ``retain`` with an L1 penalty whose weight decays linearly to 0.

    Only trainable parameters are penalised (and trained); frozen ones keep their values.
    A last retain batch of one example that the model's BatchNorm cannot train on is
    skipped; a retain set of one example or ``batch_size=1`` with such a model is refused.
    """
    clone, _, retain_ds, k = prepare(model, forget, retain, config, L1SparseConfig)
    if runs(config.epochs, config.lr):
        check_training_data(
            clone, retain_ds,
            TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size),
        )
    params = [
        p for p in clone.parameters() if p.requires_grad and (config.include_bias or p.dim() > 1)
    ]

    def penalty(_: nn.Module, epoch: int) -> Tensor:
        gamma = config.alpha * (1.0 - epoch / config.epochs)
        if gamma == 0.0 or not params:
            return torch.zeros((), device=model_device(clone))
        return gamma * cast(Tensor, sum(p.abs().sum() for p in params))  # params not empty

    with seeded(config.seed, model_device(clone)):
        train_main_stage(clone, retain_ds, config, k, "l1_sparse", penalty=penalty)
    return clone.eval()
