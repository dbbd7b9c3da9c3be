"""The guarded commit of a pipelined run's certified removal step, fused (internal).

:func:`certified_commit_` does in one operator call what the pipelined step of
:mod:`fastunlearn.certified.fixed_step` otherwise writes as ~30 small tensor operations
after the row's step is planned: the host's tests of the step taken on the device (every
earlier row of the run committed, factor positive definite, solve residual within
``cg_tol`` of the bound, bound within the budget left), the step's updates where they pass
(weights, margins, the row's class weights, removed flag and counts, the Gram downdate, the
used budget), and the run's bookkeeping (``alive``, the row's five numbers into
``results[slot]``, the counter). On a GPU those operations are ~2 us kernels each inside
the captured graph; the CUDA kernel makes them two launches. Everything is float64 (flags
bool, indices int64); :func:`fastunlearn.ops.reference.certified_commit_` is the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fake_shapes import check_fake_devices_of, check_fake_shapes

__all__ = ["certified_commit_"]


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
    """Commit the planned step where the host's tests pass, and account the run, in place.

    With ``x = X[row]`` and ``total = out[0] + out[1]``::

        go = alive and out[2] > 0.5 and out[0] <= cg_tol * out[1]
             and not (budget_used + total > budget)
        where go:  W += V;  Z += XV;  A[row] = 0;  removed[row] = True
                   gram[c] -= coef_c x x^T   (coef = 1 if shared_gram else row_weights)
                   n_rem -= row_weights;  budget_used += total
        always:    alive &= go;  out[4] = go;  results[slot, :5] = out[:5];  counter += 1

    Args:
        W (Tensor[d, K]): the weights; written.
        Z (Tensor[n, K]): the margins ``X W``; written.
        A (Tensor[n, K]): the rows' class weights; the row's written.
        removed (Tensor[n], bool): removed flags; the row's written.
        gram (Tensor[G, d, d]): the Gram matrices (``G = 1`` if ``shared_gram``, else ``K``);
            written.
        n_rem (Tensor[K]): the weighted row counts; written.
        budget_used (Tensor, one element): the run's used budget; written.
        alive (Tensor, bool, one element): every earlier row of the run committed; written.
        out (Tensor[m >= 5]): the step's residual, bound, factor check (read) and committed
            flag ``out[4]`` (written).
        results (Tensor[T, >= 5]): per slot, the row's five numbers; row ``slot`` written.
        counter (Tensor, int64, one element): the run's rows so far; incremented.
        V (Tensor[d, K]): the planned step.
        XV (Tensor[n, K]): its margins.
        X (Tensor[n, d]): the features.
        row (Tensor, int64, one element): the removed row.
        slot (Tensor, int64, one element): its results row.
        row_weights (Tensor[K] or [1, K]): the row's class weights before the removal.
        budget (Tensor, one element): the budget.
        cg_tol: the solve tolerance relative to the bound, >= 0.
        shared_gram: one Gram matrix for every class.

    Raises:
        TypeError: a tensor of the wrong dtype.
        ValueError: a shape, device or layout that does not match, or (CPU) a row or slot
            out of range (the message names the argument). On CUDA the device cannot raise:
            a row out of range commits nothing and a slot out of range writes no results.

    """
    torch.ops.fastunlearn.certified_commit_.default(
        W, Z, A, removed, gram, n_rem, budget_used, alive, out, results, counter, V, XV, X,
        row, slot, row_weights, budget, float(cg_tol), bool(shared_gram),
    )  # fmt: skip


@torch.library.register_fake("fastunlearn::certified_commit_")
def _certified_commit_fake(*args: object) -> None:
    check_fake_devices_of("certified_commit_", args)
    # the kernels' shape checks, so that torch.compile fails at trace time; the arguments
    # are those of certified_commit_, in order
    W, Z, A = args[0], args[1], args[2]
    V, XV, X = args[11], args[12], args[13]
    assert isinstance(W, Tensor) and isinstance(X, Tensor)
    torch._check_value(W.dim() == 2 and X.dim() == 2, lambda: "certified_commit_: W, X must be 2-D")
    n, K = X.shape[0], W.shape[1]
    check_fake_shapes("certified_commit_", [
        ("V", V, W.shape), ("Z", Z, (n, K)), ("XV", XV, (n, K)), ("A", A, (n, K))])  # fmt: skip
    return None
