"""Name the inputs when a model fails on inputs of another dtype than its parameters."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["refuse_input_dtype"]


def refuse_input_dtype(model: nn.Module, x: Tensor, name: str, exc: Exception) -> None:
    """Raise a TypeError naming ``name`` if ``x``'s dtype differs from the model's parameters'.

    Called with the error the model raised on ``x`` (torch's "mat1 and mat2 must have the
    same dtype" names neither); returns without raising when the dtypes agree, the model's
    parameters have several floating dtypes, or ``x`` holds integers (or bools) and the
    model has an embedding layer (token ids are integers: its failure lies elsewhere), so
    the caller re-raises the original error.

    Raises:
        TypeError: If the model's floating parameters share one dtype and ``x`` has another.

    """
    if (
        not x.is_floating_point()
        and not x.is_complex()
        and any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())
    ):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and x.dtype not in dtypes:
        dtype = dtypes.pop()
        raise TypeError(
            f"'{name}' is {x.dtype} but the model's parameters are {dtype}, and the model "
            f"cannot run on it ({exc}); convert the inputs ({name}.to({dtype})) or the model"
        ) from exc
