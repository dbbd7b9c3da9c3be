"""Bad input to the linear-algebra API named by argument (each case failed before: a raw
torch error, the wrong argument named, or a generator used up by a check)."""

import pytest
import torch
from torch import nn

from fastunlearn.linalg import (
    DenseOperator,
    NetworkHessianOperator,
    cg,
    dense_hessian,
    flatten_params,
    unflatten_like,
)

F64 = torch.float64


def _problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    return model, torch.randn(5, 3, dtype=F64), torch.tensor([0, 1, 0, 1, 1])


def test_a_loss_that_is_not_a_scalar_is_named():
    # reduction='none' failed inside torch.func with a RuntimeError naming nothing given
    model, x, y = _problem()
    loss = nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(ValueError, match=r"'loss_fn' must return a scalar.*got \[5\]"):
        NetworkHessianOperator(model, loss, x, y) @ torch.ones(8, dtype=F64)
    with pytest.raises(ValueError, match="'loss_fn' must return a scalar"):
        dense_hessian(model, loss, x, y)


def test_labels_outside_the_outputs_are_named():
    model, x, _ = _problem()
    op = NetworkHessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), x,
                                torch.tensor([0, 1, 5, 1, 1]))
    with pytest.raises(ValueError, match="'loss_fn' failed on 'targets'"):
        op @ torch.ones(8, dtype=F64)


def test_the_scalar_check_keeps_the_hessian():
    model, x, y = _problem()
    loss = nn.CrossEntropyLoss(reduction="sum")
    H = dense_hessian(model, loss, x, y)
    v = torch.randn(8, dtype=F64)
    torch.testing.assert_close(NetworkHessianOperator(model, loss, x, y) @ v, H @ v)


def test_cg_names_a_preconditioner_operator_of_another_size():
    # it failed when applied, blaming 'V'
    A = DenseOperator(2 * torch.eye(4, dtype=F64))
    with pytest.raises(ValueError, match=r"'precond' must be a \(4, 4\) operator"):
        cg(A, torch.ones(4, dtype=F64), precond=DenseOperator(torch.eye(3, dtype=F64)))


def test_unflatten_like_takes_a_generator():
    # the type check used the generator up: "'vector' must have shape [0]"
    parts = unflatten_like(torch.arange(6.0), (t for t in [torch.zeros(2), torch.zeros(2, 2)]))
    assert [p.tolist() for p in parts] == [[0.0, 1.0], [[2.0, 3.0], [4.0, 5.0]]]


def test_flatten_params_refuses_mixed_dtypes():
    # torch.cat promoted silently
    with pytest.raises(TypeError, match="'tensors' must share one dtype"):
        flatten_params([torch.zeros(2), torch.zeros(2, dtype=F64)])
