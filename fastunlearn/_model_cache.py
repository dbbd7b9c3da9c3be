"""Trained models kept on disk, so that a run with the same settings loads instead of training.

An entry is two files in the cache folder: the weights (safetensors: tensors only, never
pickled code) at ``<role>-<key[:24]>.safetensors`` and a JSON sidecar beside it with the full
key and the training wall time, so a loaded model still reports the time its training took.
The key is a SHA-256 of everything that determines the weights (the callers list it: data
digests, model, recipe, seed, device type). Both files are written under temporary names and
renamed into place, the sidecar last: an entry cut short by an interrupt is a miss. So is
an entry whose weights cannot be read or are not the model's tensors (a damaged or foreign
file): it is reported with a warning, the caller trains again and its store replaces it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._atomic_files import replace_atomically

__all__ = ["cache_key", "load_cached", "store_cached", "tensor_digest", "weights_digest"]


def tensor_digest(*tensors: Tensor) -> str:
    """Return a SHA-256 of the tensors' dtypes, shapes and values (in order)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{value.dtype}:{tuple(value.shape)};".encode())
        # a 0-d tensor (BatchNorm's num_batches_tracked) as one element: `view` needs a dim
        flat = value.reshape(-1) if value.dim() == 0 else value
        digest.update(flat.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """Return a SHA-256 of ``model``'s parameters and buffers (names, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor_digest(tensor)};".encode())
    return digest.hexdigest()


def cache_key(parts: Mapping[str, Any]) -> str:
    """Return the SHA-256 of ``parts`` (JSON-able) written with sorted keys."""
    return hashlib.sha256(json.dumps(dict(parts), sort_keys=True).encode()).hexdigest()


def _paths(folder: str | Path, role: str, key: str) -> tuple[Path, Path]:
    weights = Path(folder) / f"{role}-{key[:24]}.safetensors"
    return weights, weights.with_suffix(".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    """Read a sidecar; ``{}`` (a miss) if absent, unreadable or not a JSON object."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or half-written by an interrupted run
        return {}
    return info if isinstance(info, dict) else {}


def _storage(tensor: Tensor) -> tuple[torch.device, int] | None:
    """Where ``tensor``'s storage lives (None for an empty one, which nothing shares)."""
    storage = tensor.untyped_storage()
    if storage.nbytes() == 0 or storage.data_ptr() == 0:
        return None
    return tensor.device, storage.data_ptr()


def _mismatch(model: nn.Module, tensors: Mapping[str, Tensor]) -> str | None:
    """Say how ``tensors`` (a weights file) differ from ``model``'s state; None if they fit.

    Every tensor of the file must be one of the model's with its shape and dtype, and every
    tensor of the model must be in the file, unless it shares its storage with one that is
    (a tied weight, which safetensors' ``save_model`` writes once).
    """
    state = model.state_dict()
    for name, tensor in tensors.items():
        ref = state.get(name)
        if ref is None:
            return f"it holds {name!r}, which the model does not have"
        if ref.shape != tensor.shape or ref.dtype != tensor.dtype:
            return (
                f"its {name!r} is {tensor.dtype} {tuple(tensor.shape)}, the model's is "
                f"{ref.dtype} {tuple(ref.shape)}"
            )
    loaded = {_storage(state[name]) for name in tensors} - {None}
    for name, ref in state.items():
        if name not in tensors and _storage(ref) not in loaded:
            return f"it lacks the model's {name!r}"
    return None


def load_cached(
    folder: str | Path, role: str, key: str, model: nn.Module, device: torch.device
) -> float | None:
    """Load the entry ``key`` into ``model`` (eval mode); return its training seconds.

    Returns None (and leaves ``model`` as it is) when there is no complete entry, and also,
    with a RuntimeWarning naming the file, when its weights cannot be read or are not
    ``model``'s tensors (names, shapes, dtypes): a damaged or foreign file is a miss, so the
    caller trains again and stores the entry anew.
    """
    weights, sidecar = _paths(folder, role, key)
    info = _read_sidecar(sidecar)
    seconds = info.get("seconds")
    if (
        not weights.is_file()
        or info.get("key") != key
        or isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
    ):
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights), device=str(device))
    except (OSError, SafetensorError) as exc:  # truncated, overwritten, unreadable
        problem: str | None = f"it cannot be read: {exc}"
    else:
        problem = _mismatch(model, tensors)
    if problem is not None:
        warnings.warn(
            f"ignoring the cached model {str(weights)!r} ({problem}); training it again",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    # checked above: nothing can fail half-way; the keys left out share a loaded storage
    model.load_state_dict(tensors, strict=False)
    model.eval()
    return float(seconds)


def store_cached(
    folder: str | Path,
    role: str,
    key: str,
    model: nn.Module,
    seconds: float,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` as the entry ``key``, with ``seconds`` and ``info`` in its sidecar."""
    from safetensors.torch import save_model

    weights, sidecar = _paths(folder, role, key)
    weights.parent.mkdir(parents=True, exist_ok=True)
    # unique temporary names (concurrent runs do not clash), renamed into place; the
    # sidecar last: an entry cut short by an interrupt is a miss
    replace_atomically(weights, lambda tmp: save_model(model, str(tmp)))
    # the entry's own fields last: ``info`` cannot replace the key a load looks for
    text = json.dumps({**(info or {}), "key": key, "seconds": seconds, "role": role}) + "\n"
    replace_atomically(sidecar, lambda tmp: tmp.write_text(text))
