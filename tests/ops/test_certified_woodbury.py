"""certified_woodbury_row_: the fused Woodbury column of a certified removal step against the
float64 reference, against the fixed-shape step's own tensor expressions and against the
factor it extends, on CPU (and CUDA when present)."""

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
from fastunlearn.ops.certified_woodbury import certified_woodbury_row_

OP = torch.ops.fastunlearn.certified_woodbury_row_.default
F64 = torch.float64
WRITTEN = ("U_buf", "G_buf", "C_buf", "C_inv", "out")


def _args(K=3, d=9, T=6, t=2, device="cpu", seed=0, scale=0.3, new_scale=None):
    """A Woodbury state with ``t`` slots in use (the unused columns zero, the unused rows of
    the factor and its inverse identity) and a new row's column, as the step computes them:
    ``G_new = M^{-1} U_new`` with an SPD ``M``, ``L21 = C^{-1} (-U^T G_new)``."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(K, d, d, generator=g, dtype=F64)
    M = M @ M.mT + d * torch.eye(d, dtype=F64)
    M_inv = torch.cholesky_inverse(torch.linalg.cholesky(M))  # M is SPD
    U = torch.zeros(K, d, T, dtype=F64)
    U[:, :, :t] = scale * torch.randn(K, d, t, generator=g, dtype=F64)
    G = M_inv @ U
    # C C^T = I - U^T M^{-1} U over the slots in use, identity past them
    inner = torch.eye(T, dtype=F64).expand(K, T, T).clone()
    inner[:, :t, :t] -= U[:, :, :t].mT @ G[:, :, :t]
    C = torch.linalg.cholesky(inner).contiguous()
    C_inv = torch.linalg.solve_triangular(C, torch.eye(T, dtype=F64).expand(K, T, T),
                                          upper=False).contiguous()  # fmt: skip
    U_new = (new_scale or scale) * torch.randn(K, d, 1, generator=g, dtype=F64)
    G_new = M_inv @ U_new
    L21 = C_inv @ -(U.mT @ G_new)
    to = dict(device=device)
    return dict(
        U_buf=U.to(**to), G_buf=G.to(**to), C_buf=C.to(**to), C_inv=C_inv.to(**to),
        out=torch.full((5,), 7.0, dtype=F64, device=device), U_new=U_new.to(**to),
        G_new=G_new.to(**to), L21=L21.to(**to), slot=torch.tensor([t], device=device),
    )  # fmt: skip


def _run(fn, args):
    return run_in_place(fn, args, WRITTEN)


def _assert_matches_reference(args):
    return assert_in_place_matches(
        certified_woodbury_row_, reference.certified_woodbury_row_, args, WRITTEN, rtol=1e-13,
        atol=1e-14,
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [0, 2, 5])
def test_matches_the_reference_and_extends_the_factor(device, t):
    """The new factor row makes ``C C^T = I - U^T M^{-1} U`` over one more slot, and the new
    row of the inverse keeps ``C^{-1} C = I``."""
    args = _args(t=t, device=device)
    ours = _assert_matches_reference(args)
    assert ours["out"][2] == 1.0 and torch.equal(ours["out"][3:], args["out"][3:])
    U, G, C, C_inv = ours["U_buf"], ours["G_buf"], ours["C_buf"], ours["C_inv"]
    assert torch.equal(U[:, :, t : t + 1], args["U_new"])
    assert torch.equal(G[:, :, t : t + 1], args["G_new"])
    used = t + 1
    inner = torch.eye(used, dtype=F64, device=device) - U[:, :, :used].mT @ G[:, :, :used]
    torch.testing.assert_close(C[:, :used, :used] @ C[:, :used, :used].mT, inner, rtol=1e-12,
                               atol=1e-12)  # fmt: skip
    eye = torch.eye(C.shape[-1], dtype=F64, device=device).expand_as(C)
    torch.testing.assert_close(C_inv @ C, eye, rtol=1e-12, atol=1e-12)
    # only slot t's column and row change
    for name, dim in (("U_buf", 2), ("G_buf", 2), ("C_buf", 1), ("C_inv", 1)):
        keep = [i for i in range(args[name].shape[dim]) if i != t]
        index = torch.tensor(keep, device=device)
        assert torch.equal(ours[name].index_select(dim, index),
                           args[name].index_select(dim, index)), name  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_a_factor_that_is_not_positive_definite_is_reported(device):
    """``S22 <= 0`` (or NaN) in any class: ``out[2] = 0``; the diagonal entry is clamped (or
    NaN), as the step's expressions give it."""
    args = _args(device=device, new_scale=3.0)  # a column too large for the factor: S22 < 0
    ours = _assert_matches_reference(args)
    assert ours["out"][2] == 0.0
    args = _args(device=device, seed=1)
    args["U_new"][1, 0, 0] = float("nan")
    ours = _assert_matches_reference(args)
    assert ours["out"][2] == 0.0 and ours["C_buf"][1, 2, 2].isnan()


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_of_the_mnist_case_and_many_classes(device):
    """More slots than one CUDA block's columns, more features than a block's threads."""
    _assert_matches_reference(_args(K=10, d=300, T=200, t=150, device=device, seed=2,
                                    scale=0.05))  # fmt: skip
    _assert_matches_reference(_args(K=37, d=20, T=70, t=69, device=device, seed=3))


def test_non_contiguous_inputs_are_read_correctly():
    """``G_new`` as the step passes it: a column of a two-column product."""
    args = _args()
    both = torch.cat([args["G_new"], torch.randn_like(args["G_new"])], dim=2)
    args["G_new"] = both[..., :1]
    args["L21"] = args["L21"].mT.contiguous().mT
    _assert_matches_reference(args)


def test_equals_the_fixed_steps_expressions():
    """The op writes what FixedShapeStep's extension writes as tensor expressions."""
    args = _args(K=4, d=8, T=7, t=3)
    ours = _run(certified_woodbury_row_, args)
    a = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    t, U_new, G_new, L21 = a["slot"], a["U_new"], a["G_new"], a["L21"]
    S22 = 1.0 - torch.bmm(U_new.mT, G_new) - torch.bmm(L21.mT, L21)
    a["out"][2] = (S22 > 0).all()
    L22 = S22.clamp_min(torch.finfo(F64).tiny).sqrt()
    onehot = (torch.arange(7) == t).to(F64)
    inv_row = (onehot - torch.bmm(L21.mT, a["C_inv"])) / L22
    a["C_inv"].index_copy_(1, t, inv_row)
    a["U_buf"].index_copy_(2, t, U_new)
    a["G_buf"].index_copy_(2, t, G_new)
    a["C_buf"].index_copy_(1, t, L21.mT + L22 * onehot)
    for name in WRITTEN:
        torch.testing.assert_close(ours[name], a[name], rtol=1e-14, atol=1e-15, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args = _args(device=device)
    torch.library.opcheck(OP, tuple(args.values()), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(L21=a["L21"].float()), TypeError, "argument 'L21' must be Double"),
        (lambda a: a.update(slot=a["slot"].int()), TypeError, "argument 'slot' must be Long"),
        (lambda a: a.update(G_buf=a["G_buf"][:, :-1]), ValueError, "'G_buf' must have shape"),
        (lambda a: a.update(C_inv=a["C_inv"][:2]), ValueError, "'C_inv' must have shape"),
        (lambda a: a.update(U_new=a["U_new"][:, :-1]), ValueError, "'U_new' must have shape"),
        (lambda a: a.update(L21=a["L21"][:, :-1]), ValueError, "'L21' must have shape"),
        (lambda a: a.update(out=a["out"][:2]), ValueError, "at least 3 elements"),
        (lambda a: a.update(slot=torch.tensor([1, 2])), ValueError, "'slot' must have one"),
        (lambda a: a.update(C_buf=a["C_buf"].mT.contiguous().mT), ValueError,
         "'C_buf' must be contiguous"),
        (lambda a: a.update(U_buf=a["U_buf"][0]), ValueError, "'U_buf' must be 3-D"),
        (lambda a: a.update(slot=torch.tensor([6])), ValueError, r"'slot' must be in \[0, 6\)"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named_and_nothing_is_written(change, error, match):
    args = _args()
    change(args)
    assert_rejected_unchanged(certified_woodbury_row_, args, error, match)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_slot_out_of_range_writes_nothing_and_fails_the_check():
    args = _args(device="cuda")
    args["slot"].fill_(6)
    ours = _run(certified_woodbury_row_, args)
    assert ours["out"][2] == 0.0
    for name in ("U_buf", "G_buf", "C_buf", "C_inv"):
        assert torch.equal(ours[name], args[name]), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_are_the_same_run_to_run():
    args = _args(K=10, d=300, T=200, t=150, device="cuda", seed=2, scale=0.05)
    assert_same_run_to_run(certified_woodbury_row_, args, WRITTEN)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_names_a_tensor_on_another_device():
    args = _args()
    args["L21"] = args["L21"].cuda()
    assert_rejected_unchanged(certified_woodbury_row_, args, ValueError, "argument 'L21' is on")
