"""Second-order influence repair: our CG (network HVP + fused cg_update_) vs the reference's LiSSA.

Part 1, **solver** (``solver`` records): the reference's CIFAR setting, a 1.8M-parameter
CNN (the reference's ``VGG_CIFAR10``: ``fastunlearn.models.build_model("cifar_cnn")``, or
the same architecture defined here when the zoo of this checkout lacks it), synthetic
CIFAR-shaped inputs (``[N, 3, 32, 32]`` uniform pixels, random labels), ``steps`` repair
steps of ``points`` relabelled training points each, for the last 6 parameter tensors as
the reference does. Each step relabels its own rows of the original labels and is solved on
the unchanged model, and its step is not applied (applied steps of this random network
saturated it after one unconverged step, leaving every later system trivial; until
2026-11-30). Both solvers run on the same model, in the same process; per step, CG's
iterations are recorded (``ours_iterations``, ``ours_iterations_max``,
``ours_converged_steps``):

* **ours**: CG on ``(C + lambda I) x = G``, ``C`` the generalised Gauss-Newton matrix (PSD, so
  CG cannot break down; the Hessian of a network away from a minimum is indefinite and CG on
  it diverged in the first GPU run) of ``cg_subsample`` training rows drawn once per step and
  weighted ``n / cg_subsample`` (``influence_update(curvature_subsample=...)``: an unbiased
  estimate of the full-data matrix; LiSSA likewise sees one 1024-row batch per product),
  ``lambda = d * s`` (the reference's LiSSA d s = 20), stopping on the true residual of
  that system (tolerance ``CG_TOL``) or at ``cg_maxiter``. Its residual against the
  full-data Gauss-Newton system is also reported (``ours_full_residual``, untimed);
* **lissa**: the reference's LiSSA (batch 1024, d = 1e-4, s = 2e5, ``lissa_depth`` steps,
  1 repetition, summed batch Hessians: ``LissaSettings(hessian="batch")``).

The two do **not** target the same system when ``n`` exceeds LiSSA's batch. LiSSA multiplies
by summed Hessians of one batch, so with ``k = ceil(n / lissa_batch)`` batches per pass it
estimates ``k (H + k d s I)^{-1} G``: damping ``k d s`` relative to the full-data H, and a
step k times that damped Newton step (k = 10 at the ``full`` size, 49 for the reference's
CIFAR run). CG solves ``(C + d s I) x = G``.

One record per part, with ``ours_*`` (CG) and ``lissa_*`` keys and ``ratio_lissa`` = LiSSA
time / CG time. Reported per solver: total wall time of the updates, per-sample gradients
and HVPs actually evaluated, the mean true relative residual of each solver's own system
(one extra full-data product per step, not timed): CG's ``||(C + d s I) x - G|| / ||G||``
on its kept rows, LiSSA's ``||(H + k d s I) (x / k) - G|| / ||G||``
(``UpdateResult.damping`` and ``step_scale``), and diverged steps.

Part 2, **repair** (``repair seed S`` records): % restored of both solvers on the embedded
digits (``small_cnn``, 20 % labels flipped s -> 9 - s), one-shot on the known flipped rows,
with the generalised Gauss-Newton curvature, CG damping 100 and LiSSA d s = 100. The
dampings are *not* the same relative to the full-data matrix: LiSSA's 256-row batches give
k = ceil(N / 256) batches per pass (k = 6 on the 1438 digits training rows), so LiSSA's
damping is 600 and its step is 6 times the step of that more damped system. Runs cover
each seed of ``digits_seeds`` (poisoning, training and LiSSA's batches): the training seed
moves both numbers a lot, so a ``repair median`` record gives the medians over the seeds
(``restored_vs_lissa`` there is the median of the per-seed ratios). Beside the ratio of
the shares restored, ``damage_left_lissa_vs_ours`` = ``(1 - LiSSA's share) / (1 - ours)``:
how many times more of the poisoning's damage (clean minus poisoned accuracy) LiSSA leaves
than CG. It is the telling comparison where LiSSA restores more than half (twice its share
would exceed 100 %); infinite when CG restores all of it.

No peer library is timed: MU (TensorFlow) is not installed; its published numbers are in
``reference/influence_updates.md`` section 5.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any

import torch
from torch import nn

from bench.common import (
    no_tf32,
    print_table,
    ratio,
    resolve_device,
    resolve_preset,
    synchronize,
)

NAME = "influence"

#: preset -> sizes. ``filters`` 128 gives the reference's 1,798,282 parameters.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(filters=8, n=128, steps=1, points=16, hvp_batch=128, lissa_batch=32,
                 lissa_depth=3, cg_maxiter=3, cg_subsample=64, digits_epochs=3, digits_n=300,
                 digits_seeds=(42,)),
    "quick": dict(filters=16, n=256, steps=2, points=64, hvp_batch=256, lissa_batch=128,
                  lissa_depth=10, cg_maxiter=24, cg_subsample=128, digits_epochs=30,
                  digits_n=0, digits_seeds=(42, 43, 44)),
    "full": dict(filters=128, n=10240, steps=10, points=1024, hvp_batch=1024, lissa_batch=1024,
                 lissa_depth=100, cg_maxiter=30, cg_subsample=2048, digits_epochs=100,
                 digits_n=0, digits_seeds=(42, 43, 44)),
}

# CG's budget at full size: at most 30 products on 2048 rows per step, 60 % of the
# sample-products of LiSSA's 100 steps on 1024-row batches. A CG product on one kept batch
# runs only the selected (last) layers (see GGNOperator), a LiSSA product the whole network
# on a fresh batch.

#: The reference's LiSSA settings for CIFAR (configs/unlearn.json).
LISSA_DAMPING, LISSA_SCALE = 1e-4, 2e5
CG_TOL = 1e-4
#: Damping of the digits comparison (CG: the experiment's default; LiSSA: d s relative to
#: one summed 256-row batch Hessian, i.e. ceil(N / 256) * 100 relative to the full data)
#: and LiSSA's scale, batch and depth.
DIGITS_DAMPING, DIGITS_LISSA_SCALE, DIGITS_LISSA_BATCH, DIGITS_LISSA_DEPTH = 100.0, 2e4, 256, 200

COLUMNS = [
    ("part", "part", "s"),
    ("params", "params", "d"),
    ("updated", "updated", "d"),
    ("ours_ms", "ours ms", ".1f"),
    ("lissa_ms", "LiSSA ms", ".1f"),
    ("ratio_lissa", "LiSSA/CG time", ".2f"),
    ("ours_num_hvps", "ours HVPs", "d"),
    ("ours_iterations_max", "CG its max", "d"),
    ("ours_converged_steps", "CG converged", "d"),
    ("lissa_num_hvps", "LiSSA HVPs", "d"),
    ("ours_residual", "CG rel. res.", ".3g"),
    ("ours_full_residual", "CG full-data res.", ".3g"),
    ("lissa_residual", "LiSSA rel. res.", ".3g"),
    ("acc_poisoned", "acc before", ".4f"),
    ("acc_clean", "acc clean", ".4f"),
    ("ours_restored", "CG % restored", ".1%"),
    ("lissa_restored", "LiSSA % restored", ".1%"),
    ("restored_vs_lissa", "restored CG/LiSSA", ".2f"),
    ("damage_left_lissa_vs_ours", "damage left LiSSA/CG", ".2f"),
]


def _pair(part: str, ours: dict[str, Any], lissa: dict[str, Any],
          shared: dict[str, Any]) -> dict[str, Any]:
    """One record comparing our CG run with the LiSSA run (``ours_*`` / ``lissa_*`` keys)."""
    rec: dict[str, Any] = {"part": part, **shared}
    for prefix, out in (("ours", ours), ("lissa", lissa)):
        rec[f"{prefix}_ms"] = out["seconds"] * 1e3
        for key, value in out.items():
            if key != "seconds":
                rec[f"{prefix}_{key}"] = value
    rec["ratio_lissa"] = ratio(rec["lissa_ms"], rec["ours_ms"])
    return rec


def reference_cnn(filters: int = 128, num_classes: int = 10) -> nn.Module:
    """The reference CNN, from the zoo if it has ``cifar_cnn``, else defined here (same layers)."""
    from fastunlearn.models import MODELS, build_model

    if "cifar_cnn" in MODELS:
        return build_model("cifar_cnn", num_classes=num_classes, filters=filters)
    layers: list[nn.Module] = []
    channels = 3
    for drop in (0.1, 0.1, 0.2):
        for _ in range(2):
            layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU(),
                       nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01)]
            channels = filters
        layers += [nn.MaxPool2d(2), nn.Dropout(drop)]
    layers += [nn.Flatten(), nn.Linear(16 * filters, 512), nn.ReLU(),
               nn.BatchNorm1d(512, eps=1e-3, momentum=0.01), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def _solver_run(model: nn.Module, X: torch.Tensor, y: torch.Tensor, sizes: dict[str, Any],
                solver: str, dev: torch.device) -> dict[str, Any]:
    from fastunlearn.influence import LissaSettings, influence_update, last_parameters

    names = last_parameters(model, 6)
    gen = torch.Generator().manual_seed(0)
    # CG's damping: LiSSA's d s. LiSSA itself damps k = ceil(n / lissa_batch) times more
    # relative to the full data (summed batch Hessians; see the module docstring).
    lam = LISSA_DAMPING * LISSA_SCALE
    seconds, hvps, grads, residuals, full_residuals, diverged = 0.0, 0, 0, [], [], 0
    iterations, converged = [], 0
    # Every step is solved on the unchanged model and not applied. Applying them (as until
    # 2026-11-30) let one unconverged step of this random network (step norm ~140) saturate
    # its softmax: the curvature vanished, every later system was the damping alone and CG
    # took one iteration, so 8 of the 10 timed steps were trivial (H200 and CPU alike).
    for _ in range(sizes["steps"]):
        rows = torch.randperm(X.shape[0], generator=gen)[: sizes["points"]].to(dev)
        new = (y[rows] + 1 + torch.randint(0, 9, (rows.numel(),), generator=gen).to(dev)) % 10
        corrected = y.clone()
        corrected[rows] = new
        kwargs: dict[str, Any] = dict(train_data=(X, corrected), params=names, order=2,
                                      hvp_batch_size=sizes["hvp_batch"], check_loss=False,
                                      apply=False)
        if solver == "cg":
            # the Gauss-Newton matrix is PSD: CG cannot break down on it, as it can on the
            # indefinite Hessian of a network away from a minimum
            # the curvature rows are one batch, so the operator keeps the network's graph and
            # a product runs only the selected layers (see GGNOperator)
            kwargs.update(solver="cg", curvature="ggn", damping=lam, tol=CG_TOL,
                          maxiter=sizes["cg_maxiter"], restarts=0,
                          curvature_subsample=sizes["cg_subsample"],
                          hvp_batch_size=max(sizes["hvp_batch"], sizes["cg_subsample"]))
        else:
            kwargs.update(solver="lissa", compute_residual=False, lissa=LissaSettings(
                batch_size=sizes["lissa_batch"], damping=LISSA_DAMPING, scale=LISSA_SCALE,
                depth=sizes["lissa_depth"], seed=0))
        synchronize(dev)
        t0 = time.perf_counter()
        res = influence_update(model, X[rows], y[rows], new_targets=new, **kwargs)
        synchronize(dev)
        seconds += time.perf_counter() - t0
        hvps += res.num_hvps
        grads += res.num_gradients
        diverged += int(res.diverged)
        iterations.append(int(res.solver_iterations))
        converged += int(bool(res.converged))
        if not res.diverged:
            # each solver's own system: LiSSA's is step_scale (H + damping I)^{-1} G
            residuals.append(res.residual if res.residual is not None else _residual(
                model, X, y, corrected, rows, new, names, res.step / res.step_scale,
                res.damping, sizes))
            if solver == "cg":
                full_residuals.append(_residual(model, X, y, corrected, rows, new, names,
                                                res.step, lam, sizes, curvature="ggn"))
    out = {"seconds": seconds, "num_hvps": hvps, "num_gradients": grads,
           "residual": sum(residuals) / len(residuals) if residuals else math.nan,
           "diverged": diverged, "iterations": iterations, "converged_steps": converged,
           "iterations_max": max(iterations, default=0)}
    if solver == "cg":
        out["full_residual"] = (sum(full_residuals) / len(full_residuals) if full_residuals
                                else math.nan)
    return out


def _residual(model: nn.Module, X: torch.Tensor, y: torch.Tensor, corrected: torch.Tensor,
              rows: torch.Tensor, new: torch.Tensor, names: list[str], x: torch.Tensor,
              lam: float, sizes: dict[str, Any], curvature: str = "hessian") -> float:
    """Untimed ``||(C + lam I) x - G|| / ||G||`` on the full data, ``C`` the Hessian
    (LiSSA's system) or the Gauss-Newton matrix (``curvature="ggn"``, ours)."""
    from fastunlearn.influence import GGNOperator
    from fastunlearn.influence.gradients import default_loss, eval_mode, gradient_difference
    from fastunlearn.linalg import NetworkHessianOperator

    G = gradient_difference(model, default_loss, X[rows], y[rows], X[rows], new, params=names)
    cls = GGNOperator if curvature == "ggn" else NetworkHessianOperator
    with eval_mode(model):
        op = cls(model, default_loss, X, corrected, params=names, damping=lam,
                 batch_size=sizes["hvp_batch"])
        Ax = op.matmat(x.unsqueeze(1)).squeeze(1)
    return float(torch.linalg.vector_norm(Ax - G) / torch.linalg.vector_norm(G))


def _warmup(model: nn.Module, X: torch.Tensor, y: torch.Tensor, sizes: dict[str, Any]) -> None:
    """One untimed HVP on a full batch and on a LiSSA batch (torch.func first-call costs)."""
    from fastunlearn.influence import last_parameters
    from fastunlearn.influence.gradients import default_loss, eval_mode
    from fastunlearn.linalg import NetworkHessianOperator

    with eval_mode(model):
        op = NetworkHessianOperator(model, default_loss, X, y,
                                    params=last_parameters(model, 6),
                                    batch_size=sizes["hvp_batch"])
        v = torch.ones(op.shape[0], 1, dtype=op.dtype, device=op.device)
        op.matmat(v)
        b = sizes["lissa_batch"]
        op.matmat_on(v, X[:b], y[:b])


#: The parts of the benchmark (see the module docstring).
PARTS = ("solver", "repair")


def run(device: str | torch.device, quick: bool = False, *,
        preset: str | None = None, parts: tuple[str, ...] = PARTS) -> list[dict[str, Any]]:
    """Run the given parts (default both) and return their records (see the module docstring).

    Raises:
        ValueError: an unknown part.

    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"argument 'parts': unknown part(s) {unknown}; choose from {PARTS}")
    dev = resolve_device(device)
    sizes = SIZES[resolve_preset(quick, preset)]
    records = []
    # full float32, as every benchmark: cuDNN would run the convolutions in TF32 by default
    with no_tf32():
        if "solver" in parts:
            records.append(_solver_part(sizes, dev))
        if "repair" in parts:
            repairs = [_digits(sizes, dev, seed) for seed in sizes["digits_seeds"]]
            records += repairs
            if len(repairs) > 1:
                records.append(_median_record(repairs))
    return records


def _solver_part(sizes: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    """Part 1: CG and LiSSA on the same CNN, same steps; their ``solver`` record."""
    torch.manual_seed(0)
    base = reference_cnn(sizes["filters"]).to(dev).eval()
    gen = torch.Generator().manual_seed(1)
    X = torch.rand(sizes["n"], 3, 32, 32, generator=gen).to(dev)
    y = torch.randint(0, 10, (sizes["n"],), generator=gen).to(dev)
    n_params = sum(p.numel() for p in base.parameters())
    from fastunlearn.influence import last_parameters

    named = dict(base.named_parameters())
    updated = sum(named[n].numel() for n in last_parameters(base, 6))
    _warmup(base, X, y, sizes)
    runs = {solver: _solver_run(copy.deepcopy(base), X, y, sizes, solver, dev)
            for solver in ("cg", "lissa")}
    return _pair("solver", runs["cg"], runs["lissa"], {
        "params": n_params, "updated": updated, "n": sizes["n"], "steps": sizes["steps"],
        "points": sizes["points"]})


def _median_record(repairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the per-seed repair records of every numeric field they share."""
    out: dict[str, Any] = {"part": "repair median", "seeds": [r["seed"] for r in repairs]}
    for key, value in repairs[0].items():
        if key in ("part", "seed") or not isinstance(value, (int, float)):
            continue
        values = [r[key] for r in repairs]
        median = statistics.median(values)
        out[key] = round(median) if all(isinstance(v, int) for v in values) else float(median)
    return out


def _digits(sizes: dict[str, Any], dev: torch.device, seed: int) -> dict[str, Any]:
    from fastunlearn.influence.experiment import RepairConfig, run_repair_experiment

    out = []
    shared: dict[str, Any] = {}
    for solver in ("cg", "lissa"):
        # each solver gets only its own settings (the others would warn: no effect)
        solver_settings: dict[str, Any] = (
            {"damping": DIGITS_DAMPING} if solver == "cg" else
            {"lissa_batch": DIGITS_LISSA_BATCH, "lissa_scale": DIGITS_LISSA_SCALE,
             "lissa_damping": DIGITS_DAMPING / DIGITS_LISSA_SCALE,
             "lissa_depth": DIGITS_LISSA_DEPTH})
        cfg = RepairConfig(protocols=("one-shot",), solver=solver, curvature="ggn",
                           epochs=sizes["digits_epochs"], n_train=sizes["digits_n"],
                           seed=seed, device=dev.type, **solver_settings)
        result = run_repair_experiment(cfg)
        p, tr = result["protocols"]["one-shot"], result["training"]
        step = p["steps"][0]
        shared = {"params": result["data"]["num_params"],
                  "updated": result["data"]["updated_params"], "acc_clean": tr["acc_clean"],
                  "acc_poisoned": tr["acc_poisoned"], "retrain_seconds": tr["retrain_seconds"]}
        out.append({"seconds": p["seconds"], "num_hvps": p["num_hvps"],
                    "num_gradients": p["num_gradients"], "residual": step.get("residual"),
                    "diverged": int(p["any_diverged"]), "acc_after": p["acc_after"],
                    "restored": p["restored"]})
    rec = _pair(f"repair seed {seed}", out[0], out[1], {"seed": seed, **shared})
    rec.update(compare_restored(rec["ours_restored"], rec["lissa_restored"]))
    return rec


def compare_restored(ours: float, lissa: float) -> dict[str, float]:
    """The two comparisons of the shares restored (fractions; 1 = all of the damage).

    ``restored_vs_lissa`` = ``ours / lissa``; ``damage_left_lissa_vs_ours`` = ``(1 - lissa) /
    (1 - ours)``: where LiSSA restores more than half, twice its share cannot be reached, and
    how much of the poisoning's damage each leaves is the telling comparison. Infinite where
    the denominator is not positive.
    """
    left = 1.0 - ours
    return {
        "restored_vs_lissa": ours / lissa if lissa > 0 else math.inf,
        "damage_left_lissa_vs_ours": (1.0 - lissa) / left if left > 0 else math.inf,
    }


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table("second-order influence repair: our CG vs reference LiSSA (same run)",
                records, COLUMNS)
