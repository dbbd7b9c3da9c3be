"""The ``fastunlearn info`` command: versions, compiled backends and the devices seen."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` command to the ``fastunlearn`` parser."""
    p = subparsers.add_parser("info", help="versions, compiled backends and devices")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)


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
    lines.append("  kernel settings (environment):")
    for name, value in info["settings"].items():
        lines.append(f"    {name:<28} {value}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from ._extension import backend

    info = backend()
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0 if info["compiled"] else 1
