"""``fastunlearn remove``: a few removals on digits, its outputs, clean errors for bad flags."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastunlearn.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_remove(tmp_path, *flags):
    return main(["remove", "--num-removes", "5", "--result-dir", str(tmp_path), *flags])


@pytest.mark.parametrize("mode", ["binary", "ovr"])
def test_remove_five_points(tmp_path, capsys, mode):
    assert run_remove(tmp_path, "--train-mode", mode, "--lam", "0.01", "--std", "1") == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("removal ")]
    assert len(lines) == 5
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"removal {i}/5  row ") and "bound " in line
        assert "cumulative " in line and "left " in line and line.endswith(" ms")
    assert "removed 5 rows" in out and "privacy: epsilon 1, delta 0.0001" in out
    assert "fairness: worst class" in out
    stem = f"none_digits_{mode}_std_1_lam_0.01_eps_1_removes_5"
    for suffix in (".json", ".md", "_bounds.png", "_accuracy.png", "_time.png"):
        path = tmp_path / f"{stem}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in out
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert len(payload["records"]) == 5
    assert payload["data"]["train_mode"] == mode
    assert len(payload["data"]["classes"]) == (2 if mode == "binary" else 10)
    assert payload["config"]["result_dir"] == str(tmp_path)


def test_remove_flags_reach_the_experiment(tmp_path, capsys, built):
    # --cg-tol (cholesky) and --target-epsilon (no extractor) are recorded, said unused
    with pytest.warns(UserWarning) as said:
        assert run_remove(tmp_path, "--train-mode", "binary", "--lam", "0.1", "--std", "2",
                          "--epsilon", "0.5", "--delta", "1e-5", "--gamma", "tight",
                          "--batch", "5", "--seed", "3", "--solver", "cholesky",
                          "--num-steps", "50", "--cg-tol", "1e-9", "--target-epsilon", "3",
                          "--no-plots", "--no-retrain", "--no-retrain-timing",
                          "--verbose") == 0
    assert {str(w.message).partition(" has no effect")[0] for w in said} == {
        "'--cg-tol'", "'--target-epsilon'"}
    out = capsys.readouterr().out
    assert out.startswith("fit: ")  # --verbose: training details first
    stem = ("none_digits_binary_std_2_lam_0.1_eps_0.5_batch_5_delta_1e-05_gamma_tight"
            "_solver_cholesky_seed_3_removes_5_steps_50_target_eps_3_no_retrain")
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    cfg = payload["config"]
    assert (cfg["lam"], cfg["std"], cfg["epsilon"], cfg["delta"]) == (0.1, 2.0, 0.5, 1e-5)
    assert (cfg["gamma"], cfg["batch"], cfg["seed"], cfg["solver"]) == ("tight", 5, 3, "cholesky")
    assert cfg["num_steps"] == 50 and cfg["retrain"] is False
    assert cfg["cg_tol"] == 1e-9 and cfg["target_epsilon"] == 3.0
    assert [len(r["indices"]) for r in payload["records"]] == [5]
    assert payload["timings"]["retrain_seconds"] is None
    assert not list(tmp_path.glob("*.png"))
    assert "removal 5/5  5 rows" in out
    # the flags reach the certified model itself, not only the JSON
    assert len(built) == 1  # --no-retrain-timing: no timed refits
    params = built[0].get_params()
    assert (params["lam"], params["sigma"], params["epsilon"], params["delta"]) == (
        0.1, 2.0, 0.5, 1e-5)
    assert (params["max_iter"], params["solver"], params["cg_tol"], params["seed"]) == (
        50, "cholesky", 1e-9, 3)
    assert (params["gamma"], params["retrain"], params["train_mode"]) == ("tight", False, "binary")
    # sigma epsilon / c(delta), c = sqrt(2 ln(1.5 / delta)): --std, --epsilon, --delta in use
    budget = 2.0 * 0.5 / math.sqrt(2.0 * math.log(1.5 / 1e-5))
    assert built[0].budget_ == pytest.approx(budget, rel=1e-12)
    assert built[0].n_removed_ == 5


@pytest.mark.parametrize(("flags", "message"), [
    (["--delta", "2"], "argument --delta: must be in (0, 1), got 2"),
    (["--delta", "abc"], "argument --delta: not a number: 'abc'"),
    (["--lam", "0"], "argument --lam: must be positive, got 0"),
    (["--std", "-1"], "argument --std: must be non-negative"),
    (["--epsilon", "nan"], "argument --epsilon: must be finite"),
    (["--subsample-ratio", "0"], "argument --subsample-ratio: must be in (0, 1]"),
    (["--num-removes", "-2"], "argument --num-removes: must be at least 0"),
    (["--num-steps", "0"], "argument --num-steps: must be at least 1"),
    (["--batch", "1.5"], "argument --batch: not an integer"),
    (["--train-mode", "multi"], "argument --train-mode: invalid choice"),
    (["--dataset", "imagenet"], "argument --dataset: must be one of digits, MNIST"),
    (["--gamma", "loose"], "argument --gamma: invalid choice"),
    (["--cg-tol", "0"], "argument --cg-tol: must be positive"),
    (["--target-epsilon", "-1"], "argument --target-epsilon: must be positive"),
])
def test_bad_flags_are_clean_argparse_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["remove", *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--dataset", "MNIST"], "'--data-dir' is required for dataset MNIST"),
    (["--device", "tpu"], "'--device' must be cpu, cuda or cuda:<index>, got 'tpu'"),
    (["--train-mode", "binary", "--num-removes", "100000"], "'--num-removes' must be at most"),
])
def test_bad_settings_are_clean_errors(tmp_path, capsys, flags, message):
    assert main(["remove", "--result-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn remove: error: ") and message in err
    assert not list(tmp_path.iterdir())


def test_defaults_follow_the_reference_flags():
    args = build_parser().parse_args(["remove"])
    assert args.dataset == "digits" and args.extractor == "none" and args.train_mode == "ovr"
    assert args.std == 10.0 and args.num_steps == 100 and args.subsample_ratio == 1.0
    assert args.result_dir == "result" and args.batch == 0 and args.gamma == "paper"
    assert (args.epsilon, args.delta, args.device, args.solver) == (1.0, 1e-4, "cpu", "auto")
    assert build_parser().parse_args(["remove", "--dataset", "svhn"]).dataset == "SVHN"


def test_bad_flag_from_the_shell_exits_non_zero_without_a_traceback():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "fastunlearn", "remove", "--delta", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "--delta: must be in (0, 1)" in proc.stderr and "Traceback" not in proc.stderr


# ---- extract ------------------------------------------------------------------------------


def run_extract(tmp_path, *flags):
    return main(["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "256", "--quiet", *flags])


def test_extract_standard_features_feed_remove(tmp_path, capsys):
    from fastunlearn.data import load_digits_dataset, load_features

    assert run_extract(tmp_path, "--extractor", "standard") == 0
    out = capsys.readouterr().out
    path = tmp_path / "standard_small_cnn_digits_extracted.safetensors"
    assert f"wrote {path}" in out and "not private" in out
    assert (tmp_path / "standard_small_cnn_digits_model.safetensors").is_file()
    features, labels, meta = load_features(path)
    split = load_digits_dataset()
    assert features["train"].shape == (split.X_train.shape[0], 128)
    assert torch.equal(labels["train"], split.y_train) and torch.equal(labels["test"], split.y_test)
    assert meta["extractor"] == "standard" and meta["model"] == "small_cnn"
    assert "epsilon" not in meta

    assert main(["remove", "--data-dir", str(tmp_path), "--extractor", "standard_small_cnn",
                 "--train-mode", "binary", "--num-removes", "3", "--lam", "0.01", "--std", "1",
                 "--result-dir", str(tmp_path / "res"), "--no-plots"]) == 0
    capsys.readouterr()
    payload = json.loads(next((tmp_path / "res").glob("*.json")).read_text())
    assert payload["data"]["n_features"] == 128 and payload["data"]["classes"] == ["8", "3"]
    assert payload["privacy"]["extractor"]["private"] is False


def test_extract_dp_records_epsilon_and_reuses_the_checkpoint(tmp_path, capsys):
    from fastunlearn.data import load_features

    flags = ("--extractor", "dp", "--model", "mlp", "--std", "2", "--delta", "1e-5")
    assert run_extract(tmp_path, *flags) == 0
    out = capsys.readouterr().out
    name = "dp_delta_1.00e-05_std_2.00"
    _, _, meta = load_features(tmp_path / f"{name}_digits_extracted.safetensors")
    assert 0 < meta["epsilon"] < 100 and meta["delta"] == 1e-5
    assert meta["noise_multiplier"] == 2.0 and meta["max_grad_norm"] == 4.0
    assert f"({meta['epsilon']:.4g}, 1e-05)-DP" in out and "trained in" in out
    # a second run loads the trained extractor instead of training again
    assert run_extract(tmp_path, *flags) == 0
    out = capsys.readouterr().out
    assert "loaded the trained extractor" in out and "trained in" not in out
    _, _, again = load_features(tmp_path / f"{name}_digits_extracted.safetensors")
    assert again["epsilon"] == meta["epsilon"]


def test_extract_adversarial(tmp_path, capsys):
    assert run_extract(tmp_path, "--extractor", "adversarial", "--attack", "pgd", "--pgd-steps",
                       "2", "--model", "mlp", "--name", "robust") == 0
    assert "robust_digits_extracted.safetensors" in capsys.readouterr().out
    assert (tmp_path / "robust_digits_extracted.safetensors").is_file()


@pytest.mark.parametrize(("flags", "message"), [
    (["--delta", "2"], "argument --delta: must be in (0, 1)"),
    (["--clip", "0"], "argument --clip: must be positive"),
    (["--attack", "cw"], "argument --attack: invalid choice"),
    (["--extractor", "magic"], "argument --extractor: invalid choice"),
])
def test_extract_bad_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["extract", "--data-dir", str(tmp_path), *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_extract_missing_data_is_a_clean_error(tmp_path, capsys):
    assert main(["extract", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "'--data-dir'" in capsys.readouterr().err
    assert main(["extract", "--data-dir", str(tmp_path), "--dataset", "MNIST"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastunlearn extract: error: ") and "MNIST" in err


def _summary_result(composed_delta):
    from types import SimpleNamespace

    extractor = {"private": True, "name": "dp_x", "epsilon": 0.5, "delta": 1e-5,
                 "target_epsilon": 1.0, "removals_supported": 2,
                 "composed": {"removals": 20, "epsilon": 12.58, "delta": composed_delta}}
    return SimpleNamespace(
        privacy={"removals": 20, "retrains": 0, "epsilon": 1.0, "delta": 1e-4, "budget": 0.1,
                 "removals_supported": 30, "removals_supported_is_estimate": False,
                 "budget_used": 0.01, "extractor": extractor, "stopped_early": False},
        timings={"removal_seconds_median": None},
        fairness={"after": {"worst_class": None}},
        training={"test_accuracy": 0.9}, final={"test_accuracy": 0.9,
                                                "gradient_residual": 1e-3,
                                                "distance_bound": 1e-2},
        files={},
    )


@pytest.mark.parametrize(("delta", "vacuous"), [(12.0, True), (1.0, True), (0.02, False)])
def test_summary_flags_a_composed_delta_that_promises_nothing(capsys, delta, vacuous):
    from fastunlearn.certified.cli import _print_summary

    _print_summary(_summary_result(delta))
    line = next(x for x in capsys.readouterr().out.splitlines() if "with the head after" in x)
    assert ("vacuous" in line) is vacuous


def test_extract_reference_adversarial_flags_reach_training(tmp_path, capsys, monkeypatch):
    # the flags: --model resnet34 --learning-rate 0.001 --batch-size 64
    from fastunlearn.certified import extractors

    seen = {}

    def fake_training(model, loader, **kwargs):
        seen.update(model=model, batch_size=loader.batch_size, **kwargs)
        return model

    monkeypatch.setattr(extractors, "train_adversarial_extractor", fake_training)
    assert main(["extract", "--data-dir", str(tmp_path), "--dataset", "digits", "--quiet",
                 "--extractor", "adversarial", "--model", "resnet34", "--learning-rate",
                 "0.001", "--batch-size", "64", "--epochs", "1"]) == 0
    assert "resnet34" in capsys.readouterr().out
    assert seen["lr"] == 0.001 and seen["batch_size"] == 64 and seen["epochs"] == 1
    blocks = [len(getattr(seen["model"].backbone, f"layer{i}")) for i in range(1, 5)]
    assert blocks == [3, 4, 6, 3]  # ResNet-34's stages
    assert (tmp_path / "adv_fgsm_resnet34_digits_extracted.safetensors").is_file()
