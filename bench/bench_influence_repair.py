"""The influence benchmark's repair part alone: % restored of our CG and LiSSA on digits.

Part 2 of :mod:`bench.bench_influence` (the embedded digits, ``small_cnn``, 20 % of the labels
flipped, one-shot repair of the known flipped rows, three training seeds and their median)
without part 1's timing on the 1.8M-parameter CNN, so that its full size (100 training epochs
per seed, a few minutes) runs on a CPU: ``python -m bench.run --only influence_repair --full``.
Records and columns are the influence benchmark's.
"""

from __future__ import annotations

from typing import Any

import torch

from bench import bench_influence

NAME = "influence_repair"
SIZES = bench_influence.SIZES


def run(device: str | torch.device, quick: bool = False, *,
        preset: str | None = None) -> list[dict[str, Any]]:
    """Run the repair part of :func:`bench.bench_influence.run` and return its records."""
    return bench_influence.run(device, quick, preset=preset, parts=("repair",))


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the records as the influence benchmark does."""
    bench_influence.print_results(records)
