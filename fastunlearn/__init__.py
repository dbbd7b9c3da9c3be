"""fastunlearn: machine unlearning on fused C++/CUDA kernels registered as PyTorch ops.

The names below load on first use (PEP 562), so ``import fastunlearn`` and the
``fastunlearn`` command start without importing torch; ``fastunlearn.ops`` (or any module
that uses the kernels) loads the compiled extension and registers its ops. When torch is
already imported, ``import fastunlearn`` registers them at once, so ``import torch,
fastunlearn`` followed by ``torch.ops.fastunlearn.glm_hvp(...)`` works as it always did.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import grad, linalg, ops
    from ._extension import backend, is_compiled
    from ._interrupt import GracefulStop

#: Public name -> (module, attribute or None for the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "grad": (".grad", None),
    "linalg": (".linalg", None),
    "ops": (".ops", None),
    "backend": ("._extension", "backend"),
    "is_compiled": ("._extension", "is_compiled"),
    "GracefulStop": ("._interrupt", "GracefulStop"),
}

__all__ = ["__version__", "backend", "is_compiled", "ops", "linalg", "grad", "GracefulStop"]


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        """Import a public name of :data:`__all__` on its first use."""
        if name not in _LAZY:
            raise AttributeError(f"module 'fastunlearn' has no attribute {name!r}")
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name, __name__)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value  # later uses skip this function
        return value


def __dir__() -> list[str]:
    """List the public names, the dunders and the submodules already imported."""
    loaded = {name for name, value in globals().items()
              if getattr(value, "__name__", "").startswith(__name__ + ".")}
    return sorted({*__all__, *loaded, *(name for name in globals() if name.startswith("__"))})


if "torch" in sys.modules:  # torch's import cost is paid: register the ops now
    from . import ops  # noqa: E402, F401
