"""Run a model on twice-differentiable kernels while curvature products are taken.

Recurrent layers run on torch's native kernels, scaled dot-product attention (that of
``nn.MultiheadAttention``, the ``nn.Transformer*`` layers, or a direct call of
``torch.nn.functional.scaled_dot_product_attention``) on its math backend, and weight
normalisation on its composite formula: the fused kernels torch picks otherwise have no
second derivative, or (weight norm) a wrong one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm
from torch.nn.utils.weight_norm import WeightNorm
from torch.overrides import TorchFunctionMode

from .._process_flags import ProcessWideOverride

__all__ = ["differentiable_rnn_kernels", "with_differentiable_rnn_kernels"]

_Result = TypeVar("_Result")


@contextlib.contextmanager
def differentiable_rnn_kernels(model: object) -> Iterator[None]:
    """Run a model on kernels that can be differentiated twice (and forward-mode).

    A float32 ``nn.LSTM`` on the CPU runs oneDNN's fused kernel, and an RNN on a GPU
    cuDNN's: neither has forward-mode AD nor a double backward, so every curvature product
    would fail deep inside torch. The native kernels compute the same function. Only the
    ``enabled`` flags are switched off (and restored, also on error), only for models with
    an ``nn.RNNBase`` layer (convolutions elsewhere keep their fast kernels).

    Likewise, scaled dot-product attention runs on its math backend: the flash (also the
    CPU one), memory-efficient and cuDNN kernels have no double backward and no
    forward-mode AD. This holds for every model, not only those with an
    ``nn.MultiheadAttention`` layer (``nn.TransformerEncoderLayer`` calls it through
    scaled dot-product attention): a custom attention module may call
    ``torch.nn.functional.scaled_dot_product_attention`` directly, which no layer type
    reveals (the backend flags affect nothing else). These flags are process-wide too:
    while any such use is active (nested, or in another thread) they stay set, and the
    last use to leave restores what they were before the first one.

    A model with weight normalisation (``torch.nn.utils.parametrizations.weight_norm`` or
    the older ``torch.nn.utils.weight_norm``) computes its weights with the composite
    ``v * (g / ||v||)`` instead of torch's fused ``_weight_norm`` kernel, whose second
    derivative is wrong (an 18 % error in a Hessian-vector product against finite
    differences, torch 2.14) and which has no forward-mode AD; the weights are the same.
    This applies to the current thread only.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    with contextlib.ExitStack() as stack:
        if any(isinstance(m, nn.RNNBase) for m in modules):
            stack.enter_context(_NATIVE_KERNELS.active())
        # every model: a custom attention module may call the functional form directly
        stack.enter_context(_MATH_ATTENTION.active())
        if any(_weight_normalised(m) for m in modules):
            stack.enter_context(_CompositeWeightNorm())
        yield


def _read_enabled() -> tuple[bool, bool]:
    # torch's stub declares mkldnn.enabled as its ContextProp descriptor; it reads as a bool
    return cast(bool, torch.backends.mkldnn.enabled), torch.backends.cudnn.enabled


def _write_enabled(flags: tuple[bool, bool]) -> None:
    # torch's stub declares mkldnn.enabled as its ContextProp descriptor; it takes a bool
    torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled = flags  # type: ignore[assignment]


#: The flags are process-wide; overlapping uses (nested, or in several threads) are counted.
_NATIVE_KERNELS = ProcessWideOverride(_read_enabled, _write_enabled, (False, False))


def _read_attention() -> tuple[bool, bool, bool, bool]:
    cuda = torch.backends.cuda
    return (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(),
            cuda.cudnn_sdp_enabled(), cuda.math_sdp_enabled())


def _write_attention(flags: tuple[bool, bool, bool, bool]) -> None:
    cuda = torch.backends.cuda
    cuda.enable_flash_sdp(flags[0])
    cuda.enable_mem_efficient_sdp(flags[1])
    cuda.enable_cudnn_sdp(flags[2])
    cuda.enable_math_sdp(flags[3])


#: The backends of scaled dot-product attention (flash, memory-efficient, cuDNN, math): the
#: math one only, the one with a double backward (the flags hold for CPU kernels too).
_MATH_ATTENTION = ProcessWideOverride(_read_attention, _write_attention,
                                      (False, False, False, True))


def _weight_normalised(module: nn.Module) -> bool:
    """Whether ``module`` computes a weight with torch's weight normalisation."""
    if any(isinstance(hook, WeightNorm) for hook in module._forward_pre_hooks.values()):
        return True
    if not parametrize.is_parametrized(module):
        return False
    lists = cast(nn.ModuleDict, module.parametrizations)
    return any(isinstance(p, _WeightNorm) for plist in lists.values()
               for p in cast(nn.ModuleList, plist))


class _CompositeWeightNorm(TorchFunctionMode):
    """Compute ``torch._weight_norm`` with its composite formula (this thread, inside the block).

    ``torch._weight_norm(v, g, dim)`` runs the fused ``_weight_norm_interface`` kernel for
    ``dim`` 0 or the last one, whose double backward is wrong and which has no forward-mode
    AD; ``v * (g / norm_except_dim(v, 2, dim))`` is what torch computes for the others.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch._weight_norm:
            bound = {**dict(zip(("v", "g", "dim"), args, strict=False)), **kwargs}
            return _composite_weight_norm(bound["v"], bound["g"], bound.get("dim", 0))
        return func(*args, **kwargs)


def _composite_weight_norm(v: Tensor, g: Tensor, dim: int) -> Tensor:
    """``v * (g / ||v||)`` with the norm over every dimension but ``dim`` (-1: over all).

    torch's ``norm_except_dim(v, 2, dim)`` with plain reductions (its own forward-mode
    derivative fails for ``dim=-1``, the whole-tensor norm of ``weight_norm(dim=None)``).
    """
    if dim == -1:
        return v * (g / torch.linalg.vector_norm(v))
    dim %= v.dim()
    others = [d for d in range(v.dim()) if d != dim]
    norm = torch.linalg.vector_norm(v, dim=others, keepdim=True) if others else v.abs()
    return v * (g / norm)


def with_differentiable_rnn_kernels(
    method: Callable[..., _Result]
) -> Callable[..., _Result]:
    """Decorate an operator method to run inside :func:`differentiable_rnn_kernels`.

    The operator's model is read from its ``model`` attribute.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> _Result:
        with differentiable_rnn_kernels(self.model):
            return method(self, *args, **kwargs)

    return wrapper
