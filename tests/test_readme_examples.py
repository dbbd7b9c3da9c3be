"""Every Python example of README.md runs as written and prints what its comments promise.

Each block runs in a fresh interpreter in a temporary folder (the examples write files), so
a renamed function, a changed default or a warning leaking out of the library shows up here
rather than in a user's first session. Every ``fastunlearn`` command of the bash blocks
parses, the flags the prose lists exist, and the cheap commands run as written.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fastunlearn.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
BASH = re.findall(r"```bash\n(.*?)```", TEXT, re.S)
FIXTURE = README.parents[1] / "shared" / "fixtures" / "forget_with_precision"
if not FIXTURE.is_dir():  # worktrees live one level deeper than the main checkout
    FIXTURE = Path("/work/shared/fixtures/forget_with_precision")
#: The reference test_removal.py's flags that ``fastunlearn remove`` keeps (all but --train-sep).
REFERENCE_REMOVE_FLAGS = {
    "--data-dir", "--result-dir", "--extractor", "--dataset", "--lam", "--std", "--num-steps",
    "--subsample-ratio", "--num-removes", "--train-mode", "--verbose",
}


def _block(marker: str) -> str:
    """The one README Python block containing ``marker``."""
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {marker!r}"
    return found[0]


def _run(code: str, cwd: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter; it must succeed without a warning. Stdout lines."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_every_block_is_covered():
    markers = ("CertifiedLogisticRegression(", "repair_labels(", "run_method(",
               "metrics.epsilon_hat(", "ops.glm_cg(")
    assert len(BLOCKS) == len(markers)
    for marker in markers:
        _block(marker)


@pytest.mark.slow
def test_certified_removal_example(tmp_path):
    out = _run(_block("CertifiedLogisticRegression("), tmp_path)
    cumulative, budget_left, retrains = (float(v) for v in out[0].split())
    assert 0 < cumulative < cumulative + budget_left and retrains == 0
    assert "'removals': 13" in out[1]                       # 3 sequential + a batch of 10
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.slow
def test_label_repair_example(tmp_path):
    out = _run(_block("repair_labels("), tmp_path)
    poisoned = float(out[0].split()[1])
    repaired = float(out[1].split()[1])
    assert poisoned < 0.9 and repaired > poisoned + 0.1     # "about 0.82" -> "about 0.97"
    assert out[2].split()[0] == "True"                       # the update was applied


@pytest.mark.slow
def test_forgetting_example(tmp_path):
    out = _run(_block("run_method("), tmp_path)
    forget_accuracy = float(re.search(r"tensor\(([0-9.]+)\)", out[0]).group(1))
    assert forget_accuracy < 0.15                            # "0.99 -> about 0.06"
    assert "'two_stage'" in out[1] and "'scrub'" in out[1]


def test_metrics_example(tmp_path):
    out = _run(_block("metrics.epsilon_hat("), tmp_path)
    assert float(out[0]) > 0 and 0 <= float(out[1]) <= 1
    assert out[2] == out[0]                                  # written, read back, same score
    assert (tmp_path / "my-logits").is_dir()


@pytest.mark.slow
def test_ops_example(tmp_path):
    code = _block("ops.glm_cg(") + (
        "\nassert bool((res.residual_norms <= 1e-10 * B.norm(dim=0)).all())"
        "\nassert bool(sol.converged.all())"
        "\nassert bool((H.matmat(sol.solution[:, None])[:, 0] - g).norm() <= 1e-7 * g.norm())"
        "\nassert far_i.shape == (50, 10) and norms.shape == (128,) and len(clipped) == 4\n")
    _run(code, tmp_path)


# ---- the command line ----------------------------------------------------------------------


def _commands() -> list[list[str]]:
    """Every ``fastunlearn ...`` line of the README's bash blocks, as an argv without the name."""
    out = []
    for block in BASH:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("fastunlearn "):
                out.append(shlex.split(line)[1:])
    return out


def _command(marker: str) -> list[str]:
    """The one README command containing ``marker``."""
    found = [c for c in _commands() if marker in " ".join(c)]
    assert len(found) == 1, f"{len(found)} README commands contain {marker!r}"
    return found[0]


def _options(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o for action in sub.choices[command]._actions for o in action.option_strings}


def _paragraph(start: str) -> str:
    i = TEXT.index(start)
    return TEXT[i:TEXT.index("\n\n", i)]


def _cli(argv: list[str], cwd: Path) -> str:
    """Run ``fastunlearn argv`` in ``cwd`` on one CPU thread; it must succeed. Its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "fastunlearn", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_command_parses(capsys):
    commands = _commands()
    assert len(commands) >= 15
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: fastunlearn {shlex.join(argv)}\n"
                        + capsys.readouterr().err)


def test_layout_lists_every_command():
    listed = re.search(r"the `fastunlearn` command \(([^)]*)\)", TEXT).group(1)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.strip() for c in listed.split(",")} == set(sub.choices)


def test_documented_remove_flags_exist():
    prose = _paragraph("From the command line (the reference `test_removal.py` flags")
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", prose))
    options = _options("remove")
    assert "--train-sep" in flags and "--train-sep" not in options   # "but `--train-sep`"
    assert flags - {"--train-sep"} <= options, flags - {"--train-sep"} - options
    assert REFERENCE_REMOVE_FLAGS <= options


def test_documented_forget_flags_exist():
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", _paragraph("Flags: `--method")))
    options = _options("forget")
    assert flags <= options, flags - options
    # the prose lists every flag the command has
    assert options - {"-h", "--help"} <= flags, options - flags


@pytest.mark.slow
def test_remove_example(tmp_path):
    argv = _command("--num-removes 200")
    out = _cli(argv, tmp_path)
    assert sum(line.startswith("removal ") for line in out.splitlines()) == 200
    assert "true gradient residual" in out and "distance to retraining" in out
    stem = re.search(r"`(none_digits_[^`]+_removes_200)\.json`", TEXT).group(1)
    for suffix in (".json", ".md", "_bounds.png", "_accuracy.png", "_time.png"):
        assert (tmp_path / "result" / f"{stem}{suffix}").is_file(), suffix


@pytest.mark.slow
def test_evaluate_fixture_example(tmp_path):
    if not (FIXTURE / "logits_retain.npy").is_file():
        pytest.skip("forget_with_precision fixture not found")
    argv = _command("evaluate ../shared/fixtures/forget_with_precision")
    argv[argv.index("../shared/fixtures/forget_with_precision")] = str(FIXTURE)
    _cli(argv, tmp_path)
    out = tmp_path / argv[argv.index("--out") + 1]
    for name in ("evaluation.json", "evaluation.md", "epsilon_hist.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "evaluation.json").read_text())
    eps = {m: float(r["epsilon_hat"]) for m, r in result["methods"].items()}
    assert len(eps) == 8 and min(eps, key=eps.get) == "prune_complex"   # "eight methods"
    assert round(eps["prune_complex"], 3) == 2.197                       # "lowest at 2.197"
    assert round(float(result["baseline"]["epsilon_hat"]), 4) == 0.8755  # "baseline 0.8755"


@pytest.mark.slow
def test_unlearn_features_wine_example(tmp_path):
    _cli(_command("--dataset wine --mode replace"), tmp_path)
    result = json.loads((tmp_path / "results" / "features_wine.json").read_text())
    # the README table's row: residual 1.65 / 1.37 / 0.029, distance 0.0997 / 0.0485 / 0.0011
    second = result["methods"]["second_order"]
    assert round(result["original"]["residual"], 2) == 1.65
    assert round(result["methods"]["first_order"]["residual"], 2) == 1.37
    assert round(second["residual"], 3) == 0.029
    assert round(second["distance_retrained"], 4) == 0.0011
