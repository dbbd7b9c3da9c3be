"""Bad Teacher (Chundawat et al., AAAI 2023): distil from a competent and an incompetent teacher.

The student starts as a copy of the trained model. Batches mix forget samples (flag 1) and a
random retain subset (flag 0); the student's tempered distribution is pulled (KL divergence)
towards the *incompetent* teacher (a randomly initialised copy of the architecture) on
forget samples and towards the *competent* teacher (the frozen trained model) on retain
samples. The loss is ``KL(teacher_T || student_T) = sum_j p_teacher (log p_teacher -
log p_student)`` at temperature ``T`` without a ``T**2`` factor, as the published
``UnlearnerLoss`` (``kl_div(log_softmax(student / T), teacher)``); it is averaged over the
batch, where the published element-wise mean also divides by the number of classes (a
constant factor that Adam's scale invariance makes immaterial). Defaults: T 1, Adam lr
1e-4, 1 epoch, batch 256; the retain subset is 30 % of the retain set, as in the paper's
experiments. Dropout in the student draws from a generator seeded by ``config.seed``.

The incompetent teacher is re-drawn entirely, frozen layers included (it is a random
network that is only queried); the student's frozen parameters (``requires_grad=False``)
are never trained. With a model whose BatchNorm cannot train on a one-example batch, a
last mixed batch of one example is skipped and ``batch_size=1`` is refused (ValueError).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from .._numbers import check_real
from ._common_b import (
    SkipSingleBatches,
    TrainingData,
    check_adam_dtype,
    check_fraction,
    check_single_batches,
    checked_tensors,
    freeze,
    prepare_inputs,
    reinitialize,
    seeded_rng,
)
from .base import (
    ForgetConfig,
    check_signed_seed,
    clone_model,
    iterate,
    make_loader,
    model_device,
    offset_seed,
    register,
)

__all__ = ["BadTeacherConfig", "bad_teacher"]


@dataclass
class BadTeacherConfig(ForgetConfig):
    """Bad Teacher settings (defaults: the published ones).

    Attributes:
        epochs: Passes over the mixed forget + retain-subset data.
        lr: Adam learning rate.
        batch_size: Mini-batch size of the mixed data.
        momentum: Unused (Adam).
        weight_decay: Adam weight decay (0 in the paper).
        temperature: Distillation temperature ``T``.
        retain_fraction: Share of the retain set mixed with the forget set, in (0, 1].
        incompetent_seed: Seed of the incompetent teacher's random initialisation
            (``None``: ``seed + 1``).

    """

    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 256
    weight_decay: float = 0.0
    temperature: float = 1.0
    retain_fraction: float = 0.3
    incompetent_seed: int | None = None

    UNUSED_FIELDS: ClassVar[Mapping[str, str]] = {
        "momentum": "(Bad Teacher distillation trains with Adam, at its default betas)"}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.temperature = check_real("temperature", self.temperature, positive=True)
        self.retain_fraction = check_fraction("retain_fraction", self.retain_fraction)
        if self.incompetent_seed is not None:
            self.incompetent_seed = check_signed_seed("incompetent_seed", self.incompetent_seed)
        self._warn_settings()


@register("bad_teacher", BadTeacherConfig)
def bad_teacher(
    model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, config: BadTeacherConfig
) -> nn.Module:
    """Unlearn ``forget_ds`` by competent/incompetent teacher distillation.

    Args:
        model: The trained model (the competent teacher); left unchanged.
        forget_ds: The forget set.
        retain_ds: The retain set (a ``retain_fraction`` subset of it is used).
        config: A :class:`BadTeacherConfig`.

    The incompetent teacher is a copy of ``model`` with every module's
    ``reset_parameters()`` (or ``nn.MultiheadAttention``'s ``_reset_parameters()``) run;
    parameters of a module with neither (ViT's class token, ConvNeXt's layer scale) keep
    their trained values, with a ``UserWarning`` naming them.

    Returns:
        The student after ``config.epochs`` epochs.

    Raises:
        TypeError: If ``model`` has float16 parameters (Adam's state underflows in half
            precision; bfloat16 trains), besides the checks every method runs.

    """
    forget_ds, retain_ds, k = prepare_inputs(
        model, config, BadTeacherConfig, forget_ds, retain_ds
    )
    xf, _ = checked_tensors(forget_ds, k, "forget")
    xr, _ = checked_tensors(retain_ds, k, "retain")
    check_adam_dtype(model, "bad_teacher")
    good = freeze(clone_model(model))
    bad_seed = (offset_seed(config.seed, 1) if config.incompetent_seed is None
                else config.incompetent_seed)
    bad = freeze(reinitialize(clone_model(model), bad_seed))
    student = clone_model(model)
    device = model_device(student)

    gen = torch.Generator().manual_seed(config.seed)
    n_keep = max(1, int(round(config.retain_fraction * xr.shape[0])))
    keep = torch.randperm(xr.shape[0], generator=gen)[:n_keep]
    xr = xr[keep]
    if config.epochs > 0:
        n_mixed = xf.shape[0] + xr.shape[0]
        check_single_batches(
            student, xf[:1], [TrainingData("forget + retain subset", n_mixed, "batch_size",
                                           config.batch_size)]
        )
    inputs = torch.cat([xf, xr.to(xf.dtype)])
    flags = torch.cat([torch.ones(xf.shape[0]), torch.zeros(xr.shape[0])])
    loader = SkipSingleBatches(
        make_loader(TensorDataset(inputs, flags), config.batch_size, shuffle=True,
                    seed=config.seed),
        student,
        "bad_teacher",
    )

    opt = torch.optim.Adam(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    T = config.temperature
    student.train()
    with seeded_rng(config.seed, device):  # dropout: seeded, the caller's RNG untouched
        for _ in iterate(range(config.epochs), progress=config.progress, desc="bad_teacher"):
            for x, flag in loader:
                x, flag = x.to(device), flag.to(device).unsqueeze(1)
                with torch.no_grad():
                    p_bad = F.softmax(bad(x) / T, dim=1)
                    p_good = F.softmax(good(x) / T, dim=1)
                    target = flag * p_bad + (1 - flag) * p_good
                log_s = F.log_softmax(student(x) / T, dim=1)
                # KL(teacher_T || student_T), as kl_div(log student, teacher) in the paper's code
                loss = F.kl_div(log_s, target, reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return student.eval()
