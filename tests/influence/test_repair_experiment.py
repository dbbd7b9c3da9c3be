"""Repair experiment and `fastunlearn repair` CLI on a tiny digits run."""

import argparse
import json
import math

import pytest
import torch

from fastunlearn.influence import cli
from fastunlearn.influence.experiment import RepairConfig, flip_labels


def test_flip_labels_reference_semantics():
    labels = torch.arange(10).repeat_interleave(30)
    poisoned, flipped = flip_labels(labels, 100, seed=42)
    assert flipped.numel() == 100
    assert bool((poisoned[flipped] == 9 - labels[flipped]).all())
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[flipped] = False
    assert torch.equal(poisoned[mask], labels[mask])
    assert torch.bincount(labels[flipped], minlength=10).tolist() == [10] * 10
    again, flipped2 = flip_labels(labels, 100, seed=42)
    assert torch.equal(flipped, flipped2) and torch.equal(poisoned, again)
    with pytest.raises(ValueError, match="budget"):
        flip_labels(labels, 400, seed=0)


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    return parser.parse_args(["repair", *argv])


def test_cli_repair_writes_json_png_markdown(tmp_path, capsys):
    args = _parse(["--epochs", "3", "--steps", "2", "--batch", "32", "--cg-maxiter", "5",
                   "--n-train", "600", "--budget", "200", "--result-dir", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "iterative" in out and "one-shot" in out
    result = json.loads((tmp_path / "repair_digits.json").read_text())
    assert (tmp_path / "repair_digits.png").stat().st_size > 1000
    md = (tmp_path / "repair_digits.md").read_text()
    assert "% restored" in md and "one-shot" in md
    tr = result["training"]
    assert result["data"]["flipped"] == 200 and result["data"]["n_train"] == 600
    # poisoning 200 of 600 labels costs accuracy (about 20 points, dozens of test images),
    # so "% restored" has a clearly non-zero denominator
    gap = tr["acc_clean"] - tr["acc_poisoned"]
    assert gap > 0.05
    for name in ("iterative", "one-shot"):
        p = result["protocols"][name]
        expected = (p["acc_after"] - tr["acc_poisoned"]) / gap
        assert isinstance(p["restored"], float) and math.isfinite(p["restored"])
        assert math.isclose(p["restored"], expected, rel_tol=1e-9, abs_tol=1e-12)
        assert p["num_gradients"] == 2 * sum(s["batch"] for s in p["steps"])
        assert p["residual"] > 0 and p["seconds"] > 0
        # the retraining time it is compared with (the clean model's training, which is
        # retraining on the repaired labels) and the ratio, in JSON and Markdown
        assert math.isclose(p["speedup_vs_retrain"], tr["retrain_seconds"] / p["seconds"])
    assert tr["retrain_seconds"] > 0
    assert "| clean (= retraining) |" in md and "speed-up vs retraining" in md
    assert len(result["protocols"]["iterative"]["steps"]) <= 2


def test_cli_repair_bad_input(capsys, tmp_path):
    args = _parse(["--dataset", "cifar10", "--result-dir", str(tmp_path)])
    assert args.func(args) == 2
    # the command names its flag (the config's field is 'data_dir')
    assert "'--data-dir' is required for dataset 'cifar10'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--damping", "-1"])
    with pytest.raises(ValueError, match="protocols"):
        RepairConfig(protocols=("nope",)).validate()


def _write_tiny_cifar10(root, per_batch=20):
    """The torchvision on-disk format (pickled batches of 3072-byte rows), tiny."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def dump(name, obj):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for b in range(1, 6):
        dump(f"data_batch_{b}", {"labels": [i % 10 for i in range(per_batch)],
                                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)})
    dump("test_batch", {"labels": [i % 10 for i in range(per_batch)],
                        "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)})
    dump("batches.meta", {"label_names": [str(i) for i in range(10)]})


def test_cli_repair_cifar10_from_data_dir(tmp_path, capsys):
    _write_tiny_cifar10(tmp_path)
    out = tmp_path / "out"
    args = _parse(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--model", "small_cnn",
                   "--epochs", "1", "--steps", "1", "--budget", "20", "--cg-maxiter", "2",
                   "--last-layers", "2", "--result-dir", str(out), "--no-plots"])
    assert args.func(args) == 0
    result = json.loads((out / "repair_cifar10.json").read_text())
    assert result["data"]["n_train"] == 100 and result["data"]["flipped"] == 20
    # only the head (last 2 tensors) is updated: 2 * 16 * (32 // 4)**2 = 2048 features -> 10
    assert result["data"]["updated_params"] == 2048 * 10 + 10
    assert result["data"]["num_params"] > result["data"]["updated_params"]
    bad = _parse(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--model", "nope",
                  "--result-dir", str(out)])
    assert bad.func(bad) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_main_repair_model_data_mismatch_exits_2(tmp_path, capsys):
    from fastunlearn.cli import main

    out = tmp_path / "out"
    status = main(["repair", "--model", "cifar_cnn", "--epochs", "1", "--n-train", "200",
                   "--budget", "20", "--result-dir", str(out), "--no-plots"])
    assert status == 2
    err = capsys.readouterr().err
    assert "fastunlearn repair: error:" in err and "cifar_cnn" in err
    assert "does not fit the digits inputs of shape [1, 8, 8]" in err
    assert not out.exists()  # nothing trained, nothing written


def test_cli_repair_lissa_reports_damping_relative_to_the_full_data(tmp_path, capsys):
    args = _parse(["--epochs", "1", "--n-train", "300", "--budget", "30", "--protocol",
                   "one-shot", "--solver", "lissa", "--lissa-batch", "64", "--lissa-depth", "3",
                   "--lissa-damping", "1e-3", "--lissa-scale", "1e4", "--result-dir",
                   str(tmp_path), "--no-plots"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    k = math.ceil(300 / 64)  # 5 batches per pass: damping 5 * d s = 50, step 5 x
    assert "relative to the full-data Hessian" in out and f"step is {k} x" in out
    result = json.loads((tmp_path / "repair_digits.json").read_text())
    assert result["lissa"]["step_scale"] == k
    assert result["lissa"]["full_data_damping"] == pytest.approx(k * 10.0)
    step = result["protocols"]["one-shot"]["steps"][0]
    assert step["damping"] == pytest.approx(k * 10.0) and step["step_scale"] == k
    md = (tmp_path / "repair_digits.md").read_text()
    assert "relative to the full-data Hessian" in md
    with pytest.raises(ValueError, match="lissa_hessian"):
        RepairConfig(lissa_hessian="nope").validate()


def test_cli_repair_progress_shows_the_training_bar(tmp_path, capsys):
    args = _parse(["--epochs", "2", "--steps", "1", "--batch", "16", "--cg-maxiter", "3",
                   "--n-train", "300", "--budget", "60", "--result-dir", str(tmp_path),
                   "--progress", "--no-plots"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "train" in err and "2/2" in err and "epoch" in err
