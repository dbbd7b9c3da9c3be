"""Shared checks of the fixed-shape step's tests (test_fixed_step, test_fixed_loop)."""

import numpy as np
import pytest
import torch
from scipy.special import expit

from fastunlearn.certified import woodbury


def settled_copy(wood):
    """The factor with its pending rows folded into G and C, on copies of the buffers."""
    copy = wood._replace(
        U_buf=wood.U_buf.clone(), G_buf=wood.G_buf.clone(), C_buf=wood.C_buf.clone()
    )
    return woodbury.settle(copy)


def assert_clean_beyond_rows(model):
    """Columns past the folded-in rows: zero in U (past the pending ones too) and G, the
    identity in C."""
    wood = model._wood
    if wood is None:
        return
    t = wood.rows
    assert torch.count_nonzero(wood.U_buf[..., wood.folded :]) == 0
    assert torch.count_nonzero(wood.G_buf[..., t:]) == 0
    T = wood.capacity
    eye = torch.eye(T, dtype=wood.C_buf.dtype, device=wood.C_buf.device)[t:]
    eye = eye.expand(wood.C_buf.shape[0], -1, -1)
    assert torch.equal(wood.C_buf[:, t:, :], eye)


def assert_same(general, fixed, rtol=1e-9):
    torch.testing.assert_close(fixed._W, general._W, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(fixed._margins(), general._margins(), rtol=rtol, atol=1e-11)
    assert fixed.budget_used_ == pytest.approx(general.budget_used_, rel=rtol)
    assert fixed.retrains_ == general.retrains_
    np.testing.assert_array_equal(fixed.removed_indices_, general.removed_indices_)
    for a, b in zip(general._history, fixed._history, strict=True):
        assert a.indices == b.indices and a.retrained == b.retrained
        assert b.bound == pytest.approx(a.bound, rel=1e-7)
        assert b.worst_case == pytest.approx(a.worst_case, rel=1e-12)
    assert (general._wood is None) == (fixed._wood is None)
    if general._wood is not None:
        assert general._wood.pending == 0  # only the compiled step leaves rows pending
        wood = settled_copy(fixed._wood)  # the compiled step's pending rows, as Python folds them
        assert wood.rows == general._wood.rows
        t = wood.rows
        torch.testing.assert_close(
            wood.U_buf[..., :t], general._wood.U_buf[..., :t], rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            wood.C_buf[:, :t, :t], general._wood.C_buf[:, :t, :t], rtol=1e-8, atol=1e-10
        )
        if fixed._wood.M_inv is not None:  # kept by Sherman-Morrison: the Woodbury inverse
            torch.testing.assert_close(
                fixed._wood.M_inv, woodbury.inverse(wood), rtol=1e-8, atol=1e-10
            )
    assert_clean_beyond_rows(fixed)
    assert_clean_beyond_rows(general)


class ReplayEagerly:
    """Stands in for a captured CUDA graph on the CPU: replay runs the captured function."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def stand_in_graphs(monkeypatch):
    """Make the fixed-shape step take its graph path on the CPU: "capture" runs the function
    once and returns a :class:`ReplayEagerly`."""
    from fastunlearn.certified import fixed_step

    monkeypatch.setattr(
        fixed_step.FixedShapeStep, "_record", lambda self, fn: (fn(), ReplayEagerly(fn))[1]
    )
    init = fixed_step.FixedShapeStep.__init__

    def init_with_graphs(self, model, factor, use_graphs):
        init(self, model, factor, use_graphs)
        self.use_graphs = True

    monkeypatch.setattr(fixed_step.FixedShapeStep, "__init__", init_with_graphs)


def perturbed_gradient(model, X, y):
    """Gradient of the perturbed objective on the remaining rows, dense numpy float64.

    Independent of the library: normalisation, labels, masks and the objective are redone
    here from the public attributes (plus the fixed subsample masks ``S_k``); it includes
    b and uses the current ``lam * n_rem`` scaling, the residual of the theory.

    Returns:
        ``(G [K, d], member [n, K], Xn, Y)``.
    """
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True) if model.normalize else X
    keep = np.ones(X.shape[0], dtype=bool)
    keep[model.removed_indices_] = False
    member = model._member.cpu().numpy() & keep[:, None]
    if model.coef_.shape[0] == 1:
        Y = np.where(y == model.classes_[1], 1.0, -1.0)[:, None]
    else:
        Y = np.where(y[:, None] == model.classes_[None, :], 1.0, -1.0)
    Z = Xn @ model.coef_.T
    dl = -Y * expit(-Y * Z)  # l'(z, y) = -y sigma(-y z), without overflow at large margins
    G = (Xn.T @ (member * dl)).T + model.lam * member.sum(0)[:, None] * model.coef_ + model.b_
    return G, member, Xn, Y
