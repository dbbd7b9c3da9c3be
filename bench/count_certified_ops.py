"""Count the host's work per certified removal on the CUDA path, on any device.

On a GPU a certified removal at MNIST scale is bound by what the host issues between two
device reads: each operator call outside a graph is a launch, each graph replay costs host
time growing with its nodes, each device read waits for the queue to drain. These counts
need no GPU: the fixed-shape step (:mod:`fastunlearn.certified.fixed_step`) runs its
functions eagerly (mode ``"eager"``) and a dispatch mode counts the operator calls.

Printed: per removal of one ``remove(rows)`` call on digits (ten classes one-vs-rest), the
operator calls the host issues outside the step's functions (on CUDA: outside the graphs),
the runs of each function (on CUDA: graph replays) and the device reads; then the operator
calls inside each function (views, which launch nothing, counted apart).

By default the rows go in pipelined runs (:mod:`fastunlearn.certified.pipelined`, the CUDA
path's default); ``--rowwise`` counts the row-by-row loop instead.

``--fused`` counts the step with the row's quantities (``certified_start_``), its Woodbury
column (``certified_woodbury_row_``, with ``--explicit-inverse``), the end of each CG step
(``certified_cg_tail_``) and the pipelined step's guarded commit (``certified_commit_``) as
one op each.

Usage: ``python -m bench.count_certified_ops [--rows 60] [--explicit-inverse] [--rowwise]
[--fused]``.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Operators that make views: they launch no kernel.
VIEW_OPS = frozenset({
    "_reshape_alias", "alias", "as_strided", "detach", "expand", "lift_fresh", "permute",
    "select", "slice", "squeeze", "squeeze_", "t", "transpose", "unsqueeze", "unsqueeze_",
    "view",
})  # fmt: skip
#: The step's functions that are graphs on CUDA.
GRAPH_FUNCTIONS = ("_pipelined_step", "_start", "_start_and_iterate", "_iterate", "_commit")


class OperatorCounter(TorchDispatchMode):
    """Count ATen operator calls by name while active (and not paused)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()
        self.paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self.paused:
            self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def kernels(calls: collections.Counter[str]) -> int:
    """Return the calls that are not views."""
    return sum(count for name, count in calls.items() if name not in VIEW_OPS)


def count(
    rows: int = 60, explicit_inverse: bool = False, rowwise: bool = False, fused: bool = False
) -> dict[str, Any]:
    """Remove ``rows`` digits rows in one call and return the counts (see the module doc)."""
    from fastunlearn.certified import CertifiedLogisticRegression, fixed_step
    from fastunlearn.data import load_digits_dataset

    saved_devices = fixed_step.EXPLICIT_INVERSE_DEVICES
    if explicit_inverse:  # the GPU's preconditioner, on the CPU
        fixed_step.EXPLICIT_INVERSE_DEVICES = ("cpu",)
    step_cls = fixed_step.FixedShapeStep
    originals = {name: getattr(step_cls, name) for name in GRAPH_FUNCTIONS}
    runs: collections.Counter[str] = collections.Counter()
    counter = OperatorCounter()
    depth = [0]

    def counted(name: str, fn: Callable[..., None]) -> Callable[..., None]:
        def run(self: Any, *args: Any) -> None:
            if depth[0] == 0:
                runs[name] += 1
            depth[0] += 1
            counter.paused += 1
            try:
                fn(self, *args)
            finally:
                counter.paused -= 1
                depth[0] -= 1

        return run

    reads = [0]
    tolist = torch.Tensor.tolist

    def counted_tolist(self: torch.Tensor) -> Any:
        reads[0] += 1
        return tolist(self)

    data = load_digits_dataset()
    X, y = data.X_train.numpy(), data.y_train.numpy()
    model = CertifiedLogisticRegression(lam=1e-3, sigma=1.0, epsilon=1e12, solver="cg").fit(X, y)
    model._fixed_step_mode = "eager"
    model._pipeline_removals = not rowwise
    for switch in ("_fused_start", "_fused_woodbury", "_fused_cg_tail", "_fused_commit"):
        setattr(model, switch, fused)
    order = np.random.default_rng(0).permutation(X.shape[0])[: rows + 2].tolist()
    try:
        model.remove(order[:2])  # builds the step
        for name in GRAPH_FUNCTIONS:
            setattr(step_cls, name, counted(name, originals[name]))
        torch.Tensor.tolist = counted_tolist  # type: ignore[method-assign]
        with counter:
            model.remove(order[2:])
    finally:
        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
        for name, fn in originals.items():
            setattr(step_cls, name, fn)
        fixed_step.EXPLICIT_INVERSE_DEVICES = saved_devices
    step = model._fixed
    inside: dict[str, dict[str, int]] = {}
    for name in GRAPH_FUNCTIONS:
        saved = step._snapshot(step._state_buffers())
        with OperatorCounter() as one:
            getattr(step, name)()
        step._restore(step._state_buffers(), saved)
        inside[name] = {"calls": sum(one.calls.values()), "not_views": kernels(one.calls)}
    return {
        "rows": rows,
        "explicit_inverse": explicit_inverse,
        "pipelined": not rowwise,
        "fused_tail": fused,
        "fused_commit": fused,
        "fused_start": fused,
        "fused_woodbury": fused and explicit_inverse,
        "host_calls_per_removal": sum(counter.calls.values()) / rows,
        "host_kernels_per_removal": kernels(counter.calls) / rows,
        "runs_per_removal": {name: runs[name] / rows for name in GRAPH_FUNCTIONS},
        "device_reads_per_removal": reads[0] / rows,
        "inside": inside,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the counts and return them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--explicit-inverse", action="store_true",
                        help="the GPU's explicit M^-1 and C^-1 preconditioner")
    parser.add_argument("--rowwise", action="store_true",
                        help="the row-by-row loop instead of pipelined runs")
    parser.add_argument("--fused", action="store_true",
                        help="the fused certified ops (start, Woodbury column, CG tail, commit)")
    args = parser.parse_args(argv)
    result = count(args.rows, args.explicit_inverse, args.rowwise, args.fused)
    loop = "pipelined runs" if result["pipelined"] else "row by row"
    print(f"one remove() call of {result['rows']} digits rows ({loop}), per removal:")
    print(f"  host operator calls outside the step's functions: "
          f"{result['host_calls_per_removal']:.1f} ({result['host_kernels_per_removal']:.1f} "
          "not views)")
    runs = ", ".join(f"{k} {v:.2f}" for k, v in result["runs_per_removal"].items())
    print(f"  runs of the step's functions (graph replays on CUDA): {runs}")
    print(f"  device reads: {result['device_reads_per_removal']:.2f}")
    print("operator calls inside each function (not views):")
    for name, c in result["inside"].items():
        print(f"  {name}: {c['calls']} ({c['not_views']})")
    return result


if __name__ == "__main__":
    main()
