"""Seed A's epsilon-hat and the NeurIPS 2023 competition score vs the scripts' own algorithms.

Inputs are the real logits of the "Forget with Precision" fixture
(``../shared/fixtures/forget_with_precision``: 1000 forget examples x 80 retrained and 80
unlearned models per method, 10 classes).

Peers, on the same arrays (``bench/_metrics_reference.py``, written from the published
descriptions):

* **epsilon-hat reference**: the algorithm of the study's ``scripts/attack.py``: hinge
  logits model by model, ``scipy.stats.norm.pdf`` element by element, one
  ``sklearn.metrics.det_curve`` and the epsilon rule per example, ``np.nanmedian``;
* **competition reference**: the official scoring algorithm (``metric.py``), one example at
  a time with numpy broadcasting over models x thresholds (CPU), then the bins.

Before timing, our per-example epsilons are checked against the reference: Seed A's to
``rtol = 1e-12`` (both float64), the competition's to ``rtol = 1e-6`` (the official rates and
logarithms are float32; torch's and numpy's float32 log may differ by one ulp); the medians
and forget scores must then agree.

Timing: ours with :func:`bench.common.compare` (warm-up, median over repeats); the
reference, which runs for seconds to minutes, is timed once per size (its own correctness
run, after an untimed warm-up call on two examples that pays its imports), so its number
carries the noise of one sample. Ratios are reference / ours.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import _metrics_reference as ref
from bench.common import (
    REPO_ROOT,
    CorrectnessError,
    OpUnavailable,
    compare,
    print_table,
    ratio,
    resolve_device,
    resolve_preset,
    timing_options,
)

NAME = "metrics"

#: preset -> (methods, examples for epsilon-hat, examples for the competition score)
SIZES: dict[str, tuple[tuple[str, ...], int, int]] = {
    "tiny": (("finetune",), 20, 4),
    "quick": (("finetune",), 1000, 100),
    "full": (("finetune", "poison", "prune_complex", "activation_reset"), 1000, 1000),
}

COLUMNS = [
    ("metric", "metric", "s"),
    ("method", "method", "s"),
    ("examples", "S", "d"),
    ("models", "N", "d"),
    ("ours_ms", "ours ms", ".1f"),
    ("ours_iqr_ms", "±iqr", ".1f"),
    ("reference_ms", "reference ms", ".0f"),
    ("ratio_reference", "ref/ours", ".0f"),
    ("value", "value", ".4f"),
    ("reference_value", "ref value", ".4f"),
]


def fixture_dir() -> Path:
    """The shared fixture folder (``../shared`` next to the repository, or /work/shared)."""
    for cand in (REPO_ROOT.parent / "shared", REPO_ROOT.parents[1] / "shared",
                 Path("/work/shared")):
        d = cand / "fixtures" / "forget_with_precision"
        if (d / "logits_retain.npy").is_file():
            return d
    raise OpUnavailable("the forget_with_precision fixture is not available")


def _check_eps(ours: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> float:
    if ours.shape != expected.shape:
        raise CorrectnessError(f"{what}: shape {ours.shape} vs {expected.shape}")
    same_special = (np.isnan(ours) == np.isnan(expected)) & (np.isinf(ours) == np.isinf(expected))
    if not same_special.all():
        raise CorrectnessError(f"{what}: nan/inf pattern differs at "
                               f"{np.flatnonzero(~same_special)[:5]}")
    fin = np.isfinite(expected)
    try:
        np.testing.assert_allclose(ours[fin], expected[fin], rtol=rtol, atol=0)
        np.testing.assert_array_equal(ours[np.isinf(expected)], expected[np.isinf(expected)])
    except AssertionError as exc:
        raise CorrectnessError(f"{what}: result disagrees with the reference\n{exc}") from None
    return float(np.abs(ours[fin] - expected[fin]).max()) if fin.any() else 0.0


def run(
    device: str | torch.device, quick: bool = False, *, preset: str | None = None
) -> list[dict[str, Any]]:
    """Check, then time both metrics on the fixture; one record per (metric, method).

    Raises:
        OpUnavailable: If the fixture is missing.
        CorrectnessError: If our epsilons disagree with the reference.
    """
    from fastunlearn.metrics import (
        competition_epsilons,
        competition_score,
        epsilon_hat,
        logit_scaled_confidence,
        split_slots,
    )

    dev = resolve_device(device)
    size = resolve_preset(quick, preset)
    methods, s_eps, s_comp = SIZES[size]
    opts = timing_options(size)
    root = fixture_dir()
    retain_np = np.load(root / "logits_retain.npy")
    retain, labels = split_slots(retain_np)
    retain, labels = retain.to(dev), labels.to(dev)
    records = []
    # the references are timed once each: warm them first (scipy.stats and sklearn.metrics
    # import on the first call, about 1.6 s on the 2-core machine), as ours is by compare()
    warm = np.load(root / methods[0] / "logits_unlearn.npy")[:2]
    ref.seed_a_epsilons(retain_np[:2], warm, 0.05)
    ref.competition_epsilons(
        np.stack([ref.logit_scaled_confidence(retain_np[:2, m], labels[:2].cpu().numpy())
                  for m in (1, 2)], 1),
        np.stack([ref.logit_scaled_confidence(warm[:, m], labels[:2].cpu().numpy())
                  for m in (1, 2)], 1))
    for method in methods:
        unlearn_np = np.load(root / method / "logits_unlearn.npy")
        unlearn = split_slots(unlearn_np)[0].to(dev)
        n_models = unlearn.shape[1]

        # ---- Seed A epsilon-hat
        S = s_eps
        t0 = time.perf_counter()
        expected = ref.seed_a_epsilons(retain_np[:S], unlearn_np[:S], 0.05)
        ref_med = float(np.nanmedian(expected))
        ref_s = time.perf_counter() - t0
        got = epsilon_hat(retain[:S], unlearn[:S], labels[:S])
        err = _check_eps(got.per_example.numpy(), expected, 1e-12, f"epsilon-hat {method}")
        if not (got.epsilon_hat == ref_med or math.isclose(got.epsilon_hat, ref_med,
                                                          rel_tol=1e-12)):
            raise CorrectnessError(f"epsilon-hat {method}: {got.epsilon_hat} vs {ref_med}")
        r_s, u_s, y_s = retain[:S], unlearn[:S], labels[:S]
        res = compare({"ours": lambda r_s=r_s, u_s=u_s, y_s=y_s: epsilon_hat(r_s, u_s, y_s)},
                      dev, **opts)["ours"]
        records.append({
            "metric": "epsilon_hat", "method": method, "examples": S, "models": n_models,
            "delta": 0.05, "ours_ms": res.ms, "ours_iqr_ms": res.timing.iqr_ms,
            "reference_ms": ref_s * 1e3, "ratio_reference": ratio(ref_s, res.timing.median),
            "value": got.epsilon_hat, "reference_value": ref_med, "max_abs_err": err,
        })

        # ---- competition forget score
        S = s_comp
        cr = logit_scaled_confidence(retain[:S], labels[:S])
        cu = logit_scaled_confidence(unlearn[:S], labels[:S])
        y_np = labels[:S].cpu().numpy()

        def reference_score(S: int = S, y_np: np.ndarray = y_np,
                            unlearn_np: np.ndarray = unlearn_np) -> tuple[np.ndarray, float]:
            conf_r = np.stack([ref.logit_scaled_confidence(retain_np[:S, m], y_np)
                               for m in range(1, retain_np.shape[1])], 1)
            conf_u = np.stack([ref.logit_scaled_confidence(unlearn_np[:S, m], y_np)
                               for m in range(1, unlearn_np.shape[1])], 1)
            e = ref.competition_epsilons(conf_r, conf_u)
            return e, ref.competition_forget_score(e, conf_u.shape[1])

        t0 = time.perf_counter()
        _, ref_f = reference_score()
        ref_s = time.perf_counter() - t0
        # the algorithm check runs on identical confidences (ours), so that the float32
        # exponentials of numpy and torch (1e-7 apart) cannot move a value across a threshold
        expected = ref.competition_epsilons(cr.cpu().numpy(), cu.cpu().numpy())
        ours_eps = competition_epsilons(cr, cu).cpu().numpy()
        err = _check_eps(ours_eps, expected, 1e-6, f"competition {method}")
        got = competition_score(retain[:S], unlearn[:S], labels[:S])
        if abs(got.forget_score - ref_f) > 2.0 / S:
            raise CorrectnessError(f"competition {method}: F {got.forget_score} vs {ref_f}")
        r_s, u_s, y_s = retain[:S], unlearn[:S], labels[:S]
        res = compare(
            {"ours": lambda r_s=r_s, u_s=u_s, y_s=y_s: competition_score(r_s, u_s, y_s)},
            dev, **opts)["ours"]
        records.append({
            "metric": "competition_F", "method": method, "examples": S, "models": n_models,
            "delta": 1e-5, "ours_ms": res.ms, "ours_iqr_ms": res.timing.iqr_ms,
            "reference_ms": ref_s * 1e3, "ratio_reference": ratio(ref_s, res.timing.median),
            "value": got.forget_score, "reference_value": ref_f, "max_abs_err": err,
        })
    return records


def print_results(records: list[dict[str, Any]]) -> None:
    """Print the table of :func:`run`'s records."""
    print_table("epsilon-hat (Seed A) and competition F on the fixture vs the scripts' "
                "algorithms (ratio > 1: ours faster)", records, COLUMNS)
