"""Every method takes every seed its config accepts, up to the top of the range.

Methods derive further random streams from ``config.seed`` plus a small offset (a second
shuffling order, the bad teacher's initialisation, one noise batch per class); at
``seed = 2**63 - 1`` the plain sum left the generator's range and the method failed after
its checks had passed. :func:`offset_seed` wraps it around instead.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fastunlearn.forget import available_methods, get_method
from fastunlearn.forget.bad_teacher import BadTeacherConfig
from fastunlearn.forget.base import offset_seed

TOP, BOTTOM = 2**63 - 1, -(2**63)
# methods that forget whole classes: a one-class forget set, the others retained
_ONE_CLASS = {"unsir", "antisamples"}


def _problem(name: str) -> tuple[nn.Module, tuple, tuple]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=gen), torch.arange(40) % 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    if name in _ONE_CLASS:
        return model, (x[y == 0][:5], y[y == 0][:5]), (x[y != 0], y[y != 0])
    return model, (x[:5], y[:5]), (x[5:], y[5:])


@pytest.mark.parametrize("seed", [TOP, TOP - 2, BOTTOM])
@pytest.mark.parametrize("name", available_methods())
def test_method_runs_at_the_edges_of_the_seed_range(name: str, seed: int) -> None:
    method, config_cls = get_method(name)
    model, forget, retain = _problem(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # settings a method does not read; tiny sets
        out = method(model, forget, retain, config_cls(seed=seed, epochs=1, batch_size=8))
    assert all(torch.isfinite(p).all() for p in out.parameters())


def test_offset_seed_is_the_sum_below_the_top_and_wraps_at_it() -> None:
    assert offset_seed(5, 1) == 6 and offset_seed(-3, 7919) == 7916
    assert offset_seed(TOP, 1) == BOTTOM and offset_seed(TOP, 3) == BOTTOM + 2
    derived = [offset_seed(TOP - 1, k) for k in range(4)]
    assert len(set(derived)) == 4 and all(BOTTOM <= s <= TOP for s in derived)
    for s in derived:
        torch.Generator().manual_seed(s)  # every derived seed is one a generator takes


@pytest.mark.parametrize(("value", "exc"), [(2**63, ValueError), (-(2**63) - 1, ValueError),
                                            (1.5, TypeError), (True, TypeError)])
def test_incompetent_seed_is_checked_like_the_seed(value: object, exc: type) -> None:
    with pytest.raises(exc, match="'incompetent_seed'"):
        BadTeacherConfig(incompetent_seed=value)
