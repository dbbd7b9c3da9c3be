"""Shared test parametrisation: devices, dtypes, tolerances."""

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

#: Parametrize over these: CPU always, CUDA marked (and skipped where there is no GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]


def tolerances(dtype: torch.dtype) -> dict:
    """assert_close tolerances against a float64 oracle."""
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 1e-10, "atol": 1e-10}


def op_error(bad: object, dtype: torch.dtype) -> type[Exception]:
    """The error an op raises for ``bad`` in place of a ``dtype`` tensor: TypeError for a
    tensor of another dtype, ValueError for anything else wrong (shape, device, value)."""
    return TypeError if isinstance(bad, torch.Tensor) and bad.dtype != dtype else ValueError


def run_in_place(fn, args: dict, written: tuple[str, ...]) -> dict:
    """Call the in-place ``fn(**args)`` on copies of the tensors; return the written copies."""
    copies = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    fn(**copies)
    return {k: copies[k] for k in written}


def assert_in_place_matches(fn, oracle, args: dict, written: tuple[str, ...], **tol) -> dict:
    """Run an in-place op and its float64 oracle on copies of ``args``; every written tensor
    must agree (NaN where the oracle has NaN). Returns the op's written tensors."""
    ours, ref = run_in_place(fn, args, written), run_in_place(oracle, args, written)
    for name in written:
        torch.testing.assert_close(ours[name], ref[name], equal_nan=True, msg=name, **tol)
    return ours


def assert_rejected_unchanged(fn, args: dict, error: type, match: str) -> None:
    """``fn(**args)`` raises ``error`` matching ``match`` and leaves every tensor as it was."""
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(error, match=match):
        fn(**args)
    for k, v in before.items():
        assert torch.equal(args[k], v), k


def assert_same_run_to_run(fn, args: dict, written: tuple[str, ...]) -> None:
    """Two calls of the in-place ``fn`` on copies of ``args`` write the same bits (kernels whose
    sums have a fixed order)."""
    first, second = run_in_place(fn, args, written), run_in_place(fn, args, written)
    for name in written:
        assert torch.equal(first[name], second[name]), name


def per_sample_loop(model, x, y, loss_fn, names) -> dict:
    """Per-sample gradients of the named parameters by one plain backward per sample
    (zeros for a parameter the sample's loss does not use)."""
    params = dict(model.named_parameters())
    rows = {n: [] for n in names}
    for b in range(x.shape[0]):
        loss = loss_fn(model(x[b:b + 1]), y[b:b + 1])
        gs = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, gs, strict=True):
            rows[n].append(torch.zeros_like(params[n]) if g is None else g)
    return {n: torch.stack(v) for n, v in rows.items()}


#: Result keys left out of :func:`canonical`: timings and where files went.
_VOLATILE = ("second", "time", "timing", "speedup")


def canonical(obj: Any, skip: tuple[str, ...] = ()) -> Any:
    """A comparable form of a result: tensors and arrays as bytes, floats bitwise (NaN equal
    to NaN), models as state dicts; timings, paths, tracebacks and the keys in ``skip``
    left out."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), t.numpy().tobytes())
    if isinstance(obj, np.ndarray):
        return ("array", str(obj.dtype), obj.shape, obj.tobytes())
    if isinstance(obj, nn.Module):
        return canonical(obj.state_dict(), skip)
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: canonical(v, skip) for k, v in obj.items()
                if k not in skip and k not in ("paths", "traceback")
                and not any(s in str(k) for s in _VOLATILE) and not str(k).endswith("_s")}
    if hasattr(obj, "_asdict"):
        return canonical(obj._asdict(), skip)
    if isinstance(obj, (list, tuple)):
        return [canonical(v, skip) for v in obj]
    if dataclasses.is_dataclass(obj):
        return canonical({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, skip)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (int, str, bool, type(None))):
        return obj
    if isinstance(obj, torch.Generator):
        return canonical(obj.get_state())
    return canonical(vars(obj), skip)


#: every ``fastunlearn`` command with the arguments it needs to parse (tests of flags that
#: all commands share)
COMMAND_ARGS = {
    "remove": [],
    "extract": ["--data-dir", "data"],
    "repair": [],
    "unlearn-features": [],
    "forget": [],
    "evaluate": ["logits"],
    "exposure": [],
}


def used_settings(method: str, **settings: Any) -> dict:
    """``settings`` without the fields forgetting ``method`` ignores (they would warn).

    E.g. ``epochs=1`` for speed is dropped for ``fisher``, which does not train.
    """
    from fastunlearn.forget import get_method

    ignored = get_method(method)[1].UNUSED_FIELDS
    return {k: v for k, v in settings.items() if k not in ignored}


def printed_warnings(call: Callable[[], Any],
                     stop: type[BaseException] = Exception) -> tuple[object, list[str]]:
    """Run ``call()``; return ``(its result or the ``stop`` it raised, the warning lines)``.

    The lines are what a user sees: ``warnings.formatwarning`` of each warning, every one
    shown (``always``), so a repeated warning shows twice.
    """
    lines: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None):
        lines.append(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        try:
            outcome: object = call()
        except stop as exc:
            outcome = exc
    return outcome, lines


def assert_same_snapshot(after: dict, before: dict) -> None:
    """Two snapshots of an object's state are equal, entry by entry (arrays, tensors, other
    values), the failing entry named."""
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key
        else:
            assert after[key] == value, key


class TinyEncoder(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (width 4, 2 heads) and a 3-class head; rows of 8
    features are read as 2 tokens of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x.view(x.shape[0], 2, 4)).mean(1))


def finite_difference_hessian(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                              y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Symmetrised central differences of the exact gradient of ``loss_fn(model(x), y)``
    over all parameters (flattened in ``model.parameters()`` order): a Hessian that does
    not rest on the second derivative torch computes."""
    params = list(model.parameters())
    sizes = [p.numel() for p in params]

    def grad_at(shift: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            for p, s in zip(params, shift, strict=True):
                p.add_(s)
        g = torch.autograd.grad(loss_fn(model(x), y), params)
        with torch.no_grad():
            for p, s in zip(params, shift, strict=True):
                p.sub_(s)
        return torch.cat([t.reshape(-1) for t in g])

    cols = []
    for e in torch.eye(sum(sizes), dtype=params[0].dtype):
        parts = [c.view(p.shape) for c, p in zip(e.split(sizes), params, strict=True)]
        cols.append((grad_at([eps * q for q in parts]) - grad_at([-eps * q for q in parts]))
                    / (2 * eps))
    H = torch.stack(cols, 1)
    return 0.5 * (H + H.T)
