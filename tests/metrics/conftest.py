from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "forget_with_precision"
if not FIXTURE.is_dir():  # worktrees live one level deeper than the main checkout
    FIXTURE = Path("/work/shared/fixtures/forget_with_precision")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE / "logits_retain.npy").is_file():
        pytest.skip("forget_with_precision fixture not found")
    return FIXTURE


@pytest.fixture(scope="session")
def fixture_arrays(fixture_dir):
    retain = np.load(fixture_dir / "logits_retain.npy")
    methods = {name: np.load(fixture_dir / name / "logits_unlearn.npy")
               for name in ("finetune", "prune_complex", "poison")}
    return retain, methods
