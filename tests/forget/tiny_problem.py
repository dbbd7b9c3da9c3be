"""A tiny seeded forget/retain problem and linear model, shared by the forgetting tests."""

import torch
from torch import Tensor, nn


def tiny_forget_retain() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """30 rows of 5 features and 3 classes: the first 6 rows forget, the other 24 retain."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    return (x[:6], y[:6]), (x[6:], y[6:])


def tiny_linear() -> nn.Linear:
    """``nn.Linear(5, 3)`` initialised from seed 0 without touching the global generator."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Linear(5, 3)
