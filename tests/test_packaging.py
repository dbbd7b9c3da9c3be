"""A wheel carries every file the package reads besides its modules and the compiled library.

Built wheels lacked ``_build_info.json`` (``fastunlearn.backend()`` then reported no arch
list and no build torch) because setuptools packs only modules unless told otherwise.
The sdist lacked every C++/CUDA header (a wheel built from it failed at the first
``#include``) because setuptools packs only the sources setup.py lists; MANIFEST.in adds them.
"""

import fnmatch
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

# tomllib is Python >= 3.11; pytest brings tomli (the same parser) to 3.10
tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastunlearn"


def _pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_every_data_file_of_the_package_is_listed_as_package_data():
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["fastunlearn"]
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
            and p.suffix not in (".py", ".pyc", ".so", ".pyd")]
    assert "py.typed" in data
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, f"files a wheel would leave out: {missing}"
    # the build writes the record read by backend(); it must be among them
    assert any(fnmatch.fnmatch("_build_info.json", g) for g in globs)


def test_license_file_is_shipped():
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def _sdist_names(tmp_path):
    """The member names (below the top folder) of an sdist built from a copy of the sources.

    Built in a copy: setup.py writes ``fastunlearn/_build_info.json`` and ``*.egg-info`` into
    the folder it builds. ``FORCE_ONLY_CPU=1``: the sdist must carry the CUDA sources even
    where the builder has no nvcc (setup.py then lists no .cu file).
    """
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE",
                 "CHANGELOG.md", "CMakeLists.txt"):
        shutil.copy2(ROOT / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "*.pyc", "_build_info.json",
                                  "*.egg-info")
    for name in ("csrc", "fastunlearn", "tests"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    # an old build's leftovers must not ship
    (src / "fastunlearn" / "_C.abi3.so").write_bytes(b"")
    (src / "fastunlearn" / "__pycache__").mkdir(exist_ok=True)
    (src / "fastunlearn" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "FORCE_CUDA"}
    env["FORCE_ONLY_CPU"] = "1"
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], cwd=src,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist = tmp_path / "out" / proc.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers()
                if m.isfile() and "/" in m.name}


@pytest.mark.slow
def test_sdist_carries_what_a_wheel_build_needs_and_nothing_else(tmp_path):
    names = _sdist_names(tmp_path)
    csrc = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*")
            if p.is_file() and p.suffix in (".h", ".cuh", ".cpp", ".cu")}
    assert any(n.endswith(".h") for n in csrc) and any(n.endswith(".cu") for n in csrc)
    missing = sorted(csrc - names)
    assert not missing, f"C++/CUDA files the sdist leaves out: {missing}"
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE",
                 "CMakeLists.txt", "fastunlearn/py.typed", "fastunlearn/__init__.py"):
        assert name in names, name
    modules = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert not modules - names, sorted(modules - names)
    # tests need the repository (bench/, conftest.py, shared fixtures): none ship; nor does
    # the builder's record of its own build, nor compiled leftovers
    shipped_tests = sorted(n for n in names if n.startswith("tests/"))
    assert not shipped_tests, shipped_tests
    assert "fastunlearn/_build_info.json" not in names
    leftovers = sorted(n for n in names if n.endswith((".so", ".o", ".pyc")))
    assert not leftovers, leftovers


def test_build_requirements_are_only_what_the_build_imports():
    # `wheel` was listed although setuptools >= 70.1 builds wheels itself;
    # `python -m build --no-isolation` then refused an environment without it
    requires = _pyproject()["build-system"]["requires"]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in requires}
    assert names == {"setuptools", "torch", "ninja"}, requires
    assert "setuptools>=77" in requires  # PEP 639 license-files
