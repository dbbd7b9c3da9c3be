"""A small float64 tanh network and data, shared by the influence update tests."""

import torch
from torch import nn

D64 = torch.float64


def small_net(seed: int = 0, d: int = 4, h: int = 6, k: int = 3) -> nn.Sequential:
    """``Linear(d, h) -> Tanh -> Linear(h, k)`` in float64, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, k)).double()


def net_data(n: int, d: int = 4, k: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 rows of ``d`` features and labels in ``[0, k)``, from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=D64)
    y = torch.randint(0, k, (n,), generator=gen)
    return X, y
