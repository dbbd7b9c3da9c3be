r"""Second-order influence unlearning of the forget set (method ``"influence"``).

Removing the forget set ``F`` from the training set ``D`` moves the minimiser of the summed
loss from ``theta`` to approximately (one Newton step on the retain loss, Koh & Liang 2017;
Warnecke et al. 2023; OPTML's "IU")::

    theta_new = theta + scale * (H_R + lambda I)^{-1} sum_{z in F} grad l(z; theta)

with ``H_R`` the Hessian of the summed loss on the retain set ``R``. The update is
:func:`fastunlearn.influence.influence_update` with the forget points as the affected points
and **weight 0** for their corrected versions (a weighted summed cross-entropy), so
``G = -sum_F grad l`` and the Newton system is solved on the retain set: by default with
matrix-free CG on the last parameter tensors (the classifier head), which is cheap and
well conditioned. Divergence (the retain loss growing, a non-finite step) leaves the model
unchanged and, with ``on_divergence="raise"``, raises so a harness records the failure.

The update's report (:class:`~fastunlearn.influence.UpdateResult` as a dict) is attached
to the returned model as ``model.unlearning_info``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._no_effect import no_effect_message
from .._numbers import check_real
from ..influence import influence_update, last_parameters
from ._common_b import check_fraction, prepare_inputs
from .base import (
    ForgetConfig,
    check_count,
    clone_model,
    make_loader,
    model_device,
    register,
)
from .checks import check_label_dtype, check_labels

__all__ = ["InfluenceConfig", "influence_unlearning", "weighted_loss"]

_SOLVERS = ("cg", "lissa", "direct")
_CURVATURES = ("hessian", "ggn")


@dataclass
class InfluenceConfig(ForgetConfig):
    """Settings of influence unlearning.

    ``epochs``, ``lr``, ``momentum`` and ``weight_decay`` are not used (there is no
    training); ``batch_size`` is the batch of the data gathering. A value other than the
    default of one of them gives a UserWarning (:attr:`UNUSED_FIELDS`), and so do
    ``damping``, ``tol`` or ``maxiter`` with ``solver="lissa"`` and ``tol`` or ``maxiter``
    with ``solver="direct"``, which do not use them.

    Attributes:
        num_params: Update the last ``num_params`` parameter tensors (2: the head's weight
            and bias); 0 updates every trainable parameter. More than the model has
            trainable parameter tensors is refused (ValueError) when the method runs.
        solver: ``"cg"`` (default), ``"lissa"`` or ``"direct"``.
        curvature: ``"hessian"`` or ``"ggn"`` (positive semidefinite; use it for deep
            parameter subsets where the Hessian can be indefinite).
        damping: Tikhonov damping lambda of the retain Hessian (summed loss); CG and
            direct only. LiSSA runs with the reference settings
            (:class:`~fastunlearn.influence.LissaSettings` defaults: 100 steps over batches
            of 1024 retain rows, damped by ``d s = 1e-4 * 2e5 = 20`` relative to a batch's
            summed Hessian); the report's ``damping`` and ``step_scale`` give the system
            it solves relative to the retain Hessian.
        scale: Multiplier of the Newton step (1: the plain influence estimate).
        tol: Relative CG tolerance (CG only).
        maxiter: CG iteration cap (None: ``10 P``; CG only).
        hvp_batch_size: Rows per Hessian-vector product batch.
        retain_fraction: Fraction of the retain set the Hessian is estimated on (seeded).
        loss_tolerance: Relative growth of the retain loss treated as divergence.
        on_divergence: ``"raise"`` (RuntimeError) or ``"keep"`` (return the unchanged copy).

    """

    num_params: int = 2
    solver: str = "cg"
    curvature: str = "hessian"
    damping: float = 1.0
    scale: float = 1.0
    tol: float = 1e-3
    maxiter: int | None = None
    hvp_batch_size: int = 1024
    retain_fraction: float = 1.0
    loss_tolerance: float = 1.0
    on_divergence: str = "raise"

    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("epochs", "lr", "momentum", "weight_decay"),
        "(influence unlearning does not train: it takes one Newton step)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.num_params = check_count("num_params", self.num_params, 0)
        if self.solver not in _SOLVERS:
            raise ValueError(f"'solver' must be one of {_SOLVERS}, got {self.solver!r}")
        if self.curvature not in _CURVATURES:
            raise ValueError(f"'curvature' must be one of {_CURVATURES}, got {self.curvature!r}")
        for name in ("damping", "scale", "tol", "loss_tolerance"):
            setattr(self, name, check_real(name, getattr(self, name)))
        if self.maxiter is not None:
            self.maxiter = check_count("maxiter", self.maxiter, 0)
        self.hvp_batch_size = check_count("hvp_batch_size", self.hvp_batch_size, 1)
        self.retain_fraction = check_fraction("retain_fraction", self.retain_fraction)
        if self.on_divergence not in ("raise", "keep"):
            raise ValueError(f"'on_divergence' must be 'raise' or 'keep', got "
                             f"{self.on_divergence!r}")
        self._warn_settings()

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the warnings about the settings the chosen solver ignores.

        LiSSA ignores ``damping``, ``tol`` and ``maxiter``; the direct solver ignores
        ``tol`` and ``maxiter``. Each set to a value other than its default (or named in
        ``given``) is named.
        """
        out = super().conditional_warnings(given)
        ignored = {"lissa": ("damping", "tol", "maxiter"), "direct": ("tol", "maxiter")}
        changed = self._set_fields(ignored.get(self.solver, ()), given)
        if changed:
            why = _LISSA_NOTE if self.solver == "lissa" else _DIRECT_NOTE
            out.append(no_effect_message(changed, f"with solver={self.solver!r} {why}"))
        return out


#: Why ``damping``, ``tol`` and ``maxiter`` do nothing with ``solver="lissa"``: the update
#: runs LiSSA with ``LissaSettings()`` (the reference's CIFAR settings).
_LISSA_NOTE = ("(LiSSA runs with its reference settings: 100 steps over batches of 1024 "
               "retain rows, damped by d*s = 1e-4 * 2e5 = 20 relative to a batch's summed "
               "Hessian)")
_DIRECT_NOTE = ("(the direct solver solves the damped system with one dense factorisation, "
                "without iterations)")


def weighted_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Return the per-row weighted summed cross-entropy.

    ``targets[:, 0]`` holds the label and ``targets[:, 1]`` the row's weight.

    Raises:
        ValueError: ``targets`` is not ``[N, 2]`` for the ``N`` rows of ``outputs``.

    """
    if targets.dim() != 2 or targets.shape[1] != 2 or targets.shape[0] != outputs.shape[0]:
        raise ValueError(f"'targets' must be [N, 2] (label, weight) for the {outputs.shape[0]} "
                         f"rows of 'outputs', got shape {tuple(targets.shape)}")
    ce = F.cross_entropy(outputs, targets[:, 0].long(), reduction="none")
    return (targets[:, 1].to(ce.dtype) * ce).sum()


def _tensors(ds: Dataset, batch_size: int, device: torch.device,
             dtype: torch.dtype, name: str) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for x, y in make_loader(ds, batch_size, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    x, y = torch.cat(xs), torch.cat(ys)
    check_label_dtype(y, name)  # a float label (3.5) is refused, never truncated by .long()
    y = y.long()
    if x.is_floating_point():
        return x.to(device, dtype), y.to(device)
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"influence unlearning needs real inputs, got {x.dtype}")
    # integer inputs (token ids for an embedding) stay integers: the update differentiates
    # only with respect to the parameters, never the inputs
    return x.to(device), y.to(device)


@register("influence", InfluenceConfig)
def influence_unlearning(
    model: nn.Module, forget: Dataset, retain: Dataset, config: InfluenceConfig
) -> nn.Module:
    """Remove the forget set with one influence (Newton) step on the retain loss.

    Args:
        model: Trained classifier (left unchanged).
        forget: The forget set.
        retain: The retain set (its Hessian).
        config: :class:`InfluenceConfig`.

    Returns:
        A new model; ``model.unlearning_info`` holds the update's report.

    Raises:
        RuntimeError: The update diverged and ``on_divergence="raise"``.
        ValueError: Overlapping sets, duplicate forget examples, labels outside the
            model's outputs, or ``num_params`` above the model's number of trainable
            parameter tensors.
        TypeError: A trainable parameter of ``model`` is neither float32 nor float64
            (bfloat16, float16).

    """
    forget, retain, k = prepare_inputs(model, config, InfluenceConfig, forget, retain)
    config.__post_init__()  # a field changed after construction (cfg.damping = nan) is refused
    for name, p in model.named_parameters():  # the Hessian solve runs in their dtype
        if p.requires_grad and p.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"influence: 'model' must have float32 or float64 parameters, got {name!r} "
                f"in {p.dtype} (the inverse-Hessian solve needs them); convert it with "
                ".float() or .double()"
            )
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    if tensors and config.num_params > tensors:  # last_parameters would take them all
        raise ValueError(
            f"'num_params' must be <= {tensors} (the model's trainable parameter tensors; 0 "
            f"updates all of them), got {config.num_params}")
    clone = clone_model(model)
    device = model_device(clone)
    params = [p for p in clone.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    dtype = params[0].dtype
    xf, yf = _tensors(forget, config.batch_size, device, dtype, "forget")
    xr, yr = _tensors(retain, config.batch_size, device, dtype, "retain")
    check_labels(yf, k, "forget")  # also for data sets that do not expose their labels
    check_labels(yr, k, "retain")
    if config.retain_fraction < 1.0:
        gen = torch.Generator().manual_seed(config.seed)
        keep = torch.randperm(xr.shape[0], generator=gen)[:max(1, round(
            config.retain_fraction * xr.shape[0]))].to(device)
        xr, yr = xr[keep], yr[keep]
    names = last_parameters(clone, config.num_params) if config.num_params else None
    one = torch.ones_like(yf, dtype=dtype)
    targets = torch.stack([yf.to(dtype), one], 1)
    new_targets = torch.stack([yf.to(dtype), torch.zeros_like(one)], 1)
    train_targets = torch.stack([yr.to(dtype), torch.ones_like(yr, dtype=dtype)], 1)
    # only the settings the solver reads: influence_update warns about the others, and the
    # config has said so once already (conditional_warnings)
    solve: dict[str, Any] = {} if config.solver == "lissa" else {"damping": float(config.damping)}
    if config.solver == "cg":
        solve.update(tol=float(config.tol), maxiter=config.maxiter)
    result = influence_update(
        clone, xf, targets, None, new_targets, train_data=(xr, train_targets),
        loss_fn=weighted_loss, order=2, solver=config.solver, curvature=config.curvature,
        params=names, hvp_batch_size=config.hvp_batch_size,
        chunk_size=config.hvp_batch_size, loss_tolerance=float(config.loss_tolerance),
        apply=False, progress=config.progress, **solve,
    )
    if result.diverged and config.on_divergence == "raise":
        raise RuntimeError(f"influence unlearning diverged: {result.reason}")
    if not result.diverged and result.step_norm > 0:
        named = dict(clone.named_parameters())
        offset = 0
        with torch.no_grad():
            for n in result.param_names:
                p = named[n]
                p.sub_(config.scale * result.step[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
    info = result.to_dict()
    info["applied"] = bool(not result.diverged and result.step_norm > 0)
    info["scale"] = config.scale
    setattr(clone, "unlearning_info", info)  # noqa: B010 (nn.Module types attributes as Tensor)
    return clone.eval()
