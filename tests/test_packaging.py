"""A wheel carries every file the package reads besides its modules and the compiled library.

Built wheels lacked ``_build_info.json`` (``fastunlearn.backend()`` then reported no arch
list and no build torch) because setuptools packs only modules unless told otherwise.
"""

import fnmatch
import pathlib
import sys

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
