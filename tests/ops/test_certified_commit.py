"""certified_commit_: the fused guarded commit of a pipelined certified removal step against
the float64 reference and against the pipelined step's own tensor expressions, on CPU (and
CUDA when present)."""

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
from fastunlearn.ops.certified_commit import certified_commit_

OP = torch.ops.fastunlearn.certified_commit_.default
F64 = torch.float64
WRITTEN = ("W", "Z", "A", "removed", "gram", "n_rem", "budget_used", "alive", "out", "results",
           "counter")  # fmt: skip


def _args(d=7, n=19, K=3, T=6, device="cpu", seed=0, shared_gram=True, row=4, slot=2, **out):
    """A consistent set of arguments whose tests pass (``go``) unless ``out`` says otherwise:
    ``residual``, ``bound``, ``ok``, ``alive``, ``used``, ``budget``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(device)

    A = torch.rand(n, K, generator=g, dtype=F64).to(device) + 0.5
    G = 1 if shared_gram else K
    x = rand(n, d)
    # shared: the rows' weights are one for every class (no subsampling), so X^T X
    weights = torch.ones(n, 1, dtype=F64, device=device) if shared_gram else A
    gram = torch.stack([x.T @ (weights[:, c : c + 1] * x) for c in range(G)])
    scalars = dict(residual=1e-9, bound=0.3, ok=1.0, alive=True, used=0.5, budget=2.0)
    scalars.update(out)
    values = [scalars["residual"], scalars["bound"], scalars["ok"], 0.0, 7.0]
    one = dict(device=device)
    return dict(
        W=rand(d, K), Z=rand(n, K), A=A, removed=torch.zeros(n, dtype=torch.bool, **one),
        gram=gram, n_rem=A.sum(0), budget_used=torch.tensor([scalars["used"]], dtype=F64, **one),
        alive=torch.tensor([scalars["alive"]], **one),
        out=torch.tensor(values, dtype=F64, **one),
        results=torch.full((T, 5), -1.0, dtype=F64, **one),
        counter=torch.tensor([3], **one), V=rand(d, K), XV=rand(n, K), X=x,
        row=torch.tensor([row], **one), slot=torch.tensor([slot], **one),
        row_weights=A[row : row + 1].clone(),
        budget=torch.tensor([scalars["budget"]], dtype=F64, **one), cg_tol=1e-6,
        shared_gram=shared_gram,
    )  # fmt: skip


def _run(fn, args):
    return run_in_place(fn, args, WRITTEN)


def _assert_matches_reference(args):
    return assert_in_place_matches(
        certified_commit_, reference.certified_commit_, args, WRITTEN, rtol=1e-14, atol=1e-14
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared_gram", [True, False], ids=["shared", "per-class"])
def test_a_passing_step_is_committed(device, shared_gram):
    args = _args(device=device, shared_gram=shared_gram)
    ours = _assert_matches_reference(args)
    r, t = 4, 2
    assert bool(ours["alive"]) and ours["out"][4] == 1.0
    assert torch.equal(ours["W"], args["W"] + args["V"])
    assert torch.equal(ours["Z"], args["Z"] + args["XV"])
    assert (ours["A"][r] == 0).all() and torch.equal(ours["A"][:r], args["A"][:r])
    assert ours["removed"].tolist() == [i == r for i in range(args["X"].shape[0])]
    torch.testing.assert_close(ours["n_rem"], args["n_rem"] - args["A"][r], rtol=1e-15, atol=0)
    assert float(ours["budget_used"]) == 0.5 + (1e-9 + 0.3)
    assert torch.equal(ours["results"][t], ours["out"])
    assert (ours["results"][:t] == -1).all() and (ours["results"][t + 1 :] == -1).all()
    assert int(ours["counter"]) == 4
    # the Gram matrices lose the row: X^T diag(A) X over the rows left
    keep = torch.ones(args["X"].shape[0], dtype=torch.bool, device=device)
    keep[r] = False
    x, A = args["X"][keep], args["A"][keep]
    weights = torch.ones_like(A[:, :1]) if shared_gram else A
    for c in range(ours["gram"].shape[0]):
        torch.testing.assert_close(ours["gram"][c], x.T @ (weights[:, c : c + 1] * x),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "refusal",
    [
        dict(alive=False),  # an earlier row of the run was refused
        dict(ok=0.0),  # the extended factor is not positive definite
        dict(residual=1e-3),  # the solve is not within cg_tol of the bound
        dict(residual=float("nan")),
        dict(bound=float("nan")),
        dict(used=1.8),  # the bound would exceed the budget left
    ],
    ids=["not-alive", "factor", "residual", "nan-residual", "nan-bound", "budget"],
)
def test_a_refused_step_changes_nothing_but_the_runs_bookkeeping(device, refusal):
    args = _args(device=device, shared_gram=False, **refusal)
    ours = _assert_matches_reference(args)
    for name in ("W", "Z", "A", "removed", "gram", "n_rem", "budget_used"):
        assert torch.equal(ours[name], args[name]), name
    assert not bool(ours["alive"]) and ours["out"][4] == 0.0
    same = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(ours["out"][:4], args["out"][:4], **same)
    torch.testing.assert_close(ours["results"][2], ours["out"], **same)
    assert int(ours["counter"]) == 4


@pytest.mark.parametrize("device", DEVICES)
def test_the_budget_edge_is_inclusive(device):
    """``budget_used + total == budget`` still fits (the host's test is ``>``)."""
    args = _args(device=device, residual=0.0, bound=0.25, used=0.75, budget=1.0)
    assert _assert_matches_reference(args)["out"][4] == 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_row_weights_may_be_a_view_of_the_rows_weights(device):
    """``row_weights`` aliasing ``A[row]``: the counts lose the weights before they are
    zeroed."""
    args = _args(device=device, shared_gram=False)
    args["row_weights"] = args["A"][4:5]
    want = args["n_rem"] - args["A"][4]
    ours = _run(certified_commit_, args)
    torch.testing.assert_close(ours["n_rem"], want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_past_one_block_and_empty_rows(device):
    _assert_matches_reference(_args(d=60, n=3000, K=10, T=40, device=device, seed=1, row=2999,
                                    slot=39))  # fmt: skip
    _assert_matches_reference(_args(d=30, n=50, K=12, device=device, seed=2, shared_gram=False))
    args = _args(d=0, n=5, K=2, device=device)
    ours = _assert_matches_reference(args)
    assert ours["out"][4] == 1.0 and bool(ours["removed"][4])


def test_non_contiguous_read_only_inputs_are_read_correctly():
    args = _args(d=6, n=11, K=3)
    args["V"] = args["V"].T.contiguous().T
    args["XV"] = torch.cat([args["XV"], args["XV"]], 1)[:, ::2]
    args["X"] = args["X"].T.contiguous().T
    _assert_matches_reference(args)


def test_equals_the_pipelined_steps_expressions():
    """The op computes what FixedShapeStep's pipelined step writes as tensor expressions
    (the guard, the where-guarded commit and the run's bookkeeping)."""
    for refusal in ({}, {"residual": 1e-3}):
        args = _args(d=9, n=30, K=4, shared_gram=False, **refusal)
        ours = _run(certified_commit_, args)
        a = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        out, r = a["out"], a["row"]
        residual, bound = out[0], out[1]
        total = residual + bound
        go = (a["alive"] & (out[2] > 0.5) & (residual <= a["cg_tol"] * bound)
              & ~(a["budget_used"] + total > a["budget"]))  # fmt: skip
        x = a["X"].index_select(0, r)[0]
        rw = a["row_weights"][0] * go
        a["W"].add_(torch.where(go, a["V"], 0.0))
        a["Z"].add_(torch.where(go, a["XV"], 0.0))
        a["A"].index_copy_(0, r, a["row_weights"] * ~go)
        a["removed"].index_copy_(0, r, a["removed"].index_select(0, r) | go)
        a["gram"].sub_(rw[:, None, None] * torch.outer(x, x))
        a["n_rem"].sub_(rw)
        a["budget_used"].add_(torch.where(go, total, 0.0))
        a["alive"].logical_and_(go)
        out[4] = go[0]
        a["results"].index_copy_(0, a["slot"], out.unsqueeze(0))
        a["counter"].add_(1)
        for name in WRITTEN:
            assert torch.equal(ours[name], a[name]), (refusal, name)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args = _args(d=5, n=8, K=3, device=device)
    torch.library.opcheck(OP, tuple(args.values()), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.update(V=a["V"].float()), TypeError, "argument 'V' must be Double"),
        (lambda a: a.update(removed=a["removed"].double()), TypeError, "'removed' must be Bool"),
        (lambda a: a.update(row=a["row"].int()), TypeError, "argument 'row' must be Long"),
        (lambda a: a.update(XV=a["XV"][:-1]), ValueError, "argument 'XV' must have shape"),
        (lambda a: a.update(gram=a["gram"].expand(3, -1, -1).clone()), ValueError,
         r"argument 'gram' must have shape \[1, 7, 7\] \(shared_gram\)"),
        (lambda a: a.update(shared_gram=False), ValueError,
         r"argument 'gram' must have shape \[3, 7, 7\] \(one per class\)"),
        (lambda a: a.update(row_weights=a["row_weights"][:, :2]), ValueError, "'row_weights'"),
        (lambda a: a.update(alive=torch.ones(2, dtype=torch.bool)), ValueError, "one element"),
        (lambda a: a.update(out=a["out"][:4]), ValueError, "at least 5 elements"),
        (lambda a: a.update(results=a["results"][:, :4]), ValueError, "at least 5 columns"),
        (lambda a: a.update(W=a["W"].T.contiguous().T), ValueError, "'W' must be contiguous"),
        (lambda a: a.update(cg_tol=float("nan")), ValueError, "'cg_tol' must be finite"),
        (lambda a: a.update(row=torch.tensor([19])), ValueError, r"'row' must be in \[0, 19\)"),
        (lambda a: a.update(slot=torch.tensor([-1])), ValueError, r"'slot' must be in \[0, 6\)"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named_and_nothing_is_written(change, error, match):
    args = _args()
    change(args)
    assert_rejected_unchanged(certified_commit_, args, error, match)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_row_or_slot_out_of_range_commits_nothing():
    """The device cannot raise: a row out of range commits nothing, a slot out of range
    writes no results; the counter advances."""
    args = _args(device="cuda", row=4)
    args["row"].fill_(19)
    ours = _run(certified_commit_, args)
    assert torch.equal(ours["W"], args["W"]) and ours["out"][4] == 0.0
    assert int(ours["counter"]) == 4
    args = _args(device="cuda")
    args["slot"].fill_(6)
    ours = _run(certified_commit_, args)
    assert (ours["results"] == -1).all() and ours["out"][4] == 1.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_are_the_same_run_to_run():
    """Per-class Gram matrices past one block's work: repeated calls agree to the bit."""
    args = _args(d=80, n=5000, K=10, T=40, device="cuda", seed=4, shared_gram=False)
    assert_same_run_to_run(certified_commit_, args, WRITTEN)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_error_names_a_tensor_on_another_device():
    args = _args()
    args["XV"] = args["XV"].cuda()
    assert_rejected_unchanged(certified_commit_, args, ValueError, "argument 'XV' is on")
