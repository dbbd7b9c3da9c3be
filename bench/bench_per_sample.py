"""Per-sample gradient norms, dot products and clipped sums vs Opacus and torch.func.

Models (float32, cross-entropy summed over the batch so that per-sample gradients are the
gradients of the per-sample losses): the MNIST MLP 784-512-256-10 and a small CNN
(conv 1->16 5x5, max-pool 2, conv 16->32 5x5, max-pool 2, linear 512->10 on 28x28 inputs),
at batch sizes 256 and 512.

For each quantity (``norms`` = squared per-sample gradient norms, ``dots`` = per-sample dot
products with a random parameter-shaped vector, ``clipped_sum`` = DP-SGD sum of per-sample
gradients clipped to norm C, C = the median norm) the implementations are:

* **ours**: ``fastunlearn.grad.PerSampleGradients`` (hooks feeding the per-sample ops; no
  per-sample gradient is materialised for these layers);
* **opacus**: ``GradSampleModule`` in ``hooks`` mode (materialises ``p.grad_sample``
  [B, *p.shape]; the quantity is then reduced from it);
* **torch.func**: ``vmap(grad(loss))`` over ``functional_call`` (materialises too);
* **plain**: one ordinary forward + backward of the same batch (the cost floor).

Times are medians per call; ``*_mem_x`` is the peak memory of a call divided by the peak
memory of the plain forward + backward (see ``bench/common.py`` for what is measured).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.common import (
    OpUnavailable,
    check_close,
    compare,
    no_tf32,
    print_table,
    ratio,
    require_op,
    resolve_device,
    resolve_preset,
    scaled_atol,
    timing_options,
)

NAME = "per_sample"
QUANTITIES = ("norms", "dots", "clipped_sum")

#: preset -> (image side, tiny models?, batch sizes)
SIZES: dict[str, tuple[int, bool, tuple[int, ...]]] = {
    "tiny": (8, True, (16,)),
    "quick": (28, False, (256, 512)),
    "full": (28, False, (256, 512)),
}

COLUMNS = [
    ("model", "model", "s"),
    ("B", "B", "d"),
    ("quantity", "quantity", "s"),
    ("ours_ms", "ours ms", ".2f"),
    ("opacus_ms", "opacus ms", ".2f"),
    ("func_ms", "func ms", ".2f"),
    ("plain_ms", "plain ms", ".2f"),
    ("ratio_opacus", "opacus/ours", ".2f"),
    ("ratio_func", "func/ours", ".2f"),
    ("ours_vs_plain", "ours/plain", ".2f"),
    ("ours_mem_x", "ours mem", ".2f"),
    ("opacus_mem_x", "opacus mem", ".2f"),
    ("func_mem_x", "func mem", ".2f"),
]


def make_model(kind: str, side: int, tiny: bool) -> nn.Module:
    """The benchmark MLP or CNN (``tiny``: narrow layers for smoke tests)."""
    if kind == "mlp":
        h1, h2 = (32, 16) if tiny else (512, 256)
        return nn.Sequential(nn.Flatten(), nn.Linear(side * side, h1), nn.ReLU(),
                             nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 10))
    if kind == "cnn":
        c1, c2, ks, pool = (4, 8, 3, 1) if tiny else (16, 32, 5, 2)
        out = side
        for _ in range(2):
            out = (out - ks + 1) // pool
        return nn.Sequential(
            nn.Conv2d(1, c1, ks), nn.ReLU(), nn.MaxPool2d(pool),
            nn.Conv2d(c1, c2, ks), nn.ReLU(), nn.MaxPool2d(pool),
            nn.Flatten(), nn.Linear(c2 * out * out, 10),
        )
    raise ValueError(f"'kind' must be mlp or cnn, got {kind!r}")


def loss_fn(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy summed over the batch: per-sample gradients are those of each loss."""
    return F.cross_entropy(outputs, targets, reduction="sum")


def clip_factors(sq_norms: Tensor, max_norm: float) -> Tensor:
    """``min(1, C / (||g_b|| + 1e-6))``, the clipping rule of fastunlearn and Opacus."""
    return (max_norm / (sq_norms.clamp_min(0).sqrt() + 1e-6)).clamp(max=1.0)


# ---- reductions of materialised per-sample gradients (shared by the peers) --------------


def _reduce(grads: dict[str, Tensor], quantity: str, vector: dict[str, Tensor],
            max_norm: float) -> Tensor | dict[str, Tensor]:
    flat = {n: g.flatten(1) for n, g in grads.items()}
    if quantity == "dots":
        return sum(g @ vector[n].flatten() for n, g in flat.items())
    sq = sum(g.pow(2).sum(1) for g in flat.values())
    if quantity == "norms":
        return sq
    w = clip_factors(sq, max_norm)
    return {n: torch.tensordot(w, g, dims=1) for n, g in grads.items()}


class OpacusPeer:
    """Opacus ``GradSampleModule`` (hooks) on its own copy of the model."""

    def __init__(self, model: nn.Module) -> None:
        from opacus import GradSampleModule

        self.gsm = GradSampleModule(copy.deepcopy(model), batch_first=True,
                                    loss_reduction="sum")
        self.names = [n for n, _ in model.named_parameters()]

    def clear(self) -> None:
        """Drop ``.grad`` and ``.grad_sample`` (set before every timed call)."""
        self.gsm.zero_grad(set_to_none=True)

    def __call__(self, x: Tensor, y: Tensor, quantity: str, vector: dict[str, Tensor],
                 max_norm: float) -> Tensor | dict[str, Tensor]:
        with warnings.catch_warnings():
            # inputs never require grad here; Opacus' hooks are right to fire anyway
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss_fn(self.gsm(x), y).backward()
        grads = {n: p.grad_sample for n, p in zip(self.names, self.gsm._module.parameters(),
                                                   strict=True)}
        return _reduce(grads, quantity, vector, max_norm)


class FuncPeer:
    """``torch.func.vmap(grad(per-sample loss))`` over ``functional_call``."""

    def __init__(self, model: nn.Module) -> None:
        from torch.func import functional_call, grad, vmap

        self.model = model
        self.params = {n: p.detach() for n, p in model.named_parameters()}

        def one_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(self.model, params, (x.unsqueeze(0),))
            return loss_fn(out, y.unsqueeze(0))

        self.per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0))

    def __call__(self, x: Tensor, y: Tensor, quantity: str, vector: dict[str, Tensor],
                 max_norm: float) -> Tensor | dict[str, Tensor]:
        return _reduce(self.per_sample(self.params, x, y), quantity, vector, max_norm)


class Ours:
    """``fastunlearn.grad.PerSampleGradients`` on its own copy of the model."""

    def __init__(self, model: nn.Module) -> None:
        try:
            from fastunlearn.grad import PerSampleGradients
        except ImportError as exc:
            raise OpUnavailable(f"fastunlearn.grad.PerSampleGradients: {exc}") from exc
        self.engine = PerSampleGradients(copy.deepcopy(model), loss_reduction="sum")

    def __call__(self, x: Tensor, y: Tensor, quantity: str, vector: dict[str, Tensor],
                 max_norm: float) -> Tensor | dict[str, Tensor]:
        if quantity == "norms":
            return self.engine.sq_norms(x, y, loss_fn)
        if quantity == "dots":
            return self.engine.dots(x, y, loss_fn, vector)
        return self.engine.clipped_sum(x, y, loss_fn, max_norm)


def _flatten(result: Tensor | dict[str, Tensor]) -> Tensor:
    if isinstance(result, Tensor):
        return result
    return torch.cat([result[n].flatten() for n in sorted(result)])


class Plain:
    """One ordinary forward + backward of the batch (populates ``.grad``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model)

    def clear(self) -> None:
        """Drop ``.grad`` (set before every timed call)."""
        self.model.zero_grad(set_to_none=True)

    def __call__(self, x: Tensor, y: Tensor) -> None:
        loss_fn(self.model(x), y).backward()


def run_case(
    kind: str, impls: dict[str, Any], x: Tensor, y: Tensor, quantity: str,
    vector: dict[str, Tensor], max_norm: float, device: torch.device, **opts: Any,
) -> dict[str, Any]:
    """Check ours and Opacus against torch.func, then time all four; return the record."""
    ours, opacus, func, plain = (impls[k] for k in ("ours", "opacus", "func", "plain"))
    B = x.shape[0]
    args = (x, y, quantity, vector, max_norm)
    expected = _flatten(func(*args))
    what = f"{NAME} {kind} B={B} {quantity}"
    atol = scaled_atol(expected, 1e-5)
    check_close(_flatten(ours(*args)), expected, rtol=1e-3, atol=atol,
                what=what + " (ours vs torch.func)")
    opacus.clear()
    check_close(_flatten(opacus(*args)), expected, rtol=1e-3, atol=atol,
                what=what + " (opacus vs torch.func)")
    opacus.clear()
    res = compare(
        {"ours": lambda: ours(*args), "opacus": lambda: opacus(*args),
         "func": lambda: func(*args), "plain": lambda: plain(x, y)},
        device, memory="torch",
        setups={"opacus": opacus.clear, "plain": plain.clear}, **opts,
    )
    opacus.clear()
    plain.clear()
    t = {k: m.timing for k, m in res.items()}
    peak = {k: m.peak_bytes for k, m in res.items()}
    return {
        "model": kind, "B": B, "quantity": quantity, "dtype": str(x.dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in plain.model.parameters()),
        **{f"{k}_ms": t[k].ms for k in t},
        **{f"{k}_iqr_ms": t[k].iqr_ms for k in t},
        "ratio_opacus": ratio(t["opacus"].median, t["ours"].median),
        "ratio_func": ratio(t["func"].median, t["ours"].median),
        "ours_vs_plain": ratio(t["ours"].median, t["plain"].median),
        **{f"{k}_peak_mb": peak[k] / 2**20 for k in peak},
        # memory over the plain backward's: ``inf`` (out of memory) stays ``inf``
        **{f"{k}_mem_x": peak[k] / peak["plain"] if peak["plain"] > 0 else math.nan
           for k in ("ours", "opacus", "func")},
    }


def run(
    device: str | torch.device, quick: bool = False, *, preset: str | None = None
) -> list[dict[str, Any]]:
    """Run the sweep and return one record per (model, batch size, quantity).

    Args:
        device: ``cpu`` or ``cuda``.
        quick: Use the ``quick`` size preset (ignored when ``preset`` is given).
        preset: ``tiny``, ``quick`` or ``full``.

    Returns:
        Records with times (ms), ratios ``peer / ours`` and memory relative to a plain
        forward + backward.

    Raises:
        OpUnavailable: If the per-sample ops or the engine are not available.
        CorrectnessError: If ours disagrees with torch.func (or Opacus with torch.func).
    """
    dev = resolve_device(device)
    size = resolve_preset(quick, preset)
    for op in ("per_sample_sq_norm", "per_sample_dot", "per_sample_weighted_sum"):
        require_op(op, dev)
    side, tiny, batches = SIZES[size]
    opts = timing_options(size)
    with no_tf32():
        return [rec for kind in ("mlp", "cnn")
                for rec in _run_model(kind, side, tiny, batches, dev, **opts)]


def _run_model(
    kind: str, side: int, tiny: bool, batches: tuple[int, ...], dev: torch.device, **opts: Any
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = make_model(kind, side, tiny).to(dev)
    impls = {"ours": Ours(model), "opacus": OpacusPeer(model), "func": FuncPeer(model),
             "plain": Plain(model)}
    gen = torch.Generator().manual_seed(1)
    vector = {n: torch.randn(p.shape, generator=gen).to(dev)
              for n, p in model.named_parameters()}
    records = []
    for B in batches:
        x = torch.randn(B, 1, side, side, generator=gen).to(dev)
        y = torch.randint(0, 10, (B,), generator=gen).to(dev)
        # clip at the median norm, so that about half of the samples are clipped
        max_norm = float(impls["func"](x, y, "norms", vector, 1.0).sqrt().median())
        records.extend(run_case(kind, impls, x, y, q, vector, max_norm, dev, **opts)
                       for q in QUANTITIES)
    return records


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table(f"{NAME}: per-sample quantities vs Opacus hooks and torch.func "
                "(ratio > 1: ours faster; mem = peak / plain backward peak)", records, COLUMNS)
