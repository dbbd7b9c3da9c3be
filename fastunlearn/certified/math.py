"""Numerics of certified removal: perturbed logistic objective, Newton training, norms.

Conventions (all float64): ``X`` is ``[n, d]``; ``Y`` is ``[n, K]`` with entries +/-1 (one
column per one-vs-rest class, ``K = 1`` for a binary model); ``A`` is ``[n, K]`` with 1 where
row i is in class k's training subset ``S_k`` and not removed, else 0; ``W`` and ``b`` are
``[d, K]`` (one column per class). Class k's objective, in sum scaling, is

    L_k(w) = sum_i A_ik l(w . x_i, Y_ik) + (lam n_k / 2) ||w||^2 + b_k . w,
    l(z, y) = log(1 + exp(-y z)),   n_k = sum_i A_ik,

and the model's objective is the sum over classes. The curvature of ``l`` does not depend on
the label: ``l''(z) = sigma(z) sigma(-z)``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from .._process_flags import ProcessWideOverride
from .._repr import fields_repr

__all__ = [
    "NewtonResult",
    "curvature_weights",
    "derive_seed",
    "draw_perturbation",
    "cholesky_apply",
    "cholesky_factor",
    "gram_matrices",
    "lambda_max_upper",
    "logistic_gradient",
    "logistic_hessian",
    "logistic_objective",
    "loss_derivative",
    "newton_fit",
    "no_tf32",
    "normalize_rows",
    "residual_norm",
    "spectral_norm_upper",
    "small_problem_threads",
    "subsample_membership",
    "triangular_apply",
]

#: Relative safety margin on the largest eigenvalue returned by ``eigvalsh``: its backward
#: error is a small multiple of ``d * eps * ||K||``, far below this for any practical d.
EIG_RELATIVE_MARGIN = 1e-6
#: Absolute safety margin, relative to ``trace(K)`` (covers a tiny or zero ``lambda_max``).
EIG_TRACE_MARGIN = 1e-12


#: CPU problems with at most this many feature entries run their removal steps on one thread:
#: their tensor operations take microseconds, and waking the other threads for each of them
#: costs more (digits, 1438 x 64, K = 10: 8.1 ms per removal on 2 threads, 2.5 ms on one).
SINGLE_THREAD_ENTRIES = 1 << 20


@contextlib.contextmanager
def small_problem_threads(X: Tensor) -> Iterator[None]:
    """Run the block on one CPU thread when ``X`` is small (see ``SINGLE_THREAD_ENTRIES``).

    The count is saved and restored by the calling thread: torch's intra-op thread count
    (OpenMP's) belongs to each thread, so blocks running in other threads neither see nor
    undo it. (A thread *started* while a block runs takes its first count from the block's
    1, as torch seeds new threads with the last count set.)
    """
    if X.device.type != "cpu" or X.numel() > SINGLE_THREAD_ENTRIES:
        yield
        return
    saved = torch.get_num_threads()
    if saved == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _read_tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _write_tf32(flags: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


#: Counted across threads: a per-block save/restore let one thread's exit switch TF32 back
#: on while another thread's certified arithmetic was still running.
_TF32_OFF = ProcessWideOverride(_read_tf32, _write_tf32, (False, False))


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Switch TF32 matmuls and convolutions off inside the block, restoring the old flags.

    TF32's ~1e-3 relative error is as large as typical per-removal bounds, so certified code
    never runs with it (a no-op on CPU, where TF32 does not exist). The flags are
    process-wide: they stay off while any such block runs, in any thread, and the last block
    to leave restores the caller's.
    """
    with _TF32_OFF.active():
        yield


def normalize_rows(X: Tensor) -> Tensor:
    """Scale every row to unit L2 norm: ``x / max(||x||, tiny)`` (zero rows stay zero).

    Args:
        X (Tensor[n, d]): features; floating rows keep their dtype, integer or bool rows
            are normalised in float64 (the dtype certified code computes in).

    Returns:
        Tensor[n, d]: the normalised rows (a new tensor).

    Raises:
        TypeError: ``X`` is not a tensor, or is complex.

    """
    if not isinstance(X, Tensor):
        raise TypeError(f"argument 'X' must be a torch.Tensor, got {type(X).__name__}")
    if X.is_complex():
        raise TypeError(f"argument 'X' must be real, got {X.dtype}")
    if not X.is_floating_point():  # integer / bool features: no finfo, no true division
        return _normalize_rows(X.to(torch.float64), inplace=True)
    return _normalize_rows(X, inplace=False)


def _normalize_rows(X: Tensor, *, inplace: bool) -> Tensor:
    """:func:`normalize_rows`, written into ``X`` itself when ``inplace`` (bitwise the same)."""
    tiny = torch.finfo(X.dtype).tiny
    # scale by the largest entry first so that squaring neither underflows (|x| < 1e-154)
    # nor overflows (|x| > 1e154); max |x| = max(max x, -min x) exactly, without the
    # full-size temporary of X.abs()
    largest = torch.maximum(X.amax(dim=1, keepdim=True), X.amin(dim=1, keepdim=True).neg_())
    largest.clamp_min_(tiny)
    scaled = X.div_(largest) if inplace else X / largest
    return scaled.div_(torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp_min_(tiny))


def derive_seed(seed: int, purpose: str, counter: int = 0) -> int:
    """Derive an independent 63-bit seed for one random draw from the model's seed.

    Args:
        seed: the model's seed (>= 0).
        purpose: what the draw is for (``"perturbation"``, ``"subsample"``, ...).
        counter: which draw (e.g. the retrain count).

    Returns:
        A seed for ``torch.Generator.manual_seed``, identical on every platform.

    """
    words = [int(seed), int(counter)] + [ord(ch) for ch in purpose]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def draw_perturbation(seed: int, draw: int, d: int, K: int, sigma: float) -> Tensor:
    """Draw the objective perturbation ``b ~ N(0, sigma^2 I)`` of shape ``[d, K]`` (CPU).

    Draw 0 is the one made by ``fit``; the r-th retrain uses draw r. The draw is made on the
    CPU in float64 from a dedicated ``torch.Generator``, so it is the same on every device.

    Args:
        seed: the model's seed.
        draw: index of the draw.
        d: number of features.
        K: number of classes of the model.
        sigma: standard deviation, >= 0.

    Returns:
        Tensor[d, K], float64.

    """
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "perturbation", draw))
    return sigma * torch.randn(d, K, generator=gen, dtype=torch.float64)


def subsample_membership(Y: Tensor, ratio: float, seed: int) -> Tensor:
    """Training subsets ``S_k``: all positives of class k plus a seeded fraction of negatives.

    Each negative (row, class) pair is kept independently with probability ``ratio``
    (reference semantics); ``ratio == 1`` keeps every row for every class.

    Args:
        Y (Tensor[n, K]): +/-1 labels.
        ratio: fraction of negatives kept, in (0, 1].
        seed: the model's seed.

    Returns:
        Tensor[n, K], bool.

    """
    if ratio >= 1.0:
        return torch.ones(Y.shape, dtype=torch.bool, device=Y.device)
    gen = torch.Generator(device="cpu").manual_seed(derive_seed(seed, "subsample", 0))
    keep = torch.rand(Y.shape, generator=gen, dtype=torch.float64) < ratio
    return (Y > 0) | keep.to(Y.device)


def loss_derivative(Z: Tensor, Y: Tensor) -> Tensor:
    """``l'(z, y) = -y sigma(-y z)``, computed without the ``sigma - 1`` cancellation."""
    return -Y * torch.sigmoid(-Y * Z)


def curvature_weights(Z: Tensor, A: Tensor, out: Tensor | None = None) -> Tensor:
    """Per-row curvature weights ``A * sigma(z) sigma(-z)`` for :func:`fastunlearn.ops.glm_hessian`.

    Args:
        Z (Tensor[n, K]): margins ``X W``.
        A (Tensor[n, K]): row weights (0 for removed or non-member rows).
        out (Tensor[n, K], optional): written in place and returned.

    Returns:
        Tensor[n, K].

    """
    return torch.mul(A, torch.sigmoid(Z) * torch.sigmoid(-Z), out=out)


def logistic_objective(
    X: Tensor, Y: Tensor, A: Tensor, W: Tensor, b: Tensor, lam: float, Z: Tensor | None = None
) -> Tensor:
    """Per-class perturbed objective ``L_k(w_k)`` (see the module docstring).

    Args:
        X (Tensor[n, d]): features.
        Y (Tensor[n, K]): +/-1 labels.
        A (Tensor[n, K]): row weights (0 for removed or non-member rows).
        W (Tensor[d, K]): weights.
        b (Tensor[d, K]): perturbation.
        lam: L2 regularisation (multiplied by ``n_k = A[:, k].sum()``).
        Z (Tensor[n, K], optional): precomputed margins ``X W``.

    Returns:
        Tensor[K]: one objective value per class.

    """
    Z = X @ W if Z is None else Z
    n_k = A.sum(0)
    data = (A * F.softplus(-Y * Z)).sum(0)
    return data + 0.5 * lam * n_k * W.square().sum(0) + (b * W).sum(0)


def logistic_gradient(
    X: Tensor, Y: Tensor, A: Tensor, W: Tensor, b: Tensor, lam: float, Z: Tensor | None = None
) -> Tensor:
    """Gradient of the perturbed objective: ``X^T (A * l'(XW, Y)) + lam n_k w_k + b_k``.

    Args:
        X (Tensor[n, d]): features.
        Y (Tensor[n, K]): +/-1 labels.
        A (Tensor[n, K]): row weights (0 for removed or non-member rows).
        W (Tensor[d, K]): weights.
        b (Tensor[d, K]): perturbation.
        lam: L2 regularisation (multiplied by ``n_k = A[:, k].sum()``).
        Z (Tensor[n, K], optional): precomputed margins ``X W``.

    Returns:
        Tensor[d, K]: the gradient, one column per class.

    """
    Z = X @ W if Z is None else Z
    return X.T @ (A * loss_derivative(Z, Y)) + (lam * A.sum(0)) * W + b


def residual_norm(X: Tensor, Y: Tensor, A: Tensor, W: Tensor, b: Tensor, lam: float) -> float:
    """``||grad L_b(W; D_rem)||`` over all classes jointly (Frobenius norm), as a float.

    This is the "true" gradient residual of certified removal: it includes ``b`` and uses
    the current ``lam * n_rem`` scaling.
    """
    return float(torch.linalg.vector_norm(logistic_gradient(X, Y, A, W, b, lam)))


def logistic_hessian(
    X: Tensor, A: Tensor, W: Tensor, lam: float, Z: Tensor | None = None
) -> Tensor:
    """Hessians ``X^T diag(A_k sigma'(X w_k)) X + lam n_k I`` of all classes, via the op.

    Args:
        X (Tensor[n, d]): features.
        A (Tensor[n, K]): row weights (0 for removed or non-member rows).
        W (Tensor[d, K]): weights.
        lam: L2 regularisation (multiplied by ``n_k = A[:, k].sum()``).
        Z (Tensor[n, K], optional): precomputed margins ``X W``.

    Returns:
        Tensor[K, d, d].

    """
    Z = X @ W if Z is None else Z
    H = ops.glm_hessian(X, curvature_weights(Z, A), 0.0)
    H.diagonal(dim1=-2, dim2=-1).add_((lam * A.sum(0)).unsqueeze(-1))
    return H


def cholesky_factor(H: Tensor) -> Tensor:
    """Lower Cholesky factors of SPD matrices ``[K, d, d]``; raises if one is not SPD.

    Raises:
        RuntimeError: If a matrix of ``H`` is not positive definite (the Cholesky
            factorisation fails).

    """
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()):
        raise RuntimeError("a Hessian is not positive definite (Cholesky failed): 'lam' is "
                           "too small to regularise it in float64 (or the weights diverged)")
    return L


def cholesky_apply(L: Tensor, B: Tensor) -> Tensor:
    """Solve ``L_k L_k^T x_k = B[:, k]`` for all k: ``L [K, d, d]``, ``B [d, K]`` -> ``[d, K]``."""
    return torch.cholesky_solve(B.T.unsqueeze(-1), L).squeeze(-1).T


def triangular_apply(L: Tensor, B: Tensor) -> Tensor:
    """:func:`cholesky_apply` by two batched triangular solves that borrow the factors.

    ``torch.cholesky_solve`` copies all ``K`` factors on every call; at ``d = 784``, ``K = 10``
    the triangular solves are several times faster on the CPU.
    """
    rhs = B.T.unsqueeze(-1)
    y = torch.linalg.solve_triangular(L, rhs, upper=False)
    return torch.linalg.solve_triangular(L.mH, y, upper=True).squeeze(-1).T


class NewtonResult(NamedTuple):
    """What :func:`newton_fit` returns.

    Attributes:
        W (Tensor[d, K]): the minimiser.
        residual (float): ``||grad L_b(W)||`` (joint over classes) at the returned ``W``.
        iterations (int): Newton iterations taken.
        converged (bool): whether ``residual <= tol``.
        cholesky (Tensor[K, d, d]): Cholesky factors of the last Hessian built (a good
            preconditioner for later solves).

    """

    W: Tensor
    residual: float
    iterations: int
    converged: bool
    cholesky: Tensor

    def __repr__(self) -> str:
        """Return the bounded repr of the fields (large tensors print their shape)."""
        return fields_repr(self)


def _check_same_dtype(X: Tensor, **others: Tensor | None) -> None:
    """``X`` float32/float64 and every other tensor given of its dtype (TypeError naming it)."""
    if not isinstance(X, Tensor) or X.dtype not in (torch.float32, torch.float64):
        got = X.dtype if isinstance(X, Tensor) else type(X).__name__
        raise TypeError(f"argument 'X' must be a float32 or float64 tensor, got {got}")
    for name, t in others.items():
        if t is not None and (not isinstance(t, Tensor) or t.dtype != X.dtype):
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"argument '{name}' must have the dtype of 'X' ({X.dtype}), "
                            f"got {got}")


def newton_fit(
    X: Tensor,
    Y: Tensor,
    A: Tensor,
    b: Tensor,
    lam: float,
    *,
    W0: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> NewtonResult:
    """Minimise the perturbed objective by damped Newton (IRLS) with Cholesky solves.

    All K classes are solved together (the objective is separable): per iteration one
    :func:`fastunlearn.ops.glm_hessian`, one batched Cholesky factorisation and a
    backtracking line search (Armijo) per class. Stops when the joint gradient norm is at
    most ``tol``; logistic regression with ``lam > 0`` is strongly convex, so Newton converges
    quadratically and reaches ~1e-12 in a handful of iterations.

    Args:
        X (Tensor[n, d]): features (float64).
        Y (Tensor[n, K]): +/-1 labels.
        A (Tensor[n, K]): row weights (0/1).
        b (Tensor[d, K]): perturbation.
        lam: L2 regularisation, > 0 (multiplied by ``n_k``).
        W0 (Tensor[d, K], optional): starting point; zeros by default.
        max_iter: Newton iteration cap.
        tol: target for ``||grad L_b||``.

    Returns:
        NewtonResult: weights, final residual, iterations, convergence flag, Cholesky factors.

    Raises:
        TypeError: ``X`` is not float32 or float64, or ``Y``, ``A``, ``b`` or ``W0`` does not
            have the dtype of ``X`` (nothing is computed).
        RuntimeError: if the iteration produces non-finite values.

    """
    _check_same_dtype(X, Y=Y, A=A, b=b, W0=W0)
    d, K = X.shape[1], Y.shape[1]
    W = torch.zeros(d, K, dtype=X.dtype, device=X.device) if W0 is None else W0.clone()
    L: Tensor | None = None
    iterations = 0
    Z = X @ W
    G = logistic_gradient(X, Y, A, W, b, lam, Z)
    gnorm = float(torch.linalg.vector_norm(G))
    while gnorm > tol and iterations < max_iter:
        if not math.isfinite(gnorm):
            raise RuntimeError("Newton training diverged (non-finite gradient)")
        L = cholesky_factor(logistic_hessian(X, A, W, lam, Z))
        P = cholesky_apply(L, G)  # Newton direction (subtracted)
        decrement = (G * P).sum(0)  # g^T H^{-1} g >= 0, per class
        f0 = logistic_objective(X, Y, A, W, b, lam, Z)
        # Close to the optimum the objective's rounding error exceeds the predicted decrease;
        # there a full step is safe (quadratic convergence region).
        tiny = decrement <= 1e-10 * (1.0 + f0.abs())
        t = torch.ones(K, dtype=X.dtype, device=X.device)
        for _ in range(60):
            W_try = W - t * P
            Z_try = X @ W_try
            f = logistic_objective(X, Y, A, W_try, b, lam, Z_try)
            ok = tiny | (f <= f0 - 1e-4 * t * decrement)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        W, Z = W_try, Z_try
        G = logistic_gradient(X, Y, A, W, b, lam, Z)
        gnorm = float(torch.linalg.vector_norm(G))
        iterations += 1
    if not math.isfinite(gnorm):
        raise RuntimeError("Newton training diverged (non-finite gradient)")
    if L is None:  # already optimal at W0: still hand back a preconditioner
        L = cholesky_factor(logistic_hessian(X, A, W, lam, Z))
    converged = bool(gnorm <= tol)  # a Python bool also for a NumPy tol
    if not converged:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(
            f"Newton training stopped after {iterations} iterations with ||grad L_b|| = "
            f"{gnorm:.3e} > tol = {tol:.1e}; the residual is counted against the budget",
            ConvergenceWarning,
            stacklevel=3,
        )
    return NewtonResult(W, gnorm, iterations, converged, L)


def gram_matrices(X: Tensor, A: Tensor) -> Tensor:
    """``X^T diag(A[:, g]) X`` for every column g of ``A`` (``[G, d, d]``), via the op."""
    return ops.glm_hessian(X, A, 0.0)


def lambda_max_upper(gram: Tensor, trace: Tensor) -> Tensor:
    """Safe upper bounds of ``lambda_max(X_g^T X_g) = ||X_g||_2^2``, never from below.

    ``lambda_max`` comes from ``torch.linalg.eigvalsh`` of the (float64) Gram matrices, inflated
    by a relative margin (1e-6, far above eigvalsh's backward error) and an absolute margin
    (1e-12 trace); the result is capped by the Frobenius bound ``trace = ||X_g||_F^2``, which is
    computed from the row norms and always valid.

    Removing rows only shrinks a Gram matrix in the positive semidefinite order, so a value
    returned here stays an upper bound for every later, smaller set of rows.

    Args:
        gram (Tensor[G, d, d]): Gram matrices ``X_g^T X_g``.
        trace (Tensor[G]): ``||X_g||_F^2`` computed from the row norms.

    Returns:
        Tensor[G]: upper bounds of ``||X_g||_2^2``.

    """
    if gram.shape[-1] == 0:
        return torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    top = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0.0)
    safe = top * (1.0 + EIG_RELATIVE_MARGIN) + EIG_TRACE_MARGIN * trace
    return torch.minimum(safe, trace).clamp_min(0.0)


def spectral_norm_upper(gram: Tensor, trace: Tensor) -> Tensor:
    """Safe upper bounds of ``||X_g||_2``: ``sqrt`` of :func:`lambda_max_upper`.

    Args:
        gram (Tensor[G, d, d]): Gram matrices ``X_g^T X_g``.
        trace (Tensor[G]): ``||X_g||_F^2`` computed from the row norms.

    Returns:
        Tensor[G]: the bounds of ``||X_g||_2``.

    """
    return lambda_max_upper(gram, trace).sqrt()
