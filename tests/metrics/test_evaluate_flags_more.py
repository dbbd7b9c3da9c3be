"""evaluate_logits / evaluate_logits_dir: flags are bools, ``methods`` not an empty list.

Before the fix ``per_example="no"``, ``baseline="no"`` and ``progress="no"`` were read as
True (a non-empty str is truthy), and ``methods=[]`` returned a result with no method.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastunlearn.metrics import evaluate_logits, evaluate_logits_dir, write_logits_dir


@pytest.fixture
def logits_dir(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (6,), generator=g)
    retrain = torch.randn(6, 4, 3, generator=g)
    write_logits_dir(tmp_path / "d", retrain, labels,
                     {"finetune": torch.randn(6, 3, 3, generator=g)})
    return tmp_path / "d"


def test_evaluate_logits_per_example_is_a_bool() -> None:
    z = torch.randn(5, 3, 2)
    y = torch.zeros(5, dtype=torch.long)
    with pytest.raises(TypeError, match="'per_example' must be a bool"):
        evaluate_logits(z, z, y, per_example="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["baseline", "per_example", "progress"])
def test_evaluate_logits_dir_flags_are_bools(logits_dir: Path, name: str) -> None:
    with pytest.raises(TypeError, match=f"'{name}' must be a bool"):
        evaluate_logits_dir(logits_dir, **{name: "no"})


def test_evaluate_logits_dir_refuses_an_empty_method_list(logits_dir: Path) -> None:
    with pytest.raises(ValueError, match="'methods' is empty"):
        evaluate_logits_dir(logits_dir, methods=[])
    assert list(evaluate_logits_dir(logits_dir, methods=["finetune"])["methods"]) == [
        "finetune"]
