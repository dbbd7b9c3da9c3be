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
* **opacus ghost**: ``GradSampleModuleFastGradientClipping`` with ghost clipping, Opacus'
  fastest path for exactly these two quantities (``norms`` and ``clipped_sum``; it offers no
  per-sample dot products): norms from activations and output gradients without
  materialising, then the clipped sum as a second backward of the reweighted losses, the
  two-pass recipe of Opacus' own ``DPLossFastGradientClipping``;
* **torch.func**: ``vmap(grad(loss))`` over ``functional_call`` (materialises too);
* **plain**: one ordinary forward + backward of the same batch (the cost floor).

Times are medians per call, every implementation timed one call per sample (the Opacus
peers and the plain backward clear their gradients before each call); ``*_mem_x`` is the
peak memory of a call divided by the peak memory of the plain forward + backward (see
``bench/common.py`` for what is measured).
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
#: what Opacus' ghost clipping computes (it has no per-sample dot products)
GHOST_QUANTITIES = ("norms", "clipped_sum")

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
    ("ghost_ms", "ghost ms", ".2f"),
    ("func_ms", "func ms", ".2f"),
    ("plain_ms", "plain ms", ".2f"),
    ("ratio_opacus", "opacus/ours", ".2f"),
    ("ratio_ghost", "ghost/ours", ".2f"),
    ("ratio_func", "func/ours", ".2f"),
    ("ours_vs_plain", "ours/plain", ".2f"),
    ("ours_mem_x", "ours mem", ".2f"),
    ("opacus_mem_x", "opacus mem", ".2f"),
    ("ghost_mem_x", "ghost mem", ".2f"),
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


class OpacusGhostPeer:
    """Opacus ghost clipping (``GradSampleModuleFastGradientClipping``) on its own copy.

    Supports ``norms`` and ``clipped_sum`` only (:data:`GHOST_QUANTITIES`).
    """

    def __init__(self, model: nn.Module) -> None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping

        self.gsm = GradSampleModuleFastGradientClipping(
            copy.deepcopy(model), batch_first=True, loss_reduction="sum",
            max_grad_norm=1.0, use_ghost_clipping=True)
        self.named = list(self.gsm._module.named_parameters())

    def clear(self) -> None:
        """Drop ``.grad`` (set before every timed call)."""
        self.gsm.zero_grad(set_to_none=True)

    def __call__(self, x: Tensor, y: Tensor, quantity: str, vector: dict[str, Tensor],
                 max_norm: float) -> Tensor | dict[str, Tensor]:
        if quantity not in GHOST_QUANTITIES:
            raise ValueError(f"opacus ghost clipping has no {quantity!r}")
        with warnings.catch_warnings():
            # inputs never require grad here; Opacus' hooks are right to fire anyway
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses = F.cross_entropy(self.gsm(x), y, reduction="none")
            # first pass: per-sample norms from the hooks (the parameters' .grad is dropped)
            losses.sum().backward(retain_graph=quantity == "clipped_sum")
            sq = self.gsm.get_norm_sample().pow(2)
            if quantity == "norms":
                return sq
            self.gsm.max_grad_norm = max_norm
            coef = self.gsm.get_clipping_coef()
            self.gsm.zero_grad(set_to_none=True)
            self.gsm.disable_hooks()
            try:  # second pass: the reweighted losses, hooks off
                (losses * coef).sum().backward()
            finally:
                self.gsm.enable_hooks()
        return {n: p.grad for n, p in self.named}


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


def _no_setup() -> None:
    """An untimed set-up that does nothing (it makes :func:`compare` time one call per sample)."""


def run_case(
    kind: str, impls: dict[str, Any], x: Tensor, y: Tensor, quantity: str,
    vector: dict[str, Tensor], max_norm: float, device: torch.device, **opts: Any,
) -> dict[str, Any]:
    """Check ours and the Opacus peers against torch.func, then time all; return the record.

    Opacus' ghost clipping runs only for :data:`GHOST_QUANTITIES`; the other records have
    no ``ghost_*`` / ``ratio_ghost`` fields.
    """
    ours, func, plain = impls["ours"], impls["func"], impls["plain"]
    peers = {"opacus": impls["opacus"]}
    if quantity in GHOST_QUANTITIES:
        peers["ghost"] = impls["ghost"]
    B = x.shape[0]
    args = (x, y, quantity, vector, max_norm)
    expected = _flatten(func(*args))
    what = f"{NAME} {kind} B={B} {quantity}"
    atol = scaled_atol(expected, 1e-5)
    check_close(_flatten(ours(*args)), expected, rtol=1e-3, atol=atol,
                what=what + " (ours vs torch.func)")
    for name, peer in peers.items():
        peer.clear()
        check_close(_flatten(peer(*args)), expected, rtol=1e-3, atol=atol,
                    what=what + f" ({name} vs torch.func)")
        peer.clear()
    calls = {"ours": lambda: ours(*args), "func": lambda: func(*args),
             "plain": lambda: plain(x, y)}
    calls.update({name: (lambda p=peer: p(*args)) for name, peer in peers.items()})
    # the Opacus peers and the plain backward clear their gradients before each call, which
    # makes them run one call per sample; ours and torch.func get a no-op set-up so that they
    # do too (batched alone, their launch gaps would be hidden and the peers' not)
    res = compare(calls, device, memory="torch",
                  setups={"ours": _no_setup, "func": _no_setup, "plain": plain.clear,
                          **{n: p.clear for n, p in peers.items()}},
                  **opts)
    for peer in peers.values():
        peer.clear()
    plain.clear()
    t = {k: m.timing for k, m in res.items()}
    peak = {k: m.peak_bytes for k, m in res.items()}
    return {
        "model": kind, "B": B, "quantity": quantity, "dtype": str(x.dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in plain.model.parameters()),
        **{f"{k}_ms": t[k].ms for k in t},
        **{f"{k}_iqr_ms": t[k].iqr_ms for k in t},
        **{f"ratio_{k}": ratio(t[k].median, t["ours"].median) for k in (*peers, "func")},
        "ours_vs_plain": ratio(t["ours"].median, t["plain"].median),
        **{f"{k}_peak_mb": peak[k] / 2**20 for k in peak},
        # memory over the plain backward's: ``inf`` (out of memory) stays ``inf``; nan where
        # the plain backward's own peak is not a positive finite number (0 / inf would read
        # as no memory at all)
        **{f"{k}_mem_x": peak[k] / peak["plain"]
           if math.isfinite(peak["plain"]) and peak["plain"] > 0 else math.nan
           for k in ("ours", *peers, "func")},
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
        CorrectnessError: If ours (or an Opacus peer) disagrees with torch.func.
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
    impls = {"ours": Ours(model), "opacus": OpacusPeer(model), "ghost": OpacusGhostPeer(model),
             "func": FuncPeer(model), "plain": Plain(model)}
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
    print_table(f"{NAME}: per-sample quantities vs Opacus (hooks, ghost clipping) and "
                "torch.func (ratio > 1: ours faster; mem = peak / plain backward peak)",
                records, COLUMNS)
