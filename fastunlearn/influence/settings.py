"""Settings and results of the influence updates: solvers, LiSSA's parameters, outcomes.

:class:`LissaSettings` (the reference's LiSSA parameters and the system they target),
:class:`UpdateOptions` (what :func:`~fastunlearn.influence.check_update_options` validated)
and :class:`UpdateResult` (what :func:`~fastunlearn.influence.influence_update` did).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._equality import dataclass_eq
from .._numbers import check_int, check_real, check_seed
from .._numbers import plain_fields as _plain_fields
from .._repr import fields_repr
from .gradients import LossFn, default_loss

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CURVATURES",
    "LISSA_HESSIANS",
    "MAX_DIRECT_PARAMS",
    "SOLVERS",
    "LissaSettings",
    "UpdateOptions",
    "UpdateResult",
]

#: Second-order solvers.
SOLVERS = ("cg", "lissa", "direct")
#: Default cap on the parameters the dense ``"direct"`` solver accepts (a P x P Hessian).
MAX_DIRECT_PARAMS = 5000
#: Curvature matrices: the Hessian, or the (positive semidefinite) generalised Gauss-Newton.
CURVATURES = ("hessian", "ggn")


#: How a LiSSA step's batch Hessian is scaled (see :class:`LissaSettings`).
LISSA_HESSIANS = ("batch", "full")


@dataclass(frozen=True)
class LissaSettings:
    """LiSSA parameters, named as in the reference (``get_inv_hvp_lissa``), plus ``hessian``.

    The recursion ``u <- G + (1 - damping) u - H_j u / scale`` (estimate ``u / scale``) runs
    over mini-batches ``B_j`` of ``batch_size`` rows: a fresh random permutation of the N
    training rows per pass, so a pass has ``k = ceil(N / batch_size)`` batches. It estimates
    ``(E[H_j] + damping * scale * I)^{-1} G``, where ``H_j`` depends on ``hessian``:

    - ``"batch"`` (default, the reference): the Hessian of the loss summed over ``B_j``.
      Then ``E[H_j] = H / k`` (H: the summed full-data Hessian), and the estimate is
      ``(H / k + d s I)^{-1} G = k (H + k d s I)^{-1} G``. Relative to H the damping is
      ``k d s`` (:meth:`full_data_damping`) and the step is ``k`` (:meth:`step_scale`)
      times that damped Newton step. Reference CIFAR settings: N = 50,000, B = 1024,
      k = 49, d = 1e-4, s = 2e5, d s = 20, so the damping relative to H is 980 and the
      step is ``49 (H + 980 I)^{-1} G``.
    - ``"full"``: that batch product times ``N / |B_j|``, an unbiased estimate of H. The
      estimate is ``(H + d s I)^{-1} G``.

    With ``N <= batch_size``, k = 1 and the two modes are the same. The recursion converges
    only if every eigenvalue of ``H_j`` lies in ``(-damping * scale, (2 - damping) * scale)``.
    With ``"batch"``, ``scale`` must bound the eigenvalues of a batch Hessian. With
    ``"full"`` it must bound those of the full-data H, which are about k times larger.

    Attributes:
        batch_size: Rows per stochastic Hessian (reference CIFAR: 1024).
        damping: ``d`` (reference CIFAR: 1e-4).
        scale: ``s`` (reference CIFAR: 2e5).
        depth: Recursion steps per repetition. The reference runs up to
            ``100 * ceil(N / B)`` steps with a patience rule that stopped it after 81-153
            steps on CIFAR; the default 100 is that effective length.
        repetitions: Independent runs averaged (reference: 1).
        seed: Seed of the batch permutations.
        check_every: Steps between divergence checks.
        hessian: ``"batch"`` (summed batch Hessian, the reference) or ``"full"`` (batch
            Hessian scaled to estimate the full-data H).

    """

    batch_size: int = 1024
    damping: float = 1e-4
    scale: float = 2e5
    depth: int = 100
    repetitions: int = 1
    seed: int = 0
    check_every: int = 10
    hessian: str = "batch"

    def __post_init__(self) -> None:
        # NumPy numbers (np.int64 from np.arange, np.float32) are stored as the Python
        # values, so equal settings compare and serialise alike (checked where used)
        _plain_fields(self)

    @property
    def effective_damping(self) -> float:
        """``damping * scale``: the damping of the system LiSSA targets, ``E[H_j] + d s I``.

        It is the damping relative to the full-data Hessian only for ``hessian="full"``
        or a single batch; in general see :meth:`full_data_damping`.
        """
        return self.damping * self.scale

    def step_scale(self, n_rows: int | np.integer) -> int:
        """Return the factor k of the estimate ``k (H + k d s I)^{-1} G`` on ``n_rows`` rows.

        For ``hessian="batch"`` this is ``k = ceil(n_rows / batch_size)``, which is 1 when
        ``n_rows <= batch_size``. For ``hessian="full"`` it is 1.

        Raises:
            TypeError / ValueError: ``n_rows`` not an int >= 0, ``batch_size`` not an int
                >= 1, or an unknown ``hessian``.

        """
        n_rows = check_int("n_rows", n_rows, 0)
        check_int("lissa.batch_size", self.batch_size, 1)
        _check_hessian_mode(self.hessian)
        if self.hessian == "full" or n_rows <= self.batch_size:
            return 1
        return -(-n_rows // self.batch_size)

    def full_data_damping(self, n_rows: int | np.integer) -> float:
        """Return the damping relative to the full-data Hessian, ``step_scale(n_rows) * d * s``."""
        return self.step_scale(n_rows) * self.effective_damping


def _check_hessian_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode not in LISSA_HESSIANS:
        raise ValueError(f"'lissa.hessian' must be one of {LISSA_HESSIANS}, got {mode!r}")
    return mode


@dataclass(repr=False)
class UpdateResult:
    """What :func:`influence_update` did.

    Attributes:
        order: 1 or 2.
        solver: ``"cg"``, ``"lissa"``, ``"direct"`` (second order) or None (first order).
        step: Tensor[P], the vector subtracted from the selected parameters
            (``tau G`` or ``(H + lambda I)^{-1} G``), in ``param_names`` order.
        param_names: The selected parameters.
        num_params: P.
        num_affected: Number of affected points ``|Z|``.
        tau: The first-order step size used (None for second order).
        damping: Tikhonov damping lambda, relative to the full-data H, of the system the
            solver targets: the second-order step is ``step_scale * (H + lambda I)^{-1} G``.
            For CG and direct it is ``damping``. For LiSSA it is ``d s`` with
            ``hessian="full"`` and ``k d s`` with ``"batch"`` (k = ceil(N / B)). Reference
            CIFAR example: N = 50,000, B = 1024, k = 49, d s = 20, so lambda = 980.
        step_scale: The factor of that step: k for LiSSA with ``hessian="batch"`` (49 in
            the example: the step is 49 times ``(H + 980 I)^{-1} G``), otherwise 1.
        gradient_norm: ``||G||``.
        step_norm: ``||step||``.
        residual: Relative true residual of the targeted system,
            ``||(H + lambda I) (step / step_scale) - G|| / ||G||`` (None for first order or
            when not computed).
        solver_iterations: CG iterations (all restarts), LiSSA steps, or 0.
        converged: Whether the solver met its tolerance (None if it has none).
        num_gradients: Per-sample loss gradients evaluated (2 per affected point).
        num_hvps: Per-sample Hessian-vector products evaluated (a full-data product counts
            the number of training rows; a dense Hessian counts ``P`` per row).
        num_loss_evals: Per-sample loss evaluations (divergence check, line search).
        loss_before: Corrected training loss at the old parameters (None if not computed).
        loss_after: Corrected training loss at the new parameters (None if not computed).
        diverged: Whether divergence was detected (the model was then left unchanged).
        applied: Whether the model was updated (never for a zero step).
        reason: Why the update was not applied, or a solver remark; None otherwise.
        timings: Seconds spent per phase (``gradient``, ``solve``, ``line_search``,
            ``check``, ``total``).

    """

    order: int
    solver: str | None
    step: Tensor
    param_names: list[str]
    num_params: int
    num_affected: int
    tau: float | None = None
    damping: float = 0.0
    step_scale: float = 1.0
    gradient_norm: float = 0.0
    step_norm: float = 0.0
    residual: float | None = None
    solver_iterations: int = 0
    converged: bool | None = None
    num_gradients: int = 0
    num_hvps: int = 0
    num_loss_evals: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    diverged: bool = False
    applied: bool = False
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    __eq__ = dataclass_eq  # tensors compared by value (the generated one raises)
    __repr__ = fields_repr  # bounded: long tensors and lists are summarised

    def to_dict(self) -> dict[str, Any]:
        """Every field except ``step``, JSON-ready."""
        out = asdict(self)
        out.pop("step")
        return out


def _check_lissa(settings: object) -> LissaSettings:
    if settings is None:
        return LissaSettings()
    if not isinstance(settings, LissaSettings):
        raise TypeError(f"'lissa' must be a LissaSettings, got {type(settings).__name__}")
    check_int("lissa.batch_size", settings.batch_size, 1)
    check_real("lissa.damping", settings.damping)
    check_real("lissa.scale", settings.scale, positive=True)
    check_int("lissa.depth", settings.depth, 1)
    check_int("lissa.repetitions", settings.repetitions, 1)
    check_int("lissa.check_every", settings.check_every, 1)
    check_seed("lissa.seed", settings.seed)
    _check_hessian_mode(settings.hessian)
    return settings


@dataclass(frozen=True)
class UpdateOptions:
    """The validated options of :func:`influence_update` (see :func:`check_update_options`).

    Attributes:
        names: Selected parameter names (``named_parameters()`` order).
        num_params: P, their total size.
        dtype: Their dtype.
        device: Their device.
        loss_fn: The loss (the default cross-entropy when None was given).
        order: 1 or 2.
        solver: The second-order solver.
        tau: First-order step size (None for ``"auto"``).
        auto_tau: Whether ``tau="auto"``.
        lissa: The LiSSA settings (None unless ``order=2, solver="lissa"``).

    """

    names: list[str]
    num_params: int
    dtype: torch.dtype
    device: torch.device
    loss_fn: LossFn
    order: int
    solver: str
    tau: float | None
    auto_tau: bool
    lissa: LissaSettings | None

    @property
    def class_labels(self) -> bool:
        """Whether the loss is the default cross-entropy (targets must be integer labels)."""
        return self.loss_fn is default_loss
