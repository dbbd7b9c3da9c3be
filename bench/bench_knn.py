"""farthest_k vs scikit-learn and PyTorch: the k farthest retain points of each forget point.

The anti-sample step of unlearning picks, for every forget example (rows of Q, m x d), the
k = 10 retain examples (rows of P, n x d) farthest from it. The full CIFAR single-class
size is m = 5000, n = 45000, d = 3072 (float32); a quick size keeps d and shrinks m, n.

Peers, on the same inputs:

* **sklearn**: ``pairwise_distances(Q, P)`` (the full m x n matrix), then
  ``np.argpartition`` for each row's k largest and a sort of those k, on the CPU (on a
  CUDA run the host copies are made before timing);
* **torch**: ``torch.cdist(Q, P).topk(k)`` on the benchmark device (on a CUDA run, ours is
  also timed on the host's CPU cores: ``ours_cpu_ms``, ``ratio_sklearn_cpu``);
* **gemm**: the bare product ``Q @ P.T`` (float32, TF32 off) on the benchmark device, the
  arithmetic every exact method must do: ``ratio_gemm = gemm / ours`` close to 1 means
  farthest_k runs at the GEMM rate of the machine (distances, selection and the exact
  rescoring of the k winners cost little on top), and bounds what any peer ratio can be.

Peak memory shows the point of the fused op: it never holds the m x n matrix. It is
measured with PyTorch's allocator (ours, torch; device memory on CUDA) and with
tracemalloc for scikit-learn's numpy arrays (host memory, ``sklearn_peak_mb``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.common import (
    CorrectnessError,
    check_close,
    compare,
    measure,
    no_tf32,
    print_table,
    ratio,
    require_op,
    resolve_device,
    resolve_preset,
    time_once,
    timing_options,
)

NAME = "knn"
K = 10

#: preset -> (m, n, d)
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (50, 300, 64),
    "quick": (500, 4500, 3072),
    "full": (5000, 45000, 3072),
}

#: Rows whose answers are verified against float64 distances (bounds the check's cost).
CHECK_ROWS = 256

COLUMNS = [
    ("m", "m", "d"),
    ("n", "n", "d"),
    ("d", "d", "d"),
    ("ours_ms", "ours ms", ".2f"),
    ("ours_iqr_ms", "±iqr", ".2f"),
    ("sklearn_ms", "sklearn ms", ".1f"),
    ("ratio_sklearn", "sklearn/ours", ".1f"),
    ("torch_ms", "torch ms", ".2f"),
    ("ratio_torch", "torch/ours", ".2f"),
    ("gemm_ms", "GEMM ms", ".2f"),
    ("ratio_gemm", "GEMM/ours", ".2f"),
    ("ours_cpu_ms", "ours host CPU ms", ".1f"),
    ("ratio_sklearn_cpu", "sklearn/ours CPU", ".1f"),
    ("ours_peak_mb", "ours MiB", ".1f"),
    ("torch_peak_mb", "torch MiB", ".1f"),
    ("sklearn_peak_mb", "sklearn MiB", ".1f"),
]


def make_inputs(
    m: int, n: int, d: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform [0, 1) pixel-like float32 rows: Q [m, d] (forget), P [n, d] (retain)."""
    gen = torch.Generator().manual_seed(seed)
    Q = torch.rand(m, d, generator=gen)
    P = torch.rand(n, d, generator=gen)
    return Q.to(device), P.to(device)


def sklearn_farthest(Q: np.ndarray, P: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The peer: full Euclidean distance matrix, then each row's k largest.

    ``np.argpartition`` selects them in linear time and only those k are sorted, as a
    scikit-learn user would write it (a full ``argsort`` of every row would cost
    ``n log n`` per row and flatter ours).
    """
    from sklearn.metrics import pairwise_distances

    D = pairwise_distances(Q, P)
    part = np.argpartition(-D, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(D, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(D, idx, axis=1) ** 2, idx


def torch_farthest(Q: torch.Tensor, P: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch peer: ``cdist`` then ``topk`` (squared distances returned)."""
    dist, idx = torch.cdist(Q, P).topk(k, dim=1, largest=True)
    return dist.square(), idx


def check_farthest(
    Q: torch.Tensor, P: torch.Tensor, dist: torch.Tensor, idx: torch.Tensor, what: str
) -> float:
    """Verify an answer on the first rows against float64 distances; robust to near-ties.

    The returned squared distances must equal the float64 distances of the returned
    indices, and must equal the k largest float64 distances of each row (so any index
    choice among equal distances is accepted).

    Returns:
        The largest relative error of the reported distances.
    """
    rows = min(CHECK_ROWS, Q.shape[0])
    Q64 = Q[:rows].to("cpu", torch.float64)
    P64 = P.to("cpu", torch.float64)
    D64 = torch.cdist(Q64, P64).square()
    dist = torch.as_tensor(dist)[:rows].to("cpu", torch.float64)
    idx = torch.as_tensor(idx)[:rows].to("cpu", torch.int64)
    if idx.shape != (rows, K) or int(idx.min()) < 0 or int(idx.max()) >= P.shape[0]:
        raise CorrectnessError(f"{what}: bad index tensor {tuple(idx.shape)}")
    if any(len(set(row)) != K for row in idx.tolist()):
        raise CorrectnessError(f"{what}: repeated indices in a row")
    at_idx = torch.gather(D64, 1, idx)
    check_close(dist, at_idx, rtol=1e-4, atol=0.0, what=f"{what} (distances of returned indices)")
    best = D64.topk(K, dim=1, largest=True).values
    check_close(dist, best, rtol=1e-4, atol=0.0, what=f"{what} (k largest distances)")
    return float(((dist - best).abs() / best).max())


def run(
    device: str | torch.device, quick: bool = False, *, preset: str | None = None
) -> list[dict[str, Any]]:
    """Run one size and return its record.

    Args:
        device: ``cpu`` or ``cuda``.
        quick: Use the ``quick`` size preset (ignored when ``preset`` is given).
        preset: ``tiny``, ``quick`` or ``full``.

    Returns:
        A one-record list with times (ms), ratios ``peer / ours`` and peak memory (MiB).

    Raises:
        OpUnavailable: If knn_extreme was not compiled for ``device``.
        CorrectnessError: If farthest_k's answer is wrong.
    """
    dev = resolve_device(device)
    size = resolve_preset(quick, preset)
    require_op("knn_extreme", dev)
    with no_tf32():
        return [run_case(*SIZES[size], dev, **timing_options(size))]


def run_case(m: int, n: int, d: int, dev: torch.device, **opts: Any) -> dict[str, Any]:
    """Check, then time farthest_k and its peers for one size; return the record."""
    from fastunlearn.ops import farthest_k

    Q, P = make_inputs(m, n, d, dev)
    Qn, Pn = Q.cpu().numpy(), P.cpu().numpy()

    ours_d, ours_i = farthest_k(Q, P, K)
    err = check_farthest(Q, P, ours_d, ours_i, f"farthest_k m={m} n={n} d={d}")
    sk_d, sk_i = sklearn_farthest(Qn[:CHECK_ROWS], Pn, K)
    check_farthest(Q, P, torch.from_numpy(sk_d), torch.from_numpy(sk_i), "sklearn peer")
    check_farthest(Q, P, *torch_farthest(Q[:CHECK_ROWS], P, K), "torch peer")

    impls = {"ours": lambda: farthest_k(Q, P, K), "torch": lambda: torch_farthest(Q, P, K),
             "gemm": lambda: torch.mm(Q, P.T)}

    def sklearn() -> tuple[np.ndarray, np.ndarray]:
        return sklearn_farthest(Qn, Pn, K)

    # scikit-learn's memory is numpy's (the full m x n distance matrix and the selection),
    # traced by tracemalloc; on a CPU run it is timed interleaved with the others
    if dev.type == "cpu":
        res = compare({**impls, "sklearn": sklearn}, dev,
                      memory={"ours": "torch", "torch": "torch", "gemm": "torch",
                              "sklearn": "numpy"}, **opts)
    else:
        res = compare(impls, dev, memory="torch", **opts)
        # scikit-learn takes seconds at the full size (the m x n matrix, then a
        # single-threaded selection per row): one timed call, no memory trace (the CPU run
        # records it)
        res["sklearn"] = time_once(sklearn)
        # farthest_k on the same machine's CPU cores too: the CPU ratio to scikit-learn on
        # this (usually larger) host, at the cost of a few more CPU runs
        Qc, Pc = Q.cpu(), P.cpu()
        host = {**opts, "warmup": 1, "repeat": 3, "max_time_s": 0.0}
        res["ours_cpu"] = measure(lambda: farthest_k(Qc, Pc, K), torch.device("cpu"), **host)
    ours, peer_torch, peer_sk, gemm = res["ours"], res["torch"], res["sklearn"], res["gemm"]
    extra: dict[str, Any] = {}
    if "ours_cpu" in res:
        extra = {"ours_cpu_ms": res["ours_cpu"].ms, "cpu_threads": torch.get_num_threads(),
                 "ratio_sklearn_cpu": ratio(peer_sk.timing.median,
                                            res["ours_cpu"].timing.median)}
    return {
        **extra,
        "m": m, "n": n, "d": d, "k": K, "dtype": "float32",
        "ours_ms": ours.ms, "ours_iqr_ms": ours.timing.iqr_ms,
        "sklearn_ms": peer_sk.ms, "sklearn_iqr_ms": peer_sk.timing.iqr_ms,
        "torch_ms": peer_torch.ms, "torch_iqr_ms": peer_torch.timing.iqr_ms,
        "ratio_sklearn": ratio(peer_sk.timing.median, ours.timing.median),
        "ratio_torch": ratio(peer_torch.timing.median, ours.timing.median),
        "gemm_ms": gemm.ms, "ratio_gemm": ratio(gemm.timing.median, ours.timing.median),
        "gemm_gflops": 2.0 * m * n * d / gemm.timing.median / 1e9,
        "ours_gflops": 2.0 * m * n * d / ours.timing.median / 1e9,
        "ours_peak_mb": ours.peak_mb, "torch_peak_mb": peer_torch.peak_mb,
        "sklearn_peak_mb": peer_sk.peak_mb,
        "max_rel_err": err,
    }


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table(f"farthest_k (k={K}) vs sklearn pairwise_distances+argpartition and torch "
                "cdist+topk (ratio > 1: ours faster)", records, COLUMNS)
