"""December 2 audit of the ops' Python side: regressions."""

import pytest
import torch

from fastunlearn.ops import cg_update_, glm_cg, reference

F64 = torch.float64


def test_reference_knn_distances_are_direct_differences():
    # torch.cdist's matrix-product expansion left ~1e-7 between a row and itself for rows of
    # norm 1e4, and ordered neighbours closer together than that wrongly.
    g = torch.Generator().manual_seed(0)
    P = torch.randn(40, 3, generator=g, dtype=F64) + 1e4
    dist, idx = reference.knn_extreme(P[:30], P, 1, False)
    assert bool((dist == 0).all()) and bool((idx[:, 0] == torch.arange(30)).all())

    ring = torch.tensor([[0, 1.0], [0, -1.0], [1.0, 0], [-1.0, 0]] * 10, dtype=F64)
    P = torch.tensor([1e4, 0.0], dtype=F64) + ring * torch.linspace(1, 1 + 1e-9, 40,
                                                                   dtype=F64)[:, None]
    Q = torch.tensor([[1e4, 0.0]] * 30, dtype=F64)
    dist, idx = reference.knn_extreme(Q, P, 3, False)
    exact = ((Q[:, None] - P[None]) ** 2).sum(-1)
    assert bool((idx == torch.arange(3)).all())
    torch.testing.assert_close(dist, exact[:, :3], rtol=0, atol=0)


def test_reference_knn_on_empty_inputs():
    for m, n, k in ((0, 5, 3), (4, 0, 0), (0, 0, 0)):
        dist, idx = reference.knn_extreme(torch.zeros(m, 2), torch.zeros(n, 2), k, True)
        assert dist.shape == idx.shape == (m, k)


def _cg_args(**changed):
    d, K = 3, 2
    args = dict(x=torch.zeros(d, K), r=torch.ones(d, K), p=torch.ones(d, K),
                Ap=torch.ones(d, K), inv_diag=None, rz=torch.ones(K), rr=torch.ones(K),
                active=torch.ones(K, dtype=torch.bool),
                iterations=torch.zeros(K, dtype=torch.int64), threshold_sq=torch.zeros(K))
    args.update(changed)
    return args


@pytest.mark.parametrize("name, bad", [
    ("active", torch.ones(2)),
    ("iterations", torch.zeros(2, dtype=torch.int32)),
    ("rz", torch.ones(2, dtype=F64)),
    ("r", torch.ones(3, 2, dtype=F64)),
    ("inv_diag", torch.ones(3, 2, dtype=F64)),
])
def test_cg_update_fake_kernel_refuses_the_dtypes_the_kernel_refuses(name, bad):
    # The fake kernel (meta tensors, torch.compile tracing) checked shapes only, so a call on
    # meta tensors with a wrong dtype returned as if it had run.
    with pytest.raises(TypeError, match=f"cg_update_: arguments? '{name}'"):
        cg_update_(**_cg_args(**{name: bad}))  # the CPU kernel
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v)
            for k, v in _cg_args(**{name: bad}).items()}
    with pytest.raises(TypeError, match=f"cg_update_: arguments? '{name}'"):
        cg_update_(**meta)
    cg_update_(**{k: (v.to("meta") if isinstance(v, torch.Tensor) else v)
                  for k, v in _cg_args().items()})  # well-typed: accepted


@pytest.mark.parametrize("precond, error", [
    (torch.ones(3, 2), "precond"),          # wrong rows
    (torch.ones(4, 3), "precond"),          # wrong columns (K = 2, or 1)
    (torch.ones(4), "precond"),             # 1-D
    (torch.eye(3).repeat(2, 1, 1), "precond"),  # factors of the wrong size
    (torch.ones(4, 2, dtype=F64), "precond"),   # wrong dtype
])
def test_glm_cg_fake_kernel_refuses_preconditioners_of_the_wrong_shape_or_dtype(precond, error):
    X, S, B = torch.randn(6, 4), torch.rand(6, 2), torch.randn(4, 2)
    with pytest.raises((TypeError, ValueError), match=error):
        glm_cg(X, S, B, 0.1, precond=precond)  # the CPU kernel
    meta = [t.to("meta") for t in (X, S, B, precond)]
    with pytest.raises((TypeError, ValueError), match=error):
        glm_cg(*meta[:3], 0.1, precond=meta[3])


@pytest.mark.parametrize("precond", [torch.ones(4, 2), torch.ones(4, 1),
                                     torch.eye(4).repeat(2, 1, 1)])
def test_glm_cg_fake_kernel_takes_every_preconditioner_form(precond):
    X, S, B = torch.randn(6, 4), torch.rand(6, 2), torch.randn(4, 2)
    glm_cg(X, S, B, 0.1, precond=precond)
    out = glm_cg(*(t.to("meta") for t in (X, S, B)), 0.1, precond=precond.to("meta"))
    assert out.solution.shape == (4, 2) and out.iterations.dtype == torch.int64
