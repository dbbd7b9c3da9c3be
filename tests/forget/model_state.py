"""A model's state before a method runs, and the check that the method left it alone."""

from __future__ import annotations

import torch
from torch import nn


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer of ``model`` (its ``state_dict``)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``model`` holds exactly ``state`` (the same entries and values)."""
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def assert_unchanged(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Assert ``model`` holds exactly ``state``: the same entries, dtypes and values."""
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), f"model changed: {k}"
