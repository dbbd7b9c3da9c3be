"""The library's shared checks of numbers given as arguments (``fastunlearn._numbers``).

Every count, seed and rate of the influence, exposure, harness, data and forgetting
functions goes through these; their messages name the argument the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fastunlearn._numbers import (
    MAX_SEED,
    check_fraction,
    check_int,
    check_real,
    check_seed,
    plain_fields,
)


@pytest.mark.parametrize("value", [3, np.int64(3), np.uint8(3)])
def test_check_int_returns_a_python_int(value):
    out = check_int("steps", value, 1, 10)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, "3", None, np.float32(3)])
def test_check_int_refuses_other_types_naming_the_argument(value):
    with pytest.raises(TypeError, match=r"^'steps' must be an int, got "):
        check_int("steps", value, 1)


def test_check_int_bounds_are_inclusive_and_named():
    assert check_int("k", 1, 1, 5) == 1 and check_int("k", 5, 1, 5) == 5
    assert check_int("k", -10**30) == -10**30  # no bounds: any int
    with pytest.raises(ValueError, match=r"^'k' must be >= 1, got 0$"):
        check_int("k", 0, 1)
    with pytest.raises(ValueError, match=r"^'k' must be <= 5, got 6$"):
        check_int("k", 6, 1, 5)
    with pytest.raises(ValueError, match=r"^'k' must be <= 2\*\*63 - 1, got 9223372036854775808$"):
        check_int("k", 2**63, 1, 2**63 - 1)


@pytest.mark.parametrize("value", [0, 1, MAX_SEED, np.uint64(MAX_SEED), np.int64(7)])
def test_check_seed_takes_a_generator_seed(value):
    out = check_seed("seed", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [-1, MAX_SEED + 1])
def test_check_seed_refuses_seeds_outside_the_generator_range(value):
    # a negative seed would alias a large one in torch.Generator (and its absolute value in
    # random.Random): refused, not silently aliased
    with pytest.raises(ValueError, match=rf"^'seed' must be an int in \[0, 2\*\*64 - 1\], "
                                         rf"got {value}$"):
        check_seed("seed", value)


def test_check_seed_with_a_smaller_range_names_it():
    assert check_seed("seed", 2**60 - 1, 2**60 - 1) == 2**60 - 1
    with pytest.raises(ValueError, match=r"\[0, 2\*\*60 - 1\], got 1152921504606846976"):
        check_seed("seed", 2**60, 2**60 - 1)
    with pytest.raises(ValueError, match=r"^'s' must be an int in \[0, 99\], got 100$"):
        check_seed("s", 100, 99)
    with pytest.raises(TypeError, match=r"^'seed' must be an int in \[0, 2\*\*64 - 1\], "
                                        r"got float 1.0$"):
        check_seed("seed", 1.0)


@pytest.mark.parametrize("value", [0.5, 2, np.float32(0.5), np.int64(2)])
def test_check_real_returns_a_python_float(value):
    out = check_real("lr", value, positive=True)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.1", None, 1j])
def test_check_real_refuses_other_types(value):
    with pytest.raises(TypeError, match=r"^'lr' must be a real number, got "):
        check_real("lr", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, -1e-9])
def test_check_real_refuses_non_finite_and_negative_values(value):
    with pytest.raises(ValueError, match=r"^'damping' must be finite and >= 0, got "):
        check_real("damping", value)


def test_check_real_zero_only_without_positive():
    assert check_real("damping", 0) == 0.0
    with pytest.raises(ValueError, match=r"^'lr' must be finite and > 0, got 0.0$"):
        check_real("lr", 0.0, positive=True)


def test_plain_fields_converts_numpy_scalars_in_place():
    @dataclasses.dataclass(frozen=True)
    class Settings:
        steps: object
        rate: object

    settings = Settings(np.int64(4), np.float32(0.5))
    plain_fields(settings)
    assert (type(settings.steps), type(settings.rate)) == (int, float)
    assert settings == Settings(4, 0.5)


@pytest.mark.parametrize("value", [{"steps": 1}, None, type("Plain", (), {}),
                                   dataclasses.make_dataclass("Cls", ["a"])])
def test_plain_fields_refuses_what_is_not_a_dataclass_instance(value):
    with pytest.raises(TypeError, match=r"^'config' must be a dataclass instance"):
        plain_fields(value)


@pytest.mark.parametrize(("zero", "one", "inside", "outside"), [
    (False, False, [1e-12, 0.5, np.float32(0.25)], [0, 1, -0.1, 1.5]),
    (False, True, [1, 0.5, np.int64(1)], [0, 1.0000001]),
    (True, False, [0, 0.0, 0.999], [1, -1e-12]),
    (True, True, [0, 1, 0.5], [-0.5, 2]),
])
def test_check_fraction_interval_ends(zero, one, inside, outside):
    interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
    for value in inside:
        out = check_fraction("p", value, zero=zero, one=one)
        assert type(out) is float and out == float(value)
    for value in [*outside, math.nan, math.inf, 10**400]:
        with pytest.raises(ValueError, match=rf"^'p' must be in \{interval[0]}0, 1\{interval[-1]}"):
            check_fraction("p", value, zero=zero, one=one)


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", None, 0.5j])
def test_check_fraction_refuses_what_is_not_a_real_number(value):
    with pytest.raises(TypeError, match=r"^'ratio' must be a real number, got "):
        check_fraction("ratio", value, one=True)
