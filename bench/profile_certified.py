"""Where the time of one certified removal goes: a torch.profiler table of the removal loop.

The GPU target of certified removal (>= 1000 removals/s at MNIST scale) is limited by host
work, not arithmetic: two passes over a 376 MB float64 X take ~0.2 ms on an H200, a removal
took 7.6 ms there. This script fits ``CertifiedLogisticRegression`` on the benchmark's
synthetic MNIST-shaped data, makes a few untimed removals, then:

* times ``REMOVALS`` single-row removals, one call each (median ms per removal), then one
  call removing ``REMOVALS`` rows (ms per removal), without the profiler;
* profiles one more call of ``REMOVALS`` rows (as the benchmark removes them) and prints the
  operators by self host time and by device time, and per removal: operator calls,
  host-device synchronisations and copies.

Usage: ``python -m bench.profile_certified --device cuda [--n 60000] [--solver auto]
[--fixed-step graph,graph-rowwise,off,graph-fused,graph-fused-onepass]``: one profile per
mode (``off``: the general step; ``graph``: the single-row CG step replayed as CUDA graphs,
runs of rows pipelined; ``graph-fused``: with the fused ops; ``graph-fused-onepass``: the
same with glm_hvp's one-pass kernel (``FASTUNLEARN_GLM_HVP=onepass``); ``graph-rowwise``: row by
row; ``cpu``: the compiled CPU step), each on its own copy of the fitted model. The tables
go to stdout and, with ``--out DIR``, to ``DIR/profile-certified.txt``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.bench_certified import (
    LAM,
    configure,
    hvp_kernel_for,
    removal_order,
    synthetic_data,
)
from bench.common import synchronize

REMOVALS = 20
WARMUP = 5
#: Profiler event names that wait for the device or copy between host and device.
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
COPY_EVENTS = ("cudaMemcpyAsync", "cudaMemcpy", "aten::_local_scalar_dense")


def default_modes() -> str:
    """The modes profiled by default: the fused ops last, and not at all where
    ``FASTUNLEARN_BENCH_NO_FUSED=1`` (``bench/device_run.sh`` sets it when their CUDA tests
    fail)."""
    modes = ["graph", "graph-rowwise", "off"]
    if os.environ.get("FASTUNLEARN_BENCH_NO_FUSED") != "1":
        modes.append("graph-fused")
        if os.environ.get("FASTUNLEARN_BENCH_NO_ONEPASS") != "1":
            modes.append("graph-fused-onepass")  # with glm_hvp's one-pass kernel
    return ",".join(modes)


def main(argv: list[str] | None = None) -> str:
    """Run the profile and return the report text."""
    from fastunlearn.certified import CertifiedLogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--solver", default="auto")
    parser.add_argument("--fixed-step", default=default_modes(),
                        help="comma-separated fixed-step modes to profile (off: general step; "
                             "cpu: compiled CPU step; graph / eager: fixed_step, "
                             "graph-rowwise: without pipelined runs)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)

    X, labels = synthetic_data(args.n, args.d, args.classes)
    model = CertifiedLogisticRegression(
        lam=LAM,
        sigma=1.0,
        epsilon=1e12,
        delta=1e-4,
        train_mode="ovr",
        retrain=False,
        solver=args.solver,
        device=str(dev),
    )
    t0 = time.perf_counter()
    model.fit(X, labels)
    fit_s = time.perf_counter() - t0
    tensors, meta = model.get_state()
    sections = []
    for mode in args.fixed_step.split(","):
        copy = type(model).from_state({k: v.clone() for k, v in tensors.items()}, dict(meta))
        configure(copy, mode)
        with hvp_kernel_for(mode.replace("-", "_")):  # "-onepass": FASTUNLEARN_GLM_HVP=onepass
            sections.append(_profile(copy, X.shape[0], dev, args, fit_s, mode))
    text = "\n\n".join(sections)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile-certified.txt").write_text(text)
    return text


def _profile(model: Any, n: int, dev: torch.device, args: argparse.Namespace, fit_s: float,
             mode: str) -> str:
    """Time and profile removals on ``model``; return the report section."""
    order = [int(i) for i in removal_order(n, WARMUP + 3 * REMOVALS)]
    for i in order[:WARMUP]:
        model.remove(i)
    times = []
    for i in order[WARMUP : WARMUP + REMOVALS]:
        synchronize(dev)
        t0 = time.perf_counter()
        model.remove(i)
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    # one call removing a block of rows: the removal loop without the per-call work
    block = order[WARMUP + REMOVALS : WARMUP + 2 * REMOVALS]
    synchronize(dev)
    t0 = time.perf_counter()
    model.remove(block)
    synchronize(dev)
    block_ms = 1e3 * (time.perf_counter() - t0) / len(block)

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        model.remove(order[WARMUP + 2 * REMOVALS :])  # one call, as the benchmark removes
        synchronize(dev)
        profiled_ms = 1e3 * (time.perf_counter() - t0) / REMOVALS
    events = prof.key_averages()
    calls = {e.key: e.count for e in events}
    per = 1.0 / REMOVALS
    syncs = sum(calls.get(k, 0) for k in SYNC_EVENTS) * per
    copies = sum(calls.get(k, 0) for k in COPY_EVENTS) * per
    aten = sum(e.count for e in events if e.key.startswith(("aten::", "fastunlearn::"))) * per
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    lines = [
        f"certified removal profile: n={args.n} d={args.d} K={args.classes} "
        f"solver={args.solver} fixed step={mode} device={dev} ({card})",
        f"fit {fit_s:.2f} s; median {1e3 * statistics.median(times):.3f} ms per removal "
        f"({1.0 / statistics.median(times):.0f} removals/s) over {REMOVALS} calls of one row, "
        f"{block_ms:.3f} ms per removal ({1e3 / block_ms:.0f}/s) in one call of {REMOVALS} "
        "rows; no profiler",
        f"per removal: {aten:.0f} operator calls, {syncs:.1f} synchronisations, "
        f"{copies:.1f} host-device copies / scalar reads; last CG iterations {model._cg_last}",
        _device_share(events, profiled_ms) if dev.type == "cuda" else "",
        "",
        "by self host time:",
        events.table(sort_by="self_cpu_time_total", row_limit=30),
    ]
    if dev.type == "cuda":
        lines += ["by device time:", events.table(sort_by="self_cuda_time_total", row_limit=20)]
    return "\n".join(lines)


def _device_share(events: Any, profiled_ms: float) -> str:
    """Device time per removal (the kernels' and copies' own time) against the wall time.

    Near 100 %: the device sets the pace (fewer or fused kernels help); well below: the host
    does (launches, reads, bookkeeping).
    """
    from torch.autograd import DeviceType

    # the kernels' and copies' own events, as the profiler table's "Self CUDA time total"
    # (an operator's row repeats the time of the kernels it launched)
    device_us = 0.0
    for e in events:
        if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU:
            continue
        if hasattr(e, "self_device_time_total"):
            device_us += e.self_device_time_total
        else:  # older torch
            device_us += e.self_cuda_time_total
    device_ms = device_us * 1e-3 / REMOVALS
    return (
        f"profiled call: {profiled_ms:.3f} ms per removal (with the profiler), device busy "
        f"{device_ms:.3f} ms per removal ({100.0 * device_ms / profiled_ms:.0f} %)"
    )


if __name__ == "__main__":
    main()
