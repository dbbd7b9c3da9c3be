"""``torch.func.jvp`` without the deprecation warning torch raises from its own internals.

On its first forward-mode product torch imports ``torch._decomp.decompositions_for_jvp``,
which calls the deprecated ``torch.jit.script`` itself: every caller of a forward-over-reverse
Hessian or a GGN product saw a ``FutureWarning`` it could neither act on nor attribute. That
one import is done here with exactly that warning silenced; everything else is unchanged.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch.func

__all__ = ["jvp"]


@functools.cache
def _load_jvp_decompositions() -> None:
    """Import torch's forward-AD decompositions once, hiding its ``torch.jit.script`` warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                                category=FutureWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # a torch without the module: nothing to load early
            pass


def jvp(func: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...],
        **kwargs: Any) -> Any:
    """:func:`torch.func.jvp`, after loading its decompositions without torch's warning."""
    _load_jvp_decompositions()
    return torch.func.jvp(func, primals, tangents, **kwargs)
