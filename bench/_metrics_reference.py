"""Slow references for bench_metrics: the algorithms of the two scoring scripts, in loops.

Written for fastunlearn from the published descriptions (reference note sections 2-3):

* :func:`seed_a_epsilons` follows "Forget with Precision" ``scripts/attack.py``: hinge
  logits model by model, ``scipy.stats.norm.pdf`` element by element, one
  ``sklearn.metrics.det_curve`` per example, then the per-example epsilon rule.
* :func:`competition_epsilons` follows the NeurIPS 2023 scoring code (``metric.py``): one
  example at a time, both threshold families evaluated by broadcasting numpy comparisons
  over all models and thresholds, rates in float32 as the official code computes them.
"""

from __future__ import annotations

import math

import numpy as np


def seed_a_hinge(arr: np.ndarray) -> np.ndarray:
    """Hinge logits [S, N] of a fixture array [S, N+1, C] (slot 0 = one-hot label)."""
    S, M, C = arr.shape
    labels = np.argmax(arr[:, 0], axis=1)
    rows = np.arange(S)
    others = np.ones((S, C), dtype=bool)
    others[rows, labels] = False
    out = np.empty((S, M - 1))
    for m in range(1, M):
        z = arr[:, m].astype(np.float64)
        out[:, m - 1] = z[rows, labels] - z[others].reshape(S, C - 1).max(axis=1)
    return out


def _pdf_loop(points: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    S, M = points.shape
    out = np.empty((S, M))
    for i in range(S):
        for j in range(M):
            out[i, j] = norm.pdf(points[i, j], mean[i], std[i])
    return out


def _seed_a_example_eps(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> float:
    e = 1e-8
    if np.any((fpr == 0) & (fnr == 0)):
        return math.inf
    drop = (fpr == 0) ^ (fnr == 0)
    fpr, fnr = fpr[~drop], fnr[~drop]
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.concatenate([np.log(1 - delta - fpr + e) - np.log(fnr + e),
                               np.log(1 - delta - fnr + e) - np.log(fpr + e)])
    if vals.size == 0 or np.all(np.isnan(vals)):
        return math.nan
    return float(np.nanmax(vals))


def seed_a_epsilons(retain: np.ndarray, unlearn: np.ndarray, delta: float = 0.05) -> np.ndarray:
    """Per-example epsilons of Seed A's attack on two fixture arrays (slow reference)."""
    from sklearn.metrics import det_curve

    hr, hu = seed_a_hinge(retain), seed_a_hinge(unlearn)
    mr, sr = hr.mean(axis=1), hr.std(axis=1)
    mu, su = hu.mean(axis=1), hu.std(axis=1)
    lr = _pdf_loop(hr, mu, su) / _pdf_loop(hr, mr, sr)
    lu = _pdf_loop(hu, mu, su) / _pdf_loop(hu, mr, sr)
    out = np.empty(hr.shape[0])
    for i in range(hr.shape[0]):
        if np.median(lr[i]) > np.median(lu[i]):
            neg, pos = lu[i], lr[i]
        else:
            neg, pos = lr[i], lu[i]
        scores = np.concatenate([neg, pos])
        y = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
        fpr, fnr, _ = det_curve(y, scores)
        out[i] = _seed_a_example_eps(fpr, fnr, delta)
    return out


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Competition statistic for logits [K, C] (float32 exp, float64 softmax)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.array(np.exp(z), dtype=np.float64)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(z))
    pc = p[rows, labels].copy()
    p[rows, labels] = 0
    return np.log(pc + 1e-45) - np.log(p.sum(axis=1) + 1e-45)


def _np_linspace_rows(start: float, stop: float, num: int) -> np.ndarray:
    return np.linspace(start, stop, num=num)


def _rates(pp_pos: np.ndarray, pp_neg: np.ndarray) -> tuple[np.ndarray, ...]:
    # predicted-positive indicators [models, thresholds] -> float32 means as the official code
    tpr = pp_pos.astype(np.float32).mean(0, dtype=np.float32)
    fnr = (~pp_pos).astype(np.float32).mean(0, dtype=np.float32)
    fpr = pp_neg.astype(np.float32).mean(0, dtype=np.float32)
    tnr = (~pp_neg).astype(np.float32).mean(0, dtype=np.float32)
    return tpr, fnr, fpr, tnr


def _single(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, ...]:
    import torch

    allc = np.concatenate([pos, neg])
    lo, hi = allc.min(), allc.max()
    num = int(math.ceil((hi - lo) * 100))
    t = torch.linspace(float(lo), float(hi), num, dtype=torch.float64).numpy()
    return _rates(pos[:, None] >= t[None], neg[:, None] >= t[None])


def _double(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, ...]:
    pd_, nd_ = pos.max() - pos.min(), neg.max() - neg.min()
    width = nd_ if pd_ > nd_ else pd_
    if pd_ >= nd_:
        pos, neg = neg, pos
    lo = pos.min() + width - 2.0
    hi = pos.max() + 2.0
    right = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * 100)))
    left = np.concatenate([np.linspace(r - width - 2.0, r - width + 2.0, num=400) for r in right])
    right = np.repeat(right, 400)
    pp_pos = (left[None] <= pos[:, None]) & (pos[:, None] <= right[None])
    pp_neg = (left[None] <= neg[:, None]) & (neg[:, None] <= right[None])
    return _rates(pp_pos, pp_neg)


def competition_example_eps(pos: np.ndarray, neg: np.ndarray, delta: float = 1e-5) -> float:
    """One example's epsilon (before the final clip to [0, 50]) of the competition metric."""
    pd_, nd_ = pos.max() - pos.min(), neg.max() - neg.min()
    largest = pd_ if pd_ > nd_ else nd_
    smallest = nd_ if pd_ > nd_ else pd_
    with np.errstate(invalid="ignore", divide="ignore"):
        if smallest / largest < 0.01:
            return 50.0
        parts = [_double(pos, neg), _single(pos, neg)]
        tpr, fnr, fpr, tnr = (np.concatenate([p[i] for p in parts]) for i in range(4))
        eps = np.zeros(len(tpr), dtype=np.float32)
        eps[(fpr + fnr == 0) & (tpr + tnr == 2)] = np.inf
        eps[(eps == 0) & (fpr * fnr == 0)] = np.nan
        live = eps == 0
        t1 = np.log(1 - delta - fpr) - np.log(fnr)
        t2 = np.log(1 - delta - fnr) - np.log(fpr)
        val = np.clip(np.fmax(t1, t2), 0, None)
        eps[live] = val[live]
        eps = eps[~np.isnan(eps)]
    if eps.size == 0:
        return math.nan
    return float(np.max(eps))


def competition_epsilons(retrained: np.ndarray, unlearned: np.ndarray,
                         delta: float = 1e-5) -> np.ndarray:
    """Per-example competition epsilons (clipped to [0, 50]) from confidences [S, N], [S, M]."""
    out = np.empty(retrained.shape[0])
    for i in range(retrained.shape[0]):
        r, u = retrained[i], unlearned[i]
        pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
        out[i] = competition_example_eps(pos, neg, delta)
    return np.clip(out, 0, 50)


def competition_forget_score(eps: np.ndarray, num_models: int) -> float:
    """Binned forget score F of per-example epsilons (official bucket loop)."""
    max_eps = math.ceil(math.log(num_models - 1))
    buckets = []
    start, points = 0.0, 1.0
    while start + 0.5 <= max_eps:
        buckets.append((start, points))
        points /= 2
        start += 0.5
    total = 0.0
    for e in eps:
        for s, p in buckets:
            if e < s + 0.5:
                total += p
                break
    return total / len(eps)
