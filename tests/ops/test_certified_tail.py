"""certified_cg_tail_: the fused end of a certified CG step against the float64 reference and
against the fixed-shape step's own tensor expressions, on CPU (and CUDA when present)."""

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
from fastunlearn.ops import reference
from fastunlearn.ops.certified_tail import certified_cg_tail_

OP = torch.ops.fastunlearn.certified_cg_tail_.default
F64 = torch.float64


def _args(d=9, n=23, K=4, device="cpu", seed=0, first=True, needed=None):
    """A consistent set of arguments: the written tensors hold earlier values."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)

    P, HP, XP, Delta = rand(d, K), rand(d, K), rand(n, K), rand(d, K)
    HP = HP + 3.0 * P  # mostly positive curvature
    A = torch.rand(n, K, generator=g, dtype=F64).to(device)
    return dict(
        V=rand(d, K), XV=rand(n, K), HV=rand(d, K), R=rand(d, K),
        out=torch.full((5,), 7.0, dtype=F64, device=device), P=P, XP=XP, HP=HP,
        rz=rand(K).abs(), needed=needed, A=A, Delta=Delta, spectral=rand(K).abs(),
        bound_scale=0.25, first=first,
    )  # fmt: skip


WRITTEN = ("V", "XV", "HV", "R", "out")


def _run(fn, args):
    return run_in_place(fn, args, WRITTEN)


def _assert_matches_reference(args):
    return assert_in_place_matches(
        certified_cg_tail_, reference.certified_cg_tail_, args, WRITTEN, rtol=1e-12, atol=1e-13
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("needed", [None, True, False])
def test_matches_the_reference(device, first, needed):
    flag = None if needed is None else torch.tensor(needed, device=device)
    args = _args(device=device, first=first, needed=flag)
    ours = _assert_matches_reference(args)
    assert torch.equal(ours["out"][2:], args["out"][2:])  # only out[0], out[1] written
    if not first and needed is False:  # no step: the step stays, R and the sums follow it
        assert torch.equal(ours["V"], args["V"]) and torch.equal(ours["XV"], args["XV"])


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_of_the_mnist_case_and_many_classes(device):
    """More rows than one CUDA block takes, classes past one warp per class at a time."""
    _assert_matches_reference(_args(d=70, n=3000, K=10, device=device, seed=1))
    _assert_matches_reference(_args(d=40, n=700, K=37, device=device, seed=2, first=False))


@pytest.mark.parametrize("device", DEVICES)
def test_non_positive_and_nan_curvature(device):
    """A column with curvature <= 0 or NaN: step length 1 for the first step (as the fixed
    step's where), 0 for an iteration."""
    for first in (True, False):
        args = _args(device=device, first=first)
        args["HP"][:, 0] = -args["P"][:, 0]  # negative
        args["HP"][:, 1] = 0.0  # zero
        args["HP"][0, 2] = float("nan")
        ours = _assert_matches_reference(args)
        if first:
            torch.testing.assert_close(ours["V"][:, :2], args["P"][:, :2], rtol=0, atol=0)
        else:
            assert torch.equal(ours["V"][:, :2], args["V"][:, :2])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_rows_and_classes(device):
    args = _args(n=0, device=device)
    ours = _assert_matches_reference(args)
    assert ours["out"][1] == 0.0  # no rows: the projected norm, hence the bound, is zero
    args = _args(K=0, device=device)
    ours = _run(certified_cg_tail_, args)
    assert ours["out"][0] == 0.0 and ours["out"][1] == 0.0


def test_non_contiguous_inputs_are_read_correctly():
    args = _args(d=6, n=11, K=3)
    for name in ("P", "HP", "Delta"):
        args[name] = args[name].T.contiguous().T  # same values, column-major
    args["XP"] = torch.cat([args["XP"], args["XP"]], 1)[:, ::2]
    _assert_matches_reference(args)


def test_equals_the_fixed_step_expressions():
    """The op computes what FixedShapeStep's start and iteration write as tensor
    expressions (step length, updates, residual, bound terms)."""
    from fastunlearn.certified.bounds import data_dependent_bound

    args = _args(d=12, n=40, K=5, first=False, needed=torch.tensor(True))
    ours = _run(certified_cg_tail_, args)
    a = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    curvature = (a["P"] * a["HP"]).sum(0)
    alpha = torch.where((curvature > 0) & a["needed"], a["rz"] / curvature, 0.0)
    V = a["V"].addcmul(alpha, a["P"])
    XV = a["XV"].addcmul(alpha, a["XP"])
    HV = a["HV"].addcmul(alpha, a["HP"])
    projected = (a["A"] * XV.square()).sum(0).sqrt()
    bound = data_dependent_bound(a["spectral"], torch.linalg.vector_norm(V, dim=0), projected,
                                 0.25, 1.0).sum()  # fmt: skip
    residual = torch.linalg.vector_norm(a["Delta"] - HV, dim=0).sum()
    torch.testing.assert_close(ours["V"], V, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(ours["XV"], XV, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(ours["out"][0], residual, rtol=1e-13, atol=0)
    torch.testing.assert_close(ours["out"][1], bound, rtol=1e-13, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    needed = torch.tensor(True, device=device)
    args = _args(d=5, n=8, K=3, device=device, first=False, needed=needed)
    torch.library.opcheck(OP, tuple(args.values()), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(P=a["P"].float()), TypeError, "argument 'P' must be float64"),
        (lambda a: a.update(HP=a["HP"][:-1]), ValueError, "argument 'HP' must have shape"),
        (lambda a: a.update(A=a["A"][:, :2]), ValueError, "argument 'A' must have shape"),
        (lambda a: a.update(rz=a["rz"][:2]), ValueError, "argument 'rz' must have shape"),
        (lambda a: a.update(out=a["out"][:1]), ValueError, "argument 'out' must be 1-D"),
        (lambda a: a.update(V=a["V"].T.contiguous().T), ValueError, "'V' must be contiguous"),
        (lambda a: a.update(needed=torch.tensor(1.0)), TypeError, "'needed' must be bool"),
        (lambda a: a.update(needed=torch.ones(2, dtype=torch.bool)), ValueError, "one element"),
        (lambda a: a.update(XV=a["XV"][0]), ValueError, "argument 'XV' must be 2-D"),
    ],
)
def test_bad_arguments_are_named_and_nothing_is_written(change, error, match):
    args = _args(first=False)
    change(args)
    assert_rejected_unchanged(certified_cg_tail_, args, error, match)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_are_the_same_run_to_run():
    """Every sum of the CUDA kernels has a fixed order: repeated calls agree to the bit."""
    args = _args(d=80, n=5000, K=10, device="cuda", seed=4)
    assert_same_run_to_run(certified_cg_tail_, args, WRITTEN)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_names_a_tensor_on_another_device():
    args = _args()
    args["A"] = args["A"].cuda()
    assert_rejected_unchanged(certified_cg_tail_, args, ValueError, "argument 'A' is on")
