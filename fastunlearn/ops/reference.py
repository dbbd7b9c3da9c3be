"""Pure-PyTorch float64 oracles for every fastunlearn op.

Each function computes in float64 with the plainest formula and returns float64 results
(integer results as int64). Tests compare the compiled kernels against these; they are
also a slow fallback for users without the compiled library.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "glm_hvp",
    "glm_hvp_margins",
    "glm_hessian",
    "glm_cg",
    "cg_update_",
    "certified_cg_tail_",
    "certified_commit_",
    "certified_start_",
    "certified_woodbury_row_",
    "per_sample_grad",
    "per_sample_sq_norm",
    "per_sample_dot",
    "per_sample_weighted_sum",
    "knn_extreme",
    "competition_epsilons",
]


def _d(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def glm_hvp(X: Tensor, S: Tensor, V: Tensor, lam: float) -> Tensor:
    """``X^T (S * (X V)) + lam V`` -> [d, K]."""
    X, S, V = _d(X), _d(S), _d(V)
    return X.T @ (S * (X @ V)) + lam * V


def glm_hvp_margins(X: Tensor, S: Tensor, V: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """``(X^T (S * (X V)) + lam V, X V)`` -> ([d, K], [n, K])."""
    X, S, V = _d(X), _d(S), _d(V)
    XV = X @ V
    return X.T @ (S * XV) + lam * V, XV


def glm_hessian(X: Tensor, S: Tensor, lam: float) -> Tensor:
    """``out[k] = X^T diag(S[:, k]) X + lam I`` -> [K, d, d]."""
    X, S = _d(X), _d(S)
    d = X.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=X.device)
    # einsum rather than a stack of per-class products so that K = 0 gives an empty [0, d, d]
    return torch.einsum("nk,ni,nj->kij", S, X, X) + lam * eye


def glm_cg(X: Tensor, S: Tensor, B: Tensor, lam: float) -> Tensor:
    """Solve each class exactly: ``H_k^{-1} B[:, k]`` -> [d, K] (what the CG op converges to)."""
    H = glm_hessian(X, S, lam)
    return torch.linalg.solve(H, _d(B).T.unsqueeze(-1)).squeeze(-1).T


def cg_update_(
    x: Tensor,
    r: Tensor,
    p: Tensor,
    Ap: Tensor,
    inv_diag: Tensor | None,
    rz: Tensor,
    rr: Tensor,
    active: Tensor,
    iterations: Tensor,
    threshold_sq: Tensor,
) -> None:
    """One (preconditioned) CG step on the columns of [d, K] tensors, in place.

    For active columns k (``active[k]`` true) with ``pAp = p_k . Ap_k > 0``::

        alpha = rz_k / pAp;  x_k += alpha p_k;  r_k -= alpha Ap_k
        z_k = inv_diag_k * r_k   (or r_k without a preconditioner)
        rz_new = r_k . z_k;  beta = rz_new / rz_k;  p_k = z_k + beta p_k
        rz_k = rz_new;  rr_k = r_k . r_k;  iterations_k += 1
        active_k = rr_k > threshold_sq_k

    A column with ``pAp <= 0`` (breakdown: the operator is not positive definite along p,
    or p is zero) or a non-finite ``pAp`` is left unchanged and made inactive. Inactive
    columns are never modified, except that ``active`` stays false.
    """
    K = x.shape[1]
    for k in range(K):
        if not bool(active[k]):
            continue
        pAp = float((_d(p[:, k]) * _d(Ap[:, k])).sum())
        if not (pAp > 0.0) or pAp != pAp or pAp == float("inf"):
            active[k] = False
            continue
        alpha = float(rz[k]) / pAp
        xk = _d(x[:, k]) + alpha * _d(p[:, k])
        rk = _d(r[:, k]) - alpha * _d(Ap[:, k])
        zk = rk if inv_diag is None else _d(inv_diag[:, k if inv_diag.shape[1] > 1 else 0]) * rk
        rz_new = float((rk * zk).sum())
        beta = rz_new / float(rz[k]) if float(rz[k]) != 0.0 else 0.0
        pk = zk + beta * _d(p[:, k])
        x[:, k] = xk.to(x.dtype)
        r[:, k] = rk.to(r.dtype)
        p[:, k] = pk.to(p.dtype)
        rz[k] = rz_new
        rr[k] = float((rk * rk).sum())
        iterations[k] += 1
        active[k] = bool(rr[k] > threshold_sq[k])


def certified_cg_tail_(
    V: Tensor,
    XV: Tensor,
    HV: Tensor,
    R: Tensor,
    out: Tensor,
    P: Tensor,
    XP: Tensor,
    HP: Tensor,
    rz: Tensor,
    needed: Tensor | None,
    A: Tensor,
    Delta: Tensor,
    spectral: Tensor,
    bound_scale: float,
    first: bool,
) -> None:
    """Take one CG step of the certified removal step and its bound terms, in place.

    ``curvature = sum(P * HP, 0)``; first step: ``alpha = rz / curvature`` where positive,
    else 1, and ``V, XV, HV = alpha P, alpha XP, alpha HP``; else ``alpha = rz / curvature``
    where positive and ``needed``, else 0, added to ``V, XV, HV``. ``R = Delta - HV``;
    ``out[0] = sum ||R_k||``, ``out[1] = sum bound_scale spectral_k ||V_k|| ||sqrt(A_k) XV_k||``.
    """
    curvature = (_d(P) * _d(HP)).sum(0)
    take = curvature > 0
    if first:
        alpha = torch.where(take, _d(rz) / curvature, torch.ones_like(curvature))
        V.copy_(alpha * _d(P))
        XV.copy_(alpha * _d(XP))
        HV.copy_(alpha * _d(HP))
    else:
        if needed is not None:
            take = take & bool(needed.reshape(-1)[0])
        alpha = torch.where(take, _d(rz) / curvature, torch.zeros_like(curvature))
        V.copy_(_d(V) + alpha * _d(P))
        XV.copy_(_d(XV) + alpha * _d(XP))
        HV.copy_(_d(HV) + alpha * _d(HP))
    R.copy_(_d(Delta) - _d(HV))
    projected = (_d(A) * _d(XV).square()).sum(0).sqrt()
    step = torch.linalg.vector_norm(_d(V), dim=0)
    out[0] = torch.linalg.vector_norm(_d(R), dim=0).sum()
    out[1] = (bound_scale * _d(spectral) * step * projected).sum()


def certified_commit_(
    W: Tensor,
    Z: Tensor,
    A: Tensor,
    removed: Tensor,
    gram: Tensor,
    n_rem: Tensor,
    budget_used: Tensor,
    alive: Tensor,
    out: Tensor,
    results: Tensor,
    counter: Tensor,
    V: Tensor,
    XV: Tensor,
    X: Tensor,
    row: Tensor,
    slot: Tensor,
    row_weights: Tensor,
    budget: Tensor,
    cg_tol: float,
    shared_gram: bool,
) -> None:
    """Commit a pipelined run's planned step where the host's tests pass, in place.

    ``go = alive and out[2] > 0.5 and out[0] <= cg_tol out[1] and budget_used + out[0] +
    out[1] <= budget`` (NaN anywhere fails it). Where ``go``: ``W += V``, ``Z += XV``,
    ``A[row] = 0``, ``removed[row] = True``, ``gram[k] -= c_k x x^T`` (``x = X[row]``,
    ``c = 1`` if ``shared_gram`` else the row's weights), ``n_rem -= row_weights``,
    ``budget_used += out[0] + out[1]``. Always: ``alive &= go``, ``out[4] = go``,
    ``results[slot] = out[:5]``, ``counter += 1``.
    """
    residual, bound = float(out[0]), float(out[1])
    total = residual + bound
    go = (
        bool(alive.reshape(-1)[0])
        and float(out[2]) > 0.5
        and residual <= cg_tol * bound
        and float(budget_used.reshape(-1)[0]) + total <= float(budget.reshape(-1)[0])
    )
    r, t = int(row.reshape(-1)[0]), int(slot.reshape(-1)[0])
    if go:
        rw = _d(row_weights.reshape(-1)).clone()  # may be a view of A's row
        x = _d(X[r])
        outer = torch.outer(x, x)
        W.copy_(_d(W) + _d(V))
        Z.copy_(_d(Z) + _d(XV))
        A[r] = 0.0
        removed[r] = True
        coef = torch.ones(1, dtype=torch.float64, device=rw.device) if shared_gram else rw
        gram.copy_(_d(gram) - coef[:, None, None] * outer)
        n_rem.copy_(_d(n_rem) - rw)
        budget_used.reshape(-1)[0] += total
    alive.reshape(-1)[0] = bool(alive.reshape(-1)[0]) and go
    out[4] = 1.0 if go else 0.0
    results[t, :5] = out[:5]
    counter.reshape(-1)[0] += 1


def certified_start_(
    row_weights: Tensor,
    Delta: Tensor,
    A_after: Tensor,
    S: Tensor,
    lam_k: Tensor,
    spectral: Tensor,
    X: Tensor,
    Y: Tensor,
    Z: Tensor,
    A: Tensor,
    W: Tensor,
    row: Tensor,
    n_rem: Tensor,
    eig: Tensor,
    row_sq: Tensor,
    lam: float,
) -> None:
    """Compute the certified removal step's quantities for removing ``row``, in place.

    ``a = A[row]``; ``row_weights = a``; ``Delta = X[row]^T (a * l'(Z[row], Y[row])) + lam a
    W`` with ``l'(z, y) = -y sigma(-y z)``; ``A_after = A`` with its row zeroed; ``S = A_after
    sigma(Z) sigma(-Z)``; ``lam_k = (n_rem - a) lam``; ``spectral = sqrt(max(min(eig, row_sq
    @ A_after), 0))``.
    """
    r = int(row.reshape(-1)[0])
    a = _d(A[r]).clone()
    Zd, Yd = _d(Z), _d(Y)
    derivative = -Yd[r] * torch.sigmoid(-Yd[r] * Zd[r])
    after = _d(A).clone()
    after[r] = 0.0
    row_weights.copy_(a.reshape(row_weights.shape))
    Delta.copy_(torch.outer(_d(X[r]), a * derivative) + (lam * a) * _d(W))
    A_after.copy_(after)
    S.copy_(after * (torch.sigmoid(Zd) * torch.sigmoid(-Zd)))
    lam_k.copy_((_d(n_rem) - a) * lam)
    trace = _d(row_sq) @ after
    spectral.copy_(torch.minimum(_d(eig), trace).clamp_min(0.0).sqrt())


def certified_woodbury_row_(
    U_buf: Tensor,
    G_buf: Tensor,
    C_buf: Tensor,
    C_inv: Tensor,
    out: Tensor,
    U_new: Tensor,
    G_new: Tensor,
    L21: Tensor,
    slot: Tensor,
) -> None:
    """Write the removed row's Woodbury column into slot ``t`` and check the factor, in place.

    ``S22_k = 1 - U_new_k . G_new_k - L21_k . L21_k``; ``out[2] = all(S22 > 0)``; ``L22 =
    sqrt(max(S22, tiny))``; ``C_inv[k, t] = (e_t - L21_k^T C_inv_k) / L22_k`` (with ``C_inv``
    before the write); ``C_buf[k, t] = L21_k^T + L22_k e_t``; ``U_buf[k, :, t] = U_new_k``;
    ``G_buf[k, :, t] = G_new_k``.
    """
    t = int(slot.reshape(-1)[0])
    U, G, L = _d(U_new)[..., 0], _d(G_new)[..., 0], _d(L21)[..., 0]  # [K, d], [K, d], [K, T]
    S22 = 1.0 - (U * G).sum(1) - (L * L).sum(1)
    out[2] = 1.0 if bool((S22 > 0).all()) else 0.0
    L22 = S22.clamp_min(torch.finfo(torch.float64).tiny).sqrt()  # [K]
    onehot = torch.zeros(C_buf.shape[-1], dtype=torch.float64, device=C_buf.device)
    onehot[t] = 1.0
    inv_row = (onehot - torch.einsum("ks,ksc->kc", L, _d(C_inv))) / L22[:, None]
    C_inv[:, t, :] = inv_row
    C_buf[:, t, :] = L + L22[:, None] * onehot
    U_buf[:, :, t] = U
    G_buf[:, :, t] = G


def per_sample_grad(A: Tensor, G: Tensor) -> Tensor:
    """``out[b] = sum_t G[b, t]^T A[b, t]`` -> [B, out, in]."""
    return torch.einsum("bto,bti->boi", _d(G), _d(A))


def per_sample_sq_norm(A: Tensor, G: Tensor, bias: bool) -> Tensor:
    """``||per_sample_grad[b]||_F^2`` (+ ``||sum_t G[b, t]||^2`` if ``bias``) -> [B]."""
    out = per_sample_grad(A, G).pow(2).sum(dim=(1, 2))
    if bias:
        out = out + _d(G).sum(1).pow(2).sum(1)
    return out


def per_sample_dot(A: Tensor, G: Tensor, W: Tensor, bias: Tensor | None) -> Tensor:
    """``<per_sample_grad[b], W>`` (+ ``<sum_t G[b, t], bias>``) -> [B]."""
    out = (per_sample_grad(A, G) * _d(W)).sum(dim=(1, 2))
    if bias is not None:
        out = out + _d(G).sum(1) @ _d(bias)
    return out


def per_sample_weighted_sum(A: Tensor, G: Tensor, w: Tensor) -> Tensor:
    """``sum_b w[b] per_sample_grad[b]`` -> [out, in]."""
    return torch.einsum("b,boi->oi", _d(w), per_sample_grad(A, G))


def knn_extreme(Q: Tensor, P: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Squared distances and indices of the k farthest (largest) or nearest rows of P.

    Ties are broken by the smaller index of P. Returns ([m, k] float64, [m, k] int64).
    Distances are direct sums ``sum((q - p)^2)``, one query at a time: a pool row equal to
    the query is at exactly 0 (``torch.cdist``'s matrix-product expansion left ~1e-7 for
    rows of norm 1e4 and misordered neighbours closer together than that).
    """
    Qd, Pd = _d(Q), _d(P)
    D = Qd.new_zeros(Qd.shape[0], Pd.shape[0])
    for i in range(Qd.shape[0]):
        D[i] = (Pd - Qd[i]).square().sum(1)
    # stable sort on the key gives smallest-index tie breaking
    order = torch.sort(-D if largest else D, dim=1, stable=True).indices[:, :k]
    return torch.gather(D, 1, order), order


def _np_median(x: Tensor) -> float:
    s = torch.sort(x).values
    lo, hi = float(s[(len(s) - 1) // 2]), float(s[len(s) // 2])
    return lo if lo == hi else (lo + hi) / 2


def _np_linspace(start: Tensor, stop: Tensor, num: int) -> Tensor:
    """Rows of ``numpy.linspace(start, stop, num)`` (``i * step + start``, last = stop)."""
    i = torch.arange(num, dtype=torch.float64, device=start.device)
    out = i * ((stop - start) / (num - 1))[..., None] + start[..., None]
    out[..., -1] = stop
    return out


def competition_epsilons(
    retrained: Tensor,
    unlearned: Tensor,
    grid: Tensor,
    grid_offsets: Tensor,
    table_r: Tensor,
    table_u: Tensor,
) -> Tensor:
    """Competition epsilons by brute force: every threshold of both families counted.

    One example at a time, as the official ``metric.py``: positive group by median, the
    peaky rule, the given single-threshold grid (positive if ``f >= t``) and all
    ``right x 400`` intervals (positive if ``l <= f <= r``, empty intervals included),
    each looked up in the epsilon table of its positive group. -> float64 [S].
    """
    r, u = _d(retrained).cpu(), _d(unlearned).cpu()
    grid, off = _d(grid).cpu(), grid_offsets.cpu().tolist()
    tables = {True: table_r.cpu(), False: table_u.cpu()}
    out = torch.empty(r.shape[0], dtype=torch.float64)
    for s in range(r.shape[0]):
        pos_r = _np_median(r[s]) > _np_median(u[s])
        pos, neg = (r[s], u[s]) if pos_r else (u[s], r[s])
        pd, nd = float(pos.max() - pos.min()), float(neg.max() - neg.min())
        largest, smallest = (pd, nd) if pd > nd else (nd, pd)
        if largest > 0 and smallest / largest < 0.01:
            out[s] = 50.0
            continue
        t = grid[off[s]:off[s + 1]]
        fn = (pos[:, None] < t).sum(0)
        fp = (neg[:, None] >= t).sum(0)
        vals = [tables[pos_r][fp, fn]]
        a, b, a_r = (neg, pos, not pos_r) if pd >= nd else (pos, neg, pos_r)
        w = a.max() - a.min()
        lo, hi = a.min() + w - 2.0, a.max() + 2.0
        right = _np_linspace(lo, hi, int(math.ceil(float(hi - lo) * 100)))
        centre = right - w
        left = _np_linspace(centre - 2.0, centre + 2.0, 400)  # [R, 400]
        rr = right[:, None, None]
        tp = ((left[..., None] <= a) & (a <= rr)).sum(-1)
        fp = ((left[..., None] <= b) & (b <= rr)).sum(-1)
        vals.append(tables[a_r][fp, a.numel() - tp].reshape(-1))
        best = float(torch.cat(vals).max())
        out[s] = math.nan if best == -math.inf else min(max(best, 0.0), 50.0)
    return out
