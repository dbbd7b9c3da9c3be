"""Certified removal: our CertifiedLogisticRegression.remove vs the reference algorithm.

The **reference algorithm** is the removal loop of Guo et al.'s ``test_removal.py``,
re-implemented here from its description (certified_removal.md sections 5-7): for every
removal and every one-vs-rest class it rebuilds the ``d x d`` Hessian
``X_rem^T diag(sigma'(y X_rem w)) X_rem + lam n_rem I`` of the remaining rows in float32
(in 50,000-row blocks), inverts it with ``Tensor.inverse()`` (LU), multiplies the removed
point's gradient ``lam w + grad l(w.x_i, y_i)`` by it, takes the Newton step, and bounds
the gradient residual with ``||X_rem||_2`` from 20 power iterations on the downdated Gram
matrix ``X_rem^T X_rem``. Rows are removed in a fixed order, the remaining data being the
suffix of the permuted training set, as in the reference.

**Ours** is ``CertifiedLogisticRegression.remove`` (float64, TF32 off, exact
minimiser, conservative spectral norm) on the same rows in the same order, starting from
the same fitted weights, with the default solver (``auto``) and with ``solver="cg"``, each on
its own copy of the fitted model; on CUDA also (with ``solver="auto"``) the fixed-shape step
replayed as CUDA graphs (``ours_graph_*``, :mod:`fastunlearn.certified.fixed_step`; the default
there since 2026-11-28; runs of rows pipelined, :mod:`fastunlearn.certified.pipelined`), the
same with the row's quantities, its Woodbury column, the end of each CG step and the
pipelined commit fused into one op each (``ours_graph_fused_*``: ``certified_start_``,
``certified_woodbury_row_``, ``certified_cg_tail_``, ``certified_commit_``; the default since
they were measured on an H200, 2026-11-30, so ``auto`` times them too; the other graph
variants run without them), the same with glm_hvp's one-pass kernel for the products with the
Hessian (``ours_graph_fused_onepass_*``: ``FASTUNLEARN_GLM_HVP=onepass`` around that variant's
calls; opt-in until measured), row by row (``ours_graph_rowwise_*``: one
device read per row), row by row without the CG iteration chained into the start's graph
(``ours_graph_unchained_*``) and with the general step (``ours_general_*``). A failure of
one of these optional variants is recorded (``ours_<label>_error``), not fatal (on CUDA a
failure of the solver variants too, so that one GPU run still times the others). Before
timing, the weights after the timed removals must agree (the reference computes in float32,
so to about 1e-3 relative), and so must the change the removals made to the fitted weights
(to 2e-2 of the reference's change: at MNIST scale a few removals move the weights by less
than the first tolerance).

Cases: the bundled digits, ten classes one-vs-rest (n = 1438, d = 64, K = 10), and
synthetic MNIST-shaped data (unit-norm rows of ten Gaussian clusters, n = 60000, d = 784,
K = 10; 12000 rows in the quick preset). Reported: milliseconds and removals per second of
both, and ``ratio_reference = reference time / our time`` (> 1: ours faster). One untimed
warm-up removal precedes the timed ones on both sides. A removal changes the model, so it
cannot be repeated on the same state: each block of removals is timed once, the reference's
block and each of our variants' block of the same rows one after the other (interleaved, so
that load on a shared machine hits all alike), and the time per removal reported is the
median over the timed blocks (``*_mean_ms`` and ``*_mean_per_s``: the mean, which includes
the rare blocks that refresh the factors). Each block is ``BLOCK`` consecutive rows removed
sequentially by one call on each side (``remove(rows)``: one Newton step and bound per row);
after the reference's last removal ours go on in blocks of ``RUN_BLOCK`` rows per call.
On CUDA at the full size ours remove ``CUDA_FULL_REMOVALS`` rows (past two refreshes).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bench.common import (
    CorrectnessError,
    check_close,
    kept_glm_hvp_kernel,
    no_tf32,
    print_table,
    ratio,
    require_op,
    resolve_device,
    resolve_preset,
    scaled_atol,
    select_glm_hvp_kernel,
    synchronize,
)

NAME = "certified"
LAM = 1e-3
#: Rows per block when the reference accumulates its Hessian.
REFERENCE_BLOCK = 50_000
POWER_ITERATIONS = 20
#: Relative agreement required between the two weight matrices after the removals.
WEIGHT_RTOL = 2e-3
#: Relative agreement required between the two changes of the weights made by the removals
#: (ours against the reference's, relative to its largest entry; the float32 reference left
#: at most 2e-3 of it in the quick and tiny cases).
UPDATE_RTOL = 2e-2
#: Removals per timed block while the reference removes too: it and each of our variants
#: remove the same block of rows in turn, each with one call.
BLOCK = 5
#: Removals per timed block (one call) of ours after the reference's last: long enough that
#: the CUDA path's pipelined runs (:mod:`fastunlearn.certified.pipelined`) fill their windows.
RUN_BLOCK = 50
#: Our solvers timed: the default (``auto``: Cholesky up to 2048 features) and CG.
SOLVERS = ("auto", "cg")

#: Our timed removals per case at the full size on CUDA: past two refreshes of the factors
#: (the Woodbury buffers hold 256 rows), so ``*_mean_*`` includes what they cost.
CUDA_FULL_REMOVALS = 600

#: preset -> cases: (name, n, d, K, timed removals of ours, timed removals of the reference)
CASES: dict[str, tuple[tuple[str, int, int, int, int, int], ...]] = {
    "tiny": (("synthetic", 400, 32, 3, 4, 2), ("digits-ovr", 0, 64, 10, 2, 1)),
    "quick": (("digits-ovr", 0, 64, 10, 20, 10), ("synthetic", 12_000, 784, 10, 5, 2)),
    "full": (("digits-ovr", 0, 64, 10, 50, 20), ("synthetic", 60_000, 784, 10, 100, 5)),
}

COLUMNS = [
    ("case", "case", "s"),
    ("n", "n", "d"),
    ("d", "d", "d"),
    ("K", "K", "d"),
    ("ours_ms", "ours ms", ".2f"),
    ("ours_per_s", "ours removals/s", ".1f"),
    ("reference_ms", "reference ms", ".1f"),
    ("reference_per_s", "ref removals/s", ".2f"),
    ("ratio_reference", "ref/ours", ".1f"),
    ("ours_cg_ms", "ours CG ms", ".2f"),
    ("ratio_reference_cg", "ref/ours CG", ".1f"),
    ("ours_graph_ms", "ours graphs ms", ".2f"),
    ("ours_graph_per_s", "graphs removals/s", ".0f"),
    ("ours_general_per_s", "general step removals/s", ".0f"),
    ("weight_rel_diff", "W rel diff", ".1e"),
    ("ours_bound", "ours bound", ".2e"),
    ("reference_bound", "ref bound", ".2e"),
]


# ---------------------------------------------------------------------------------------
# data


def synthetic_data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm rows of ``k`` Gaussian clusters (MNIST-like shape), labels ``0..k-1``."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=gen)
    X = centers[labels] + 1.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    X = X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
    return X.numpy(), labels.numpy()


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits' training rows (unit norm), ten classes."""
    from fastunlearn.data import load_digits_dataset

    split = load_digits_dataset()
    return split.X_train.numpy(), split.y_train.numpy()


def removal_order(n: int, count: int, seed: int = 0) -> np.ndarray:
    """The first ``count`` rows of a seeded permutation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].numpy()


# ---------------------------------------------------------------------------------------
# the reference algorithm


def _reference_spectral_norm(gram: torch.Tensor, gen: torch.Generator) -> float:
    """``sqrt(lambda_max(gram))`` estimated by power iteration from a random start."""
    x = torch.randn(gram.shape[0], generator=gen, dtype=gram.dtype).to(gram.device)
    x = x / x.norm()
    for _ in range(POWER_ITERATIONS):
        y = gram @ x
        x = y / y.norm()
    return float((gram @ x).norm().sqrt())


def _reference_hessian(X_rem: torch.Tensor, y_rem: torch.Tensor, w: torch.Tensor,
                       lam: float) -> torch.Tensor:
    """The explicit Hessian on the remaining rows, accumulated over row blocks."""
    d = X_rem.shape[1]
    H = torch.zeros(d, d, dtype=X_rem.dtype, device=X_rem.device)
    for start in range(0, X_rem.shape[0], REFERENCE_BLOCK):
        Xb = X_rem[start:start + REFERENCE_BLOCK]
        s = torch.sigmoid(y_rem[start:start + REFERENCE_BLOCK] * (Xb @ w))
        H += Xb.T @ ((s * (1 - s))[:, None] * Xb)
    return H + lam * X_rem.shape[0] * torch.eye(d, dtype=X_rem.dtype, device=X_rem.device)


def reference_remove(X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor, lam: float,
                     start: int, count: int, state: dict[str, Any]) -> list[float]:
    """Remove rows ``start .. start+count-1`` of the permuted ``X`` with the reference steps.

    Args:
        X: ``[n, d]`` float32 rows in removal order (the remaining data after removing row
            ``i`` is ``X[i+1:]``).
        Y: ``[n, K]`` labels in {-1, +1} (one column per one-vs-rest class).
        W: ``[d, K]`` float32 weights, updated in place.
        lam: L2 regularisation per row.
        start: First row to remove.
        count: Rows to remove.
        state: Holds the downdated Gram matrix ``gram`` and the power-iteration generator.

    Returns:
        The data-dependent bound of every removal (summed over the classes).
    """
    bounds = []
    for i in range(start, start + count):
        x_i = X[i]
        state["gram"] -= torch.outer(x_i, x_i)
        X_rem, Y_rem = X[i + 1:], Y[i + 1:]
        total = 0.0
        for k in range(W.shape[1]):
            w = W[:, k]
            margin = Y[i, k] * (x_i @ w)
            grad = lam * w - Y[i, k] * torch.sigmoid(-margin) * x_i
            H_inv = _reference_hessian(X_rem, Y_rem[:, k], w, lam).inverse()
            step = H_inv @ grad
            spec = _reference_spectral_norm(state["gram"], state["gen"])
            total += float(step.norm() * (X_rem @ step).norm()) * spec / 4
            W[:, k] += step
        bounds.append(total)
    return bounds


# ---------------------------------------------------------------------------------------
# one case


def _ovr_signs(labels: np.ndarray, k: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.where(labels == c, 1.0, -1.0) for c in range(k)], 1))


def _time(fn: Any, device: torch.device) -> tuple[float, Any]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def _clone(model: Any) -> Any:
    """An independent copy of a fitted model (its state round-tripped, tensors copied)."""
    tensors, meta = model.get_state()
    return type(model).from_state({k: v.clone() for k, v in tensors.items()},
                                   copy.deepcopy(meta))


def _timed(fn: Any, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def _check_weights(model: Any, W_ref: torch.Tensor, W0: torch.Tensor, what: str) -> float:
    """Check our weights against the reference's; return the max relative difference.

    Two checks: the weights themselves (to ``WEIGHT_RTOL`` of their largest entry) and the
    change the removals made from the fitted ``W0`` (to ``UPDATE_RTOL`` of the reference's
    largest change). The first alone cannot see a wrong removal at MNIST scale: there a few
    removals move the weights by less than ``WEIGHT_RTOL`` (about 8e-4 of the largest weight
    after three removals at n = 12000), so a removal that did nothing would pass it.
    """
    W_ours = torch.as_tensor(np.asarray(model.coef_)).T.to(torch.float64)
    W_ref64 = W_ref.detach().to("cpu", torch.float64)
    W0 = W0.detach().to("cpu", torch.float64)
    rel_diff = float((W_ref64 - W_ours).abs().max() / W_ours.abs().max())
    check_close(W_ref64, W_ours, rtol=0.0, atol=scaled_atol(W_ours, WEIGHT_RTOL), what=what)
    ref_update = W_ref64 - W0.float().double()  # the reference started from W0 in float32
    check_close(W_ours - W0, ref_update, rtol=0.0, atol=scaled_atol(ref_update, UPDATE_RTOL),
                what=what + " (change from the fitted weights)")
    return rel_diff


def variants(device: torch.device) -> list[tuple[str, str | None, str]]:
    """``(solver, fixed-step mode or None, label)`` of each of our timed variants."""
    out: list[tuple[str, str | None, str]] = [(solver, None, solver) for solver in SOLVERS]
    if device.type == "cuda":  # the graphs (the default there), row by row, unchained, general
        # with the default solver: "cg" alone never refreshes its factors, so past the
        # Woodbury capacity (WOODBURY_MAX_ROWS) every row takes the general step and the
        # fixed-step modes would not be compared (H200, 2026-11-30: all ~246/s with "cg")
        out += [("auto", "graph", "graph"), ("auto", "graph-rowwise", "graph_rowwise"),
                ("auto", "graph-unchained", "graph_unchained"), ("auto", "off", "general")]
        # last: the fused ops' kernels are the newest; FASTUNLEARN_BENCH_NO_FUSED=1 (set by
        # bench/device_run.sh when their CUDA tests fail) leaves them out
        if os.environ.get("FASTUNLEARN_BENCH_NO_FUSED") != "1":
            out.append(("auto", "graph-fused", "graph_fused"))
            # the same with glm_hvp's one-pass kernel (FASTUNLEARN_GLM_HVP=onepass, opt-in
            # until measured); FASTUNLEARN_BENCH_NO_ONEPASS=1 leaves it out
            if os.environ.get("FASTUNLEARN_BENCH_NO_ONEPASS") != "1":
                out.append(("auto", "graph-fused", "graph_fused_onepass"))
    return out


@contextlib.contextmanager
def hvp_kernel_for(label: str) -> Iterator[None]:
    """Select glm_hvp's CUDA kernel for a variant's calls: the one-pass kernel for labels
    ending in ``_onepass`` (``FASTUNLEARN_GLM_HVP=onepass``), the two GEMMs otherwise; the
    variable's previous value is restored afterwards. A CUDA graph keeps the kernel it was
    captured with, so the variant's first removal (which captures) must run inside too."""
    with kept_glm_hvp_kernel():
        select_glm_hvp_kernel(label.endswith("_onepass"))
        yield


def configure(model: Any, fixed_step: str) -> None:
    """Set a variant's fixed-step mode on ``model``.

    ``"graph-rowwise"``: the graphs with the row-by-row loop (no pipelined runs);
    ``"graph-unchained"``: row by row, without the CG iteration chained into the start;
    ``"graph-fused"``: pipelined, with the row's quantities (``certified_start_``), its
    Woodbury column (``certified_woodbury_row_``), the end of each CG step
    (``certified_cg_tail_``) and the guarded commit (``certified_commit_``) as one op each.
    A ``"-onepass"`` suffix changes nothing here (:func:`hvp_kernel_for` selects the kernel).
    """
    mode, _, how = fixed_step.removesuffix("-onepass").partition("-")
    model._fixed_step_mode = mode
    model._pipeline_removals = how in ("", "fused")
    model._chain_iterations = how != "unchained"
    for switch in ("_fused_start", "_fused_woodbury", "_fused_cg_tail", "_fused_commit"):
        setattr(model, switch, how == "fused")


def blocks(ours_count: int, ref_count: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each timed block of removals (row 0 of the order is the warm-up).

    Blocks of ``BLOCK`` rows while the reference removes too, then of ``RUN_BLOCK`` rows.
    """
    out, lo, end = [], 1, max(ours_count, ref_count) + 1
    while lo < end:
        hi = min(lo + BLOCK, ref_count + 1) if lo <= ref_count else min(lo + RUN_BLOCK, end)
        out.append((lo, hi))
        lo = hi
    return out


def run_case(name: str, n: int, d: int, k: int, ours_count: int, ref_count: int,
             device: torch.device, lenient: bool | None = None) -> dict[str, Any]:
    """Fit once, then time the removal loops on the same rows, interleaved; return the record.

    Each block of ``BLOCK`` rows is removed by the reference and then by each of our variants
    (one call each), so that load on a shared machine hits all of them alike; the reported
    time per removal is the median over the blocks.
    """
    from fastunlearn.certified import CertifiedLogisticRegression

    X, labels = digits_data() if name == "digits-ovr" else synthetic_data(n, d, k)
    n = X.shape[0]
    if ours_count < ref_count:
        raise ValueError("the weights are compared after the reference's removals: "
                         "ours_count must be >= ref_count")
    total = 1 + max(ours_count, ref_count)  # one warm-up removal, then the timed ones
    order = removal_order(n, total)
    # a budget no removal can exhaust: this measures removals, not retraining
    model = CertifiedLogisticRegression(lam=LAM, sigma=1.0, epsilon=1e12, delta=1e-4,
                                        train_mode="ovr", retrain=False, device=str(device))
    fit_s, _ = _time(lambda: model.fit(X, labels), device)
    W0 = torch.as_tensor(np.asarray(model.coef_)).T.contiguous()  # [d, K], float64

    # reference: permuted float32 rows, weights from our (exact) fit
    perm = np.concatenate([order, np.setdiff1d(np.arange(n), order)])
    X32 = torch.from_numpy(X[perm]).float().to(device)
    Y32 = _ovr_signs(labels[perm], k).float().to(device)
    W_ref = W0.float().to(device)
    state = {"gram": X32.T @ X32, "gen": torch.Generator().manual_seed(0)}
    ref_bounds = reference_remove(X32, Y32, W_ref, LAM, 0, 1, state)  # warm-up

    ours: dict[str, Any] = {}
    failed: dict[str, str] = {}
    # on CUDA a failing solver variant is recorded too, so that one run on a scarce GPU
    # still times the others (the solvers run the CUDA path's default loop there)
    lenient = device.type == "cuda" if lenient is None else lenient
    for solver, fixed_step, label in variants(device):
        m = _clone(model)
        m.set_params(solver=solver)
        if fixed_step is not None:  # the single-row CG step as replayed CUDA graphs
            configure(m, fixed_step)
        try:
            with hvp_kernel_for(label):
                m.remove(int(order[0]))  # warm-up
        except Exception as err:  # noqa: BLE001 - an optional variant must not sink the case
            if fixed_step is None and not lenient:
                raise
            failed[label] = f"{type(err).__name__}: {err}"
            continue
        ours[label] = m
    ref_times: list[float] = []  # seconds per removal, one entry per block
    times: dict[str, list[float]] = {label: [] for label in ours}
    bounds: dict[str, list[float]] = {label: [] for label in ours}
    rel_diffs: dict[str, float] = {}
    for lo, hi in blocks(ours_count, ref_count):
        if lo <= ref_count:
            ref_times.append(_timed(
                lambda lo=lo, hi=hi: ref_bounds.extend(
                    reference_remove(X32, Y32, W_ref, LAM, lo, hi - lo, state)), device)
                / (hi - lo))
        for label, m in ours.items():
            if lo <= ours_count:
                # the same rows as the reference's block (up to its last removal), one call
                rows = [int(i) for i in order[lo : min(hi, ours_count + 1)]]
                reports: list[Any] = []
                if label in failed:
                    continue
                try:
                    with hvp_kernel_for(label):
                        times[label].append(_timed(
                            lambda m=m, rows=rows, reports=reports: reports.append(
                                m.remove(rows)), device) / len(rows))
                except Exception as err:  # noqa: BLE001 - see the warm-up
                    if label in SOLVERS and not lenient:
                        raise
                    failed[label] = f"{type(err).__name__}: {err}"
                    continue
                records = reports[0].records
                if any(r.retrained for r in records):
                    raise CorrectnessError(f"{NAME} {name} {label}: our model retrained "
                                           "during the benchmark")
                bounds[label].extend(float(r.bound) for r in records)
                if lo <= ref_count and hi == ref_count + 1:
                    try:
                        rel_diffs[label] = _check_weights(
                            m, W_ref, W0,
                            f"{NAME} {name} {label}: weights after {1 + ref_count} removals")
                    except CorrectnessError as err:
                        if label in SOLVERS and not lenient:
                            raise
                        failed[label] = f"CorrectnessError: {err}"
    ref_per = statistics.median(ref_times)
    record: dict[str, Any] = {
        "case": name, "n": n, "d": X.shape[1], "K": k, "lam": LAM, "fit_s": fit_s,
        "ours_removals": ours_count, "reference_removals": ref_count,
        "reference_ms": ref_per * 1e3, "reference_per_s": 1.0 / ref_per,
        "reference_bound": float(np.mean(ref_bounds[1:1 + ref_count])),
    }
    for label, err in failed.items():
        record[f"ours_{label}_error"] = err
        print(f"  {name} {label}: failed ({err})")
    for label, m in ours.items():
        if label in failed:
            continue
        per = statistics.median(times[label])
        key = "ours" if label == "auto" else f"ours_{label}"
        suffix = "" if label == "auto" else f"_{label}"
        fixed = getattr(m, "_fixed", None)
        if label == "graph":  # whether the removals replayed graphs (capture may fall back)
            record["ours_graph_replayed"] = bool(fixed is not None and fixed.use_graphs
                                                 and fixed.graphs)
        record.update({
            f"{key}_ms": per * 1e3, f"{key}_per_s": 1.0 / per,
            f"{key}_mean_ms": float(np.mean(times[label])) * 1e3,
            f"{key}_mean_per_s": 1.0 / float(np.mean(times[label])),
            f"ratio_reference{suffix}": ratio(ref_per, per),
            f"weight_rel_diff{suffix}": rel_diffs[label],
            # mean per-removal bound over the removals both made (ours: conservative norm)
            f"{key}_bound": float(np.mean(bounds[label][:ref_count])),
        })
    return record


def run(
    device: str | torch.device, quick: bool = False, *, preset: str | None = None
) -> list[dict[str, Any]]:
    """Run every case of the preset and return one record per case.

    Args:
        device: ``cpu`` or ``cuda``.
        quick: Use the ``quick`` preset (ignored when ``preset`` is given).
        preset: ``tiny``, ``quick`` or ``full``.

    Returns:
        Records with per-removal times (ms), removals per second and
        ``ratio_reference`` (reference time / ours).

    Raises:
        OpUnavailable: If the GLM ops are not compiled for ``device``.
        CorrectnessError: If the weights after the removals disagree (on CUDA: recorded as
            the variant's error instead).
    """
    dev = resolve_device(device)
    size = resolve_preset(quick, preset)
    for op in ("glm_hvp", "glm_hessian", "glm_cg"):
        require_op(op, dev)
    with no_tf32():
        cases = CASES[size]
        if dev.type == "cuda" and size == "full":
            cases = tuple((*c[:4], max(c[4], CUDA_FULL_REMOVALS), c[5]) for c in cases)
        return [run_case(*case, device=dev) for case in cases]


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table(f"{NAME}: removals, ours (float64) vs the reference algorithm (float32 "
                f"Hessian + inverse per removal), lam={LAM} (ref/ours > 1: ours faster)",
                records, COLUMNS)
    for rec in records:
        if "ours_cg_per_s" in rec and math.isfinite(rec.get("ratio_reference", math.nan)):
            print(f"  {rec['case']}: ours {rec['ours_per_s']:.1f} (auto), "
                  f"{rec['ours_cg_per_s']:.1f} (cg) vs reference {rec['reference_per_s']:.2f} "
                  f"removals/s ({rec['ratio_reference']:.1f}x, {rec['ratio_reference_cg']:.1f}x)")
        if "ours_graph_per_s" in rec:
            print(f"  {rec['case']}: fixed-shape step without the fused ops "
                  f"{rec['ours_graph_per_s']:.1f} removals/s "
                  f"(median block; {rec['ours_graph_mean_per_s']:.1f} over all "
                  f"{rec['ours_removals']} removals; CUDA graphs replayed: "
                  f"{rec.get('ours_graph_replayed')}), {rec['ratio_reference_graph']:.1f}x the "
                  "reference")
        if "ours_graph_fused_per_s" in rec:
            print(f"  {rec['case']}: with the fused ops (start, Woodbury row, CG tail, commit) "
                  f"{rec['ours_graph_fused_per_s']:.1f} removals/s (median block)")
        if "ours_graph_fused_onepass_per_s" in rec:
            print(f"  {rec['case']}: with the fused ops and glm_hvp's one-pass kernel "
                  f"{rec['ours_graph_fused_onepass_per_s']:.1f} removals/s (median block)")
        if "ours_graph_rowwise_per_s" in rec:
            print(f"  {rec['case']}: row by row (no pipelined runs) "
                  f"{rec['ours_graph_rowwise_per_s']:.1f} removals/s (median block)")
        if "ours_graph_unchained_per_s" in rec:
            print(f"  {rec['case']}: without the chained iteration "
                  f"{rec['ours_graph_unchained_per_s']:.1f} removals/s (median block)")
