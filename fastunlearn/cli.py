"""The ``fastunlearn`` command line.

Commands:
    info    versions, compiled backends (CPU, CUDA and arch list) and the devices seen.
    demo    the digits walk-through (same as ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _format_info(info: dict) -> str:
    lines = [
        f"fastunlearn {info['version']}",
        f"  torch        {info['torch']} (CUDA {info['torch_cuda'] or 'none'})",
        f"  python       {info['python']}",
        f"  compiled     {'yes' if info['compiled'] else 'NO: ' + str(info['load_error'])}",
        f"  CPU kernels  {'yes' if info['cpu'] else 'no'}",
        "  CUDA kernels "
        + (f"yes (arch {info['cuda_arch_list']})" if info["cuda"] else "no (not compiled in)"),
        "  ops:",
    ]
    for name, backends in info["ops"].items():
        lines.append(f"    {name:<26} {', '.join(backends) or 'missing'}")
    lines.append("  devices:")
    for dev in info["devices"]:
        if dev["type"] == "cpu":
            lines.append(f"    cpu: {dev['name']} ({dev['threads']} threads)")
        else:
            lines.append(
                f"    cuda:{dev['index']}: {dev['name']} (sm {dev['capability']}, "
                f"{dev['memory_gib']} GiB)"
            )
    if not any(dev["type"] == "cuda" for dev in info["devices"]):
        lines.append("    (no CUDA device visible)")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from . import backend

    info = backend()
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0 if info["compiled"] else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main([])


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``fastunlearn`` command."""
    parser = argparse.ArgumentParser(
        prog="fastunlearn", description="Machine unlearning on fused C++/CUDA kernels."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, compiled backends and devices")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)
    demo = sub.add_parser("demo", help="run the digits demo")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastunlearn`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
