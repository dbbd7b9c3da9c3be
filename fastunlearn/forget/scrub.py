"""SCRUB (Kurmanji et al., NeurIPS 2023): teacher-student unlearning by alternating steps.

The teacher is the frozen original model; the student starts as a copy of it. Every epoch
runs (while ``epoch < max_steps``) a *max-step* pass over the forget set, pushing the
student's tempered distribution away from the teacher's (minimising ``-KL``), then a
*min-step* pass over the retain set that keeps the student close to the teacher and
accurate (``gamma * CE + alpha * KL``). Defaults: the authors' large-scale notebook
(SGD lr 5e-4, momentum 0.9, weight decay 5e-4, gamma 0.99, alpha 0.001, T 4, 3 epochs with
max-steps in the first 2, lr x0.1 at epochs 3/5/9, retain batch 128, forget batch 32).

The published loss has a third term ``beta * extra-KD`` (a feature-distillation criterion of
the RepDistiller code base); its published weight is 0, so it is not implemented.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._no_effect import no_effect_message
from .._numbers import check_real
from ._common_b import (
    SkipSingleBatches,
    TrainingData,
    check_single_batches,
    freeze,
    prepare_inputs,
    seeded_rng,
)
from .base import (
    ForgetConfig,
    check_count,
    clone_model,
    iterate,
    make_loader,
    model_device,
    offset_seed,
    register,
    sized_len,
)
from .checks import check_batch_labels

__all__ = ["ScrubConfig", "scrub", "tempered_kl"]


@dataclass
class ScrubConfig(ForgetConfig):
    """SCRUB settings (defaults: the published large-scale setting).

    Attributes:
        epochs: SCRUB epochs (``sgda_epochs``), each a max pass then a min pass.
        lr: SGD learning rate.
        batch_size: Retain (min-step) batch size.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        forget_batch_size: Forget (max-step) batch size (set with ``max_steps=0``, it
            warns: there is no max step).
        max_steps: Number of leading epochs that include a max pass (``msteps``).
        alpha: Weight of the KL-to-teacher term of the min step.
        gamma: Weight of the cross-entropy term of the min step.
        temperature: Distillation temperature ``T``.
        lr_decay_epochs: 1-based epochs after which the lr is multiplied by
            ``lr_decay_rate`` (epoch ``e`` uses ``lr * rate ** #{m : e > m}``).
        lr_decay_rate: The lr multiplier at each milestone (set with no entry of
            ``lr_decay_epochs`` below ``epochs``, it warns: it is never applied).

    """

    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    forget_batch_size: int = 32
    max_steps: int = 2
    alpha: float = 0.001
    gamma: float = 0.99
    temperature: float = 4.0
    lr_decay_epochs: tuple[int, ...] = (3, 5, 9)
    lr_decay_rate: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.forget_batch_size = check_count("forget_batch_size", self.forget_batch_size)
        self.max_steps = check_count("max_steps", self.max_steps, 0)
        self.alpha = check_real("alpha", self.alpha)
        self.gamma = check_real("gamma", self.gamma)
        self.temperature = check_real("temperature", self.temperature, positive=True)
        self.lr_decay_rate = check_real("lr_decay_rate", self.lr_decay_rate, positive=True)
        if not isinstance(self.lr_decay_epochs, (tuple, list)):
            raise TypeError("'lr_decay_epochs' must be a tuple of ints")
        epochs = [check_count("lr_decay_epochs", m) for m in self.lr_decay_epochs]
        self.lr_decay_epochs = type(self.lr_decay_epochs)(epochs)
        self._warn_settings(ScrubConfig)

    def conditional_warnings(self, given: Collection[str] = ()) -> list[str]:
        """Return the warnings about ``lr_decay_rate`` and ``forget_batch_size`` unread.

        ``lr_decay_rate`` applies from the epoch after a decay epoch: with no entry of
        ``lr_decay_epochs`` below ``epochs`` (the published defaults: 3 epochs, decays
        after 3, 5 and 9) it is never applied. ``forget_batch_size`` batches the max steps:
        with ``max_steps=0`` there are none. Each is named only when set (another value
        than its default, or named in ``given``): untouched defaults stay quiet.
        """
        out = super().conditional_warnings(given)
        if not any(m < self.epochs for m in self.lr_decay_epochs) \
                and self._set_fields(("lr_decay_rate",), given):
            out.append(no_effect_message(
                ["lr_decay_rate"], f"with epochs={self.epochs} and lr_decay_epochs="
                f"{tuple(self.lr_decay_epochs)!r} (no decay epoch is reached)"))
        if self.max_steps == 0 and self._set_fields(("forget_batch_size",), given):
            out.append(no_effect_message(["forget_batch_size"], "with max_steps=0 (for the "
                                         "max steps on the forget set)"))
        return out


def tempered_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over the batch (Hinton's KD loss).

    Raises:
        TypeError: A logits argument is not a tensor, or ``temperature`` not a number.
        ValueError: The logits are not 2-D ``[batch, classes]`` of the same shape, or
            ``temperature`` is not finite and > 0.

    """
    for name, logits in (("student_logits", student_logits),
                         ("teacher_logits", teacher_logits)):
        if not isinstance(logits, Tensor):
            raise TypeError(f"'{name}' must be a tensor, got {type(logits).__name__}")
        if logits.dim() != 2:
            raise ValueError(f"'{name}' must be [batch, classes], got shape "
                             f"{tuple(logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"'student_logits' {tuple(student_logits.shape)} and "
                         f"'teacher_logits' {tuple(teacher_logits.shape)} differ in shape")
    temperature = check_real("temperature", temperature, positive=True)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register("scrub", ScrubConfig)
def scrub(
    model: nn.Module, forget_ds: Dataset, retain_ds: Dataset, config: ScrubConfig
) -> nn.Module:
    """Unlearn ``forget_ds`` with SCRUB; returns a new model (``model`` is left unchanged).

    Args:
        model: The trained model (the teacher).
        forget_ds: The forget set.
        retain_ds: The retain set.
        config: A :class:`ScrubConfig`.

    Returns:
        The student after ``config.epochs`` SCRUB epochs. Shuffling and dropout depend on
        ``config.seed`` alone; the caller's RNG state is left as it was. Frozen parameters
        (``requires_grad=False``) are not trained.

    Raises:
        ValueError: Besides the shared input checks, with a model whose BatchNorm cannot
            train on a one-example batch: a forget set of one example (when max steps
            run) or a retain set of one example, or ``forget_batch_size=1`` /
            ``batch_size=1``. A last batch of one example is skipped instead.

    """
    forget_ds, retain_ds, k = prepare_inputs(model, config, ScrubConfig, forget_ds, retain_ds)
    teacher = freeze(clone_model(model))
    student = clone_model(model)
    stages = []
    if config.epochs > 0 and config.max_steps > 0:
        stages.append(
            TrainingData(
                "forget", sized_len(forget_ds), "forget_batch_size", config.forget_batch_size
            )
        )
    if config.epochs > 0:
        stages.append(TrainingData("retain", sized_len(retain_ds), "batch_size", config.batch_size))
    check_single_batches(student, torch.as_tensor(forget_ds[0][0]).unsqueeze(0), stages)
    device = model_device(student)
    opt = torch.optim.SGD(
        student.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    forget_loader = SkipSingleBatches(
        make_loader(forget_ds, config.forget_batch_size, shuffle=True, seed=config.seed),
        student,
        "scrub:forget",
    )
    retain_loader = SkipSingleBatches(
        make_loader(retain_ds, config.batch_size, shuffle=True, seed=offset_seed(config.seed, 1)),
        student,
        "scrub:retain",
    )
    T = config.temperature
    # dropout draws from the global generator: seed it, leave the caller's RNG untouched
    with seeded_rng(config.seed, device):
        for epoch in iterate(range(1, config.epochs + 1), progress=config.progress, desc="scrub"):
            decays = sum(epoch > m for m in config.lr_decay_epochs)
            for group in opt.param_groups:
                group["lr"] = config.lr * config.lr_decay_rate**decays
            student.train()
            if epoch <= config.max_steps:
                for x, y in forget_loader:
                    check_batch_labels(torch.as_tensor(y), k, "forget")
                    x = x.to(device)
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = -tempered_kl(student(x), t_out, T)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            for x, y in retain_loader:
                check_batch_labels(torch.as_tensor(y), k, "retain")
                x, y = x.to(device), y.to(device)
                with torch.no_grad():
                    t_out = teacher(x)
                s_out = student(x)
                ce = F.cross_entropy(s_out, y.long())  # int32 / int16 labels
                loss = config.gamma * ce + config.alpha * tempered_kl(s_out, t_out, T)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return student.eval()
