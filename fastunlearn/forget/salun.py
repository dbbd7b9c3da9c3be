"""SalUn (Fan et al., ICLR 2024): random-label unlearning restricted to salient weights.

1. Saliency mask (:func:`saliency_mask`): the gradient of the cross-entropy summed over the
   forget set (the sign is irrelevant: only ``|g|`` is used), at the trained weights; the
   ``mask_ratio`` share of all weights with the largest ``|g|`` (one global ranking over
   every parameter tensor) is salient.
2. Random labels: train on the forget set with labels drawn uniformly over all classes
   (a draw may equal the true label; redrawn every epoch, as the published loop does, or
   drawn once with ``redraw_labels=False``) together with the retain set (true labels). Gradients
   of non-salient weights are zeroed and, after each step, non-salient weights are restored
   to their trained values, so weight decay and momentum cannot move them.

Defaults: the authors' README command for random 10 % forgetting (10 epochs, SGD lr 0.013,
momentum 0.9, weight decay 5e-4, mask ratio 0.5, batch 256).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._no_effect import no_effect_message
from ._common_b import (
    TrainingData,
    check_fraction,
    check_single_batches,
    checked_tensors,
    example_logits,
    prepare_inputs,
    train_ce,
)
from ._training import check_flag
from .base import (
    ForgetConfig,
    as_dataset,
    check_count,
    clone_model,
    make_loader,
    model_device,
    register,
)
from .checks import check_batch_labels, check_labels, dataset_labels

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SalUnConfig", "salun", "saliency_mask"]


@dataclass
class SalUnConfig(ForgetConfig):
    """SalUn settings (defaults: the published random-forgetting command).

    Attributes:
        epochs: Random-label training epochs.
        lr: SGD learning rate.
        batch_size: Mini-batch size (forget and retain samples shuffled together).
        momentum: SGD momentum.
        weight_decay: SGD weight decay (applied to salient weights only).
        mask_ratio: Share of weights that are salient (trainable), in (0, 1].
        redraw_labels: Draw the forget set's random labels anew every epoch (the published
            loop); False draws them once for the whole run (with ``epochs <= 1`` the same:
            False then warns).

    """

    epochs: int = 10
    lr: float = 0.013
    batch_size: int = 256
    mask_ratio: float = 0.5
    redraw_labels: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mask_ratio = check_fraction("mask_ratio", self.mask_ratio)
        self.redraw_labels = check_flag("redraw_labels", self.redraw_labels)
        self._warn_settings(SalUnConfig)

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the base class's warnings and ``redraw_labels``' with one epoch or none.

        The labels are redrawn from the second epoch on: with ``epochs <= 1`` the flag is
        never read.
        """
        out = super().conditional_warnings(given)
        if self.epochs <= 1 and self._set_fields(("redraw_labels",), given):
            out.append(no_effect_message(["redraw_labels"], f"with epochs={self.epochs} (the "
                                         "labels are redrawn from the second epoch on)"))
        return out


def saliency_mask(
    model: nn.Module,
    forget_ds: Dataset,
    ratio: float | np.floating,
    *,
    batch_size: int | np.integer = 256,
) -> dict[str, Tensor]:
    """Boolean masks (per named parameter) of the ``ratio`` most salient weights.

    Saliency is ``|sum over the forget set of grad CE(model(x), y)|`` at the current weights,
    ranked globally over all parameters; exactly ``round(ratio * n)`` (at least one) of the
    ``n`` weights are salient, ties at the threshold broken by parameter order (as the
    published rank-based mask). ``model`` is not modified (its gradients are restored).

    Args:
        model: The trained model.
        forget_ds: The forget set (a Dataset or an ``(inputs, labels)`` pair).
        ratio: Share of weights to mark salient, in (0, 1].
        batch_size: Batch size of the gradient pass.

    Returns:
        ``{name: bool tensor shaped like the parameter}`` for every parameter that requires
        grad.

    Raises:
        TypeError: If an argument has the wrong type, or ``model`` cannot run on the
            inputs of ``forget_ds`` (or its labels are not integers).
        ValueError: If ``ratio`` or ``batch_size`` is out of range, ``forget_ds`` is empty
            or malformed, a label is outside the model's outputs, or no parameter of
            ``model`` requires a gradient.

    """
    ratio = check_fraction("ratio", ratio)
    batch_size = check_count("batch_size", batch_size)
    forget_ds = as_dataset(forget_ds, "forget_ds")
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters (every parameter has "
                         "requires_grad=False), so no weight can be salient")
    k = int(example_logits(model, forget_ds, "forget_ds").shape[-1])
    labels = dataset_labels(forget_ds)
    if labels is not None:
        check_labels(labels, k, "forget_ds")
    work = clone_model(model).eval()
    params = {n: p for n, p in work.named_parameters() if p.requires_grad}
    device = model_device(work)
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in make_loader(forget_ds, batch_size, shuffle=False):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        check_batch_labels(y, k, "forget_ds")  # labels the data set does not expose
        loss = F.cross_entropy(work(x), y.long(), reduction="sum")
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            grads[n] += g
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    k = max(1, int(round(ratio * flat.numel())))
    # exactly k weights, ties broken by parameter order: keeping every tie at the threshold
    # would, when more than 1 - ratio of the gradients are exactly zero (inputs that are
    # always zero, dead units), make the threshold 0 and every weight salient
    order = torch.sort(flat, descending=True, stable=True).indices
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order[:k]] = True
    masks, start = {}, 0
    for n, g in grads.items():
        masks[n] = chosen[start:start + g.numel()].view_as(g)
        start += g.numel()
    return masks


@register("salun", SalUnConfig)
def salun(
    model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, config: SalUnConfig
) -> nn.Module:
    """Unlearn ``forget_ds`` with saliency-masked random-label training.

    Args:
        model: The trained model; left unchanged.
        forget_ds: The forget set.
        retain_ds: The retain set.
        config: A :class:`SalUnConfig`.

    Returns:
        The new model. Only salient trainable weights change: frozen parameters
        (``requires_grad=False``) get no mask entry and no optimiser step.

    Raises:
        ValueError: Besides the shared input checks, ``batch_size=1`` with a model whose
            BatchNorm cannot train on a one-example batch (a last batch of one example is
            skipped instead).

    """
    forget_ds, retain_ds, n_classes = prepare_inputs(
        model, config, SalUnConfig, forget_ds, retain_ds
    )
    xf, yf = checked_tensors(forget_ds, n_classes, "forget")
    xr, yr = checked_tensors(retain_ds, n_classes, "retain")
    if config.epochs > 0:
        n = xf.shape[0] + xr.shape[0]
        check_single_batches(
            model, xf[:1], [TrainingData("forget + retain", n, "batch_size", config.batch_size)]
        )
    masks = saliency_mask(model, forget_ds, config.mask_ratio, batch_size=config.batch_size)
    new = clone_model(model)
    gen = torch.Generator().manual_seed(config.seed)
    inputs = torch.cat([xf, xr.to(xf.dtype)])
    labels = torch.cat([torch.randint(0, n_classes, yf.shape, generator=gen), yr])

    def draw_labels(epoch: int) -> None:
        # the training set holds ``labels`` itself: its forget rows are rewritten in place
        if epoch > 0 and config.redraw_labels:
            labels[: len(yf)] = torch.randint(0, n_classes, yf.shape, generator=gen)

    named = {n: p for n, p in new.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.SGD(
        named.values(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )

    def mask_grads() -> None:
        for n, p in named.items():
            if p.grad is not None:
                p.grad.mul_(masks[n])

    @torch.no_grad()
    def restore() -> None:
        for n, p in named.items():
            p.copy_(torch.where(masks[n], p, frozen[n]))

    train_ce(
        new, inputs, labels, opt, epochs=config.epochs, batch_size=config.batch_size,
        seed=config.seed, progress=config.progress, desc="salun",
        before_step=mask_grads, after_step=restore, before_epoch=draw_labels,
    )
    return new.eval()
