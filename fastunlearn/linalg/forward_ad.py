"""``torch.func.jvp`` without the deprecation warning torch raises from its own internals.

On its first forward-mode product torch imports ``torch._decomp.decompositions_for_jvp``,
which calls the deprecated ``torch.jit.script`` itself: every caller of a forward-over-reverse
Hessian or a GGN product saw a ``FutureWarning`` it could neither act on nor attribute. That
one import is done here with exactly that warning silenced; everything else is unchanged.

Forward-mode AD levels are process-wide in torch (``torch.autograd.forward_ad`` keeps the
current level in a module global): two ``jvp`` calls overlapping in two threads exit each
other's level, failing ("no level exists") or, worse, reading tangents at the wrong level.
The products are therefore taken one at a time, under a process-wide lock.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch.func

__all__ = ["jvp"]

#: Held around every forward-mode product (re-entrant: a jvp nested in a jvp's function).
_FORWARD_AD_LOCK = threading.RLock()


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
    with _FORWARD_AD_LOCK:  # forward-AD levels are process-wide, see the module docstring
        _load_jvp_decompositions()  # once, also when the first calls overlap
        return torch.func.jvp(func, primals, tangents, **kwargs)
