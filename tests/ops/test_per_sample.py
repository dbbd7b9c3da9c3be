"""Per-sample gradient ops against the float64 reference, on every branch of the cost model."""

import pytest
import torch
from helpers import DEVICES, DTYPES, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st

from fastunlearn.ops import per_sample as ps
from fastunlearn.ops import reference as ref

ops = torch.ops.fastunlearn

# (B, T, in, out) per per_sample_sq_norm method; asserted against the cost model below.
GHOST = (6, 1, 7, 5)
GRAM = (5, 3, 12, 10)  # short sequence, wide layer
MATERIALISE = (4, 9, 2, 3)  # long sequence, narrow layer
SHAPES = [GHOST, GRAM, MATERIALISE]


def make(shape, dtype=torch.float64, device="cpu"):
    B, T, n_in, n_out = shape
    g = torch.Generator().manual_seed(B * 1000 + T * 100 + n_in * 10 + n_out)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    return rnd(B, T, n_in), rnd(B, T, n_out), rnd(n_out, n_in), rnd(n_out), rnd(B)


def close(actual, expected, dtype):
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double().cpu(), expected.cpu(), **tolerances(dtype))


# ---- against the reference ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=["ghost", "gram", "materialise"])
def test_matches_reference(shape, dtype, device):
    A, G, W, b, w = make(shape, dtype, device)
    close(ps.per_sample_grad(A, G), ref.per_sample_grad(A, G), dtype)
    weight, bias = ps.per_sample_grad(A, G, bias=True)
    close(weight, ref.per_sample_grad(A, G), dtype)
    close(bias, G.double().sum(1), dtype)
    for with_bias in (False, True):
        close(
            ps.per_sample_sq_norm(A, G, bias=with_bias),
            ref.per_sample_sq_norm(A, G, with_bias),
            dtype,
        )
    close(ps.per_sample_dot(A, G, W), ref.per_sample_dot(A, G, W, None), dtype)
    close(ps.per_sample_dot(A, G, W, b), ref.per_sample_dot(A, G, W, b), dtype)
    close(ps.per_sample_weighted_sum(A, G, w), ref.per_sample_weighted_sum(A, G, w), dtype)
    weight, bias = ps.per_sample_weighted_sum(A, G, w, bias=True)
    close(weight, ref.per_sample_weighted_sum(A, G, w), dtype)
    close(bias, w.double() @ G.double().sum(1), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", ["A", "G"])
@pytest.mark.parametrize("shape", SHAPES, ids=["ghost", "gram", "materialise"])
def test_nan_stays_in_its_sample(shape, where, dtype, device):
    # A NaN in sample i makes out[i] NaN (norms, dots and every entry of the gradient that
    # reads it) and leaves every other sample equal to the float64 reference.
    A, G, W, b, _ = make(shape, dtype, device)
    i = 1
    if where == "A":
        A[i, -1, 0] = float("nan")
    else:
        G[i, -1, 0] = float("nan")
    others = torch.arange(shape[0], device=device) != i
    got = {
        "sq_norm": ps.per_sample_sq_norm(A, G),
        "sq_norm_bias": ps.per_sample_sq_norm(A, G, bias=True),
        "dot": ps.per_sample_dot(A, G, W),
        "dot_bias": ps.per_sample_dot(A, G, W, b),
        "grad": ps.per_sample_grad(A, G),
    }
    want = {
        "sq_norm": ref.per_sample_sq_norm(A, G, False),
        "sq_norm_bias": ref.per_sample_sq_norm(A, G, True),
        "dot": ref.per_sample_dot(A, G, W, None),
        "dot_bias": ref.per_sample_dot(A, G, W, b),
        "grad": ref.per_sample_grad(A, G),
    }
    for name, out in got.items():
        assert bool(torch.isnan(out[i]).any()), name
        if out.dim() == 1:  # one number per sample
            assert bool(torch.isnan(out[i])), name
        close(out[others], want[name][others], dtype)
    # the NaN gradient entries are exactly the reference's: the row or column of the NaN
    nan_at = torch.isnan(want["grad"][i])
    assert bool(nan_at.any()) and not bool(nan_at.all())
    assert torch.equal(torch.isnan(got["grad"][i]), nan_at)
    close(got["grad"][i][~nan_at], want["grad"][i][~nan_at], dtype)


def test_cost_model_shapes_pick_each_branch():
    assert GHOST[1] == 1
    assert ps._prefers_gram(*GRAM[1:])
    assert not ps._prefers_gram(*MATERIALISE[1:])


def _gemm_inputs(fn):
    """Input shapes of every (b)addbmm the op runs, as recorded by the profiler."""
    activity = torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity], record_shapes=True) as prof:
        fn()
    return [
        (e.name, [list(s) for s in e.input_shapes if len(s) == 3])
        for e in prof.events()
        if e.name in ("aten::bmm", "aten::baddbmm")
    ]


@pytest.mark.parametrize("bias", [False, True])
def test_sq_norm_runs_the_branch_the_cost_model_picks(bias):
    A, G, *_ = make(GHOST)
    assert _gemm_inputs(lambda: ops.per_sample_sq_norm(A, G, bias)) == []

    B, T, n_in, n_out = GRAM
    A, G, *_ = make(GRAM)
    gram_a = ("aten::baddbmm" if bias else "aten::bmm", [[B, T, n_in], [B, n_in, T]])
    gram_g = ("aten::bmm", [[B, T, n_out], [B, n_out, T]])
    assert sorted(_gemm_inputs(lambda: ops.per_sample_sq_norm(A, G, bias))) == sorted(
        [gram_a, gram_g]
    )

    B, T, n_in, n_out = MATERIALISE
    A, G, *_ = make(MATERIALISE)
    assert _gemm_inputs(lambda: ops.per_sample_sq_norm(A, G, bias)) == [
        ("aten::bmm", [[B, n_out, T], [B, T, n_in]])
    ]


@pytest.mark.parametrize("bias", [False, True])
def test_sq_norm_branches_agree_on_one_problem(bias):
    # One problem, both T > 1 branches: extend a Gram-shaped problem with T zero positions
    # (same gradients) until the cost model switches to materialising.
    A, G, *_ = make(GRAM)
    expected = ps.per_sample_sq_norm(A, G, bias=bias)
    B, T, n_in, n_out = GRAM
    T_long = 64
    assert not ps._prefers_gram(T_long, n_in, n_out)
    A_long = torch.cat([A, A.new_zeros(B, T_long - T, n_in)], 1)
    G_long = torch.cat([G, G.new_zeros(B, T_long - T, n_out)], 1)
    torch.testing.assert_close(ps.per_sample_sq_norm(A_long, G_long, bias=bias), expected)
    torch.testing.assert_close(expected, ref.per_sample_sq_norm(A, G, bias))


def test_long_rows_are_split_across_workers():
    # One sample with a long materialised gradient: the reduction splits the row into segments.
    A = torch.randn(1, 40, 5000, dtype=torch.float64)
    G = torch.randn(1, 40, 8, dtype=torch.float64)
    assert not ps._prefers_gram(40, 5000, 8)
    torch.testing.assert_close(
        ps.per_sample_sq_norm(A, G, bias=True), ref.per_sample_sq_norm(A, G, True)
    )
    torch.testing.assert_close(
        ps.per_sample_sq_norm(A.float(), G.float()),
        ref.per_sample_sq_norm(A, G, False).float(),
        rtol=1e-5,
        atol=0,
    )


def test_float32_norms_accumulate_in_float64():
    # 2^20 entries of 1 + 2^-12: a float32 running sum would lose the low bits.
    n = 1 << 20
    A = torch.full((1, 1, n), 1 + 2**-12, dtype=torch.float32)
    G = torch.ones(1, 1, 1, dtype=torch.float32)
    expected = n * (1 + 2**-12) ** 2
    assert ps.per_sample_sq_norm(A, G).item() == pytest.approx(expected, rel=1e-7)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(0, 5),
    T=st.integers(0, 6),
    n_in=st.integers(0, 7),
    n_out=st.integers(0, 7),
    dtype=st.sampled_from(DTYPES),
    bias=st.booleans(),
)
def test_hypothesis_shapes(B, T, n_in, n_out, dtype, bias):
    A, G, W, b, w = make((B, T, n_in, n_out), dtype)
    close(ps.per_sample_grad(A, G), ref.per_sample_grad(A, G), dtype)
    close(ps.per_sample_sq_norm(A, G, bias=bias), ref.per_sample_sq_norm(A, G, bias), dtype)
    bias_vec = b if bias else None
    close(ps.per_sample_dot(A, G, W, bias_vec), ref.per_sample_dot(A, G, W, bias_vec), dtype)
    close(ps.per_sample_weighted_sum(A, G, w), ref.per_sample_weighted_sum(A, G, w), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=["ghost", "gram", "materialise"])
def test_non_contiguous_inputs(shape, device):
    B, T, n_in, n_out = shape
    dtype = torch.float32
    A = torch.randn(B, T, 2 * n_in, device=device)[..., ::2]
    G = torch.randn(B, T, 2 * n_out, device=device)[..., ::2]
    W = torch.randn(n_in, n_out, device=device).t()
    b = torch.randn(2 * n_out, device=device)[::2]
    w = torch.randn(2 * B, device=device)[::2]
    assert not (A.is_contiguous() or G.is_contiguous() or W.is_contiguous())
    assert not (b.is_contiguous() or w.is_contiguous())
    close(ps.per_sample_grad(A, G), ref.per_sample_grad(A, G), dtype)
    close(ps.per_sample_sq_norm(A, G, bias=True), ref.per_sample_sq_norm(A, G, True), dtype)
    close(ps.per_sample_dot(A, G, W, b), ref.per_sample_dot(A, G, W, b), dtype)
    close(ps.per_sample_weighted_sum(A, G, w), ref.per_sample_weighted_sum(A, G, w), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_2d_inputs_equal_t1(device):
    A, G, W, b, w = make((5, 1, 4, 3), torch.float64, device)
    A2, G2 = A[:, 0], G[:, 0]
    torch.testing.assert_close(ps.per_sample_grad(A2, G2), ps.per_sample_grad(A, G))
    torch.testing.assert_close(
        ps.per_sample_grad(A2, G2, bias=True), ps.per_sample_grad(A, G, bias=True)
    )
    torch.testing.assert_close(
        ps.per_sample_sq_norm(A2, G2, bias=True), ps.per_sample_sq_norm(A, G, bias=True)
    )
    torch.testing.assert_close(ps.per_sample_dot(A2, G2, W, b), ps.per_sample_dot(A, G, W, b))
    torch.testing.assert_close(
        ps.per_sample_weighted_sum(A2, G2, w, bias=True),
        ps.per_sample_weighted_sum(A, G, w, bias=True),
    )
    # and T = 1 is the outer product g a^T
    torch.testing.assert_close(ps.per_sample_grad(A2, G2), G2[:, :, None] * A2[:, None, :])


def test_empty_batch_shapes():
    A, G = torch.zeros(0, 3, 4), torch.zeros(0, 3, 2)
    assert ps.per_sample_grad(A, G).shape == (0, 2, 4)
    assert ps.per_sample_sq_norm(A, G, bias=True).shape == (0,)
    assert ps.per_sample_dot(A, G, torch.ones(2, 4), torch.ones(2)).shape == (0,)
    S, h = ps.per_sample_weighted_sum(A, G, torch.zeros(0), bias=True)
    assert S.shape == (2, 4) and h.shape == (2,)
    assert S.abs().sum() == 0 and h.abs().sum() == 0


# ---- clipping ---------------------------------------------------------------------------


def test_clip_weights_formula_and_effect():
    A, G, *_ = make(GRAM)
    sq = ps.per_sample_sq_norm(A, G, bias=True)
    C = float(sq.sqrt().median())
    w = ps.clip_weights(sq, C)
    torch.testing.assert_close(w, torch.clamp(C / (sq.sqrt() + ps.CLIP_EPS), max=1.0))
    assert bool((w <= 1).all()) and bool((w < 1).any()) and bool((w == 1).any())
    # clipped per-sample gradients have norm <= C
    weight, bias = ps.per_sample_grad(A, G, bias=True)
    clipped = w**2 * (weight.pow(2).sum((1, 2)) + bias.pow(2).sum(1))
    assert bool((clipped.sqrt() <= C * (1 + 1e-12)).all())
    # a zero gradient keeps factor 1 instead of dividing by zero
    assert ps.clip_weights(torch.zeros(2), 1.0).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf"), float("nan")])
def test_clip_weights_rejects_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="'max_norm'"):
        ps.clip_weights(torch.ones(3), max_norm)


def test_clip_weights_rejects_non_tensor():
    with pytest.raises(TypeError, match="'sq_norms'"):
        ps.clip_weights([1.0], 1.0)


# ---- registration: opcheck, autograd ---------------------------------------------------------


def _op_cases(requires_grad):
    cases = []
    for shape in SHAPES:
        A, G, W, b, w = (t.requires_grad_(requires_grad) for t in make(shape))
        cases += [
            (ops.per_sample_grad.default, (A, G)),
            (ops.per_sample_sq_norm.default, (A, G, False)),
            (ops.per_sample_sq_norm.default, (A, G, True)),
            (ops.per_sample_dot.default, (A, G, W, None)),
            (ops.per_sample_dot.default, (A, G, W, b)),
            (ops.per_sample_weighted_sum.default, (A, G, w)),
        ]
    return cases


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    for op, args in _op_cases(requires_grad):
        torch.library.opcheck(op, args)


def test_gradcheck_ops():
    for op, args in _op_cases(True):
        assert torch.autograd.gradcheck(lambda *a, op=op: op(*a), args), op


def test_gradcheck_wrappers_with_bias():
    A, G, _, _, w = (t.requires_grad_() for t in make(GRAM))
    assert torch.autograd.gradcheck(lambda A, G: ps.per_sample_grad(A, G, bias=True), (A, G))
    assert torch.autograd.gradcheck(
        lambda A, G, w: ps.per_sample_weighted_sum(A, G, w, bias=True), (A, G, w)
    )


def _loss(A, G, W, b, w, *, sq_norm, dot, weighted_sum, grad):
    terms = [sq_norm(A, G), dot(A, G, W, b), weighted_sum(A, G, w), grad(A, G).pow(2)]
    return sum((t * (i + 1)).sum() for i, t in enumerate(terms))


def test_backward_matches_reference_autograd():
    # Gradients of one scalar loss through all four ops equal autograd through the formulas.
    R = _DifferentiableReference
    for shape in SHAPES:
        ours = [t.requires_grad_() for t in make(shape)]
        expected = torch.autograd.grad(
            _loss(
                *ours,
                sq_norm=lambda A, G: R.per_sample_sq_norm(A, G, True),
                dot=R.per_sample_dot,
                weighted_sum=R.per_sample_weighted_sum,
                grad=R.per_sample_grad,
            ),
            ours,
        )
        got = torch.autograd.grad(
            _loss(
                *ours,
                sq_norm=lambda A, G: ps.per_sample_sq_norm(A, G, bias=True),
                dot=ps.per_sample_dot,
                weighted_sum=ps.per_sample_weighted_sum,
                grad=ps.per_sample_grad,
            ),
            ours,
        )
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e)


class _DifferentiableReference:
    """The reference formulas without the detach, so autograd can go through them."""

    @staticmethod
    def per_sample_grad(A, G):
        return torch.einsum("bto,bti->boi", G, A)

    @classmethod
    def per_sample_sq_norm(cls, A, G, bias):
        out = cls.per_sample_grad(A, G).pow(2).sum((1, 2))
        return out + G.sum(1).pow(2).sum(1) if bias else out

    @classmethod
    def per_sample_dot(cls, A, G, W, b):
        return (cls.per_sample_grad(A, G) * W).sum((1, 2)) + G.sum(1) @ b

    @classmethod
    def per_sample_weighted_sum(cls, A, G, w):
        return torch.einsum("b,boi->oi", w, cls.per_sample_grad(A, G))


def test_compiles_without_graph_breaks():
    A, G, W, b, w = make(GRAM, torch.float32)

    def step(A, G, W, b, w):
        sq = ps.per_sample_sq_norm(A, G, bias=True)
        return ps.per_sample_weighted_sum(A, G, ps.clip_weights(sq, 1.0)), ps.per_sample_dot(
            A, G, W, b
        )

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for got, expected in zip(compiled(A, G, W, b, w), step(A, G, W, b, w), strict=True):
        torch.testing.assert_close(got, expected)


# ---- bad inputs --------------------------------------------------------------------------------


def _bad_cases():
    A, G, W, b, w = make((3, 2, 4, 5))
    return [
        # (call, expected argument name, error: TypeError for a dtype, else ValueError)
        (lambda: ops.per_sample_grad.default(A[:, 0], G), "'A'", ValueError),
        (lambda: ops.per_sample_grad.default(A, G[:, 0]), "'G'", ValueError),
        (lambda: ops.per_sample_grad.default(A, G[:2]), "'G'", ValueError),
        (lambda: ops.per_sample_grad.default(A, G[:, :1]), "'G'", ValueError),
        (lambda: ops.per_sample_grad.default(A.long(), G.long()), "'A'", TypeError),
        (lambda: ops.per_sample_grad.default(A, G.float()), "'G'", TypeError),
        (lambda: ops.per_sample_sq_norm.default(A, G[:2], True), "'G'", ValueError),
        (lambda: ops.per_sample_sq_norm.default(A.int(), G, False), "'A'", TypeError),
        (lambda: ops.per_sample_sq_norm.default(A, G.float(), False), "'G'", TypeError),
        (lambda: ops.per_sample_dot.default(A, G, W.t(), None), "'W'", ValueError),
        (lambda: ops.per_sample_dot.default(A, G, W[0], None), "'W'", ValueError),
        (lambda: ops.per_sample_dot.default(A, G, W.float(), None), "'W'", TypeError),
        (lambda: ops.per_sample_dot.default(A, G, W, b[:4]), "'bias'", ValueError),
        (lambda: ops.per_sample_dot.default(A, G, W, b[None]), "'bias'", ValueError),
        (lambda: ops.per_sample_dot.default(A, G, W, b.float()), "'bias'", TypeError),
        (lambda: ops.per_sample_dot.default(A, G[:2], W, None), "'G'", ValueError),
        (lambda: ops.per_sample_weighted_sum.default(A, G, w[:2]), "'w'", ValueError),
        (lambda: ops.per_sample_weighted_sum.default(A, G, w[None]), "'w'", ValueError),
        (lambda: ops.per_sample_weighted_sum.default(A, G, w.float()), "'w'", TypeError),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_name_the_argument(case):
    call, name, error = _bad_cases()[case]
    with pytest.raises(error, match=name):
        call()


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda)])
def test_mixed_devices_name_the_argument(device):
    A, G, W, b, w = make((3, 2, 4, 5))
    with pytest.raises(ValueError, match="'G'"):
        ops.per_sample_grad.default(A.to(device), G)
    with pytest.raises(ValueError, match="'W'"):
        ops.per_sample_dot.default(A.to(device), G.to(device), W, None)
    with pytest.raises(ValueError, match="'w'"):
        ops.per_sample_weighted_sum.default(A.to(device), G.to(device), w)


def test_fake_kernel_checks_devices():
    # A meta tensor routes the call to the fake kernel, whose checks mirror the C++ ones.
    A, G, W, _, w = make((3, 2, 4, 5))
    with pytest.raises(ValueError, match="'G'"):
        ops.per_sample_grad.default(A, G.to("meta"))
    with pytest.raises(ValueError, match="'W'"):
        ops.per_sample_dot.default(A.to("meta"), G.to("meta"), W, None)
    with pytest.raises(ValueError, match="'w'"):
        ops.per_sample_weighted_sum.default(A.to("meta"), G.to("meta"), w[:2].to("meta"))


def test_wrapper_rejects_bad_python_input():
    A, G, W, _, w = make((3, 2, 4, 5))
    with pytest.raises(TypeError, match="'A'"):
        ps.per_sample_grad(A.numpy(), G)
    with pytest.raises(TypeError, match="'W'"):
        ps.per_sample_dot(A, G, W.tolist())
    with pytest.raises(TypeError, match="'w'"):
        ps.per_sample_weighted_sum(A, G, 1.0)
    with pytest.raises(ValueError, match="'G'"):
        ps.per_sample_sq_norm(A, G[None])
    with pytest.raises(ValueError, match="'A'"):
        ps.per_sample_sq_norm(A[0, 0], G)
    with pytest.raises(ValueError, match="'A'.*'G'"):
        ps.per_sample_grad(A[:, 0], G)


@pytest.mark.parametrize("fn", ["per_sample_grad", "per_sample_sq_norm", "per_sample_weighted_sum"])
@pytest.mark.parametrize("flag", [None, 1, "yes", torch.tensor(True)])
def test_bias_flag_must_be_a_bool(fn, flag):
    # any truthy value used to switch the bias term on (None silently off): a misplaced
    # bias vector or a typo must not change what is computed
    A, G, _, _, w = make((3, 2, 4, 5))
    args = (A, G, w) if fn == "per_sample_weighted_sum" else (A, G)
    with pytest.raises(TypeError, match="'bias' must be a bool"):
        getattr(ps, fn)(*args, bias=flag)
