"""Shared test parametrisation: devices, dtypes, tolerances."""

import pytest
import torch

#: Parametrize over these: CPU always, CUDA marked (and skipped where there is no GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float64]


def tolerances(dtype: torch.dtype) -> dict:
    """assert_close tolerances against a float64 oracle."""
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 1e-10, "atol": 1e-10}
