"""The compiled module uses the process's shared C++ runtime, not a private static copy.

A compiler that links ``libstdc++`` statically (the H200 image of 2026-11-30 builds with such
a ``CXX``) gives the module its own ``__cxa_throw``: an argument check's error thrown there and
caught by torch's shared runtime killed the process with SIGSEGV instead of raising.
"""

import shutil
import subprocess
import sys

import pytest

import fastunlearn._extension as extension

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("nm") is None
    or not extension.is_compiled(),
    reason="needs Linux, binutils' nm and the compiled module",
)


def _dynamic_symbols(defined: bool) -> set[str]:
    from fastunlearn import _C  # type: ignore[attr-defined]

    flag = "--defined-only" if defined else "--undefined-only"
    out = subprocess.run(["nm", "-D", flag, _C.__file__], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_the_cxx_exception_runtime_is_imported_not_defined_in_the_module():
    runtime = {"__cxa_throw", "__cxa_allocate_exception", "__gxx_personality_v0"}
    assert not runtime & _dynamic_symbols(defined=True)
    assert runtime <= _dynamic_symbols(defined=False)


def test_an_argument_check_in_the_compiled_code_raises_in_a_child_process():
    """In a child process, so that a crash fails this test instead of the test run."""
    code = (
        "import torch, fastunlearn.ops\n"
        "try:\n"
        "    one = torch.ones(3, 1)\n"
        "    torch.ops.fastunlearn.glm_hvp(torch.ones(3), one, one, 0.0)\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ValueError: glm_hvp: argument 'X' must be 2-D" in result.stdout
