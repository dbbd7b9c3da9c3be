"""A hand-written SGD loop that the training-based forgetting methods are checked against.

It reproduces only what the library documents about its training stage
(:func:`fastunlearn.forget._training.train`): mean cross-entropy, ``torch.optim.SGD`` with
the config's momentum, Nesterov flag and weight decay, and mini-batches in the order of a
shuffling ``DataLoader`` over the row indices whose generator is seeded with the stage's
seed (the loader is built once and iterated every epoch). The learning rate of every
epoch, and any penalty, are set explicitly by the caller, so a schedule is spelled out
by the test rather than delegated to a torch scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader


def index_order(n: int, batch_size: int, seed: int) -> DataLoader:
    """Batches of row indices ``0 .. n - 1`` shuffled by a generator seeded with ``seed``."""
    return DataLoader(
        range(n), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def sgd_loop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lrs: Sequence[float],
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    penalty: Callable[[int], Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``len(lrs)`` epochs, epoch ``e`` at learning rate ``lrs[e]``.

    ``penalty(e)`` (if given) is added to the loss of every step of epoch ``e``.
    """
    order = index_order(x.shape[0], batch_size, seed)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=lrs[0] if lrs else 0.0,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )
    model.train()
    for epoch, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for idx in order:
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if penalty is not None:
                loss = loss + penalty(epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def quantile_mask(before: Tensor, after: Tensor, q: float) -> Tensor:
    """Entries whose movement ``|after - before|`` is strictly below its ``q``-quantile."""
    d = (after.detach() - before.detach()).abs()
    return d < torch.quantile(d.flatten().float(), q)


def assert_models_equal(a: nn.Module, b: nn.Module) -> None:
    """Bit-identical state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
