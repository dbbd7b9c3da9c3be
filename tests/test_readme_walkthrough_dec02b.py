"""README claims that tests/test_readme_examples.py does not run: quoted messages, flag sets,
names, formulas and the measured numbers of the cheaper commands.

Each quoted message is read from README.md and must be what the command prints, so a reworded
error, a renamed flag or a re-measured number shows up here, not in a user's first session.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fastunlearn.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = " ".join(README.read_text().split())  # the prose with its line breaks folded


def _quoted(pattern: str) -> str:
    """The one README passage matching ``pattern`` (a regex on the folded text)."""
    found = re.findall(pattern, TEXT)
    assert len(found) == 1, f"{len(found)} README passages match {pattern!r}"
    return found[0]


def _cli(argv: list[str], cwd: Path, status: int = 0) -> subprocess.CompletedProcess:
    """Run ``fastunlearn argv`` in ``cwd`` on one CPU thread; check its exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastunlearn", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


def _options() -> dict[str, set[str]]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()
    }


# ---- quoted messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "marker"),
    [
        (["repair", "--n-train", "99999"], r"`('--n-train' must be <= 1438 [^`]*)`"),
        (
            ["forget", "--dataset", "mnist", "--data-dir", "/nonexistent"],
            r"`('--data-dir' '/nonexistent' is not a directory)`",
        ),
        (
            ["forget", "--out", "/proc/x"],
            r"`('--out' '/proc/x': nothing can be created in '/proc')",
        ),
    ],
)
def test_quoted_errors_are_what_the_commands_print(tmp_path, argv, marker):
    message = _quoted(marker)
    proc = _cli(argv, tmp_path, status=2)
    assert f"fastunlearn {argv[0]}: error: {message}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # refused before any work


def test_quoted_cg_tol_warning(tmp_path):
    message = _quoted(r"`('--cg-tol' has no effect with '--solver cholesky' \(for [^)]*\))`")
    proc = _cli(
        [
            "remove",
            "--solver",
            "cholesky",
            "--cg-tol",
            "0.1",
            "--num-removes",
            "1",
            "--no-plots",
            "--result-dir",
            "out",
        ],
        tmp_path,
    )
    lines = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert lines == [f"fastunlearn remove: warning: {message}"], proc.stderr


def test_quoted_config_warning_once_per_config():
    from fastunlearn.influence.experiment import RepairConfig

    message = _quoted(r"warns `('damping' has no effect with solver='lissa' [^`]*)`")
    config = RepairConfig(solver="lissa", damping=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config.validate()
        config.validate()
    assert [str(w.message) for w in caught] == [message]


# ---- flags the prose names ------------------------------------------------------------------


def test_progress_flags_on_every_command_but_info_demo_html():
    options = _options()
    assert (
        "every command that runs it (all but `info`, `demo` and `html`) takes `--progress`" in TEXT
    )
    for name, opts in options.items():
        has = {"--progress", "--no-progress"} <= opts
        assert has == (name not in {"info", "demo", "html"}), name
    assert "--quiet" in options["extract"]  # "(`extract`: also `--quiet`)"


def test_out_no_plots_json_on_every_experiment_command():
    options = _options()
    for name in ("remove", "repair", "unlearn-features", "forget", "evaluate", "exposure"):
        assert {"--out", "--no-plots", "--json"} <= options[name], name
    for name in ("remove", "repair", "demo"):  # "name their `--result-dir`"
        assert "--result-dir" in options[name], name
    assert options["html"] - {"-h", "--help"} == {"--out"}  # "`html` takes `--out` only"
    assert not {"--out", "--result-dir"} & options["extract"]  # writes inside --data-dir


def test_every_device_flag_takes_cpu_cuda_and_an_index():
    parser = build_parser()
    options = _options()
    without = _quoted(r"`cuda:<i>` in every command that has it \(all but ([^)]*)\)")
    assert set(re.findall(r"`([a-z-]+)`", without)) == {
        name for name, opts in options.items() if "--device" not in opts
    }
    with_device = [name for name, opts in options.items() if "--device" in opts]
    assert len(with_device) >= 7
    for name in with_device:
        for device in ("cpu", "cuda", "cuda:1"):
            required = {"evaluate": ["x"], "extract": ["--data-dir", "x"]}.get(name, [])
            args = parser.parse_args([name, "--device", device, *required])
            assert str(args.device) == device, (name, device)


# ---- names, formulas and defaults -----------------------------------------------------------


def test_every_zoo_name_builds_and_the_cifar_cnn_size():
    from fastunlearn.models import build_model
    from fastunlearn.models.zoo import MODELS

    prose = _quoted(r"builds a randomly initialised `FeatureClassifier` (.*?)`norm=\"group\"`")
    names = re.findall(r"`([a-z][a-z0-9_]*)`", prose)
    assert sorted(names) == sorted(MODELS), names  # every zoo model, nothing else
    for name in names:
        assert isinstance(build_model(name), torch.nn.Module), name
    count = _quoted(r"the influence reference's ([0-9,]+)-parameter CNN")
    model = build_model("cifar_cnn")
    assert sum(p.numel() for p in model.parameters()) == int(count.replace(",", ""))


def test_binary_digits_three_is_the_positive_class():
    from sklearn.datasets import load_digits

    from fastunlearn.data import load_digits_dataset

    assert "`binary=(3, 8)` mirrors MNIST 3-vs-8" in TEXT
    d = load_digits_dataset(binary=(3, 8), normalize=False)
    digits = load_digits()
    threes = {tuple(row) for row in digits.data[digits.target == 3].tolist()}
    positives = d.X_train[d.y_train == 1].tolist()
    assert positives and all(tuple(row) in threes for row in positives)
    assert len(d.X_train) + len(d.X_test) == int(
        ((digits.target == 3) | (digits.target == 8)).sum()
    )


def test_forget_specs_as_written(tmp_path, monkeypatch):
    from fastunlearn.data import parse_forget_spec

    labels = torch.arange(40) % 10
    forget, retain = parse_forget_spec("class:3", labels, 0)
    assert sorted(forget.tolist() + retain.tolist()) == list(range(40))
    assert set(labels[forget].tolist()) == {3} and 3 not in labels[retain].tolist()
    forget, _ = parse_forget_spec("class:1,2", labels, 0)
    assert set(labels[forget].tolist()) == {1, 2}
    forget, _ = parse_forget_spec("random:0.1", labels, 0)
    assert len(forget) == 4
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ids.txt").write_text("5\n7\n")
    forget, _ = parse_forget_spec("file:~/ids.txt", labels, 0)  # "expands the home folder"
    assert sorted(forget.tolist()) == [5, 7]
    for bad in ("", "class:", "nosuch:3", "class:10", "random:0"):
        with pytest.raises(ValueError):
            parse_forget_spec(bad, labels, 0)


def test_info_lists_the_kernel_switches(tmp_path):
    out = _cli(["info"], tmp_path).stdout
    for name in ("FASTUNLEARN_FIXED_STEP", "FASTUNLEARN_CERTIFIED_FUSED", "FASTUNLEARN_GLM_HVP"):
        assert name in out, name


def test_remove_json_budget_is_the_formula(tmp_path):
    """`fastunlearn remove --json | jq .privacy.budget`; budget = sigma * epsilon / c."""
    assert "`fastunlearn remove --json | jq .privacy.budget`" in TEXT
    assert "`sigma * epsilon / c` with `c = sqrt(2 ln(1.5/delta))`" in TEXT
    proc = _cli(
        ["remove", "--json", "--num-removes", "2", "--no-plots", "--result-dir", "r"], tmp_path
    )
    privacy = json.loads(proc.stdout)["privacy"]  # the result alone on stdout
    c = math.sqrt(2 * math.log(1.5 / privacy["delta"]))
    assert privacy["c"] == pytest.approx(c, rel=1e-12)
    assert privacy["budget"] == pytest.approx(privacy["sigma"] * privacy["epsilon"] / c, rel=1e-12)


# ---- measured numbers of the cheaper commands -----------------------------------------------


@pytest.mark.slow
def test_unlearn_features_breast_cancer_row(tmp_path):
    row = _quoted(r"\| breast_cancer, columns 10, 21 \| ([^|]*) \| ([^|]*) \|")
    residuals = [float(v) for v in row[0].split(" / ")]
    distances = [float(v) for v in row[1].split(" / ")]
    _cli(
        [
            "unlearn-features",
            "--dataset",
            "breast_cancer",
            "--columns",
            "10,21",
            "--out",
            "results",
            "--no-plots",
        ],
        tmp_path,
    )
    result = json.loads((tmp_path / "results" / "features_breast_cancer.json").read_text())
    first, second = result["methods"]["first_order"], result["methods"]["second_order"]
    got = [result["original"]["residual"], first["residual"], second["residual"]]
    for g, want in zip(got, residuals[:3], strict=True):
        assert g == pytest.approx(want, rel=5e-3), (got, residuals)
    assert result["retrained"]["residual"] < 1e-6
    got = [
        result["original"]["distance_retrained"],
        first["distance_retrained"],
        second["distance_retrained"],
    ]
    for g, want in zip(got, distances, strict=True):
        assert g == pytest.approx(want, rel=5e-3), (got, distances)


@pytest.mark.slow
def test_unlearn_features_digits_row(tmp_path):
    row = _quoted(r"\| digits, pixels 3, 4, 11, 12 \(every row\) \| ([^|]*) \| ([^|]*) \|")
    residuals = [float(v) for v in row[0].split(" / ")]
    distances = [float(v) for v in row[1].split(" / ")]
    _cli(["unlearn-features", "--out", "results", "--no-plots"], tmp_path)
    result = json.loads((tmp_path / "results" / "features_digits.json").read_text())
    assert result["config"]["columns"] == [3, 4, 11, 12]
    first, second = result["methods"]["first_order"], result["methods"]["second_order"]
    got = [result["original"]["residual"], first["residual"], second["residual"]]
    for g, want in zip(got, residuals[:3], strict=True):  # printed to 3 significant digits
        assert f"{g:.3g}" == f"{want:.3g}", (got, residuals)
    assert f"{result['retrained']['residual']:.0e}" == f"{residuals[3]:.0e}"
    got = [
        result["original"]["distance_retrained"],
        first["distance_retrained"],
        second["distance_retrained"],
    ]
    for g, want in zip(got, distances, strict=True):
        assert g == pytest.approx(want, rel=1e-2), (got, distances)


@pytest.mark.slow
def test_repair_restored_is_the_quoted_formula(tmp_path):
    assert "% restored `(after - before) / (clean - before)`" in TEXT
    assert "clean 0.983 in every run" in TEXT
    _cli(["repair", "--out", "results", "--no-plots"], tmp_path)
    result = json.loads((tmp_path / "results" / "repair_digits.json").read_text())
    clean, before = result["training"]["acc_clean"], result["training"]["acc_poisoned"]
    assert round(clean, 3) == 0.983
    assert set(result["protocols"]) == {"iterative", "one-shot"}
    for protocol in result["protocols"].values():
        after = protocol["acc_after"]
        assert protocol["restored"] == pytest.approx((after - before) / (clean - before), rel=1e-6)


@pytest.mark.slow
def test_exposure_three_digits_scores_every_secret(tmp_path):
    assert "all 1000 secrets scored: the inserted secret reaches the maximum 9.97 bits" in TEXT
    _cli(
        [
            "exposure",
            "--secret-length",
            "3",
            "--insertions",
            "12",
            "--steps",
            "400",
            "--out",
            "x",
            "--no-plots",
        ],
        tmp_path,
    )
    result = json.loads((tmp_path / "x" / "exposure.json").read_text())
    text = (tmp_path / "x" / "exposure.md").read_text()
    assert "all 1000 of |R|" in text
    assert f"| 1 | {math.log2(1000):.2f} |" in text  # the inserted secret ranks first
    assert json.dumps(result)  # strict JSON, read back
