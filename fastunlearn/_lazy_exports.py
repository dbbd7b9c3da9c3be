"""Lazy public names for a package (PEP 562 style): a name's module loads on first use.

A package lists its public names as ordinary relative imports inside ``if TYPE_CHECKING:``
(type checkers and readers see them as usual) and ends with::

    if not TYPE_CHECKING:
        from .._lazy_exports import install_lazy_exports

        install_lazy_exports(__name__, __file__)

:func:`install_lazy_exports` reads those imports from the package's own source, so each
name is written once. ``import fastunlearn.certified`` then costs nothing, and the
``fastunlearn`` command builds a command's parser (``fastunlearn remove --help``) without
importing torch; ``fastunlearn.certified.CertifiedLogisticRegression`` imports its module
on first use and is kept in the package's namespace.

A public name may also be a submodule's name (``fastunlearn.metrics.accuracy``, the
function, defined in ``metrics/accuracy.py``). Python's import system sets a package's
attribute to each submodule it loads, which would replace the function by the module
whenever some other import loads ``metrics.accuracy`` first; the package's module class
(:class:`LazyPackage`) keeps the public value there, as ``from .accuracy import accuracy``
in an eager ``__init__`` does.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["LazyPackage", "install_lazy_exports", "type_checking_imports"]

#: Public name -> (relative module, attribute or None when the name is the module itself).
LazyNames = dict[str, tuple[str, str | None]]

#: Where a lazy package keeps its :data:`LazyNames` (in its namespace, under a dunder).
_NAMES_KEY = "__lazy_names__"


def _is_type_checking_block(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def type_checking_imports(init_file: str | Path) -> LazyNames:
    """Map each name imported relatively under ``if TYPE_CHECKING:`` in ``init_file``.

    ``from .bounds import c_delta`` gives ``{"c_delta": (".bounds", "c_delta")}``;
    ``from . import bounds`` gives ``{"bounds": (".bounds", None)}``; ``as`` renames are
    honoured. Absolute imports there (``from typing import ...``) are skipped: they are
    not the package's own names.
    """
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"), filename=str(init_file))
    names: LazyNames = {}
    for block in filter(_is_type_checking_block, tree.body):
        assert isinstance(block, ast.If)
        for statement in block.body:
            if not isinstance(statement, ast.ImportFrom) or statement.level == 0:
                continue
            prefix = "." * statement.level
            for alias in statement.names:
                public = alias.asname or alias.name
                if statement.module is None:  # from . import submodule
                    names[public] = (prefix + alias.name, None)
                else:
                    names[public] = (prefix + statement.module, alias.name)
    return names


class LazyPackage(types.ModuleType):
    """The module class of a package with lazy public names (:func:`install_lazy_exports`)."""

    def _lazy_names(self) -> LazyNames:
        names: LazyNames = self.__dict__.get(_NAMES_KEY, {})
        return names

    def _public_value(self, name: str) -> Any:
        """Import public name ``name``'s module and return its value (no caching)."""
        module_name, attribute = self._lazy_names()[name]
        module = importlib.import_module(module_name, self.__name__)
        return module if attribute is None else getattr(module, attribute)

    def __getattr__(self, name: str) -> Any:
        """Import the module of public name ``name`` on its first use."""
        if name not in self._lazy_names():
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = self._public_value(name)
        setattr(self, name, value)  # later uses are plain attribute lookups
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        """Set an attribute, but keep a public name that a submodule of the same name shadows.

        The import system sets ``package.<child>`` to each submodule it loads; where
        ``<child>`` is also a public name bound to something else (a function of that
        submodule), the public value is stored instead, as an eager ``__init__`` has it.
        """
        target = self._lazy_names().get(name)
        if (target is not None and target[1] is not None
                and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            value = self._public_value(name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        """List the public names, the dunders and the submodules already imported."""
        namespace = vars(self)
        loaded = {name for name, value in namespace.items()
                  if isinstance(value, types.ModuleType)
                  and value.__name__.startswith(self.__name__ + ".")}
        dunders = {name for name in namespace if name.startswith("__")}
        return sorted({*self._lazy_names(), *loaded, *dunders})


def install_lazy_exports(package: str, init_file: str) -> None:
    """Make the public names of ``package`` load on first use.

    Args:
        package: the package's ``__name__`` (it must be in ``sys.modules``, as it is while
            its ``__init__`` runs).
        init_file: the package's ``__file__`` (its ``__init__.py``), whose
            ``if TYPE_CHECKING:`` block lists the public names
            (:func:`type_checking_imports`).

    A public name's module is imported on its first use and the value stored in the
    package's namespace; an unknown name raises ``AttributeError`` as for any module;
    ``dir(package)`` lists the public names, the dunders and the submodules imported.

    """
    module = sys.modules[package]
    vars(module)[_NAMES_KEY] = type_checking_imports(init_file)
    module.__class__ = LazyPackage
