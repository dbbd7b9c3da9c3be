"""Files written again keep their permission bits, and a symbolic link stays a link.

A certified checkpoint holds the training data; a user who made it private (``chmod 600``)
must not find it world-readable after the next removal.
"""

from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.data.vision import load_features, save_features

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * torch.randn(60, generator=gen, dtype=torch.float64) > 0).long()
    return X, y


def test_a_private_checkpoint_stays_private_after_a_removal(tmp_path):
    path = tmp_path / "model.safetensors"
    X, y = _data()
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0, checkpoint=str(path)).fit(X, y)
    os.chmod(path, 0o600)
    model.remove([1])
    assert _mode(path) == 0o600
    # a new fit writes a new training-data file: as private as the model file
    model.fit(*_data(1))
    data_files = [p for p in tmp_path.iterdir() if ".data-" in p.name]
    assert data_files and all(_mode(p) == 0o600 for p in data_files)
    assert _mode(path) == 0o600


def test_save_keeps_a_files_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    model = CertifiedLogisticRegression(lam=1e-2, sigma=1.0).fit(*_data())
    model.save(path)
    os.chmod(path, 0o640)
    model.remove([2])
    model.save(path)
    assert _mode(path) == 0o640


def test_save_features_keeps_the_mode_and_writes_through_a_link(tmp_path):
    X, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    real = tmp_path / "real.safetensors"
    save_features(real, {"train": X}, {"train": y})
    os.chmod(real, 0o600)
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    save_features(link, {"train": 2 * X}, {"train": y})
    assert link.is_symlink() and _mode(real) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    torch.testing.assert_close(load_features(real)[0]["train"], 2 * X)
