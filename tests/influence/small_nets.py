"""A small float64 tanh network, data and flat parameter functions for the influence tests."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def flat_function(
    model: nn.Module, names: list[str], fn: Callable[[dict], torch.Tensor]
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(theta_sel -> fn(parameters with names <- theta_sel), theta_sel now)``.

    ``fn`` takes a full parameter dict (for ``torch.func.functional_call``); the parameters
    not in ``names`` are detached, so autograd differentiates the flat selection only.
    """
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]

    def f(flat: torch.Tensor) -> torch.Tensor:
        parts = [c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)]
        state = {n: p.detach() for n, p in named.items()}
        state.update(zip(names, parts, strict=True))
        return fn(state)

    theta = torch.cat([named[n].detach().reshape(-1) for n in names])
    return f, theta


def ce_sum(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch (the influence updates' loss)."""
    return F.cross_entropy(out, t, reduction="sum")


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``model``'s state dict equals ``state`` exactly."""
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
