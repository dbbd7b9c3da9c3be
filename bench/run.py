"""Run the fastunlearn benchmarks: ``python -m bench.run [--device D] [--quick] [--only A,B]``.

Each benchmark checks our op against its peer before timing, prints a table and writes
``bench/results/<name>-<device>.json``. Exit status 1 if any correctness check failed;
a benchmark whose op is not compiled for the device is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from types import ModuleType

import torch

from bench import (
    bench_certified,
    bench_glm_cg,
    bench_glm_hvp,
    bench_influence,
    bench_influence_repair,
    bench_knn,
    bench_metrics,
    bench_per_sample,
)
from bench.common import (
    CorrectnessError,
    OpUnavailable,
    environment,
    resolve_device,
    write_results,
)

#: name -> module with ``run(device, quick, *, preset)`` and ``print_results(records)``
BENCHMARKS: dict[str, ModuleType] = {
    "glm_hvp": bench_glm_hvp,
    "glm_cg": bench_glm_cg,
    "per_sample": bench_per_sample,
    "knn": bench_knn,
    "certified": bench_certified,
    "influence": bench_influence,
    "influence_repair": bench_influence_repair,
    "metrics": bench_metrics,
}

#: Run only when named with ``--only``: parts of another benchmark that runs by default.
BY_NAME_ONLY = {"influence_repair"}

#: Benchmarks whose full size is too big for a CPU unless ``--full`` insists.
GPU_ONLY_FULL = {"knn", "glm_cg", "certified", "influence", "influence_repair", "metrics"}


def _preset(name: str, device: torch.device, args: argparse.Namespace) -> str:
    if args.preset:
        return args.preset
    if args.quick:
        return "quick"
    if device.type == "cpu" and name in GPU_ONLY_FULL and not args.full:
        return "quick"
    return "full"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected benchmarks and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", allow_abbrev=False,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda if available, else cpu")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small sizes (2-core CPU friendly)")
    sizes.add_argument("--full", action="store_true",
                       help="full sizes everywhere, including knn and glm_cg on the CPU")
    sizes.add_argument("--preset", choices=["tiny", "quick", "full"], default=None,
                       help="force one size preset for every benchmark")
    parser.add_argument("--only", default=None,
                        help="comma-separated subset of: " + ",".join(BENCHMARKS))
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--no-write", action="store_true", help="print tables only")
    args = parser.parse_args(argv)

    names = ([n for n in BENCHMARKS if n not in BY_NAME_ONLY] if args.only is None
             else list(dict.fromkeys(s.strip() for s in args.only.split(","))))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    device = resolve_device(args.device)
    env = environment(device)
    print(json.dumps({k: env[k] for k in ("device_name", "torch", "cuda", "git_revision",
                                          "torch_threads")}))
    failed = False
    for name in names:
        module = BENCHMARKS[name]
        preset = _preset(name, device, args)
        start = time.perf_counter()
        try:
            records = module.run(device, preset=preset)
        except OpUnavailable as exc:
            print(f"\n== {name}: skipped ({exc})")
            continue
        except CorrectnessError as exc:
            print(f"\n== {name}: CORRECTNESS CHECK FAILED\n{exc}")
            failed = True
            continue
        module.print_results(records)
        print(f"({name}: {preset} sizes, {time.perf_counter() - start:.1f} s)")
        if not args.no_write:
            path = write_results(name, records, device=device, preset=preset, out_dir=args.out)
            print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
