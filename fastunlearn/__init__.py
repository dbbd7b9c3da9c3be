"""fastunlearn: machine unlearning on fused C++/CUDA kernels registered as PyTorch ops."""

__version__ = "0.1.0"

from . import (
    grad,  # noqa: E402
    linalg,  # noqa: E402
    ops,  # noqa: E402
)
from ._extension import backend, is_compiled  # noqa: E402
from ._interrupt import GracefulStop  # noqa: E402

__all__ = ["__version__", "backend", "is_compiled", "ops", "linalg", "grad", "GracefulStop"]
