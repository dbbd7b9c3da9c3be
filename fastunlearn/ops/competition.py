"""The per-example epsilon of the NeurIPS 2023 unlearning competition as one fused op.

:func:`competition_epsilons` evaluates, for every example, the official attack's two
threshold families over the statistics of ``N`` retrained and ``M`` unlearned models and
returns the example's epsilon (the algorithm is described in
:mod:`fastunlearn.metrics.competition` and ``csrc/competition_common.h``). Per example the
kernel sorts the ``N + M`` statistics once and reduces every row of thresholds to the gaps
between consecutive sorted values that it hits, so no threshold grid is materialised
except the single-threshold one, which the caller passes in.

The caller provides the parts that must match the official code bit for bit:

* ``grid``: each example's single-threshold grid, ``torch.linspace(lo, hi, ceil(100 (hi -
  lo)))`` of the pooled values on the CPU in float64 (torch's vectorised linspace rounds in
  a way only torch itself reproduces), concatenated, with ``grid_offsets``;
* ``table_r`` / ``table_u``: the float32 epsilon of every ``(FP, FN)`` count pair when the
  retrained or the unlearned group is the positive one (``inf`` for FP = FN = 0, ``-inf``
  for discarded pairs), as :func:`fastunlearn.metrics.competition.epsilon_table` builds.

The interval family's thresholds are computed inside the kernel exactly as numpy's
``linspace`` does (``i * step + start``, no fused multiply-add). The output is not
differentiable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices

__all__ = ["competition_epsilons"]

_OP = "competition_epsilons"


def competition_epsilons(
    retrained: Tensor,
    unlearned: Tensor,
    grid: Tensor,
    grid_offsets: Tensor,
    table_r: Tensor,
    table_u: Tensor,
) -> Tensor:
    """Per-example competition epsilons (clipped to [0, 50], nan if nothing usable).

    Args:
        retrained: ``[S, N]`` statistics of N retrained models, float32 or float64, finite.
        unlearned: ``[S, M]`` statistics of M unlearned models, same dtype and device.
        grid: float64 ``[T]``: example ``s``'s single-threshold grid, ascending, is
            ``grid[grid_offsets[s]:grid_offsets[s + 1]]`` (may be empty).
        grid_offsets: int64 ``[S + 1]`` rising from 0 to ``T``.
        table_r: float32 ``[M + 1, N + 1]``: epsilon of ``(FP, FN)`` with the retrained
            group positive.
        table_u: float32 ``[N + 1, M + 1]``: the same with the unlearned group positive.

    Returns:
        float64 ``[S]`` on the inputs' device.

    Raises:
        TypeError: An argument is not a Tensor, or has the wrong dtype.
        ValueError: Wrong shapes or devices, non-finite statistics, offsets
            that do not rise from 0 to ``T``, or statistics so large that rounding makes
            the interval family's right-edge count explode (more than 100000 instead of
            about 400; the message names the argument and the example).

    """
    for name, t in (("retrained", retrained), ("unlearned", unlearned), ("grid", grid),
                    ("grid_offsets", grid_offsets), ("table_r", table_r),
                    ("table_u", table_u)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{_OP}: argument '{name}' must be a Tensor, got {type(t).__name__}")
    return torch.ops.fastunlearn.competition_epsilons.default(
        retrained, unlearned, grid, grid_offsets, table_r, table_u)


@torch.library.register_fake("fastunlearn::competition_epsilons")
def _competition_epsilons_fake(retrained: Tensor, unlearned: Tensor, grid: Tensor,
                               grid_offsets: Tensor, table_r: Tensor,
                               table_u: Tensor) -> Tensor:
    check_fake_devices(_OP, (("retrained", retrained), ("unlearned", unlearned), ("grid", grid),
                             ("grid_offsets", grid_offsets), ("table_r", table_r),
                             ("table_u", table_u)))
    torch._check_value(retrained.dim() == 2,
                       lambda: f"{_OP}: argument 'retrained' must be 2-D, got {retrained.dim()}-D")
    torch._check_value(unlearned.dim() == 2,
                       lambda: f"{_OP}: argument 'unlearned' must be 2-D, got {unlearned.dim()}-D")
    torch._check_type(retrained.dtype in (torch.float32, torch.float64),
                      lambda: f"{_OP}: argument 'retrained' must be float32 or float64")
    torch._check_type(unlearned.dtype == retrained.dtype,
                      lambda: f"{_OP}: arguments 'retrained' and 'unlearned' must have the same "
                              "dtype")
    torch._check_value(unlearned.shape[0] == retrained.shape[0],
                       lambda: f"{_OP}: argument 'unlearned' has {unlearned.shape[0]} examples "
                               f"but {retrained.shape[0]} were expected")
    torch._check_value(grid.dim() == 1, lambda: f"{_OP}: argument 'grid' must be 1-D")
    torch._check_type(grid.dtype == torch.float64,
                      lambda: f"{_OP}: argument 'grid' must be float64, got {grid.dtype}")
    torch._check_value(grid_offsets.dim() == 1,
                       lambda: f"{_OP}: argument 'grid_offsets' must be 1-D")
    torch._check_type(grid_offsets.dtype == torch.int64,
                      lambda: f"{_OP}: argument 'grid_offsets' must be int64")
    torch._check_value(grid_offsets.shape[0] == retrained.shape[0] + 1,
                       lambda: f"{_OP}: argument 'grid_offsets' must have S + 1 entries")
    N, M = retrained.shape[1], unlearned.shape[1]
    for name, table, shape in (("table_r", table_r, (M + 1, N + 1)),
                               ("table_u", table_u, (N + 1, M + 1))):
        def dtype_message(n: str = name) -> str:
            return f"{_OP}: argument '{n}' must be float32"

        def shape_message(n: str = name, s: tuple[int, int] = shape) -> str:
            return f"{_OP}: argument '{n}' must have shape {s}"

        torch._check_type(table.dtype == torch.float32, dtype_message)
        torch._check_value(table.shape == shape, shape_message)
    return retrained.new_empty((retrained.shape[0],), dtype=torch.float64)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    ctx.mark_non_differentiable(output)


def _backward(ctx: Any, grad: Tensor) -> tuple:
    raise RuntimeError(f"{_OP}: the output is not differentiable")


torch.library.register_autograd("fastunlearn::competition_epsilons", _backward,
                                setup_context=_setup_context)
