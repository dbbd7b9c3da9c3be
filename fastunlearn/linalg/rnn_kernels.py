"""Run recurrent layers on torch's native kernels while curvature products are taken."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
from torch import nn

from .._process_flags import ProcessWideOverride

__all__ = ["differentiable_rnn_kernels", "with_differentiable_rnn_kernels"]

_Result = TypeVar("_Result")


@contextlib.contextmanager
def differentiable_rnn_kernels(model: object) -> Iterator[None]:
    """Run a model with recurrent layers on torch's native (twice differentiable) kernels.

    A float32 ``nn.LSTM`` on the CPU runs oneDNN's fused kernel, and an RNN on a GPU
    cuDNN's: neither has forward-mode AD nor a double backward, so every curvature product
    would fail deep inside torch. The native kernels compute the same function. Only the
    ``enabled`` flags are switched off (and restored, also on error), only for models with
    an ``nn.RNNBase`` layer (convolutions elsewhere keep their fast kernels). The flags are
    process-wide: while any such use is active (nested, or in another thread) they stay
    off, and the last use to leave restores what they were before the first one.
    """
    if not isinstance(model, nn.Module) or not any(isinstance(m, nn.RNNBase)
                                                   for m in model.modules()):
        yield
        return
    with _NATIVE_KERNELS.active():
        yield


def _read_enabled() -> tuple[bool, bool]:
    # torch's stub declares mkldnn.enabled as its ContextProp descriptor; it reads as a bool
    return cast(bool, torch.backends.mkldnn.enabled), torch.backends.cudnn.enabled


def _write_enabled(flags: tuple[bool, bool]) -> None:
    # torch's stub declares mkldnn.enabled as its ContextProp descriptor; it takes a bool
    torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled = flags  # type: ignore[assignment]


#: The flags are process-wide; overlapping uses (nested, or in several threads) are counted.
_NATIVE_KERNELS = ProcessWideOverride(_read_enabled, _write_enabled, (False, False))


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
