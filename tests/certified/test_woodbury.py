"""The Woodbury starting factors: pending rows, settling them, the explicit inverse.

The compiled CPU step folds a removed row into ``M_inv`` (Sherman-Morrison) and writes only
its ``U`` column; ``settle`` folds such pending columns into ``G`` and ``C``. Here: settling
equals extending by the same rows, the inverse equals a dense one, and the misuse of a state
with pending rows is refused.
"""

import pytest
import torch

from fastunlearn.certified import woodbury


def _factors(seed=0, K=3, d=5, n=40, capacity=6):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=torch.float64, generator=gen)
    weights = torch.rand(n, K, dtype=torch.float64, generator=gen) * 0.25
    M = torch.einsum("nk,ni,nj->kij", weights, X, X) + 0.5 * torch.eye(d, dtype=torch.float64)
    L = torch.linalg.cholesky(M)
    return X, weights, M, woodbury.start(L, weights, capacity, inverse=True)


def _pend(state, X, rows):
    """What the compiled step leaves: U columns written, M_inv downdated, rows pending."""
    M_inv = state.M_inv.clone()
    for i in rows:
        u = X[i].unsqueeze(0) * state.weights[i].sqrt().unsqueeze(1)  # [K, d]
        state.U_buf[..., state.folded] = u
        h = torch.einsum("kij,kj->ki", M_inv, u)
        M_inv = M_inv + h.unsqueeze(-1) * h.unsqueeze(1) / (1 - (u * h).sum(1))[:, None, None]
        state = state._replace(pending=state.pending + 1)
    return state._replace(M_inv=M_inv)


def test_settle_equals_extending_by_the_same_rows():
    X, weights, M, state = _factors()
    rows = [3, 17, 8]
    extended, _ = woodbury.extend(state, X[rows], torch.tensor(rows))
    _, _, _, fresh = _factors()
    settled = woodbury.settle(_pend(fresh, X, rows))
    assert settled.rows == 3 and settled.pending == 0 and settled.folded == 3
    for name in ("U_buf", "G_buf", "C_buf"):
        torch.testing.assert_close(getattr(settled, name), getattr(extended, name),
                                   rtol=1e-12, atol=1e-14)
    # the pending form's inverse, kept by Sherman-Morrison, is the settled terms' inverse
    M_down = M - extended.U @ extended.U.mT
    torch.testing.assert_close(settled.M_inv, torch.linalg.inv(M_down), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(woodbury.inverse(settled), torch.linalg.inv(M_down), rtol=1e-10,
                               atol=1e-12)
    B = torch.randn(M.shape[-1], M.shape[0], dtype=torch.float64)
    torch.testing.assert_close(woodbury.solve(settled, B),
                               torch.linalg.solve(M_down, B.T.unsqueeze(-1)).squeeze(-1).T,
                               rtol=1e-10, atol=1e-12)


def test_extend_marks_the_inverse_stale_and_settle_without_pending_is_a_no_op():
    X, _, _, state = _factors(seed=1)
    assert woodbury.settle(state) is state
    extended, _ = woodbury.extend(state, X[[2]], torch.tensor([2]))
    assert extended.M_inv is None and extended.M_spare is state.M_spare


def test_a_state_with_pending_rows_must_be_settled_first():
    X, _, _, state = _factors(seed=2)
    pending = _pend(state, X, [4])
    with pytest.raises(ValueError, match="settle"):
        woodbury.extend(pending, X[[5]], torch.tensor([5]))
    with pytest.raises(ValueError, match="settle"):
        woodbury.inverse(pending)


def test_discard_keeps_pending_columns():
    X, _, _, state = _factors(seed=3)
    pending = _pend(state, X, [1, 6])
    kept = pending.U_buf.clone()
    pending.U_buf[..., 2] = 1.0  # an uncommitted step's column
    woodbury.discard(pending, pending.capacity)
    torch.testing.assert_close(pending.U_buf[..., :2], kept[..., :2], rtol=0, atol=0)
    assert torch.count_nonzero(pending.U_buf[..., 2:]) == 0


def test_settle_refuses_rows_that_leave_no_positive_definite_matrix():
    X, weights, M, state = _factors(seed=4, d=2, n=6, capacity=4)
    # a pending column far larger than M allows: M - u u^T is indefinite
    state.U_buf[..., 0] = 100.0
    assert woodbury.settle(state._replace(pending=1)) is None


def test_restart_reuses_both_inverse_buffers():
    _, weights, M, state = _factors(seed=5)
    again = woodbury.start(state.L, weights, state.capacity, state, inverse=True)
    assert again.M_inv is state.M_inv and again.M_spare is state.M_spare
    assert again.rows == 0 and again.pending == 0
    torch.testing.assert_close(again.M_inv, torch.linalg.inv(M), rtol=1e-10, atol=1e-12)
