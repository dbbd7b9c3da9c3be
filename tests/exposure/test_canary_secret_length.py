"""``CanaryConfig``: a ``secret_length`` that contradicts ``secret`` is refused, not ignored."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from fastunlearn.exposure.experiment import CanaryConfig


def test_a_secret_length_that_contradicts_the_secret_is_refused():
    message = "'secret_length' 9 contradicts 'secret' '12' (2 digits): give one"
    with pytest.raises(ValueError, match=re.escape(message)):
        CanaryConfig(secret="12", secret_length=9)
    with pytest.raises(ValueError, match=re.escape("'secret' '7' (1 digit): give one")):
        CanaryConfig(secret="7", secret_length=4)  # also the old default value


@pytest.mark.parametrize(("kwargs", "length"), [
    ({}, 4),
    ({"secret_length": None}, 4),
    ({"secret_length": 6}, 6),
    ({"secret_length": np.int32(3)}, 3),
    ({"secret": "12"}, 2),
    ({"secret": "123456"}, 6),
    ({"secret": "12", "secret_length": 2}, 2),
    ({"secret": "12", "secret_length": np.int64(2)}, 2),
])
def test_secret_length_defaults_to_the_secrets_length(kwargs, length):
    config = CanaryConfig(**kwargs)
    assert config.secret_digits == length and type(config.secret_digits) is int


def test_a_config_round_trips_through_its_dict_and_replace():
    config = CanaryConfig(secret="0123")
    assert CanaryConfig(**dataclasses.asdict(config)) == config
    # the default length follows a new secret (it is not fixed at construction)
    assert dataclasses.replace(config, secret="123456").secret_digits == 6
    assert dataclasses.replace(CanaryConfig(), secret="12").secret_digits == 2


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"secret_length": 0}, ValueError, "'secret_length' must be >= 1"),
    ({"secret_length": 2.0}, TypeError, "'secret_length' must be an int"),
    ({"secret": "", "secret_length": None}, ValueError, "'secret' must be None or"),
    ({"secret": "1a"}, ValueError, "'secret' must be None or"),
])
def test_bad_values_are_still_refused_first(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CanaryConfig(**kwargs)
