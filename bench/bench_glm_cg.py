"""glm_cg vs a textbook PyTorch CG loop and vs Cholesky on the explicit Hessian.

Solves ``(X^T diag(S_k) X + lam I) x_k = b_k`` for K = 10 right-hand sides (one-vs-rest
logistic regression with ten classes) in float64, the precision of the certified paths.

Peers, all on the same inputs:

* **torch CG loop**: unpreconditioned CG with per-column alpha/beta, the matrix-free
  two-GEMM HVP and a host-side convergence check every iteration (what GPyTorch, pyDVL and
  torch-influence do, performance.md section 6), stopping at the same tolerance
  ``||r_k|| <= tol * ||b_k||`` and iteration cap as glm_cg.
* **Cholesky**: the explicit Hessians formed with PyTorch (``hessian_ms``, separate column),
  then ``torch.linalg.cholesky`` + ``torch.linalg.cholesky_solve`` (``chol_ms``). Our own
  Hessian formation (``glm_hessian``) is timed beside it.

``iters`` is the largest iteration count over the K columns; ``resid`` the largest true
relative residual ``||H_k x_k - b_k|| / ||b_k||``, recomputed in float64.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.bench_glm_hvp import torch_hvp
from bench.common import (
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

NAME = "glm_cg"
K = 10
LAM = 1e-3
TOL = 1e-8
DTYPE = torch.float64

#: preset -> list of d (n = 4 d)
SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (32, 64),
    "quick": (256, 784),
    "full": (784, 2048, 4096),
}

COLUMNS = [
    ("n", "n", "d"),
    ("d", "d", "d"),
    ("ours_ms", "ours ms", ".2f"),
    ("ours_iters", "iters", "d"),
    ("ours_resid", "resid", ".1e"),
    ("torch_cg_ms", "torch CG ms", ".2f"),
    ("torch_cg_iters", "iters", "d"),
    ("torch_cg_resid", "resid", ".1e"),
    ("ratio_torch_cg", "torchCG/ours", ".2f"),
    ("hessian_ms", "torch H ms", ".1f"),
    ("ours_hessian_ms", "glm_hessian ms", ".1f"),
    ("chol_ms", "chol ms", ".1f"),
    ("ratio_chol", "(H+chol)/ours", ".2f"),
]


def make_problem(
    d: int, device: torch.device, dtype: torch.dtype = DTYPE, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X [4d, d] with rows of norm about 1, S [4d, K] in [0, 1/4], B [d, K]."""
    gen = torch.Generator().manual_seed(seed)
    n = 4 * d
    X = torch.randn(n, d, generator=gen, dtype=dtype) / d**0.5
    S = 0.25 * torch.rand(n, K, generator=gen, dtype=dtype)
    B = torch.randn(d, K, generator=gen, dtype=dtype)
    return X.to(device), S.to(device), B.to(device)


def torch_cg(
    X: torch.Tensor, S: torch.Tensor, B: torch.Tensor, lam: float, tol: float, maxiter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook CG on K columns, matrix-free, checking convergence on the host each step.

    Returns:
        ``(solution [d, K], iterations [K])``.
    """
    x = torch.zeros_like(B)
    r = B.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    threshold = tol**2 * (B * B).sum(0)
    iterations = torch.zeros(B.shape[1], dtype=torch.int64, device=B.device)
    for _ in range(maxiter):
        active = rr > threshold
        if not bool(active.any()):  # the host round trip every iteration
            break
        Ap = torch_hvp(X, S, p, lam)
        alpha = torch.where(active, rr / (p * Ap).sum(0), torch.zeros_like(rr))
        x += alpha * p
        r -= alpha * Ap
        rr_new = (r * r).sum(0)
        p = torch.where(active, r + (rr_new / rr) * p, p)
        rr = torch.where(active, rr_new, rr)
        iterations += active
    return x, iterations


def torch_hessian(X: torch.Tensor, S: torch.Tensor, lam: float) -> torch.Tensor:
    """The explicit Hessians ``X^T diag(S_k) X + lam I`` -> [K, d, d], one GEMM per class."""
    d = X.shape[1]
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    return torch.stack([torch.addmm(eye, X.T, S[:, k, None] * X, beta=lam)
                        for k in range(S.shape[1])])


def cholesky_solve(H: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Solve ``H_k x_k = B[:, k]`` by Cholesky -> [d, K]."""
    L = torch.linalg.cholesky(H)
    return torch.cholesky_solve(B.T.unsqueeze(-1), L).squeeze(-1).T


def relative_residual(
    X: torch.Tensor, S: torch.Tensor, B: torch.Tensor, lam: float, x: torch.Tensor
) -> float:
    """Largest ``||H_k x_k - b_k|| / ||b_k||`` over the columns, in float64."""
    X64, S64, B64 = (t.to(torch.float64) for t in (X, S, B))
    r = torch_hvp(X64, S64, x.to(torch.float64), lam) - B64
    return float((torch.linalg.vector_norm(r, dim=0) / torch.linalg.vector_norm(B64, dim=0)).max())


def ours_cg(
    X: torch.Tensor, S: torch.Tensor, B: torch.Tensor, lam: float, tol: float, maxiter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Our solver: ``fastunlearn.ops.glm_cg`` without a preconditioner."""
    from fastunlearn.ops import glm_cg

    result = glm_cg(X, S, B, lam, tol=tol, maxiter=maxiter)
    return result.solution, result.iterations


def run_case(d: int, device: torch.device, **opts: Any) -> dict[str, Any]:
    """Check, then time the solvers for one size (n = 4 d); return the record."""
    from fastunlearn.ops import glm_hessian

    X, S, B = make_problem(d, device)
    maxiter = 10 * d
    # correctness first: both CG solutions against the exact (Cholesky) solution; CG to
    # ||r|| <= tol ||b|| leaves a relative error of at most cond(H) * tol
    H_peer = torch_hessian(X, S, LAM)
    exact = cholesky_solve(H_peer, B)
    x_ours, it_ours = ours_cg(X, S, B, LAM, TOL, maxiter)
    x_peer, it_peer = torch_cg(X, S, B, LAM, TOL, maxiter)
    atol = scaled_atol(exact, 1e-5)
    check_close(x_ours, exact, rtol=1e-5, atol=atol, what=f"{NAME} d={d} (ours)")
    check_close(x_peer, exact, rtol=1e-5, atol=atol, what=f"{NAME} d={d} (torch CG)")
    check_close(glm_hessian(X, S, LAM), H_peer, rtol=1e-10, atol=scaled_atol(H_peer, 1e-12),
                what=f"glm_hessian d={d}")

    res = compare({
        "ours": lambda: ours_cg(X, S, B, LAM, TOL, maxiter),
        "torch_cg": lambda: torch_cg(X, S, B, LAM, TOL, maxiter),
        "hessian": lambda: torch_hessian(X, S, LAM),
        "ours_hessian": lambda: glm_hessian(X, S, LAM),
        "chol": lambda: cholesky_solve(H_peer, B),
    }, device, **opts)
    ours, peer, hess, chol = (res[k].timing for k in ("ours", "torch_cg", "hessian", "chol"))
    return {
        "n": X.shape[0], "d": d, "K": K, "lam": LAM, "tol": TOL,
        "dtype": str(X.dtype).removeprefix("torch."),
        "ours_ms": ours.ms, "ours_iqr_ms": ours.iqr_ms,
        "ours_iters": int(it_ours.max()), "ours_resid": relative_residual(X, S, B, LAM, x_ours),
        "torch_cg_ms": peer.ms, "torch_cg_iqr_ms": peer.iqr_ms,
        "torch_cg_iters": int(it_peer.max()),
        "torch_cg_resid": relative_residual(X, S, B, LAM, x_peer),
        "ratio_torch_cg": ratio(peer.median, ours.median),
        "hessian_ms": hess.ms, "ours_hessian_ms": res["ours_hessian"].ms, "chol_ms": chol.ms,
        "ratio_chol": ratio(hess.median + chol.median, ours.median),
    }


def run(
    device: str | torch.device, quick: bool = False, *, preset: str | None = None
) -> list[dict[str, Any]]:
    """Run the sweep over d and return one record per size.

    Args:
        device: ``cpu`` or ``cuda``.
        quick: Use the ``quick`` size preset (ignored when ``preset`` is given).
        preset: ``tiny``, ``quick`` or ``full``.

    Returns:
        Records with times (ms), iterations, residuals and ratios ``peer / ours``.

    Raises:
        OpUnavailable: If glm_cg or glm_hessian was not compiled for ``device``.
        CorrectnessError: If a solution disagrees with the Cholesky solution.
    """
    dev = resolve_device(device)
    size = resolve_preset(quick, preset)
    require_op("glm_cg", dev)
    require_op("glm_hessian", dev)
    with no_tf32():
        return [run_case(d, dev, **timing_options(size)) for d in SIZES[size]]


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table(f"{NAME}: K={K} CG solves, float64, lam={LAM}, tol={TOL} "
                "(ratio > 1: ours faster)", records, COLUMNS)
