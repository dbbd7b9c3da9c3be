"""Resumable extractor training: an interrupted run continues after its last finished epoch.

Each case trains once without interruption and once interrupted mid-epoch (a dataset that
raises KeyboardInterrupt at a given item, as Ctrl-C would) and then resumed from the
epoch-state file: the weights must be equal bit for bit and, for DP-SGD, so must epsilon.
"""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fastunlearn.certified.extractors import (
    train_adversarial_extractor,
    train_dp_extractor,
    train_standard_extractor,
)
from fastunlearn.data import digits_images
from fastunlearn.epoch_state import EPOCH_STATE_VERSION, saved_epochs, weights_digest
from fastunlearn.models import mlp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N, BATCH, EPOCHS = 96, 16, 3


class _Trap(Dataset):
    """Digits whose ``stop_at``-th item read raises KeyboardInterrupt (None: never)."""

    def __init__(self, stop_at=None):
        self.X, self.y = digits_images()
        self.X, self.y = self.X[:N], self.y[:N]
        self.reads, self.stop_at = 0, stop_at

    def __len__(self):
        return N

    def __getitem__(self, i):
        self.reads += 1
        if self.stop_at is not None and self.reads == self.stop_at:
            raise KeyboardInterrupt
        return self.X[i], self.y[i]


def _model(seed=0):
    torch.manual_seed(seed)
    return mlp(64, 10, hidden=(16,))


def _params(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _train(kind, dataset, path=None, *, epochs=EPOCHS, model=None, lr=1e-2, device="cpu"):
    """Train ``kind`` on ``dataset`` from the seeded MLP; return (model, epsilon or None)."""
    model = _model() if model is None else model
    if device != "cpu":  # the GPU's generator too: DP noise and FGSM starts draw from it
        torch.cuda.manual_seed(0)
    common = dict(epochs=epochs, lr=lr, progress=False, epoch_checkpoint=path, device=device)
    if kind == "dp":
        pytest.importorskip("opacus")  # a GPU machine may lack it (not a dependency there)
        loader = DataLoader(dataset, batch_size=BATCH)
        return train_dp_extractor(model, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                                  **common)
    gen = torch.Generator().manual_seed(7)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=gen)
    if kind == "fgsm":
        out = train_adversarial_extractor(model, loader, epsilon=0.05, **common)
    else:
        out = train_standard_extractor(model, loader, **common)
    return out, None


@pytest.mark.parametrize("kind", ["standard", "fgsm", "dp"])
def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, kind):
    plain, plain_eps = _train(kind, _Trap())
    path = tmp_path / "state.pt"
    # interrupted in the second epoch (DP's Poisson batches read about N items an epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(kind, _Trap(stop_at=N + N // 2), path)
    assert saved_epochs(path) == 1
    resumed, resumed_eps = _train(kind, _Trap(), path)
    assert torch.equal(_params(resumed), _params(plain))
    assert resumed_eps == plain_eps  # the accountant counted the first epoch's steps too
    assert not path.exists()  # removed when training finished
    assert not resumed.training


@pytest.mark.parametrize("kind", ["standard", "fgsm"])
def test_a_model_with_batchnorm_resumes_too(tmp_path, kind):
    """BatchNorm's 0-d ``num_batches_tracked`` buffer is digested and restored as well."""
    def bn_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16),
                                   torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, 10))

    plain, _ = _train(kind, _Trap(), model=bn_model())
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(kind, _Trap(stop_at=N + N // 2), path, model=bn_model())
    assert saved_epochs(path) == 1
    resumed, _ = _train(kind, _Trap(), path, model=bn_model())
    for (name, a), b in zip(plain.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["fgsm", "dp"])
def test_interrupted_training_on_the_gpu_resumes_to_the_uninterrupted_result(tmp_path, kind):
    """On a GPU the saved state includes its generator (DP noise, attack starts)."""
    plain, plain_eps = _train(kind, _Trap(), device="cuda")
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        _train(kind, _Trap(stop_at=N + N // 2), path, device="cuda")
    assert saved_epochs(path) == 1
    # _train seeds the GPU again: the saved state after epoch 1 must replace that seed's
    resumed, resumed_eps = _train(kind, _Trap(), path, device="cuda")
    assert torch.equal(_params(resumed), _params(plain))
    assert resumed_eps == plain_eps


def test_the_epoch_state_file_is_written_after_each_epoch_and_removed_at_the_end(tmp_path):
    path = tmp_path / "state.pt"
    seen = []

    class Spy(_Trap):
        def __getitem__(self, i):
            seen.append(saved_epochs(path)) if self.reads % N == 0 else None
            return super().__getitem__(i)

    _train("standard", Spy(), path)
    assert seen == [None, 1, 2]
    assert not path.exists()


def test_a_run_without_epoch_checkpoint_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _train("standard", _Trap())
    assert list(tmp_path.iterdir()) == []


def _interrupted(tmp_path, kind="standard", **kwargs):
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):  # in the second epoch (seeded Poisson batches too)
        _train(kind, _Trap(stop_at=N + N // 2), path, **kwargs)
    assert saved_epochs(path) == 1
    return path


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"lr": 2e-2}, "lr: saved 0.01, now 0.02"), ({"model": "seed"}, "initial weights")],
)
def test_other_settings_or_initial_weights_are_refused(tmp_path, change, needle):
    path = _interrupted(tmp_path)
    before = path.read_bytes()
    model = _model(seed=1) if change.get("model") == "seed" else _model()
    start = _params(model)
    with pytest.raises(ValueError, match="'epoch_checkpoint'") as info:
        _train("standard", _Trap(), path, model=model, lr=change.get("lr", 1e-2))
    assert needle in str(info.value)
    assert path.read_bytes() == before  # the saved epochs are kept
    assert torch.equal(_params(model), start)  # nothing trained, nothing loaded


def test_another_kind_of_training_is_refused(tmp_path):
    path = _interrupted(tmp_path)
    with pytest.raises(ValueError, match="saved by standard training, not adversarial training"):
        _train("fgsm", _Trap(), path)


def test_fewer_epochs_than_saved_are_refused(tmp_path):
    path = tmp_path / "two.pt"
    with pytest.raises(KeyboardInterrupt):
        _train("standard", _Trap(stop_at=2 * N + 5), path)
    assert saved_epochs(path) == 2
    before = path.read_bytes()
    with pytest.raises(ValueError, match="'epochs' 1 is fewer than the 2 epochs"):
        _train("standard", _Trap(), path, epochs=1)
    assert path.read_bytes() == before


def test_all_epochs_saved_returns_the_saved_model_without_training(tmp_path):
    path = _interrupted(tmp_path)  # one epoch saved
    plain, _ = _train("standard", _Trap(), epochs=1)
    model, _ = _train("standard", _Trap(stop_at=1), path, epochs=1)  # reads no item
    assert torch.equal(_params(model), _params(plain))
    assert not path.exists()


def test_a_file_that_is_not_an_epoch_state_is_refused_and_kept(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a torch archive")
    with pytest.raises(ValueError, match="is not a readable epoch state"):
        _train("standard", _Trap(), path)
    assert path.read_bytes() == b"not a torch archive"
    torch.save({"version": EPOCH_STATE_VERSION + 1}, path)
    with pytest.raises(ValueError, match="not an epoch state of this version"):
        _train("standard", _Trap(), path)
    assert saved_epochs(path) is None


def test_bad_epoch_checkpoint_paths(tmp_path):
    with pytest.raises(ValueError, match="'epoch_checkpoint' .* is a folder"):
        _train("standard", _Trap(), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        _train("standard", _Trap(), tmp_path / "missing" / "state.pt")
    with pytest.raises(TypeError, match="'epoch_checkpoint' must be a path or None"):
        _train("standard", _Trap(), 3)


def test_weights_digest_sees_values_names_and_dtypes():
    a, b = _model(), _model()
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        next(b.parameters())[0, 0] += 1e-7
    assert weights_digest(a) != weights_digest(b)
    assert weights_digest(a) != weights_digest(_model().double())


def test_dp_state_without_accountant_history_is_refused(tmp_path):
    path = _interrupted(tmp_path, kind="dp")
    saved = torch.load(path, weights_only=True)
    saved["extra"] = {}
    torch.save(saved, path)
    with pytest.raises(ValueError, match="no DP accountant history"):
        _train("dp", _Trap(), path)


def test_extract_command_resumes_after_an_interrupt(tmp_path):
    """The CLI keeps the finished epochs on Ctrl-C (exit 130) and resumes from them."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch\n"
        "from fastunlearn import cli\n"
        "from fastunlearn.certified import extractors\n"
        "real = extractors._run_epochs\n"
        "def stop_in_epoch_2(model, loader, optimizer, **kw):\n"
        "    class L:\n"
        "        def __init__(s): s.n = 0\n"
        "        def __len__(s): return len(loader)\n"
        "        dataset = loader.dataset\n"
        "        generator = loader.generator\n"
        "        def __iter__(s):\n"
        "            s.n += 1\n"
        "            for i, b in enumerate(loader):\n"
        "                if s.n == 2 and i == 1: raise KeyboardInterrupt\n"
        "                yield b\n"
        "    return real(model, L(), optimizer, **kw)\n"
        "if sys.argv[1] == 'stop': extractors._run_epochs = stop_in_epoch_2\n"
        "sys.exit(cli.main(sys.argv[2:]))\n"
    )
    args = ["--data-dir", str(tmp_path), "--dataset", "digits", "--extractor", "standard",
            "--model", "mlp", "--epochs", "3", "--batch-size", "256", "--quiet"]
    first = subprocess.run([sys.executable, str(script), "stop", "extract", *args],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 130, first.stderr
    assert "1 of 3 epochs are kept in" in first.stderr
    state = tmp_path / "standard_mlp_digits_model.epoch-state.pt"
    assert saved_epochs(state) == 1
    second = subprocess.run([sys.executable, str(script), "go", "extract", *args],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming after epoch 1 of 3" in second.stdout
    assert "trained epochs 2-3 in" in second.stdout
    assert "(epoch 1 in an earlier run)" in second.stdout
    assert not state.exists()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "standard_mlp_digits_model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    assert meta["resumed_after_epoch"] == 1
    # the resumed extractor equals one trained in a single run
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    whole = subprocess.run(
        [sys.executable, str(script), "go", "extract", *args[:1], str(fresh), *args[2:]],
        capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "standard_mlp_digits_model.safetensors"))
    b = load_file(str(fresh / "standard_mlp_digits_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_extract_no_resume_starts_over(tmp_path, capsys):
    state = tmp_path / "standard_mlp_digits_model.epoch-state.pt"
    state.write_bytes(b"stale")
    from fastunlearn import cli

    args = ["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--extractor",
            "standard", "--model", "mlp", "--epochs", "1", "--batch-size", "512", "--quiet"]
    assert cli.main(args) == 2  # the stale file is refused, named, and kept
    err = capsys.readouterr().err
    assert "standard_mlp_digits_model.epoch-state.pt" in err and "--no-resume" in err
    assert state.read_bytes() == b"stale"
    assert cli.main([*args, "--no-resume"]) == 0
    assert not state.exists()
