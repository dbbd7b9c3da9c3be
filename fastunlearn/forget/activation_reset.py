"""Seed A's Activation Reset: re-initialise the convolution kernels the forget set excites.

Forward hooks record, for every ``nn.Conv2d``, the mean output map ``[C, H, W]`` over the
forget set and over a random ``retain_fraction`` subset of the retain set. For output
channel ``c`` the method counts the positions ``(h, w)`` where the forget mean exceeds the
retain mean; if the count exceeds ``toll * H * W``, the whole kernel ``weight[c]`` (all
input channels) is re-drawn (Kaiming normal, ReLU gain). With ``reset_mlp`` the whole last
linear weight is re-drawn too. Then the model is fine-tuned on the retain set.

Deviations from Seed A's shipped code (reference note, bugs 2, 4, 5): the retain sums are
divided by the subset size (the shipped code divides by the whole retain set's size,
making the retain means about 50x too small); every ``nn.Conv2d`` is hooked, including
1x1 shortcut convolutions (the shipped code hooks modules whose *name* contains "conv",
which skips ``shortcut.0``); the fine-tuning loader is shuffled. A model without
convolutions (an MLP) only gets the ``reset_mlp`` step. Frozen weights
(``requires_grad=False``) are never re-drawn: fine-tuning could not repair them, and no
other method changes them either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ._common_b import check_fraction
from ._training import (
    SGDConfig,
    TrainingData,
    check_flag,
    check_training_data,
    kaiming_,
    last_linear,
    prepare,
    random_subset,
    runs,
    seeded,
    train_main_stage,
)
from .base import iterate, make_loader, model_device, register, sized_len

__all__ = ["ActivationResetConfig", "activation_reset", "kernels_to_reset", "mean_activations"]


@dataclass
class ActivationResetConfig(SGDConfig):
    """Settings of ``activation_reset`` (Seed A's ``activation_pruning``).

    Attributes:
        epochs: Retain fine-tuning epochs (5).
        lr: Retain fine-tuning learning rate (1e-3).
        retain_fraction: Size of the retain subset the forget statistics are compared with
            (0.02; about the forget set's size in Seed A).
        toll: A kernel is reset when the forget mean exceeds the retain mean at more than
            ``toll * H * W`` positions of its output map (0.8).
        reset_mlp: Also re-draw the whole last linear weight (True).

    """

    epochs: int = 5
    lr: float = 1e-3
    retain_fraction: float = 0.02
    toll: float = 0.8
    reset_mlp: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.retain_fraction = check_fraction("retain_fraction", self.retain_fraction)
        self.toll = check_fraction("toll", self.toll, allow_zero=True)
        self.reset_mlp = check_flag("reset_mlp", self.reset_mlp)
        self._warn_settings(ActivationResetConfig)


def mean_activations(
    model: nn.Module, dataset: Dataset, batch_size: int, *, progress: bool = False
) -> dict[str, Tensor]:
    """Mean output map ``[C, H, W]`` of every ``nn.Conv2d`` of ``model`` over ``dataset``.

    The model runs in eval mode without gradients; sums are divided by ``len(dataset)``.
    Every submodule gets its own mode back (a caller's model may mix modes, e.g. a
    backbone in eval mode).
    """
    device = model_device(model)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    sums: dict[str, Tensor] = {}

    def hook_for(name: str):  # noqa: ANN202
        def hook(_: nn.Module, __: object, out: Tensor) -> None:
            total = out.detach().sum(dim=0)
            sums[name] = total if name not in sums else sums[name] + total

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in convs.items()]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            loader = make_loader(dataset, batch_size, shuffle=False)
            for x, _ in iterate(loader, progress=progress, desc="activations"):
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    n = sized_len(dataset)
    return {name: total / n for name, total in sums.items()}


def kernels_to_reset(forget_mean: Tensor, retain_mean: Tensor, toll: float) -> Tensor:
    """Bool ``[C]``: channels where forget > retain at more than ``toll * H * W`` positions."""
    hw = forget_mean[0].numel()
    count = (forget_mean > retain_mean).reshape(forget_mean.shape[0], -1).sum(dim=1)
    return count > toll * hw


@register("activation_reset", ActivationResetConfig)
def activation_reset(
    model: nn.Module, forget: Dataset, retain: Dataset, config: ActivationResetConfig
) -> nn.Module:
    """Re-draw the conv kernels the forget set activates more than the retain set; fine-tune.

    Frozen kernels and a frozen head are never re-drawn (see the module docstring). The
    activations are recorded in eval mode; the fine-tuning skips a last retain batch of
    one example that the model's BatchNorm cannot train on, and a retain set of one
    example or ``batch_size=1`` with such a model is refused before anything is re-drawn.
    """
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, ActivationResetConfig)
    # the head re-drawn by reset_mlp, looked up before any work (a model without one is
    # refused up front)
    head = (last_linear(clone, "activation_reset with reset_mlp=True",
                        "set reset_mlp=False to reset convolution kernels only").weight
            if config.reset_mlp else None)
    if runs(config.epochs, config.lr):
        check_training_data(
            clone, retain_ds,
            TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size),
        )
    with seeded(config.seed, model_device(clone)):
        subset = random_subset(retain_ds, config.retain_fraction, config.seed)
        f_mean = mean_activations(clone, forget_ds, config.batch_size, progress=config.progress)
        r_mean = mean_activations(clone, subset, config.batch_size, progress=config.progress)
        gen = torch.Generator().manual_seed(config.seed)
        convs = {name: m for name, m in clone.named_modules() if isinstance(m, nn.Conv2d)}
        for name in sorted(f_mean):
            channels = kernels_to_reset(f_mean[name], r_mean[name], config.toll)
            weight = convs[name].weight
            if weight.requires_grad and bool(channels.any()):
                mask = (
                    channels.to(weight.device)
                    .reshape(-1, *([1] * (weight.dim() - 1)))
                    .expand_as(weight)
                )
                kaiming_(weight, mask, gen)
        if head is not None and head.requires_grad:
            kaiming_(head, None, gen)
        train_main_stage(clone, retain_ds, config, k, "activation_reset")
    return clone.eval()
