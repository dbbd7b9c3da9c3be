"""certified_start_: the fused row quantities of a certified removal step against the float64
reference and against the fixed-shape step's own tensor expressions, on CPU (and CUDA when
present)."""

import pytest
import torch
from helpers import (
    DEVICES,
    assert_in_place_matches,
    assert_rejected_unchanged,
    assert_same_run_to_run,
    run_in_place,
)

import fastunlearn  # noqa: F401  (loads the op library)
from fastunlearn.certified.math import curvature_weights, loss_derivative
from fastunlearn.ops import reference
from fastunlearn.ops.certified_start import certified_start_

OP = torch.ops.fastunlearn.certified_start_.default
F64 = torch.float64
WRITTEN = ("row_weights", "Delta", "A_after", "S", "lam_k", "spectral")


def _args(d=7, n=19, K=3, device="cpu", seed=0, row=4, eig_size=None):
    """A consistent set of arguments; the written tensors hold earlier values."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)

    X = rand(n, d)
    A = (torch.rand(n, K, generator=g, dtype=F64) > 0.2).to(F64).to(device)
    Y = torch.where(torch.rand(n, K, generator=g) > 0.5, 1.0, -1.0).to(F64).to(device)
    W = rand(d, K)
    row_sq = (X * X).sum(1)
    trace = row_sq @ A
    eig = (trace * 0.7 if eig_size is None else trace[:1] * 0.7).clone()
    return dict(
        row_weights=rand(1, K), Delta=rand(d, K), A_after=rand(n, K), S=rand(n, K),
        lam_k=rand(K), spectral=rand(K), X=X, Y=Y, Z=X @ W, A=A, W=W,
        row=torch.tensor([row], device=device), n_rem=A.sum(0), eig=eig, row_sq=row_sq, lam=0.01,
    )  # fmt: skip


def _run(fn, args):
    return run_in_place(fn, args, WRITTEN)


def _assert_matches_reference(args):
    return assert_in_place_matches(
        certified_start_, reference.certified_start_, args, WRITTEN, rtol=1e-13, atol=1e-14
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eig_size", [None, 1], ids=["eig-per-class", "eig-shared"])
def test_matches_the_reference(device, eig_size):
    args = _args(device=device, eig_size=eig_size)
    ours = _assert_matches_reference(args)
    r = 4
    assert torch.equal(ours["row_weights"][0], args["A"][r])
    assert (ours["A_after"][r] == 0).all() and (ours["S"][r] == 0).all()
    assert torch.equal(ours["A_after"][:r], args["A"][:r])
    assert torch.equal(ours["A_after"][r + 1 :], args["A"][r + 1 :])


@pytest.mark.parametrize("device", DEVICES)
def test_the_spectral_bound_is_the_smaller_one(device):
    """min(eig, trace): the cached bound where smaller, else the trace left after the row;
    a negative minimum is clamped to zero."""
    args = _args(device=device)
    trace = args["row_sq"] @ torch.where(torch.arange(19, device=device)[:, None] == 4, 0.0,
                                         args["A"])  # fmt: skip
    args["eig"] = torch.stack([trace[0] * 0.5, trace[1] * 2.0, -trace[2]])
    ours = _assert_matches_reference(args)
    want = torch.stack(
        [(trace[0] * 0.5).sqrt(), trace[1].sqrt(), torch.zeros((), dtype=F64, device=device)]
    )
    torch.testing.assert_close(ours["spectral"], want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_past_one_block_many_classes_and_nan(device):
    _assert_matches_reference(_args(d=60, n=3000, K=10, device=device, seed=1, row=2999))
    _assert_matches_reference(_args(d=30, n=50, K=37, device=device, seed=2, row=0))
    args = _args(device=device, seed=3)
    args["Z"][7, 1] = float("nan")  # a NaN margin: S and nothing else of that row
    args["eig"][2] = float("nan")
    ours = _assert_matches_reference(args)
    assert ours["S"][7, 1].isnan() and ours["spectral"][2].isnan()
    assert ours["S"][~torch.isnan(ours["S"])].numel() == ours["S"].numel() - 1


@pytest.mark.parametrize("device", DEVICES)
def test_no_features(device):
    ours = _assert_matches_reference(_args(d=0, device=device))
    assert ours["Delta"].shape == (0, 3)


def test_non_contiguous_read_only_inputs_are_read_correctly():
    args = _args(d=6, n=11, K=3)
    for name in ("X", "Y", "Z", "A", "W"):
        args[name] = args[name].T.contiguous().T
    args["row_sq"] = torch.stack([args["row_sq"], args["row_sq"]], 1)[:, 0]
    _assert_matches_reference(args)


def test_equals_the_fixed_steps_expressions():
    """The op computes what FixedShapeStep's start writes as tensor expressions."""
    args = _args(d=9, n=30, K=4)
    ours = _run(certified_start_, args)
    a = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    r, lam = a["row"], a["lam"]
    w = torch.index_select(a["A"], 0, r)
    m_k = w[0]
    xi = a["X"].index_select(0, r)
    grads = xi.T @ (w * loss_derivative(a["Z"].index_select(0, r), a["Y"].index_select(0, r)))
    Delta = torch.add(grads, (lam * m_k) * a["W"])
    A_after = a["A"].clone().index_fill_(0, r, 0.0)
    S = curvature_weights(a["Z"], A_after)
    lam_k = (a["n_rem"] - m_k) * lam
    spectral = torch.minimum(a["eig"], a["row_sq"] @ A_after).clamp_min(0.0).sqrt()
    want = dict(row_weights=w, Delta=Delta, A_after=A_after, S=S, lam_k=lam_k, spectral=spectral)
    for name in WRITTEN:
        torch.testing.assert_close(ours[name], want[name], rtol=1e-14, atol=1e-15, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args = _args(d=5, n=8, K=3, device=device)
    torch.library.opcheck(OP, tuple(args.values()), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(Z=a["Z"].float()), TypeError, "argument 'Z' must be Double"),
        (lambda a: a.update(row=a["row"].int()), TypeError, "argument 'row' must be Long"),
        (lambda a: a.update(Y=a["Y"][:-1]), ValueError, "argument 'Y' must have shape"),
        (lambda a: a.update(W=a["W"][:-1]), ValueError, "argument 'W' must have shape"),
        (lambda a: a.update(eig=torch.ones(2, dtype=F64)), ValueError, r"'eig' must have shape"),
        (lambda a: a.update(row_sq=a["row_sq"][:-1]), ValueError, "'row_sq' must have shape"),
        (lambda a: a.update(row_weights=a["row_weights"][:, :2]), ValueError, "'row_weights'"),
        (lambda a: a.update(row=torch.tensor([1, 2])), ValueError, "'row' must have one"),
        (lambda a: a.update(S=a["S"].T.contiguous().T), ValueError, "'S' must be contiguous"),
        (lambda a: a.update(lam=-1.0), ValueError, "'lam' must be finite and >= 0"),
        (lambda a: a.update(row=torch.tensor([19])), ValueError, r"'row' must be in \[0, 19\)"),
        (lambda a: a.update(X=a["X"][0]), ValueError, "argument 'X' must be 2-D"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named_and_nothing_is_written(change, error, match):
    args = _args()
    change(args)
    assert_rejected_unchanged(certified_start_, args, error, match)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_row_out_of_range_plans_a_step_that_fails():
    """The device cannot raise: a row out of range zeroes no row and makes Delta, the row's
    weights and lam_k NaN."""
    args = _args(device="cuda")
    args["row"].fill_(19)
    ours = _run(certified_start_, args)
    assert ours["Delta"].isnan().all() and ours["row_weights"].isnan().all()
    assert ours["lam_k"].isnan().all() and torch.equal(ours["A_after"], args["A"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_are_the_same_run_to_run():
    args = _args(d=80, n=5000, K=10, device="cuda", seed=4)
    assert_same_run_to_run(certified_start_, args, WRITTEN)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_names_a_tensor_on_another_device():
    args = _args()
    args["Z"] = args["Z"].cuda()
    assert_rejected_unchanged(certified_start_, args, ValueError, "argument 'Z' is on")
