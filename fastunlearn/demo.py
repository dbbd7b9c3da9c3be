"""A one-minute tour of fastunlearn on the bundled digits: ``python -m fastunlearn.demo``.

It prints what was compiled, fits logistic regression (3 vs 8, and ten classes one-vs-rest)
with Newton steps built on :func:`~fastunlearn.ops.glm_hessian` and
:func:`~fastunlearn.ops.glm_cg`, computes the Newton step that removes one training point
(the certified-removal update) and checks it against ``torch.linalg.solve``, then times
the ops against the usual PyTorch / torch.func / scikit-learn code on digits-derived data,
checking that the answers agree. Needs no data directory and no network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import backend
from ._extension import has_kernel
from .data import load_digits_dataset

#: L2 regularisation per training example (the objective uses ``LAM_PER_SAMPLE * n``).
LAM_PER_SAMPLE = 1e-3


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


# ---- 1. binary logistic regression ------------------------------------------------------


def fit_binary(X: Tensor, y: Tensor, lam: float, steps: int = 8) -> tuple[Tensor, list[float]]:
    """Newton's method for L2-regularised logistic regression with glm_hessian.

    Minimises ``sum_i log(1 + exp(-s_i w.x_i)) + lam/2 ||w||^2`` (``s_i = 2 y_i - 1``);
    returns the weights and the gradient norm after every step.
    """
    from .ops import glm_hessian

    w = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
    history = []
    for _ in range(steps):
        p = torch.sigmoid(X @ w)
        g = X.T @ (p - y) + lam * w
        H = glm_hessian(X, (p * (1 - p))[:, None], lam)[0]
        w = w - torch.linalg.solve(H, g)
        p = torch.sigmoid(X @ w)
        history.append(float(torch.linalg.vector_norm(X.T @ (p - y) + lam * w)))
    return w, history


def section_binary(device: torch.device) -> None:
    """Fit 3 vs 8 with glm_hessian Newton steps; check the Hessian against PyTorch."""
    print("\n[1] Logistic regression, digits 3 vs 8 (float64), Newton steps on glm_hessian")
    reason = _missing(device, "glm_hessian")
    if reason:
        print(f"    skipped: {reason}")
        return
    from .ops import glm_hessian

    split = load_digits_dataset(binary=(3, 8))
    X, y = split.X_train.to(device), split.y_train.to(device).double()
    lam = LAM_PER_SAMPLE * X.shape[0]
    w, history = fit_binary(X, y, lam)
    acc_train = float(((X @ w > 0).double() == y).double().mean())
    Xt, yt = split.X_test.to(device), split.y_test.to(device).double()
    acc_test = float(((Xt @ w > 0).double() == yt).double().mean())
    s = torch.sigmoid(X @ w)
    s = s * (1 - s)
    H = glm_hessian(X, s[:, None], lam)[0]
    H_torch = X.T @ (s[:, None] * X) + lam * torch.eye(X.shape[1], dtype=X.dtype, device=device)
    print(f"    n={X.shape[0]} d={X.shape[1]} lam={lam:.3g}; gradient norm per step: "
          + " ".join(f"{g:.1e}" for g in history[:6]))
    print(f"    accuracy train {acc_train:.3f}  test {acc_test:.3f}   "
          f"glm_hessian vs X^T diag(s) X + lam I: rel. diff {_rel_err(H, H_torch):.1e}")


# ---- 2. one-vs-rest and a removal step ------------------------------------------------------


def fit_ovr(X: Tensor, Y: Tensor, lam: float, steps: int = 8) -> tuple[Tensor, Tensor]:
    """Ten one-vs-rest logistic models at once: Newton steps solved by glm_cg.

    Returns the weights [d, K] and the final curvature weights S [n, K].
    """
    from .ops import glm_cg

    W = torch.zeros(X.shape[1], Y.shape[1], dtype=X.dtype, device=X.device)
    for _ in range(steps):
        P = torch.sigmoid(X @ W)
        G = X.T @ (P - Y) + lam * W
        W = W - glm_cg(X, P * (1 - P), G, lam, tol=1e-10).solution
    P = torch.sigmoid(X @ W)
    return W, P * (1 - P)


def section_removal(device: torch.device) -> None:
    """Fit ten classes one-vs-rest with glm_cg, then remove one point with a Newton step."""
    print("\n[2] Ten classes one-vs-rest (K=10 models), then removing one training point")
    reason = _missing(device, "glm_cg", "glm_hessian")
    if reason:
        print(f"    skipped: {reason}")
        return
    from .ops import glm_cg, glm_hessian

    split = load_digits_dataset()
    X = split.X_train.to(device)
    Y = torch.nn.functional.one_hot(split.y_train, 10).to(device, X.dtype)
    lam = LAM_PER_SAMPLE * X.shape[0]
    W, S = fit_ovr(X, Y, lam)
    acc = float(((split.X_test.to(device) @ W).argmax(1).cpu() == split.y_test).double().mean())
    print(f"    n={X.shape[0]} d={X.shape[1]} K=10 lam={lam:.3g}; test accuracy {acc:.3f}")

    # Removing row j: the remaining loss has Hessian H_k with S[j, k] = 0 (X is not copied),
    # and the Newton step is H_k^{-1} times the removed point's gradient (Guo et al. 2020).
    j = 0
    S_removed = S.clone()
    S_removed[j] = 0
    P_j = torch.sigmoid(X[j] @ W)
    B = X[j][:, None] * (P_j - Y[j])[None, :]  # [d, K]: gradient of the loss at x_j
    result = glm_cg(X, S_removed, B, lam, tol=1e-10)
    H = glm_hessian(X, S_removed, lam)
    exact = torch.linalg.solve(H, B.T.unsqueeze(-1)).squeeze(-1).T
    resid = torch.linalg.vector_norm(
        torch.einsum("kij,jk->ik", H, result.solution) - B, dim=0
    ) / torch.linalg.vector_norm(B, dim=0)
    iters = result.iterations.tolist()
    print(f"    glm_cg Newton removal step: iterations {min(iters)}-{max(iters)}, "
          f"max rel. residual {float(resid.max()):.1e}, "
          f"vs torch.linalg.solve: rel. diff {_rel_err(result.solution, exact):.1e}")


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
        idx = np.argsort(-D, axis=1)[:, :10]
        return np.take_along_axis(D, idx, axis=1) ** 2, idx

    dist, _ = farthest_k(Qd, Pd, 10)
    sk_dist, _ = sklearn_farthest()
    _row("farthest-k (k=10)", f"{Q.shape[0]} x {P.shape[0]} x 64",
         _time_ms(lambda: farthest_k(Qd, Pd, 10), device),
         _time_ms(sklearn_farthest, torch.device("cpu")),
         "sklearn distances+argsort",
         f"rel. diff {_rel_err(dist, torch.from_numpy(sk_dist)):.0e}")


def section_timings(device: torch.device) -> None:
    """Print a short benchmark table: ours vs the usual code, on digits-derived data."""
    print(f"\n[3] Timings on {device.type} (median ms of 7 runs; x = peer time / ours)")
    print(f"    {'op':<22} {'size':<24} {'ours ms':>8} {'peer ms':>9}  {'ratio':>7}  "
          f"{'peer':<26} agreement")
    bench_hvp(device)
    bench_per_sample(device)
    bench_farthest(device)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fastunlearn.demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    start = time.perf_counter()
    print_backend()
    split = load_digits_dataset(binary=(3, 8))
    full = load_digits_dataset()
    print(f"\nData: scikit-learn digits, 8x8 images as 64 features scaled to unit norm; "
          f"3 vs 8: {split.X_train.shape[0]} train / {split.X_test.shape[0]} test; "
          f"10 classes: {full.X_train.shape[0]} / {full.X_test.shape[0]}")
    section_binary(device)
    section_removal(device)
    section_timings(device)
    print(f"\nDone in {time.perf_counter() - start:.1f} s.")
    return 0


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:
        # OpenMP workers that spin while waiting made the timings 10-100x slower on machines
        # whose cores are busy with other work; the policy is read only when the OpenMP
        # runtime starts (at `import torch`), so start once more with passive waiting.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "fastunlearn.demo", *sys.argv[1:]])
    sys.exit(main())
