"""Model, feature and cache files get the permissions of any new file (``0o666 & ~umask``).

safetensors' ``save_file`` and ``tempfile.mkstemp`` create their files with mode 0600, so
models and features were private while the JSON, Markdown and PNG beside them were not.
"""

import os
import stat

import pytest
import torch
from torch import nn

from fastunlearn._atomic_files import default_permissions, replace_atomically
from fastunlearn._model_cache import store_cached
from fastunlearn.certified import CertifiedLogisticRegression
from fastunlearn.data import load_digits_dataset, save_features


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_private_writer_gets_the_default_mode(tmp_path, umask):
    def private(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    assert _mode(replace_atomically(tmp_path / "x.bin", private)) == 0o666 & ~umask
    loose = tmp_path / "loose"
    loose.write_text("x")
    os.chmod(loose, 0o777)
    default_permissions(loose)
    assert _mode(loose) == 0o666 & ~umask  # never executable, never beyond the umask


def test_certified_model_files_follow_the_umask(tmp_path, umask):
    digits = load_digits_dataset()
    model = CertifiedLogisticRegression(lam=1e-2, epsilon=1.0, delta=1e-4, sigma=0.1)
    model.fit(digits.X_train[:200].double(), (digits.y_train[:200] == 3).long())
    path = tmp_path / "model.safetensors"
    model.save(path)
    assert _mode(path) == 0o666 & ~umask


def test_feature_files_follow_the_umask(tmp_path, umask):
    path = save_features(tmp_path / "f.safetensors", {"train": torch.zeros(3, 2)},
                         {"train": torch.zeros(3, dtype=torch.long)})
    assert _mode(path) == 0o666 & ~umask


def test_model_cache_entries_follow_the_umask(tmp_path, umask):
    store_cached(tmp_path, "original", "k" * 64, nn.Linear(2, 2), 1.0, {"model": "linear"})
    files = sorted(tmp_path.iterdir())
    assert files and all(_mode(f) == 0o666 & ~umask for f in files)


def test_an_extracted_checkpoint_follows_the_umask(tmp_path, umask):
    from fastunlearn.cli import main

    data = tmp_path / "data"
    data.mkdir()
    assert main(["extract", "--data-dir", str(data), "--dataset", "digits", "--extractor",
                 "standard", "--model", "mlp", "--epochs", "1", "--no-progress"]) == 0
    written = sorted(p for p in data.iterdir() if p.suffix == ".safetensors")
    assert len(written) == 2  # the extractor and its features
    assert all(_mode(p) == 0o666 & ~umask for p in written)
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temporary left
