"""fastunlearn: machine unlearning on fused C++/CUDA kernels registered as PyTorch ops.

The names below load on first use (PEP 562), so ``import fastunlearn`` and the
``fastunlearn`` command start without importing torch; ``fastunlearn.ops`` (or any module
that uses the kernels) loads the compiled extension and registers its ops. When torch is
already imported, ``import fastunlearn`` registers them at once, so ``import torch,
fastunlearn`` followed by ``torch.ops.fastunlearn.glm_hvp(...)`` works as it always did.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._lazy_exports import install_lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import grad, linalg, ops
    from ._extension import backend, is_compiled
    from ._interrupt import GracefulStop

__all__ = ["__version__", "backend", "is_compiled", "ops", "linalg", "grad", "GracefulStop"]

# the names imported above for type checkers load on first use
install_lazy_exports(__name__, __file__)


if "torch" in sys.modules:  # torch's import cost is paid: register the ops now
    from . import ops  # noqa: E402, F401
