"""Seed A's weight-pruning methods: selective pruning, pruning the last layer, pruning complex.

All three compare the trained weights ``w`` with those of copies overfitted on the forget
set (and, for pruning complex, on a small retain subset), re-initialise the weights that
moved least (Kaiming-normal, ReLU gain) and fine-tune on the retain set (reference note,
section 1). Only tensors with at least two dimensions (convolution and linear weights) are
touched; biases and normalisation parameters are kept.

Deviations from Seed A's shipped code (reference note, bugs 1 and 5): pruning complex
trains its retain-subset copy at ``overfit_lr / 3`` (true division; the shipped ``// 3``
gives 0 and re-initialises nothing), and every loader is shuffled.

Frozen parameters (``requires_grad=False``) are never re-drawn (the overfitted copies
cannot move them either). With a model whose BatchNorm cannot train on a one-example
batch, a last batch of one example is skipped, and a data set a stage would train on with
one example (the forget set, ``pruning_complex``'s retain subset) or ``batch_size=1`` is
refused with a ValueError before any training.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._no_effect import no_effect_message
from .._numbers import check_real
from ._common_b import check_fraction
from ._training import (
    SGDConfig,
    TrainingData,
    check_training_data,
    kaiming_,
    last_linear,
    prepare,
    random_subset,
    runs,
    seeded,
    train,
    train_main_stage,
)
from .base import check_count, model_device, register, sized_len

__all__ = [
    "PruneLastLayerConfig",
    "PruningComplexConfig",
    "SelectivePruningConfig",
    "movement_masks",
    "prune_last_layer",
    "pruning_complex",
    "selective_pruning",
]

_QUANTILE_MAX = 1 << 24  # torch.quantile's input limit


def _quantile(values: Tensor, q: float) -> Tensor:
    """Return the ``q``-quantile of ``values`` in their precision (float32 for half types).

    Float64 movements stay float64: a threshold rounded to float32 can land above the
    entry it equals, so ``quantile=0`` would re-draw the least-moved weight.
    """
    flat = values.detach().flatten()
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    if flat.numel() <= _QUANTILE_MAX:
        return torch.quantile(flat, q)
    k = min(flat.numel(), max(1, round(q * (flat.numel() - 1)) + 1))
    return flat.kthvalue(k).values


def movement_masks(
    original: nn.Module, moved: nn.Module, quantile: float, names: set[str] | None = None
) -> dict[str, Tensor]:
    """Per weight tensor (>= 2 dims), the entries whose movement is below its quantile.

    Args:
        original: The trained model.
        moved: A copy trained further (same architecture).
        quantile: Per-tensor quantile ``q`` of ``abs(w_moved - w)``; entries strictly below
            it are selected (about a fraction ``q``).
        names: Restrict to these parameter names (all >= 2-D parameters when None).

    Returns:
        ``{parameter name: bool mask}``.

    Raises:
        TypeError: ``original`` or ``moved`` is not an ``nn.Module``.
        ValueError: ``quantile`` is not in [0, 1], or ``moved`` lacks one of the weights
            or holds it in another shape.
        RuntimeError: If a movement is not finite (the moved copy's training diverged;
            its NaN quantile would silently select nothing).

    """
    for name, model in (("original", original), ("moved", moved)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"'{name}' must be an nn.Module, got {type(model).__name__}")
    quantile = check_fraction("quantile", quantile, allow_zero=True)
    moved_params = dict(moved.named_parameters())
    for name, w in original.named_parameters():
        if w.dim() < 2 or (names is not None and name not in names):
            continue
        if name not in moved_params or moved_params[name].shape != w.shape:
            got = tuple(moved_params[name].shape) if name in moved_params else "nothing"
            raise ValueError(f"'moved' must have the architecture of 'original': its "
                             f"{name!r} is {got}, not {tuple(w.shape)}")
    masks = {}
    for name, w in original.named_parameters():
        if w.dim() < 2 or (names is not None and name not in names):
            continue
        d = (moved_params[name].detach() - w.detach()).abs()
        if not bool(torch.isfinite(d).all()):
            raise RuntimeError(
                f"the overfitted copy's {name!r} is not finite (its training diverged); "
                "lower overfit_lr or overfit_epochs"
            )
        masks[name] = d < _quantile(d, quantile)
    return masks


def _reinit(model: nn.Module, masks: dict[str, Tensor], seed: int) -> int:
    """Re-draw the masked entries of the trainable parameters; frozen ones are skipped."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return sum(
        kaiming_(params[name], mask, gen)
        for name, mask in sorted(masks.items())
        if params[name].requires_grad
    )


def _stages(
    config: SelectivePruningConfig, forget: Dataset, retain: Dataset, *subset: TrainingData
) -> list[TrainingData]:
    """Return the data sets a pruning method trains on (for :func:`check_training_data`)."""
    stages = []
    if runs(config.overfit_epochs, config.overfit_lr):
        stages.append(
            TrainingData("forget", sized_len(forget), "batch_size", config.batch_size)
        )
        stages.extend(subset)
    if runs(config.epochs, config.lr):
        stages.append(
            TrainingData("retain", sized_len(retain), "batch_size", config.batch_size)
        )
    return stages


def _overfit(
    model: nn.Module,
    dataset: Dataset,
    config: SGDConfig,
    lr: float,
    epochs: int,
    k: int,
    desc: str,
    offset: int,
) -> nn.Module:
    """Train a copy of ``model`` on ``dataset`` at ``lr`` without a schedule.

    Its batches are shuffled with ``config.seed + offset``: 1 for the forget-set copy, 2 for
    ``pruning_complex``'s retain-subset copy, so the two copies see independent orders.
    """
    moved = copy.deepcopy(model)
    return train(
        moved,
        dataset,
        config,
        lr=lr,
        epochs=epochs,
        num_classes=k,
        desc=desc,
        use_scheduler=False,
        seed_offset=offset,
    )


@dataclass
class SelectivePruningConfig(SGDConfig):
    """Settings of ``selective_pruning`` (Seed A's "Pruning", ``scripts/change_weights.py``).

    Attributes:
        epochs: Retain fine-tuning epochs (5).
        lr: Retain fine-tuning learning rate (1e-3).
        quantile: Fraction of each weight tensor re-initialised, those that moved least
            (0.30, the paper; the shipped script uses 0.2).
        overfit_epochs: Epochs of the forget-set copy (20, as Seed A's other pruning methods).
        overfit_lr: Learning rate of the forget-set copy (1e-2).

    """

    epochs: int = 5
    lr: float = 1e-3
    quantile: float = 0.3
    overfit_epochs: int = 20
    overfit_lr: float = 1e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.quantile = check_fraction("quantile", self.quantile, allow_zero=True)
        self.overfit_epochs = check_count("overfit_epochs", self.overfit_epochs, 0)
        self.overfit_lr = check_real("overfit_lr", self.overfit_lr)
        self._warn_settings(SelectivePruningConfig)

    #: The settings of the copies whose movement selects the weights re-drawn.
    _SELECTION_FIELDS: ClassVar[tuple[str, ...]] = ("overfit_epochs", "overfit_lr")

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the base class's warnings and those of the selection with ``quantile=0``.

        No weight moves less than the least-moved one, so ``quantile=0`` re-draws nothing
        and the copies trained to select the weights change nothing.
        """
        out = super().conditional_warnings(given)
        names = self._set_fields(self._SELECTION_FIELDS, given) if self.quantile == 0 else []
        if names:
            out.append(no_effect_message(names, "with quantile=0 (no weight is re-drawn, so "
                                         "the copies that select them change nothing)"))
        return out


def _prune_and_finetune(
    model: nn.Module,
    forget: Dataset,
    retain: Dataset,
    config: SelectivePruningConfig,
    cls: type[SelectivePruningConfig],
    desc: str,
    last_only: bool,
) -> nn.Module:
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, cls)
    check_training_data(clone, retain_ds, *_stages(config, forget_ds, retain_ds))
    # the pruned layer, looked up before any training (a model without one is refused)
    head = last_linear(clone, desc, "use 'selective_pruning' to prune every weight") \
        if last_only else None
    with seeded(config.seed, model_device(clone)):
        moved = _overfit(
            clone,
            forget_ds,
            config,
            config.overfit_lr,
            config.overfit_epochs,
            k,
            f"{desc}:overfit",
            1,
        )
        names = None
        if head is not None:
            names = {n for n, p in clone.named_parameters() if p is head.weight}
        masks = movement_masks(clone, moved, config.quantile, names)
        _reinit(clone, masks, config.seed)
        train_main_stage(clone, retain_ds, config, k, f"{desc}:retain")
    return clone.eval()


@register("selective_pruning", SelectivePruningConfig)
def selective_pruning(
    model: nn.Module, forget: Dataset, retain: Dataset, config: SelectivePruningConfig
) -> nn.Module:
    """Re-initialise, in every >= 2-D weight, the entries the forget set moves least; fine-tune.

    A copy is overfitted on the forget set; per weight tensor, entries with
    ``abs(w - w_forget)`` below the ``quantile`` are re-drawn (Kaiming normal); biases and
    norm parameters are kept. Then the model is fine-tuned on the retain set.
    """
    return _prune_and_finetune(
        model, forget, retain, config, SelectivePruningConfig, "selective_pruning", False
    )


@dataclass
class PruneLastLayerConfig(SelectivePruningConfig):
    """Settings of ``prune_last_layer`` (Seed A's ``prune_last_layer``).

    Same as :class:`SelectivePruningConfig` (overfit lr 1e-2, 20 epochs; quantile 0.3;
    retain lr 1e-3, 5 epochs) with the rule applied to the final linear weight only.
    """


@register("prune_last_layer", PruneLastLayerConfig)
def prune_last_layer(
    model: nn.Module, forget: Dataset, retain: Dataset, config: PruneLastLayerConfig
) -> nn.Module:
    """Run selective pruning restricted to the weight of the last ``nn.Linear`` (the head)."""
    return _prune_and_finetune(
        model, forget, retain, config, PruneLastLayerConfig, "prune_last_layer", True
    )


@dataclass
class PruningComplexConfig(SelectivePruningConfig):
    """Settings of ``pruning_complex`` (Seed A's ``selective_pruning_complex``).

    Attributes:
        retain_fraction: Size of the random retain subset of the second copy (0.02).
        retain_lr_divisor: The retain-subset copy trains at ``overfit_lr / retain_lr_divisor``
            (3; true division, see the module docstring).

    """

    retain_fraction: float = 0.02
    retain_lr_divisor: float = 3.0

    _SELECTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "overfit_epochs", "overfit_lr", "retain_fraction", "retain_lr_divisor")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.retain_fraction = check_fraction("retain_fraction", self.retain_fraction)
        self.retain_lr_divisor = check_real("retain_lr_divisor", self.retain_lr_divisor,
                                            positive=True)
        self._warn_settings(PruningComplexConfig)


@register("pruning_complex", PruningComplexConfig)
def pruning_complex(
    model: nn.Module, forget: Dataset, retain: Dataset, config: PruningComplexConfig
) -> nn.Module:
    """Re-initialise weights that neither the forget set nor a retain subset moves; fine-tune.

    Copy (a) is overfitted on the forget set (``overfit_lr``), copy (b) on a random
    ``retain_fraction`` of the retain set (``overfit_lr / retain_lr_divisor``), both for
    ``overfit_epochs``. In every >= 2-D weight, entries with ``d_f < t_f`` and
    ``d_r < t_r`` are re-drawn, where ``d = abs(w - w_copy)`` and ``t`` is the per-tensor
    ``quantile``. Then the model is fine-tuned on the retain set.
    """
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, PruningComplexConfig)
    subset = random_subset(retain_ds, config.retain_fraction, config.seed)
    sub = TrainingData(
        f"the retain subset (retain_fraction={config.retain_fraction} of "
        f"{sized_len(retain_ds)} retain examples)",
        len(subset),
        "batch_size",
        config.batch_size,
        "raise retain_fraction so that it selects at least 2 examples",
    )
    check_training_data(clone, retain_ds, *_stages(config, forget_ds, retain_ds, sub))
    with seeded(config.seed, model_device(clone)):
        moved_f = _overfit(
            clone,
            forget_ds,
            config,
            config.overfit_lr,
            config.overfit_epochs,
            k,
            "pruning_complex:forget",
            1,
        )
        moved_r = _overfit(
            clone,
            subset,
            config,
            config.overfit_lr / config.retain_lr_divisor,
            config.overfit_epochs,
            k,
            "pruning_complex:retain-subset",
            2,
        )
        mask_f = movement_masks(clone, moved_f, config.quantile)
        mask_r = movement_masks(clone, moved_r, config.quantile)
        _reinit(clone, {n: mask_f[n] & mask_r[n] for n in mask_f}, config.seed)
        train_main_stage(clone, retain_ds, config, k, "pruning_complex:retain")
    return clone.eval()
