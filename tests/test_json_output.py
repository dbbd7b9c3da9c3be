"""``--json`` puts the result alone on stdout (a script can pipe it to ``jq``).

Every experiment command takes the flag; the document is what its JSON file holds, and
everything printed for people goes to stderr. Before, only ``repair`` and
``unlearn-features`` had it, and they printed it after their summary lines on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from fastunlearn._cli_output import json_output
from fastunlearn.cli import build_parser, main

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "forget_with_precision"


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def _only_document(captured) -> dict:
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out[:500]
    return _strict(lines[0])


@pytest.mark.parametrize("command", ["remove", "repair", "unlearn-features", "forget",
                                     "evaluate", "exposure"])
def test_every_experiment_command_takes_json(command):
    extra = ["logits"] if command == "evaluate" else []
    assert build_parser().parse_args([command, *extra, "--json"]).json is True


def test_remove_json_is_the_written_file(tmp_path, capsys):
    assert main(["remove", "--num-removes", "3", "--no-plots", "--no-progress",
                 "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    document = _only_document(captured)
    (written,) = tmp_path.glob("*.json")
    assert document == _strict(written.read_text())
    assert document["privacy"]["removals"] == 3
    # the per-removal lines and the summary went to stderr
    assert "removal 3/3" in captured.err and "privacy: epsilon" in captured.err


def test_exposure_json_is_the_written_file(tmp_path, capsys):
    assert main(["exposure", "--steps", "2", "--n-sentences", "30", "--secret-length", "1",
                 "--insertions", "2", "--hidden", "4", "--embed-dim", "4", "--seq-len", "8",
                 "--batch-size", "2", "--no-plots", "--no-progress", "--out", str(tmp_path),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert _only_document(captured) == _strict((tmp_path / "exposure.json").read_text())
    assert "# Canary exposure" in captured.err


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="the shared fixtures are not here")
def test_evaluate_json_is_the_written_file(tmp_path, capsys):
    assert main(["evaluate", str(FIXTURE), "--methods", "finetune", "--no-baseline",
                 "--no-plots", "--no-progress", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    document = _only_document(captured)
    assert document == _strict((tmp_path / "evaluation.json").read_text())
    assert "finetune" in document["methods"]


def test_forget_json_has_the_results_and_the_paths(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["forget", "--method", "finetune", "--seeds", "1", "--oracles", "1",
                 "--epochs", "1", "--no-cache", "--no-mia", "--no-progress", "--no-plots",
                 "--set", "finetune.epochs=1", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    document = _only_document(captured)
    written = _strict((out / "results.json").read_text())
    assert {k: v for k, v in document.items() if k != "paths"} == written
    assert document["paths"]["json"] == str(out / "results.json")
    assert "| method |" in captured.err


def test_without_json_stdout_keeps_the_human_output(tmp_path, capsys):
    assert main(["remove", "--num-removes", "2", "--no-plots", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "removal 2/2" in out and not out.lstrip().startswith("{")


def test_a_failed_run_prints_no_document(capsys):
    def failing(args: argparse.Namespace) -> int:
        print("human line")
        return 2

    assert json_output(failing)(argparse.Namespace(json=True)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "human line" in captured.err


def test_a_partial_success_still_prints_its_document(capsys):
    def partial(args: argparse.Namespace) -> int:
        args.json_result = {"methods": {"a": {"status": "error"}}, "value": None}
        return 1

    assert json_output(partial)(argparse.Namespace(json=True)) == 1
    assert _strict(capsys.readouterr().out) == {"methods": {"a": {"status": "error"}},
                                                "value": None}
