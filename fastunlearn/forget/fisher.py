"""Fisher forgetting (Golatkar et al., CVPR 2020; FF in Unlearn-Sparse and SalUn).

The diagonal Fisher information ``F`` of the retain loss measures how much each weight
matters for the retain set. Fisher forgetting adds Gaussian noise to every weight with
variance ``alpha / F`` (capped at ``max_var``): weights the retain set does not constrain
get large noise, which destroys what only the forget set relied on, while the weights the
retain set needs barely move. There is no training step.

Here ``F_i = sum over retain examples x of E_y[(d log p(y | x) / d theta_i)^2]``, a sum (not a
mean) so that it scales with the retain set like the Hessian of the summed training loss.
``fisher="expected"`` takes the expectation over the model's own predictive distribution
(the true Fisher, an exact sum over classes, ``K`` backward passes per batch);
``fisher="empirical"`` uses the true label only (one pass; the default).

Class-wise forgetting: noise alone does not remove a class whose head row the retain set
barely constrains (the row just gets a random perturbation). Golatkar et al.'s class-removal
step sets the mean of the head's weight row and bias of the forgotten class to 0 and uses a
small variance (1e-4) for them; ``forget_class_rows=True`` (default) does that for every
forget label that no retain example has.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import Dataset

from .._no_effect import no_effect_message
from .._numbers import check_real
from ._training import SGDConfig, check_flag, last_linear, prepare, seeded
from .base import as_dataset, iterate, make_loader, model_device, register
from .checks import check_batch_labels, check_labels, dataset_labels, item_labels

__all__ = ["FisherConfig", "fisher_diagonal", "fisher_forgetting"]

_FISHER_KINDS = ("empirical", "expected")


@dataclass
class FisherConfig(SGDConfig):
    """Settings of ``fisher`` (Fisher forgetting).

    ``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``nesterov``, ``scheduler``,
    ``milestones`` and ``gamma`` are unused (no training): a value other than the default
    gives a UserWarning (:attr:`UNUSED_FIELDS`).

    Attributes:
        alpha: Noise scale: variance ``alpha / (F + eps)`` (1e-6, the OPTML run scripts'
            value for ``fisher``; they use 3e-8 for ``fisher_new``). Not the same noise as
            OPTML's at that value: their Fisher is a mean over the retain set (ours a sum),
            they cap the standard deviation (not the variance) at 1e-3 and scale the head's
            noise by 10. Tune it per data set: the Fisher sum grows with the retain set.
        max_var: Cap on each weight's noise variance (1e-3), so weights with (almost) zero
            Fisher information do not get unbounded noise.
        eps: Added to ``F`` before dividing (1e-8).
        fisher: ``"empirical"`` (true labels) or ``"expected"`` (model's predictive
            distribution).
        batch_size: Examples per vectorised per-sample gradient batch (64).
        forget_class_rows: Zero the head rows of forget labels absent from the retain set
            (class-wise forgetting; see the module docstring) (True).
        class_row_var: Noise variance of those rows (1e-4; another value warns with
            ``forget_class_rows=False``, which does not read it).

    """

    alpha: float = 1e-6
    max_var: float = 1e-3
    eps: float = 1e-8
    fisher: str = "empirical"
    batch_size: int = 64
    forget_class_rows: bool = True
    class_row_var: float = 1e-4

    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("epochs", "lr", "momentum", "weight_decay", "nesterov", "scheduler", "milestones",
         "gamma"), "(Fisher forgetting does not train: it only adds noise to the weights)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = check_real("alpha", self.alpha)
        self.class_row_var = check_real("class_row_var", self.class_row_var)
        self.max_var = check_real("max_var", self.max_var, positive=True)
        self.eps = check_real("eps", self.eps, positive=True)
        self.forget_class_rows = check_flag("forget_class_rows", self.forget_class_rows)
        if self.fisher not in _FISHER_KINDS:
            raise ValueError(f"'fisher' must be one of {_FISHER_KINDS}, got {self.fisher!r}")
        self._warn_settings(FisherConfig)

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the base class's warnings and ``class_row_var``'s without class rows.

        ``class_row_var`` is the noise variance of the rows ``forget_class_rows`` zeroes:
        with ``forget_class_rows=False`` it is never read.
        """
        out = super().conditional_warnings(given)
        if not self.forget_class_rows and self._set_fields(("class_row_var",), given):
            out.append(no_effect_message(["class_row_var"], "with forget_class_rows=False "
                                         "(the noise variance of the zeroed class rows)"))
        return out


def fisher_diagonal(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    kind: str = "empirical",
    num_classes: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Diagonal Fisher information of ``model`` summed over ``dataset`` (eval mode).

    Args:
        model: The network; its parameters are not changed.
        dataset: ``(input, label)`` pairs: a Dataset or an ``(inputs, labels)`` tuple of
            tensors (:func:`~fastunlearn.forget.base.as_dataset`).
        batch_size: Examples per vectorised per-sample gradient computation.
        kind: ``"empirical"``: squared per-example gradients of ``log p(y_true | x)``;
            ``"expected"``: ``sum_k p(k | x) (d log p(k | x))^2``.
        num_classes: Every label is checked to lie in ``0 .. num_classes - 1``; None: the
            model's outputs (from the first batch).
        progress: Show a progress bar.

    Returns:
        ``{parameter name: tensor of the parameter's shape}`` for every trainable parameter.

    Raises:
        ValueError: ``kind`` is unknown, ``batch_size < 1``, ``dataset`` is empty or
            malformed, or a label of ``dataset`` is outside the classes.
        TypeError: ``model`` is not an ``nn.Module`` or ``dataset`` not a data set.

    """
    if kind not in _FISHER_KINDS:
        raise ValueError(f"'kind' must be one of {_FISHER_KINDS}, got {kind!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module, got {type(model).__name__}")
    dataset = as_dataset(dataset, "dataset")
    device = model_device(model)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    modes = [(m, m.training) for m in model.modules()]  # each submodule's own flag
    model.eval()

    def log_prob(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return -F.cross_entropy(out, y.unsqueeze(0))

    one_grad = grad(log_prob)
    vectorised = vmap(one_grad, in_dims=(None, 0, 0))
    use_vmap = True

    def per_sample(p: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        # vmap has no batching rule for some layers (e.g. a multi-layer nn.GRU writes its
        # batched hidden state into an unbatched buffer); those fall back to one example
        # at a time, which gives the same gradients
        nonlocal use_vmap
        if use_vmap:
            try:
                return vectorised(p, x, y)
            except RuntimeError:
                use_vmap = False
        rows = [one_grad(p, x[i], y[i]) for i in range(x.shape[0])]
        return {n: torch.stack([r[n] for r in rows]) for n in p}

    total = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        loader = make_loader(dataset, batch_size, shuffle=False)
        for x, y in iterate(loader, progress=progress, desc="fisher"):
            x, y = x.to(device), y.to(device)
            if num_classes is None:  # the model's outputs (old: an IndexError from the loss)
                with torch.no_grad():
                    num_classes = int(model(x[:1]).shape[1])
            check_batch_labels(y, num_classes, "dataset")
            y = y.long()  # int32 / uint8 labels: cross-entropy's gather needs int64
            if kind == "empirical":
                g = per_sample(params, x, y)
                for n in total:
                    total[n] += g[n].pow(2).sum(dim=0)
                continue
            with torch.no_grad():
                probs = F.softmax(model(x), dim=1)
            for c in range(probs.shape[1]):
                g = per_sample(params, x, torch.full_like(y, c))
                w = probs[:, c]
                for n in total:
                    total[n] += torch.einsum("b,b...->...", w, g[n].pow(2))
    finally:
        for m, mode in modes:
            m.training = mode
    return total


def _labels(dataset: Dataset, num_classes: int, name: str) -> Tensor:
    labels = dataset_labels(dataset)
    if labels is None:
        labels = item_labels(dataset, name)  # a float label is refused, not truncated
    check_labels(labels, num_classes, name)  # also labels the data set did not expose
    return labels


def _removed_classes(forget: Dataset, retain: Dataset, num_classes: int) -> list[int]:
    """Forget labels that no retain example has (the classes being removed), sorted.

    Raises:
        ValueError: A label is outside ``0 .. num_classes - 1`` (naming the set).
        TypeError: The labels are not integers.

    """
    present = set(_labels(retain, num_classes, "retain").tolist())
    return sorted(set(_labels(forget, num_classes, "forget").tolist()) - present)


@register("fisher", FisherConfig)
def fisher_forgetting(
    model: nn.Module, forget: Dataset, retain: Dataset, config: FisherConfig
) -> nn.Module:
    """Add Gaussian noise with variance ``min(alpha / (F + eps), max_var)`` to a copy's weights.

    ``F`` is the diagonal Fisher of the retain set (:func:`fisher_diagonal`); the forget set
    is used only for the argument checks. Only trainable parameters get noise (and, with
    ``forget_class_rows``, zeroed class rows): frozen ones (``requires_grad=False``) have no
    Fisher entry and are returned unchanged. The model runs in eval mode only, so BatchNorm
    statistics are not touched and any batch size works.
    """
    clone, forget_ds, retain_ds, k = prepare(model, forget, retain, config, FisherConfig)
    rows = _removed_classes(forget_ds, retain_ds, k) if config.forget_class_rows else []
    # the head whose class rows are zeroed: needed only for class-wise forgetting, and
    # looked up before the Fisher pass (a model without one is refused up front)
    head = last_linear(clone, "fisher with forget_class_rows=True (class-wise forgetting)",
                       "set forget_class_rows=False to only add noise") if rows else None
    fisher = fisher_diagonal(
        clone,
        retain_ds,
        batch_size=config.batch_size,
        kind=config.fisher,
        num_classes=k,
        progress=config.progress,
    )
    head_params = (
        {id(head.weight), id(head.bias)} if head is not None and head.out_features == k
        else set()
    )
    with seeded(config.seed, model_device(clone)):
        gen = torch.Generator().manual_seed(config.seed)
        params = dict(clone.named_parameters())
        with torch.no_grad():
            for name in sorted(fisher):
                p = params[name]
                var = (config.alpha / (fisher[name] + config.eps)).clamp(max=config.max_var)
                if rows and id(p) in head_params:
                    p[rows] = 0.0
                    var[rows] = config.class_row_var
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
                p.add_(var.sqrt() * noise)
    return clone.eval()
