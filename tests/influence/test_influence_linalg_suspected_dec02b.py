"""Suspected defects of the influence/linalg/grad layers, confirmed and fixed (audit dec02b).

1. An ``nn.Embedding(max_norm=...)`` renormalises its weights in place in every forward pass:
   the influence functions and curvature operators changed the caller's weights silently
   (even ``influence_update(apply=False)``), or failed inside ``torch.func``.
2. LiSSA diverging in a later repetition reported only that repetition's steps as
   ``solver_iterations``.
3. The sum-reduction checks used the first row only: a row with a loss of exactly 0 (a
   confident float32 model) let a mean-reduced loss through (gradients n times too small).
4. A model calling ``F.scaled_dot_product_attention`` directly ran the CPU flash kernel,
   which has neither forward-mode AD nor a double backward: every curvature product failed.
5. Certified removal after save/load with solver 'cg' agrees to the CG tolerance only
   (documented); 'cholesky' continues exactly.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastunlearn.grad import PerSampleGradients
from fastunlearn.influence import (
    GGNOperator,
    LissaSettings,
    check_update_options,
    gradient_difference,
    influence_update,
    loss_gradient,
    loss_value,
)
from fastunlearn.influence.gradients import check_sum_reduction, default_loss
from fastunlearn.influence.update import _solve_lissa
from fastunlearn.linalg import LissaDivergenceError, NetworkHessianOperator, lissa
from fastunlearn.linalg.dense import dense_hessian

D64 = torch.float64


# ---- 1. embeddings with max_norm ----------------------------------------------------------


class _EmbNet(nn.Module):
    def __init__(self, bag: bool = False) -> None:
        super().__init__()
        self.bag = bag
        self.emb = (
            nn.EmbeddingBag(10, 4, max_norm=1.0, mode="sum")
            if bag
            else nn.Embedding(10, 4, max_norm=1.0)
        )
        self.head = nn.Linear(4, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(t) if self.bag else self.emb(t).mean(1))


def _emb_model(bag: bool = False) -> _EmbNet:
    torch.manual_seed(0)
    model = _EmbNet(bag).double()
    with torch.no_grad():
        model.emb.weight.mul_(3.0)  # rows well above max_norm: a forward would shrink them
    return model


_TOKENS = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(1))
_LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
_NEW = torch.tensor([1, 1, 2, 0, 1, 2])
_HEAD = ["head.weight", "head.bias"]


def _entry_points():
    t, y, y2 = _TOKENS, _LABELS, _NEW
    return {
        "loss_value": lambda m: loss_value(m, default_loss, t, y),
        "loss_gradient": lambda m: loss_gradient(m, default_loss, t, y),
        "gradient_difference": lambda m: gradient_difference(
            m, default_loss, t[:2], y[:2], t[:2], y2[:2]
        ),
        "update_cg_no_apply": lambda m: influence_update(
            m,
            t[:2],
            y[:2],
            new_targets=y2[:2],
            order=2,
            train_data=(t, y),
            damping=0.1,
            apply=False,
        ),
        "update_head_only": lambda m: influence_update(  # was a torch.func RuntimeError
            m,
            t[:2],
            y[:2],
            new_targets=y2[:2],
            order=2,
            train_data=(t, y),
            damping=0.1,
            params=_HEAD,
        ),
        "check_update_options": lambda m: check_update_options(m, order=2),
        "hessian_fwd_rev": lambda m: (
            NetworkHessianOperator(m, default_loss, t, y)
            @ torch.ones(sum(p.numel() for p in m.parameters()), 1, dtype=D64)
        ),
        "hessian_rev_rev_head": lambda m: (
            NetworkHessianOperator(m, default_loss, t, y, mode="rev-rev", params=_HEAD)
            @ torch.ones(15, 1, dtype=D64)
        ),
        "ggn": lambda m: (
            GGNOperator(m, default_loss, t, y)
            @ torch.ones(sum(p.numel() for p in m.parameters()), 1, dtype=D64)
        ),
        "dense_hessian": lambda m: dense_hessian(m, default_loss, t, y, params=_HEAD),
    }


@pytest.mark.parametrize("bag", [False, True])
@pytest.mark.parametrize("entry", sorted(_entry_points()))
def test_max_norm_embedding_is_refused_and_the_model_unchanged(entry, bag):
    model = _emb_model(bag)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'emb' \(Embedding(Bag)?\) with max_norm=1\.0"):
        _entry_points()[entry](model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_operator_refuses_max_norm_set_after_construction():
    model = _emb_model()
    model.emb.max_norm = None
    op = NetworkHessianOperator(model, default_loss, _TOKENS, _LABELS, params=_HEAD)
    op @ torch.ones(15, 1, dtype=D64)  # runs without max_norm
    model.emb.max_norm = 1.0
    before = model.emb.weight.detach().clone()
    with pytest.raises(ValueError, match="max_norm"):
        op @ torch.ones(15, 1, dtype=D64)
    assert torch.equal(model.emb.weight, before)


def test_per_sample_engine_changes_embeddings_only_as_one_forward_pass():
    # the engine's forward is the model's own (documented); its layout probes (B == T here)
    # must not renormalise anything further
    model, plain = _emb_model(), _emb_model()
    t = torch.randint(0, 10, (5, 5), generator=torch.Generator().manual_seed(2))
    PerSampleGradients(model).per_sample(t, _LABELS[:5], default_loss)
    plain(t)
    assert torch.equal(model.emb.weight, plain.emb.weight)


# ---- 2. LiSSA steps after a divergence in a later repetition -------------------------------


class _ExplodingHvp:
    """``H v = v`` for the first ``good`` products, then ``1e6 v`` (scale 10: divergence)."""

    def __init__(self, good: int) -> None:
        self.good, self.calls = good, 0

    def __call__(self, v: torch.Tensor, batch: object = None) -> torch.Tensor:
        self.calls += 1
        return v * (1.0 if self.calls <= self.good else 1e6)


def test_lissa_divergence_reports_its_repetition_and_all_steps_run():
    hvp = _ExplodingHvp(good=30)
    with pytest.raises(LissaDivergenceError) as info:
        lissa(
            lambda v: hvp(v),
            torch.ones(3, dtype=D64),
            scale=10.0,
            depth=20,
            repetitions=3,
            check_every=5,
        )
    exc = info.value
    assert (exc.repetition, exc.step) == (1, 15)
    assert exc.steps_run == hvp.calls == 35


def test_lissa_solver_iterations_count_earlier_repetitions():
    # was 15 (the diverging repetition's steps) where 35 steps (and 140 rows) ran
    hvp = _ExplodingHvp(good=30)
    settings = LissaSettings(
        batch_size=4, damping=0.0, scale=10.0, depth=20, repetitions=3, check_every=5
    )
    X, y = torch.randn(8, 3, dtype=D64), torch.zeros(8, dtype=torch.long)
    solution, steps, rows, reason = _solve_lissa(
        hvp, torch.ones(3, dtype=D64), settings, X, y, False
    )
    assert solution is None and "repetition 1" in reason
    assert steps == hvp.calls == 35
    assert rows == 4 * hvp.calls


# ---- 3. the sum-reduction checks on rows with a zero loss ----------------------------------


def _confident_model() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """float32 model whose cross-entropy is exactly 0 on row 0 (margin 300)."""
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[30.0, 0, 0], [-30.0, 0, 0]]))
        model.bias.zero_()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    x[0] = torch.tensor([5.0, 0, 0])
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    return model, x, y


def _mean(o, t):
    return F.cross_entropy(o, t, reduction="mean")


def _sum(o, t):
    return F.cross_entropy(o, t, reduction="sum")


def test_mean_loss_refused_when_the_first_row_has_zero_loss():
    model, x, y = _confident_model()
    assert float(_sum(model(x[:1]), y[:1]).detach()) == 0.0
    with pytest.raises(ValueError, match="must sum over the batch"):
        check_sum_reduction(model, _mean, x, y)
    with pytest.raises(ValueError, match="must sum over the batch"):
        loss_gradient(model, _mean, x, y)  # was accepted: a gradient 6 times too small
    with pytest.raises(ValueError, match="must sum over the batch"):
        # the corrected rows are checked: row 0 keeps its label (loss 0), row 1 changes
        influence_update(
            model,
            x,
            y,
            new_targets=torch.tensor([0, 0, 0, 1, 1, 0]),
            loss_fn=_mean,
            order=1,
            tau=0.1,
        )
    # the summed loss is still accepted, and its gradient is the autograd one
    got = loss_gradient(model, _sum, x, y, chunk_size=None)
    want = torch.autograd.grad(_sum(model(x), y), list(model.parameters()))
    torch.testing.assert_close(got, torch.cat([g.reshape(-1) for g in want]))


def test_mean_loss_refused_when_every_row_has_zero_loss():
    model, x, y = _confident_model()
    x = x[:1].repeat(4, 1)
    y = y[:1].repeat(4)
    with pytest.raises(ValueError, match="must sum over the batch"):
        check_sum_reduction(model, _mean, x, y)  # through zero outputs
    check_sum_reduction(model, _sum, x, y)


@pytest.mark.parametrize("declared", ["sum", "mean"])
def test_engine_reduction_check_skips_zero_loss_rows(declared):
    model, x, y = _confident_model()
    wrong = _mean if declared == "sum" else _sum
    with pytest.raises(ValueError, match=f"declared '{declared}'"):
        PerSampleGradients(model, loss_reduction=declared).sq_norms(x, y, wrong)
    right = _sum if declared == "sum" else _mean
    got = PerSampleGradients(model, loss_reduction=declared).sq_norms(x, y, right)
    want = torch.stack(
        [
            sum(
                g.pow(2).sum()
                for g in torch.autograd.grad(
                    _sum(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters())
                )
            )
            for i in range(6)
        ]
    )
    torch.testing.assert_close(got, want)


# ---- 4. direct scaled dot-product attention ------------------------------------------------


class _Attention(nn.Module):
    def __init__(self, explicit: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 3)
        self.explicit = explicit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.explicit:  # the independent reference: attention written out
            out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.head(out.mean(1))


def _sdpa_flags():
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
        cuda.math_sdp_enabled(),
    )


def test_direct_sdpa_curvature_matches_the_explicit_attention_hessian():
    # every product raised NotImplementedError (fwd-rev) / RuntimeError (rev-rev, GGN,
    # dense) from the CPU flash kernel
    torch.manual_seed(0)
    model = _Attention().double()
    reference = _Attention(explicit=True).double()
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(7, 5, 4, dtype=D64), torch.randint(0, 3, (7,))
    names = [n for n, _ in reference.named_parameters()]
    shapes = [p.shape for _, p in reference.named_parameters()]
    sizes = [p.numel() for p in reference.parameters()]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        state = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return default_loss(functional_call(reference, state, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    H = torch.autograd.functional.hessian(flat_loss, theta)
    V = torch.randn(theta.numel(), 2, dtype=D64)
    before = _sdpa_flags()
    for mode in ("fwd-rev", "rev-rev"):
        for batch_size in (None, 3):
            op = NetworkHessianOperator(model, default_loss, x, y, mode=mode, batch_size=batch_size)
            torch.testing.assert_close(op @ V, H @ V)
    torch.testing.assert_close(dense_hessian(model, default_loss, x, y), H)
    ggn = GGNOperator(model, default_loss, x, y) @ V
    torch.testing.assert_close(ggn, GGNOperator(reference, default_loss, x, y) @ V)
    assert _sdpa_flags() == before


# ---- 5. certified removal after save/load (documented behaviour) ----------------------------


@pytest.mark.parametrize(
    ("solver", "cg_tol", "tol"),
    [("cholesky", 0.01, 1e-12), ("cg", 0.01, 1e-5), ("cg", 1e-9, 1e-10)],
)
def test_certified_removal_after_load_matches_within_the_documented_tolerance(
    tmp_path, solver, cg_tol, tol
):
    from fastunlearn.certified import CertifiedLogisticRegression

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8))
    y = (X @ rng.standard_normal(8) + 0.5 * rng.standard_normal(300) > 0).astype(int)
    model = CertifiedLogisticRegression(
        lam=1e-2, sigma=1.0, epsilon=50.0, solver=solver, cg_tol=cg_tol, seed=0
    ).fit(X, y)
    for i in range(3):
        model.remove([i])
    model.save(tmp_path / "m")
    loaded = CertifiedLogisticRegression.load(tmp_path / "m")
    kept = copy.deepcopy(model)
    for i in range(3, 8):
        kept.remove([i])
        loaded.remove([i])
    np.testing.assert_allclose(loaded.coef_, kept.coef_, rtol=0, atol=tol)
