"""Digits class-forgetting setup shared by the forgetb tests: trained once per process.

An MLP is trained on the digits' train split (the original model) and, the same way with the
same seed, on the retain part only (the retrained oracle). Forgetting one or two classes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from model_state import same_state, state_copy  # noqa: F401  (re-exported for the tests)
from torch import Tensor, nn

from fastunlearn.data import digits_images
from fastunlearn.models.zoo import mlp

FORGET_CLASS = 3


@dataclass
class Setup:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    forget_classes: tuple[int, ...]
    original: nn.Module
    oracle: nn.Module

    @property
    def forget_mask(self) -> Tensor:
        return torch.isin(self.y_train, torch.tensor(self.forget_classes))

    @property
    def forget(self) -> tuple[Tensor, Tensor]:
        m = self.forget_mask
        return self.x_train[m], self.y_train[m]

    @property
    def retain(self) -> tuple[Tensor, Tensor]:
        m = ~self.forget_mask
        return self.x_train[m], self.y_train[m]

    @property
    def test_retain(self) -> tuple[Tensor, Tensor]:
        m = ~torch.isin(self.y_test, torch.tensor(self.forget_classes))
        return self.x_test[m], self.y_test[m]


def _train(x: Tensor, y: Tensor, seed: int = 0, epochs: int = 25) -> nn.Module:
    torch.manual_seed(seed)
    model = mlp(64, 10, hidden=(64,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    acc = (model(x).argmax(1) == y).double().mean().item()
    model.train(was)
    return acc


@functools.cache
def setup(forget_classes: tuple[int, ...] = (FORGET_CLASS,)) -> Setup:
    images, labels = digits_images()
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    n_test = 360
    test, train = perm[:n_test], perm[n_test:]
    x_train, y_train = images[train], labels[train]
    fm = torch.isin(y_train, torch.tensor(forget_classes))
    with torch.random.fork_rng():
        original = _train(x_train, y_train)
        oracle = _train(x_train[~fm], y_train[~fm])
    return Setup(x_train, y_train, images[test], labels[test], forget_classes, original, oracle)


