"""glm_hvp vs the two-GEMM PyTorch expression.

Computes ``X^T (S * (X V)) + lam V`` for the one-vs-rest logistic-regression Hessian
(X: n x d, S: n x K curvature weights, V: d x K directions) at the MNIST size n = 60000,
d = 784 in float32. The peer is PyTorch's ``torch.addmm(V, X.T, S * (X @ V), beta=lam)``
(two GEMMs, X read twice; addmm fuses the ``+ lam V``).

Byte model: the op is memory-bound for small K (performance.md section 5.3), so throughput
is reported as ``n * d * itemsize`` bytes (X read once, the floor of a fused kernel) per
second, and on CUDA as a percentage of the H100's 3.35 TB/s.

On CUDA the sweep also runs float64 (the certified removal's dtype; K = 10 is MNIST's
one-vs-rest; also one digits-sized row, n = 1500, d = 64, K = 10, where the one-pass
kernel may be latency-bound) and times a third implementation there: the op with
``FASTUNLEARN_GLM_HVP=onepass`` (the opt-in one-pass tensor-core kernel, X read once), in the
same round-robin as the op's default two GEMMs and the torch peer. The variable is set and
cleared by untimed set-up calls, so those two run one call per sample, and so does the torch
peer in those rows (a no-op set-up), so that no implementation alone is batched.

Correctness: each kernel is checked against the peer at ``LAM`` and at ``CHECK_LAM`` (where
the ``lam V`` term is large enough for the tolerance to see it).
``FASTUNLEARN_BENCH_NO_ONEPASS=1`` leaves the one-pass column out (``bench/device_run.sh``
sets it when the one-pass kernel's CUDA tests fail).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from bench.common import (
    H100_HBM_BYTES_PER_S,
    check_close,
    compare,
    kept_glm_hvp_kernel,
    no_tf32,
    print_table,
    rate,
    ratio,
    require_op,
    resolve_device,
    resolve_preset,
    scaled_atol,
    select_glm_hvp_kernel,
    timing_options,
)

NAME = "glm_hvp"
LAM = 1e-3
#: A second ``lam`` the correctness check uses: at ``LAM`` the term ``lam V`` is about 1e-4
#: of the result, under the float32 tolerance, so a kernel that dropped or mis-scaled it
#: would pass; at 0.5 (not 1, where ``lam ** 2 == lam``) it is 5-25 % of the result.
CHECK_LAM = 0.5

#: preset -> (n, d, list of K)
SIZES: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "tiny": (1000, 64, (1, 8)),
    "quick": (60000, 784, (1, 4, 8, 16, 64)),
    "full": (60000, 784, (1, 4, 8, 16, 64)),
}
#: K of the float64 rows on CUDA (the one-pass kernel takes K <= 16)
FLOAT64_KS: tuple[int, ...] = (1, 8, 10, 16)
#: (n, d, K) of float64 rows on CUDA at small d (digits one-vs-rest scale): whether the
#: one-pass kernel, one 8-row tile in flight per SM, is latency-bound there
FLOAT64_SMALL: tuple[tuple[int, int, int], ...] = ((1500, 64, 10),)

COLUMNS = [
    ("n", "n", "d"),
    ("d", "d", "d"),
    ("K", "K", "d"),
    ("dtype", "dtype", "s"),
    ("ours_ms", "ours ms", ".3f"),
    ("ours_iqr_ms", "±iqr", ".3f"),
    ("torch_ms", "torch ms", ".3f"),
    ("torch_iqr_ms", "±iqr", ".3f"),
    ("ratio_torch", "torch/ours", ".2f"),
    ("onepass_ms", "1-pass ms", ".3f"),
    ("ratio_onepass_torch", "torch/1-pass", ".2f"),
    ("ours_gbps", "ours GB/s", ".1f"),
    ("torch_gbps", "torch GB/s", ".1f"),
    ("ours_pct_hbm", "% HBM", ".1f"),
    ("max_abs_err", "max err", ".1e"),
]


def torch_hvp(X: torch.Tensor, S: torch.Tensor, V: torch.Tensor, lam: float) -> torch.Tensor:
    """The peer: two GEMMs, ``X^T (S * (X V)) + lam V``."""
    return torch.addmm(V, X.T, S * (X @ V), beta=lam)


def make_inputs(
    n: int, d: int, K: int, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of norm about 1, logistic curvature weights in [0, 1/4], random directions."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=dtype) / d**0.5
    S = 0.25 * torch.rand(n, K, generator=gen, dtype=dtype)
    V = torch.randn(d, K, generator=gen, dtype=dtype)
    return X.to(device), S.to(device), V.to(device)


def run_case(
    n: int,
    d: int,
    K: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    onepass: bool = False,
    **opts: Any,
) -> dict[str, Any]:
    """Check, then time glm_hvp against the peer for one (n, d, K); return the record.

    With ``onepass``, the op with ``FASTUNLEARN_GLM_HVP=onepass`` is checked and timed too
    (``onepass_*`` fields); the variable's previous value is restored afterwards.
    """
    from fastunlearn.ops import glm_hvp

    X, S, V = make_inputs(n, d, K, device, dtype)
    expected = torch_hvp(X, S, V, LAM)
    rtol, atol = (1e-3, 1e-4) if dtype == torch.float32 else (1e-10, 1e-11)
    what = f"{NAME} n={n} d={d} K={K} {str(dtype).removeprefix('torch.')}"
    impls = {"ours": lambda: glm_hvp(X, S, V, LAM), "torch": lambda: torch_hvp(X, S, V, LAM)}
    setups = {}

    # the peer's answer at CHECK_LAM: the same product, the lam term shifted
    check_lam = expected + (CHECK_LAM - LAM) * V

    def check(label: str) -> float:
        """Max error at ``LAM`` (after checking at ``CHECK_LAM`` too, see there)."""
        check_close(glm_hvp(X, S, V, CHECK_LAM), check_lam, rtol=rtol,
                    atol=scaled_atol(check_lam, atol), what=f"{what}{label} lam={CHECK_LAM}")
        return check_close(glm_hvp(X, S, V, LAM), expected, rtol=rtol,
                           atol=scaled_atol(expected, atol), what=what + label)

    with kept_glm_hvp_kernel():
        select_glm_hvp_kernel(False)
        err = check("")
        onepass_err = None
        if onepass:
            select_glm_hvp_kernel(True)
            onepass_err = check(" one-pass")
            impls["onepass"] = lambda: glm_hvp(X, S, V, LAM)
            # every implementation one call per sample, the peer too: batching only its
            # calls would hide its launch gaps and leave ours theirs
            setups = {"ours": lambda: select_glm_hvp_kernel(False),
                      "onepass": lambda: select_glm_hvp_kernel(True),
                      "torch": lambda: None}
        res = compare(impls, device, setups=setups, **opts)
    ours, peer = res["ours"].timing, res["torch"].timing
    nbytes = n * d * X.element_size()
    rec: dict[str, Any] = {
        "n": n, "d": d, "K": K, "dtype": str(X.dtype).removeprefix("torch."),
        "ours_ms": ours.ms, "ours_iqr_ms": ours.iqr_ms,
        "torch_ms": peer.ms, "torch_iqr_ms": peer.iqr_ms,
        "ratio_torch": ratio(peer.median, ours.median),
        "bytes_model": nbytes,
        "ours_gbps": rate(nbytes, ours.median) / 1e9,
        "torch_gbps": rate(nbytes, peer.median) / 1e9,
        "max_abs_err": err,
    }
    if onepass:
        one = res["onepass"].timing
        rec.update({
            "onepass_ms": one.ms, "onepass_iqr_ms": one.iqr_ms,
            "ratio_onepass_torch": ratio(peer.median, one.median),
            "ratio_onepass_ours": ratio(ours.median, one.median),
            "onepass_gbps": rate(nbytes, one.median) / 1e9,
            "onepass_max_abs_err": onepass_err,
        })
    if device.type == "cuda":
        rec["ours_pct_hbm"] = 100 * rate(nbytes, ours.median) / H100_HBM_BYTES_PER_S
        rec["torch_pct_hbm"] = 100 * rate(nbytes, peer.median) / H100_HBM_BYTES_PER_S
        if onepass:
            one_s = res["onepass"].timing.median
            rec["onepass_pct_hbm"] = 100 * rate(nbytes, one_s) / H100_HBM_BYTES_PER_S
    return rec


def run(
    device: str | torch.device, quick: bool = False, *, preset: str | None = None
) -> list[dict[str, Any]]:
    """Run the sweep and return one record per K.

    Args:
        device: ``cpu`` or ``cuda``.
        quick: Use the ``quick`` size preset (ignored when ``preset`` is given).
        preset: ``tiny``, ``quick`` or ``full``.

    Returns:
        Records with times (ms), ratio ``torch / ours``, GB/s and errors.

    Raises:
        OpUnavailable: If glm_hvp was not compiled for ``device``.
        CorrectnessError: If glm_hvp disagrees with the peer.
    """
    dev = resolve_device(device)
    size = resolve_preset(quick, preset)
    require_op(NAME, dev)
    n, d, Ks = SIZES[size]
    opts = timing_options(size)
    with no_tf32():
        records = [run_case(n, d, K, dev, **opts) for K in Ks]
        if dev.type == "cuda":
            onepass = os.environ.get("FASTUNLEARN_BENCH_NO_ONEPASS", "0") in ("", "0")
            records += [run_case(n, d, K, dev, torch.float64, onepass=onepass, **opts)
                        for K in FLOAT64_KS]
            records += [run_case(*shape, dev, torch.float64, onepass=onepass, **opts)
                        for shape in FLOAT64_SMALL]
    return records


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table(f"{NAME}: X^T (S * (X V)) + lam V vs torch two-GEMM (ratio > 1: ours faster)",
                records, COLUMNS)

