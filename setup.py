"""Build fastunlearn's compiled op library (CPU always, CUDA when possible).

Environment switches, read once and printed:

* ``FORCE_CUDA=1``      fail the build unless the CUDA kernels are built (they are built
                        whenever nvcc and a CUDA torch are present, GPU visible or not;
                        this turns a silent CPU-only build into an error).
* ``FORCE_ONLY_CPU=1``  skip the CUDA kernels even where they could be built.
* ``DEBUG=1``           ``-O0 -g`` instead of ``-O3``.
* ``NVCC_FLAGS``        extra flags appended to nvcc's command line.
* ``TORCH_CUDA_ARCH_LIST`` defaults to ``8.0;9.0+PTX`` (Ampere + Hopper, PTX for newer).
* ``MAX_JOBS``          ninja parallelism; defaults to what cores and free memory allow.

Install with ``pip install --no-build-isolation -e .`` so the build uses the torch
already installed in the environment.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import sysconfig

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


FORCE_CUDA = _flag("FORCE_CUDA")
FORCE_ONLY_CPU = _flag("FORCE_ONLY_CPU")
DEBUG = _flag("DEBUG")
NVCC_EXTRA = os.environ.get("NVCC_FLAGS", "").split()


def _nvidia_pip_include_dirs() -> list[str]:
    """Header folders of the NVIDIA pip packages installed with torch (cuBLAS, cuSPARSE...).

    A system nvcc may lack the math-library headers that ATen's CUDA headers include;
    the pip wheels that come with a CUDA-enabled torch ship them.
    """
    site = sysconfig.get_paths()["purelib"]
    found = glob.glob(os.path.join(site, "nvidia", "*", "include"))
    return sorted(d for d in found if os.path.isdir(d))


def _decide_cuda() -> tuple[bool, str]:
    build, why = _cuda_possible()
    if FORCE_CUDA and not build:
        raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")
    return build, why


def _cuda_possible() -> tuple[bool, str]:
    if FORCE_ONLY_CPU and FORCE_CUDA:
        return False, "FORCE_ONLY_CPU=1 contradicts it"
    if FORCE_ONLY_CPU:
        return False, "FORCE_ONLY_CPU=1"
    if torch.version.cuda is None:
        return False, "torch was built without CUDA"
    if cpp_extension.CUDA_HOME is None or shutil.which(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    ) is None:
        return False, "no nvcc found (set CUDA_HOME)"
    return True, f"nvcc at {cpp_extension.CUDA_HOME} and torch CUDA {torch.version.cuda}"


def _cudart_link_dir() -> list[str]:
    """A folder with ``libcudart.so`` when CUDA_HOME only ships ``libcudart.so.<major>``.

    The pip ``nvidia-cuda-runtime`` wheel has only the versioned name, but the linker
    needs the plain one for ``-lcudart``; a symlink under ``build/`` fills the gap.
    """
    lib = os.path.join(cpp_extension.CUDA_HOME or "", "lib")
    if os.path.exists(os.path.join(lib, "libcudart.so")) or os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME or "", "lib64", "libcudart.so")
    ):
        return []
    versioned = sorted(glob.glob(os.path.join(lib, "libcudart.so.*")))
    if not versioned:
        return []
    shim = os.path.join(ROOT, "build", "cudart_shim")
    os.makedirs(shim, exist_ok=True)
    link = os.path.join(shim, "libcudart.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(versioned[0], link)
    return [shim]


def _default_max_jobs() -> int:
    cores = os.cpu_count() or 1
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        by_memory = max(1, int(pages / (3 * 1024**3)))  # ~3 GB per nvcc job
    except (ValueError, OSError):
        by_memory = cores
    return max(1, min(cores, by_memory))


def _cxx_runtime_link_args() -> list[str]:
    """Link the C++ runtime torch runs with (the shared ``libstdc++`` this process loaded).

    The H200 image of 2026-11-30 builds with ``CXX=/opt/gcc/bin/g++``, which links
    ``libstdc++`` statically: the module then throws its argument-check errors with a private
    copy of the C++ runtime (``-Bsymbolic-functions`` binds it there) that torch's shared one
    catches, and the process died with SIGSEGV instead of raising ``ValueError``. The shared
    library named first resolves those symbols, so no static copy is pulled in.
    """
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                if len(parts) >= 6 and os.path.basename(parts[5]).startswith("libstdc++.so"):
                    return [parts[5]]
    except OSError:
        pass
    return ["-lstdc++"]


def _write_build_info(build_cuda: bool) -> None:
    """Record what was compiled so ``fastunlearn.backend()`` can report it."""
    info = {
        "cpu": True,
        "cuda": build_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", "") if build_cuda else "",
        "built_with_torch": torch.__version__,
        "built_with_cuda": torch.version.cuda if build_cuda else None,
        "nvcc": os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if build_cuda else None,
    }
    with open(os.path.join(ROOT, "fastunlearn", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=2)


def make_extension():
    build_cuda, why = _decide_cuda()
    # setuptools wants source paths relative to the project root (egg_info rejects absolute
    # ones), and pip runs setup.py from there
    os.chdir(ROOT)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx += ["-fopenmp"]
    extra = {"cxx": cxx}
    include_dirs = [CSRC]
    define_macros = []
    library_dirs: list[str] = []
    ext_cls = cpp_extension.CppExtension
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = ["-O0", "-g", "-G"] if DEBUG else ["-O3"]
        nvcc += ["--expt-relaxed-constexpr", "-lineinfo"] + NVCC_EXTRA
        extra["nvcc"] = nvcc
        include_dirs += _nvidia_pip_include_dirs()
        define_macros.append(("FASTUNLEARN_WITH_CUDA", None))
        library_dirs += _cudart_link_dir()
        ext_cls = cpp_extension.CUDAExtension
    os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))
    _write_build_info(build_cuda)
    print("=" * 72)
    print("fastunlearn build configuration")
    print(f"  torch {torch.__version__} (CUDA {torch.version.cuda})")
    print("  CPU kernels : yes")
    print(f"  CUDA kernels: {'yes' if build_cuda else 'no'} ({why})")
    if build_cuda:
        print(f"  CUDA_HOME   : {cpp_extension.CUDA_HOME}")
        print(f"  arch list   : {os.environ['TORCH_CUDA_ARCH_LIST']}")
    print(f"  MAX_JOBS    : {os.environ['MAX_JOBS']}   DEBUG: {DEBUG}")
    print(f"  sources     : {len(sources)} files")
    print("=" * 72)
    sys.stdout.flush()
    return ext_cls(
        "fastunlearn._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        library_dirs=library_dirs,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] + _cxx_runtime_link_args(),
        py_limited_api=True,
    )


setup(
    packages=find_packages(include=["fastunlearn", "fastunlearn.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},  # torch builds Py_LIMITED_API 3.10
)
