"""The command starts light: ``--help`` imports no torch, a command imports only its module.

Also: Ctrl-C while a command's module (torch included) loads is one line and status 130,
and the lazy package attributes (``fastunlearn.ops``, ``fastunlearn.certified.*``) work.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time

import pytest

import fastunlearn
from fastunlearn import cli
from fastunlearn._lazy_exports import type_checking_imports


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, **kwargs)


def _choices(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_help_and_package_import_load_no_torch():
    done = _python(
        "import contextlib, io, sys\n"
        "import fastunlearn\n"
        "from fastunlearn.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'unlearn-features' in out.getvalue()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_command_imports_its_module_only():
    done = _python(
        "import sys\n"
        "from fastunlearn.cli import COMMANDS, build_parser\n"
        "build_parser('evaluate')\n"
        "print([c.module for c in COMMANDS.values() if c.module in sys.modules])\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['fastunlearn.metrics.cli']"


def test_the_help_lines_are_the_commands_own():
    full, light = build_full(), cli.build_parser(None)
    assert list(_choices(full).choices) == list(cli.COMMANDS) == list(_choices(light).choices)
    lines = {a.dest: a.help for a in _choices(full)._choices_actions}
    assert lines == {a.dest: a.help for a in _choices(light)._choices_actions}
    assert lines == {name: command.help for name, command in cli.COMMANDS.items()}


def build_full() -> argparse.ArgumentParser:
    return cli.build_parser()


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_one_command_parser_equals_the_full_one(command):
    def flags(parser):
        sub = _choices(parser).choices[command]
        return [(tuple(a.option_strings), a.dest, a.default) for a in sub._actions]

    assert flags(cli.build_parser(command)) == flags(build_full())


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"fastunlearn {fastunlearn.__version__}\n"


def test_an_unknown_command_is_refused_without_imports(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus", "--x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'unlearn-features'" in err


def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    # the child says when main() is about to run; torch takes a second or more to import
    # after that, and the SIGINT lands there
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "from fastunlearn.cli import main\n"
         "print('ready', flush=True)\n"
         "sys.exit(main(['evaluate', 'nowhere']))\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert err == "\nfastunlearn evaluate: interrupted (Ctrl-C)\n" and out == ""


def test_lazy_package_attributes():
    assert set(fastunlearn.__all__) <= set(dir(fastunlearn))
    assert fastunlearn.backend()["version"] == fastunlearn.__version__
    from fastunlearn import GracefulStop, is_compiled, linalg, ops

    assert ops.__name__ == "fastunlearn.ops" and linalg.__name__ == "fastunlearn.linalg"
    assert callable(is_compiled) and GracefulStop.__name__ == "GracefulStop"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        fastunlearn.nonexistent  # noqa: B018


def test_import_fastunlearn_then_ops_registers_the_kernels():
    done = _python("import fastunlearn, torch\n"
                   "fastunlearn.ops\n"
                   "print(hasattr(torch.ops.fastunlearn, 'glm_hessian'))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_import_torch_then_fastunlearn_registers_the_kernels_at_once():
    # the usual pattern of op libraries: torch.ops.<namespace> is usable after the import
    done = _python("import torch, fastunlearn\n"
                   "print(hasattr(torch.ops.fastunlearn, 'glm_hvp'))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_every_command_help_loads_no_torch():
    done = _python(
        "import contextlib, io, sys\n"
        "from fastunlearn.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, (name, exc.code)\n"
        "    assert f'usage: fastunlearn {name}' in out.getvalue(), name\n"
        "print(sorted(m for m in ('torch', 'numpy', 'sklearn', 'matplotlib')\n"
        "             if m in sys.modules))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


#: The packages whose public names load on first use (fastunlearn._lazy_exports).
LAZY_PACKAGES = ("fastunlearn", "fastunlearn.certified", "fastunlearn.influence",
                 "fastunlearn.exposure", "fastunlearn.metrics", "fastunlearn.harness",
                 "fastunlearn.report")


def test_importing_the_lazy_packages_loads_no_torch():
    done = _python(f"import importlib, sys\n"
                   f"for name in {LAZY_PACKAGES!r}:\n"
                   f"    importlib.import_module(name)\n"
                   f"print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_a_lazy_package_resolves_every_public_name(name):
    package = importlib.import_module(name)
    lazy = type_checking_imports(package.__file__)
    assert set(package.__all__) - {"__version__"} == set(lazy)  # listed once, both places
    for public in package.__all__:
        value = getattr(package, public)
        module_name, attribute = lazy.get(public, (None, None))
        if module_name is not None and attribute is not None:  # the defining module's value
            module = importlib.import_module(module_name, name)
            assert value is getattr(module, attribute)
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'nonexistent'"):
        package.nonexistent  # noqa: B018


def test_type_checking_imports_reads_the_relative_imports(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text("import typing\n"
                    "from typing import TYPE_CHECKING\n"
                    "from .eager import not_lazy\n"
                    "if TYPE_CHECKING:\n"
                    "    import os\n"
                    "    from collections import OrderedDict\n"
                    "    from . import sub\n"
                    "    from .mod import a, b as bee\n"
                    "    from ..up import c\n"
                    "if typing.TYPE_CHECKING:\n"
                    "    from .other import d\n")
    assert type_checking_imports(init) == {
        "sub": (".sub", None), "a": (".mod", "a"), "bee": (".mod", "b"),
        "c": ("..up", "c"), "d": (".other", "d")}


def test_a_public_name_keeps_its_value_when_its_namesake_submodule_loads():
    # fastunlearn.metrics.accuracy is a function of the submodule metrics/accuracy.py;
    # loading that submodule first (the import system then sets the package's attribute)
    # must not turn the public name into the module
    done = _python("import importlib\n"
                   "module = importlib.import_module('fastunlearn.metrics.accuracy')\n"
                   "import fastunlearn.metrics as metrics\n"
                   "print(metrics.accuracy is module.accuracy, callable(metrics.accuracy))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True True"


def test_a_closed_output_pipe_ends_quietly(tmp_path):
    """``fastunlearn info --json | head -1``: the reader went away before the output was
    written; the command stops with status 1 and no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        child = subprocess.run([sys.executable, "-m", "fastunlearn", "info", "--json"],
                               stdout=write_end,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in child.stderr and "BrokenPipe" not in child.stderr, child.stderr
    assert child.returncode == 1
