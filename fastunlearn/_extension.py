"""Loads the compiled op library and reports what it contains."""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import torch

_BUILD_INFO = os.path.join(os.path.dirname(__file__), "_build_info.json")

try:
    # importing registers torch.ops.fastunlearn.*; the compiled module ships no stubs
    from . import _C  # type: ignore[attr-defined]  # noqa: F401

    _LOAD_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _LOAD_ERROR = str(exc)


def is_compiled() -> bool:
    """Whether the compiled op library was found and loaded."""
    return _LOAD_ERROR is None


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.fastunlearn.<op>`` has a kernel for ``device_type`` ('cpu'/'cuda')."""
    if not is_compiled():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastunlearn::{op}", key)


#: The environment variables that choose between kernels, and their defaults. The first two
#: are read when :mod:`fastunlearn.certified` is imported, ``FASTUNLEARN_GLM_HVP`` by the
#: CUDA ``glm_hvp`` / ``glm_hvp_margins`` kernels on every call.
KERNEL_SETTINGS: dict[str, str] = {
    "FASTUNLEARN_FIXED_STEP": "auto",
    "FASTUNLEARN_CERTIFIED_FUSED": "1",
    "FASTUNLEARN_GLM_HVP": "gemm",
}


#: The values each kernel-choosing variable takes; any other value raises where it is read
#: (``import fastunlearn.certified``, or a CUDA ``glm_hvp`` call: the CPU kernels ignore
#: ``FASTUNLEARN_GLM_HVP``, for which unset and empty mean ``gemm``).
KERNEL_SETTING_VALUES: dict[str, tuple[str, ...]] = {
    "FASTUNLEARN_FIXED_STEP": ("cpu", "auto", "graph", "eager", "off"),
    "FASTUNLEARN_CERTIFIED_FUSED": ("0", "1"),
    "FASTUNLEARN_GLM_HVP": ("gemm", "onepass", ""),
}


def kernel_settings() -> dict[str, str]:
    """Return each kernel-choosing variable's value in the environment now (else its default).

    A value the variable does not take is returned quoted with the reason (``"'bogus' (invalid:
    must be 'gemm' or 'onepass')"``), so that ``fastunlearn info`` does not show it as a
    setting in force (the run that reads it raises).
    """
    out = {}
    for name, default in KERNEL_SETTINGS.items():
        value = os.environ.get(name, default)
        allowed = [v for v in KERNEL_SETTING_VALUES[name] if v]
        if value not in KERNEL_SETTING_VALUES[name]:
            choices = ", ".join(repr(v) for v in allowed[:-1]) + f" or {allowed[-1]!r}"
            value = f"{value!r} (invalid: must be {choices})"
        out[name] = value
    return out


def backend() -> dict[str, Any]:
    """Describe the compiled backends, the versions and the devices this process sees.

    Returns:
        A dict with keys ``version``, ``compiled`` (bool), ``load_error``, ``cpu`` (bool),
        ``cuda`` (bool: CUDA kernels compiled in for every op but
        :data:`~fastunlearn.ops.CPU_ONLY_OPS`), ``cuda_arch_list``, ``torch``,
        ``torch_cuda``, ``python``, ``ops`` (op name -> list of device types with a
        kernel), ``devices`` (list of device descriptions) and ``settings`` (the
        kernel-choosing environment variables, :func:`kernel_settings`).

    """
    from . import __version__
    from .ops import CPU_ONLY_OPS, OP_NAMES

    info: dict[str, Any] = {}
    if os.path.exists(_BUILD_INFO):
        with open(_BUILD_INFO) as f:
            info = json.load(f)
    devices = [{"type": "cpu", "name": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"type": "cuda", "index": i, "name": props.name,
                            "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1)})
    ops = {name: [d for d in ("cpu", "cuda") if has_kernel(name, d)] for name in OP_NAMES}
    return {
        "version": __version__,
        "compiled": is_compiled(),
        "load_error": _LOAD_ERROR,
        "cpu": is_compiled() and all("cpu" in v for v in ops.values()),
        "cuda": is_compiled() and all("cuda" in v for name, v in ops.items()
                                      if name not in CPU_ONLY_OPS),
        "cuda_arch_list": info.get("cuda_arch_list", ""),
        "built_with_torch": info.get("built_with_torch"),
        "built_with_cuda": info.get("built_with_cuda"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "ops": ops,
        "devices": devices,
        "settings": kernel_settings(),
    }
