"""A walk-through of certified removal on the bundled digits: ``python -m fastunlearn.demo``.

Certified data removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020) trains an
L2-regularised logistic regression whose objective carries a random linear term ``b.w``
(``b ~ N(0, sigma^2 I)``), removes training points with one Newton step each, and bounds how
far the result is from retraining without them (the gradient-residual norm). While the sum
of these bounds stays below ``sigma * epsilon / c`` the removals are
``(epsilon, delta)``-certified; when the next one would exceed it, the model is retrained
with a fresh ``b`` and the budget starts over.

The demo shows this on scikit-learn's digits (no data directory, no network): 3 vs 8 with
sequential removals and automatic retraining, ten classes one-vs-rest with batch removals,
the budget refusing a removal when retraining is off, and a short table of op timings
against the usual PyTorch / torch.func / scikit-learn code. ``fastunlearn remove`` runs the
same experiments with every option and writes JSON, PNG plots and a Markdown report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import backend
from ._device import parse_device
from ._extension import has_kernel
from .cli_types import name_flags
from .data import load_digits_dataset
from .demo_cli import DEMO_FLAGS

#: Settings of the walk-through: small enough budgets that they run out on digits.
BINARY: dict[str, Any] = {"train_mode": "binary", "lam": 1e-2, "std": 1.0, "epsilon": 1.0,
                          "delta": 1e-4, "num_removes": 40}
OVR: dict[str, Any] = {"train_mode": "ovr", "lam": 1e-2, "std": 2.0, "epsilon": 1.0,
                       "delta": 1e-4, "num_removes": 24, "batch": 4}


def _ops_line(info: dict[str, Any]) -> str:
    parts = [f"{name}[{','.join(devs) or '-'}]" for name, devs in info["ops"].items()]
    return " ".join(parts)


def print_backend() -> None:
    """Print the compiled-backend summary in three lines."""
    info = backend()
    cuda = ", ".join(d["name"] for d in info["devices"] if d["type"] == "cuda") or "none visible"
    print(f"fastunlearn {info['version']}  torch {info['torch']}  python {info['python']}")
    print(f"  compiled: {info['compiled']}   CPU kernels: {info['cpu']}   "
          f"CUDA kernels: {info['cuda']}   GPUs: {cuda}   CPU threads: {torch.get_num_threads()}")
    if info["load_error"]:
        print(f"  load error: {info['load_error']}")
    print(f"  ops: {_ops_line(info)}")


def _missing(device: torch.device, *ops: str) -> str | None:
    for op in ops:
        if not has_kernel(op, device.type):
            return f"fastunlearn::{op} has no {device.type} kernel in this build"
    return None


def _time_ms(fn: Callable[[], Any], device: torch.device, repeat: int = 7) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call."""
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    once()
    return statistics.median(once() for _ in range(repeat))


def _rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ---- 1-3. certified removal ------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _print_setup(result: Any) -> None:
    cfg, priv, data = result.config, result.privacy, result.data
    classes = data["classes"]
    names = " vs ".join(classes) if len(classes) <= 3 else f"{len(classes)} classes"
    print(f"    {data['n_train']} training rows, d={data['n_features']}, {names}; "
          f"lam={cfg.lam:g} (times n in the objective), b ~ N(0, {cfg.std:g}^2 I)")
    print(f"    (epsilon, delta) = ({cfg.epsilon:g}, {cfg.delta:g}): c = sqrt(2 ln(1.5/delta)) "
          f"= {priv['c']:.3f}, budget sigma*eps/c = {priv['budget']:.4g}")
    print(f"    fit: float64 Newton, residual ||grad L_b|| {priv['training_residual']:.1e} (starts "
          f"the budget); test accuracy {_pct(result.training['test_accuracy'])}")


def _shown_records(records: list[dict[str, Any]]) -> list[int | None]:
    """Pick the records worth a line: the first ones, those around retrains, the last."""
    keep = {0, 1, 2, len(records) - 1}
    for i, rec in enumerate(records):
        if rec["retrained"]:
            keep.update({i - 1, i, i + 1})
    shown: list[int | None] = []
    for i in sorted(j for j in keep if 0 <= j < len(records)):
        if shown and shown[-1] is not None and i > shown[-1] + 1:
            shown.append(None)  # a gap
        shown.append(i)
    return shown


def _print_removals(result: Any) -> None:
    records = result.records
    batch = result.config.batch
    what = f"in batches of {batch}" if batch else "one at a time"
    print(f"    removing {result.privacy['removals']} training rows {what} "
          "(Newton step + data-dependent bound each):")
    print(f"    {'removed':>9} {'rows':>10} {'bound':>10} {'used':>10} {'left':>10}")
    for i in _shown_records(records):
        if i is None:
            print(f"    {'...':>9}")
            continue
        rec = records[i]
        rows = str(rec["indices"][0]) if len(rec["indices"]) == 1 else f"{len(rec['indices'])} rows"
        if rec["retrained"]:
            print(f"    {rec['n_removed']:>9} {rows:>10} {rec['bound']:>10.2e}   over budget: "
                  f"RETRAIN, fresh b, used reset to {rec['cumulative']:.1e}")
        else:
            print(f"    {rec['n_removed']:>9} {rows:>10} {rec['bound']:>10.2e} "
                  f"{rec['cumulative']:>10.2e} {rec['budget_left']:>10.2e}")


def _print_summary(result: Any) -> None:
    priv, tim, final = result.privacy, result.timings, result.final
    after = result.fairness["after"]
    supported = priv["removals_supported"]
    print(f"    => {priv['removals']} removals, {priv['retrains']} automatic retrain(s); one "
          f"budget covered {supported if supported is not None else '-'} removals")
    if priv["mean_bound"]:
        unit = f"batch of {result.config.batch}" if result.config.batch else "removal"
        print(f"       bound per {unit}: {priv['mean_bound']:.2e} (data-dependent) vs "
              f"{priv['worst_case_bound']:.3g} (worst case, Theorem 1): "
              f"{priv['worst_case_bound'] / priv['mean_bound']:.0f}x tighter")
    print(f"       test accuracy {_pct(result.training['test_accuracy'])} -> "
          f"{_pct(final['test_accuracy'])} (a model retrained without the rows: "
          f"{_pct(final.get('retrained_test_accuracy'))})")
    print(f"       fairness: worst class {after['worst_class']} at "
          f"{_pct(after['worst_accuracy'])}, largest gap between classes "
          f"{100 * after['largest_gap']:.1f} points")
    if tim["removal_seconds_median"] and tim["retrain_seconds"]:
        print(f"       time: median removal {tim['removal_seconds_median'] * 1e3:.2f} ms, full "
              f"retraining {tim['retrain_seconds'] * 1e3:.1f} ms ({tim['speedup']:.0f}x)")


def section_certified(title: str, settings: dict[str, Any], device: torch.device,
                      result_dir: str | None) -> None:
    """Run one removal experiment on digits and print a compact walk-through."""
    from .certified.experiment import ExperimentConfig, run_removal_experiment

    print(f"\n{title}")
    config = ExperimentConfig(**settings, device=str(device), result_dir=result_dir)
    result = run_removal_experiment(config)
    _print_setup(result)
    _print_removals(result)
    _print_summary(result)
    if result.files:
        print(f"       report: {result.files['markdown']}")


def section_budget(device: torch.device) -> None:
    """Without retraining, the budget refuses the first removal it cannot cover."""
    from .certified import BudgetExceededError, CertifiedLogisticRegression
    from .certified.experiment import removal_order

    print("\n[3] The same 3 vs 8 model with retrain=False: the budget refuses a removal")
    split = load_digits_dataset(binary=(3, 8))
    X, y = split.X_train.numpy(), split.y_train.numpy()
    model = CertifiedLogisticRegression(lam=BINARY["lam"], sigma=BINARY["std"],
                                        epsilon=BINARY["epsilon"], delta=BINARY["delta"],
                                        retrain=False, device=str(device)).fit(X, y)
    print(f"    model = CertifiedLogisticRegression(lam={BINARY['lam']:g}, "
          f"sigma={BINARY['std']:g}, epsilon={BINARY['epsilon']:g},\n"
          f"                                        delta={BINARY['delta']:g}, "
          "retrain=False).fit(X, y)")
    for row in removal_order(y, len(y) - 2, seed=0).tolist():
        coef, removed = np.array(model.coef_, copy=True), int(model.n_removed_)
        try:
            model.remove([row])
        except BudgetExceededError as exc:
            same = np.array_equal(coef, model.coef_) and int(model.n_removed_) == removed
            print(f"    model.remove([{row}]) (removal {removed + 1}) raised "
                  f"BudgetExceededError:\n      {exc}")
            print(f"    {removed} certified removals left {model.budget_left_:.3g} of the budget; "
                  f"the model is {'unchanged' if same else 'CHANGED (bug)'} "
                  f"(n_removed_={model.n_removed_})")
            return
    print("    the budget covered every removal")


# ---- 3. timings ----------------------------------------------------------------------------


def _row(name: str, size: str, ours: float, peer: float, peer_name: str, agree: str) -> None:
    print(f"    {name:<22} {size:<24} {ours:>8.2f} {peer:>9.2f}  {peer / ours:>6.1f}x  "
          f"{peer_name:<26} {agree}")


def bench_hvp(device: torch.device) -> None:
    """glm_hvp vs the two-GEMM expression on digits rows tiled to 60000 x 64 float32."""
    reason = _missing(device, "glm_hvp")
    if reason:
        print(f"    glm_hvp skipped: {reason}")
        return
    from .ops import glm_hvp

    split = load_digits_dataset(dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    reps = -(-60000 // split.X_train.shape[0])
    X = split.X_train.repeat(reps, 1)[:60000]
    X = (X + 0.01 * torch.randn(X.shape, generator=gen)).to(device)
    S = (0.25 * torch.rand(X.shape[0], 10, generator=gen)).to(device)
    V = torch.randn(X.shape[1], 10, generator=gen).to(device)
    lam = 1e-3
    ours = glm_hvp(X, S, V, lam)
    peer = torch.addmm(V, X.T, S * (X @ V), beta=lam)
    _row("glm_hvp", "60000x64, K=10", _time_ms(lambda: glm_hvp(X, S, V, lam), device),
         _time_ms(lambda: torch.addmm(V, X.T, S * (X @ V), beta=lam), device),
         "torch X^T(S*(XV))+lam V", f"rel. diff {_rel_err(ours, peer):.0e}")


def bench_per_sample(device: torch.device) -> None:
    """Per-sample gradient norms of an MLP on digits: the grad engine vs torch.func."""
    reason = _missing(device, "per_sample_sq_norm")
    if reason:
        print(f"    per-sample norms skipped: {reason}")
        return
    from torch.func import functional_call, grad, vmap

    from .grad import PerSampleGradients

    split = load_digits_dataset(dtype=torch.float32)
    x, y = split.X_train[:512].to(device), split.y_train[:512].to(device)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(device)

    def loss_fn(out: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(out, target, reduction="sum")

    engine = PerSampleGradients(model, loss_reduction="sum")
    params = {n: p.detach() for n, p in model.named_parameters()}

    def one_loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xb[None],)), yb[None])

    per_sample = vmap(grad(one_loss), in_dims=(None, 0, 0))

    def func_norms() -> Tensor:
        return sum(g.flatten(1).pow(2).sum(1) for g in per_sample(params, x, y).values())

    ours = engine.sq_norms(x, y, loss_fn)
    peer = func_norms()
    _row("per-sample grad norms", "MLP 64-256-128-10, B=512",
         _time_ms(lambda: engine.sq_norms(x, y, loss_fn), device),
         _time_ms(func_norms, device), "torch.func vmap(grad)",
         f"rel. diff {_rel_err(ours, peer):.0e}")


def bench_farthest(device: torch.device) -> None:
    """Time the 10 farthest other digits from every training 3: farthest_k vs scikit-learn."""
    reason = _missing(device, "knn_extreme")
    if reason:
        print(f"    farthest-k skipped: {reason}")
        return
    import numpy as np
    from sklearn.metrics import pairwise_distances

    from .ops import farthest_k

    split = load_digits_dataset(dtype=torch.float32)
    forget = split.y_train == 3
    Q, P = split.X_train[forget], split.X_train[~forget]
    Qd, Pd = Q.to(device), P.to(device)
    Qn, Pn = Q.numpy(), P.numpy()

    def sklearn_farthest() -> tuple[np.ndarray, np.ndarray]:
        D = pairwise_distances(Qn, Pn)
        part = np.argpartition(-D, 9, axis=1)[:, :10]  # the 10 largest, then sorted
        idx = np.take_along_axis(part, np.argsort(-np.take_along_axis(D, part, 1), 1), 1)
        return np.take_along_axis(D, idx, axis=1) ** 2, idx

    dist, _ = farthest_k(Qd, Pd, 10)
    sk_dist, _ = sklearn_farthest()
    _row("farthest-k (k=10)", f"{Q.shape[0]} x {P.shape[0]} x 64",
         _time_ms(lambda: farthest_k(Qd, Pd, 10), device),
         _time_ms(sklearn_farthest, torch.device("cpu")),
         "sklearn distances+argpartition",
         f"rel. diff {_rel_err(dist, torch.from_numpy(sk_dist)):.0e}")


def section_timings(device: torch.device) -> None:
    """Print a short benchmark table: ours vs the usual code, on digits-derived data."""
    print(f"\n[4] Op timings on {device.type} (median ms of 7 runs; x = peer time / ours)")
    print(f"    {'op':<22} {'size':<24} {'ours ms':>8} {'peer ms':>9}  {'ratio':>7}  "
          f"{'peer':<26} agreement")
    bench_hvp(device)
    bench_per_sample(device)
    bench_farthest(device)


def check_result_dir(result_dir: str) -> None:
    """Refuse, before any work, a folder the two reports of [1] and [2] could not go to.

    Raises:
        ValueError: naming ``result_dir`` (see :func:`fastunlearn._output_folder.
            check_output_folder`).

    """
    from ._output_folder import check_output_folder
    from .certified.experiment import ExperimentConfig, output_names

    names = [name for settings in (BINARY, OVR)
             for name in output_names(ExperimentConfig(**settings).stem)]
    check_output_folder(result_dir, argument="result_dir", names=names)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fastunlearn.demo", allow_abbrev=False,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:<i> (default: cuda if available, else cpu)")
    parser.add_argument("--result-dir", default=None,
                        help="also write JSON, PNG plots and a Markdown report of [1] and [2]")
    args = parser.parse_args(argv)
    try:
        device = parse_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                              argument="device")
    except ValueError as exc:
        parser.error(name_flags(str(exc), DEMO_FLAGS))
    if args.result_dir is not None:
        try:
            check_result_dir(args.result_dir)  # the reports are written after the run
        except ValueError as exc:
            parser.error(name_flags(str(exc), DEMO_FLAGS))
    start = time.perf_counter()
    print_backend()
    print("\nCertified removal (Guo et al., ICML 2020) on scikit-learn's digits: 8x8 images "
          "as 64 features,\nrows scaled to unit norm, 80/20 stratified split.")
    section_certified("[1] Digits 3 vs 8, binary logistic regression", BINARY, device,
                      args.result_dir)
    section_certified("[2] Ten digits, one-vs-rest (10 models, one joint budget)", OVR,
                      device, args.result_dir)
    section_budget(device)
    section_timings(device)
    print(f"\nDone in {time.perf_counter() - start:.1f} s. `fastunlearn remove --help`: these "
          "experiments with every option,\nwriting JSON, PNG plots and a Markdown report.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
